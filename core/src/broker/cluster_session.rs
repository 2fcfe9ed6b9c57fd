//! Cluster mode: persistent sessions that move between nodes. A persistent session's record
//! (expiry, subscriptions, its cursor in the durable stream; `cluster/record.rs`) lives in
//! the sessions bucket after its owner's line, written by compare-and-swap on the owner's
//! last revision. A CONNECT of a persistent session that this node does not hold waits for
//! its claim, whose answer carries the record it replaced: the session resumes from it, and
//! a catch-up read of the durable stream brings what it was owed past its cursor.
//!
//! The cursor: the node feed reads the whole stream in order, and this node routes its own
//! messages by the time the feed reaches them (or holds the cursor below them), so when the
//! feed is at sequence `p` a session has had every message up to `p` it was owed except those
//! it still has queued or in flight: its cursor is `p`, or just below the lowest of those. A
//! stale cursor only delivers again (QoS 1 allows it; QoS 2 is marked, `cluster_qos2.rs`); it
//! is written at most once per `cluster.record_interval`.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;

use super::Broker;
use super::cluster_qos2::resume_window;
use crate::api::{ConnId, Output, RecordAnswer};
use crate::cluster::envelope::Envelope;
use crate::cluster::owner::{self, Asker, Grant};
use crate::cluster::qos2::Qos2Record;
use crate::cluster::record::{self, SessionRecord};
use crate::cluster::subject::{self, Space};
use crate::cluster::{CATCHUP_BYTES, CatchUp, DEFERRED_BYTES, Deferred, MAX_CATCHUPS};
use crate::codec::{Connect, QoS, reason};
use crate::conn::{CloseReason, ConnState};
use crate::durable::{options_byte, options_from_byte, version_from_level};
use crate::ids::SessionId;
use crate::memory::FAIR_QUEUE;
use crate::metrics::DropReason;
use crate::persist::RecoveredSession;
use crate::session::{Delivery, NEVER_EXPIRES, Session, Subscription};
use crate::timer::Timer;
use crate::topic;

/// Attempts of one catch-up read before the session goes on without the rest.
const CATCHUP_ATTEMPTS: u8 = 3;

impl Broker {
    /// Whether this CONNECT must wait for its claim before its session opens: a persistent
    /// session with the client's own id. Also when this node holds the session: another node
    /// may have taken it meanwhile (its kick still on its way), and then its record is newer.
    /// A CONNECT without a clean start and without expiry waits too: it resumes a session
    /// another node may hold.
    pub(super) fn cluster_claims_first(&self, id: ConnId, connect: &Connect, expiry: u32) -> bool {
        self.cluster
            .as_deref()
            .is_some_and(|c| (expiry > 0 || !connect.clean_start) && !c.owner.granted(id))
    }

