//! The cluster's nodes as this node knows them, and admin lists gathered from all of them.
//!
//! Each node publishes a heartbeat on `<prefix>.h.<node>` every third of `node_ttl` (core
//! NATS, no JetStream) and hears the others' on `<prefix>.h.*`; a node not heard of for
//! `node_ttl` is gone. An admin list that describes the cluster (`GET /api/v4/clients`, `/nodes`)
//! asks every live node on `<prefix>.n.<node>.ask`, which answers on the asker's
//! `<prefix>.n.<asker>.answer` with its own part; the asker merges the parts it got within
//! [`GATHER_WAIT_MS`] and says which nodes did not answer.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::Instant;
use crate::memory::{Charge, Ledger};

/// Subscription ids of a node's own subjects (interest numbers its subscriptions from 1 up,
/// the kick subject is 0).
pub const HEARTBEAT_SID: u64 = u64::MAX;
pub const ASK_SID: u64 = u64::MAX - 1;
pub const ANSWER_SID: u64 = u64::MAX - 2;

/// Whether `sid` is one of the node's own subjects (kicks, heartbeats, questions, answers)
/// rather than a subscription its sessions need.
pub fn node_own(sid: u64) -> bool {
    sid == super::owner::KICK_SID || sid >= ANSWER_SID
}

/// The most nodes this node keeps track of; heartbeats of more are counted and ignored.
pub const MAX_NODES: usize = 64;
/// Ended starts of other nodes remembered at most (the oldest forgotten first).
pub const MAX_ENDED: usize = 64;
/// Gathers waiting for answers at once; an admin list past it is answered 503.
pub const MAX_GATHERS: usize = 4;
/// How long a gather waits for the nodes' answers.
pub const GATHER_WAIT_MS: u64 = 2000;
/// The bytes of list items all answers to one gather may carry together (each node gets its
/// share, at most [`MAX_ANSWER_BYTES`]), so a gather holds at most this much.
pub const GATHER_BYTES: usize = 4 << 20;
/// Below nats-server's default `max_payload` (1 MiB), with room for the answer's frame.
pub const MAX_ANSWER_BYTES: usize = 512 << 10;
/// An answer's bytes beyond its items.
const ANSWER_FRAME: usize = 4096;
/// An answer held parsed takes about this many times its bytes.
const PARSED_FACTOR: usize = 2;
/// What a known node or a waiting gather costs beyond its strings.
const ENTRY_BYTES: usize = 160;

/// A node's heartbeat, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// The node's start (hex): a new one means the node restarted.
    pub epoch: String,
    pub connections: u64,
    /// Wall time the node started, milliseconds since the Unix epoch.
    pub started_at: u64,
    pub version: String,
}

impl Heartbeat {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn parse(payload: &[u8]) -> Option<Heartbeat> {
        let h: Heartbeat = serde_json::from_slice(payload).ok()?;
        (node_name_ok(&h.node) && h.epoch.len() <= 16 && h.version.len() <= 64).then_some(h)
    }
}

/// The same bound as `cluster.node_name`; anything else is not a node of ours (and would not
/// make a subject).
fn node_name_ok(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// What an admin list asks of every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The asking node: the answer goes to its answer subject.
    pub from: String,
    pub token: u64,
    pub list: ListKind,
    /// The request's query string, or the client id / user name of the path.
    pub query: String,
    /// Items wanted at most (the first ones in client id order), and their bytes at most.
    pub want: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListKind {
    /// `GET /clients?query`.
    Clients,
    /// `GET /clients/{id}`.
    Client,
    /// `GET /clients/username/{name}`.
    Username,
    /// `GET /subscriptions?query`.
    Subscriptions,
    /// `GET /subscriptions/{clientid}`.
    ClientSubscriptions,
}

/// One node's part of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub token: u64,
    pub node: String,
    /// Matching items on that node, all of them, though `items` may hold fewer.
    pub count: u64,
    pub items: Vec<Value>,
    /// Fewer items than wanted, to keep within the answer's bytes.
    pub truncated: bool,
}

impl Ask {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn parse(payload: &[u8]) -> Option<Ask> {
        let ask: Ask = serde_json::from_slice(payload).ok()?;
        (node_name_ok(&ask.from) && ask.query.len() <= 8192).then_some(ask)
    }
}

impl Answer {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn parse(payload: &[u8]) -> Option<Answer> {
        if payload.len() > MAX_ANSWER_BYTES + ANSWER_FRAME {
            return None;
        }
        let answer: Answer = serde_json::from_slice(payload).ok()?;
        node_name_ok(&answer.node).then_some(answer)
    }
}

