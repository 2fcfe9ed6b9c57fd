//! One owner per client id across the cluster. A node claims the client id of each session
//! it opens in the sessions bucket, by compare-and-swap on the revision it read; a claim that
//! replaces another node's tells that node, on its kick subject, to let its session go (v5
//! DISCONNECT 0x8E), as a second connection with the same id does on one node. The bucket
//! orders concurrent claims: the last written wins, and each winner kicks the one it replaced.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::qos2::{ExactlyOnce, Qos2Record};
use crate::api::ConnId;
use crate::ids::SessionId;
use crate::memory::{Charge, Ledger};

/// The subscription id of a node's kick subject (interest numbers its subscriptions from 1).
pub const KICK_SID: u64 = 0;

/// What one claim on its way or held costs beyond its key (a held one's QoS 2 state counts
/// its entries itself).
const CLAIM_BYTES: usize = 512;

/// Who asked for a claim: an open session, or a CONNECT of a persistent session that waits
/// for the claim (and the record it replaces) before its session opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Asker {
    Session(SessionId),
    Connect(ConnId),
}

/// A claim on its way: who asked, the key and the client id it names.
struct Asking {
    asker: Asker,
    key: String,
    client_id: String,
    _charge: Charge,
}

/// An admin kick of a client id this node does not hold, waiting for the bucket to say
/// which node does.
pub(crate) struct Lookup {
    pub req_id: u64,
    pub key: String,
    pub keep_session: bool,
}

/// A claim held by one of this node's sessions, with its record's writes.
pub(crate) struct Held {
    pub key: String,
    /// The owner's line the claim wrote, which its record writes keep.
    pub line: Bytes,
    /// The revision the claim was written at: a kick naming this or a later revision is for
    /// this session (later ones are its record's writes).
    pub first: u64,
    /// The revision of the entry as this node last wrote it: the next write's fence.
    pub revision: u64,
    /// A record write on its way (its token); one at a time per session.
    pub writing: Option<u64>,
    /// The session changed since its record was written last.
    pub dirty: bool,
    /// The session is persistent: its record is kept in the bucket.
    pub keeps_record: bool,
    /// Its cursor in the durable stream as written, or to be written.
    pub cursor: Option<u64>,
    /// A catch-up read refills it: its cursor stays until that is done.
    pub catching_up: bool,
    /// The session has ended: the claim goes once the write on its way is answered.
    pub ending: bool,
    /// Its QoS 2 messages as its record shows them.
    pub qos2: ExactlyOnce,
    /// Resumed from another node's record, and none of its messages written here read by
    /// the feed yet: its messages are routed here in the stream's order, behind what its
    /// last node wrote.
    pub moved_in: bool,
    _charge: Charge,
}

/// A claim answered for a waiting CONNECT.
pub(crate) struct Grant {
    pub key: String,
    pub line: Bytes,
    pub revision: u64,
    /// The cursor of the record the session resumes from (`Some(None)`: a record without
    /// one), or `None` for a new session.
    pub resumed_cursor: Option<Option<u64>>,
    /// The QoS 2 state of that record.
    pub resumed_qos2: Qos2Record,
}

/// The claims of this node's sessions. At most one entry per session in each map.
#[derive(Default)]
pub(crate) struct Owner {
    next_token: u64,
    asking: BTreeMap<u64, Asking>,
    /// The same, by asker (so a connect asks in O(log n) whether one is on its way).
    asking_for: BTreeMap<Asker, u64>,
    /// Admin kicks waiting for a lookup, by token (bounded by the admin API's requests).
    lookups: BTreeMap<u64, Lookup>,
    /// Claims written, by session.
    held: BTreeMap<SessionId, Held>,
    /// The same, by key (a kick names the key and a revision).
    by_key: BTreeMap<String, SessionId>,
    /// Record writes on their way, by token.
    writes: BTreeMap<u64, SessionId>,
    /// Claims answered for a waiting CONNECT, taken by the session it opens.
    granted: BTreeMap<ConnId, Grant>,
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
    /// Session records written, and those that could not be (fenced ones included).
    pub records: u64,
    pub records_failed: u64,
    /// Sessions resumed here from another node's record, and the messages their
    /// catch-up reads brought.
    pub resumed: u64,
    pub caught_up: u64,
}

