//! MQTT v5 properties: one typed field per identifier, checked against the packet they sit in.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::DecodeError;
use super::wire::{Reader, put_binary, put_str, put_varint, varint_len};

/// Where a property list appears; each property is valid in some of these only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyContext {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

const CONNECT: u16 = 1 << PropertyContext::Connect as u16;
const CONNACK: u16 = 1 << PropertyContext::ConnAck as u16;
const PUBLISH: u16 = 1 << PropertyContext::Publish as u16;
const WILL: u16 = 1 << PropertyContext::Will as u16;
const ACK: u16 = 1 << PropertyContext::Ack as u16;
const SUBSCRIBE: u16 = 1 << PropertyContext::Subscribe as u16;
const SUBACK: u16 = 1 << PropertyContext::SubAck as u16;
const UNSUBSCRIBE: u16 = 1 << PropertyContext::Unsubscribe as u16;
const UNSUBACK: u16 = 1 << PropertyContext::UnsubAck as u16;
const DISCONNECT: u16 = 1 << PropertyContext::Disconnect as u16;
const AUTH: u16 = 1 << PropertyContext::Auth as u16;
const ALL: u16 = CONNECT
    | CONNACK
    | PUBLISH
    | WILL
    | ACK
    | SUBSCRIBE
    | SUBACK
    | UNSUBSCRIBE
    | UNSUBACK
    | DISCONNECT
    | AUTH;

