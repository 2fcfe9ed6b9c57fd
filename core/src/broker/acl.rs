//! The ACL on client PUBLISH, SUBSCRIBE and wills, and the stored subscriptions an ACL change
//! (or a reconnection that tells who the client is) now denies. Bridges, the broker's own
//! `$SYS` messages, the admin API and superusers are not subject to it.

use std::collections::{BTreeMap, BTreeSet};

use super::Broker;
use crate::acl::{Action, Decision, DenyAction, Reason, Who};
use crate::api::{ConnId, Output};
use crate::codec::Packet;
use crate::conn::AclWait;
use crate::ids::SessionId;
use crate::ip::IpAddress;

/// The address of an `ip:port` or `[v6]:port` peer.
fn peer_ip(peer: &str) -> Option<IpAddress> {
    let host = match peer.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map(|(h, _)| h)?,
        None => peer.rsplit_once(':').map_or(peer, |(h, _)| h),
    };
    IpAddress::parse(host)
}

impl Broker {
    /// May client connection `id` (client id and user name given) do `action` on `topic`?
    /// Counted.
    pub(super) fn acl_decide(
        &mut self,
        id: ConnId,
        client_id: &str,
        username: Option<&str>,
        action: Action,
        topic: &str,
    ) -> Decision {
        if !self.config.acl.enable {
            return Decision::Allow;
        }
        let Some(conn) = self.conns.get(&id) else {
            return Decision::Deny;
        };
        if conn.superuser {
            return Decision::Allow;
        }
        let who = Who {
            client_id,
            username,
            ip: peer_ip(&conn.peer),
        };
        let decision = self.config.acl.rules.check(&who, action, topic);
        match decision {
            Decision::Allow => self.stats.acl_allowed += 1,
            Decision::Deny => self.stats.acl_denied += 1,
        }
        decision
    }

