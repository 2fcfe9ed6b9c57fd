//! Where a message goes once accepted: the retained store, every matching subscription (one
//! copy per session, one per share group) and the bridges that forward its topic.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Broker;
use crate::codec::QoS;
use crate::ids::SessionId;
use crate::message::{Content, Message, Origin};
use crate::persist::Record;
use crate::session::{Delivery, Session, Subscription};
use crate::sys;
use crate::topic::{self, SubMatch};

impl Broker {
    /// Makes a message, retains and routes it. Client messages, wills and bridged messages
    /// count as received; the broker's own `$SYS` events do not.
    pub(super) fn publish(
        &mut self,
        content: Content,
        origin: Origin,
        expires_at: Option<crate::api::Instant>,
    ) {
        if !matches!(origin, Origin::Broker | Origin::Cluster) {
            self.stats.messages_received += 1;
            self.counters.publish_in(content.qos, content.payload.len());
        }
        let id = self.store.next_message_id();
        let ledger = &self.memory.ledger;
        let msg = Arc::new(Message::new(
            id, content, origin, expires_at, self.now, ledger,
        ));
        if let Some(c) = self.cluster.as_deref() {
            msg.durable.set_stream_seq(c.routing_seq);
        }
        if msg.retain {
            self.retain(&msg);
        }
        // In a cluster, share groups get messages through NATS only: one member cluster-wide.
        self.route(&msg, self.cluster.is_none(), None);
        self.bridge_forward(&msg);
        self.cluster_publish(&msg);
        self.settle(&msg);
    }

    /// Deliveries of a message in later inputs (from a queue) wait for what accepted it.
    pub(super) fn settle(&mut self, msg: &Arc<Message>) {
        if let Some(barrier) = self.store.pending_barrier() {
            self.store.set_needs(msg, barrier);
        }
    }

    /// A retained message replaces the topic's; an empty one clears it.
    fn retain(&mut self, msg: &Arc<Message>) {
        // The broker's own events are never kept across a restart. After a store failure
        // only what a client is refused for needs it (see `needs_store`).
        let keep = self.store.on() && !self.store.failed() && !sys::is_reserved(&msg.topic);
        if msg.payload.is_empty() {
            if self.retained.remove(&msg.topic).is_some() && keep {
                let topic = msg.topic.clone();
                self.store.persist(Record::RetainDel { topic }, true);
            }
        } else {
            // The retained copy is not the stream's message (its replays are new deliveries
            // a moved session must not take for the stream's).
            let msg = &match msg.durable.stream_seq() {
                0 => msg.clone(),
                _ => Arc::new(self.copy_of(msg)),
            };
            self.retained.insert(&msg.topic, msg.clone());
            if keep {
                let wall = self.wall();
                self.store.persist_message(msg, wall);
                let (topic, msg_id) = (msg.topic.clone(), msg.id);
                self.store
                    .persist(Record::RetainPut { topic, msg_id }, true);
            }
        }
    }

    /// A copy of `msg` as a message of its own.
    fn copy_of(&mut self, msg: &Message) -> Message {
        let content = Content {
            topic: msg.topic.clone(),
            payload: msg.payload.clone(),
            qos: msg.qos,
            retain: msg.retain,
            properties: msg.properties.clone(),
        };
        let id = self.store.next_message_id();
        let ledger = &self.memory.ledger;
        Message::new(id, content, msg.origin, msg.expires_at, self.now, ledger)
    }

    /// Delivers `msg` to every matching subscription: once per session for its non-shared
    /// subscriptions, with the highest QoS and every subscription identifier that matched,
    /// plus one copy per share group that picked it (v5 §4.8.2) unless `shared` is false.
    /// `via`: a copy from another node on the NATS subscription with this number, which only
    /// the sessions whose lowest-numbered matching filter it is take (`clustering.rs`).
    pub(super) fn route(&mut self, msg: &Arc<Message>, shared: bool, via: Option<u64>) {
        self.route_for(msg, shared, via, None);
    }

    /// Delivers `msg` to session `sid` only, as `route` would (a catch-up read).
    pub(super) fn route_to_session(&mut self, msg: &Arc<Message>, sid: SessionId) {
        self.route_for(msg, false, None, Some(sid));
    }

