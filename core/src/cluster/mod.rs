//! Cluster mode on NATS (design: `docs/cluster.md`): what a node knows of the cluster, as pure
//! data. The runtime owns the NATS client and turns the core's cluster outputs into NATS
//! operations and what NATS delivers into inputs; the broker's side is `broker/clustering.rs`.
//!
//! - `config`: the `cluster { }` settings and their bounds.
//! - `subject`: MQTT topics and filters as NATS subjects, queue groups and KV keys.
//! - `envelope`: a message as it travels between nodes.
//! - `interest`: the NATS subscriptions this node holds for its sessions' filters.
//! - `owner`: one owner per client id, claimed in the sessions bucket.
//! - `record`: a persistent session's record in that bucket, so it can resume elsewhere.
//! - `qos2`: what that record says of its QoS 2 messages, so none goes out twice.

pub mod config;
pub mod envelope;
pub(crate) mod interest;
pub mod nodes;
pub mod owner;
pub(crate) mod qos2;
pub mod reaper;
pub mod record;
pub mod subject;

pub use config::ClusterConfig;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::api::ConnId;
use crate::codec::ProtocolVersion;
use crate::ids::SessionId;
use crate::memory::{Charge, Ledger};
use crate::message::Content;
use envelope::Stamp;

/// What a retained key awaited from the watch costs beyond its bytes (map entry, count).
const PENDING_KEY_BYTES: usize = 64;

/// Durable writes one connection may have on their way at once.
pub const PIPELINE: usize = 64;

/// Catch-up reads of the durable stream at once; more wait their turn.
pub const MAX_CATCHUPS: usize = 64;

/// What one catch-up read costs while it runs or waits.
pub(crate) const CATCHUP_BYTES: usize = 96;
/// What a delivery held back behind a catch-up read costs beyond its message (counted with
/// the message).
pub(crate) const DEFERRED_BYTES: usize = 96;

/// Deliveries to a session whose catch-up read runs, held back so that what the read brings
/// (older) comes first: a moved session gets each publisher's messages in order.
pub(crate) struct Deferred {
    pub items: VecDeque<crate::session::Delivery>,
    pub charge: Charge,
}

/// A catch-up read for a session resumed here: the stream from `from`, another node's
/// messages up to `to_all` (the feed's place when the session resumed), this node's up to
/// `to_own`; the range is fixed when the read is first asked for, or when the feed starts if
/// it had not yet.
pub(crate) struct CatchUp {
    pub sid: SessionId,
    pub from: u64,
    pub range: Option<(u64, u64)>,
    pub attempts: u8,
    /// This node's own messages not routed yet when the read was asked for (by stream
    /// sequence, and by stamp sequence for those JetStream had not answered): they reach
    /// the session when they are, not through the read.
    pub unrouted: BTreeSet<u64>,
    pub unanswered: BTreeSet<u64>,
    pub _charge: Charge,
}

/// A client's QoS 1/2 PUBLISH waiting for JetStream to have it.
pub(crate) struct Waiting {
    pub conn: ConnId,
    pub sid: SessionId,
    pub version: ProtocolVersion,
    pub packet_id: u16,
    pub content: Content,
    /// The node feed's place when the write was asked for: the stream puts the message
    /// after it, and until it is routed no session's cursor may pass that place.
    pub feed_at: u64,
    /// A QoS 2 PUBLISH whose write waits for the session's record to hold its id.
    pub unwritten: Option<Unwritten>,
    /// A PUBLISH again with an inbound QoS 2 id the session resumed with: written again under
    /// the dedup id its last node recorded, not routed here (the feed brings it).
    pub again: bool,
    /// The sequence in its stamp (this node's), and whether it was routed already: the feed
    /// read it before JetStream's answer came.
    pub stamp_seq: u64,
    pub routed: bool,
    /// A persistent session's inbound QoS 2 write: the stamp its record holds the id with,
    /// for the record's stored mark once JetStream confirms it.
    pub recorded_stamp: Option<Stamp>,
    /// Written for a session that moved here, before its last node's writes were read: it
    /// is routed once the feed reaches it (even if the session has ended meanwhile).
    pub behind_feed: bool,
    pub _charge: Charge,
}

/// Writes given up before they were made whose stamps a node remembers.
pub const MAX_ABANDONED: usize = 4096;

/// Messages of moved sessions JetStream has, routed here once the feed reaches them.
pub const MAX_ROUTED_AFTER_FEED: usize = 4096;

/// A message of a moved session, stored, waiting for the feed to reach it before it is
/// routed here (what the session's last node wrote before comes first).
pub(crate) struct AfterFeed {
    pub sid: SessionId,
    pub content: Content,
    pub _charge: Charge,
}

