//! Cluster mode: one owner per client id (state and wire formats in `cluster/owner.rs`). A
//! session opened here with a client's own id is claimed in the sessions bucket; a claim that
//! replaces another node's kicks the session there, and a kick from another node ends the
//! session here as a takeover does on one node.

use bytes::Bytes;

use super::Broker;
use crate::admin::code;
use crate::admin::v4::V4Reply;
use crate::api::Output;
use crate::cluster::owner::{self, Asker, KickBy, Lookup};
use crate::cluster::subject;
use crate::codec::reason;
use crate::conn::CloseReason;
use crate::ids::SessionId;

impl Broker {
    /// Whether a client id can be claimed in the cluster (its key fits `max_subject_len`).
    pub(super) fn cluster_names(&self, client_id: &str) -> bool {
        self.cluster
            .as_deref()
            .is_none_or(|c| subject::name_key(client_id, c.max_subject_len()).is_ok())
    }

    /// The claim session `sid` holds here, if any.
    pub(super) fn held_mut(&mut self, sid: SessionId) -> Option<&mut crate::cluster::owner::Held> {
        self.cluster.as_deref_mut()?.owner.held_mut(sid)
    }

    /// Claims the client id of session `sid`, unless it holds or asks for a claim already.
    /// A session opened by a CONNECT that waited for its claim takes that one.
    pub(super) fn cluster_claim(&mut self, sid: SessionId) {
        let ledger = self.memory.ledger.clone();
        let feed = self.cluster.as_deref().and_then(|c| c.feed_seq);
        let (Some(c), Some(session)) = (self.cluster.as_deref_mut(), self.sessions.get(&sid))
        else {
            return;
        };
        let keeps_record = session.expiry_secs > 0;
        if let Some(grant) = session.conn.and_then(|conn| c.owner.take_grant(conn)) {
            let claim = (grant.key, grant.line, grant.revision);
            let held = c.owner.hold(sid, claim, keeps_record, &ledger);
            // A new session was owed nothing before now; one resumed from a record has the
            // record's cursor, one resumed here keeps its own.
            held.cursor = match grant.resumed_cursor {
                Some(cursor) => cursor,
                None => held.cursor.or(feed),
            };
            if grant.resumed_cursor.is_some() {
                held.qos2.resume(grant.resumed_qos2);
                held.moved_in = true;
            }
            self.write_record(sid);
            return;
        }
        if c.owner.claimed(Asker::Session(sid)) {
            return;
        }
        let Ok(key) = subject::name_key(&session.client_id, c.max_subject_len()) else {
            return;
        };
        let token = c
            .owner
            .ask(Asker::Session(sid), &key, &session.client_id, &ledger);
        let value = owner::claim_value(&c.config.node_name, c.epoch, token);
        self.outputs.push_back(Output::ClusterClaim {
            token,
            key,
            value,
            keep_record: false,
        });
        self.subscribe_kicks();
    }

    /// The bucket's answer to a claim. The claim a session that has gone meanwhile made is
    /// deleted again; one that replaced another node's claim kicks that node's session.
    pub(super) fn cluster_claimed(
        &mut self,
        token: u64,
        revision: Option<u64>,
        previous: Option<(Bytes, u64)>,
    ) {
        let ledger = self.memory.ledger.clone();
        let feed = self.cluster.as_deref().and_then(|c| c.feed_seq);
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some((asker, key, client_id)) = c.owner.answered(token) else {
            return;
        };
        if revision.is_some() {
            c.owner.counters.claims += 1;
        } else {
            c.owner.counters.claims_failed += 1;
        }
        // The client connected here after the session there: that one goes, even if this
        // one has ended meanwhile. This node's own earlier claims were settled here when
        // their sessions ended.
        if revision.is_some()
            && let Some((value, replaced)) = &previous
            && let Some((node, _)) = owner::parse_claim(value)
            && node != c.config.node_name
        {
            self.outputs.push_back(Output::ClusterPublish {
                subject: owner::kick_subject(&c.config.subject_prefix, node),
                payload: owner::kick_payload(*replaced, &key, KickBy::Takeover),
                droppable: false,
            });
        }
        let line = owner::claim_value(&c.config.node_name, c.epoch, token);
        let sid = match asker {
            Asker::Connect(conn) => {
                let previous = previous.as_ref().map(|(value, _)| value);
                let claim = revision.map(|r| (key, line, r));
                return self.cluster_connect_claimed(conn, &client_id, claim, previous);
            }
            Asker::Session(sid) => sid,
        };
        let Some(revision) = revision else {
            return;
        };
        match self.sessions.get(&sid) {
            Some(s) => {
                let keeps_record = s.expiry_secs > 0;
                let held = c
                    .owner
                    .hold(sid, (key, line, revision), keeps_record, &ledger);
                held.cursor = held.cursor.or(feed);
                // Writing it arms the records' tick.
                self.write_record(sid);
            }
            None => self
                .outputs
                .push_back(Output::ClusterRelease { key, revision }),
        }
    }