/// Every v5 property. `None`/empty means absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user_properties: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The packets each property may appear in (v5 §2.2.2.2).
fn allowed_in(id: u8) -> Option<u16> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => PUBLISH | WILL,
        SUBSCRIPTION_IDENTIFIER => PUBLISH | SUBSCRIBE,
        SESSION_EXPIRY_INTERVAL => CONNECT | CONNACK | DISCONNECT,
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => CONNACK,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => CONNECT | CONNACK | AUTH,
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => CONNECT,
        WILL_DELAY_INTERVAL => WILL,
        SERVER_REFERENCE => CONNACK | DISCONNECT,
        REASON_STRING => CONNACK | ACK | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => CONNECT | CONNACK,
        TOPIC_ALIAS => PUBLISH,
        USER_PROPERTY => ALL,
        _ => return None,
    })
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn flag(value: u8) -> Result<u8, DecodeError> {
    if value > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(value)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the list it covers.
    pub(crate) fn decode(
        r: &mut Reader,
        ctx: PropertyContext,
        max_user_properties: usize,
    ) -> Result<Properties, DecodeError> {
        let len = r.varint()? as usize;
        let mut r = r.sub(len)?;
        let mut p = Properties::default();
        while !r.is_empty() {
            let id = r.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property"))?;
            let allowed = allowed_in(id).ok_or(DecodeError::Malformed("unknown property"))?;
            if allowed & ctx.bit() == 0 {
                return Err(DecodeError::Malformed("property not valid for this packet"));
            }
            match id {
                PAYLOAD_FORMAT_INDICATOR => {
                    set_once(&mut p.payload_format_indicator, flag(r.u8()?)?)?
                }
                MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, r.u32()?)?,
                CONTENT_TYPE => set_once(&mut p.content_type, r.string()?)?,
                RESPONSE_TOPIC => set_once(&mut p.response_topic, r.string()?)?,
                CORRELATION_DATA => set_once(&mut p.correlation_data, r.binary()?)?,
                SUBSCRIPTION_IDENTIFIER => {
                    let v = r.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == PropertyContext::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("property included more than once"));
                    }
                    p.subscription_identifiers.push(v);
                }
                SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, r.u32()?)?,
                ASSIGNED_CLIENT_IDENTIFIER => {
                    set_once(&mut p.assigned_client_identifier, r.string()?)?
                }
                SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, r.u16()?)?,
                AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, r.string()?)?,
                AUTHENTICATION_DATA => set_once(&mut p.authentication_data, r.binary()?)?,
                REQUEST_PROBLEM_INFORMATION => {
                    set_once(&mut p.request_problem_information, flag(r.u8()?)?)?
                }
                WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, r.u32()?)?,
                REQUEST_RESPONSE_INFORMATION => {
                    set_once(&mut p.request_response_information, flag(r.u8()?)?)?
                }
                RESPONSE_INFORMATION => set_once(&mut p.response_information, r.string()?)?,
                SERVER_REFERENCE => set_once(&mut p.server_reference, r.string()?)?,
                REASON_STRING => set_once(&mut p.reason_string, r.string()?)?,
                RECEIVE_MAXIMUM => {
                    let v = r.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, r.u16()?)?,
                TOPIC_ALIAS => set_once(&mut p.topic_alias, r.u16()?)?,
                MAXIMUM_QOS => set_once(&mut p.maximum_qos, flag(r.u8()?)?)?,
                RETAIN_AVAILABLE => set_once(&mut p.retain_available, flag(r.u8()?)?)?,
                USER_PROPERTY => {
                    if p.user_properties.len() >= max_user_properties {
                        return Err(DecodeError::TooLarge {
                            size: p.user_properties.len() + 1,
                            max: max_user_properties,
                        });
                    }
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user_properties.push((k, v));
                }
                MAXIMUM_PACKET_SIZE => {
                    let v = r.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.wildcard_subscription_available, flag(r.u8()?)?)?
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set_once(&mut p.subscription_identifier_available, flag(r.u8()?)?)?
                }
                SHARED_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.shared_subscription_available, flag(r.u8()?)?)?
                }
                _ => return Err(DecodeError::Malformed("unknown property")),
            }
        }
        if p.authentication_data.is_some() && p.authentication_method.is_none() {
            return Err(DecodeError::Protocol(
                "authentication data without authentication method",
            ));
        }
        Ok(p)
    }

    /// Length of the encoded list, without its own length prefix.
    pub(crate) fn body_len(&self) -> usize {
        let s = |v: &Option<String>| v.as_ref().map_or(0, |s| 3 + s.len());
        let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |s| 3 + s.len());
        let n1 = |v: &Option<u8>| v.map_or(0, |_| 2);
        let n2 = |v: &Option<u16>| v.map_or(0, |_| 3);
        let n4 = |v: &Option<u32>| v.map_or(0, |_| 5);
        n1(&self.payload_format_indicator)
            + n4(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|v| 1 + varint_len(*v as usize))
                .sum::<usize>()
            + n4(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(&self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(&self.request_problem_information)
            + n4(&self.will_delay_interval)
            + n1(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(&self.receive_maximum)
            + n2(&self.topic_alias_maximum)
            + n2(&self.topic_alias)
            + n1(&self.maximum_qos)
            + n1(&self.retain_available)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| 5 + k.len() + v.len())
                .sum::<usize>()
            + n4(&self.maximum_packet_size)
            + n1(&self.wildcard_subscription_available)
            + n1(&self.subscription_identifier_available)
            + n1(&self.shared_subscription_available)
    }

    /// Length including the length prefix.
    pub(crate) fn encoded_len(&self) -> usize {
        let body = self.body_len();
        varint_len(body) + body
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) {
        put_varint(out, self.body_len());
        let u8p = |out: &mut BytesMut, id: u8, v: &Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(*v);
            }
        };
        let u16p = |out: &mut BytesMut, id: u8, v: &Option<u16>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(*v);
            }
        };
        let u32p = |out: &mut BytesMut, id: u8, v: &Option<u32>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(*v);
            }
        };
        let strp = |out: &mut BytesMut, id: u8, v: &Option<String>| {
            if let Some(v) = v {
                out.put_u8(id);
                put_str(out, v);
            }
        };
        let binp = |out: &mut BytesMut, id: u8, v: &Option<Bytes>| {
            if let Some(v) = v {
                out.put_u8(id);
                put_binary(out, v);
            }
        };
        u8p(
            out,
            PAYLOAD_FORMAT_INDICATOR,
            &self.payload_format_indicator,
        );
        u32p(out, MESSAGE_EXPIRY_INTERVAL, &self.message_expiry_interval);
        strp(out, CONTENT_TYPE, &self.content_type);
        strp(out, RESPONSE_TOPIC, &self.response_topic);
        binp(out, CORRELATION_DATA, &self.correlation_data);
        for id in &self.subscription_identifiers {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(out, *id as usize);
        }
        u32p(out, SESSION_EXPIRY_INTERVAL, &self.session_expiry_interval);
        strp(
            out,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        u16p(out, SERVER_KEEP_ALIVE, &self.server_keep_alive);
        strp(out, AUTHENTICATION_METHOD, &self.authentication_method);
        binp(out, AUTHENTICATION_DATA, &self.authentication_data);
        u8p(
            out,
            REQUEST_PROBLEM_INFORMATION,
            &self.request_problem_information,
        );
        u32p(out, WILL_DELAY_INTERVAL, &self.will_delay_interval);
        u8p(
            out,
            REQUEST_RESPONSE_INFORMATION,
            &self.request_response_information,
        );
        strp(out, RESPONSE_INFORMATION, &self.response_information);
        strp(out, SERVER_REFERENCE, &self.server_reference);
        strp(out, REASON_STRING, &self.reason_string);
        u16p(out, RECEIVE_MAXIMUM, &self.receive_maximum);
        u16p(out, TOPIC_ALIAS_MAXIMUM, &self.topic_alias_maximum);
        u16p(out, TOPIC_ALIAS, &self.topic_alias);
        u8p(out, MAXIMUM_QOS, &self.maximum_qos);
        u8p(out, RETAIN_AVAILABLE, &self.retain_available);
        for (k, v) in &self.user_properties {
            out.put_u8(USER_PROPERTY);
            put_str(out, k);
            put_str(out, v);
        }
        u32p(out, MAXIMUM_PACKET_SIZE, &self.maximum_packet_size);
        u8p(
            out,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            &self.wildcard_subscription_available,
        );
        u8p(
            out,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            &self.subscription_identifier_available,
        );
        u8p(
            out,
            SHARED_SUBSCRIPTION_AVAILABLE,
            &self.shared_subscription_available,
        );
    }
}
