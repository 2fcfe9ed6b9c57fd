//! A message as routed, shared by every subscriber it goes to, and the cache that lets a fan-out
//! encode a QoS 0 message once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use crate::api::{ConnId, Instant};
use crate::codec::{Properties, ProtocolVersion, Publish, QoS, Will};
use crate::ids::SessionId;

/// A message as routed: shared by every subscriber it goes to.
#[derive(Debug)]
pub(crate) struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// PUBLISH properties to pass on (no topic alias, no subscription identifiers).
    pub properties: Properties,
    /// When the message stops being deliverable (v5 message expiry).
    pub expires_at: Option<Instant>,
    /// The session that published it, for no-local.
    pub publisher: Option<SessionId>,
    /// The bridge it came in through (not forwarded back there).
    pub from_bridge: Option<u64>,
    /// Its number in the store; given by the broker when it is published.
    pub id: u64,
    /// Whether the store has been given this message (once, however many refer to it).
    pub stored: AtomicBool,
    /// The store sequence number the input that accepted it depends on; a QoS 2 delivery
    /// waits until it is durable.
    pub needs_seq: AtomicU64,
}

impl Message {
    /// A message from nowhere in particular: no publisher, no bridge, no expiry, not stored.
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
    ) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties,
            expires_at: None,
            publisher: None,
            from_bridge: None,
            id: 0,
            stored: AtomicBool::new(false),
            needs_seq: AtomicU64::new(0),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// True the first time only: the caller then hands the message to the store.
    pub fn first_store(&self) -> bool {
        !self.stored.swap(true, Ordering::Relaxed)
    }
}

/// The routed form of a client PUBLISH: topic alias and subscription ids never travel on.
pub(crate) fn into_message(p: Publish) -> Message {
    let mut properties = p.properties;
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties,
        expires_at: None,
        publisher: None,
        from_bridge: None,
        id: 0,
        stored: AtomicBool::new(false),
        needs_seq: AtomicU64::new(0),
    }
}

pub(crate) fn will_message(will: Will, publisher: Option<SessionId>, now: Instant) -> Message {
    let mut properties = will.properties;
    properties.will_delay_interval = None;
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| now.plus_secs(u64::from(secs)));
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at,
        publisher,
        from_bridge: None,
        id: 0,
        stored: AtomicBool::new(false),
        needs_seq: AtomicU64::new(0),
    }
}

/// Where the last QoS 0 PUBLISH was encoded; its bytes are copied out when a second
/// subscriber needs the same encoding (a single delivery never pays for the copy).
pub(crate) struct EncodedQos0 {
    pub msg_id: u64,
    pub version: ProtocolVersion,
    pub retain: bool,
    pub conn: ConnId,
    pub range: std::ops::Range<usize>,
    pub bytes: Option<Bytes>,
}