impl Owner {
    /// Whether `asker` has a claim on its way, or (a session) holds one.
    pub fn claimed(&self, asker: Asker) -> bool {
        self.asking_for.contains_key(&asker)
            || matches!(asker, Asker::Session(sid) if self.held.contains_key(&sid))
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

    /// A claim of `client_id` (as `key`) for `asker` goes out as `token`.
    pub fn ask(&mut self, asker: Asker, key: &str, client_id: &str, ledger: &Ledger) -> u64 {
        let token = self.token();
        let asking = Asking {
            asker,
            key: key.to_owned(),
            client_id: client_id.to_owned(),
            _charge: ledger.charge(CLAIM_BYTES + key.len() + client_id.len()),
        };
        self.asking.insert(token, asking);
        self.asking_for.insert(asker, token);
        token
    }

    /// The answer to `token`: who asked, the key and the client id.
    pub fn answered(&mut self, token: u64) -> Option<(Asker, String, String)> {
        let a = self.asking.remove(&token)?;
        self.asking_for.remove(&a.asker);
        Some((a.asker, a.key, a.client_id))
    }

    /// A waiting CONNECT's claim was written: the session it opens takes it.
    pub fn grant(&mut self, conn: ConnId, grant: Grant) {
        self.granted.insert(conn, grant);
    }

    /// The claim granted to `conn`'s CONNECT, taken (also when the connection went).
    pub fn take_grant(&mut self, conn: ConnId) -> Option<Grant> {
        self.granted.remove(&conn)
    }

    /// Whether `conn`'s CONNECT holds a claim for its session to take.
    pub fn granted(&self, conn: ConnId) -> bool {
        self.granted.contains_key(&conn)
    }

    /// Session `sid` holds the claim written at `revision`. A session that held one already
    /// (a new connection asked again) takes the newer: kicks for older revisions were for
    /// claims this one replaced.
    pub fn hold(
        &mut self,
        sid: SessionId,
        claim: (String, Bytes, u64),
        keeps_record: bool,
        ledger: &Ledger,
    ) -> &mut Held {
        let (key, line, revision) = claim;
        let (charge, cursor, catching_up, qos2, moved_in) = match self.held.remove(&sid) {
            Some(old) => {
                self.forget_key(&old.key, sid);
                let kept = (old.cursor, old.catching_up, old.qos2, old.moved_in);
                (old._charge, kept.0, kept.1, kept.2, kept.3)
            }
            None => (
                ledger.charge(CLAIM_BYTES + key.len()),
                None,
                false,
                ExactlyOnce::new(ledger),
                false,
            ),
        };
        self.by_key.insert(key.clone(), sid);
        self.held.entry(sid).or_insert(Held {
            key,
            line,
            first: revision,
            revision,
            writing: None,
            dirty: keeps_record,
            keeps_record,
            cursor,
            catching_up,
            ending: false,
            qos2,
            moved_in,
            _charge: charge,
        })
    }

    pub fn held(&self, sid: SessionId) -> Option<&Held> {
        self.held.get(&sid)
    }

    pub fn held_mut(&mut self, sid: SessionId) -> Option<&mut Held> {
        self.held.get_mut(&sid)
    }

    /// The sessions holding claims, in order.
    pub fn holders(&self) -> impl Iterator<Item = (&SessionId, &Held)> {
        self.held.iter()
    }

    /// Forgets the claim of `sid`: its key and revision, to be released, unless a record
    /// write is on its way (then the claim is released when that is answered).
    pub fn let_go(&mut self, sid: SessionId) -> Option<(String, u64)> {
        let h = self.held.get_mut(&sid)?;
        if h.writing.is_some() {
            h.ending = true;
            return None;
        }
        let h = self.held.remove(&sid)?;
        self.forget_key(&h.key, sid);
        Some((h.key, h.revision))
    }

    /// `key` no longer leads to `sid` (another session here may hold it now).
    fn forget_key(&mut self, key: &str, sid: SessionId) {
        if self.by_key.get(key) == Some(&sid) {
            self.by_key.remove(key);
        }
    }

    /// The session here holding `key`, and the revision its claim was written at.
    pub fn holder(&self, key: &str) -> Option<(SessionId, u64)> {
        let sid = *self.by_key.get(key)?;
        Some((sid, self.held.get(&sid)?.first))
    }

    /// Forgets the claim of `sid` without releasing it (another node's now).
    pub fn lose(&mut self, sid: SessionId) {
        if let Some(h) = self.held.remove(&sid) {
            self.forget_key(&h.key, sid);
            if let Some(token) = h.writing {
                self.writes.remove(&token);
            }
        }
    }

    /// The session a kick naming `key` at `revision` is for.
    pub fn session_at(&self, key: &str, revision: u64) -> Option<SessionId> {
        let sid = *self.by_key.get(key)?;
        let h = self.held.get(&sid)?;
        (h.first <= revision && !h.ending).then_some(sid)
    }

    /// A record write for `sid` goes out: its token and the revision it writes over.
    pub fn write(&mut self, sid: SessionId) -> Option<(u64, String, u64)> {
        let token = self.token();
        let h = self.held.get_mut(&sid)?;
        h.writing = Some(token);
        h.dirty = false;
        let (key, revision) = (h.key.clone(), h.revision);
        self.writes.insert(token, sid);
        Some((token, key, revision))
    }

    /// The record write `token` was answered: its session.
    pub fn written(&mut self, token: u64) -> Option<SessionId> {
        let sid = self.writes.remove(&token)?;
        let h = self.held.get_mut(&sid)?;
        (h.writing == Some(token)).then(|| {
            h.writing = None;
            sid
        })
    }

    /// A claim that ended while its record was written goes now: its key and revision.
    pub fn finish_ending(&mut self, sid: SessionId) -> Option<(String, u64)> {
        if self.held.get(&sid).is_some_and(|h| h.ending) {
            let h = self.held.remove(&sid)?;
            self.forget_key(&h.key, sid);
            return Some((h.key, h.revision));
        }
        None
    }
}

/// A claim's value (the owner's line): the node, its epoch and the claim's number there,
/// so the line names one claim, and a late write of an earlier claim is told apart.
pub fn claim_value(node: &str, epoch: u64, claim: u64) -> Bytes {
    Bytes::from(format!("{node} {epoch:x} {claim:x}"))
}

/// The node and epoch of a claim's value.
pub fn parse_claim(value: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(super::record::owner_line(value)).ok()?;
    let mut words = text.split(' ');
    let (node, epoch) = (words.next()?, words.next()?);
    // The claim's number (absent in an older line).
    if let Some(claim) = words.next() {
        u64::from_str_radix(claim, 16).ok()?;
    }
    if words.next().is_some() {
        return None;
    }
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
            parse_claim(&claim_value("node-a", u64::MAX, 3)),
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
        assert_eq!(parse_claim(b"node-b 1f"), Some(("node-b", 0x1f)));
        for bad in [
            &b""[..],
            b"node",
            b"node zz",
            b"\xff 1",
            b"node 1 zz",
            b"node 1 2 3",
        ] {
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

    #[test]
    fn a_held_claim_costs_what_it_is_charged() {
        // The entry in `held`, its map node and the entry in `by_key` (beside the key).
        let held = std::mem::size_of::<Held>() + std::mem::size_of::<SessionId>() + 64;
        assert!(held <= CLAIM_BYTES, "{held}");
    }
}