/// The subject a node hears heartbeats on, and the one it sends its own on.
pub fn heartbeats_subject(prefix: &str) -> String {
    format!("{prefix}.h.*")
}

pub fn heartbeat_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.h.{node}")
}

pub fn ask_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.n.{node}.ask")
}

pub fn answer_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.n.{node}.answer")
}

/// Another node as its last heartbeat described it.
pub(crate) struct Known {
    pub heartbeat: Heartbeat,
    pub seen_at: Instant,
    _charge: Charge,
}

/// An admin list waiting for the other nodes' parts.
pub(crate) struct Gather {
    pub req_id: u64,
    pub list: ListKind,
    pub query: String,
    pub deadline: Instant,
    /// Nodes asked that have not answered yet, and those that fell silent meanwhile.
    pub waiting: BTreeSet<String>,
    pub gone: Vec<String>,
    pub answers: Vec<Answer>,
    /// The bytes each node's answer may take (its share of [`GATHER_BYTES`]).
    answer_limit: usize,
    charge: Charge,
}

/// Why an admin list could not be gathered.
#[derive(Debug, PartialEq, Eq)]
pub enum GatherRefused {
    /// [`MAX_GATHERS`] wait already.
    Busy,
}

#[derive(Default)]
pub(crate) struct Nodes {
    known: BTreeMap<String, Known>,
    gathers: BTreeMap<u64, Gather>,
    next_token: u64,
    /// The node's subjects are subscribed (at the first heartbeat: the runtime's link exists).
    pub subscribed: bool,
    /// When the next heartbeat goes out, and when the earliest gather gives up.
    pub heartbeat_at: Option<Instant>,
    pub gather_at: Option<Instant>,
    /// Heartbeats ignored: not a heartbeat, this node's own name from elsewhere, a node
    /// past [`MAX_NODES`], or a late one of a start that a later one replaced.
    pub ignored: u64,
    /// Starts of other nodes seen to end (silent for the ttl, or followed by a new start), by
    /// (name, epoch): the wall time (Unix ms) by which their clients' connections had ended.
    ended: BTreeMap<(String, u64), (u64, Charge)>,
    ended_order: VecDeque<(String, u64)>,
}

impl Nodes {
    /// Another node's heartbeat: it is live until `ttl_ms` from `now`. `false` when ignored.
    pub fn heard(&mut self, h: Heartbeat, now: Instant, ledger: &Ledger) -> bool {
        // Heard again: a silence taken for its end was not one.
        if let Ok(epoch) = u64::from_str_radix(&h.epoch, 16)
            && self.ended.remove(&(h.node.clone(), epoch)).is_some()
        {
            self.ended_order.retain(|k| *k != (h.node.clone(), epoch));
        }
        if let Some(k) = self.known.get_mut(&h.node) {
            k.heartbeat = h;
            k.seen_at = now;
            return true;
        }
        if self.known.len() >= MAX_NODES {
            self.ignored += 1;
            return false;
        }
        let charge = ledger.charge(ENTRY_BYTES + h.node.len() + h.version.len());
        self.known.insert(
            h.node.clone(),
            Known {
                heartbeat: h,
                seen_at: now,
                _charge: charge,
            },
        );
        true
    }

    /// The start of `node` heard last, if it is live: its epoch and its start's wall time.
    pub fn start_of(&self, node: &str) -> Option<(&str, u64)> {
        self.known
            .get(node)
            .map(|k| (k.heartbeat.epoch.as_str(), k.heartbeat.started_at))
    }

    /// The live nodes that `expire` at `now` would forget, with their epochs.
    pub fn silent(&self, now: Instant, ttl_ms: u64) -> Vec<(String, String)> {
        self.known
            .values()
            .filter(|k| now.since(k.seen_at) >= ttl_ms)
            .map(|k| (k.heartbeat.node.clone(), k.heartbeat.epoch.clone()))
            .collect()
    }

    /// `node`'s start `epoch` (hex, as its heartbeats carry it) ended: its clients'
    /// connections had all ended by wall time `by`.
    pub fn note_ended(&mut self, node: &str, epoch: &str, by: u64, ledger: &Ledger) {
        let Ok(epoch) = u64::from_str_radix(epoch, 16) else {
            return;
        };
        let key = (node.to_owned(), epoch);
        if self.ended.contains_key(&key) {
            return;
        }
        while self.ended.len() >= MAX_ENDED {
            let Some(oldest) = self.ended_order.pop_front() else {
                break;
            };
            self.ended.remove(&oldest);
        }
        // The name is held twice: in the map and in the order.
        let charge = ledger.charge(ENTRY_BYTES + 2 * node.len());
        self.ended_order.push_back(key.clone());
        self.ended.insert(key, (by, charge));
    }

