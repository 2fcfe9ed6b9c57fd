//! Persistence inside the broker: the records it hands to the store, the output it holds
//! back until they are durable, snapshots, and restoring from what the store recovered.
//!
//! The rule is simple and strict: when an input produced a record that an acknowledgement
//! depends on, nothing that input sends leaves before the store reports that record durable,
//! and later output to the same connection waits behind it. No client ever sees an
//! acknowledgement, a delivery or a session that a crash could take back.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use bytes::Bytes;

use super::Broker;
use crate::api::{BrokerEvent, ConnId, Instant, Output};
use crate::codec::{ProtocolVersion, QoS, SubscriptionOptions};
use crate::config::SyncMode;
use crate::persist::{Record, Recovered, StoredMessage};
use crate::session::{
    Delivery, Message, NEVER_EXPIRES, OutStage, Session, SessionId, Subscription,
};
use crate::topic;

/// Output for one connection waiting for the store, oldest first.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// (sequence number that must be durable, bytes); 0 = only behind what is before it.
    pub parts: VecDeque<(u64, Bytes)>,
    pub bytes: usize,
}

/// The store's side of the broker.
#[derive(Debug, Default)]
pub(super) struct Durability {
    /// `None`: persistence off.
    pub mode: Option<SyncMode>,
    /// Records of the current input, handed out as one [`Output::Persist`].
    pub records: Vec<Record>,
    /// Last sequence number handed out, and last one reported durable.
    pub seq: u64,
    pub durable: u64,
    /// Highest sequence number the current input's output depends on.
    pub barrier: u64,
    pub held: BTreeMap<ConnId, Held>,
    pub failed: bool,
    pub next_msg_id: u64,
}

/// The v5 SUBSCRIBE options byte.
pub(super) fn options_byte(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | (o.retain_handling & 3) << 4
}

fn options_from_byte(b: u8) -> Option<SubscriptionOptions> {
    Some(SubscriptionOptions {
        qos: QoS::from_u8(b & 3)?,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: (b >> 4) & 3,
    })
}

fn version_from_level(level: u8) -> ProtocolVersion {
    match level {
        3 => ProtocolVersion::V31,
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V311,
    }
}

impl Broker {
    pub(super) fn durable_on(&self) -> bool {
        self.store.mode.is_some()
    }

    /// Hands a record to the store. With `gate`, this input's output waits for it.
    pub(super) fn persist(&mut self, record: Record, gate: bool) {
        if self.store.mode.is_none() {
            return;
        }
        if self.store.failed {
            // Nothing that needed this record may ever be acknowledged.
            if gate {
                self.store.barrier = u64::MAX;
            }
            return;
        }
        self.store.seq += 1;
        self.store.records.push(record);
        if gate {
            self.store.barrier = self.store.seq;
        }
    }

    fn wall_of(&self, at: Instant) -> u64 {
        let now = self.now;
        if at >= now {
            self.wall_now().saturating_add(at.since(now))
        } else {
            self.wall_now().saturating_sub(now.since(at))
        }
    }

    fn stored_message(&self, msg: &Message) -> StoredMessage {
        StoredMessage {
            id: msg.id,
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: msg.retain,
            properties: msg.properties.clone(),
            expires_at_unix_ms: msg.expires_at.map(|at| self.wall_of(at)),
        }
    }

    /// Hands the message body to the store the first time anything durable refers to it.
    pub(super) fn persist_message(&mut self, msg: &Arc<Message>) {
        if self.durable_on() && msg.first_store() {
            let stored = self.stored_message(msg);
            self.persist(Record::MsgPut(stored), true);
        }
    }

    pub(super) fn next_message_id(&mut self) -> u64 {
        self.store.next_msg_id += 1;
        self.store.next_msg_id
    }

    /// A delivery a durable session keeps (QoS 1/2): numbered and stored. False when it
    /// cannot be stored (the store failed): it is dropped rather than kept on a promise the
    /// store can no longer back, and nothing else waits for it.
    pub(super) fn persist_delivery(&mut self, sid: SessionId, d: &mut Delivery) -> bool {
        if d.qos == QoS::AtMostOnce || d.entry != 0 {
            return true;
        }
        let failed = self.store.failed;
        let Some(session) = self.sessions.get_mut(&sid) else {
            return true;
        };
        if !session.durable {
            return true;
        }
        if failed {
            return false;
        }
        d.entry = session.next_entry;
        session.next_entry += 1;
        let client_id = session.client_id.clone();
        self.persist_message(&d.msg);
        self.persist(
            Record::QueuePut {
                client_id,
                entry: d.entry,
                msg_id: d.msg.id,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
            },
            true,
        );
        true
    }

