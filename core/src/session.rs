//! Per-client session state: subscriptions, the outbound inflight window and queue, the
//! inbound QoS 2 ids awaiting PUBREL, the will, and expiry.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::api::{ConnId, Instant};

use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions, Will};
use crate::ids::SessionId;
use crate::memory::{Charge, DELIVERY_BYTES, Ledger, SESSION_BYTES, SUBSCRIPTION_BYTES};
use crate::message::Message;
use crate::window::{InboundQos2, OutWindow};

/// Session expiry meaning "never" (v5 0xFFFFFFFF; also 3.1.1 clean session 0).
pub(crate) const NEVER_EXPIRES: u32 = u32::MAX;

/// One message on its way to one subscriber. Its bytes are in the memory count, on its
/// message's ledger, for as long as it waits or is in flight (its ids never change once made).
#[derive(Debug)]
pub(crate) struct Delivery {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Its number among the session's durable deliveries; 0 when not stored.
    pub entry: u64,
}

impl Delivery {
    pub fn new(
        msg: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
        entry: u64,
    ) -> Delivery {
        let d = Delivery {
            msg,
            qos,
            retain,
            subscription_ids,
            entry,
        };
        d.msg.charge.ledger().take(d.bytes());
        d
    }

    fn bytes(&self) -> usize {
        DELIVERY_BYTES + 4 * self.subscription_ids.len()
    }
}

impl Clone for Delivery {
    fn clone(&self) -> Delivery {
        Delivery::new(
            self.msg.clone(),
            self.qos,
            self.retain,
            self.subscription_ids.clone(),
            self.entry,
        )
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.msg.charge.ledger().give_back(self.bytes());
    }
}

/// What a subscription asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscription {
    pub options: SubscriptionOptions,
    pub id: Option<u32>,
    /// Cluster mode, in the index only: the number of the node's NATS subscription for this
    /// filter (0: none). A message from another node reaches a session through the matching
    /// filter with the lowest number only, so each session gets one copy, in publish order.
    pub cluster_key: u64,
}

/// One subscription's retained messages still to send: where the walk of the retained
/// store goes on from, in topic order.
#[derive(Debug)]
pub(crate) struct Replay {
    pub filter: String,
    pub sub: Subscription,
    /// Topic levels to go on from (inclusive); empty: from the start.
    pub from: Vec<String>,
    /// Retained messages numbered above this came after the subscription: they were routed
    /// to it as they came and are not sent again.
    pub last_msg_id: u64,
}

/// The retained replays a session still owes, oldest first; at most one per filter (a new
/// SUBSCRIBE to a filter still being replayed starts its walk over), so there are never
/// more than the session has subscriptions. Nothing is allocated while none is owed (most
/// sessions, most of the time).
#[derive(Debug, Default)]
pub(crate) struct Replays(Option<Box<Owed>>);

#[derive(Debug)]
struct Owed {
    order: BTreeMap<u64, Replay>,
    by_filter: BTreeMap<String, u64>,
    next: u64,
    charge: Charge,
}

impl Owed {
    fn bytes(r: &Replay) -> usize {
        SUBSCRIPTION_BYTES + 2 * r.filter.len() + r.from.iter().map(String::len).sum::<usize>()
    }

    fn count(&mut self, r: &Replay) {
        self.charge.set(self.charge.bytes() + Self::bytes(r));
    }

    fn uncount(&mut self, r: &Replay) {
        self.charge
            .set(self.charge.bytes().saturating_sub(Self::bytes(r)));
    }
}

impl Replays {
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Queues a replay last, replacing one of the same filter.
    pub fn push(&mut self, replay: Replay, ledger: &Ledger) {
        let owed = self.0.get_or_insert_with(|| {
            Box::new(Owed {
                order: BTreeMap::new(),
                by_filter: BTreeMap::new(),
                next: 0,
                charge: ledger.charge(0),
            })
        });
        if let Some(old) = owed.by_filter.remove(&replay.filter)
            && let Some(old) = owed.order.remove(&old)
        {
            owed.uncount(&old);
        }
        owed.next += 1;
        owed.count(&replay);
        owed.by_filter.insert(replay.filter.clone(), owed.next);
        owed.order.insert(owed.next, replay);
    }

    pub fn front(&self) -> Option<&Replay> {
        self.0.as_ref()?.order.first_key_value().map(|(_, r)| r)
    }

    /// The oldest replay goes on from `from` next time.
    pub fn advance_front(&mut self, from: Vec<String>) {
        let Some(owed) = self.0.as_mut() else {
            return;
        };
        let Some(mut entry) = owed.order.first_entry() else {
            return;
        };
        let old = std::mem::replace(&mut entry.get_mut().from, from);
        let new: usize = entry.get().from.iter().map(String::len).sum();
        let old: usize = old.iter().map(String::len).sum();
        owed.charge
            .set(owed.charge.bytes().saturating_sub(old) + new);
    }

