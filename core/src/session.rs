//! Per-client session state: subscriptions, the outbound inflight window and queue, the
//! inbound QoS 2 ids awaiting PUBREL, the will, and expiry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::api::{ConnId, Instant};

use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::message::Message;

/// Session expiry meaning "never" (v5 0xFFFFFFFF; also 3.1.1 clean session 0).
pub(crate) const NEVER_EXPIRES: u32 = u32::MAX;

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Its number among the session's durable deliveries; 0 when not stored.
    pub entry: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutStage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
pub(crate) struct Inflight {
    pub delivery: Delivery,
    pub stage: OutStage,
    /// Sent on the current connection; cleared on reconnect until it is resent.
    pub sent: bool,
    /// Send order, for resending in order.
    pub seq: u64,
}

/// What a subscription asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: String,
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    pub username: Option<String>,
    /// Keep alive of the last connection, in seconds.
    pub keep_alive: u16,
    /// Seconds the session outlives its connection; [`NEVER_EXPIRES`] for never.
    pub expiry_secs: u32,
    /// Raw filter as subscribed (with any `$share/group/` prefix) -> options.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Outbound QoS 1/2 messages not yet acknowledged, by packet id, in send order.
    pub inflight: BTreeMap<u16, Inflight>,
    /// Send order of `inflight` keys, for resending in order on resume.
    pub inflight_order: BTreeMap<u64, u16>,
    next_inflight_seq: u64,
    /// Entries of `inflight` not yet resent on the current connection.
    unsent: usize,
    pub next_packet_id: u16,
    /// Messages waiting for the connection, the inflight window or the writer.
    pub queue: VecDeque<Delivery>,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub awaiting_rel: BTreeSet<u16>,
    /// The will of the current connection, or of the last one while its delay runs.
    pub will: Option<Will>,
    /// When a delayed will is due.
    pub will_at: Option<Instant>,
    /// When the session ends, once disconnected.
    pub expires_at: Option<Instant>,
    /// The session timer currently armed, if any.
    pub timer_armed: Option<Instant>,
    pub messages_received: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    /// Kept in the store (persistence on and a session expiry above 0).
    pub durable: bool,
    /// The next [`Delivery::entry`].
    pub next_entry: u64,
    /// Wall clock when the last connection ended, for expiry across a restart.
    pub disconnected_at_unix_ms: Option<u64>,
}

impl Session {
    pub fn new(client_id: String, version: ProtocolVersion) -> Session {
        Session {
            client_id,
            conn: None,
            version,
            username: None,
            keep_alive: 0,
            expiry_secs: 0,
            subscriptions: BTreeMap::new(),
            inflight: BTreeMap::new(),
            inflight_order: BTreeMap::new(),
            next_inflight_seq: 0,
            unsent: 0,
            next_packet_id: 1,
            queue: VecDeque::new(),
            awaiting_rel: BTreeSet::new(),
            will: None,
            will_at: None,
            expires_at: None,
            timer_armed: None,
            messages_received: 0,
            messages_sent: 0,
            messages_dropped: 0,
            durable: false,
            next_entry: 1,
            disconnected_at_unix_ms: None,
        }
    }

    /// A free packet id, or `None` when all 65,535 are in flight.
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        if self.inflight.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = if id == u16::MAX { 1 } else { id + 1 };
            if id != 0 && !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// The session's next deadline: will delay or expiry, whichever is first.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.will_at, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The oldest message in flight not yet resent on the current connection.
    pub fn next_resend(&self) -> Option<u16> {
        // O(1) in the steady state: only a resumed session has anything to resend.
        if self.unsent == 0 {
            return None;
        }
        self.inflight_order
            .values()
            .copied()
            .find(|id| self.inflight.get(id).is_some_and(|f| !f.sent))
    }

    /// Messages in flight on the current connection: what counts against its window.
    pub fn inflight_sent(&self) -> usize {
        self.inflight.len() - self.unsent
    }

    /// A message just sent with packet id `id`.
    pub fn push_inflight(&mut self, id: u16, delivery: Delivery) {
        let seq = self.next_inflight_seq;
        self.next_inflight_seq += 1;
        let entry = Inflight {
            delivery,
            stage: OutStage::Published,
            sent: true,
            seq,
        };
        if let Some(old) = self.inflight.insert(id, entry) {
            self.inflight_order.remove(&old.seq);
            if !old.sent {
                self.unsent -= 1;
            }
        }
        self.inflight_order.insert(seq, id);
    }

    /// A new connection: everything in flight is to be resent.
    pub fn mark_all_unsent(&mut self) {
        for f in self.inflight.values_mut() {
            f.sent = false;
        }
        self.unsent = self.inflight.len();
    }

    /// `id` went out (again) on the current connection.
    pub fn mark_sent(&mut self, id: u16) {
        if let Some(f) = self.inflight.get_mut(&id)
            && !f.sent
        {
            f.sent = true;
            self.unsent -= 1;
        }
    }

    pub fn remove_inflight(&mut self, id: u16) -> Option<Inflight> {
        let removed = self.inflight.remove(&id)?;
        self.inflight_order.remove(&removed.seq);
        if !removed.sent {
            self.unsent -= 1;
        }
        Some(removed)
    }
}
