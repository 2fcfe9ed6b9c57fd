//! A bridge: the broker as an MQTT client of a remote broker. Its state machine owns the
//! link (connecting, backoff, keep alive), the outbox of messages waiting for the remote, the
//! window of those in flight there and the QoS 2 ids it received: the same window and inbound
//! set a session has. The broker drives it (`broker/bridging.rs`) and does the I/O.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::api::{ConnId, Instant};
use crate::codec::{
    ConnAck, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use crate::config::{BridgeConfig, BridgeSubscription};
use crate::memory::{BRIDGE_BYTES, Charge, Ledger, MESSAGE_BYTES, QOS2_ID_BYTES};
use crate::persist::{self, Record};
use crate::window::{InboundQos2, OutStage, OutWindow};

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
    /// Its bytes in the memory count while it waits or is in flight (given back on drop).
    _charge: Charge,
}

/// What a bridge has done, for the admin API's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BridgeCounters {
    pub tx_msgs: u64,
    pub rx_msgs: u64,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Connection attempts started.
    pub connects: u64,
    /// Messages for the remote dropped (outbox full, QoS 0 while down).
    pub send_drop: u64,
    /// Messages from the remote dropped (no rule, bad topic, a loop).
    pub recv_drop: u64,
}

#[derive(Debug)]
pub(crate) struct Bridge {
    pub name: String,
    pub config: BridgeConfig,
    pub version: ProtocolVersion,
    pub link: Link,
    pub conn: Option<ConnId>,
    pub rx: BytesMut,
    /// Bytes handed out in Transmits on the link and not yet reported written.
    pub unwritten: usize,
    /// The receive maximum told the remote on this link: unreleased QoS 2 ids past it close
    /// the link.
    pub receive_maximum: u16,
    /// Its link's buffers, unwritten output and QoS 2 ids in the memory count (its messages
    /// carry their own).
    pub charge: Charge,
    /// Waiting for the link or the remote's window, oldest first.
    pub outbox: VecDeque<Outgoing>,
    /// Sent and not yet acknowledged.
    pub inflight: OutWindow<Outgoing>,
    pub remote_receive_maximum: u16,
    /// QoS 2 packet ids received from the remote and not yet released.
    pub qos2_in: InboundQos2,
    /// The SUBSCRIBE waiting for its SUBACK: its packet id is not free for a PUBLISH.
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
    /// Switched off through the admin API: no link, no reconnects; the outbox stays.
    pub switched_off: bool,
    /// How many filters the SUBSCRIBE waiting for its SUBACK carries.
    pub subscribe_len: usize,
    pub counters: BridgeCounters,
}