    /// A stored delivery finished or was dropped.
    pub(super) fn forget_delivery(&mut self, sid: SessionId, entry: u64) {
        if entry == 0 {
            return;
        }
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if !session.durable {
            return;
        }
        let client_id = session.client_id.clone();
        self.persist(Record::QueueDel { client_id, entry }, false);
    }

    /// A stored delivery took packet id `pid` (or, QoS 2, sent its PUBREL). Only QoS 2
    /// needs the record durable before the packet leaves: a lost QoS 1 record only costs a
    /// resend under a new id, a lost QoS 2 one could mean a second delivery.
    pub(super) fn persist_out_state(
        &mut self,
        sid: SessionId,
        entry: u64,
        pid: u16,
        qos: QoS,
        released: bool,
    ) {
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if entry == 0 || !session.durable {
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

    /// The session record: its settings and, once disconnected, when.
    pub(super) fn persist_session(&mut self, sid: SessionId, gate: bool) {
        let Some(s) = self.sessions.get(&sid) else {
            return;
        };
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
    pub(super) fn persist_connect(&mut self, sid: SessionId) {
        let on = self.durable_on();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.disconnected_at_unix_ms = None;
        let want = on && s.expiry_secs > 0;
        match (s.durable, want) {
            (true, true) => self.persist_session(sid, true),
            (true, false) => {
                s.durable = false;
                let client_id = s.client_id.clone();
                self.persist(Record::SessionDel { client_id }, true);
            }
            (false, true) => {
                s.durable = true;
                let records = self.session_records(sid, &mut BTreeSet::new(), true);
                for r in records {
                    self.persist(r, true);
                }
            }
            (false, false) => {}
        }
    }

    /// Everything a durable session holds, as records (numbering deliveries that have no
    /// number yet when `assign`). Message bodies not in `sent_bodies` come first.
    fn session_records(
        &mut self,
        sid: SessionId,
        sent_bodies: &mut BTreeSet<u64>,
        assign: bool,
    ) -> Vec<Record> {
        let mut out = Vec::new();
        let mut messages = Vec::new();
        let Some(s) = self.sessions.get_mut(&sid) else {
            return out;
        };
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
        let order: Vec<u16> = s.inflight_order.values().copied().collect();
        let mut deliveries = Vec::new();
        for pid in order {
            if let Some(f) = s.inflight.get_mut(&pid) {
                if assign && f.delivery.entry == 0 {
                    f.delivery.entry = s.next_entry;
                    s.next_entry += 1;
                }
                if f.delivery.entry == 0 {
                    continue;
                }
                let state = Some((pid, f.stage == OutStage::Released));
                deliveries.push((f.delivery.clone(), state));
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
        for pid in &s.awaiting_rel {
            out.push(Record::InQos2Put {
                client_id: client_id.clone(),
                packet_id: *pid,
            });
        }
        for (d, state) in deliveries {
            if sent_bodies.insert(d.msg.id) {
                d.msg.first_store();
                messages.push(d.msg.clone());
            }
            out.push(Record::QueuePut {
                client_id: client_id.clone(),
                entry: d.entry,
                msg_id: d.msg.id,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
            });
            if let Some((pid, released)) = state {
                out.push(Record::OutState {
                    client_id: client_id.clone(),
                    entry: d.entry,
                    packet_id: pid,
                    released,
                });
            }
        }
        let mut bodies: Vec<Record> = messages
            .iter()
            .map(|m| Record::MsgPut(self.stored_message(m)))
            .collect();
        bodies.extend(out);
        bodies
    }

    /// Every live durable record, for [`Output::Snapshot`].
    pub(super) fn snapshot(&mut self) {
        if !self.durable_on() {
            return;
        }
        let mut bodies = BTreeSet::new();
        let mut records = Vec::new();
        for (topic, msg) in self.retained.all() {
            let msg = msg.clone();
            if bodies.insert(msg.id) {
                msg.first_store();
                records.push(Record::MsgPut(self.stored_message(&msg)));
            }
            records.push(Record::RetainPut {
                topic,
                msg_id: msg.id,
            });
        }
        let sids: Vec<SessionId> = self.by_client_id.values().copied().collect();
        for sid in sids {
            if self.sessions.get(&sid).is_some_and(|s| s.durable) {
                records.extend(self.session_records(sid, &mut bodies, false));
            }
        }
        records.extend(self.bridge_records());
        self.outputs.push_back(Output::Snapshot {
            upto: self.store.seq,
            records,
        });
    }

    /// The store made everything up to `upto` durable: release what waited for it.
    pub(super) fn persist_done(&mut self, upto: u64) {
        self.store.durable = self.store.durable.max(upto.min(self.store.seq));
        self.release_held();
    }

    pub(super) fn persist_failed(&mut self, error: String) {
        if !self.store.failed {
            self.store.failed = true;
            self.event(BrokerEvent::StoreFailed { error });
        }
    }

    /// End of an input: hand out its records; with `sync = none` they count as durable now.
    pub(super) fn flush_records(&mut self) {
        if !self.store.records.is_empty() {
            let records = std::mem::take(&mut self.store.records);
            self.outputs.push_back(Output::Persist {
                upto: self.store.seq,
                records,
            });
            if self.store.mode == Some(SyncMode::None) {
                self.store.durable = self.store.seq;
            }
        }
    }

    /// Bytes for `conn`: out now, or held behind the store.
    pub(super) fn transmit(&mut self, conn: ConnId, bytes: Bytes) {
        let barrier = self.store.barrier;
        if barrier > self.store.durable || self.store.held.contains_key(&conn) {
            let need = if barrier > self.store.durable {
                barrier
            } else {
                0
            };
            let held = self.store.held.entry(conn).or_default();
            held.bytes += bytes.len();
            held.parts.push_back((need, bytes));
            return;
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.unwritten += bytes.len();
        }
        self.outputs.push_back(Output::Transmit { conn, bytes });
    }

    /// Bytes waiting for the store on `conn`.
    pub(super) fn held_bytes(&self, conn: ConnId) -> usize {
        self.store.held.get(&conn).map_or(0, |h| h.bytes)
    }

    pub(super) fn release_held(&mut self) {
        let durable = self.store.durable;
        let conns: Vec<ConnId> = self.store.held.keys().copied().collect();
        for conn in conns {
            let Some(held) = self.store.held.get_mut(&conn) else {
                continue;
            };
            let mut out = Vec::new();
            while let Some((need, _)) = held.parts.front() {
                if *need > durable {
                    break;
                }
                if let Some((_, bytes)) = held.parts.pop_front() {
                    held.bytes -= bytes.len();
                    out.push(bytes);
                }
            }
            if held.parts.is_empty() {
                self.store.held.remove(&conn);
            }
            for bytes in out {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.unwritten += bytes.len();
                }
                self.outputs.push_back(Output::Transmit { conn, bytes });
            }
        }
    }

    /// Rebuilds sessions, subscriptions, queues and retained messages from the store.
    /// Call once, before any other input. `unix_ms` is the wall clock now.
    pub fn restore(&mut self, state: Recovered, unix_ms: u64) {
        let mut state = state;
        state.prune();
        self.wall_ms = unix_ms;
        self.wall_at = self.now;
        self.store.seq = self.store.seq.max(state.last_seq);
        self.store.durable = self.store.seq;
        let now = self.now;
        let instant_of = |unix: u64| -> Instant {
            if unix >= unix_ms {
                now.plus_ms(unix - unix_ms)
            } else {
                now
            }
        };
        let mut messages: BTreeMap<u64, Arc<Message>> = BTreeMap::new();
        for (id, m) in std::mem::take(&mut state.messages) {
            self.store.next_msg_id = self.store.next_msg_id.max(id);
            messages.insert(
                id,
                Arc::new(Message {
                    topic: m.topic,
                    payload: m.payload,
                    qos: m.qos,
                    retain: m.retain,
                    properties: m.properties,
                    expires_at: m.expires_at_unix_ms.map(instant_of),
                    publisher: None,
                    from_bridge: None,
                    id,
                    stored: AtomicBool::new(true),
                    needs_seq: AtomicU64::new(0),
                }),
            );
        }
        for (topic, id) in &state.retained {
            if let Some(m) = messages.get(id)
                && topic::validate_topic_name(topic, usize::MAX).is_ok()
            {
                self.retained.insert(topic, m.clone());
            }
        }
        for (client_id, rs) in std::mem::take(&mut state.sessions) {
            let elapsed_ms = rs
                .disconnected_at_unix_ms
                .map_or(0, |at| unix_ms.saturating_sub(at));
            let expired = rs.expiry_secs != NEVER_EXPIRES
                && elapsed_ms >= u64::from(rs.expiry_secs).saturating_mul(1000);
            if expired || rs.expiry_secs == 0 || self.by_client_id.contains_key(&client_id) {
                self.persist(
                    Record::SessionDel {
                        client_id: client_id.clone(),
                    },
                    false,
                );
                self.event(BrokerEvent::SessionExpired { client_id });
                continue;
            }
            let sid = self.next_session_id;
            self.next_session_id += 1;
            let mut s = Session::new(client_id.clone(), version_from_level(rs.version));
            s.durable = true;
            s.expiry_secs = rs.expiry_secs;
            s.disconnected_at_unix_ms = Some(rs.disconnected_at_unix_ms.unwrap_or(unix_ms));
            // Connected when the broker stopped: its expiry runs from this start, and the store
            // must say so, or every later restart would start the clock again.
            let restarted_clock =
                rs.disconnected_at_unix_ms
                    .is_none()
                    .then(|| Record::SessionPut {
                        client_id: client_id.clone(),
                        version: rs.version,
                        expiry_secs: rs.expiry_secs,
                        disconnected_at_unix_ms: Some(unix_ms),
                    });
            if rs.expiry_secs != NEVER_EXPIRES {
                let left = u64::from(rs.expiry_secs) * 1000 - elapsed_ms;
                s.expires_at = Some(now.plus_ms(left));
            }
            for (raw, (options, id)) in rs.subscriptions {
                let Some(options) = options_from_byte(options) else {
                    continue;
                };
                let Ok(parsed) = topic::parse_subscription(&raw, usize::MAX) else {
                    continue;
                };
                let sub = Subscription { options, id };
                self.subscriptions
                    .insert(parsed.filter, parsed.share_group, sid, sub);
                s.subscriptions.insert(raw, sub);
            }
            for (entry, q) in rs.queue {
                let Some(msg) = messages.get(&q.msg_id) else {
                    continue;
                };
                s.next_entry = s.next_entry.max(entry + 1);
                let delivery = Delivery {
                    msg: msg.clone(),
                    qos: q.qos,
                    retain: q.retain,
                    subscription_ids: q.subscription_ids,
                    entry,
                };
                match q.out_state {
                    Some((pid, released))
                        if pid != 0
                            && q.qos != QoS::AtMostOnce
                            && !s.inflight.contains_key(&pid) =>
                    {
                        s.push_inflight(pid, delivery);
                        if released
                            && q.qos == QoS::ExactlyOnce
                            && let Some(f) = s.inflight.get_mut(&pid)
                        {
                            f.stage = OutStage::Released;
                        }
                    }
                    _ => s.queue.push_back(delivery),
                }
            }
            s.mark_all_unsent();
            s.awaiting_rel = rs.awaiting_rel;
            if let Some(record) = restarted_clock {
                self.persist(record, false);
            }
            self.sessions.insert(sid, Box::new(s));
            self.by_client_id.insert(client_id, sid);
            self.arm_session_timer(sid);
        }
        let bridges = std::mem::take(&mut state.bridges);
        self.restore_bridges(bridges, &messages);
        self.flush_records();
    }
}

impl Broker {
    /// An inbound QoS 2 packet id accepted (`put`) or released, for a durable session.
    pub(super) fn persist_in_qos2(&mut self, sid: SessionId, packet_id: u16, put: bool) {
        let Some(s) = self.sessions.get(&sid).filter(|s| s.durable) else {
            return;
        };
        let client_id = s.client_id.clone();
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
}

impl Broker {
    /// The store failed: work that needs it is refused.
    pub(super) fn store_refuses(&self) -> bool {
        self.store.mode.is_some() && self.store.failed
    }

    /// Whether accepting this client PUBLISH would give the store something to keep: a
    /// retained value, a QoS 1/2 delivery to a durable session, or a bridge outbox entry.
    pub(super) fn needs_store(&self, publisher: SessionId, p: &crate::codec::Publish) -> bool {
        if p.retain {
            return true;
        }
        if p.qos == QoS::AtMostOnce {
            return false;
        }
        // Its packet id, for a stored session.
        if p.qos == QoS::ExactlyOnce && self.sessions.get(&publisher).is_some_and(|s| s.durable) {
            return true;
        }
        let mut matched = Vec::new();
        self.subscriptions.matches(&p.topic, &mut matched);
        let durable_target = matched.iter().any(|m| match m {
            topic::SubMatch::Single(sid, sub) => {
                sub.options.qos != QoS::AtMostOnce
                    && !(sub.options.no_local && **sid == publisher)
                    && self.sessions.get(sid).is_some_and(|s| s.durable)
            }
            topic::SubMatch::Shared(group) => group.members.iter().any(|(sid, sub)| {
                sub.options.qos != QoS::AtMostOnce
                    && self.sessions.get(sid).is_some_and(|s| s.durable)
            }),
        });
        durable_target || self.bridge_would_keep(&p.topic, p.qos)
    }
}