/// Messages of moved sessions waiting for the feed, by stream sequence, with how many each
/// session has there (asked of every write of a moved session). At most
/// [`MAX_ROUTED_AFTER_FEED`], each charged with its message.
#[derive(Default)]
pub(crate) struct AfterFeedQueue {
    by_seq: BTreeMap<u64, AfterFeed>,
    per_session: BTreeMap<SessionId, usize>,
}

impl AfterFeedQueue {
    pub fn insert(&mut self, seq: u64, after: AfterFeed) {
        let sid = after.sid;
        if let Some(old) = self.by_seq.insert(seq, after) {
            self.forget(old.sid);
        }
        *self.per_session.entry(sid).or_default() += 1;
    }

    /// The first message at or below `feed`, taken off.
    pub fn pop_upto(&mut self, feed: u64) -> Option<(u64, AfterFeed)> {
        let entry = self.by_seq.first_entry().filter(|e| *e.key() <= feed)?;
        let (seq, after) = entry.remove_entry();
        self.forget(after.sid);
        Some((seq, after))
    }

    /// Whether a message of `sid` waits here.
    pub fn holds(&self, sid: SessionId) -> bool {
        self.per_session.contains_key(&sid)
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// The stream sequences waiting.
    pub fn seqs(&self) -> BTreeSet<u64> {
        self.by_seq.keys().copied().collect()
    }

    fn forget(&mut self, sid: SessionId) {
        if let Some(n) = self.per_session.get_mut(&sid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_session.remove(&sid);
            }
        }
    }
}

/// A durable write not yet asked for (its stamp is its `Waiting`'s `recorded_stamp`).
pub(crate) struct Unwritten {
    pub subject: String,
    pub msg_id: String,
    pub payload: bytes::Bytes,
}

/// `token` off `sid`'s list of writes not yet asked for.
fn unlist(unwritten: &mut BTreeMap<SessionId, BTreeSet<u64>>, sid: SessionId, token: u64) {
    if let Some(tokens) = unwritten.get_mut(&sid) {
        tokens.remove(&token);
        if tokens.is_empty() {
            unwritten.remove(&sid);
        }
    }
}

/// A node's cluster state. Exists only in cluster mode.
pub(crate) struct Cluster {
    /// The settings the node started with (a reload does not change them).
    pub config: ClusterConfig,
    /// This start of the node: the sequence of its messages starts again with it.
    pub epoch: u64,
    next_seq: u64,
    pub interest: interest::Interest,
    pub owner: owner::Owner,
    pub counters: Counters,
    /// Durable writes awaited, by token; at most one per connection. Tokens grow and the
    /// feed's place never goes back, so the first entry has the lowest `feed_at`.
    pub waiting: BTreeMap<u64, Box<Waiting>>,
    /// The tokens of those not yet asked for (their record first), by session: a record's
    /// answer looks at its session's only. At most one entry per waiting write, which
    /// `MESSAGE_BYTES` in each write's charge covers.
    unwritten: BTreeMap<SessionId, BTreeSet<u64>>,
    /// The durable writes awaited by the sequence in their stamp (this node's own ones).
    pub waiting_stamps: BTreeMap<u64, u64>,
    /// Stamp sequences of this node's writes given up before they were made (at most
    /// [`MAX_ABANDONED`], the oldest forgotten first): one written again later under the
    /// same stamp is routed here when the feed reads it.
    pub abandoned: BTreeSet<u64>,
    /// Per connection, its durable writes in the order they were asked for, and the answers
    /// that came before their turn.
    pipelines: BTreeMap<ConnId, VecDeque<u64>>,
    answers: BTreeMap<u64, Option<u64>>,
    next_token: u64,
    /// Retained-bucket keys this node wrote and its watch has not handed back yet, with how
    /// many such writes (at most one entry per retained topic), the key counted in memory.
    retained_pending: BTreeMap<String, (u32, Charge)>,
    /// The durable stream's sequence the node feed has read up to (`None` until it starts).
    pub feed_seq: Option<u64>,
    /// The highest sequence JetStream gave one of this node's durable writes.
    pub own_high: u64,
    /// The stream sequence of this node's own message being routed now (0: none), which
    /// the message carries to its deliveries.
    pub routing_seq: u64,
    /// Messages of moved sessions waiting for the feed, by stream sequence.
    pub after_feed: AfterFeedQueue,
    /// Catch-up reads running, by token, waiting for their turn, and failed ones to try
    /// again at the next records tick.
    pub catchups: BTreeMap<u64, CatchUp>,
    pub catchups_waiting: VecDeque<CatchUp>,
    pub catchups_failed: Vec<CatchUp>,
    /// Deliveries held back behind catch-up reads, by session (at most `msq_len` each).
    pub deferred: BTreeMap<SessionId, Deferred>,
    /// The records' tick, when armed.
    pub record_tick: Option<crate::api::Instant>,
    /// The other nodes heard of, and admin lists gathered from them.
    pub nodes: nodes::Nodes,
    /// Since when the connection to NATS has been down, the timer at which that makes the
    /// node cut off, and whether it is (clients sent to another server).
    pub link_down_since: Option<crate::api::Instant>,
    /// When the connection to NATS last came up (the node's start, at first): another node's
    /// silence says it ended only once this node has been connected for a whole ttl.
    pub link_up_at: crate::api::Instant,
    pub cut_off_at: Option<crate::api::Instant>,
    pub cut_off: bool,
    /// Deleting the records of ended starts whose sessions expired.
    pub reaper: reaper::Reaper,
}

