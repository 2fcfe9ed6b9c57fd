//! Durability: the records the broker hands to the store, the output it holds back until they
//! are durable, and the records that rebuild a session or a snapshot.
//!
//! The rule is simple and strict: when an input produced a record that an acknowledgement
//! depends on, nothing that input sends leaves before the store reports that record durable,
//! and later output to the same connection waits behind it. No client ever sees an
//! acknowledgement, a delivery or a session that a crash could take back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use crate::api::{ConnId, Instant, Output};
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::config::SyncMode;
use crate::ids::SessionId;
use crate::message::Message;
use crate::persist::{Record, StoredMessage};
use crate::retain_trie::RetainTrie;
use crate::session::{Delivery, Session};
use crate::window::OutStage;

/// Output for one connection waiting for the store, oldest first.
#[derive(Debug, Default)]
struct Held {
    /// (sequence number that must be durable, bytes); 0 = only behind what is before it.
    parts: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// The wall clock as the broker knows it at `now`, to store deadlines in wall time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wall {
    pub now: Instant,
    pub unix_ms: u64,
}

impl Wall {
    /// The wall time of `at`.
    pub fn of(self, at: Instant) -> u64 {
        if at >= self.now {
            self.unix_ms.saturating_add(at.since(self.now))
        } else {
            self.unix_ms.saturating_sub(self.now.since(at))
        }
    }
}

/// The store's side of the broker.
#[derive(Debug, Default)]
pub(crate) struct Durability {
    /// `None`: persistence off.
    mode: Option<SyncMode>,
    /// Records of the current input, handed out as one [`Output::Persist`].
    records: Vec<Record>,
    /// Last sequence number handed out, and last one reported durable.
    seq: u64,
    durable: u64,
    /// Highest sequence number the current input's output depends on.
    barrier: u64,
    held: BTreeMap<ConnId, Held>,
    failed: bool,
    next_msg_id: u64,
    /// At `persistence.max_disk`, or the writer refuses records until the next snapshot:
    /// new durable work is refused until a snapshot brings the store under the cap.
    full: bool,
    /// The writer refused records: they are durable only once a snapshot covers them.
    writer_refusing: bool,
    /// Sequence number of the last snapshot handed out.
    snapshot_upto: u64,
}

impl Durability {
    /// `mode` is `None` with persistence off.
    pub fn new(mode: Option<SyncMode>) -> Durability {
        Durability {
            mode,
            ..Durability::default()
        }
    }

    pub fn on(&self) -> bool {
        self.mode.is_some()
    }

    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The store failed: work that needs it is refused.
    pub fn refuses(&self) -> bool {
        self.mode.is_some() && self.failed
    }

    /// The store is at its disk cap (and has not failed): new durable work is refused,
    /// what frees space (acknowledgements, removals, resumed sessions) goes on.
    pub fn full(&self) -> bool {
        self.mode.is_some() && !self.failed && self.full
    }

    /// New durable work (a new stored session, subscription or message) is refused.
    pub fn refuses_new(&self) -> bool {
        self.refuses() || self.full()
    }

    /// The runtime's report of the store's disk use: full at `cap`, and again under it below
    /// `low` only. The new `full` state when it changed, and whether the writer has just
    /// started refusing.
    pub fn set_usage(
        &mut self,
        used: u64,
        writer_refusing: bool,
        cap: u64,
        low: u64,
    ) -> (Option<bool>, bool) {
        let began =
            writer_refusing && !std::mem::replace(&mut self.writer_refusing, writer_refusing);
        let full = writer_refusing || used >= cap || (self.full && used >= low);
        let changed = (full != std::mem::replace(&mut self.full, full)).then_some(full);
        (changed, began)
    }

    /// Whether a snapshot now would shrink the store or heal a writer that refuses: records
    /// were handed out since the last one.
    pub fn snapshot_would_help(&self) -> bool {
        self.writer_refusing || self.seq > self.snapshot_upto
    }

    /// A new input: its output depends on nothing yet.
    pub fn begin_input(&mut self) {
        self.barrier = 0;
    }

    /// Hands a record to the store. With `gate`, this input's output waits for it.
    pub fn persist(&mut self, record: Record, gate: bool) {
        if self.mode.is_none() {
            return;
        }
        if self.failed {
            // Nothing that needed this record may ever be acknowledged.
            if gate {
                self.barrier = u64::MAX;
            }
            return;
        }
        self.seq += 1;
        self.records.push(record);
        if gate {
            self.barrier = self.seq;
        }
    }