    /// The replay for `filter` is not owed any more (the subscription is gone).
    pub fn remove(&mut self, filter: &str) {
        let Some(owed) = self.0.as_mut() else {
            return;
        };
        if let Some(seq) = owed.by_filter.remove(filter)
            && let Some(r) = owed.order.remove(&seq)
        {
            owed.uncount(&r);
        }
        self.release_if_done();
    }

    /// The oldest replay is done.
    pub fn pop_front(&mut self) {
        let Some(owed) = self.0.as_mut() else {
            return;
        };
        if let Some((_, r)) = owed.order.pop_first() {
            owed.by_filter.remove(&r.filter);
            owed.uncount(&r);
        }
        self.release_if_done();
    }

    fn release_if_done(&mut self) {
        if self.0.as_ref().is_some_and(|o| o.order.is_empty()) {
            self.0 = None;
        }
    }
}

#[derive(Debug)]
pub(crate) struct Session {
    pub client_id: String,
    pub conn: Option<ConnId>,
    pub version: ProtocolVersion,
    pub username: Option<String>,
    /// Keep alive of the last connection, in seconds.
    pub keep_alive: u16,
    /// Whether the last connection asked for a clean start (shown by the admin API).
    pub clean_start: bool,
    /// Seconds the session outlives its connection; [`NEVER_EXPIRES`] for never.
    pub expiry_secs: u32,
    /// Raw filter as subscribed (with any `$share/group/` prefix) -> options.
    pub subscriptions: BTreeMap<String, Subscription>,
    /// Outbound QoS 1/2 messages not yet acknowledged.
    pub inflight: OutWindow<Delivery>,
    /// Messages waiting for the connection, the inflight window or the writer.
    pub queue: VecDeque<Delivery>,
    /// Retained messages still owed to new subscriptions; sent before anything queued.
    pub replays: Replays,
    /// Inbound QoS 2 packet ids received and not yet released.
    pub qos2_in: InboundQos2,
    /// The will of the current connection, or of the last one while its delay runs.
    /// Boxed: most sessions have none, and an inline one would double an idle session's size.
    pub will: Option<Box<Will>>,
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
    /// The session and its subscriptions in the memory count (its deliveries carry their own).
    pub charge: Charge,
}

impl Session {
    pub fn new(client_id: String, version: ProtocolVersion, ledger: &Ledger) -> Session {
        Session {
            charge: ledger.charge(SESSION_BYTES + client_id.len()),
            client_id,
            conn: None,
            version,
            username: None,
            keep_alive: 0,
            clean_start: true,
            expiry_secs: 0,
            subscriptions: BTreeMap::new(),
            inflight: OutWindow::default(),
            queue: VecDeque::new(),
            replays: Replays::default(),
            qos2_in: InboundQos2::default(),
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

    /// Adds a subscription (or replaces one with the same filter), counting its bytes.
    pub fn subscribe(&mut self, raw: String, sub: Subscription) {
        let bytes = SUBSCRIPTION_BYTES + 2 * raw.len();
        if self.subscriptions.insert(raw, sub).is_none() {
            self.charge.set(self.charge.bytes() + bytes);
        }
    }

    /// Removes a subscription; whether it was there.
    pub fn unsubscribe(&mut self, raw: &str) -> bool {
        let removed = self.subscriptions.remove(raw).is_some();
        // Nothing more is sent for a subscription once it is gone [MQTT-3.10.4-2].
        self.replays.remove(raw);
        if removed {
            let bytes = SUBSCRIPTION_BYTES + 2 * raw.len();
            self.charge.set(self.charge.bytes().saturating_sub(bytes));
        }
        removed
    }

    /// The session's next deadline: will delay or expiry, whichever is first.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.will_at, self.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Offline sessions, nearest their end first (never-expiring ones last): what is shed past
/// the memory budget is found without looking at every session.
#[derive(Debug, Default)]
pub(crate) struct OfflineByEnd(BTreeSet<(bool, Option<Instant>, SessionId)>);

impl OfflineByEnd {
    fn key(sid: SessionId, s: &Session) -> (bool, Option<Instant>, SessionId) {
        (s.expires_at.is_none(), s.expires_at, sid)
    }

    /// `s` is offline with its end set.
    pub fn insert(&mut self, sid: SessionId, s: &Session) {
        self.0.insert(Self::key(sid, s));
    }

    /// `s` is online again, or gone; call before its end changes.
    pub fn remove(&mut self, sid: SessionId, s: &Session) {
        self.0.remove(&Self::key(sid, s));
    }

    pub fn first(&self) -> Option<SessionId> {
        self.0.first().map(|&(_, _, sid)| sid)
    }

    pub fn pop_first(&mut self) {
        self.0.pop_first();
    }
}

/// Sessions whose replays used up their step's work, and the timer that goes on with them
/// (`broker/retained_replay.rs`).
#[derive(Debug, Default)]
pub(crate) struct ReplayDue {
    pub sessions: BTreeSet<SessionId>,
    pub armed: Option<Instant>,
}
