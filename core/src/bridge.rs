//! A bridge's state: the link to its remote broker, the outbox of messages waiting for it,
//! what is in flight there, and the QoS 2 ids it received. The broker drives it
//! (`broker/bridge.rs`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::api::{ConnId, Instant};
use crate::codec::{Properties, ProtocolVersion, QoS};
use crate::config::BridgeConfig;
use crate::persist::{self, Record};

/// Bridge connections get ids from their own range so they never meet the runtime's.
pub(crate) const BRIDGE_CONN_BASE: u64 = 1 << 63;
/// Shortest reconnect delay; it doubles per failed attempt up to `backoff_max`.
pub(crate) const BACKOFF_MIN_MS: u64 = 1_000;
/// How long a connection attempt may take, TCP to CONNACK.
pub(crate) const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// The user property that marks which broker a bridged message came from (v5 only).
pub(crate) const ORIGIN_PROPERTY: &str = "tidemq-origin";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// Waiting to (re)connect at `retry_at`.
    Down,
    /// Socket requested from the runtime.
    Connecting,
    /// CONNECT sent.
    AwaitingConnAck,
    Up,
}

#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
    /// Its number in the store's bridge outbox (with its body's id); 0 when not stored.
    pub entry: u64,
    pub msg_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Published,
    Released,
}

#[derive(Debug)]
pub(crate) struct Bridge {
    pub config: BridgeConfig,
    pub version: ProtocolVersion,
    pub link: Link,
    pub conn: Option<ConnId>,
    pub rx: BytesMut,
    /// Waiting for the link or the remote's window, oldest first.
    pub outbox: VecDeque<Outgoing>,
    /// Sent and not yet acknowledged, by packet id, and their send order.
    pub inflight: BTreeMap<u16, (Outgoing, Stage)>,
    pub inflight_order: VecDeque<u16>,
    pub next_packet_id: u16,
    pub remote_receive_maximum: u16,
    /// QoS 2 packet ids received from the remote and not yet released.
    pub awaiting_rel: BTreeSet<u16>,
    pub subscribe_id: Option<u16>,
    pub attempts: u32,
    pub retry_at: Instant,
    /// Connecting: when the attempt is abandoned.
    pub deadline: Option<Instant>,
    pub last_rx: Instant,
    pub last_tx: Instant,
    pub timer_armed: Option<Instant>,
    /// The next [`Outgoing::entry`].
    pub next_entry: u64,
}

impl Bridge {
    pub fn new(config: BridgeConfig, now: Instant) -> Bridge {
        let version = if config.proto_ver == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        Bridge {
            config,
            version,
            link: Link::Down,
            conn: None,
            rx: BytesMut::new(),
            outbox: VecDeque::new(),
            inflight: BTreeMap::new(),
            inflight_order: VecDeque::new(),
            next_packet_id: 1,
            remote_receive_maximum: u16::MAX,
            awaiting_rel: BTreeSet::new(),
            subscribe_id: None,
            attempts: 0,
            retry_at: now,
            deadline: None,
            last_rx: now,
            last_tx: now,
            timer_armed: None,
            next_entry: 1,
        }
    }

    pub fn keepalive_ms(&self) -> u64 {
        u64::from(self.config.keepalive) * 1000
    }

    /// The next moment this bridge needs the clock.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.link {
            Link::Down => Some(self.retry_at),
            Link::Connecting | Link::AwaitingConnAck => self.deadline,
            Link::Up if self.config.keepalive == 0 => None,
            Link::Up => {
                let ping = self.last_tx.plus_ms(self.keepalive_ms());
                let dead = self.last_rx.plus_ms(self.keepalive_ms() * 3 / 2);
                Some(ping.min(dead))
            }
        }
    }

    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) - 1 {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if Some(id) != self.subscribe_id && !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }
}

/// The remote topic for a local one under a forward rule (or the local topic for a remote
/// one under a subscription rule): empty keeps the topic; `a/#` to `b/#` swaps the prefix;
/// anything else replaces the whole topic.
pub(crate) fn remap(topic: &str, from_filter: &str, to: &str) -> String {
    if to.is_empty() {
        return topic.to_owned();
    }
    if let (Some(from_prefix), Some(to_prefix)) =
        (from_filter.strip_suffix('#'), to.strip_suffix('#'))
        && let Some(rest) = topic.strip_prefix(from_prefix)
    {
        return format!("{to_prefix}{rest}");
    }
    to.to_owned()
}

/// Every stored outbox entry, for a snapshot.
pub(crate) fn stored_records(bridges: &BTreeMap<String, Bridge>) -> Vec<Record> {
    let mut out = Vec::new();
    for (name, b) in bridges {
        let inflight = b
            .inflight_order
            .iter()
            .filter_map(|id| b.inflight.get(id).map(|(m, _)| m));
        for m in inflight.chain(b.outbox.iter()) {
            if m.entry != 0 {
                out.extend(bridge_put(name, m));
            }
        }
    }
    out
}

/// Removes an acknowledged message; its store entry (0 if none).
pub(crate) fn remove_inflight(b: &mut Bridge, id: u16) -> u64 {
    let entry = b.inflight.remove(&id).map_or(0, |(m, _)| m.entry);
    if let Some(pos) = b.inflight_order.iter().position(|x| *x == id) {
        b.inflight_order.remove(pos);
    }
    entry
}

/// The records of one stored outbox entry: its body, then its place.
pub(crate) fn bridge_put(name: &str, m: &Outgoing) -> [Record; 2] {
    [
        Record::MsgPut(persist::StoredMessage {
            id: m.msg_id,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.clone(),
            expires_at_unix_ms: None,
        }),
        Record::BridgePut {
            bridge: name.to_owned(),
            entry: m.entry,
            msg_id: m.msg_id,
            qos: m.qos,
            retain: m.retain,
        },
    ]
}

/// A stable small key for a bridge name (timers and message origins need `Copy` keys).
pub(crate) fn bridge_key(name: &str) -> u64 {
    // FNV-1a: deterministic, no hasher state.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::remap;

    #[test]
    fn topic_remapping_rules() {
        assert_eq!(remap("a/b", "a/#", ""), "a/b");
        assert_eq!(remap("a/b/c", "a/#", "remote/a/#"), "remote/a/b/c");
        assert_eq!(remap("sensor/1", "sensor/1", "fwd/s1"), "fwd/s1");
        assert_eq!(remap("x/y", "x/+", "fixed"), "fixed");
    }
}