    /// Parks the CONNECT (as while its credentials are checked) and claims its client id.
    pub(super) fn cluster_claim_first(&mut self, id: ConnId, connect: Connect) {
        let ledger = self.memory.ledger.clone();
        let keep_record = !connect.clean_start;
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Ok(key) = subject::name_key(&connect.client_id, c.max_subject_len()) else {
            return;
        };
        if c.owner.claimed(Asker::Connect(id)) {
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let client_id = connect.client_id.clone();
        conn.state = ConnState::Authenticating;
        conn.pending_connect = Some(Box::new(connect));
        self.subscribe_kicks();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let token = c.owner.ask(Asker::Connect(id), &key, &client_id, &ledger);
        let value = owner::claim_value(&c.config.node_name, c.epoch, token);
        self.outputs.push_back(Output::ClusterClaim {
            token,
            key,
            value,
            keep_record,
        });
    }

    /// The claim of a waiting CONNECT was answered: the session resumes from the record the
    /// claim replaced (another node's, or this node's from an earlier start), or starts anew;
    /// without a claim the CONNECT is refused (v5 0x88, 3.1.1 3). `claim`: key, owner's
    /// line and revision.
    pub(super) fn cluster_connect_claimed(
        &mut self,
        id: ConnId,
        client_id: &str,
        claim: Option<(String, Bytes, u64)>,
        previous: Option<&Bytes>,
    ) {
        let waiting =
            self.conns.get(&id).is_some_and(|c| {
                c.state == ConnState::Authenticating && c.pending_connect.is_some()
            }) && !self.authenticating.contains(&id);
        let Some((key, line, revision)) = claim else {
            if let Some(connect) = self.take_waiting_connect(id, waiting) {
                self.refuse_connect(
                    id,
                    &connect,
                    reason::SERVER_UNAVAILABLE,
                    "the cluster could not claim the client id",
                );
            }
            return;
        };
        // Another claim of this node for the key was written after this one and answered
        // first: this CONNECT is the older of two, and the newer keeps the session.
        let superseded = self
            .cluster
            .as_deref()
            .and_then(|c| c.owner.holder(&key))
            .is_some_and(|(_, first)| first > revision);
        if superseded {
            if let Some(connect) = self.take_waiting_connect(id, waiting) {
                let detail = "a newer connection with this client id took the session";
                self.refuse_connect(id, &connect, reason::SESSION_TAKEN_OVER, detail);
            }
            return;
        }
        // Another node took the session since this node last held it: what is here is stale.
        let mine = self
            .cluster
            .as_deref()
            .map(|c| (c.config.node_name.clone(), c.epoch));
        let taken = previous
            .and_then(|v| owner::parse_claim(v))
            .is_some_and(|(node, epoch)| {
                mine.as_ref()
                    .is_none_or(|m| (m.0.as_str(), m.1) != (node, epoch))
            });
        if taken && let Some(&stale) = self.by_client_id.get(client_id) {
            if let Some(c) = self.cluster.as_deref_mut() {
                c.owner.lose(stale);
            }
            if let Some(conn) = self.sessions.get(&stale).and_then(|s| s.conn) {
                let detail = "session taken over on another node";
                self.drop_conn(conn, CloseReason::error(reason::SESSION_TAKEN_OVER, detail));
            }
            self.end_session(stale);
        }
        let connect = self.take_waiting_connect(id, waiting);
        let clean = connect.as_ref().is_some_and(|c| c.clean_start);
        let resumed = (!clean && !self.by_client_id.contains_key(client_id))
            .then(|| previous.and_then(|v| self.record_to_resume(v, client_id)))
            .flatten();
        let Some(connect) = connect else {
            // The connection went meanwhile. A record the claim took over stays here, as an
            // offline session (the node that had it was told to let it go); else the claim goes.
            match resumed {
                Some(rec) => self.resume_offline(client_id, (key, line, revision), rec),
                None => self
                    .outputs
                    .push_back(Output::ClusterRelease { key, revision }),
            }
            return;
        };
        let resumed_cursor = resumed.as_ref().map(|rec| rec.cursor);
        let resumed_qos2 = resumed.as_ref().map(qos2_of).unwrap_or_default();
        if let Some(c) = self.cluster.as_deref_mut() {
            let grant = Grant {
                key,
                line,
                revision,
                resumed_cursor,
                resumed_qos2,
            };
            c.owner.grant(id, grant);
        }
        // The memory budget was checked when the CONNECT came.
        let catch_up_from = resumed.and_then(|rec| {
            self.resume_from_record(client_id, &qos2_of(&rec), rec.session);
            rec.cursor
        });
        self.complete_connect(id, *connect);
        // Not taken: the CONNECT was refused after all.
        self.refuse_granted_leftover(id);
        let sid = self.conns.get(&id).and_then(|c| match c.state {
            ConnState::Active(sid) => Some(sid),
            _ => None,
        });
        if let (Some(sid), Some(cursor)) = (sid, catch_up_from) {
            self.cluster_catch_up(sid, cursor.saturating_add(1));
        }
        // What the client sent meanwhile, in order.
        self.receive(id, &[]);
    }

    /// A session resumed from a record for a CONNECT that went before its claim was
    /// answered: kept here offline (its expiry running), caught up, its claim held.
    fn resume_offline(&mut self, client_id: &str, claim: (String, Bytes, u64), rec: SessionRecord) {
        let ledger = self.memory.ledger.clone();
        let (now, wall) = (self.now, self.wall_now());
        let cursor = rec.cursor;
        let qos2 = qos2_of(&rec);
        let sid = self.resume_from_record(client_id, &qos2, rec.session);
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.disconnected_at_unix_ms = Some(wall);
        if s.expiry_secs != NEVER_EXPIRES {
            s.expires_at = Some(now.plus_secs(u64::from(s.expiry_secs)));
        }
        self.offline_by_end.insert(sid, s);
        self.arm_session_timer(sid);
        if let Some(c) = self.cluster.as_deref_mut() {
            let held = c.owner.hold(sid, claim, true, &ledger);
            held.cursor = cursor;
            held.qos2.resume(qos2);
            held.moved_in = true;
        }
        self.write_record(sid);
        if let Some(cursor) = cursor {
            self.cluster_catch_up(sid, cursor.saturating_add(1));
        }
    }

    fn take_waiting_connect(&mut self, id: ConnId, waiting: bool) -> Option<Box<Connect>> {
        if !waiting {
            return None;
        }
        let conn = self.conns.get_mut(&id)?;
        conn.state = ConnState::AwaitingConnect;
        // Keep alive counts from the CONNACK, not from the wait's start.
        conn.last_rx = self.now;
        conn.pending_connect.take()
    }

    /// A claim granted to a CONNECT that opened no session is released.
    fn refuse_granted_leftover(&mut self, id: ConnId) {
        if let Some(Grant { key, revision, .. }) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.owner.take_grant(id))
        {
            self.outputs
                .push_back(Output::ClusterRelease { key, revision });
        }
    }