/// What the cluster path counted, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages this node published to the cluster.
    pub published: u64,
    /// Copies of messages from other nodes routed here (one per matching NATS subscription).
    pub received: u64,
    /// Payloads that were not a message envelope, or came on an unknown subscription.
    pub malformed: u64,
    /// Publishes and subscriptions refused for cluster reasons (subject too long, full).
    pub refused: u64,
    /// QoS 1/2 messages JetStream acknowledged, and those it did not (refused to the client).
    pub durable: u64,
    pub durable_failed: u64,
}

impl Cluster {
    /// A node's cluster state at its start, `now`.
    pub fn new(config: ClusterConfig, epoch: u64, now: crate::api::Instant) -> Cluster {
        Cluster {
            config,
            epoch,
            next_seq: 0,
            interest: Default::default(),
            owner: Default::default(),
            counters: Counters::default(),
            waiting: BTreeMap::new(),
            unwritten: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            answers: BTreeMap::new(),
            waiting_stamps: BTreeMap::new(),
            abandoned: BTreeSet::new(),
            routing_seq: 0,
            after_feed: AfterFeedQueue::default(),
            next_token: 0,
            retained_pending: BTreeMap::new(),
            feed_seq: None,
            own_high: 0,
            catchups: BTreeMap::new(),
            catchups_waiting: VecDeque::new(),
            catchups_failed: Vec::new(),
            deferred: BTreeMap::new(),
            record_tick: None,
            nodes: nodes::Nodes::default(),
            link_down_since: None,
            link_up_at: now,
            cut_off_at: None,
            cut_off: false,
            reaper: reaper::Reaper::default(),
        }
    }

    /// Whether this node has been connected to NATS for a whole `node_ttl` by `now`: only
    /// then does another node's silence say anything.
    pub fn heard_all_along(&self, now: crate::api::Instant) -> bool {
        self.link_down_since.is_none() && now.since(self.link_up_at) >= self.config.node_ttl_ms
    }

    /// This node wrote `key` in the retained bucket.
    pub fn own_retained_write(&mut self, key: &str, ledger: &Ledger) {
        self.retained_pending
            .entry(key.to_owned())
            .or_insert_with(|| (0, ledger.charge(PENDING_KEY_BYTES + key.len())))
            .0 += 1;
    }