    fn route_for(
        &mut self,
        msg: &Arc<Message>,
        shared: bool,
        via: Option<u64>,
        only: Option<SessionId>,
    ) {
        // Targets with the same key merge: (session, 0) for non-shared, (session, n) for the
        // n-th share group.
        type Key = (SessionId, usize);
        let mut targets: Vec<(Key, QoS, bool, Option<u32>, u64)> = Vec::new();
        {
            let mut matched = Vec::new();
            self.subscriptions.matches(&msg.topic, &mut matched);
            let mut groups = 0;
            for m in matched {
                match m {
                    SubMatch::Single(sid, sub) => {
                        if only.is_some_and(|only| only != *sid) {
                            continue;
                        }
                        if sub.options.no_local && msg.publisher() == Some(*sid) {
                            continue;
                        }
                        targets.push((
                            (*sid, 0),
                            sub.options.qos,
                            sub.options.retain_as_published,
                            sub.id,
                            // 0: the filter has no NATS subscription (`$SYS`), never the way in.
                            if sub.cluster_key == 0 {
                                u64::MAX
                            } else {
                                sub.cluster_key
                            },
                        ));
                    }
                    SubMatch::Shared(_) if !shared => {}
                    SubMatch::Shared(group) => {
                        groups += 1;
                        if let Some((sid, sub)) = pick_member(group, &self.sessions) {
                            targets.push(((sid, groups), sub.options.qos, false, sub.id, 0));
                        }
                    }
                }
            }
        }
        // In a cluster another node may have subscribers: nothing is known to be unrouted.
        if targets.is_empty() && msg.origin != Origin::Broker && self.cluster.is_none() {
            self.stats.messages_unrouted += 1;
            self.counters
                .dropped(crate::metrics::DropReason::NoSubscriber, 1);
        }
        targets.sort_by_key(|t| t.0);
        let mut i = 0;
        while let Some(&(key, mut qos, mut rap, id, mut lowest)) = targets.get(i) {
            let mut ids: Vec<u32> = id.into_iter().collect();
            i += 1;
            while let Some(&(next, q, r, id, number)) = targets.get(i) {
                if next != key {
                    break;
                }
                qos = qos.max(q);
                rap |= r;
                lowest = lowest.min(number);
                // Several matching subscriptions may share an identifier: it is said once.
                if let Some(id) = id
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
                i += 1;
            }
            if via.is_some_and(|via| via != lowest) {
                continue;
            }
            let delivery = Delivery::new(msg.clone(), qos.min(msg.qos), rap && msg.retain, ids, 0);
            // A catch-up read's own deliveries go straight in; others wait behind it.
            self.deliver_routed(key.0, delivery, only.is_none());
        }
    }
}

impl Broker {
    /// A message for the share group `group` on `filter`, which NATS chose this node for: one
    /// local member gets it.
    pub(super) fn route_to_group(&mut self, msg: &Arc<Message>, filter: &str, group: &str) {
        let picked = self
            .subscriptions
            .shared_group(filter, group)
            .and_then(|g| pick_member(g, &self.sessions));
        let Some((sid, sub)) = picked else {
            return;
        };
        let ids = sub.id.into_iter().collect();
        let delivery = Delivery::new(msg.clone(), sub.options.qos.min(msg.qos), false, ids, 0);
        self.deliver(sid, delivery);
    }
}

/// Chooses the share-group member for the next message: round robin over connected members,
/// or over all members when none is connected (the message waits in its queue).
fn pick_member(
    group: &topic::SharedGroup<SessionId, Subscription>,
    sessions: &BTreeMap<SessionId, Box<Session>>,
) -> Option<(SessionId, Subscription)> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = (group.advance() % n as u64) as usize;
    let connected = |sid: &SessionId| sessions.get(sid).is_some_and(|s| s.conn.is_some());
    let rotated = group
        .members
        .iter()
        .skip(start)
        .chain(group.members.iter().take(start));
    let mut first = None;
    for (sid, sub) in rotated {
        if connected(sid) {
            return Some((*sid, *sub));
        }
        first.get_or_insert((*sid, *sub));
    }
    first
}