    /// By when the connections of `node`'s start `epoch` had ended, if this node saw it end.
    pub fn ended_by(&self, node: &str, epoch: u64) -> Option<u64> {
        self.ended.get(&(node.to_owned(), epoch)).map(|(by, _)| *by)
    }

    /// Forgets the nodes not heard of within `ttl_ms` before `now`; gathers stop waiting
    /// for them. The gathers that now have every answer, by token.
    pub fn expire(&mut self, now: Instant, ttl_ms: u64) -> Vec<u64> {
        self.known.retain(|_, k| now.since(k.seen_at) < ttl_ms);
        let mut done = Vec::new();
        for (&token, g) in &mut self.gathers {
            let silent: Vec<String> = g
                .waiting
                .iter()
                .filter(|n| !self.known.contains_key(*n))
                .cloned()
                .collect();
            for n in silent {
                g.waiting.remove(&n);
                g.gone.push(n);
            }
            if g.waiting.is_empty() {
                done.push(token);
            }
        }
        done
    }

    /// The live nodes other than this one, by name.
    pub fn live(&self) -> impl Iterator<Item = &Known> {
        self.known.values()
    }

    /// Starts gathering a list from every live node; its token, or why not.
    pub fn gather(
        &mut self,
        req_id: u64,
        list: ListKind,
        query: String,
        deadline: Instant,
        ledger: &Ledger,
    ) -> Result<(u64, Vec<String>), GatherRefused> {
        if self.gathers.len() >= MAX_GATHERS {
            return Err(GatherRefused::Busy);
        }
        self.next_token += 1;
        let waiting: BTreeSet<String> = self.known.keys().cloned().collect();
        let asked: Vec<String> = waiting.iter().cloned().collect();
        let answer_limit = Self::answer_bytes(asked.len());
        let charge = ledger.charge(ENTRY_BYTES + query.len());
        self.gathers.insert(
            self.next_token,
            Gather {
                req_id,
                list,
                query,
                deadline,
                waiting,
                gone: Vec::new(),
                answers: Vec::new(),
                answer_limit,
                charge,
            },
        );
        Ok((self.next_token, asked))
    }

    /// The bytes each of `nodes` other nodes may answer with.
    pub fn answer_bytes(nodes: usize) -> usize {
        (GATHER_BYTES / nodes.max(1)).clamp(16 << 10, MAX_ANSWER_BYTES)
    }

    /// A node's answer; `true` when its gather has every answer now. Answers for no gather
    /// waiting, from a node not asked (or twice), or larger than that node's share are
    /// dropped (the node then counts as not answering).
    pub fn answered(&mut self, answer: Answer, size: usize) -> bool {
        let Some(g) = self.gathers.get_mut(&answer.token) else {
            return false;
        };
        if !g.waiting.remove(&answer.node) {
            return false;
        }
        if size > g.answer_limit + ANSWER_FRAME {
            g.gone.push(answer.node);
            return g.waiting.is_empty();
        }
        let held = g.charge.bytes() + size * PARSED_FACTOR;
        g.charge.set(held);
        g.answers.push(answer);
        g.waiting.is_empty()
    }

    /// Takes a finished (or given up) gather.
    pub fn take(&mut self, token: u64) -> Option<Gather> {
        self.gathers.remove(&token)
    }

