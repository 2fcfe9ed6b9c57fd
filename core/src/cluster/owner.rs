//! One owner per client id across the cluster. A node claims the client id of each session
//! it opens in the sessions bucket, by compare-and-swap on the revision it read; a claim that
//! replaces another node's tells that node, on its kick subject, to let its session go (v5
//! DISCONNECT 0x8E), as a second connection with the same id does on one node. The bucket
//! orders concurrent claims: the last written wins, and each winner kicks the one it replaced.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::ids::SessionId;
use crate::memory::{Charge, Ledger};

/// The subscription id of a node's kick subject (interest numbers its subscriptions from 1).
pub const KICK_SID: u64 = 0;

/// What one claim on its way or held costs beyond its key.
const CLAIM_BYTES: usize = 96;

/// A claim on its way: the session that asked and its key.
struct Asking {
    sid: SessionId,
    key: String,
    _charge: Charge,
}

/// An admin kick of a client id this node does not hold, waiting for the bucket to say
/// which node does.
pub(crate) struct Lookup {
    pub req_id: u64,
    pub key: String,
    pub keep_session: bool,
}

/// The claims of this node's sessions. At most one entry per session in each map.
#[derive(Default)]
pub(crate) struct Owner {
    next_token: u64,
    asking: BTreeMap<u64, Asking>,
    /// The same, by session (so a connect asks in O(log n) whether one is on its way).
    asking_for: BTreeMap<SessionId, u64>,
    /// Admin kicks waiting for a lookup, by token (bounded by the admin API's requests).
    lookups: BTreeMap<u64, Lookup>,
    /// Claims written, by session: the revision.
    held: BTreeMap<SessionId, (u64, Charge)>,
    /// The same, by revision (a kick names the revision it replaced).
    by_revision: BTreeMap<u64, SessionId>,
    /// The kick subject is subscribed (with the first claim: the runtime's link exists then).
    pub kick_subscribed: bool,
    pub counters: OwnerCounters,
}

/// What the claims counted, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OwnerCounters {
    /// Claims written, and those that could not be.
    pub claims: u64,
    pub claims_failed: u64,
    /// Sessions here let go because another node claimed their client id.
    pub taken_over: u64,
}

impl Owner {
    /// Whether `sid` has a claim held or on its way.
    pub fn claimed(&self, sid: SessionId) -> bool {
        self.held.contains_key(&sid) || self.asking_for.contains_key(&sid)
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// An admin kick waits for the bucket: the token of its lookup.
    pub fn look_up(&mut self, lookup: Lookup) -> u64 {
        let token = self.token();
        self.lookups.insert(token, lookup);
        token
    }

    /// The admin kick the bucket answered for.
    pub fn looked_up(&mut self, token: u64) -> Option<Lookup> {
        self.lookups.remove(&token)
    }

    /// A claim for `sid` goes out as `token`.
    pub fn ask(&mut self, sid: SessionId, key: &str, ledger: &Ledger) -> u64 {
        let token = self.token();
        let asking = Asking {
            sid,
            key: key.to_owned(),
            _charge: ledger.charge(CLAIM_BYTES + key.len()),
        };
        self.asking.insert(token, asking);
        self.asking_for.insert(sid, token);
        token
    }

    /// The answer to `token`: the session that asked and its key.
    pub fn answered(&mut self, token: u64) -> Option<(SessionId, String)> {
        let a = self.asking.remove(&token)?;
        self.asking_for.remove(&a.sid);
        Some((a.sid, a.key))
    }

    pub fn hold(&mut self, sid: SessionId, revision: u64, ledger: &Ledger) {
        self.held
            .insert(sid, (revision, ledger.charge(CLAIM_BYTES)));
        self.by_revision.insert(revision, sid);
    }

    /// Forgets the claim of `sid`: its revision, if it held one.
    pub fn let_go(&mut self, sid: SessionId) -> Option<u64> {
        let (revision, _) = self.held.remove(&sid)?;
        self.by_revision.remove(&revision);
        Some(revision)
    }

    /// The session whose claim was written at `revision`.
    pub fn session_at(&self, revision: u64) -> Option<SessionId> {
        self.by_revision.get(&revision).copied()
    }
}

/// A claim's value: the node and its epoch.
pub fn claim_value(node: &str, epoch: u64) -> Bytes {
    Bytes::from(format!("{node} {epoch:x}"))
}

/// The node and epoch of a claim's value.
pub fn parse_claim(value: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (node, epoch) = text.split_once(' ')?;
    Some((node, u64::from_str_radix(epoch, 16).ok()?))
}

/// The subject a node hears kicks on.
pub fn kick_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.n.{node}.kick")
}

/// Why a node is told to end one of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickBy {
    /// Another node claimed the client id (v5 DISCONNECT 0x8E).
    Takeover,
    /// The admin API of another node (v5 DISCONNECT 0x98), keeping the session or not.
    Admin { keep_session: bool },
}

/// A kick: the revision of the claim it is for, its key, and why.
pub fn kick_payload(revision: u64, key: &str, by: KickBy) -> Bytes {
    Bytes::from(match by {
        KickBy::Takeover => format!("{revision} {key}"),
        KickBy::Admin {
            keep_session: false,
        } => format!("{revision} {key} admin"),
        KickBy::Admin { keep_session: true } => format!("{revision} {key} admin keep"),
    })
}

pub fn parse_kick(payload: &[u8]) -> Option<(u64, &str, KickBy)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut words = text.split(' ');
    let revision = words.next()?.parse().ok()?;
    let key = words.next().filter(|k| !k.is_empty())?;
    let by = match (words.next(), words.next(), words.next()) {
        (None, _, _) => KickBy::Takeover,
        (Some("admin"), None, _) => KickBy::Admin {
            keep_session: false,
        },
        (Some("admin"), Some("keep"), None) => KickBy::Admin { keep_session: true },
        _ => return None,
    };
    Some((revision, key, by))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_and_kicks_read_back_what_was_written() {
        assert_eq!(
            parse_claim(&claim_value("node-a", u64::MAX)),
            Some(("node-a", u64::MAX))
        );
        for by in [
            KickBy::Takeover,
            KickBy::Admin {
                keep_session: false,
            },
            KickBy::Admin { keep_session: true },
        ] {
            assert_eq!(
                parse_kick(&kick_payload(42, "c_2Fx", by)),
                Some((42, "c_2Fx", by))
            );
        }
        for bad in [&b""[..], b"node", b"node zz", b"\xff 1"] {
            assert_eq!(parse_claim(bad), None);
        }
        for bad in [
            &b""[..],
            b"x key",
            b"-1 key",
            b"7",
            b"7  c",
            b"7 c admin x",
            b"7 c keep",
        ] {
            assert_eq!(parse_kick(bad), None);
        }
    }
}
