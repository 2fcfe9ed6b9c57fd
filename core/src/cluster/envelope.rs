//! A message as it travels between nodes: the NATS payload. The topic is the subject; the
//! rest is here, with the origin's `(node, epoch, sequence)` that lets a node route each
//! message once however many of its subscriptions NATS delivered it on.
//!
//! Layout: version (1), flags (QoS in bits 0–1, retain in bit 2), origin node (MQTT string),
//! epoch (u64), sequence (u64), expiry (u64, Unix ms; 0 = none), v5 PUBLISH properties
//! (length-prefixed, without the expiry interval), payload (the rest). The expiry is a wall
//! time, not an interval, so a message read later (a retained one, from the bucket) keeps its
//! deadline.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Properties, PropertyContext, QoS, Reader, put_str};

const VERSION: u8 = 1;
const RETAIN: u8 = 0b100;
/// User properties one envelope may carry: the MQTT limit a node accepts from its clients is
/// lower; this only bounds what a foreign writer could make a node decode.
const MAX_USER_PROPERTIES: usize = 65_535;

/// What a held [`Stamp`] costs at most: a node name (at most 64 bytes) and two numbers.
pub const STAMP_BYTES: usize = 80;

/// Which node sent a message, and its place among that node's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub node: String,
    /// Changes at every start of the node: its sequence starts again.
    pub epoch: u64,
    pub seq: u64,
}

/// What a node needs to route a message from another node.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub stamp: Stamp,
    /// When the message expires, in Unix milliseconds.
    pub expires_unix_ms: Option<u64>,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    pub payload: Bytes,
}

/// Why an envelope could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeError {
    Version,
    Malformed,
}

/// An envelope from borrowed parts: what a node sends, without copying the message's
/// properties.
pub fn encode(
    stamp: &Stamp,
    expires_unix_ms: Option<u64>,
    qos: QoS,
    retain: bool,
    properties: &Properties,
    payload: &[u8],
) -> Bytes {
    let len = 32 + stamp.node.len() + properties.encoded_len() + payload.len();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(VERSION);
    out.put_u8(qos as u8 | if retain { RETAIN } else { 0 });
    put_str(&mut out, &stamp.node);
    out.put_u64(stamp.epoch);
    out.put_u64(stamp.seq);
    out.put_u64(expires_unix_ms.unwrap_or(0));
    properties.encode(&mut out);
    out.put_slice(payload);
    out.freeze()
}

impl Envelope {
    pub fn encode(&self) -> Bytes {
        encode(
            &self.stamp,
            self.expires_unix_ms,
            self.qos,
            self.retain,
            &self.properties,
            &self.payload,
        )
    }

    /// Reads what [`Envelope::encode`] wrote; anything else is an error, never a panic.
    pub fn decode(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        let mut r = Reader::new(bytes);
        let bad = |_| EnvelopeError::Malformed;
        if r.u8().map_err(bad)? != VERSION {
            return Err(EnvelopeError::Version);
        }
        let flags = r.u8().map_err(bad)?;
        if flags & !(RETAIN | 0b11) != 0 {
            return Err(EnvelopeError::Malformed);
        }
        let qos = QoS::from_u8(flags & 0b11).ok_or(EnvelopeError::Malformed)?;
        let node = r.string().map_err(bad)?;
        let epoch = u64::from(r.u32().map_err(bad)?) << 32 | u64::from(r.u32().map_err(bad)?);
        let seq = u64::from(r.u32().map_err(bad)?) << 32 | u64::from(r.u32().map_err(bad)?);
        let expires = u64::from(r.u32().map_err(bad)?) << 32 | u64::from(r.u32().map_err(bad)?);
        let properties = Properties::decode(&mut r, PropertyContext::Publish, MAX_USER_PROPERTIES)
            .map_err(bad)?;
        if properties.topic_alias.is_some()
            || !properties.subscription_identifiers.is_empty()
            || properties.message_expiry_interval.is_some()
        {
            return Err(EnvelopeError::Malformed);
        }
        Ok(Envelope {
            stamp: Stamp { node, epoch, seq },
            expires_unix_ms: (expires != 0).then_some(expires),
            qos,
            retain: flags & RETAIN != 0,
            properties,
            payload: r.rest(),
        })
    }
}