    /// The gathers past their deadline at `now`.
    pub fn overdue(&self, now: Instant) -> Vec<u64> {
        self.gathers
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(&t, _)| t)
            .collect()
    }

    /// The earliest deadline of a waiting gather.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.gathers.values().map(|g| g.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            epoch: "ab".into(),
            connections: 3,
            started_at: 1,
            version: "1.0".into(),
        }
    }

    #[test]
    fn messages_read_back_what_was_written_and_refuse_what_is_not_ours() {
        let h = beat("n-1");
        assert_eq!(Heartbeat::parse(&h.encode()), Some(h));
        assert_eq!(Heartbeat::parse(&beat("a.b").encode()), None);
        assert_eq!(Heartbeat::parse(&beat("").encode()), None);
        assert_eq!(Heartbeat::parse(b"{"), None);
        let ask = Ask {
            from: "a".into(),
            token: 7,
            list: ListKind::Username,
            query: "u".into(),
            want: 10,
            max_bytes: 100,
        };
        assert_eq!(Ask::parse(&ask.encode()), Some(ask.clone()));
        let bad_from = Ask {
            from: "a.>".into(),
            ..ask
        };
        assert_eq!(Ask::parse(&bad_from.encode()), None);
        let answer = Answer {
            token: 7,
            node: "b".into(),
            count: 1,
            items: vec![serde_json::json!({"client_id": "c"})],
            truncated: false,
        };
        assert_eq!(Answer::parse(&answer.encode()), Some(answer));
        assert_eq!(Answer::parse(&vec![b' '; MAX_ANSWER_BYTES + 5000]), None);
    }

    #[test]
    fn nodes_expire_and_gathers_stop_waiting_for_them() {
        let ledger = Ledger::default();
        let mut nodes = Nodes::default();
        let t0 = Instant(1000);
        assert!(nodes.heard(beat("b"), t0, &ledger));
        assert!(nodes.heard(beat("c"), Instant(5000), &ledger));
        let (token, asked) = nodes
            .gather(1, ListKind::Clients, String::new(), Instant(9000), &ledger)
            .unwrap();
        assert_eq!(asked, vec!["b".to_owned(), "c".to_owned()]);
        let answer = |node: &str| Answer {
            token,
            node: node.into(),
            count: 0,
            items: Vec::new(),
            truncated: false,
        };
        // Not asked, or twice: dropped.
        assert!(!nodes.answered(answer("x"), 10));
        assert!(!nodes.answered(answer("c"), 10));
        assert!(!nodes.answered(answer("c"), 10));
        // b goes silent for the ttl: the gather has all it waits for, b named as gone.
        assert_eq!(nodes.expire(Instant(11_500), 10_000), vec![token]);
        assert_eq!(nodes.live().count(), 1);
        let g = nodes.take(token).unwrap();
        assert_eq!(g.answers.len(), 1);
        assert_eq!(g.gone, vec!["b".to_owned()]);
        assert!(ledger.used() > 0);
        drop(g);
    }

    #[test]
    fn ended_starts_are_remembered_by_name_and_epoch_and_bounded() {
        let ledger = Ledger::default();
        let mut nodes = Nodes::default();
        assert!(nodes.heard(beat("b"), Instant(0), &ledger));
        assert_eq!(nodes.start_of("b"), Some(("ab", 1)));
        assert!(nodes.silent(Instant(9_999), 10_000).is_empty());
        assert_eq!(
            nodes.silent(Instant(10_000), 10_000),
            vec![("b".to_owned(), "ab".to_owned())]
        );
        nodes.note_ended("b", "ab", 77, &ledger);
        nodes.note_ended("b", "ab", 99, &ledger);
        nodes.note_ended("b", "not hex", 99, &ledger);
        assert_eq!(nodes.ended_by("b", 0xab), Some(77));
        assert_eq!(nodes.ended_by("b", 0xac), None);
        // Heard again: it had not ended.
        assert!(nodes.heard(beat("b"), Instant(20_000), &ledger));
        assert_eq!(nodes.ended_by("b", 0xab), None);
        assert!(nodes.ended_order.is_empty());
        for i in 0..MAX_ENDED as u64 {
            nodes.note_ended("c", &format!("{i:x}"), i, &ledger);
        }
        assert_eq!(nodes.ended_by("b", 0xab), None, "the oldest forgotten");
        assert_eq!(nodes.ended_by("c", 0), Some(0));
        assert_eq!(nodes.ended.len(), MAX_ENDED);
    }

    #[test]
    fn gathers_and_nodes_are_bounded() {
        let ledger = Ledger::default();
        let mut nodes = Nodes::default();
        for i in 0..MAX_NODES + 3 {
            nodes.heard(beat(&format!("n{i}")), Instant(0), &ledger);
        }
        assert_eq!(nodes.live().count(), MAX_NODES);
        assert_eq!(nodes.ignored, 3);
        for i in 0..MAX_GATHERS {
            nodes
                .gather(
                    i as u64,
                    ListKind::Clients,
                    String::new(),
                    Instant(1),
                    &ledger,
                )
                .unwrap();
        }
        assert_eq!(
            nodes
                .gather(9, ListKind::Clients, String::new(), Instant(1), &ledger)
                .map(|_| ()),
            Err(GatherRefused::Busy)
        );
        assert_eq!(Nodes::answer_bytes(1), MAX_ANSWER_BYTES);
        assert_eq!(Nodes::answer_bytes(MAX_NODES), 64 << 10);
        drop(nodes);
        assert_eq!(ledger.used(), 0);
    }
}
