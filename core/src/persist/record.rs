//! The records the broker asks its store to keep, and their binary form.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, DecodeLimits, Packet, Properties, ProtocolVersion, PublishRef, QoS};

/// A message as kept on disk, shared by every record that refers to its `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 PUBLISH properties to pass on (no alias, no subscription ids, no expiry).
    pub properties: Properties,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_at_unix_ms: Option<u64>,
}

/// One change to durable state. Every record is keyed, so replaying one twice is harmless.
// Records only travel from the core to the store; boxing the message would cost an
// allocation per stored message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A persistent session exists (or changed): created, reconnected, or disconnected at
    /// `disconnected_at_unix_ms`.
    SessionPut {
        client_id: String,
        version: u8,
        expiry_secs: u32,
        disconnected_at_unix_ms: Option<u64>,
    },
    /// The session and everything it held are gone.
    SessionDel {
        client_id: String,
    },
    SubPut {
        client_id: String,
        filter: String,
        /// The v5 SUBSCRIBE options byte.
        options: u8,
        subscription_id: Option<u32>,
    },
    SubDel {
        client_id: String,
        filter: String,
    },
    /// Boxed: a message is most of a record's size, and records are moved in batches.
    MsgPut(Box<StoredMessage>),
    /// A message owed to a session, in `entry` order. `sent`: the packet id it went out
    /// under in the same input, as an `OutState` (not released) would say; one record
    /// instead of two for the usual delivery.
    QueuePut {
        client_id: String,
        entry: u64,
        msg_id: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        sent: Option<u16>,
    },
    /// An outbound QoS 2 delivery got its packet id (`released`: PUBREL sent).
    OutState {
        client_id: String,
        entry: u64,
        packet_id: u16,
        released: bool,
    },
    /// The delivery finished or was dropped.
    QueueDel {
        client_id: String,
        entry: u64,
    },
    /// An inbound QoS 2 packet id was accepted (PUBREC) and awaits its PUBREL.
    InQos2Put {
        client_id: String,
        packet_id: u16,
    },
    InQos2Del {
        client_id: String,
        packet_id: u16,
    },
    RetainPut {
        topic: String,
        msg_id: u64,
    },
    RetainDel {
        topic: String,
    },
    /// A message waiting to be forwarded over a bridge, in `entry` order.
    BridgePut {
        bridge: String,
        entry: u64,
        msg_id: u64,
        qos: QoS,
        retain: bool,
    },
    BridgeDel {
        bridge: String,
        entry: u64,
    },
}

const T_SESSION_PUT: u8 = 1;
const T_SESSION_DEL: u8 = 2;
const T_SUB_PUT: u8 = 3;
const T_SUB_DEL: u8 = 4;
const T_MSG_PUT: u8 = 5;
const T_QUEUE_PUT: u8 = 6;
const T_OUT_STATE: u8 = 7;
const T_QUEUE_DEL: u8 = 8;
const T_INQOS2_PUT: u8 = 9;
const T_INQOS2_DEL: u8 = 10;
const T_RETAIN_PUT: u8 = 11;
const T_RETAIN_DEL: u8 = 12;
const T_BRIDGE_PUT: u8 = 13;
const T_BRIDGE_DEL: u8 = 14;
/// A `QueuePut` with the packet id it went out under.
const T_QUEUE_PUT_SENT: u8 = 15;

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

pub(super) fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64(v);
        }
        None => out.put_u8(0),
    }
}