    /// [`Self::acl_decide`] for a connected session; an answer of the ACL service for the
    /// packet being replayed comes first.
    pub(super) fn acl_check(
        &mut self,
        id: ConnId,
        sid: SessionId,
        action: Action,
        topic: &str,
    ) -> Decision {
        // Looked up only while replaying: no copy of the topic per message otherwise.
        if let Some(&decision) = (!self.acl_answers.is_empty())
            .then(|| self.acl_answers.get(&(action, topic.to_owned())))
            .flatten()
        {
            match decision {
                Decision::Allow => self.stats.acl_allowed += 1,
                Decision::Deny => self.stats.acl_denied += 1,
            }
            return decision;
        }
        if !self.config.acl.enable {
            return Decision::Allow;
        }
        // Taken out for the call and put back: no copy of the names per message.
        let Some(session) = self.sessions.get_mut(&sid) else {
            return Decision::Deny;
        };
        let client_id = std::mem::take(&mut session.client_id);
        let username = session.username.take();
        let decision = self.acl_decide(id, &client_id, username.as_deref(), action, topic);
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.client_id = client_id;
            session.username = username;
        }
        decision
    }

    /// Holds a PUBLISH or SUBSCRIBE whose topics no ACL rule decides while the ACL service is
    /// asked about them (`auth.http_auth.acl_req`); the packet back when nothing needs asking.
    pub(super) fn acl_hold(
        &mut self,
        id: ConnId,
        sid: SessionId,
        packet: Packet,
    ) -> Option<Packet> {
        if !self.config.auth.http_auth.asks_acl() {
            return Some(packet);
        }
        let Some(conn) = self.conns.get(&id) else {
            return Some(packet);
        };
        if conn.superuser {
            return Some(packet);
        }
        let topics: Vec<(Action, String)> = match &packet {
            Packet::Publish(p) if p.topic.is_empty() => {
                let alias = p.properties.topic_alias.unwrap_or(0);
                match conn.topic_aliases.get(&alias) {
                    Some(t) => vec![(Action::Publish, t.clone())],
                    None => return Some(packet),
                }
            }
            Packet::Publish(p) => vec![(Action::Publish, p.topic.clone())],
            Packet::Subscribe(s) => s
                .filters
                .iter()
                .map(|(f, _)| (Action::Subscribe, f.clone()))
                .collect(),
            _ => return Some(packet),
        };
        let Some(session) = self.sessions.get(&sid) else {
            return Some(packet);
        };
        let who = Who {
            client_id: &session.client_id,
            username: conn.username.as_deref(),
            ip: peer_ip(&conn.peer),
        };
        let pending: BTreeSet<(Action, String)> = topics
            .into_iter()
            .filter(|key| {
                !self.acl_answers.contains_key(key)
                    && (!self.config.acl.enable
                        || self.config.acl.rules.explain(&who, key.0, &key.1).1 == Reason::NoMatch)
            })
            .collect();
        if pending.is_empty() {
            return Some(packet);
        }
        let (client_id, username, peer) = (
            session.client_id.clone(),
            conn.username.clone(),
            conn.peer.clone(),
        );
        for (action, topic) in &pending {
            self.outputs.push_back(Output::Authorize {
                conn: id,
                client_id: client_id.clone(),
                username: username.clone(),
                peer: peer.clone(),
                action: *action,
                topic: topic.clone(),
            });
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.acl_wait = Some(Box::new(AclWait {
                packet,
                pending,
                decided: BTreeMap::new(),
            }));
        }
        None
    }

    /// An answer of the ACL service: once the held packet has all of its answers, it is
    /// processed with them, then what the client sent meanwhile.
    pub(super) fn acl_result(&mut self, id: ConnId, action: Action, topic: String, allow: bool) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(wait) = conn.acl_wait.as_mut() else {
            return;
        };
        let key = (action, topic);
        if !wait.pending.remove(&key) {
            return;
        }
        let decision = if allow {
            Decision::Allow
        } else {
            Decision::Deny
        };
        wait.decided.insert(key, decision);
        if !wait.pending.is_empty() {
            return;
        }
        let Some(wait) = conn.acl_wait.take() else {
            return;
        };
        self.acl_answers = wait.decided;
        self.handle_packet(id, wait.packet);
        self.acl_answers.clear();
        self.receive(id, &[]);
    }

    /// A denied PUBLISH or SUBSCRIBE closes the connection (`deny_action = disconnect`).
    pub(super) fn acl_disconnects(&self) -> bool {
        self.config.acl.deny_action == DenyAction::Disconnect
    }

    /// Every session's subscriptions checked again after an ACL change; what is denied now is
    /// removed, from the store too.
    pub(super) fn revoke_denied_subscriptions(&mut self) {
        let sids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for sid in sids {
            self.revoke_for(sid);
        }
    }

    /// One session's subscriptions against the ACL. A session without its connection is
    /// checked with the user name it last connected with and no address (after a restart the
    /// user name is unknown until it reconnects, when this runs again).
    pub(super) fn revoke_for(&mut self, sid: SessionId) {
        if !self.config.acl.enable {
            return;
        }
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        let conn = session.conn.and_then(|c| self.conns.get(&c));
        if conn.is_some_and(|c| c.superuser) {
            return;
        }
        let who = Who {
            client_id: &session.client_id,
            username: session.username.as_deref(),
            ip: conn.and_then(|c| peer_ip(&c.peer)),
        };
        let denied: Vec<String> = session
            .subscriptions
            .keys()
            .filter(|f| self.config.acl.rules.check(&who, Action::Subscribe, f) == Decision::Deny)
            .cloned()
            .collect();
        for filter in denied {
            self.remove_subscription(sid, &filter);
            self.stats.acl_revoked += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::peer_ip;

    #[test]
    fn peer_addresses_of_both_families() {
        assert_eq!(
            peer_ip("10.0.0.1:1883"),
            crate::ip::IpAddress::parse("10.0.0.1")
        );
        assert_eq!(peer_ip("[::1]:1883"), crate::ip::IpAddress::parse("::1"));
        assert_eq!(peer_ip("sim-7"), None);
        assert_eq!(peer_ip("[::1"), None);
    }
}
