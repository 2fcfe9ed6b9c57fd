//! Cluster mode, the broker's side (state in `cluster/`, design in `docs/cluster.md`): NATS
//! subscriptions for the distinct filters of local sessions, local messages published to the
//! other nodes, their messages routed here once however many copies NATS brings, shared
//! subscriptions through NATS queue groups (one member cluster-wide), and the retained bucket
//! mirrored into the local retained store.

use std::sync::Arc;

use bytes::Bytes;

use super::Broker;
use super::inbound::Sender;
use crate::api::Output;
use crate::cluster::envelope::{self, Envelope, STAMP_BYTES, Stamp};
use crate::cluster::interest::{Key, Refusal};
use crate::cluster::subject::{self, Space};
use crate::cluster::{AfterFeed, Cluster, MAX_ROUTED_AFTER_FEED, Unwritten, Waiting};
use crate::codec::{QoS, reason};
use crate::conn::CloseReason;
use crate::ids::SessionId;
use crate::memory::MESSAGE_BYTES;
use crate::message::{Content, Message, Origin};
use crate::session::Subscription;
use crate::sys;

/// Who takes a message from another node here.
pub(super) enum Takers {
    /// Sessions with a matching plain subscription: through the NATS subscription numbered
    /// (a live copy, see `Subscription::cluster_key`), or all of them (the node feed).
    Plain(Option<u64>),
    /// One member of the share group (filter, group).
    Group(String, String),
    /// One session, through its matching plain subscriptions (a catch-up read).
    Session(SessionId),
}

impl Broker {
    /// Cluster mode starts with the node (a reload does not start or stop it).
    pub(super) fn cluster_start(&mut self) {
        if self.config.cluster.enable {
            let epoch = self.rng.next_u64();
            let config = self.config.cluster.clone();
            self.cluster = Some(Box::new(Cluster::new(config, epoch, self.now)));
            self.arm_heartbeat(self.now);
        }
    }

    /// Adds a subscription to the index; the node's first to its filter subscribes in NATS.
    pub(super) fn index_subscription(
        &mut self,
        filter: &str,
        group: Option<&str>,
        sid: SessionId,
        mut sub: Subscription,
    ) {
        let Some(c) = self.cluster.as_deref() else {
            // A single node: nothing to number or to tell NATS.
            self.subscriptions.insert(filter, group, sid, sub);
            return;
        };
        let key: Key = (filter.to_owned(), group.map(str::to_owned));
        sub.cluster_key = c.interest.number(&key).unwrap_or(0);
        if !self.subscriptions.insert(filter, group, sid, sub) {
            return;
        }
        if let Some(c) = self.cluster.as_deref_mut() {
            let mut out = Vec::new();
            let max_len = c.max_subject_len();
            let number = c
                .interest
                .add(&c.config.subject_prefix, key, max_len, &mut out);
            self.outputs.extend(out);
            if number != sub.cluster_key {
                // The first subscription to the filter made its key: the index learns its number.
                sub.cluster_key = number;
                self.subscriptions.insert(filter, group, sid, sub);
            }
        }
    }

    /// Removes a subscription from the index; the node's last to its filter unsubscribes.
    pub(super) fn unindex_subscription(
        &mut self,
        filter: &str,
        group: Option<&str>,
        sid: SessionId,
    ) {
        if !self.subscriptions.remove(filter, group, &sid) {
            return;
        }
        if let Some(c) = self.cluster.as_deref_mut() {
            let key: Key = (filter.to_owned(), group.map(str::to_owned));
            let mut out = Vec::new();
            c.interest.remove(&key, &mut out);
            self.outputs.extend(out);
        }
    }

    /// Whether the cluster can carry a new subscription to `filter`: its subjects fit
    /// `max_subject_len` and the node holds fewer than `max_subscriptions`.
    pub(super) fn cluster_admits(
        &mut self,
        filter: &str,
        group: Option<&str>,
    ) -> Result<(), Refusal> {
        let Some(c) = self.cluster.as_deref_mut() else {
            return Ok(());
        };
        let key: Key = (filter.to_owned(), group.map(str::to_owned));
        let max = c.config.max_subscriptions as usize;
        let checked = c
            .interest
            .check(&c.config.subject_prefix, &key, c.max_subject_len(), max);
        if checked.is_err() {
            c.counters.refused += 1;
        }
        checked
    }

    /// Whether a topic can travel in the cluster (its subject fits `max_subject_len`).
    pub(super) fn cluster_carries(&mut self, topic: &str) -> bool {
        let Some(c) = self.cluster.as_deref_mut() else {
            return true;
        };
        let ok = sys::is_reserved(topic)
            || subject::subject_len(&c.config.subject_prefix, topic) <= c.max_subject_len();
        if !ok {
            c.counters.refused += 1;
        }
        ok
    }