    /// This input's output also waits for sequence number `seq`, if it is not durable yet.
    pub fn wait_for(&mut self, seq: u64) {
        if seq > self.durable {
            self.barrier = self.barrier.max(seq);
        }
    }

    /// True the first time only: the caller then hands the message's body to the store.
    fn first_store(&mut self, msg: &Message) -> bool {
        msg.durable.first_store()
    }

    /// A message published in this input: its QoS 2 deliveries in later inputs wait for
    /// `seq`, what accepted it.
    pub fn set_needs(&mut self, msg: &Message, seq: u64) {
        msg.durable.set_needs(seq);
    }

    /// What a QoS 2 delivery of `msg` waits for (0: nothing).
    pub fn needs(&self, msg: &Message) -> u64 {
        msg.durable.needs()
    }

    /// Whether everything up to `seq` is durable.
    pub fn is_durable(&self, seq: u64) -> bool {
        seq <= self.durable
    }

    /// What this input's output waits for, when it is not durable yet.
    pub fn pending_barrier(&self) -> Option<u64> {
        (self.barrier > self.durable).then_some(self.barrier)
    }

    /// The number of the newest message so far.
    pub fn last_message_id(&self) -> u64 {
        self.next_msg_id
    }

    pub fn next_message_id(&mut self) -> u64 {
        self.next_msg_id += 1;
        self.next_msg_id
    }

    fn stored_message(msg: &Message, wall: Wall) -> StoredMessage {
        StoredMessage {
            id: msg.id,
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: msg.retain,
            properties: msg.properties.clone(),
            expires_at_unix_ms: msg.expires_at.map(|at| wall.of(at)),
        }
    }

    /// Hands the message body to the store the first time anything durable refers to it.
    pub fn persist_message(&mut self, msg: &Arc<Message>, wall: Wall) {
        if self.on() && self.first_store(msg) {
            let stored = Self::stored_message(msg, wall);
            self.persist(Record::MsgPut(Box::new(stored)), true);
        }
    }

    /// A delivery a durable session keeps (QoS 1/2): numbered and stored. False when it
    /// cannot be stored (the store failed): it is dropped rather than kept on a promise the
    /// store can no longer back, and nothing else waits for it.
    pub fn keep_delivery(&mut self, session: &mut Session, d: &mut Delivery, wall: Wall) -> bool {
        if d.qos == QoS::AtMostOnce || d.entry != 0 || !session.durable {
            return true;
        }
        if self.failed {
            return false;
        }
        d.entry = session.next_entry;
        session.next_entry += 1;
        let client_id = session.client_id.clone();
        self.persist_message(&d.msg, wall);
        self.persist(
            Record::QueuePut {
                client_id,
                entry: d.entry,
                msg_id: d.msg.id,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
                sent: None,
            },
            true,
        );
        true
    }

    /// A stored delivery finished or was dropped.
    pub fn forget_delivery(&mut self, session: &Session, entry: u64) {
        if entry == 0 || !session.durable {
            return;
        }
        let client_id = session.client_id.clone();
        self.persist(Record::QueueDel { client_id, entry }, false);
    }

    /// A stored delivery took packet id `pid` (or, QoS 2, sent its PUBREL). Only QoS 2
    /// needs the record durable before the packet leaves: a lost QoS 1 record only costs a
    /// resend under a new id, a lost QoS 2 one could mean a second delivery.
    pub fn out_state(&mut self, session: &Session, entry: u64, pid: u16, qos: QoS, released: bool) {
        if entry == 0 || !session.durable {
            return;
        }
        // Sent in the input that stored it (the usual case): the same record says so. It
        // is gated already, so a QoS 2 PUBLISH waits for it as for an `OutState`.
        if !released
            && let Some(Record::QueuePut {
                client_id,
                entry: e,
                sent: sent @ None,
                ..
            }) = self.records.last_mut()
            && *e == entry
            && *client_id == session.client_id
        {
            *sent = Some(pid);
            return;
        }
        let client_id = session.client_id.clone();
        self.persist(
            Record::OutState {
                client_id,
                entry,
                packet_id: pid,
                released,
            },
            qos == QoS::ExactlyOnce,
        );
    }

