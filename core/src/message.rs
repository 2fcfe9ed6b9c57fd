//! A message as routed, shared by every subscriber it goes to, and the cache that lets a fan-out
//! encode a QoS 0 message once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use crate::api::{ConnId, Instant};
use crate::codec::{Properties, ProtocolVersion, Publish, QoS, Will};
use crate::ids::{BridgeId, SessionId};
use crate::memory::{Charge, Ledger, MESSAGE_BYTES};

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client's PUBLISH, or its session's will: counted as received, and not delivered to
    /// a no-local subscription of that session.
    Session(SessionId),
    /// A bridge's remote: counted as received, never forwarded back there.
    Bridge(BridgeId),
    /// The broker itself (`$SYS`), or the store (a restored message).
    Broker,
    /// The admin API's publish (counted as received, like a client's).
    Admin,
    /// Another node of the cluster: counted there, not here.
    Cluster,
}

/// What a message says, before it is a message: the parts of a PUBLISH or a will that
/// travel on.
#[derive(Debug)]
pub(crate) struct Content {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

impl Content {
    /// A client's or a remote's PUBLISH: topic alias and subscription ids never travel on.
    pub fn from_publish(p: Publish) -> Content {
        let mut properties = p.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Content {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties,
        }
    }

    /// A will: its delay is the broker's business, not the subscribers'.
    pub fn from_will(will: Will) -> Content {
        let mut properties = will.properties;
        properties.will_delay_interval = None;
        Content {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            properties,
        }
    }

    /// Takes the v5 message expiry interval out: the message keeps a deadline instead, and
    /// each delivery says how much of it is left.
    pub fn take_expiry(&mut self, now: Instant) -> Option<Instant> {
        self.properties
            .message_expiry_interval
            .take()
            .map(|secs| now.plus_secs(u64::from(secs)))
    }
}

/// A message as routed: built once, then shared by every subscriber it goes to. What the
/// store knows about it is the store's (`durable.rs`), not the message's.
#[derive(Debug)]
pub(crate) struct Message {
    /// Its number, unique among messages; the store refers to its body by it.
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// PUBLISH properties to pass on (no topic alias, no subscription identifiers, no
    /// message expiry interval: see `expires_at`).
    pub properties: Properties,
    /// When the message stops being deliverable (v5 message expiry).
    pub expires_at: Option<Instant>,
    pub origin: Origin,
    /// When the broker took it in (restored messages: when restored), for the
    /// publish-to-deliver latency.
    pub received_at: Instant,
    /// Its bytes in the broker's memory count, for as long as anyone holds it.
    pub charge: Charge,
    /// What the store knows of it ([`crate::durable`]), kept with the message so that it
    /// lives exactly as long: no side table to look up and sweep per message.
    pub durable: DurableMark,
}

/// The store's marks on a message. Atomics only so that a message stays `Sync`; the core
/// is single-threaded, so `Relaxed` is exact.
#[derive(Debug, Default)]
pub(crate) struct DurableMark {
    /// The store has been given its body (once, however many records refer to it).
    stored: AtomicBool,
    /// The sequence number the input that accepted it depends on: a QoS 2 delivery of it
    /// waits until that is durable (0: nothing).
    needs: AtomicU64,
    /// Cluster mode: its sequence in the durable stream (0: not there), by which a moved
    /// session knows what it was sent.
    stream_seq: AtomicU64,
}

impl DurableMark {
    /// True the first time only.
    pub fn first_store(&self) -> bool {
        !self.stored.swap(true, Ordering::Relaxed)
    }

    pub fn set_needs(&self, seq: u64) {
        self.needs.store(seq, Ordering::Relaxed);
    }

    pub fn needs(&self) -> u64 {
        self.needs.load(Ordering::Relaxed)
    }

    pub fn set_stream_seq(&self, seq: u64) {
        self.stream_seq.store(seq, Ordering::Relaxed);
    }

    pub fn stream_seq(&self) -> u64 {
        self.stream_seq.load(Ordering::Relaxed)
    }
}

impl Message {
    pub fn new(
        id: u64,
        content: Content,
        origin: Origin,
        expires_at: Option<Instant>,
        now: Instant,
        ledger: &Ledger,
    ) -> Message {
        let bytes = MESSAGE_BYTES
            + content.topic.len()
            + content.payload.len()
            + content.properties.body_len();
        Message {
            charge: ledger.charge(bytes),
            id,
            topic: content.topic,
            payload: content.payload,
            qos: content.qos,
            retain: content.retain,
            properties: content.properties,
            expires_at,
            origin,
            received_at: now,
            durable: DurableMark::default(),
        }
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// The session that published it, for no-local.
    pub fn publisher(&self) -> Option<SessionId> {
        match self.origin {
            Origin::Session(sid) => Some(sid),
            _ => None,
        }
    }

    /// The bridge it came in through.
    pub fn bridge(&self) -> Option<BridgeId> {
        match self.origin {
            Origin::Bridge(key) => Some(key),
            _ => None,
        }
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