    /// A message accepted on this node (a client's, a will, the admin API's) goes to the other
    /// nodes, and a retained one to the retained bucket. The broker's own `$SYS` messages stay
    /// on their node, and so do messages from a bridge: every node runs its bridges.
    pub(super) fn cluster_publish(&mut self, msg: &Message) {
        if !matches!(msg.origin, Origin::Session(_) | Origin::Admin) || sys::is_reserved(&msg.topic)
        {
            return;
        }
        let wall = self.wall();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let max_len = c.max_subject_len();
        let prefix = &c.config.subject_prefix;
        let Ok(subject) = subject::topic_to_subject(prefix, Space::Live, &msg.topic, max_len)
        else {
            return;
        };
        let expires = msg.expires_at.map(|at| wall.of(at));
        let stamp = c.stamp();
        let envelope = envelope::encode(
            &stamp,
            expires,
            msg.qos,
            msg.retain,
            &msg.properties,
            &msg.payload,
        );
        if msg.retain
            && let Ok(key) = subject::topic_key(&msg.topic, max_len)
        {
            // A deletion is written as a message without payload, so the watch can tell this
            // node's own writes (see `cluster_retained`).
            c.own_retained_write(&key, &self.memory.ledger);
            let value = Some(envelope.clone());
            self.outputs.push_back(Output::ClusterRetain { key, value });
        }
        c.counters.published += 1;
        self.outputs.push_back(Output::ClusterPublish {
            subject,
            payload: envelope,
            droppable: msg.qos == QoS::AtMostOnce,
        });
    }

    /// A message from another node, on one of this node's NATS subscriptions. NATS brings one
    /// copy per matching subscription, each subscription in publish order; a session takes the
    /// copy of its matching filter with the lowest number only, so it gets each message once
    /// and in order whatever other sessions subscribe meanwhile. On a queue subscription the
    /// message goes to one local member of that share group.
    pub(super) fn cluster_message(&mut self, sid: u64, subject: &str, payload: Bytes) {
        if sid == crate::cluster::owner::KICK_SID {
            return self.cluster_kick(&payload);
        }
        if sid >= crate::cluster::nodes::ANSWER_SID {
            return self.cluster_node_message(sid, &payload);
        }
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(((filter, group), number)) = c.interest.key_of(sid) else {
            // A message still in flight for a subscription just dropped.
            return;
        };
        // Only a share group's copy needs the names (to find the group): no copies per message.
        let (number, shared) = (*number, group.clone().map(|g| (filter.clone(), g)));
        let topic = subject::subject_to_topic(&c.config.subject_prefix, Space::Live, subject);
        let (Ok(topic), Ok(envelope)) = (topic, Envelope::decode(payload)) else {
            c.counters.malformed += 1;
            return;
        };
        let from_self = c.is_own(&envelope.stamp);
        // Plain subscriptions never see this node's own messages (no echo); the node routed
        // them when they came in. QoS 1/2 ones come through the node feed instead, which
        // loses none when a NATS server goes.
        if shared.is_none() && (from_self || envelope.qos != QoS::AtMostOnce) {
            return;
        }
        let takers = match shared {
            None => Takers::Plain(Some(number)),
            Some((filter, group)) => Takers::Group(filter, group),
        };
        self.take_copy(topic, envelope, takers, 0);
    }