    /// The watch handed back one of this node's writes of `key`, or the write failed.
    pub fn own_retained_seen(&mut self, key: &str) {
        if let Some((n, _)) = self.retained_pending.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.retained_pending.remove(key);
            }
        }
    }

    /// Whether a write of `key` by this node is still on its way to the watch.
    pub fn own_retained_pending(&self, key: &str) -> bool {
        self.retained_pending.contains_key(key)
    }

    /// Whether a packet of `conn` waits for JetStream.
    ///
    /// Consecutive QoS 1 PUBLISHes go on (up to [`PIPELINE`] writes at once): their
    /// answers are taken in order; any other packet waits until every write is answered.
    /// `next` is the first byte of what the connection sent next, if any.
    pub fn holds(&self, conn: ConnId, next: Option<u8>) -> bool {
        let pending = self.pipelines.get(&conn).map_or(0, VecDeque::len);
        // QoS 1 only: a QoS 2 id is known as received once its write is answered, so a
        // second PUBLISH with it must wait to be told apart.
        let durable_publish = next.is_some_and(|b| b >> 4 == 3 && (b >> 1) & 0b11 == 1);
        pending > 0 && !(durable_publish && pending < PIPELINE)
    }

    /// Parks a PUBLISH until its durable write is answered; its token.
    pub fn wait(&mut self, waiting: Waiting) -> u64 {
        self.next_token += 1;
        self.pipelines
            .entry(waiting.conn)
            .or_default()
            .push_back(self.next_token);
        if !waiting.again {
            self.waiting_stamps
                .insert(waiting.stamp_seq, self.next_token);
        }
        if waiting.unwritten.is_some() {
            self.unwritten
                .entry(waiting.sid)
                .or_default()
                .insert(self.next_token);
        }
        self.waiting.insert(self.next_token, Box::new(waiting));
        self.next_token
    }

    /// The tokens of `sid`'s writes not yet asked for, oldest first.
    pub fn unwritten_of(&self, sid: SessionId) -> Vec<u64> {
        self.unwritten
            .get(&sid)
            .map(|t| t.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Write `token` of `sid` is asked for now.
    pub fn written(&mut self, sid: SessionId, token: u64) {
        unlist(&mut self.unwritten, sid, token);
    }

    /// The PUBLISH a durable write was for, no longer waiting.
    ///
    /// The answer to `token`, and with it every PUBLISH of that connection whose turn has
    /// come: in the order they were sent, each with its answer (its stream sequence, or
    /// `None` when refused).
    pub fn answered(&mut self, token: u64, seq: Option<u64>) -> Vec<(Box<Waiting>, Option<u64>)> {
        let Some(conn) = self.waiting.get(&token).map(|w| w.conn) else {
            return Vec::new();
        };
        self.answers.insert(token, seq);
        self.ready(conn)
    }

    /// Every PUBLISH of `conn` whose answer came, in order, up to the first still waiting.
    pub fn ready(&mut self, conn: ConnId) -> Vec<(Box<Waiting>, Option<u64>)> {
        let mut ready = Vec::new();
        if let Some(queue) = self.pipelines.get_mut(&conn) {
            while let Some(&head) = queue.front() {
                let Some(seq) = self.answers.remove(&head) else {
                    break;
                };
                queue.pop_front();
                if let Some(w) = self.waiting.remove(&head) {
                    if self.waiting_stamps.get(&w.stamp_seq) == Some(&head) {
                        self.waiting_stamps.remove(&w.stamp_seq);
                    }
                    if w.unwritten.is_some() {
                        unlist(&mut self.unwritten, w.sid, head);
                    }
                    ready.push((w, seq));
                }
            }
            if queue.is_empty() {
                self.pipelines.remove(&conn);
            }
        }
        ready
    }

    /// The writes of session `sid` not yet asked for are dropped; the connections whose
    /// later writes may be ready now.
    pub fn abandon_unwritten(&mut self, sid: SessionId) -> Vec<ConnId> {
        let tokens = self.unwritten.remove(&sid).unwrap_or_default();
        let mut conns = Vec::new();
        for token in tokens {
            let Some(w) = self.waiting.remove(&token) else {
                continue;
            };
            if self.waiting_stamps.get(&w.stamp_seq) == Some(&token) {
                self.waiting_stamps.remove(&w.stamp_seq);
                self.abandoned.insert(w.stamp_seq);
                if self.abandoned.len() > MAX_ABANDONED {
                    self.abandoned.pop_first();
                }
            }
            if let Some(queue) = self.pipelines.get_mut(&w.conn) {
                queue.retain(|t| *t != token);
                if queue.is_empty() {
                    self.pipelines.remove(&w.conn);
                }
            }
            if !conns.contains(&w.conn) {
                conns.push(w.conn);
            }
        }
        conns
    }

    /// A catch-up read starts: its token.
    pub fn start_catch_up(&mut self, catch_up: CatchUp) -> u64 {
        self.next_token += 1;
        self.catchups.insert(self.next_token, catch_up);
        self.next_token
    }

    /// The node feed has read up to `seq`.
    pub fn feed_at(&mut self, seq: u64) {
        self.feed_seq = Some(self.feed_seq.map_or(seq, |at| at.max(seq)));
    }

    /// The stamp of this node's next message.
    pub fn stamp(&mut self) -> Stamp {
        self.next_seq += 1;
        Stamp {
            node: self.config.node_name.clone(),
            epoch: self.epoch,
            seq: self.next_seq,
        }
    }

    /// Whether a message stamped so is one of this node's, from this start.
    pub fn is_own(&self, stamp: &Stamp) -> bool {
        stamp.node == self.config.node_name && stamp.epoch == self.epoch
    }

    pub fn max_subject_len(&self) -> usize {
        self.config.max_subject_len as usize
    }
}
