//! Streaming, strict decoder.

use bytes::{Buf, BytesMut};

use super::error::DecodeError;
use super::packet::{
    Ack, ConnAck, Connect, Packet, ProtocolVersion, Publish, QoS, ReasonOnly, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
use super::properties::{Properties, PropertyContext};
use super::reason::ReasonCode;
use super::wire::Reader;

/// Limits applied while decoding, from the broker's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest whole packet (fixed header included) accepted.
    pub max_packet_size: usize,
    /// Most user properties accepted in one property list.
    pub max_user_properties: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_packet_size: 1024 * 1024,
            max_user_properties: 32,
        }
    }
}

/// The fixed header of the packet at the front of `buf`: `(first byte, remaining length,
/// header length)`, or `None` when more bytes are needed to know it.
pub fn peek_fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut value: usize = 0;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= ((byte & 0x7F) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return Err(DecodeError::Malformed("non-minimal remaining length"));
            }
            return Ok(Some((first, value, 2 + i)));
        }
    }
    Err(DecodeError::Malformed(
        "remaining length longer than 4 bytes",
    ))
}

/// The protocol level of the CONNECT at the front of `buf`, once its first bytes are there:
/// how the client speaks, even when the rest of the packet turns out bad.
pub fn connect_protocol_level(buf: &[u8]) -> Option<u8> {
    let (first, _, header_len) = peek_fixed_header(buf).ok().flatten()?;
    if first != 0x10 {
        return None;
    }
    let rest = buf.get(header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let name = rest.get(2..2 + name_len)?;
    if name != b"MQTT" && name != b"MQIsdp" {
        return None;
    }
    rest.get(2 + name_len).copied()
}

/// Decodes the packet at the front of `buf` and removes its bytes.
///
/// `version` is the connection's protocol version, `None` before CONNECT (only CONNECT is
/// accepted then). Returns `Ok(None)` when the packet is not complete yet; nothing is consumed.
/// The packet size is checked against `limits` as soon as the fixed header is known.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let Some((first, remaining, header_len)) = peek_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = header_len + remaining;
    if total > limits.max_packet_size {
        return Err(DecodeError::TooLarge {
            size: total,
            max: limits.max_packet_size,
        });
    }
    let kind = first >> 4;
    if version.is_none() && kind != 1 {
        // Before CONNECT nothing else is processed, nor buffered for.
        return Err(DecodeError::Protocol("first packet is not CONNECT"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    buf.advance(header_len);
    let body = buf.split_to(remaining).freeze();
    let mut r = Reader::new(body);
    let packet = decode_body(first, &mut r, version, limits)?;
    if !r.is_empty() {
        return Err(DecodeError::Malformed("unexpected bytes after the packet"));
    }
    Ok(Some(packet))
}

fn check_flags(first: u8, expected: u8) -> Result<(), DecodeError> {
    if first & 0x0F != expected {
        return Err(DecodeError::Malformed("reserved flag bits set"));
    }
    Ok(())
}

fn decode_body(
    first: u8,
    r: &mut Reader,
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let Some(version) = version else {
        check_flags(first, 0)?;
        return decode_connect(r, limits).map(|c| Packet::Connect(Box::new(c)));
    };
    let v5 = version.is_v5();
    let props = |r: &mut Reader, ctx| -> Result<Properties, DecodeError> {
        if v5 {
            Properties::decode(r, ctx, limits.max_user_properties)
        } else {
            Ok(Properties::default())
        }
    };
    Ok(match kind {
        1 => return Err(DecodeError::Protocol("second CONNECT")),
        2 => {
            check_flags(first, 0)?;
            let flags = r.u8()?;
            if flags & 0xFE != 0 {
                return Err(DecodeError::Malformed("CONNACK reserved flags set"));
            }
            let code = ReasonCode(r.u8()?);
            let properties = props(r, PropertyContext::ConnAck)?;
            Packet::ConnAck(ConnAck {
                session_present: flags & 1 == 1,
                code,
                properties,
            })
        }
        3 => {
            let qos = QoS::from_u8((first >> 1) & 3).ok_or(DecodeError::Malformed("QoS 3"))?;
            let dup = first & 0x08 != 0;
            if dup && qos == QoS::AtMostOnce {
                return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
            }
            let topic = r.string()?;
            let packet_id = if qos == QoS::AtMostOnce {
                None
            } else {
                Some(r.packet_id()?)
            };
            let properties = props(r, PropertyContext::Publish)?;
            let payload = r.rest();
            Packet::Publish(Publish {
                dup,
                qos,
                retain: first & 1 == 1,
                topic,
                packet_id,
                properties,
                payload,
            })
        }
        4..=7 => {
            check_flags(first, if kind == 6 { 2 } else { 0 })?;
            let packet_id = r.packet_id()?;
            let (reason, properties) = if v5 && !r.is_empty() {
                let reason = ReasonCode(r.u8()?);
                let properties = if r.is_empty() {
                    Properties::default()
                } else {
                    props(r, PropertyContext::Ack)?
                };
                (reason, properties)
            } else {
                (ReasonCode::default(), Properties::default())
            };
            let ack = Ack {
                packet_id,
                reason,
                properties,
            };
            match kind {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            check_flags(first, 2)?;
            let packet_id = r.packet_id()?;
            let properties = props(r, PropertyContext::Subscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                let o = r.u8()?;
                let reserved = if v5 { 0xC0 } else { 0xFC };
                if o & reserved != 0 {
                    return Err(DecodeError::Malformed("subscription options reserved bits"));
                }
                // v5 §3.8.3.1 calls these two Protocol Errors; 3.1.1 has only "malformed".
                let bad_value = |what| {
                    if v5 {
                        DecodeError::Protocol(what)
                    } else {
                        DecodeError::Malformed(what)
                    }
                };
                let qos = QoS::from_u8(o & 3).ok_or(bad_value("subscription QoS 3"))?;
                let retain_handling = (o >> 4) & 3;
                if retain_handling == 3 {
                    return Err(bad_value("retain handling 3"));
                }
                filters.push((
                    filter,
                    SubscriptionOptions {
                        qos,
                        no_local: o & 0x04 != 0,
                        retain_as_published: o & 0x08 != 0,
                        retain_handling,
                    },
                ));
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        }
        9 => {
            check_flags(first, 0)?;
            let packet_id = r.packet_id()?;
            let properties = props(r, PropertyContext::SubAck)?;
            let reasons: Vec<ReasonCode> = r.rest().iter().map(|b| ReasonCode(*b)).collect();
            if reasons.is_empty() {
                return Err(DecodeError::Protocol("SUBACK without reason codes"));
            }
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        }
        10 => {
            check_flags(first, 2)?;
            let packet_id = r.packet_id()?;
            let properties = props(r, PropertyContext::Unsubscribe)?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        11 => {
            check_flags(first, 0)?;
            let packet_id = r.packet_id()?;
            let properties = props(r, PropertyContext::UnsubAck)?;
            let reasons: Vec<ReasonCode> = if v5 {
                r.rest().iter().map(|b| ReasonCode(*b)).collect()
            } else {
                Vec::new()
            };
            if v5 && reasons.is_empty() {
                return Err(DecodeError::Protocol("UNSUBACK without reason codes"));
            }
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        }
        12 => {
            check_flags(first, 0)?;
            Packet::PingReq
        }
        13 => {
            check_flags(first, 0)?;
            Packet::PingResp
        }
        14 | 15 => {
            check_flags(first, 0)?;
            if kind == 15 && !v5 {
                return Err(DecodeError::Malformed("reserved packet type 15"));
            }
            let (reason, properties) = if v5 && !r.is_empty() {
                let reason = ReasonCode(r.u8()?);
                let ctx = if kind == 14 {
                    PropertyContext::Disconnect
                } else {
                    PropertyContext::Auth
                };
                let properties = if r.is_empty() {
                    Properties::default()
                } else {
                    props(r, ctx)?
                };
                (reason, properties)
            } else {
                (ReasonCode::default(), Properties::default())
            };
            let body = ReasonOnly { reason, properties };
            if kind == 14 {
                Packet::Disconnect(body)
            } else {
                Packet::Auth(body)
            }
        }
        _ => return Err(DecodeError::Malformed("reserved packet type 0")),
    })
}

fn decode_connect(r: &mut Reader, limits: &DecodeLimits) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let version = match (&name[..], level) {
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", _) | (b"MQIsdp", _) => return Err(DecodeError::UnsupportedVersion(level)),
        _ => return Err(DecodeError::BadProtocolName),
    };
    let flags = r.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("CONNECT reserved flag set"));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos = QoS::from_u8((flags >> 3) & 3).ok_or(DecodeError::Malformed("will QoS 3"))?;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
        return Err(DecodeError::Malformed(
            "will QoS or retain without will flag",
        ));
    }
    if has_password && !has_username && !version.is_v5() {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16()?;
    let properties = if version.is_v5() {
        Properties::decode(r, PropertyContext::Connect, limits.max_user_properties)?
    } else {
        Properties::default()
    };
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if version.is_v5() {
            Properties::decode(r, PropertyContext::Will, limits.max_user_properties)?
        } else {
            Properties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        version,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}