    /// An inbound QoS 2 packet id accepted (`put`) or released, for a durable session.
    pub fn in_qos2(&mut self, session: &Session, packet_id: u16, put: bool) {
        if !session.durable {
            return;
        }
        let client_id = session.client_id.clone();
        let record = if put {
            Record::InQos2Put {
                client_id,
                packet_id,
            }
        } else {
            Record::InQos2Del {
                client_id,
                packet_id,
            }
        };
        // The PUBCOMP waits too: a lost release would swallow the id's next message.
        self.persist(record, true);
    }

    /// The session record: its settings and, once disconnected, when.
    pub fn session_put(&mut self, s: &Session, gate: bool) {
        if !s.durable {
            return;
        }
        let record = Record::SessionPut {
            client_id: s.client_id.clone(),
            version: s.version.level(),
            expiry_secs: s.expiry_secs,
            disconnected_at_unix_ms: s.disconnected_at_unix_ms,
        };
        self.persist(record, gate);
    }

    /// After CONNECT: the session becomes, stays or stops being durable.
    pub fn connected(&mut self, s: &mut Session, wall: Wall) {
        let on = self.on();
        s.disconnected_at_unix_ms = None;
        let want = on && s.expiry_secs > 0;
        match (s.durable, want) {
            (true, true) => self.session_put(s, true),
            (true, false) => {
                s.durable = false;
                let client_id = s.client_id.clone();
                self.persist(Record::SessionDel { client_id }, true);
            }
            (false, true) => {
                s.durable = true;
                let records = self.session_records(s, &mut BTreeSet::new(), true, wall);
                for r in records {
                    self.persist(r, true);
                }
            }
            (false, false) => {}
        }
    }

    /// Every live durable record, for [`Output::Snapshot`]: retained messages, durable
    /// sessions (in client id order) and the bridges' stored outbox entries.
    pub fn snapshot(
        &mut self,
        retained: &RetainTrie<Arc<Message>>,
        sessions: &mut BTreeMap<SessionId, Box<Session>>,
        in_order: &[SessionId],
        bridges: Vec<Record>,
        wall: Wall,
    ) -> Option<Output> {
        if !self.on() {
            return None;
        }
        let mut bodies = BTreeSet::new();
        let mut records = Vec::new();
        for (topic, msg) in retained.all() {
            // The broker's own `$SYS` tree is never kept: it is published afresh after a start.
            if crate::sys::is_reserved(&topic) {
                continue;
            }
            let msg = msg.clone();
            if bodies.insert(msg.id) {
                self.first_store(&msg);
                records.push(Record::MsgPut(Box::new(Self::stored_message(&msg, wall))));
            }
            records.push(Record::RetainPut {
                topic,
                msg_id: msg.id,
            });
        }
        for sid in in_order {
            if let Some(s) = sessions.get_mut(sid).filter(|s| s.durable) {
                let more = self.session_records(s, &mut bodies, false, wall);
                records.extend(more);
            }
        }
        records.extend(bridges);
        self.snapshot_upto = self.seq;
        Some(Output::Snapshot {
            upto: self.seq,
            records,
        })
    }

    /// The store made everything up to `upto` durable.
    pub fn done(&mut self, upto: u64) {
        self.durable = self.durable.max(upto.min(self.seq));
    }

    /// The store failed; true the first time.
    pub fn fail(&mut self) -> bool {
        !std::mem::replace(&mut self.failed, true)
    }

    /// End of an input: its records as one output; with `sync = none` they count as durable
    /// now.
    pub fn flush(&mut self) -> Option<Output> {
        if self.records.is_empty() {
            return None;
        }
        let records = std::mem::take(&mut self.records);
        let out = Output::Persist {
            upto: self.seq,
            records,
        };
        if self.mode == Some(SyncMode::None) {
            self.durable = self.seq;
        }
        Some(out)
    }

    /// Bytes for `conn`: held behind the store (`None`), or given back to go out now.
    pub fn hold(&mut self, conn: ConnId, bytes: Bytes) -> Option<Bytes> {
        let barrier = self.barrier;
        if barrier > self.durable || self.held.contains_key(&conn) {
            let need = if barrier > self.durable { barrier } else { 0 };
            let held = self.held.entry(conn).or_default();
            held.bytes += bytes.len();
            held.parts.push_back((need, bytes));
            return None;
        }
        Some(bytes)
    }

    /// Bytes waiting for the store on `conn`.
    pub fn held_bytes(&self, conn: ConnId) -> usize {
        self.held.get(&conn).map_or(0, |h| h.bytes)
    }

    /// Connections with output waiting for the store.
    pub fn held_conns(&self) -> Vec<ConnId> {
        self.held.keys().copied().collect()
    }

