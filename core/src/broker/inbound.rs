//! PUBLISH from a client: topic aliases, checks, inbound QoS 2 (PUBREC, then PUBREL and
//! PUBCOMP; a resend of an id not yet released is acknowledged, never delivered twice), and
//! handing the message to routing.

use super::Broker;
use crate::acl::{Action, Decision};
use crate::api::ConnId;
use crate::codec::{Ack, Packet, ProtocolVersion, Publish, QoS, reason};
use crate::conn::CloseReason;
use crate::ids::SessionId;
use crate::message::{Content, Origin};
use crate::metrics::DropReason;
use crate::sys;
use crate::topic::{self, TopicError};

/// Who sent a PUBLISH: where its PUBACK or PUBREC goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sender {
    pub conn: ConnId,
    pub sid: SessionId,
    pub version: ProtocolVersion,
    pub packet_id: u16,
}

impl Broker {
    /// A client's message not taken: counted as dropped, reported once per input.
    fn drop_incoming(&mut self, sid: SessionId, reason: DropReason) {
        self.count_dropped(reason, 1);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.messages_dropped += 1;
            let client_id = s.client_id.clone();
            self.count_drops(&client_id, super::deliver::drop_text(reason), 1);
        }
    }

    pub(super) fn handle_publish(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        p: Publish,
    ) {
        let v5 = version.is_v5();
        let mut p = p;
        if !p.properties.subscription_identifiers.is_empty() {
            return self.drop_conn(
                id,
                CloseReason::error(
                    reason::PROTOCOL_ERROR,
                    "subscription identifier in a client PUBLISH",
                ),
            );
        }
        // [MQTT-3.3.2-14]: the Response Topic is a topic name, never a filter.
        if p.properties
            .response_topic
            .as_deref()
            .is_some_and(|t| t.contains(['+', '#']))
        {
            return self.drop_conn(
                id,
                CloseReason::error(reason::PROTOCOL_ERROR, "wildcard in the Response Topic"),
            );
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let receive_maximum = conn.receive_maximum;
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > conn.topic_alias_max {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::TOPIC_ALIAS_INVALID, "topic alias out of range"),
                );
            }
            if p.topic.is_empty() {
                match conn.topic_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return self.drop_conn(
                            id,
                            CloseReason::error(reason::PROTOCOL_ERROR, "unknown topic alias"),
                        );
                    }
                }
            } else {
                let old = conn.topic_aliases.insert(alias, p.topic.clone());
                conn.alias_bytes =
                    (conn.alias_bytes + p.topic.len()).saturating_sub(old.map_or(0, |t| t.len()));
                conn.recount();
            }
        }
        match topic::validate_topic_name(&p.topic, self.config.max_topic_levels as usize) {
            Ok(()) => {}
            Err(TopicError::Empty) => {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::PROTOCOL_ERROR, "empty topic name"),
                );
            }
            Err(_) => {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::TOPIC_NAME_INVALID, "invalid topic name"),
                );
            }
        }
        if !self.cluster_carries(&p.topic) {
            return self.drop_conn(
                id,
                CloseReason::error(
                    reason::TOPIC_NAME_INVALID,
                    "topic too long for the cluster (cluster.max_subject_len)",
                ),
            );
        }
        let pid = p.packet_id.unwrap_or(0);
        // In a cluster, an id whose stream write this node has not seen answered (the session
        // came with it from another node, or its first write is still on its way) is written
        // again under the same dedup id, once the PUBLISH passes every check below.
        let mut again = None;
        if p.qos == QoS::ExactlyOnce {
            let pending = match self.cluster {
                Some(_) => self.qos2_inbound_unconfirmed(sid, pid),
                None => None,
            };
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            if let Some(stamp) = pending {
                session.qos2_in.seen_again(pid);
                again = Some(stamp);
            } else if session.qos2_in.contains(pid) {
                // A resend of a message already accepted: acknowledge, never deliver twice.
                session.qos2_in.seen_again(pid);
                return self.send(id, version, &Packet::PubRec(Ack::new(pid, reason::SUCCESS)));
            }
            // Ids left unreleased by an earlier connection do not count (v5 §4.9).
            if again.is_none() && session.qos2_in.this_connection() >= usize::from(receive_maximum)
            {
                return self.drop_conn(
                    id,
                    CloseReason::error(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "too many unreleased QoS 2 messages",
                    ),
                );
            }
        }
        let acl_denied = self.acl_check(id, sid, Action::Publish, &p.topic) == Decision::Deny;
        if acl_denied && self.acl_disconnects() {
            return self.drop_conn(
                id,
                CloseReason::error(reason::NOT_AUTHORIZED, "publish denied by the ACL"),
            );
        }
        // Denied: v5 is told (0x87), 3.1.1 has no way to be told and is acknowledged.
        let denied = acl_denied || sys::is_reserved(&p.topic);
        let qos = p.qos;
        // A retained message is kept for good: past the memory budget's high mark none is
        // taken (routing alone holds nothing: its deliveries are dropped one by one).
        if !denied
            && p.retain
            && !p.payload.is_empty()
            && self.memory.under_pressure(self.config.max_memory)
        {
            if qos == QoS::AtMostOnce {
                return self.drop_incoming(sid, DropReason::MemoryBudget);
            }
            if !v5 {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::QUOTA_EXCEEDED, "memory budget: retained message"),
                );
            }
            if qos == QoS::AtLeastOnce {
                return self.send(
                    id,
                    version,
                    &Packet::PubAck(Ack::new(pid, reason::QUOTA_EXCEEDED)),
                );
            }
            return self.send(
                id,
                version,
                &Packet::PubRec(Ack::new(pid, reason::QUOTA_EXCEEDED)),
            );
        }
        // With the store gone or at its disk cap, a message that would need it is not
        // accepted at all.
        let refused = !denied && self.store.refuses_new() && self.needs_store(sid, &p);
        if refused && (!v5 || qos == QoS::AtMostOnce) {
            let why = if self.store.full() {
                "the store is at persistence.max_disk"
            } else {
                "the store failed"
            };
            return self.drop_conn(id, CloseReason::error(reason::QUOTA_EXCEEDED, why));
        }
        let code = if refused {
            reason::QUOTA_EXCEEDED
        } else if denied && v5 {
            reason::NOT_AUTHORIZED
        } else {
            reason::SUCCESS
        };
        let accepted = (!denied && !refused).then(|| Content::from_publish(p));
        match accepted {
            // In a cluster a QoS 1/2 message is in JetStream before anything else happens.
            Some(content) if qos != QoS::AtMostOnce && self.cluster.is_some() => {
                let sender = Sender {
                    conn: id,
                    sid,
                    version,
                    packet_id: pid,
                };
                self.cluster_write_durable(sender, content, again);
            }
            accepted => {
                let sender = Sender {
                    conn: id,
                    sid,
                    version,
                    packet_id: pid,
                };
                // Refused now: the id the session kept for it is let go with the flow.
                if again.is_some() && code != reason::SUCCESS {
                    self.qos2_forget_inbound(sid, pid);
                }
                self.finish_publish(sender, qos, code, accepted);
            }
        }
    }

    /// The end of a PUBLISH once it is accepted (`content`) or not: its QoS 2 id, routing,
    /// and the PUBACK or PUBREC with `code`.
    pub(super) fn finish_publish(
        &mut self,
        sender: Sender,
        qos: QoS,
        code: crate::codec::ReasonCode,
        content: Option<Content>,
    ) {
        let Sender {
            conn: id,
            sid,
            version,
            packet_id: pid,
        } = sender;
        // The QoS 2 id is recorded before the message is routed, so that the message knows
        // every record its acceptance depends on (see `Durability::set_needs`).
        if qos == QoS::ExactlyOnce
            && code == reason::SUCCESS
            && let Some(session) = self.sessions.get_mut(&sid)
        {
            session.qos2_in.accept(pid);
            self.store.in_qos2(session, pid, true);
        }
        if let Some(content) = content {
            self.accept_publish(sid, content);
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(id, version, &Packet::PubAck(Ack::new(pid, code))),
            QoS::ExactlyOnce => self.send(id, version, &Packet::PubRec(Ack::new(pid, code))),
        }
    }

    /// PUBREL: the inbound QoS 2 id is released; PUBCOMP answers (v5: 0x92 for an unknown id).
    pub(super) fn handle_pubrel(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        pid: u16,
    ) {
        // In a cluster a persistent session's record must lose the id first (`cluster_qos2.rs`).
        if self.cluster.is_some()
            && self
                .sessions
                .get(&sid)
                .is_some_and(|s| s.qos2_in.contains(pid))
            && self.qos2_owe_pubcomp(sid, pid)
        {
            return;
        }
        if let Some(session) = self.sessions.get_mut(&sid)
            && session.qos2_in.release(pid)
        {
            self.store.in_qos2(session, pid, false);
            return self.send(
                id,
                version,
                &Packet::PubComp(Ack::new(pid, reason::SUCCESS)),
            );
        }
        let code = if version.is_v5() {
            reason::PACKET_ID_NOT_FOUND
        } else {
            reason::SUCCESS
        };
        self.send(id, version, &Packet::PubComp(Ack::new(pid, code)));
    }

    /// Stores (if retained) and routes a message published by a client.
    pub(super) fn accept_publish(&mut self, sid: SessionId, mut content: Content) {
        if self.is_own_origin(&content.properties) {
            // Our own message, back through a loop of bridges: it was delivered here already.
            return;
        }
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.messages_received += 1;
        }
        let expires_at = content.take_expiry(self.now);
        self.publish(content, Origin::Session(sid), expires_at);
    }

    /// Whether accepting this client PUBLISH would give the store something to keep: a
    /// retained value, a QoS 1/2 delivery to a durable session, or a bridge outbox entry.
    fn needs_store(&self, publisher: SessionId, p: &Publish) -> bool {
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