impl Bridge {
    pub fn new(name: String, config: BridgeConfig, now: Instant, ledger: &Ledger) -> Bridge {
        let version = if config.proto_ver == 5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        };
        Bridge {
            charge: ledger.charge(BRIDGE_BYTES + name.len()),
            name,
            config,
            version,
            link: Link::Down,
            conn: None,
            rx: BytesMut::new(),
            unwritten: 0,
            receive_maximum: u16::MAX,
            outbox: VecDeque::new(),
            inflight: OutWindow::default(),
            remote_receive_maximum: u16::MAX,
            qos2_in: InboundQos2::default(),
            subscribe_id: None,
            attempts: 0,
            retry_at: now,
            deadline: None,
            last_rx: now,
            last_tx: now,
            timer_armed: None,
            next_entry: 1,
            switched_off: false,
            subscribe_len: 0,
            counters: BridgeCounters::default(),
        }
    }

    /// The same bridge with new settings: it reconnects from scratch, keeping what waits for
    /// the remote (what was in flight goes back to the front of the outbox).
    pub fn reconfigured(mut self, config: BridgeConfig, now: Instant) -> Bridge {
        self.requeue_inflight();
        let ledger = self.charge.ledger().clone();
        let mut b = Bridge::new(self.name, config, now, &ledger);
        b.outbox = self.outbox;
        b.next_entry = self.next_entry;
        b.counters = self.counters;
        b
    }

    /// Brings the memory count up to what the link holds now.
    pub fn recount(&mut self) {
        let bytes = BRIDGE_BYTES
            + self.name.len()
            + self.rx.capacity()
            + self.unwritten
            + self.qos2_in.len() * QOS2_ID_BYTES;
        if bytes != self.charge.bytes() {
            self.charge.set(bytes);
        }
    }

    /// A new link starts with empty buffers; what the old one held is given back.
    fn fresh_buffers(&mut self) {
        self.rx = BytesMut::new();
        self.unwritten = 0;
        self.recount();
    }

    pub fn keepalive_ms(&self) -> u64 {
        u64::from(self.config.keepalive) * 1000
    }

    /// The next moment this bridge needs the clock.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.link {
            Link::Down if self.switched_off => None,
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

    /// The socket was asked for under `conn`.
    pub fn connecting(&mut self, conn: ConnId, now: Instant) {
        self.conn = Some(conn);
        self.link = Link::Connecting;
        self.deadline = Some(now.plus_ms(CONNECT_TIMEOUT_MS));
        self.fresh_buffers();
    }

    /// The socket is open: the CONNECT to send, telling a v5 remote how much it may send
    /// (`receive_maximum` unreleased QoS 2 messages, packets up to `max_packet_size`).
    pub fn connect_packet(
        &mut self,
        now: Instant,
        receive_maximum: u16,
        max_packet_size: u32,
    ) -> Packet {
        self.link = Link::AwaitingConnAck;
        self.last_rx = now;
        self.receive_maximum = receive_maximum.max(1);
        let mut properties = Properties::default();
        if self.version.is_v5() {
            if !self.config.clean_start {
                // Keep the remote session across reconnects, so nothing in flight is lost.
                properties.session_expiry_interval = Some(u32::MAX);
            }
            properties.receive_maximum = Some(self.receive_maximum);
            properties.maximum_packet_size = Some(max_packet_size);
        }
        Packet::Connect(Box::new(Connect {
            version: self.version,
            clean_start: self.config.clean_start,
            keep_alive: self.config.keepalive,
            properties,
            client_id: self.config.clientid.clone(),
            will: None,
            username: self.config.username.clone(),
            password: self
                .config
                .password
                .as_ref()
                .map(|p| Bytes::from(p.clone())),
        }))
    }

    /// The link is gone: the conn it had, and the delay before the next attempt
    /// (exponential backoff with `jitter` spreading it ±20%).
    pub fn link_down(&mut self, now: Instant, jitter: u64) -> (Option<ConnId>, u64) {
        let conn = self.conn.take();
        let was_up = self.link == Link::Up;
        self.link = Link::Down;
        self.deadline = None;
        self.subscribe_id = None;
        self.fresh_buffers();
        // The remote may keep the session: what is in flight is resent, or requeued, once
        // the CONNACK says whether it did.
        self.inflight.mark_all_unsent();
        if was_up {
            self.attempts = 0;
        }
        let max_ms = u64::from(self.config.backoff_max).max(1) * 1000;
        let base = BACKOFF_MIN_MS
            .saturating_mul(1 << self.attempts.min(16))
            .min(max_ms);
        // ±20% so that many bridges do not reconnect in step.
        let spread = base / 5;
        let delay = base - spread + jitter % (2 * spread + 1);
        self.attempts = self.attempts.saturating_add(1);
        self.retry_at = now.plus_ms(delay);
        (conn, delay)
    }

    /// The remote lost (or never had) our session: what was in flight goes back to the
    /// front of the outbox, in order, to be sent as new messages; its QoS 2 ids are gone.
    fn requeue_inflight(&mut self) {
        for msg in self.inflight.take_all().into_iter().rev() {
            self.outbox.push_front(msg);
        }
        self.qos2_in.clear();
    }

    /// A successful CONNACK: the link is up. Returns the SUBSCRIBE to send, if any.
    pub fn connected(&mut self, ack: &ConnAck) -> Option<Packet> {
        self.link = Link::Up;
        self.attempts = 0;
        self.deadline = None;
        self.remote_receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
        // [MQTT-4.4.0-1]: with the session kept, what was in flight is resent with the same
        // packet ids; without it, it starts again.
        if !ack.session_present || self.config.clean_start {
            self.requeue_inflight();
        }
        self.qos2_in.new_connection();
        self.recount();
        let filters: Vec<(String, SubscriptionOptions)> =
            self.config.subscription.iter().map(remote_filter).collect();
        if filters.is_empty() {
            return None;
        }
        let id = self.inflight.allocate_packet_id(None);
        self.subscribe_id = id;
        self.subscribe_len = filters.len();
        id.map(|packet_id| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties: Properties::default(),
                filters,
            })
        })
    }

    /// The next packet to send while the link is up: a resend of what was in flight before
    /// a reconnect, then the outbox within the remote's window and ours (`max_inflight`, as
    /// for a session: what is in flight is held until acknowledged).
    pub fn next_to_send(&mut self, max_inflight: u16) -> Option<Packet> {
        if self.link != Link::Up {
            return None;
        }
        if let Some(id) = self.inflight.next_resend() {
            self.inflight.mark_sent(id);
            let f = self.inflight.get(id)?;
            return Some(match f.stage {
                OutStage::Published => f.item.publish(Some(id), true),
                OutStage::Released => {
                    Packet::PubRel(crate::codec::Ack::new(id, crate::codec::reason::SUCCESS))
                }
            });
        }
        let front = self.outbox.front()?;
        if front.qos != QoS::AtMostOnce
            && self.inflight.len() >= usize::from(self.remote_receive_maximum.min(max_inflight))
        {
            return None;
        }
        let msg = self.outbox.pop_front()?;
        if msg.qos == QoS::AtMostOnce {
            return Some(msg.into_publish(None));
        }
        let Some(id) = self.inflight.allocate_packet_id(self.subscribe_id) else {
            self.outbox.push_front(msg);
            return None;
        };
        let packet = msg.publish(Some(id), false);
        self.inflight.push(id, msg);
        Some(packet)
    }

    /// Everything it holds, in flight first (in send order), then the outbox.
    pub fn into_backlog(mut self) -> VecDeque<Outgoing> {
        self.requeue_inflight();
        self.outbox
    }

    /// Messages waiting or in flight.
    pub fn backlog(&self) -> (usize, usize) {
        (self.outbox.len(), self.inflight.len())
    }

    /// Every stored outbox entry (in flight first, in send order), for a snapshot.
    pub fn stored_records(&self) -> Vec<Record> {
        let mut out = Vec::new();
        let inflight = self
            .inflight
            .ids_in_order()
            .into_iter()
            .filter_map(|id| self.inflight.get(id).map(|f| f.item.clone()));
        for m in inflight.chain(self.outbox.iter().cloned()) {
            if m.entry != 0 {
                out.extend(bridge_put(&self.name, &m));
            }
        }
        out
    }
}