    /// Output still waiting for the store goes with its connection.
    pub fn drop_held(&mut self, conn: ConnId) {
        self.held.remove(&conn);
    }

    /// What the store has made durable may leave now, per connection in order.
    pub fn release(&mut self) -> Vec<(ConnId, Bytes)> {
        let durable = self.durable;
        let mut out = Vec::new();
        self.held.retain(|conn, held| {
            while let Some((need, _)) = held.parts.front() {
                if *need > durable {
                    break;
                }
                if let Some((_, bytes)) = held.parts.pop_front() {
                    held.bytes -= bytes.len();
                    out.push((*conn, bytes));
                }
            }
            !held.parts.is_empty()
        });
        out
    }

    /// Everything a durable session holds, as records (numbering deliveries that have no number
    /// yet when `assign`). Message bodies not in `sent_bodies` come first.
    fn session_records(
        &mut self,
        s: &mut Session,
        sent_bodies: &mut BTreeSet<u64>,
        assign: bool,
        wall: Wall,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        let mut messages = Vec::new();
        let client_id = s.client_id.clone();
        out.push(Record::SessionPut {
            client_id: client_id.clone(),
            version: s.version.level(),
            expiry_secs: s.expiry_secs,
            disconnected_at_unix_ms: s.disconnected_at_unix_ms,
        });
        for (filter, sub) in &s.subscriptions {
            out.push(Record::SubPut {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: options_byte(&sub.options),
                subscription_id: sub.id,
            });
        }
        let order = s.inflight.ids_in_order();
        let mut deliveries = Vec::new();
        for pid in order {
            if let Some(f) = s.inflight.get_mut(pid) {
                if assign && f.item.entry == 0 {
                    f.item.entry = s.next_entry;
                    s.next_entry += 1;
                }
                if f.item.entry == 0 {
                    continue;
                }
                let state = Some((pid, f.stage == OutStage::Released));
                deliveries.push((f.item.clone(), state));
            }
        }
        for d in s.queue.iter_mut() {
            if d.qos == QoS::AtMostOnce {
                continue;
            }
            if assign && d.entry == 0 {
                d.entry = s.next_entry;
                s.next_entry += 1;
            }
            if d.entry != 0 {
                deliveries.push((d.clone(), None));
            }
        }
        for packet_id in s.qos2_in.ids() {
            out.push(Record::InQos2Put {
                client_id: client_id.clone(),
                packet_id,
            });
        }
        for (d, state) in deliveries {
            if sent_bodies.insert(d.msg.id) {
                self.first_store(&d.msg);
                messages.push(d.msg.clone());
            }
            out.push(Record::QueuePut {
                client_id: client_id.clone(),
                entry: d.entry,
                msg_id: d.msg.id,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
                sent: state.and_then(|(pid, released)| (!released).then_some(pid)),
            });
            // A released delivery keeps its own record; an unreleased one is in the put.
            if let Some((pid, true)) = state {
                out.push(Record::OutState {
                    client_id: client_id.clone(),
                    entry: d.entry,
                    packet_id: pid,
                    released: true,
                });
            }
        }
        let mut bodies: Vec<Record> = messages
            .iter()
            .map(|m| Record::MsgPut(Box::new(Durability::stored_message(m, wall))))
            .collect();
        bodies.extend(out);
        bodies
    }

    /// After a restart: everything up to `last_seq` is durable.
    pub fn recovered(&mut self, last_seq: u64) {
        self.seq = self.seq.max(last_seq);
        self.durable = self.seq;
    }

    /// A recovered message: its body is stored, and new ids continue after it.
    pub fn recovered_message(&mut self, msg: &Arc<Message>) {
        self.next_msg_id = self.next_msg_id.max(msg.id);
        self.first_store(msg);
    }
}

/// The v5 SUBSCRIBE options byte.
pub(crate) fn options_byte(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling & 3) << 4
}

pub(crate) fn options_from_byte(b: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 3)?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: (b >> 4) & 3,
    })
}

pub(crate) fn version_from_level(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V31,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V311,
    }
}

/// Compaction of a store at its disk cap (`broker/disk.rs`): the timer armed for the next
/// snapshot, and the wait before it, which doubles while snapshots do not bring the store
/// under the cap.
#[derive(Debug, Default)]
pub(crate) struct Compaction {
    pub armed: Option<Instant>,
    pub wait_ms: u64,
}