    /// A kick for the session whose claim here was written at the revision named: another
    /// node claimed its client id (the session ends, its connection told as in a takeover, v5
    /// 0x8E), or another node's admin API kicked it (v5 0x98, the session kept if asked).
    pub(super) fn cluster_kick(&mut self, payload: &[u8]) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some((revision, key, by)) = owner::parse_kick(payload) else {
            c.counters.malformed += 1;
            return;
        };
        let Some(sid) = c.owner.session_at(key, revision) else {
            return;
        };
        let (why, detail, end) = match by {
            KickBy::Takeover => {
                // The claim is the other node's now: nothing of it to give back.
                c.owner.lose(sid);
                c.owner.counters.taken_over += 1;
                let detail = "session taken over on another node";
                (reason::SESSION_TAKEN_OVER, detail, true)
            }
            KickBy::Admin { keep_session } => {
                let detail = "kicked through the admin API of another node";
                (reason::ADMINISTRATIVE_ACTION, detail, !keep_session)
            }
        };
        if let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn) {
            self.drop_conn(conn, CloseReason::error(why, detail));
        }
        if end {
            self.end_session(sid);
        }
    }

    /// An admin kick of a client id with no session here: in a cluster the sessions bucket
    /// says which node holds it. `None` when the answer comes later (`req_id`).
    pub(super) fn cluster_kick_elsewhere(
        &mut self,
        req_id: u64,
        client_id: &str,
        keep_session: bool,
    ) -> Option<V4Reply> {
        let Some(c) = self.cluster.as_deref_mut() else {
            return Some(V4Reply::code(404, code::CLIENT_OFFLINE));
        };
        let Ok(key) = subject::name_key(client_id, c.max_subject_len()) else {
            return Some(V4Reply::code(404, code::CLIENT_OFFLINE));
        };
        let token = c.owner.look_up(Lookup {
            req_id,
            key: key.clone(),
            keep_session,
        });
        self.outputs.push_back(Output::ClusterLookup { token, key });
        None
    }

    /// The bucket's answer for an admin kick: the node holding the client id is told (the
    /// kick names the claim's revision, so a client that moved on meanwhile is left alone).
    pub(super) fn cluster_looked_up(
        &mut self,
        token: u64,
        entry: Result<Option<(Bytes, u64)>, String>,
    ) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(lookup) = c.owner.looked_up(token) else {
            return;
        };
        let entry = match entry {
            Ok(entry) => entry,
            // The runtime logged why; v4 errors carry a code only.
            Err(_) => return self.v4_reply(lookup.req_id, V4Reply::code(503, code::UNKNOWN)),
        };
        let holder = entry.as_ref().and_then(|(value, revision)| {
            let (node, _) = owner::parse_claim(value)?;
            (node != c.config.node_name).then(|| (node.to_owned(), *revision))
        });
        let reply = match holder {
            Some((node, revision)) => {
                let by = KickBy::Admin {
                    keep_session: lookup.keep_session,
                };
                self.outputs.push_back(Output::ClusterPublish {
                    subject: owner::kick_subject(&c.config.subject_prefix, &node),
                    payload: owner::kick_payload(revision, &lookup.key, by),
                    droppable: false,
                });
                V4Reply::ok()
            }
            None => V4Reply::code(404, code::CLIENT_OFFLINE),
        };
        self.v4_reply(lookup.req_id, reply);
    }

    /// Session `sid` ended here: its claim (and record) is deleted if still its own.
    pub(super) fn cluster_release(&mut self, sid: SessionId) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let held = c.deferred.remove(&sid).map_or(0, |d| d.items.len());
        // A QoS 2 PUBLISH whose record never came is not written: its client was never told.
        let conns = c.abandon_unwritten(sid);
        if let Some((key, revision)) = c.owner.let_go(sid) {
            self.outputs
                .push_back(Output::ClusterRelease { key, revision });
        }
        // What waited behind a catch-up read goes with the session.
        if held > 0 {
            self.count_dropped(crate::metrics::DropReason::SessionEnded, held as u64);
        }
        for conn in conns {
            let ready = self
                .cluster
                .as_deref_mut()
                .map(|c| c.ready(conn))
                .unwrap_or_default();
            self.finish_durable(ready);
        }
    }
}