    /// The record in a replaced entry, if it is another owner's and its session has not
    /// expired (see [`Broker::session_expired`]).
    fn record_to_resume(&self, value: &Bytes, client_id: &str) -> Option<SessionRecord> {
        let c = self.cluster.as_deref()?;
        let (line, rec) = record::parse_value(value, client_id);
        let owner = owner::parse_claim(line);
        // This node's own line: a session of this start that ended here.
        if owner == Some((c.config.node_name.as_str(), c.epoch)) {
            return None;
        }
        let rec = rec?.ok()?;
        let ended = owner.and_then(|(node, epoch)| self.start_ended(node, epoch));
        (!self.session_expired(&rec.session, ended) && rec.session.expiry_secs > 0).then_some(rec)
    }

    /// A session of `client_id` as another node's record left it: offline, with its
    /// subscriptions and QoS 2 window; the CONNECT then resumes it as any session here.
    fn resume_from_record(
        &mut self,
        client_id: &str,
        qos2: &Qos2Record,
        rs: RecoveredSession,
    ) -> SessionId {
        let sid = self.next_session_id;
        self.next_session_id += 1;
        let version = version_from_level(rs.version);
        let mut s = Session::new(client_id.to_owned(), version, &self.memory.ledger);
        s.expiry_secs = rs.expiry_secs;
        s.clean_start = false;
        self.restore_subscriptions(sid, &mut s, rs.subscriptions);
        let ledger = self.memory.ledger.clone();
        let store = &mut self.store;
        resume_window(&mut s, qos2, || store.next_message_id(), self.now, &ledger);
        self.sessions.insert(sid, Box::new(s));
        self.by_client_id.insert(client_id.to_owned(), sid);
        if let Some(c) = self.cluster.as_deref_mut() {
            c.owner.counters.resumed += 1;
        }
        sid
    }

    /// Subscriptions read back (from the store, or a record): indexed, and the session's.
    pub(super) fn restore_subscriptions(
        &mut self,
        sid: SessionId,
        s: &mut Session,
        subscriptions: std::collections::BTreeMap<String, (u8, Option<u32>)>,
    ) {
        for (raw, (options, id)) in subscriptions {
            let Some(options) = options_from_byte(options) else {
                continue;
            };
            let Ok(parsed) = topic::parse_subscription(&raw, usize::MAX) else {
                continue;
            };
            let sub = Subscription {
                options,
                id,
                cluster_key: 0,
            };
            self.index_subscription(parsed.filter, parsed.share_group, sid, sub);
            s.subscribe(raw, sub);
        }
    }

