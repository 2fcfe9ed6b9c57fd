//! SUBSCRIBE and UNSUBSCRIBE: the session's subscriptions, the shared trie, SUBACK and
//! UNSUBACK, and the retained messages a new subscription receives.

use std::collections::BTreeMap;

use super::Broker;
use crate::acl::{Action, Decision};
use crate::api::ConnId;
use crate::codec::{
    Packet, Properties, ProtocolVersion, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
    UnsubAck, Unsubscribe, reason,
};
use crate::conn::CloseReason;
use crate::durable::options_byte;
use crate::ids::SessionId;
use crate::persist::Record;
use crate::session::Subscription;
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
        // Identical filters in one SUBSCRIBE are merged: only the last copy is subscribed (its
        // options are what processing every copy in order would leave), so the work, the
        // records and the retained messages sent are per distinct filter; every copy is
        // answered with the merged subscription's code.
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, (raw, _)) in s.filters.iter().enumerate() {
            last.insert(raw.as_str(), i);
        }
        let mut codes: BTreeMap<&str, ReasonCode> = BTreeMap::new();
        let mut retained_for: Vec<(String, Subscription)> = Vec::new();
        let max_levels = self.config.max_topic_levels as usize;
        for (i, (raw, options)) in s.filters.iter().enumerate() {
            let outcome = if last.get(raw.as_str()) == Some(&i) {
                if self.acl_check(id, sid, Action::Subscribe, raw) == Decision::Deny {
                    if self.acl_disconnects() {
                        return self.drop_conn(
                            id,
                            CloseReason::error(
                                reason::NOT_AUTHORIZED,
                                "subscription denied by the ACL",
                            ),
                        );
                    }
                    Added::Refused(if v5 {
                        reason::NOT_AUTHORIZED
                    } else {
                        reason::UNSPECIFIED_ERROR
                    })
                } else {
                    self.add_subscription(sid, raw, *options, sub_id, v5)
                }
            } else if options.no_local
                && topic::parse_subscription(raw, max_levels).is_ok_and(|p| p.share_group.is_some())
            {
                Added::SharedNoLocal
            } else {
                continue;
            };
            match outcome {
                Added::Granted(code, retained) => {
                    codes.insert(raw.as_str(), code);
                    retained_for.extend(retained);
                }
                Added::Refused(code) => {
                    codes.insert(raw.as_str(), code);
                }
                Added::SharedNoLocal => {
                    return self.drop_conn(
                        id,
                        CloseReason::error(
                            reason::PROTOCOL_ERROR,
                            "no local on a shared subscription",
                        ),
                    );
                }
                Added::NoSession => return,
            }
        }
        let reasons = s
            .filters
            .iter()
            .map(|(raw, _)| {
                codes
                    .get(raw.as_str())
                    .copied()
                    .unwrap_or(reason::UNSPECIFIED_ERROR)
            })
            .collect();
        self.send(
            id,
            version,
            &Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
        if !retained_for.is_empty() {
            for (filter, sub) in retained_for {
                self.start_replay(sid, filter, sub);
            }
            self.pump(sid);
        }
    }

    /// One filter of a SUBSCRIBE (or of the admin API's subscribe on a client's behalf):
    /// the session's subscriptions, the trie, the store. Says what the SUBACK reports and
    /// which subscription gets the retained messages.
    pub(super) fn add_subscription(
        &mut self,
        sid: SessionId,
        raw: &str,
        options: SubscriptionOptions,
        sub_id: Option<u32>,
        v5: bool,
    ) -> Added {
        let max_levels = self.config.max_topic_levels as usize;
        let parsed = match topic::parse_subscription(raw, max_levels) {
            Ok(p) => p,
            Err(_) => {
                return Added::Refused(if v5 {
                    reason::TOPIC_FILTER_INVALID
                } else {
                    reason::UNSPECIFIED_ERROR
                });
            }
        };
        if parsed.share_group.is_some() && options.no_local {
            return Added::SharedNoLocal;
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Added::NoSession;
        };
        let existed = session.subscriptions.contains_key(raw);
        let refused = if v5 {
            reason::QUOTA_EXCEEDED
        } else {
            reason::UNSPECIFIED_ERROR
        };
        // A stored session's subscription needs the store (failed, or at its disk cap).
        if session.durable && (self.store.failed() || self.store.full()) {
            return Added::Refused(refused);
        }
        if !existed
            && (session.subscriptions.len() >= self.config.max_subscriptions as usize
                || self.memory.over_budget(self.config.max_memory))
        {
            return Added::Refused(refused);
        }
        if !existed
            && (self
                .cluster_admits(parsed.filter, parsed.share_group)
                .is_err()
                || !self.cluster_record_fits(sid, raw))
        {
            return Added::Refused(refused);
        }
        let sub = Subscription {
            options,
            id: sub_id,
            cluster_key: 0,
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Added::NoSession;
        };
        session.subscribe(raw.to_owned(), sub);
        let durable = session.durable.then(|| session.client_id.clone());
        self.index_subscription(parsed.filter, parsed.share_group, sid, sub);
        self.cluster_session_changed(sid);
        if let Some(client_id) = durable {
            let record = Record::SubPut {
                client_id,
                filter: raw.to_owned(),
                options: options_byte(&options),
                subscription_id: sub_id,
            };
            self.store.persist(record, true);
        }
        let wants_retained = match options.retain_handling {
            0 => true,
            1 => !existed,
            _ => false,
        };
        let retained = (parsed.share_group.is_none() && wants_retained)
            .then(|| (parsed.filter.to_owned(), sub));
        Added::Granted(ReasonCode(options.qos as u8), retained)
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
            reasons.push(self.remove_subscription(sid, raw));
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

    /// One filter of an UNSUBSCRIBE (or of the admin API's unsubscribe): what the UNSUBACK
    /// reports.
    pub(super) fn remove_subscription(&mut self, sid: SessionId, raw: &str) -> ReasonCode {
        let removed = self
            .sessions
            .get_mut(&sid)
            .is_some_and(|s| s.unsubscribe(raw));
        match topic::parse_subscription(raw, usize::MAX) {
            Ok(parsed) => {
                if removed {
                    self.unindex_subscription(parsed.filter, parsed.share_group, sid);
                    self.cluster_session_changed(sid);
                    if let Some(client_id) = self
                        .sessions
                        .get(&sid)
                        .filter(|s| s.durable)
                        .map(|s| s.client_id.clone())
                    {
                        let filter = raw.to_owned();
                        self.store
                            .persist(Record::SubDel { client_id, filter }, true);
                    }
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            }
            Err(_) => reason::TOPIC_FILTER_INVALID,
        }
    }
}

/// What became of one filter of a SUBSCRIBE.
pub(super) enum Added {
    /// Subscribed: the SUBACK code, and the subscription that gets retained messages.
    Granted(ReasonCode, Option<(String, Subscription)>),
    Refused(ReasonCode),
    /// No Local on a shared subscription: a protocol error.
    SharedNoLocal,
    NoSession,
}