impl Record {
    /// Appends the record's body (type byte and fields).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Record::SessionPut {
                client_id,
                version,
                expiry_secs,
                disconnected_at_unix_ms,
            } => {
                out.put_u8(T_SESSION_PUT);
                put_str(out, client_id);
                out.put_u8(*version);
                out.put_u32(*expiry_secs);
                put_opt_u64(out, *disconnected_at_unix_ms);
            }
            Record::SessionDel { client_id } => {
                out.put_u8(T_SESSION_DEL);
                put_str(out, client_id);
            }
            Record::SubPut {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                out.put_u8(T_SUB_PUT);
                put_str(out, client_id);
                put_str(out, filter);
                out.put_u8(*options);
                put_opt_u64(out, subscription_id.map(u64::from));
            }
            Record::SubDel { client_id, filter } => {
                out.put_u8(T_SUB_DEL);
                put_str(out, client_id);
                put_str(out, filter);
            }
            Record::MsgPut(m) => {
                out.put_u8(T_MSG_PUT);
                out.put_u64(m.id);
                out.put_u8(m.qos as u8);
                out.put_u8(u8::from(m.retain));
                put_opt_u64(out, m.expires_at_unix_ms);
                // Topic, properties and payload as a v5 PUBLISH: the codec already validates
                // every part of it on the way back in.
                let publish = PublishRef {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: &m.topic,
                    packet_id: None,
                    properties: &m.properties,
                    payload: &m.payload,
                };
                let mut packet = BytesMut::with_capacity(publish.encoded_len(ProtocolVersion::V5));
                // A message the broker accepted always fits a PUBLISH.
                let _ = publish.encode(ProtocolVersion::V5, &mut packet);
                put_bytes(out, &packet);
            }
            Record::QueuePut {
                client_id,
                entry,
                msg_id,
                qos,
                retain,
                subscription_ids,
                sent,
            } => {
                out.put_u8(if sent.is_some() {
                    T_QUEUE_PUT_SENT
                } else {
                    T_QUEUE_PUT
                });
                put_str(out, client_id);
                out.put_u64(*entry);
                out.put_u64(*msg_id);
                out.put_u8(*qos as u8);
                out.put_u8(u8::from(*retain));
                out.put_u32(subscription_ids.len() as u32);
                for id in subscription_ids {
                    out.put_u32(*id);
                }
                if let Some(pid) = sent {
                    out.put_u16(*pid);
                }
            }
            Record::OutState {
                client_id,
                entry,
                packet_id,
                released,
            } => {
                out.put_u8(T_OUT_STATE);
                put_str(out, client_id);
                out.put_u64(*entry);
                out.put_u16(*packet_id);
                out.put_u8(u8::from(*released));
            }
            Record::QueueDel { client_id, entry } => {
                out.put_u8(T_QUEUE_DEL);
                put_str(out, client_id);
                out.put_u64(*entry);
            }
            Record::InQos2Put {
                client_id,
                packet_id,
            } => {
                out.put_u8(T_INQOS2_PUT);
                put_str(out, client_id);
                out.put_u16(*packet_id);
            }
            Record::InQos2Del {
                client_id,
                packet_id,
            } => {
                out.put_u8(T_INQOS2_DEL);
                put_str(out, client_id);
                out.put_u16(*packet_id);
            }
            Record::RetainPut { topic, msg_id } => {
                out.put_u8(T_RETAIN_PUT);
                put_str(out, topic);
                out.put_u64(*msg_id);
            }
            Record::RetainDel { topic } => {
                out.put_u8(T_RETAIN_DEL);
                put_str(out, topic);
            }
            Record::BridgePut {
                bridge,
                entry,
                msg_id,
                qos,
                retain,
            } => {
                out.put_u8(T_BRIDGE_PUT);
                put_str(out, bridge);
                out.put_u64(*entry);
                out.put_u64(*msg_id);
                out.put_u8(*qos as u8);
                out.put_u8(u8::from(*retain));
            }
            Record::BridgeDel { bridge, entry } => {
                out.put_u8(T_BRIDGE_DEL);
                put_str(out, bridge);
                out.put_u64(*entry);
            }
        }
    }

    /// Reads one record body; every byte must be used.
    pub fn decode(body: &[u8]) -> Result<Record, &'static str> {
        let mut r = Cursor { buf: body };
        let kind = r.u8()?;
        let record = match kind {
            T_SESSION_PUT => Record::SessionPut {
                client_id: r.string()?,
                version: r.u8()?,
                expiry_secs: r.u32()?,
                disconnected_at_unix_ms: r.opt_u64()?,
            },
            T_SESSION_DEL => Record::SessionDel {
                client_id: r.string()?,
            },
            T_SUB_PUT => Record::SubPut {
                client_id: r.string()?,
                filter: r.string()?,
                options: r.u8()?,
                subscription_id: match r.opt_u64()? {
                    Some(v) => Some(u32::try_from(v).map_err(|_| "subscription id too large")?),
                    None => None,
                },
            },
            T_SUB_DEL => Record::SubDel {
                client_id: r.string()?,
                filter: r.string()?,
            },
            T_MSG_PUT => {
                let id = r.u64()?;
                let qos = r.qos()?;
                let retain = r.bool()?;
                let expires_at_unix_ms = r.opt_u64()?;
                let packet = r.bytes()?;
                let mut buf = BytesMut::from(packet);
                let limits = DecodeLimits {
                    max_packet_size: usize::MAX,
                    max_user_properties: usize::MAX,
                };
                let publish =
                    match codec::decode_packet(&mut buf, Some(ProtocolVersion::V5), &limits) {
                        Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
                        _ => return Err("message is not a well-formed PUBLISH"),
                    };
                Record::MsgPut(Box::new(StoredMessage {
                    id,
                    topic: publish.topic,
                    payload: publish.payload,
                    qos,
                    retain,
                    properties: publish.properties,
                    expires_at_unix_ms,
                }))
            }
            T_QUEUE_PUT | T_QUEUE_PUT_SENT => {
                let client_id = r.string()?;
                let entry = r.u64()?;
                let msg_id = r.u64()?;
                let qos = r.qos()?;
                let retain = r.bool()?;
                let n = r.u32()? as usize;
                if n > r.buf.len() / 4 {
                    return Err("subscription id count past the end");
                }
                let mut subscription_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    subscription_ids.push(r.u32()?);
                }
                let sent = if kind == T_QUEUE_PUT_SENT {
                    Some(r.u16()?)
                } else {
                    None
                };
                Record::QueuePut {
                    client_id,
                    entry,
                    msg_id,
                    qos,
                    retain,
                    subscription_ids,
                    sent,
                }
            }
            T_OUT_STATE => Record::OutState {
                client_id: r.string()?,
                entry: r.u64()?,
                packet_id: r.u16()?,
                released: r.bool()?,
            },
            T_QUEUE_DEL => Record::QueueDel {
                client_id: r.string()?,
                entry: r.u64()?,
            },
            T_INQOS2_PUT => Record::InQos2Put {
                client_id: r.string()?,
                packet_id: r.u16()?,
            },
            T_INQOS2_DEL => Record::InQos2Del {
                client_id: r.string()?,
                packet_id: r.u16()?,
            },
            T_RETAIN_PUT => Record::RetainPut {
                topic: r.string()?,
                msg_id: r.u64()?,
            },
            T_RETAIN_DEL => Record::RetainDel { topic: r.string()? },
            T_BRIDGE_PUT => Record::BridgePut {
                bridge: r.string()?,
                entry: r.u64()?,
                msg_id: r.u64()?,
                qos: r.qos()?,
                retain: r.bool()?,
            },
            T_BRIDGE_DEL => Record::BridgeDel {
                bridge: r.string()?,
                entry: r.u64()?,
            },
            _ => return Err("unknown record type"),
        };
        if !r.buf.is_empty() {
            return Err("trailing bytes after the record");
        }
        Ok(record)
    }
}

pub(super) struct Cursor<'a> {
    pub(super) buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("record ends early");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(super) fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    pub(super) fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(super) fn bool(&mut self) -> Result<bool, &'static str> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("flag is neither 0 nor 1"),
        }
    }

    pub(super) fn qos(&mut self) -> Result<QoS, &'static str> {
        QoS::from_u8(self.u8()?).ok_or("QoS out of range")
    }

    pub(super) fn opt_u64(&mut self) -> Result<Option<u64>, &'static str> {
        if self.bool()? {
            Ok(Some(self.u64()?))
        } else {
            Ok(None)
        }
    }

    pub(super) fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub(super) fn string(&mut self) -> Result<String, &'static str> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "string is not UTF-8")
    }
}