    /// The kick subject is subscribed with the first claim (the runtime's link exists then).
    pub(super) fn subscribe_kicks(&mut self) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if !c.owner.kick_subscribed {
            c.owner.kick_subscribed = true;
            self.outputs.push_back(Output::ClusterSubscribe {
                sid: owner::KICK_SID,
                subject: owner::kick_subject(&c.config.subject_prefix, &c.config.node_name),
                queue: None,
            });
        }
    }

    /// Whether a persistent session's record has room for one more subscription (see
    /// [`record::MAX_RECORD_BYTES`]).
    pub(super) fn cluster_record_fits(&self, sid: SessionId, raw: &str) -> bool {
        let (Some(_), Some(s)) = (self.cluster.as_deref(), self.sessions.get(&sid)) else {
            return true;
        };
        if s.expiry_secs == 0 {
            return true;
        }
        let id = &s.client_id;
        let held: usize = s
            .subscriptions
            .keys()
            .map(|f| record::subscription_bytes(id, f))
            .sum();
        // The owner's line, the cursor and the session's own record.
        let head = 160 + id.len();
        head + held + record::subscription_bytes(id, raw) <= record::MAX_RECORD_BYTES
    }

    /// Session `sid` changed (subscriptions, connected or not, expiry): its record is written
    /// again, at once unless a write is on its way.
    pub(super) fn cluster_session_changed(&mut self, sid: SessionId) {
        let Some(h) = self.held_mut(sid) else {
            return;
        };
        if h.keeps_record {
            h.dirty = true;
            self.write_record(sid);
        }
    }

    /// Writes the record of `sid` if it changed and no write is on its way.
    pub(super) fn write_record(&mut self, sid: SessionId) {
        let (Some(c), Some(s)) = (self.cluster.as_deref_mut(), self.sessions.get(&sid)) else {
            return;
        };
        let Some(h) = c.owner.held(sid) else {
            return;
        };
        if !h.keeps_record || !h.dirty || h.writing.is_some() || h.ending {
            return;
        }
        let session = RecoveredSession {
            version: s.version.level(),
            expiry_secs: s.expiry_secs,
            disconnected_at_unix_ms: s.disconnected_at_unix_ms,
            subscriptions: s
                .subscriptions
                .iter()
                .map(|(raw, sub)| (raw.clone(), (options_byte(&sub.options), sub.id)))
                .collect(),
            ..Default::default()
        };
        let (cursor, line, client_id) = (h.cursor, h.line.clone(), s.client_id.clone());
        let qos2 = self.qos2_to_write(sid);
        let rec = SessionRecord {
            cursor,
            qos2_window: qos2.window,
            qos2_done: qos2.done,
            qos2_inbound: qos2.inbound,
            qos2_inbound_stored: qos2.stored,
            session,
        };
        let value = record::record_value(&line, &client_id, &rec);
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some((token, key, revision)) = c.owner.write(sid) else {
            return;
        };
        self.outputs.push_back(Output::ClusterRecord {
            token,
            key,
            value,
            revision,
        });
        self.arm_record_tick();
    }

    /// The bucket's answer to a record write. Fenced: another node owns the client id now,
    /// and the session here ends as in a takeover.
    pub(super) fn cluster_recorded(&mut self, token: u64, answer: RecordAnswer) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(sid) = c.owner.written(token) else {
            return;
        };
        match answer {
            RecordAnswer::Written(revision) => {
                c.owner.counters.records += 1;
                if let Some(h) = c.owner.held_mut(sid) {
                    h.revision = revision;
                }
                self.qos2_recorded(sid, true);
            }
            RecordAnswer::Failed => {
                c.owner.counters.records_failed += 1;
                // Tried again at the next tick.
                if let Some(h) = c.owner.held_mut(sid) {
                    h.dirty = true;
                }
                self.qos2_recorded(sid, false);
            }
            RecordAnswer::Fenced => {
                c.owner.counters.records_failed += 1;
                c.owner.counters.taken_over += 1;
                c.owner.lose(sid);
                if let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn) {
                    let detail = "session taken over on another node";
                    self.drop_conn(conn, CloseReason::error(reason::SESSION_TAKEN_OVER, detail));
                }
                return self.end_session(sid);
            }
        }
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if let Some((key, revision)) = c.owner.finish_ending(sid) {
            self.outputs
                .push_back(Output::ClusterRelease { key, revision });
            return;
        }
        if answer != RecordAnswer::Failed {
            self.write_record(sid);
        }
    }

    pub(super) fn arm_record_tick(&mut self) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if c.record_tick.is_none() {
            let at = self.now.plus_ms(c.config.record_interval_ms);
            self.timers
                .arm(Timer::ClusterRecords, &mut c.record_tick, Some(at));
        }
    }

    /// Each `cluster.record_interval`: a session's cursor moves to the feed's place, or just
    /// below the lowest message it still has pending, and the records that changed (or
    /// failed) are written.
    pub(super) fn record_tick(&mut self) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.record_tick = None;
        let failed = std::mem::take(&mut c.catchups_failed);
        c.catchups_waiting.extend(failed);
        // Not past this node's own messages JetStream may have taken but not yet answered
        // for: they are routed when the answer comes, after the feed has passed them.
        let unrouted = c.waiting.first_key_value().map(|(_, w)| w.feed_at);
        let feed = match (c.feed_seq, unrouted) {
            (Some(feed), Some(cap)) => Some(feed.min(cap)),
            (feed, _) => feed,
        };
        let mut any = false;
        let mut to_write = Vec::new();
        let mut resumed = Vec::new();
        for (sid, h) in c.owner.holders() {
            if !h.keeps_record {
                continue;
            }
            any = true;
            // Not past a message still on its way to the client.
            let Some(session) = self.sessions.get(sid) else {
                continue;
            };
            let target = match (feed, pending_low(session, c.deferred.get(sid))) {
                (Some(feed), Some(low)) => Some(feed.min(low.saturating_sub(1))),
                (feed, _) => feed,
            };
            let moves = !h.catching_up && target > h.cursor;
            if moves || h.dirty {
                to_write.push((*sid, moves.then_some(target).flatten()));
            }
            // Stand-ins wait unsent (and so does all of a disconnected session's window).
            if !h.catching_up && (!h.qos2.resumed.is_empty() || !session.inflight.all_sent()) {
                resumed.push(*sid);
            }
        }
        let mut writes = Vec::new();
        let mut room = Vec::new();
        for (sid, moved_to) in to_write {
            if let Some(h) = c.owner.held_mut(sid) {
                if let Some(cursor) = moved_to {
                    h.cursor = Some(cursor);
                    if h.qos2.cursor_moved(cursor) {
                        room.push(sid);
                    }
                }
                h.dirty = true;
                if h.writing.is_none() {
                    writes.push(sid);
                }
            }
        }
        // What a resumed window waited for and the feed has passed will not come.
        for sid in resumed {
            self.qos2_give_up(sid, feed.unwrap_or(0));
        }
        for sid in writes {
            self.write_record(sid);
        }
        for sid in room {
            self.pump(sid);
        }
        self.start_catch_ups();
        if any {
            self.arm_record_tick();
        }
    }

    /// Routes a delivery to session `sid`; `behind_catch_up`: it waits behind a catch-up
    /// read that runs for the session (a catch-up read's own deliveries do not). What the
    /// session had already (a QoS 2 message finished, or in the window it resumed with) is
    /// not delivered again.
    pub(super) fn deliver_routed(&mut self, sid: SessionId, d: Delivery, behind_catch_up: bool) {
        if self.cluster.is_none() {
            return self.deliver(sid, d);
        }
        let Some(d) = self.qos2_unless_had(sid, d) else {
            return;
        };
        if behind_catch_up {
            self.deliver_after_catch_up(sid, d);
        } else {
            self.deliver(sid, d);
        }
    }

    /// Reads the durable stream for session `sid` from `from` up to what the feed has read
    /// (and this node's own messages JetStream acknowledged since): what the session was owed
    /// while another node held it, or while it moved. At most [`MAX_CATCHUPS`] at once; one
    /// asked before the feed has started waits for it.
    pub(super) fn cluster_catch_up(&mut self, sid: SessionId, from: u64) {
        let ledger = self.memory.ledger.clone();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        if let Some(h) = c.owner.held_mut(sid) {
            h.catching_up = true;
        }
        c.deferred.entry(sid).or_insert_with(|| Deferred {
            items: VecDeque::new(),
            charge: ledger.charge(0),
        });
        let range = c.feed_seq.map(|all| (all, c.own_high));
        let unrouted = c.after_feed.seqs();
        let unanswered: BTreeSet<u64> = c.waiting_stamps.keys().copied().collect();
        let bytes = CATCHUP_BYTES + 16 * (unrouted.len() + unanswered.len());
        c.catchups_waiting.push_back(CatchUp {
            sid,
            from,
            range,
            attempts: 0,
            unrouted,
            unanswered,
            _charge: ledger.charge(bytes),
        });
        self.start_catch_ups();
    }

    /// Starts waiting catch-up reads while there is room and the feed has started.
    pub(super) fn start_catch_ups(&mut self) {
        let mut over = Vec::new();
        if let Some(c) = self.cluster.as_deref_mut() {
            while c.catchups.len() < MAX_CATCHUPS {
                let Some(feed) = c.feed_seq else {
                    break;
                };
                let Some(mut cu) = c.catchups_waiting.pop_front() else {
                    break;
                };
                // Before the feed started: what it had not read is this read's.
                let own = c.own_high;
                let range = *cu.range.get_or_insert((feed, own));
                let (from, to) = (cu.from, range.0.max(range.1));
                let sid = cu.sid;
                if from > to || !self.sessions.contains_key(&sid) {
                    over.push(sid);
                    continue;
                }
                let token = c.start_catch_up(cu);
                self.outputs
                    .push_back(Output::ClusterCatchUp { token, from, to });
            }
        }
        for sid in over {
            self.caught_up(sid);
        }
    }

    /// A message of a catch-up read: to its session, if it matches a plain subscription and
    /// is in the range asked (another node's messages up to the feed's place when asked, this
    /// node's own up to what JetStream had acknowledged: the feed brings later ones).
    pub(super) fn cluster_catch_up_message(
        &mut self,
        token: u64,
        seq: u64,
        subject: &str,
        payload: Bytes,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(cu) = c.catchups.get_mut(&token) else {
            return;
        };
        if seq < cu.from {
            return;
        }
        cu.from = seq.saturating_add(1);
        let (sid, (to_all, to_own)) = (cu.sid, cu.range.unwrap_or_default());
        let topic = subject::subject_to_topic(&c.config.subject_prefix, Space::Durable, subject);
        let (Ok(topic), Ok(envelope)) = (topic, Envelope::decode(payload)) else {
            c.counters.malformed += 1;
            return;
        };
        // This node's own messages it has not routed yet (a moved session's, waiting for the
        // feed; or whose answer JetStream has not given) reach the session when they are.
        let unrouted = cu.unrouted.contains(&seq) || cu.unanswered.contains(&envelope.stamp.seq);
        let own = c.is_own(&envelope.stamp) && !unrouted;
        let wanted = seq <= to_all || (seq <= to_own && own);
        if !wanted {
            return;
        }
        c.owner.counters.caught_up += 1;
        self.take_copy(
            topic,
            envelope,
            super::clustering::Takers::Session(sid),
            seq,
        );
    }

    /// Delivers now, or, while `sid`'s catch-up read runs (or waits for its turn), after what
    /// the read brings: a moved session gets each publisher's QoS 1/2 messages in order.
    /// QoS 0 (live, at most once, not in the stream) is not held. What is held counts with
    /// the session's queue: at most `msq_len` together, and past the memory budget's high
    /// mark at most [`FAIR_QUEUE`] held, as a queue would stop there.
    fn deliver_after_catch_up(&mut self, sid: SessionId, d: Delivery) {
        let holding = self
            .cluster
            .as_deref()
            .is_some_and(|c| c.deferred.contains_key(&sid));
        // A QoS 0 message is not in the stream; a QoS 1/2 one to a QoS 0 subscription is.
        if !holding || d.msg.qos == QoS::AtMostOnce {
            return self.deliver(sid, d);
        }
        let queued = self.sessions.get(&sid).map_or(0, |s| s.queue.len());
        let limit = self.config.msq_len as usize;
        let pressed = self.memory.under_pressure(self.config.max_memory);
        let Some(deferred) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.deferred.get_mut(&sid))
        else {
            return;
        };
        if deferred.items.len() + queued >= limit {
            return self.drop_message(sid, DropReason::QueueFull);
        }
        if deferred.items.len() >= FAIR_QUEUE && pressed {
            return self.drop_message(sid, DropReason::MemoryBudget);
        }
        deferred.items.push_back(d);
        let bytes = deferred.items.len() * DEFERRED_BYTES;
        deferred.charge.set(bytes);
    }

    /// `sid`'s catch-up is over (or cannot run): its cursor may move again, and what waited
    /// behind it is delivered.
    fn caught_up(&mut self, sid: SessionId) {
        if let Some(h) = self.held_mut(sid) {
            h.catching_up = false;
        }
        self.stop_holding(sid);
    }

    /// What waited behind `sid`'s catch-up read is delivered; later deliveries go straight on.
    fn stop_holding(&mut self, sid: SessionId) {
        let Some(deferred) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.deferred.remove(&sid))
        else {
            return;
        };
        for d in deferred.items {
            self.deliver(sid, d);
        }
    }

    /// A catch-up read ended: the next one waiting starts. One that failed is tried again
    /// from the message after the last one read, [`CATCHUP_ATTEMPTS`] times at once, then at
    /// each records tick; its session's cursor stays until it is done.
    pub(super) fn cluster_catch_up_done(&mut self, token: u64, ok: bool) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(mut cu) = c.catchups.remove(&token) else {
            return;
        };
        if ok {
            self.caught_up(cu.sid);
        } else {
            cu.attempts += 1;
            if cu.attempts < CATCHUP_ATTEMPTS {
                c.catchups_waiting.push_front(cu);
            } else {
                cu.attempts = 0;
                let sid = cu.sid;
                c.catchups_failed.push(cu);
                self.arm_record_tick();
                // Retried at each tick, its cursor held; live deliveries wait no longer.
                self.stop_holding(sid);
            }
        }
        self.start_catch_ups();
    }
}

/// The QoS 2 state of a record.
fn qos2_of(rec: &SessionRecord) -> Qos2Record {
    Qos2Record {
        window: rec.qos2_window.clone(),
        done: rec.qos2_done.clone(),
        inbound: rec.qos2_inbound.clone(),
        stored: rec.qos2_inbound_stored.clone(),
    }
}

/// The lowest stream sequence among the deliveries `s` has not finished: queued, in flight,
/// or held behind a catch-up read. One pass per records tick while it has any.
fn pending_low(s: &Session, deferred: Option<&Deferred>) -> Option<u64> {
    if s.queue.is_empty() && s.inflight.len() == 0 && deferred.is_none() {
        return None;
    }
    let in_flight = s.inflight.iter().map(|(_, f)| &f.item);
    let held = deferred.into_iter().flat_map(|d| d.items.iter());
    s.queue
        .iter()
        .chain(in_flight)
        .chain(held)
        .map(|d| d.msg.durable.stream_seq())
        .filter(|&seq| seq != 0)
        .min()
}