impl Outgoing {
    /// A message for the remote, counted against `ledger` until it leaves the broker.
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        properties: Properties,
        ledger: &Ledger,
    ) -> Outgoing {
        let bytes = MESSAGE_BYTES + topic.len() + payload.len() + properties.body_len();
        Outgoing {
            _charge: ledger.charge(bytes),
            topic,
            payload,
            qos,
            retain,
            properties,
            entry: 0,
            msg_id: 0,
        }
    }

    fn publish(&self, packet_id: Option<u16>, dup: bool) -> Packet {
        Packet::Publish(Publish {
            dup,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic.clone(),
            packet_id,
            properties: self.properties.clone(),
            payload: self.payload.clone(),
        })
    }

    fn into_publish(self, packet_id: Option<u16>) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: self.qos,
            retain: self.retain,
            topic: self.topic,
            packet_id,
            properties: self.properties,
            payload: self.payload,
        })
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

/// The records of one stored outbox entry: its body, then its place.
pub(crate) fn bridge_put(name: &str, m: &Outgoing) -> [Record; 2] {
    [
        Record::MsgPut(Box::new(persist::StoredMessage {
            id: m.msg_id,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.clone(),
            expires_at_unix_ms: None,
        })),
        Record::BridgePut {
            bridge: name.to_owned(),
            entry: m.entry,
            msg_id: m.msg_id,
            qos: m.qos,
            retain: m.retain,
        },
    ]
}

/// A bridge subscription as the filter and options this bridge sends the remote.
pub(crate) fn remote_filter(s: &BridgeSubscription) -> (String, SubscriptionOptions) {
    (
        s.remote_topic.clone(),
        SubscriptionOptions {
            qos: QoS::from_u8(s.qos).unwrap_or_default(),
            // v5: never get back what this bridge published there.
            no_local: true,
            retain_as_published: true,
            retain_handling: 0,
        },
    )
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