    /// A QoS 1/2 message of another node from the durable stream: routed to every local
    /// session with a matching plain subscription (share groups take theirs through NATS
    /// queue groups). The feed brings each message once, in the stream's order.
    pub(super) fn cluster_feed_message(&mut self, seq: u64, subject: &str, payload: Bytes) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.feed_at(seq);
        self.route_after_feed();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let topic = subject::subject_to_topic(&c.config.subject_prefix, Space::Durable, subject);
        let (Ok(topic), Ok(envelope)) = (topic, Envelope::decode(payload)) else {
            c.counters.malformed += 1;
            return;
        };
        // This node routes its own when JetStream answers for them, or, if the feed reads one
        // first, now: in the stream's order with what other nodes wrote.
        if c.is_own(&envelope.stamp) {
            // Stored by a write again for a session that moved back here after this node
            // had given up the first write: nobody routed it here yet.
            if c.abandoned.remove(&envelope.stamp.seq) {
                return self.take_copy(topic, envelope, Takers::Plain(None), seq);
            }
            return self.route_own_on_feed(seq, envelope.stamp.seq);
        }
        self.take_copy(topic, envelope, Takers::Plain(None), seq);
    }

    /// A message from another node taken here (counted), unless it has expired on its way.
    /// `seq`: its place in the durable stream (0 for a copy from a NATS subscription).
    pub(super) fn take_copy(
        &mut self,
        topic: String,
        envelope: Envelope,
        takers: Takers,
        seq: u64,
    ) {
        let ledger = self.memory.ledger.clone();
        if let Some(c) = self.cluster.as_deref_mut() {
            c.counters.received += 1;
        }
        let Some(expires_at) = self.deadline_of(envelope.expires_unix_ms) else {
            return;
        };
        let retain = envelope.retain;
        let msg = self.message_from(topic, envelope, retain, expires_at, &ledger);
        msg.durable.set_stream_seq(seq);
        match &takers {
            Takers::Plain(via) => self.route(&msg, false, *via),
            Takers::Group(filter, group) => self.route_to_group(&msg, filter, group),
            Takers::Session(sid) => self.route_to_session(&msg, *sid),
        }
        self.settle(&msg);
    }

    /// The local deadline of a message that expires at `unix_ms` (wall clock); `None` when
    /// it has expired already, `Some(None)` when it never does.
    fn deadline_of(&self, unix_ms: Option<u64>) -> Option<Option<crate::api::Instant>> {
        let Some(at) = unix_ms else {
            return Some(None);
        };
        let wall_now = self.wall_now();
        (at > wall_now).then(|| Some(self.now.plus_ms(at - wall_now)))
    }

    /// An entry of the retained bucket changed: the local retained store follows, in the
    /// bucket's order, so every node converges to the bucket's last value per topic. While
    /// this node's own writes to a topic are on their way, older entries of that topic are
    /// passed over: the node keeps serving what its clients wrote last.
    pub(super) fn cluster_retained(&mut self, key: &str, value: Option<Bytes>) {
        let ledger = self.memory.ledger.clone();
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let prefix = &c.config.subject_prefix;
        let Ok(topic) =
            subject::subject_to_topic(prefix, Space::Live, &format!("{prefix}.m.{key}"))
        else {
            c.counters.malformed += 1;
            return;
        };
        let envelope = match value.map(Envelope::decode) {
            None => None,
            Some(Ok(e)) => Some(e),
            Some(Err(_)) => {
                c.counters.malformed += 1;
                return;
            }
        };
        let own = envelope.as_ref().is_some_and(|e| c.is_own(&e.stamp));
        if own {
            c.own_retained_seen(key);
        }
        // A later write of this node to the topic is still on its way: it decides.
        if c.own_retained_pending(key) {
            return;
        }
        let Some(envelope) = envelope.filter(|e| !e.payload.is_empty()) else {
            self.retained.remove(&topic);
            return;
        };
        let Some(expires_at) = self.deadline_of(envelope.expires_unix_ms) else {
            self.retained.remove(&topic);
            return;
        };
        let msg = self.message_from(topic, envelope, true, expires_at, &ledger);
        self.retained.insert(&msg.topic.clone(), msg);
    }

    /// A message from another node, as this node routes or keeps it.
    fn message_from(
        &mut self,
        topic: String,
        envelope: Envelope,
        retain: bool,
        expires_at: Option<crate::api::Instant>,
        ledger: &crate::memory::Ledger,
    ) -> Arc<Message> {
        let content = Content {
            topic,
            payload: envelope.payload,
            qos: envelope.qos,
            retain,
            properties: envelope.properties,
        };
        let id = self.store.next_message_id();
        Arc::new(Message::new(
            id,
            content,
            Origin::Cluster,
            expires_at,
            self.now,
            ledger,
        ))
    }

    /// A client's QoS 1/2 message, accepted by every check: written to the durable stream
    /// first. The connection reads nothing more until JetStream answers; then it is routed
    /// and acknowledged, or refused. A persistent session's QoS 2 message waits for its
    /// record to hold its id first (`cluster_qos2.rs`); `again`: the stamp a resumed inbound
    /// id was recorded with, written again under it.
    pub(super) fn cluster_write_durable(
        &mut self,
        sender: Sender,
        content: Content,
        again: Option<Stamp>,
    ) {
        let Sender {
            conn: id,
            sid,
            version,
            packet_id: pid,
        } = sender;
        let wall_now = self.wall_now();
        let ledger = self.memory.ledger.clone();
        let recorded_first =
            again.is_none() && content.qos == QoS::ExactlyOnce && self.keeps_record(sid);
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let max_len = c.max_subject_len();
        let subject = subject::topic_to_subject(
            &c.config.subject_prefix,
            Space::Durable,
            &content.topic,
            max_len,
        );
        let Ok(subject) = subject else {
            // `cluster_carries` checked the length of the same subject.
            return;
        };
        let is_again = again.is_some();
        let stamp = again.unwrap_or_else(|| c.stamp());
        let expires = content
            .properties
            .message_expiry_interval
            .map(|secs| wall_now.saturating_add(u64::from(secs) * 1000));
        let mut properties = content.properties.clone();
        properties.message_expiry_interval = None;
        let payload = envelope::encode(
            &stamp,
            expires,
            content.qos,
            content.retain,
            &properties,
            &content.payload,
        );
        let msg_id = format!("{}.{}.{}", stamp.node, stamp.epoch, stamp.seq);
        // A write that waits for the record holds its envelope too, and one for a recorded
        // id its stamp.
        let held = if recorded_first { payload.len() } else { 0 }
            + if recorded_first || is_again {
                STAMP_BYTES
            } else {
                0
            };
        let charge = ledger.charge(MESSAGE_BYTES + payload.len() + content.topic.len() + held);
        if recorded_first && !self.qos2_owe_inbound(sid, pid, stamp.clone()) {
            // The record holds as many unreleased ids as it may.
            if version.is_v5() {
                return self.finish_publish(sender, QoS::ExactlyOnce, reason::QUOTA_EXCEEDED, None);
            }
            let why = "too many unreleased QoS 2 messages for the session's record";
            return self.drop_conn(id, CloseReason::error(reason::QUOTA_EXCEEDED, why));
        }
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let stamp_seq = stamp.seq;
        let recorded_stamp = (recorded_first || is_again).then_some(stamp);
        let behind_feed = c.owner.held(sid).is_some_and(|h| h.moved_in) || c.after_feed.holds(sid);
        let unwritten = recorded_first.then(|| Unwritten {
            subject: subject.clone(),
            msg_id: msg_id.clone(),
            payload: payload.clone(),
        });
        let token = c.wait(Waiting {
            conn: id,
            sid,
            version,
            packet_id: pid,
            content,
            feed_at: c.feed_seq.unwrap_or(0),
            unwritten,
            again: is_again,
            stamp_seq,
            routed: false,
            recorded_stamp,
            behind_feed,
            _charge: charge,
        });
        if !recorded_first {
            self.outputs.push_back(Output::ClusterDurable {
                token,
                subject,
                msg_id,
                payload,
            });
        }
    }

    /// JetStream answered a durable write: the message goes on as any other (routed, then
    /// acknowledged), or is refused (v5 0x80; 3.1.1 has no refusal and is disconnected).
    /// Once durable it is routed even if its connection has gone meanwhile.
    pub(super) fn cluster_durable_done(&mut self, token: u64, seq: Option<u64>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        c.own_high = c.own_high.max(seq.unwrap_or(0));
        let ready = c.answered(token, seq);
        self.finish_durable(ready);
    }

    /// The feed read this node's own message at `seq` (stamp sequence `stamp_seq`) before
    /// JetStream's answer came: routed now, acknowledged when the answer comes.
    fn route_own_on_feed(&mut self, seq: u64, stamp_seq: u64) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(&token) = c.waiting_stamps.get(&stamp_seq) else {
            return;
        };
        let Some(w) = c.waiting.get_mut(&token) else {
            return;
        };
        if w.routed || w.again || w.unwritten.is_some() {
            return;
        }
        w.routed = true;
        // Routed in the stream's order: a moved session's later ones need wait no more.
        let sid = w.sid;
        let waits = c.after_feed.holds(sid);
        if let Some(h) = c.owner.held_mut(sid).filter(|_| !waits) {
            h.moved_in = false;
        }
        let Some(w) = c.waiting.get_mut(&token) else {
            return;
        };
        // Only its QoS is needed when the answer comes.
        let rest = Content {
            topic: String::new(),
            payload: Bytes::new(),
            qos: w.content.qos,
            retain: false,
            properties: Default::default(),
        };
        let (sid, content) = (w.sid, std::mem::replace(&mut w.content, rest));
        c.routing_seq = seq;
        self.accept_publish(sid, content);
        if let Some(c) = self.cluster.as_deref_mut() {
            c.routing_seq = 0;
        }
    }

    /// Whether write `w`, stored at `seq`, waits for the feed before it is routed
    /// here: the session moved here, and the feed has not read past what its last node wrote
    /// (at most [`MAX_ROUTED_AFTER_FEED`] wait; past it they go at once).
    fn routes_after_feed(&self, w: &Waiting, seq: Option<u64>) -> bool {
        let Some(c) = self.cluster.as_deref() else {
            return false;
        };
        // Also behind an earlier one of the session still waiting (it may have ended here).
        c.feed_seq < seq
            && c.after_feed.len() < MAX_ROUTED_AFTER_FEED
            && (w.behind_feed
                || c.owner.held(w.sid).is_some_and(|h| h.moved_in)
                || c.after_feed.holds(w.sid))
    }

    /// The feed read up to its place: moved sessions' messages up to there are routed, in
    /// the stream's order. Once a session's have all been, what its last node wrote is
    /// behind, and its next ones are routed when JetStream has them.
    pub(super) fn route_after_feed(&mut self) {
        loop {
            let Some(c) = self.cluster.as_deref_mut() else {
                return;
            };
            let feed = c.feed_seq.unwrap_or(0);
            let Some((seq, after)) = c.after_feed.pop_upto(feed) else {
                return;
            };
            // Its later messages may go straight on once none of its waits any more.
            let waits = c.after_feed.holds(after.sid);
            if let Some(h) = c.owner.held_mut(after.sid).filter(|_| !waits) {
                h.moved_in = false;
            }
            c.routing_seq = seq;
            self.accept_publish(after.sid, after.content);
            if let Some(c) = self.cluster.as_deref_mut() {
                c.routing_seq = 0;
            }
        }
    }

    /// Durable writes answered, in their connection's order: each routed and acknowledged,
    /// or refused; a write again of a resumed QoS 2 id is only acknowledged (or, unanswered,
    /// its connection closed: the client sends it again later).
    pub(super) fn finish_durable(&mut self, ready: Vec<(Box<Waiting>, Option<u64>)>) {
        let Some(conn) = ready.first().map(|(w, _)| w.conn) else {
            return;
        };
        for (w, seq) in ready {
            // Read by the feed already: stored, whatever the answer says.
            let ok = seq.is_some() || w.routed;
            let w = *w;
            let qos = w.content.qos;
            let sender = Sender {
                conn: w.conn,
                sid: w.sid,
                version: w.version,
                packet_id: w.packet_id,
            };
            if let Some(c) = self.cluster.as_deref_mut() {
                if ok {
                    c.counters.durable += 1;
                } else {
                    c.counters.durable_failed += 1;
                }
            }
            if ok && let Some(stamp) = &w.recorded_stamp {
                self.qos2_inbound_confirmed(w.sid, w.packet_id, stamp);
            }
            if w.again {
                if ok {
                    self.finish_publish(sender, qos, reason::SUCCESS, None);
                } else {
                    let why = "the cluster could not confirm a QoS 2 message sent again";
                    self.drop_conn(w.conn, CloseReason::error(reason::UNSPECIFIED_ERROR, why));
                }
            } else if ok && w.routed {
                // The feed read it first and it was routed then.
                self.finish_publish(sender, qos, reason::SUCCESS, None);
            } else if ok && self.routes_after_feed(&w, seq) {
                // A moved session's message: acknowledged now, routed behind what its last
                // node wrote.
                let seq = seq.unwrap_or(0);
                let ledger = self.memory.ledger.clone();
                let bytes = MESSAGE_BYTES + w.content.payload.len() + w.content.topic.len();
                let (sid, content) = (w.sid, w.content);
                self.finish_publish(sender, qos, reason::SUCCESS, None);
                if let Some(c) = self.cluster.as_deref_mut() {
                    let after = AfterFeed {
                        sid,
                        content,
                        _charge: ledger.charge(bytes),
                    };
                    c.after_feed.insert(seq, after);
                }
            } else if ok {
                if let Some(c) = self.cluster.as_deref_mut() {
                    c.routing_seq = seq.unwrap_or(0);
                }
                self.finish_publish(sender, qos, reason::SUCCESS, Some(w.content));
                if let Some(c) = self.cluster.as_deref_mut() {
                    c.routing_seq = 0;
                }
            } else if w.version.is_v5() {
                // The client ends this flow: its id must not stay in the record.
                if qos == QoS::ExactlyOnce {
                    self.qos2_forget_inbound(w.sid, w.packet_id);
                }
                self.finish_publish(sender, qos, reason::UNSPECIFIED_ERROR, None);
            } else {
                self.drop_conn(
                    w.conn,
                    CloseReason::error(
                        reason::UNSPECIFIED_ERROR,
                        "the cluster could not keep the message (no JetStream quorum)",
                    ),
                );
            }
        }
        // What the client sent meanwhile.
        self.receive(conn, &[]);
    }
}
