//! SUBSCRIBE and UNSUBSCRIBE: the session's subscriptions, the shared trie, SUBACK and
//! UNSUBACK, and the retained messages a new subscription receives.

use super::Broker;
use crate::api::ConnId;
use crate::codec::{
    Packet, Properties, ProtocolVersion, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
    reason,
};
use crate::conn::CloseReason;
use crate::durable::options_byte;
use crate::ids::SessionId;
use crate::persist::Record;
use crate::session::{Delivery, Subscription};
use crate::topic;

impl Broker {
    pub(super) fn handle_subscribe(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        s: Subscribe,
    ) {
        let v5 = version.is_v5();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let max_levels = self.config.max_topic_levels as usize;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained_for: Vec<(String, Subscription)> = Vec::new();
        for (raw, options) in &s.filters {
            let parsed = match topic::parse_subscription(raw, max_levels) {
                Ok(p) => p,
                Err(_) => {
                    reasons.push(if v5 {
                        reason::TOPIC_FILTER_INVALID
                    } else {
                        reason::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if parsed.share_group.is_some() && options.no_local {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::PROTOCOL_ERROR, "no local on a shared subscription"),
                );
            }
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            let existed = session.subscriptions.contains_key(raw);
            if session.durable && self.store.failed() {
                reasons.push(if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::UNSPECIFIED_ERROR
                });
                continue;
            }
            if !existed && session.subscriptions.len() >= self.config.max_subscriptions as usize {
                reasons.push(if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::UNSPECIFIED_ERROR
                });
                continue;
            }
            let sub = Subscription {
                options: *options,
                id: sub_id,
            };
            session.subscriptions.insert(raw.clone(), sub);
            let durable = session.durable.then(|| session.client_id.clone());
            self.subscriptions
                .insert(parsed.filter, parsed.share_group, sid, sub);
            if let Some(client_id) = durable {
                let record = Record::SubPut {
                    client_id,
                    filter: raw.clone(),
                    options: options_byte(options),
                    subscription_id: sub_id,
                };
                self.store.persist(record, true);
            }
            reasons.push(ReasonCode(options.qos as u8));
            let wants_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if parsed.share_group.is_none() && wants_retained {
                retained_for.push((parsed.filter.to_owned(), sub));
            }
        }
        self.send(
            id,
            version,
            &Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
        for (filter, sub) in retained_for {
            self.send_retained(sid, &filter, sub);
        }
    }

    /// The retained messages under `filter`, to a subscription just made.
    fn send_retained(&mut self, sid: SessionId, filter: &str, sub: Subscription) {
        let (expired, msgs): (Vec<_>, Vec<_>) = self
            .retained
            .matching(filter)
            .into_iter()
            .map(|(t, m)| (t, m.clone()))
            .partition(|(_, m)| m.expired(self.now));
        // Expired retained messages are never delivered again: forget them.
        for (topic, _) in expired {
            self.retained.remove(&topic);
            self.store.persist(Record::RetainDel { topic }, false);
        }
        for (_, msg) in msgs {
            let delivery = Delivery {
                qos: sub.options.qos.min(msg.qos),
                retain: true,
                subscription_ids: sub.id.into_iter().collect(),
                msg,
                entry: 0,
            };
            self.deliver(sid, delivery);
        }
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        u: Unsubscribe,
    ) {
        // A stored session's subscriptions cannot change once the store has failed: the
        // change would come back after a restart. v5 is told so; 3.1.1 has no way to say it.
        let durable = self.sessions.get(&sid).is_some_and(|s| s.durable);
        if durable && self.store.refuses() {
            if !version.is_v5() {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::QUOTA_EXCEEDED, "the store failed"),
                );
            }
            let reasons = vec![reason::UNSPECIFIED_ERROR; u.filters.len()];
            return self.send(
                id,
                version,
                &Packet::UnsubAck(UnsubAck {
                    packet_id: u.packet_id,
                    properties: Properties::default(),
                    reasons,
                }),
            );
        }
        let mut reasons = Vec::new();
        for raw in &u.filters {
            let removed = self
                .sessions
                .get_mut(&sid)
                .is_some_and(|s| s.subscriptions.remove(raw).is_some());
            let code = match topic::parse_subscription(raw, usize::MAX) {
                Ok(parsed) => {
                    if removed {
                        self.subscriptions
                            .remove(parsed.filter, parsed.share_group, &sid);
                        if let Some(client_id) = self
                            .sessions
                            .get(&sid)
                            .filter(|s| s.durable)
                            .map(|s| s.client_id.clone())
                        {
                            let filter = raw.clone();
                            self.store
                                .persist(Record::SubDel { client_id, filter }, true);
                        }
                        reason::SUCCESS
                    } else {
                        reason::NO_SUBSCRIPTION_EXISTED
                    }
                }
                Err(_) => reason::TOPIC_FILTER_INVALID,
            };
            reasons.push(code);
        }
        if !version.is_v5() {
            reasons.clear();
        }
        self.send(
            id,
            version,
            &Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
    }
}
