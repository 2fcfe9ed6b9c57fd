//! Cluster worlds: two or three cores in cluster mode, joined by an in-memory model of the NATS
//! engine the runtime talks to, with MQTT clients (3.1.1 and 5) connected to random nodes.
//!
//! The engine model is what `docs/cluster.md` relies on:
//! - plain subscriptions are on a connection without echo: a node never gets its own messages
//!   on them; queue subscriptions are on a second connection with echo, and each message goes
//!   to exactly one subscription per queue name whose subject matches (any node);
//! - one FIFO per (publishing node, subscription); each step delivers the head of a FIFO drawn
//!   at random, so a node's subscriptions interleave arbitrarily and replication takes steps;
//! - each node's two connections and its retained-bucket writes are queues the engine takes in
//!   order, one operation a step;
//! - the retained bucket applies writes in one global order and every node's watch replays it,
//!   each at its own pace;
//! - some seeds cut one node from the engine for a while: its queues are held, not lost;
//! - some seeds restart one node halfway, once nothing is in flight: a new core (a new epoch),
//!   its NATS subscriptions gone, a watch that replays the bucket, its clients back;
//! - some seeds give the nodes a small `max_subscriptions`, so that they fill up;
//! - a sessions bucket takes each node's claims of client ids as one compare-and-swap (the
//!   runtime retries until one holds) and releases at a revision, in the node's order.
//!
//! A run: clients connect and subscribe (with some unsubscribes), the engine drains, then a
//! publishing phase (QoS 0/1, some retained, v5 properties, clients that subscribe,
//! unsubscribe, leave and come back, or connect again on another node leaving their first
//! connection open), then the partition heals and everything drains, every
//! client unsubscribes, and a fresh subscriber to every topic on every node reads the retained
//! set. Checkers C1–C8 judge what the clients saw and what the engine holds; planted engine
//! faults ([`ClusterMutation`]) show that they can fail. Three core bugs these checkers found
//! (K1–K3, fixed) keep scripted reproductions at the end of this file.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::{Hash, Hasher};

use crate::trace::Fnv;

use bytes::{Bytes, BytesMut};
use tidemq_core::cluster::ClusterConfig;
use tidemq_core::cluster::envelope::Envelope;
use tidemq_core::cluster::nodes::node_own;
use tidemq_core::cluster::reaper::REAP_EVERY_HEARTBEATS;
use tidemq_core::cluster::record;
use tidemq_core::cluster::subject::{DEFAULT_PREFIX, Space, nats_matches, subscription, topic_key};
use tidemq_core::codec::{
    Ack, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    ReasonOnly, Subscribe, SubscriptionOptions, Unsubscribe, decode_packet, encode_packet,
};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output, RecordAnswer};

use crate::json::Json;
use crate::rng::Rng;

/// A fault planted in the engine model, each for a checker to catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMutation {
    /// Queue groups are ignored: every queue subscription gets every message (C2).
    IgnoreQueueGroups,
    /// Plain subscriptions get the node's own messages too (echo on). The core drops copies
    /// stamped with its own node and epoch, so no checker is expected to fail.
    EchoPlain,
    /// Node 0's watch lags to the end, then skips one change: the last write to a key by
    /// another node (C3).
    WatchSkips,
    /// One FIFO hands over its second QoS 0 message before its first (C4).
    Reorder,
    /// Every copy gets a fresh sequence number in its envelope, so the copy window cannot
    /// tell copies of one message apart (C1).
    FreshSeq,
    /// One copy on a plain subscription is lost (C1).
    DropCopy,
    /// The engine keeps a node's subscriptions after it asked to drop them (C5).
    IgnoreUnsubscribe,
    /// Messages of a restarted node carry its first epoch, as if the epoch did not change
    /// with a restart: the other nodes take its new sequence numbers for copies (C1).
    StaleEpoch,
    /// The engine hands over every message at QoS 0 and without its user properties (C6).
    RewriteEnvelope,
    /// One node's feed skips a message of another node (C1).
    FeedSkips,
    /// The sessions bucket writes claims without reading: the entry a claim replaced is not
    /// reported, so its node is never told (C8).
    BlindClaim,
    /// Catch-up reads bring nothing, as if their ranges were empty (C9).
    CatchUpSkips,
    /// The sessions bucket answers a claim with the owner's line of the entry it replaced
    /// but not its record: the session resumes without its subscriptions (C9).
    LoseRecord,
    /// The last node's answers to other nodes' admin lists are lost (C10).
    LoseAnswers,
    /// A moved session's client library hands one publisher's two messages to its
    /// application in swapped order, once (C4).
    MoverSwaps,
    /// The runtime never tells a node its NATS connection went down (C11).
    LinkUnreported,
    /// The sessions bucket hands a claim the record it replaced without its outbound QoS 2
    /// state, as a node of the last version wrote records (C12).
    ForgetQos2,
    /// The same without the inbound QoS 2 ids: a mover's QoS 2 PUBLISH sent again after a
    /// move is taken as new (C1, C12).
    ForgetInboundQos2,
    /// The sessions bucket hands a claim the record it replaced with every inbound QoS 2 id
    /// marked stored, as if a node marked ids before JetStream confirmed their writes: a
    /// mover's PUBLISH sent again whose first write was given up is answered without a write,
    /// and its message comes late (C4) or never (C1).
    StoredEarly,
    /// The heartbeats of a node that restarted never reach the others: they see its first
    /// start end only through its silence, a ttl late, and a session that start held is
    /// resumed past its expiry (C13).
    EndUnseen,
    /// The sessions bucket's scans read nothing: the reaper never sees the record of an
    /// expired session whose node restarted (C14).
    ScanBlind,
    /// Scans read every record with a session expiry of 0: the reaper deletes a record
    /// whose session has an hour left (C14).
    ScanZeroExpiry,
    /// Scans read every entry as written by an earlier start of the scanning node: the
    /// reaper deletes the claims of connected clients (C15).
    ScanStaleOwners,
}

/// Decoding on the client side accepts anything MQTT allows.
const WIDE: DecodeLimits = DecodeLimits {
    max_packet_size: 268_435_460,
    max_user_properties: usize::MAX,
};
/// The `max_subject_len` the nodes run with (the default).
const MAX_SUBJECT: usize = 2048;
const LEVELS: &[&str] = &["a", "b", "c"];
/// Levels that need escaping in a subject, or are NATS wildcards, or are empty.
const AWKWARD: &[&str] = &["", "x.y", "_2E", "\u{e9}", "a b", "*", ">"];
const GROUPS: &[&str] = &["g", "h"];
/// Steps of the publishing phase.
const PUBLISH_STEPS: u64 = 700;
/// Steps a drain may take before the run is declared stuck.
const DRAIN_LIMIT: u64 = 200_000;
/// The wall clock, in Unix milliseconds, at the world's time 0.
const WALL_EPOCH_MS: u64 = 1_800_000_000_000;

/// Sequence numbers given by [`ClusterMutation::FreshSeq`]: far above any real one.
const FRESH_BASE: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Plain subscriptions made before the publishing phase and held through it (C1).
    Stable,
    /// Subscribes, unsubscribes, leaves and comes back while messages flow.
    Churn,
    /// A member of share group `n`, its only subscription.
    Member(usize),
    /// Reads the retained set at the end (C3).
    Auditor,
    /// Connects to a node cut off from NATS, or just back (C11); subscribes to nothing.
    Prober,
    /// A persistent session with QoS 1 filters held throughout, that leaves its node while
    /// messages flow (DISCONNECT, or a dropped connection) and resumes on another without
    /// subscribing again: its record and a catch-up read of the stream bring it along (C9).
    Mover,
    /// A persistent session with a short expiry ([`EXPIRER_EXPIRY_S`]) whose node restarts
    /// under it; it comes back later, to that node or another (C13).
    Expirer,
    /// A persistent session with an hour's expiry on a node that restarts under it; it never
    /// comes back, and its record must stay (C14).
    Keeper,
}

/// The session expiry of an [`Kind::Expirer`], in seconds.
const EXPIRER_EXPIRY_S: u32 = 2;

#[derive(Debug, Clone)]
struct Got {
    topic: String,
    payload: Bytes,
    retain: bool,
    qos: QoS,
    properties: Properties,
    /// When it came, and from which node.
    at: u64,
    node: usize,
    /// The NATS subscription (node, sid) whose copy the node routed, if it came from one,
    /// and when the engine made that subscription.
    via: Option<(usize, u64, u64)>,
}

struct Client {
    kind: Kind,
    node: usize,
    conn: u64,
    v5: bool,
    rx: BytesMut,
    up: bool,
    /// Plain filters held now, with their QoS and No Local option.
    filters: BTreeMap<String, (QoS, bool)>,
    /// Shared subscriptions held now (`$share/g/f`), with their QoS.
    shared: BTreeMap<String, QoS>,
    /// Every plain filter ever held.
    ever: BTreeSet<String>,
    next_pid: u16,
    next_seq: u64,
    got: Vec<Got>,
    /// SUBSCRIBEs refused, by packet id.
    refused: BTreeSet<u16>,
    /// Unsubscribed from everything at the end (before the retained audit).
    cleared: bool,
    /// Connected again on another node, leaving a session behind, this many times.
    roams: usize,
    /// Nodes a mover left whose session there may not have ended yet (its kick on its way).
    left: BTreeSet<usize>,
    /// `MoverSwaps` swapped two of its messages.
    swapped: bool,
    /// Its node is cut off from NATS for longer than `node_ttl`: a DISCONNECT or a refused
    /// CONNECT is expected, and kept here (reason code), as is a close.
    expect_away: bool,
    away: Option<u8>,
    closed_away: bool,
    /// QoS 2 packet ids received and not yet released: a PUBLISH again with one of them is
    /// the same message (delivered to the application on first receipt).
    qos2_held: BTreeSet<u16>,
    /// A persistent client's own QoS 2 PUBLISHes not yet completed, and whether PUBREC came
    /// (PUBREL sent): sent again, in order, when its session is resumed.
    qos2_out: BTreeMap<u16, (bool, Publish)>,
    /// What the last accepted CONNACK said of the session.
    present: Option<bool>,
}

impl Client {
    fn version(&self) -> ProtocolVersion {
        if self.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    fn pid(&mut self) -> u16 {
        self.next_pid = self.next_pid.checked_add(1).unwrap_or(1);
        self.next_pid
    }

    /// Reads what the broker sent: returns the answers to send and anything wrong.
    fn on_bytes(
        &mut self,
        bytes: &[u8],
        via: Option<(usize, u64, u64)>,
        now: (u64, usize),
        problems: &mut Vec<String>,
        me: usize,
    ) -> Vec<Packet> {
        self.rx.extend_from_slice(bytes);
        let mut out = Vec::new();
        let version = self.version();
        loop {
            let p = match decode_packet(&mut self.rx, Some(version), &WIDE) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    problems.push(format!("C0 client {me} cannot decode: {e}"));
                    self.rx.clear();
                    break;
                }
            };
            match p {
                Packet::ConnAck(a) if a.code.0 == 0 => {
                    self.up = true;
                    self.present = Some(a.session_present);
                    if a.session_present {
                        for (pid, (released, p)) in &self.qos2_out {
                            out.push(match released {
                                true => Packet::PubRel(ack(*pid)),
                                false => Packet::Publish(Publish {
                                    dup: true,
                                    ..p.clone()
                                }),
                            });
                        }
                    } else {
                        // The session is new: what it had in flight is gone with it.
                        self.qos2_out.clear();
                    }
                }
                Packet::ConnAck(a) if self.expect_away => self.away = Some(a.code.0),
                Packet::ConnAck(a) => {
                    problems.push(format!("C0 client {me} refused: {:?}", a.code))
                }
                Packet::Publish(p) => {
                    let pid = p.packet_id.unwrap_or(0);
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => out.push(Packet::PubAck(ack(pid))),
                        QoS::ExactlyOnce => {
                            out.push(Packet::PubRec(ack(pid)));
                            if !self.qos2_held.insert(pid) {
                                continue;
                            }
                        }
                    }
                    self.got.push(Got {
                        topic: p.topic,
                        payload: p.payload,
                        retain: p.retain,
                        qos: p.qos,
                        properties: p.properties,
                        at: now.0,
                        node: self.node,
                        via,
                    });
                }
                Packet::PubRel(a) => {
                    self.qos2_held.remove(&a.packet_id);
                    out.push(Packet::PubComp(ack(a.packet_id)));
                }
                // This client's own QoS 2 publish was received (v5: a refusal ends it).
                Packet::PubRec(a) => {
                    let refused = a.reason.0 >= 0x80;
                    match self.qos2_out.get_mut(&a.packet_id) {
                        Some(_) if refused => {
                            self.qos2_out.remove(&a.packet_id);
                        }
                        Some((released, _)) => *released = true,
                        None => {}
                    }
                    if !refused {
                        out.push(Packet::PubRel(ack(a.packet_id)));
                    }
                }
                Packet::PubComp(a) => {
                    self.qos2_out.remove(&a.packet_id);
                }
                Packet::SubAck(a) if a.reasons.iter().any(|r| r.0 >= 0x80) => {
                    // Judged by the subscriber (`subscribe_with`): a node may be full.
                    self.refused.insert(a.packet_id);
                }
                Packet::Disconnect(d) if self.expect_away => {
                    self.away = Some(d.reason.0);
                    self.up = false;
                }
                Packet::Disconnect(d) => {
                    problems.push(format!("C0 client {me} disconnected: {:?}", d.reason));
                }
                _ => {}
            }
        }
        out
    }
}

fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason: ReasonCode(0),
        properties: Properties::default(),
    }
}

/// A client publish of the publishing phase, in the order the broker took them.
#[derive(Debug, Clone)]
struct Sent {
    publisher: usize,
    node: usize,
    at: u64,
    retain: bool,
    topic: String,
    payload: Bytes,
    qos: QoS,
    properties: Properties,
}

/// A connection a client left open on `node` when it connected again elsewhere, and the
/// filters its session there holds until the node ends it.
struct Roamed {
    node: usize,
    conn: u64,
    client: usize,
    filters: BTreeSet<String>,
}

/// A sessions-bucket operation a node asked for.
enum OwnerOp {
    Claim {
        token: u64,
        key: String,
        value: Bytes,
        keep_record: bool,
    },
    /// A session record written over the node's last revision (fenced when another node's
    /// line is there).
    Record {
        token: u64,
        key: String,
        value: Bytes,
        revision: u64,
    },
    /// A catch-up read of the stream's entries `from..=to` (sequences from 1).
    CatchUp {
        token: u64,
        from: u64,
        to: u64,
    },
    Release {
        key: String,
        revision: u64,
    },
    /// A read of every entry, for the reaper.
    Scan {
        token: u64,
    },
}

/// An operation a node asked of the engine, waiting in one of its connections.
enum Op {
    Sub {
        sid: u64,
        subject: String,
        queue: Option<String>,
    },
    Unsub {
        sid: u64,
    },
    Pub {
        subject: String,
        payload: Bytes,
    },
}

struct Node {
    broker: Broker,
    /// The connection without echo: plain subscriptions and publishes, in output order.
    plain: VecDeque<Op>,
    /// The connection with echo: queue subscriptions.
    queue: VecDeque<Op>,
    /// Retained-bucket writes, in output order.
    kv: VecDeque<(String, Option<Bytes>)>,
    /// Durable-stream writes of QoS 1/2 messages waiting for the stream's acknowledgement:
    /// token, subject, envelope.
    durable: VecDeque<(u64, String, String, Bytes)>,
    /// The node feed's place in the stream: the next entry it reads.
    feed_at: usize,
    /// Acknowledgements of durable writes the stream took, on their way to the node:
    /// token and sequence (the feed may read the message first).
    acks: VecDeque<(u64, u64)>,
    /// Sessions-bucket claims and releases, in output order.
    owner: VecDeque<OwnerOp>,
    queue_sids: BTreeSet<u64>,
    /// Bucket entries the watch has handed over.
    watched: usize,
    /// Cut from the engine: nothing goes in or out.
    cut: bool,
}

/// A bucket entry: key, value, and the node that wrote it.
type Entry = (String, Option<Bytes>, usize);
/// The way a message went: the node it was published on, and whether live (QoS 0).
type Path = (usize, bool);
/// A FIFO: (publishing node, subscribing node, sid).
type FifoKey = (usize, usize, u64);

#[derive(Default)]
struct Engine {
    /// (node, sid) -> (subject pattern, queue).
    subs: BTreeMap<(usize, u64), (String, Option<String>)>,
    fifos: BTreeMap<FifoKey, VecDeque<(String, Bytes)>>,
    bucket: Vec<Entry>,
    /// The durable stream: subject and envelope, in the order it took them.
    stream: Vec<(String, Bytes)>,
    /// The stream's dedup ids (`Nats-Msg-Id`) and the sequence each was stored at.
    msg_ids: BTreeMap<String, u64>,
    /// `FeedSkips` has skipped its entry.
    skipped: bool,
    /// The sessions bucket: key -> (value, revision), and its last revision.
    sessions: BTreeMap<String, (Bytes, u64)>,
    revision: u64,
    /// Each node's first epoch (for `StaleEpoch`).
    epochs: BTreeMap<usize, u64>,
    copies: u64,
    /// Messages read for catch-ups.
    caught_up: u64,
    fresh: u64,
    reordered: bool,
    dropped: bool,
}

/// What one engine step may do.
#[derive(Clone, Copy)]
enum Step {
    Conn(usize, u8),
    Watch(usize),
    Deliver(FifoKey),
}

/// Everything one seed produced.
pub struct ClusterOutcome {
    pub seed: u64,
    pub nodes: usize,
    pub partitioned: bool,
    /// A node was restarted (a new epoch) between two publishing phases.
    pub restarted: bool,
    pub hash: u64,
    /// Client publishes in the publishing phase.
    pub messages: u64,
    /// Live deliveries to clients.
    pub deliveries: u64,
    /// Copies the engine queued.
    pub copies: u64,
    /// Retained-bucket writes.
    pub retained_writes: u64,
    /// Subscriptions refused because a node was full.
    pub refusals: u64,
    /// Moves of persistent sessions between nodes, and the messages catch-up reads brought.
    pub moves: u64,
    pub caught_up: u64,
    /// QoS 2 deliveries to sessions that moved, after their first move (C12).
    pub moved_qos2: u64,
    /// Connected clients the cluster-wide client list had to name (C10).
    pub listed: u64,
    /// Clients a node cut off from NATS past `node_ttl` had to send away (C11).
    pub sent_away: u64,
    /// Sessions whose node restarted under them (C13): resumed within their expiry, and
    /// not resumed past it.
    pub ended_resumed: u64,
    pub ended_expired: u64,
    pub violations: Vec<String>,
    /// The run's events, when asked for.
    pub log: Vec<String>,
}

impl ClusterOutcome {
    /// Whether checker `name` failed (`"C"`: any checker); `"C1"` is not `"C10"`.
    pub fn failed(&self, name: &str) -> bool {
        self.violations.iter().any(|v| {
            v.strip_prefix(name)
                .is_some_and(|rest| name == "C" || !rest.starts_with(|c: char| c.is_ascii_digit()))
        })
    }
}

pub struct ClusterWorld {
    seed: u64,
    /// Each node's `max_subscriptions`.
    max_subscriptions: usize,
    /// SUBSCRIBEs refused because a node was full.
    refusals: u64,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    engine: Engine,
    clients: Vec<Client>,
    by_conn: BTreeMap<u64, usize>,
    next_conn: u64,
    /// Share groups: (name, filter).
    groups: Vec<(String, String)>,
    sent: Vec<Sent>,
    publishing: bool,
    partitioned: bool,
    restarted: bool,
    /// When each node last started.
    started_at: Vec<u64>,
    /// Node 0's watch waits (`WatchSkips`), then skips this bucket entry.
    hold_watch: bool,
    skip: Option<usize>,
    mutation: Option<ClusterMutation>,
    hash: Fnv,
    /// The subscription whose message is being fed to its node, and when it was made.
    via: Option<(usize, u64, u64)>,
    /// When the engine made each subscription, and routed each message (by payload).
    made_at: BTreeMap<(usize, u64), u64>,
    routed_at: BTreeMap<Bytes, u64>,
    /// Connections left open by clients that connected again on another node, and those of
    /// them their node closed.
    roamed: Vec<Roamed>,
    closed: BTreeSet<u64>,
    problems: Vec<String>,
    log: Option<Vec<String>>,
    /// The cluster-wide client list asked of one node (C10).
    audit: Option<ListAudit>,
    /// A node cut off from NATS past `node_ttl` at the end of the run (C11).
    long_cut: Option<LongCut>,
    ended: Option<EndedStart>,
    /// Nodes restarted in this run.
    restarted_nodes: BTreeSet<usize>,
    /// Admin replies, by request id.
    replies: BTreeMap<u64, (u16, Bytes)>,
}

/// A node cut off from NATS for longer than `node_ttl`: the clients it had, a client that
/// tried to connect meanwhile, and one that connected once NATS was back.
struct LongCut {
    node: usize,
    clients: Vec<usize>,
    during: usize,
    after: usize,
}

/// A node restarted under an [`Kind::Expirer`]'s session, which came back `away_ms` later to
/// node `back_on`; what the CONNACK said of the session.
struct EndedStart {
    node: usize,
    back_on: usize,
    client: usize,
    away_ms: u64,
    present: Option<bool>,
    /// Sessions of that start that never come back: one that expires like the client's,
    /// whose record the reaper must have deleted by the end, and one with an hour left, whose
    /// record must stay (C14).
    orphan: usize,
    keeper: usize,
}

/// A v4 client list asked of one node once every node's heartbeat is current: who should be
/// in it, and what came back.
struct ListAudit {
    node: usize,
    req_id: u64,
    /// (client id, node name) of every connected client.
    want: BTreeSet<(String, String)>,
}

fn level(rng: &mut Rng) -> &'static str {
    let from = if rng.chance(120) { AWKWARD } else { LEVELS };
    rng.pick(from).copied().unwrap_or("a")
}

/// Swaps the last two messages of `got` if one publisher sent both on one topic, new ones
/// (`MoverSwaps`); whether it did.
fn swap_last_two(got: &mut [Got]) -> bool {
    let n = got.len();
    if n < 2 {
        return false;
    }
    let (Some(a), Some(b)) = (got.get(n - 2), got.get(n - 1)) else {
        return false;
    };
    let same = match (tag(&a.payload), tag(&b.payload)) {
        (Some((pa, _)), Some((pb, _))) => pa == pb && a.topic == b.topic,
        _ => false,
    };
    let fresh = !got
        .iter()
        .take(n - 2)
        .any(|g| g.payload == a.payload || g.payload == b.payload);
    if !(same && fresh && !a.retain && !b.retain && a.payload != b.payload) {
        return false;
    }
    got.swap(n - 2, n - 1);
    true
}

/// A few topics and filters start with `$`: wildcards first must not match those.
fn dollar(rng: &mut Rng, levels: &mut [&str]) {
    if rng.chance(40)
        && let Some(first) = levels.first_mut()
    {
        *first = "$s";
    }
}

fn random_topic(rng: &mut Rng) -> String {
    let depth = rng.range(1, 3);
    let mut levels: Vec<&str> = (0..depth).map(|_| level(rng)).collect();
    dollar(rng, &mut levels);
    // A topic of one empty level is empty, which MQTT forbids.
    if levels == [""] {
        return "a".to_owned();
    }
    levels.join("/")
}

fn random_filter(rng: &mut Rng) -> String {
    if rng.chance(50) {
        return "#".to_owned();
    }
    let depth = rng.range(1, 3);
    let mut levels: Vec<&str> = (0..depth)
        .map(|_| if rng.chance(350) { "+" } else { level(rng) })
        .collect();
    dollar(rng, &mut levels);
    if rng.chance(250) {
        if depth < 3 && rng.chance(500) {
            levels.push("#");
        } else if let Some(last) = levels.last_mut() {
            *last = "#";
        }
    }
    if levels == [""] {
        return "+".to_owned();
    }
    levels.join("/")
}

/// The NATS subscriptions a filter or `$share/g/f` needs.
fn subjects(raw: &str) -> usize {
    subscription(DEFAULT_PREFIX, Space::Live, raw, MAX_SUBJECT).map_or(0, |s| s.subjects.len())
}

fn qos_of(q: u64) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The payload of a client publish: `P:<client>:<seq>`.
fn tag(payload: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(payload).ok()?;
    let mut it = s.split(':');
    if it.next()? != "P" {
        return None;
    }
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

impl ClusterWorld {
    pub fn new(seed: u64, mutation: Option<ClusterMutation>) -> ClusterWorld {
        let mut rng = Rng::new(seed ^ 0xC1A5_7E20);
        let n = rng.range(2, 3) as usize;
        // Some seeds make nodes that fill up: subscriptions past the limit are refused.
        let max_subscriptions = if rng.chance(250) {
            rng.range(4, 14) as u32
        } else {
            ClusterConfig::default().max_subscriptions
        };
        // Cursors move within the run's seconds.
        let record_interval_ms = rng.range(20, 400);
        let nodes = (0..n)
            .map(|i| {
                let config = Config {
                    sys_events: false,
                    cluster: ClusterConfig {
                        enable: true,
                        node_name: format!("n{i}"),
                        max_subscriptions,
                        record_interval_ms,
                        ..ClusterConfig::default()
                    },
                    ..Config::default()
                };
                let mut broker = Broker::new(config, rng.next_u64(), Instant(0));
                // One wall clock for every node, as NTP gives them.
                broker.handle_input(
                    Instant(0),
                    Input::WallClock {
                        unix_ms: WALL_EPOCH_MS,
                    },
                );
                broker.handle_input(Instant(0), Input::ClusterFeedStart { seq: 0 });
                Node {
                    broker,
                    plain: VecDeque::new(),
                    queue: VecDeque::new(),
                    kv: VecDeque::new(),
                    durable: VecDeque::new(),
                    feed_at: 0,
                    acks: VecDeque::new(),
                    owner: VecDeque::new(),
                    queue_sids: BTreeSet::new(),
                    watched: 0,
                    cut: false,
                }
            })
            .collect();
        ClusterWorld {
            seed,
            max_subscriptions: max_subscriptions as usize,
            refusals: 0,
            rng,
            now: 0,
            nodes,
            engine: Engine::default(),
            clients: Vec::new(),
            by_conn: BTreeMap::new(),
            next_conn: 1,
            groups: Vec::new(),
            sent: Vec::new(),
            publishing: false,
            partitioned: false,
            restarted: false,
            started_at: vec![0; n],
            hold_watch: mutation == Some(ClusterMutation::WatchSkips),
            skip: None,
            mutation,
            hash: Fnv(0xcbf2_9ce4_8422_2325),
            via: None,
            made_at: BTreeMap::new(),
            routed_at: BTreeMap::new(),
            roamed: Vec::new(),
            closed: BTreeSet::new(),
            problems: Vec::new(),
            log: None,
            audit: None,
            long_cut: None,
            ended: None,
            restarted_nodes: BTreeSet::new(),
            replies: BTreeMap::new(),
        }
    }

    /// Keeps the run's events in the outcome (for a failing seed's trace).
    pub fn verbose(mut self) -> ClusterWorld {
        self.log = Some(Vec::new());
        self
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if let Some(log) = self.log.as_mut() {
            log.push(format!("{:>6} {}", self.now, what()));
        }
    }

    // ----- nodes --------------------------------------------------------------------------

    fn feed(&mut self, node: usize, input: Input) {
        let mut pending = VecDeque::from([(node, input)]);
        while let Some((n, input)) = pending.pop_front() {
            let Some(nd) = self.nodes.get_mut(n) else {
                continue;
            };
            nd.broker.handle_input(Instant(self.now), input);
            let mut outs = Vec::new();
            while let Some(o) = nd.broker.poll_output() {
                outs.push(o);
            }
            for o in outs {
                self.output(n, o, &mut pending);
            }
        }
    }

    fn output(&mut self, n: usize, o: Output, pending: &mut VecDeque<(usize, Input)>) {
        match o {
            Output::Transmit { conn, bytes } => {
                (n, "tx", conn.0, &bytes[..]).hash(&mut self.hash);
                pending.push_back((
                    n,
                    Input::Written {
                        conn,
                        bytes: bytes.len(),
                    },
                ));
                let Some(&idx) = self.by_conn.get(&conn.0) else {
                    return;
                };
                let watched = self.nodes.get(n).map_or(0, |nd| nd.watched);
                let Some(c) = self.clients.get_mut(idx) else {
                    return;
                };
                let before = c.got.len();
                let via = self.via.filter(|v| v.0 == n);
                let answers = c.on_bytes(&bytes, via, (self.now, watched), &mut self.problems, idx);
                if self.mutation == Some(ClusterMutation::MoverSwaps)
                    && c.kind == Kind::Mover
                    && c.roams > 0
                    && !c.swapped
                {
                    c.swapped = swap_last_two(&mut c.got);
                }
                let version = c.version();
                if self.log.is_some() {
                    let got: Vec<String> = c
                        .got
                        .iter()
                        .skip(before)
                        .map(|g| {
                            format!(
                                "client {idx} got {} {:?} retain={}",
                                g.topic, g.payload, g.retain
                            )
                        })
                        .collect();
                    for g in got {
                        self.note(|| g);
                    }
                }
                for p in answers {
                    let mut b = BytesMut::new();
                    let _ = encode_packet(&p, version, &mut b);
                    pending.push_back((
                        n,
                        Input::Received {
                            conn,
                            bytes: b.freeze(),
                        },
                    ));
                }
            }
            Output::Close { conn } => {
                let idx = self.by_conn.get(&conn.0).copied();
                if let Some(c) = idx.and_then(|i| self.clients.get_mut(i))
                    && c.expect_away
                {
                    c.closed_away = true;
                    c.up = false;
                } else if let Some(idx) = idx {
                    self.problems
                        .push(format!("C0 client {idx} closed by node {n}"));
                } else {
                    self.closed.insert(conn.0);
                }
            }
            Output::ClusterClaim {
                token,
                key,
                value,
                keep_record,
            } => {
                self.note(|| format!("node {n} claims {key} ({token})"));
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.owner.push_back(OwnerOp::Claim {
                        token,
                        key,
                        value,
                        keep_record,
                    });
                }
            }
            Output::ClusterRecord {
                token,
                key,
                value,
                revision,
            } => {
                self.note(|| format!("node {n} writes the record of {key} over {revision}"));
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.owner.push_back(OwnerOp::Record {
                        token,
                        key,
                        value,
                        revision,
                    });
                }
            }
            Output::ClusterCatchUp { token, from, to } => {
                self.note(|| format!("node {n} catches up {from}..={to} ({token})"));
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.owner.push_back(OwnerOp::CatchUp { token, from, to });
                }
            }
            Output::ClusterRelease { key, revision } => {
                self.note(|| format!("node {n} releases {key} at {revision}"));
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.owner.push_back(OwnerOp::Release { key, revision });
                }
            }
            Output::ClusterScan { token } => {
                self.note(|| format!("node {n} scans the sessions bucket ({token})"));
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.owner.push_back(OwnerOp::Scan { token });
                }
            }
            Output::ClusterSubscribe {
                sid,
                subject,
                queue,
            } => {
                self.note(|| format!("node {n} subscribe sid {sid} {subject} {queue:?}"));
                let Some(nd) = self.nodes.get_mut(n) else {
                    return;
                };
                let op = Op::Sub {
                    sid,
                    subject,
                    queue: queue.clone(),
                };
                if queue.is_some() {
                    nd.queue_sids.insert(sid);
                    nd.queue.push_back(op);
                } else {
                    nd.plain.push_back(op);
                }
            }
            Output::ClusterUnsubscribe { sid } => {
                self.note(|| format!("node {n} unsubscribe sid {sid}"));
                let Some(nd) = self.nodes.get_mut(n) else {
                    return;
                };
                if nd.queue_sids.contains(&sid) {
                    nd.queue.push_back(Op::Unsub { sid });
                } else {
                    nd.plain.push_back(Op::Unsub { sid });
                }
            }
            Output::ClusterPublish {
                subject, payload, ..
            } => {
                let last = n + 1 == self.nodes.len();
                if self.mutation == Some(ClusterMutation::LoseAnswers)
                    && last
                    && subject.ends_with(".answer")
                {
                    return;
                }
                if self.mutation == Some(ClusterMutation::EndUnseen)
                    && self.restarted_nodes.contains(&n)
                    && subject.contains(".h.")
                {
                    return;
                }
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.plain.push_back(Op::Pub { subject, payload });
                }
            }
            Output::AdminReply {
                req_id,
                status,
                body,
                ..
            } => {
                self.replies.insert(req_id, (status, body));
            }
            Output::ClusterRetain { key, value } => {
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.kv.push_back((key, value));
                }
            }
            Output::ClusterDurable {
                token,
                subject,
                msg_id,
                payload,
            } => {
                self.note(|| format!("node {n} durable write {token} {subject} as {msg_id}"));
                if let Some(nd) = self.nodes.get_mut(n) {
                    nd.durable.push_back((token, subject, msg_id, payload));
                }
            }
            _ => {}
        }
    }

    /// Node `n`'s `node_ttl`.
    fn node_ttl(&self, n: usize) -> Option<u64> {
        self.nodes
            .get(n)
            .map(|nd| nd.broker.config().cluster.node_ttl_ms)
    }

    /// One millisecond passes; due timers fire.
    fn tick(&mut self) {
        self.now += 1;
        for n in 0..self.nodes.len() {
            let due = self
                .nodes
                .get(n)
                .and_then(|nd| nd.broker.poll_timeout())
                .is_some_and(|at| at.0 <= self.now);
            if due {
                self.feed(n, Input::Timeout);
            }
        }
    }

    // ----- clients ------------------------------------------------------------------------

    fn add_client(&mut self, kind: Kind, node: usize) -> usize {
        self.add_client_quiet(kind, node, false)
    }

    /// A new client of `node`; with `expect_away` a refused CONNECT is kept, not a problem.
    fn add_client_quiet(&mut self, kind: Kind, node: usize, expect_away: bool) -> usize {
        let idx = self.clients.len();
        // An expirer's or keeper's expiry is a v5 property (3.1.1 sessions take the configured one).
        let v5 = self.rng.chance(500) || matches!(kind, Kind::Expirer | Kind::Keeper);
        self.clients.push(Client {
            kind,
            node,
            conn: 0,
            v5,
            rx: BytesMut::new(),
            up: false,
            filters: BTreeMap::new(),
            shared: BTreeMap::new(),
            ever: BTreeSet::new(),
            next_pid: 0,
            next_seq: 0,
            got: Vec::new(),
            refused: BTreeSet::new(),
            cleared: false,
            roams: 0,
            left: BTreeSet::new(),
            swapped: false,
            expect_away,
            away: None,
            closed_away: false,
            qos2_held: BTreeSet::new(),
            qos2_out: BTreeMap::new(),
            present: None,
        });
        self.connect(idx);
        idx
    }

    /// A new connection of client `idx` to its node, and a clean-start CONNECT.
    fn connect(&mut self, idx: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        self.by_conn.remove(&c.conn);
        c.conn = conn;
        c.up = false;
        c.rx.clear();
        let (node, version) = (c.node, c.version());
        let persistent = matches!(c.kind, Kind::Mover | Kind::Expirer | Kind::Keeper);
        let expiry = match c.kind {
            Kind::Expirer => EXPIRER_EXPIRY_S,
            _ => 3600,
        };
        if !persistent {
            // A clean start: the session, and what the client held for it, are new.
            c.qos2_held.clear();
        }
        self.by_conn.insert(conn, idx);
        self.feed(
            node,
            Input::Accepted {
                conn: ConnId(conn),
                peer: format!("10.0.{node}.{}:1883", idx % 250),
            },
        );
        self.send(
            idx,
            &Packet::Connect(Box::new(Connect {
                version,
                clean_start: !persistent,
                keep_alive: 0,
                properties: Properties {
                    session_expiry_interval: persistent.then_some(expiry),
                    ..Properties::default()
                },
                client_id: format!("c{idx}"),
                will: None,
                username: None,
                password: None,
            })),
        );
        // A persistent session's CONNACK waits for its claim.
        if persistent {
            self.settle_owner(node);
        }
        if self
            .clients
            .get(idx)
            .is_some_and(|c| !c.up && !c.expect_away)
        {
            self.problems
                .push(format!("C0 client {idx} not connected after CONNECT"));
        }
    }

    fn send(&mut self, idx: usize, p: &Packet) {
        let Some(c) = self.clients.get(idx) else {
            return;
        };
        let mut b = BytesMut::new();
        if encode_packet(p, c.version(), &mut b).is_err() {
            self.problems.push(format!("C0 client {idx} cannot encode"));
            return;
        }
        let (node, conn) = (c.node, c.conn);
        let bytes = b.freeze();
        (node, "rx", conn, &bytes[..]).hash(&mut self.hash);
        self.feed(
            node,
            Input::Received {
                conn: ConnId(conn),
                bytes,
            },
        );
    }

    fn subscribe(&mut self, idx: usize, filter: &str, qos: QoS) {
        let shared = filter.starts_with("$share/");
        // No Local is a v5 option, and not for shared subscriptions.
        let v5 = self.clients.get(idx).is_some_and(|c| c.v5);
        let no_local = !shared && v5 && self.rng.chance(200);
        self.subscribe_with(idx, filter, qos, no_local);
    }

    /// NATS subscriptions node `n`'s sessions need, and whether one of them holds `raw`.
    /// The NATS subscriptions node `n` holds for its sessions (at least, and at most: a
    /// session a mover left there may or may not have ended yet), and whether `raw` is one
    /// (surely, or perhaps).
    fn interest(&self, n: usize, raw: &str) -> (usize, usize, bool, bool) {
        let mut raws = BTreeSet::new();
        // Clients of a restarted node that have not connected again hold nothing there yet.
        for c in self
            .clients
            .iter()
            .filter(|c| c.node == n && !c.cleared && c.up)
        {
            raws.extend(c.filters.keys().map(String::as_str));
            raws.extend(c.shared.keys().map(String::as_str));
        }
        // A session left behind holds its filters until its node ends it.
        for r in &self.roamed {
            if r.node == n && !self.closed.contains(&r.conn) {
                raws.extend(r.filters.iter().map(String::as_str));
            }
        }
        let mut maybe = raws.clone();
        for c in self.clients.iter().filter(|c| c.left.contains(&n)) {
            maybe.extend(c.filters.keys().map(String::as_str));
        }
        let held = raws.iter().map(|r| subjects(r)).sum();
        let at_most = maybe.iter().map(|r| subjects(r)).sum();
        (held, at_most, raws.contains(raw), maybe.contains(raw))
    }

    fn subscribe_with(&mut self, idx: usize, filter: &str, qos: QoS, no_local: bool) {
        let shared = filter.starts_with("$share/");
        let Some(node) = self.clients.get(idx).map(|c| c.node) else {
            return;
        };
        // The SUBACK is judged when the SUBSCRIBE is sent, so nothing may hold the packet:
        // the node's durable writes (a QoS 1 PUBLISH before it waits for one) are answered
        // first.
        self.settle_durable(node);
        let (held, at_most, already, perhaps) = self.interest(node, filter);
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let packet_id = c.pid();
        let before = if shared {
            c.shared.insert(filter.to_owned(), qos).map(|q| (q, false))
        } else {
            c.ever.insert(filter.to_owned());
            c.filters.insert(filter.to_owned(), (qos, no_local))
        };
        self.note(|| format!("client {idx} subscribe {filter} {qos:?} no_local={no_local}"));
        let options = SubscriptionOptions {
            qos,
            no_local,
            retain_as_published: false,
            retain_handling: 0,
        };
        self.send(
            idx,
            &Packet::Subscribe(Subscribe {
                packet_id,
                properties: Properties::default(),
                filters: vec![(filter.to_owned(), options)],
            }),
        );
        // A node may refuse a filter only when it is full (`max_subscriptions`).
        let need = subjects(filter);
        let room = perhaps || held + need <= self.max_subscriptions;
        let surely_room = already || at_most + need <= self.max_subscriptions;
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        if c.refused.remove(&packet_id) {
            match (shared, before) {
                (true, Some((q, _))) => drop(c.shared.insert(filter.to_owned(), q)),
                (true, None) => drop(c.shared.remove(filter)),
                (false, Some(o)) => drop(c.filters.insert(filter.to_owned(), o)),
                (false, None) => drop(c.filters.remove(filter)),
            }
            self.refusals += 1;
            if surely_room {
                self.problems.push(format!(
                    "C5 client {idx} on node {node}: {filter} refused with room ({held} held, {need} more, at most {})",
                    self.max_subscriptions
                ));
            }
        } else if !room {
            self.problems.push(format!(
                "C5 client {idx} on node {node}: {filter} taken past the limit ({held} held, {need} more, at most {})",
                self.max_subscriptions
            ));
        }
    }

    /// What client `idx` got, as text, in order.
    fn payloads_of(&self, idx: usize) -> Vec<String> {
        self.clients
            .get(idx)
            .map(|c| {
                c.got
                    .iter()
                    .map(|g| String::from_utf8_lossy(&g.payload).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The stream acknowledges every durable write node `n` waits for. A cut holds the
    /// node's routing, not these: refusals for want of the stream are the core scenarios' and
    /// the end-to-end quorum test's.
    fn settle_durable(&mut self, n: usize) {
        loop {
            let Some(nd) = self.nodes.get_mut(n) else {
                return;
            };
            if let Some((token, seq)) = nd.acks.pop_front() {
                let seq = Some(seq);
                self.feed(n, Input::ClusterDurableDone { token, seq });
            } else if !nd.durable.is_empty() {
                self.stream_takes(n);
            } else {
                return;
            }
        }
    }

    /// The stream takes node `n`'s oldest durable write, in order, and acknowledges it; the
    /// node then routes it and acknowledges its publisher.
    fn stream_takes(&mut self, n: usize) {
        let Some((token, subject, msg_id, payload)) =
            self.nodes.get_mut(n).and_then(|nd| nd.durable.pop_front())
        else {
            return;
        };
        // A write with a dedup id the stream has is acknowledged at its first place (the
        // runs are far shorter than `duplicate_window`).
        if let Some(&at) = self.engine.msg_ids.get(&msg_id) {
            self.note(|| format!("stream has node {n}'s write {token} already at {at}"));
            if let Some(nd) = self.nodes.get_mut(n) {
                nd.acks.push_back((token, at));
            }
            return;
        }
        let at = self.engine.stream.len();
        self.note(|| format!("stream has node {n}'s write {token} at {at}"));
        self.engine.stream.push((subject, payload));
        self.engine.msg_ids.insert(msg_id, at as u64 + 1);
        if let Some(nd) = self.nodes.get_mut(n) {
            nd.acks.push_back((token, at as u64 + 1));
        }
    }

    /// Node `n`'s feed reads the next entry of the stream (every entry, in order, once).
    fn feed_step(&mut self, n: usize) {
        let Some(at) = self.nodes.get(n).map(|nd| nd.feed_at) else {
            return;
        };
        let Some((subject, payload)) = self.engine.stream.get(at).cloned() else {
            return;
        };
        if let Some(nd) = self.nodes.get_mut(n) {
            nd.feed_at += 1;
        }
        if self.mutation == Some(ClusterMutation::FeedSkips)
            && self.publishing
            && !self.engine.skipped
            && Envelope::decode(payload.clone()).is_ok_and(|e| e.stamp.node != format!("n{n}"))
        {
            self.engine.skipped = true;
            self.note(|| format!("node {n}'s feed skips entry {at}"));
            return;
        }
        (n, "feed", at).hash(&mut self.hash);
        self.note(|| format!("node {n}'s feed reads entry {at} {subject}"));
        let seq = at as u64 + 1;
        self.feed(
            n,
            Input::ClusterFeedMessage {
                seq,
                subject,
                payload,
            },
        );
    }

    fn unsubscribe(&mut self, idx: usize, filter: &str) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let packet_id = c.pid();
        c.filters.remove(filter);
        c.shared.remove(filter);
        self.note(|| format!("client {idx} unsubscribe {filter}"));
        self.send(
            idx,
            &Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: Properties::default(),
                filters: vec![filter.to_owned()],
            }),
        );
    }

    fn publish(&mut self, idx: usize) {
        let topic = random_topic(&mut self.rng);
        let qos = qos_of(self.rng.below(3));
        let retain = self.rng.chance(120);
        let clear = retain && self.rng.chance(250);
        self.publish_to(idx, topic, qos, retain, clear);
    }

    /// A publish of client `idx`; `clear` sends an empty payload.
    fn publish_to(&mut self, idx: usize, topic: String, qos: QoS, retain: bool, clear: bool) {
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        c.next_seq += 1;
        let payload = if clear {
            Bytes::new()
        } else {
            Bytes::from(format!("P:{idx}:{}", c.next_seq))
        };
        let packet_id = (qos != QoS::AtMostOnce).then(|| c.pid());
        let mut properties = Properties::default();
        if c.v5 && self.rng.chance(400) {
            // What a v5 message carries to v5 subscribers, across nodes too (C6).
            properties.user_properties = vec![
                ("k".to_owned(), format!("v{}", c.next_seq)),
                ("k".to_owned(), "again".to_owned()),
            ];
            properties.content_type = Some("text/plain".to_owned());
            properties.response_topic = Some(format!("re/{idx}"));
            properties.correlation_data = Some(Bytes::from(format!("corr{}", c.next_seq)));
            properties.payload_format_indicator = Some(1);
        }
        let node = c.node;
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: topic.clone(),
            packet_id,
            properties: properties.clone(),
            payload: payload.clone(),
        };
        if let (Some(pid), true) = (packet_id, c.kind == Kind::Mover && qos == QoS::ExactlyOnce) {
            c.qos2_out.insert(pid, (false, publish.clone()));
        }
        self.sent.push(Sent {
            publisher: idx,
            node,
            at: self.now,
            retain,
            topic: topic.clone(),
            payload: payload.clone(),
            qos,
            properties: properties.clone(),
        });
        self.note(|| format!("client {idx} publish {topic} {payload:?} {qos:?} retain={retain}"));
        self.send(idx, &Packet::Publish(publish));
    }

    // ----- the engine ---------------------------------------------------------------------

    fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        for (n, nd) in self.nodes.iter().enumerate() {
            if nd.cut {
                continue;
            }
            if !nd.plain.is_empty() {
                steps.push(Step::Conn(n, 0));
            }
            if !nd.queue.is_empty() {
                steps.push(Step::Conn(n, 1));
            }
            if !nd.kv.is_empty() {
                steps.push(Step::Conn(n, 2));
            }
            if !nd.durable.is_empty() {
                steps.push(Step::Conn(n, 3));
            }
            if !nd.owner.is_empty() {
                steps.push(Step::Conn(n, 4));
            }
            if nd.feed_at < self.engine.stream.len() {
                steps.push(Step::Conn(n, 5));
            }
            if !nd.acks.is_empty() {
                steps.push(Step::Conn(n, 6));
            }
            let held = n == 0 && self.hold_watch;
            if !held && nd.watched < self.engine.bucket.len() {
                steps.push(Step::Watch(n));
            }
        }
        for (key, fifo) in &self.engine.fifos {
            let open = self.nodes.get(key.1).is_some_and(|nd| !nd.cut);
            if open && !fifo.is_empty() {
                steps.push(Step::Deliver(*key));
            }
        }
        steps
    }

    /// One engine step drawn at random; false when there is nothing to do.
    fn engine_step(&mut self) -> bool {
        let steps = self.steps();
        let Some(&step) = self.rng.pick(&steps) else {
            return false;
        };
        match step {
            Step::Conn(n, which) => self.take_op(n, which),
            Step::Watch(n) => self.watch(n),
            Step::Deliver(key) => self.deliver(key),
        }
        true
    }

    fn take_op(&mut self, n: usize, which: u8) {
        let Some(nd) = self.nodes.get_mut(n) else {
            return;
        };
        if which == 4 {
            if let Some(op) = nd.owner.pop_front() {
                self.owner_op(n, op);
            }
            return;
        }
        if which == 3 {
            self.stream_takes(n);
            return;
        }
        if which == 5 {
            self.feed_step(n);
            return;
        }
        if which == 6 {
            if let Some((token, seq)) = nd.acks.pop_front() {
                self.feed(
                    n,
                    Input::ClusterDurableDone {
                        token,
                        seq: Some(seq),
                    },
                );
            }
            return;
        }
        if which == 2 {
            if let Some((key, value)) = nd.kv.pop_front() {
                self.note(|| format!("bucket {key} = {value:?} (node {n})"));
                self.engine.bucket.push((key, value, n));
            }
            return;
        }
        let op = if which == 0 {
            nd.plain.pop_front()
        } else {
            nd.queue.pop_front()
        };
        match op {
            Some(Op::Sub {
                sid,
                subject,
                queue,
            }) => {
                self.engine.subs.insert((n, sid), (subject, queue));
                self.made_at.insert((n, sid), self.now);
            }
            Some(Op::Unsub { sid })
                if self.mutation != Some(ClusterMutation::IgnoreUnsubscribe) =>
            {
                self.engine.subs.remove(&(n, sid));
            }
            Some(Op::Unsub { .. }) => {}
            Some(Op::Pub { subject, payload }) => self.route(n, &subject, payload),
            None => {}
        }
    }

    /// The sessions bucket takes a claim (a compare-and-swap the runtime retries until it
    /// holds, so atomic here) or a release (a delete at a revision).
    fn owner_op(&mut self, n: usize, op: OwnerOp) {
        match op {
            OwnerOp::Claim {
                token,
                key,
                value,
                keep_record,
            } => {
                self.engine.revision += 1;
                let revision = self.engine.revision;
                let value = match self.engine.sessions.get(&key) {
                    Some((old, _)) if keep_record => {
                        let line = record::owner_line(old).len();
                        let mut v = value.to_vec();
                        v.extend_from_slice(old.get(line..).unwrap_or_default());
                        Bytes::from(v)
                    }
                    _ => value,
                };
                let mut previous = self.engine.sessions.insert(key.clone(), (value, revision));
                if self.mutation == Some(ClusterMutation::BlindClaim) {
                    previous = None;
                }
                if self.mutation == Some(ClusterMutation::LoseRecord)
                    && let Some((value, _)) = &mut previous
                {
                    *value = Bytes::copy_from_slice(record::owner_line(value));
                }
                if let Some(
                    m @ (ClusterMutation::ForgetQos2
                    | ClusterMutation::ForgetInboundQos2
                    | ClusterMutation::StoredEarly),
                ) = self.mutation
                    && let Some((value, _)) = &mut previous
                    && let (line, Some(Ok(mut rec))) = record::parse_value(value, &key)
                {
                    match m {
                        ClusterMutation::ForgetQos2 => {
                            rec.qos2_window.clear();
                            rec.qos2_done.clear();
                        }
                        ClusterMutation::ForgetInboundQos2 => rec.qos2_inbound.clear(),
                        _ => rec.qos2_inbound_stored = rec.qos2_inbound.keys().copied().collect(),
                    }
                    *value = record::record_value(line, &key, &rec);
                }
                self.note(|| format!("sessions {key} = node {n} at {revision}"));
                (n, "claim", &key, revision).hash(&mut self.hash);
                self.feed(
                    n,
                    Input::ClusterClaimed {
                        token,
                        revision: Some(revision),
                        previous,
                    },
                );
            }
            OwnerOp::Record {
                token,
                key,
                value,
                revision,
            } => {
                let ours = record::owner_line(&value);
                let answer = match self.engine.sessions.get(&key) {
                    Some((old, at)) if *at == revision || record::owner_line(old) == ours => {
                        self.engine.revision += 1;
                        let written = self.engine.revision;
                        self.engine.sessions.insert(key.clone(), (value, written));
                        RecordAnswer::Written(written)
                    }
                    _ => RecordAnswer::Fenced,
                };
                self.note(|| format!("sessions {key}: node {n}'s record {answer:?}"));
                (n, "record", &key, format!("{answer:?}")).hash(&mut self.hash);
                self.feed(n, Input::ClusterRecorded { token, answer });
            }
            OwnerOp::CatchUp { token, from, to } => {
                let mut from = from;
                if self.mutation == Some(ClusterMutation::CatchUpSkips) {
                    self.note(|| format!("node {n}'s catch-up skips {from}..={to}"));
                    from = to + 1;
                }
                for seq in from.max(1)..=to {
                    let Some((subject, payload)) = usize::try_from(seq - 1)
                        .ok()
                        .and_then(|i| self.engine.stream.get(i).cloned())
                    else {
                        break;
                    };
                    self.engine.caught_up += 1;
                    self.feed(
                        n,
                        Input::ClusterCatchUpMessage {
                            token,
                            seq,
                            subject,
                            payload,
                        },
                    );
                }
                (n, "catch-up", from, to).hash(&mut self.hash);
                self.feed(n, Input::ClusterCatchUpDone { token, ok: true });
            }
            OwnerOp::Release { key, revision } => {
                if self
                    .engine
                    .sessions
                    .get(&key)
                    .is_some_and(|e| e.1 == revision)
                {
                    self.note(|| format!("sessions {key} released by node {n}"));
                    self.engine.sessions.remove(&key);
                }
            }
            OwnerOp::Scan { token } => {
                let mut entries: Vec<(String, Bytes, u64)> = Vec::new();
                for (key, (value, revision)) in &self.engine.sessions {
                    let value = match self.mutation {
                        Some(ClusterMutation::ScanBlind) => continue,
                        Some(ClusterMutation::ScanStaleOwners) => {
                            let line = record::owner_line(value).len();
                            let mut v = format!("n{n} 0").into_bytes();
                            v.extend_from_slice(value.get(line..).unwrap_or_default());
                            Bytes::from(v)
                        }
                        Some(ClusterMutation::ScanZeroExpiry) => {
                            match record::parse_value(value, key) {
                                (line, Some(Ok(mut rec))) => {
                                    rec.session.expiry_secs = 0;
                                    record::record_value(line, key, &rec)
                                }
                                _ => value.clone(),
                            }
                        }
                        _ => value.clone(),
                    };
                    entries.push((key.clone(), value, *revision));
                }
                (n, "scan", entries.len()).hash(&mut self.hash);
                let mut batches = entries.chunks(tidemq_core::SCAN_BATCH).peekable();
                if batches.peek().is_none() {
                    self.feed(
                        n,
                        Input::ClusterScanned {
                            token,
                            entries: Vec::new(),
                            done: true,
                        },
                    );
                }
                while let Some(batch) = batches.next() {
                    let done = batches.peek().is_none();
                    let entries = batch.to_vec();
                    self.feed(
                        n,
                        Input::ClusterScanned {
                            token,
                            entries,
                            done,
                        },
                    );
                }
            }
        }
    }

    /// Every sessions-bucket operation node `n` asked for is done.
    fn settle_owner(&mut self, n: usize) {
        while let Some(op) = self.nodes.get_mut(n).and_then(|nd| nd.owner.pop_front()) {
            self.owner_op(n, op);
        }
    }

    /// A message published by node `from`: one copy per matching plain subscription of the
    /// other nodes, one per queue name among the matching queue subscriptions.
    fn route(&mut self, from: usize, subject: &str, mut payload: Bytes) {
        let echo = self.mutation == Some(ClusterMutation::EchoPlain);
        let all_queues = self.mutation == Some(ClusterMutation::IgnoreQueueGroups);
        let mut targets = Vec::new();
        let mut groups: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
        for (&(node, sid), (pattern, queue)) in &self.engine.subs {
            if !nats_matches(pattern, subject) {
                continue;
            }
            match queue {
                None if node != from || echo => targets.push((node, sid)),
                None => {}
                Some(q) => groups.entry(q).or_default().push((node, sid)),
            }
        }
        for members in groups.values() {
            if all_queues {
                targets.extend(members.iter().copied());
            } else if let Some(&one) = self.rng.pick(members) {
                targets.push(one);
            }
        }
        if let Ok(mut e) = Envelope::decode(payload.clone()) {
            self.routed_at.insert(e.payload.clone(), self.now);
            let first = *self.engine.epochs.entry(from).or_insert(e.stamp.epoch);
            if self.mutation == Some(ClusterMutation::StaleEpoch) && first != e.stamp.epoch {
                e.stamp.epoch = first;
                payload = e.encode();
            }
            if self.mutation == Some(ClusterMutation::RewriteEnvelope) {
                e.qos = QoS::AtMostOnce;
                e.properties.user_properties.clear();
                payload = e.encode();
            }
        }
        let fresh = self.mutation == Some(ClusterMutation::FreshSeq);
        for (node, sid) in targets {
            let mut copy = payload.clone();
            if fresh && let Ok(mut e) = Envelope::decode(payload.clone()) {
                self.engine.fresh += 1;
                e.stamp.seq = FRESH_BASE + self.engine.fresh;
                copy = e.encode();
            }
            self.note(|| format!("engine {subject} from node {from} -> node {node} sid {sid}"));
            self.engine.copies += 1;
            self.engine
                .fifos
                .entry((from, node, sid))
                .or_default()
                .push_back((subject.to_owned(), copy));
        }
    }

    fn deliver(&mut self, key: FifoKey) {
        let plain = self
            .nodes
            .get(key.1)
            .is_some_and(|nd| !nd.queue_sids.contains(&key.2));
        let Some(fifo) = self.engine.fifos.get_mut(&key) else {
            return;
        };
        // Two messages of one subject the live path delivers (QoS 0: plain subscriptions pass
        // over QoS 1/2 copies, which come through the feed).
        let live = |m: Option<&(String, Bytes)>| {
            m.and_then(|m| Envelope::decode(m.1.clone()).ok())
                .is_some_and(|e| e.qos == QoS::AtMostOnce)
        };
        let reorder = self.mutation == Some(ClusterMutation::Reorder)
            && !self.engine.reordered
            && fifo.len() >= 2
            && fifo.front().map(|m| &m.0) == fifo.get(1).map(|m| &m.0)
            && live(fifo.front())
            && live(fifo.get(1));
        let msg = if reorder {
            self.engine.reordered = true;
            fifo.remove(1)
        } else {
            fifo.pop_front()
        };
        let Some((subject, payload)) = msg else {
            return;
        };
        if self.mutation == Some(ClusterMutation::DropCopy)
            && self.publishing
            && plain
            && !self.engine.dropped
        {
            self.engine.dropped = true;
            self.note(|| format!("engine lost {subject} to node {} sid {}", key.1, key.2));
            return;
        }
        self.note(|| {
            format!(
                "deliver {subject} from node {} to node {} sid {}",
                key.0, key.1, key.2
            )
        });
        (key, &subject, &payload[..]).hash(&mut self.hash);
        let made = self.made_at.get(&(key.1, key.2)).copied().unwrap_or(0);
        self.via = Some((key.1, key.2, made));
        self.feed(
            key.1,
            Input::ClusterMessage {
                sid: key.2,
                subject,
                payload,
            },
        );
        self.via = None;
    }

    fn watch(&mut self, n: usize) {
        let Some(nd) = self.nodes.get_mut(n) else {
            return;
        };
        let at = nd.watched;
        nd.watched += 1;
        if n == 0 && self.skip == Some(at) {
            self.note(|| format!("node 0's watch skips entry {at}"));
            return;
        }
        let Some((key, value, _)) = self.engine.bucket.get(at).cloned() else {
            return;
        };
        (n, "kv", &key, value.as_deref()).hash(&mut self.hash);
        self.note(|| format!("node {n} watch {key} = {}", value.is_some()));
        self.feed(n, Input::ClusterRetained { key, value });
    }

    /// Runs the engine until every queue, FIFO and watch is empty.
    fn drain(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            if !self.engine_step() {
                return;
            }
            self.tick();
        }
        self.problems
            .push(format!("C0 engine not drained after {DRAIN_LIMIT} steps"));
    }

    // ----- the run ------------------------------------------------------------------------

    pub fn run(mut self) -> ClusterOutcome {
        let nodes = self.nodes.len();
        let nodes64 = nodes as u64;
        // Share groups, members spread over the nodes; two groups may share a name.
        for _ in 0..self.rng.range(1, 3) {
            let name = self.rng.pick(GROUPS).copied().unwrap_or("g").to_owned();
            let filter = random_filter(&mut self.rng);
            // The same name and filter would be one group in MQTT.
            if !self.groups.contains(&(name.clone(), filter.clone())) {
                self.groups.push((name, filter));
            }
        }
        for g in 0..self.groups.len() {
            let first = self.rng.below(nodes64) as usize;
            for k in 0..self.rng.range(2, 3) as usize {
                self.add_client(Kind::Member(g), (first + k) % nodes);
            }
        }
        for _ in 0..self.rng.range(3, 6) {
            let node = self.rng.below(nodes64) as usize;
            self.add_client(Kind::Stable, node);
        }
        for _ in 0..self.rng.range(1, 2) {
            let node = self.rng.below(nodes64) as usize;
            self.add_client(Kind::Churn, node);
        }
        for _ in 0..self.rng.below(3) {
            let node = self.rng.below(nodes64) as usize;
            self.add_client(Kind::Mover, node);
        }
        // Subscriptions; some are dropped again before any message.
        for idx in 0..self.clients.len() {
            let kind = self.clients.get(idx).map(|c| c.kind);
            match kind {
                Some(Kind::Member(g)) => {
                    let Some((name, filter)) = self.groups.get(g).cloned() else {
                        continue;
                    };
                    let qos = qos_of(self.rng.below(2));
                    self.subscribe(idx, &format!("$share/{name}/{filter}"), qos);
                }
                Some(Kind::Mover) => {
                    for _ in 0..self.rng.range(1, 2) {
                        let f = random_filter(&mut self.rng);
                        let qos = qos_of(self.rng.range(1, 2));
                        self.subscribe_with(idx, &f, qos, false);
                    }
                }
                Some(Kind::Stable | Kind::Churn) => {
                    for _ in 0..self.rng.range(1, 3) {
                        let f = random_filter(&mut self.rng);
                        let qos = qos_of(self.rng.below(3));
                        self.subscribe(idx, &f, qos);
                    }
                    if self.rng.chance(300) {
                        // A share group joined and left: it must get nothing after.
                        let f = format!("$share/g/{}", random_filter(&mut self.rng));
                        self.subscribe(idx, &f, QoS::AtMostOnce);
                        self.unsubscribe(idx, &f);
                    }
                    let held: Vec<String> = self
                        .clients
                        .get(idx)
                        .map(|c| c.filters.keys().cloned().collect())
                        .unwrap_or_default();
                    for f in held {
                        if self.rng.chance(200) {
                            self.unsubscribe(idx, &f);
                        }
                    }
                }
                _ => {}
            }
            if self.rng.chance(300) {
                self.engine_step();
            }
        }
        self.drain();

        // Publishing, with churn and perhaps one node cut off for a while; perhaps a node
        // restarts (a new epoch) halfway, once everything is delivered.
        self.publishing = true;
        let cut = self.rng.chance(400).then(|| {
            let node = self.rng.below(nodes64) as usize;
            let from = self.rng.below(PUBLISH_STEPS / 2);
            let until = from + self.rng.range(50, PUBLISH_STEPS / 2);
            (node, from, until)
        });
        self.partitioned = cut.is_some();
        let restart = self
            .rng
            .chance(350)
            .then(|| self.rng.below(nodes64) as usize);
        if let Some(node) = restart {
            self.restarted = true;
            self.publish_phase(PUBLISH_STEPS / 2, cut);
            self.drain();
            self.restart(node, true);
            self.drain();
            self.publish_phase(PUBLISH_STEPS / 2, None);
        } else {
            self.publish_phase(PUBLISH_STEPS, cut);
        }
        self.heal();
        self.drain();
        self.publishing = false;

        // Node 0's lagging watch (`WatchSkips`) catches up, less one change.
        if self.hold_watch {
            self.hold_watch = false;
            self.skip = self.skippable();
            self.drain();
        }

        self.ask_for_clients();

        // Every client drops every subscription: each node's last unsubscribe must reach the
        // engine (C5 before and after), and full nodes get room for the audit.
        let mut before = Vec::new();
        self.check_c5(&mut before);
        self.problems.extend(before);
        for idx in 0..self.clients.len() {
            let Some(c) = self.clients.get_mut(idx) else {
                continue;
            };
            let raws: Vec<String> = c.filters.keys().chain(c.shared.keys()).cloned().collect();
            c.cleared = true;
            for raw in raws {
                let Some(c) = self.clients.get_mut(idx) else {
                    continue;
                };
                let packet_id = c.pid();
                self.send(
                    idx,
                    &Packet::Unsubscribe(Unsubscribe {
                        packet_id,
                        properties: Properties::default(),
                        filters: vec![raw],
                    }),
                );
            }
        }
        self.drain();
        self.end_a_start_under_a_session();

        // A fresh subscriber to every topic on every node reads the retained set (`#` does
        // not match topics starting with `$`).
        for node in 0..nodes {
            let idx = self.add_client(Kind::Auditor, node);
            self.subscribe(idx, "#", QoS::AtLeastOnce);
            self.subscribe(idx, "$s/#", QoS::AtLeastOnce);
        }
        self.drain();
        self.cut_past_ttl();
        self.outcome()
    }

    fn publish_phase(&mut self, steps: u64, cut: Option<(usize, u64, u64)>) {
        let talkers: Vec<usize> = (0..self.clients.len()).collect();
        for step in 0..steps {
            if let Some((node, from, until)) = cut {
                let on = step >= from && step < until;
                if self.nodes.get(node).is_some_and(|nd| nd.cut != on) {
                    self.note(|| format!("node {node} cut={on}"));
                    // Shorter than node_ttl: the node keeps its clients.
                    self.feed(node, Input::ClusterLink { up: !on });
                }
                if let Some(nd) = self.nodes.get_mut(node) {
                    nd.cut = on;
                }
            }
            if self.rng.chance(300) {
                let Some(&idx) = self.rng.pick(&talkers) else {
                    continue;
                };
                let kind = self.clients.get(idx).map(|c| c.kind);
                let churn = kind == Some(Kind::Churn);
                if kind == Some(Kind::Mover) {
                    // Movers publish at QoS 2 only (what a move must not duplicate; their
                    // client sends again what it has not completed when it resumes).
                    if self.rng.chance(100) {
                        self.move_session(idx);
                    } else if self.rng.chance(300) {
                        let topic = random_topic(&mut self.rng);
                        self.publish_to(idx, topic, QoS::ExactlyOnce, false, false);
                    }
                } else if churn && self.rng.chance(40) {
                    self.leave_and_return(idx);
                } else if churn && self.rng.chance(60) {
                    self.roam(idx);
                } else if churn && self.rng.chance(300) {
                    let f = random_filter(&mut self.rng);
                    let held = self
                        .clients
                        .get(idx)
                        .is_some_and(|c| c.filters.contains_key(&f));
                    if held {
                        self.unsubscribe(idx, &f);
                    } else {
                        let qos = qos_of(self.rng.below(2));
                        self.subscribe(idx, &f, qos);
                    }
                } else {
                    self.publish(idx);
                }
            } else {
                self.engine_step();
            }
            self.tick();
        }
        self.heal();
    }

    /// Every cut node is connected again, and its core told so.
    fn heal(&mut self) {
        for n in 0..self.nodes.len() {
            if self.nodes.get(n).is_some_and(|nd| nd.cut) {
                self.note(|| format!("node {n} cut=false"));
                self.feed(n, Input::ClusterLink { up: true });
            }
            if let Some(nd) = self.nodes.get_mut(n) {
                nd.cut = false;
            }
        }
    }

    /// Mover `idx` leaves its node (DISCONNECT, or the connection drops) and resumes its
    /// session on another node, subscribing to nothing: what it holds comes with the session.
    fn move_session(&mut self, idx: usize) {
        let nodes = self.nodes.len() as u64;
        let to = self.rng.range(1, nodes - 1) as usize;
        let abrupt = self.rng.chance(500);
        let Some(from) = self.clients.get(idx).map(|c| c.node) else {
            return;
        };
        // Nothing is settled first: acknowledgements of the stream still on their way to
        // the node it leaves are part of what a move must survive.
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let conn = c.conn;
        // What the node sends this connection from now on is not the client's concern.
        self.by_conn.remove(&conn);
        if abrupt {
            self.feed(from, Input::Closed { conn: ConnId(conn) });
        } else {
            self.send(
                idx,
                &Packet::Disconnect(ReasonOnly {
                    reason: ReasonCode(0),
                    properties: Properties::default(),
                }),
            );
        }
        let node = (from + to) % self.nodes.len();
        if let Some(c) = self.clients.get_mut(idx) {
            c.node = node;
            c.roams += 1;
            c.left.insert(from);
            c.left.remove(&node);
        }
        self.note(|| {
            format!("client {idx} moves from node {from} to node {node}, abrupt={abrupt}")
        });
        self.connect(idx);
    }

    /// Client `idx` leaves (DISCONNECT, or the connection drops) and comes back at once with
    /// a clean start: its session and every subscription in it are gone.
    fn leave_and_return(&mut self, idx: usize) {
        let abrupt = self.rng.chance(500);
        // Every message the client sent is taken before it goes (a PUBLISH still unread
        // behind one waiting for the stream would be gone unacknowledged, which the
        // checkers, counting every publish, do not model).
        if let Some(node) = self.clients.get(idx).map(|c| c.node) {
            self.settle_durable(node);
        }
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        c.filters.clear();
        c.shared.clear();
        let (node, conn) = (c.node, c.conn);
        // What the node sends this connection from now on is not the client's concern.
        self.by_conn.remove(&conn);
        self.note(|| format!("client {idx} leaves, abrupt={abrupt}"));
        if abrupt {
            self.feed(node, Input::Closed { conn: ConnId(conn) });
        } else {
            self.send(
                idx,
                &Packet::Disconnect(ReasonOnly {
                    reason: ReasonCode(0),
                    properties: Properties::default(),
                }),
            );
        }
        self.connect(idx);
    }

    /// Client `idx` connects again with its client id on another node, leaving its first
    /// connection open, as a client that lost its route to its node does: the claim of the
    /// new session must end the old one (C8).
    fn roam(&mut self, idx: usize) {
        let nodes = self.nodes.len() as u64;
        let to = self.rng.range(1, nodes - 1);
        let Some(from) = self.clients.get(idx).map(|c| c.node) else {
            return;
        };
        // The old session's claim is written before the new one's: otherwise the later of
        // two concurrent claims wins, whichever connection made it.
        self.settle_durable(from);
        self.settle_owner(from);
        let Some(c) = self.clients.get_mut(idx) else {
            return;
        };
        let filters = c.filters.keys().chain(c.shared.keys()).cloned().collect();
        c.filters.clear();
        c.shared.clear();
        c.roams += 1;
        let conn = c.conn;
        c.node = (from + to as usize) % self.nodes.len();
        let node = c.node;
        self.by_conn.remove(&conn);
        self.roamed.push(Roamed {
            node: from,
            conn,
            client: idx,
            filters,
        });
        self.note(|| format!("client {idx} roams from node {from} to node {node}"));
        self.connect(idx);
        let f = random_filter(&mut self.rng);
        let qos = qos_of(self.rng.below(2));
        self.subscribe(idx, &f, qos);
    }

    /// Node `n` stops and starts again, with nothing in flight: a new core (a new epoch), its
    /// NATS subscriptions gone with its connections, a new watch that replays the bucket; its
    /// clients connect again and subscribe to what they held (with `reconnect`; else they
    /// stay away).
    fn restart(&mut self, n: usize, reconnect: bool) {
        // Nothing in flight: what the node's clients sent is taken first.
        self.settle_durable(n);
        self.note(|| format!("node {n} restarts"));
        self.restarted_nodes.insert(n);
        self.engine.subs.retain(|(node, _), _| *node != n);
        self.engine
            .fifos
            .retain(|(from, to, _), f| !f.is_empty() || (*from != n && *to != n));
        let seed = self.rng.next_u64();
        let Some(nd) = self.nodes.get_mut(n) else {
            return;
        };
        let config = nd.broker.config().clone();
        nd.broker = Broker::new(config, seed, Instant(self.now));
        let unix_ms = WALL_EPOCH_MS + self.now;
        nd.broker
            .handle_input(Instant(self.now), Input::WallClock { unix_ms });
        if let Some(at) = self.started_at.get_mut(n) {
            *at = self.now;
        }
        // Connections left open there went with the node.
        self.roamed.retain(|r| r.node != n);
        nd.plain.clear();
        nd.queue.clear();
        nd.kv.clear();
        nd.durable.clear();
        nd.acks.clear();
        // A new feed reads from the stream's end.
        nd.feed_at = self.engine.stream.len();
        let seq = nd.feed_at as u64;
        nd.broker
            .handle_input(Instant(self.now), Input::ClusterFeedStart { seq });
        nd.owner.clear();
        nd.queue_sids.clear();
        nd.watched = 0;
        let here: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients.get(i).is_some_and(|c| c.node == n))
            .collect();
        // Their connections went with the node.
        for &idx in &here {
            if let Some(c) = self.clients.get_mut(idx) {
                c.up = false;
            }
        }
        if !reconnect {
            return;
        }
        for idx in here {
            self.connect(idx);
            let Some(c) = self.clients.get_mut(idx) else {
                continue;
            };
            // Held again as each is subscribed again; a mover's came back with its record.
            let (plain, shared) = if matches!(c.kind, Kind::Mover | Kind::Expirer | Kind::Keeper) {
                (c.filters.clone(), c.shared.clone())
            } else {
                (
                    std::mem::take(&mut c.filters),
                    std::mem::take(&mut c.shared),
                )
            };
            for (f, (qos, no_local)) in plain {
                self.subscribe_with(idx, &f, qos, no_local);
            }
            for (f, qos) in shared {
                self.subscribe_with(idx, &f, qos, false);
            }
        }
    }

    /// The last write to a key by a node other than 0, when that write is a value.
    fn skippable(&self) -> Option<usize> {
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, (key, _, _)) in self.engine.bucket.iter().enumerate() {
            last.insert(key, i);
        }
        last.values()
            .copied()
            .filter(|&i| {
                self.engine
                    .bucket
                    .get(i)
                    .is_some_and(|(_, v, w)| *w != 0 && v.is_some())
            })
            .max()
    }

    /// Time passes until every node's heartbeat is current, then one node is asked for the
    /// cluster's connected clients (`GET /api/v4/clients?conn_state=connected`), answered
    /// once the other nodes' parts came or their wait ended (C10).
    fn ask_for_clients(&mut self) {
        let Some(ttl) = self.node_ttl(0) else {
            return;
        };
        for _ in 0..ttl / 3 + 50 {
            self.tick();
            self.drain();
        }
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let want = self
            .clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.up)
            .map(|(idx, c)| (format!("c{idx}"), format!("n{}", c.node)))
            .collect();
        let Some(nd) = self.nodes.get(node) else {
            return;
        };
        let http = &nd.broker.config().http_server;
        let credentials = tidemq_core::admin::Credentials {
            authorization: Some(crate::world::basic(&http.username, &http.password)),
            jwt: None,
        };
        let req_id = 1;
        self.audit = Some(ListAudit { node, req_id, want });
        self.feed(
            node,
            Input::AdminV4 {
                req_id,
                credentials,
                method: "GET".into(),
                path: "/api/v4/clients".into(),
                query: "conn_state=connected".into(),
                body: Bytes::new(),
            },
        );
        self.drain();
        for _ in 0..tidemq_core::cluster::nodes::GATHER_WAIT_MS + 10 {
            if self.replies.contains_key(&req_id) {
                break;
            }
            self.tick();
            self.drain();
        }
    }

    /// On some seeds a persistent session with a short expiry ([`Kind::Expirer`]) is on a
    /// node that restarts (its connection dies with the node, so its record has no
    /// disconnect time); the client comes back, to that node or another, either within its
    /// expiry or well past it (C13). Two more sessions of that start never come back, one
    /// expiring as fast and one with an hour left ([`Kind::Keeper`]); time passes until the
    /// reaper has scanned after the first expired (C14, C15).
    fn end_a_start_under_a_session(&mut self) {
        if !self.rng.chance(300) {
            return;
        }
        let nodes = self.nodes.len() as u64;
        let node = self.rng.below(nodes) as usize;
        let back_on = self.rng.below(nodes) as usize;
        let Some(ttl) = self.node_ttl(node) else {
            return;
        };
        let idx = self.add_client(Kind::Expirer, node);
        self.subscribe(idx, &format!("e/{idx}"), QoS::AtLeastOnce);
        let orphan = self.add_client(Kind::Expirer, node);
        self.subscribe(orphan, &format!("e/{orphan}"), QoS::AtLeastOnce);
        let keeper = self.add_client(Kind::Keeper, node);
        self.subscribe(keeper, &format!("e/{keeper}"), QoS::AtLeastOnce);
        self.drain();
        // Every node hears the others' current starts, and the record is written.
        for _ in 0..ttl / 3 + 500 {
            self.tick();
            self.drain();
        }
        // Gone with the node: not reconnected when it comes back.
        for i in [idx, orphan, keeper] {
            if let Some(c) = self.clients.get_mut(i) {
                c.node = usize::MAX;
                c.up = false;
            }
        }
        // Its other clients (subscribed to nothing by now) stay away.
        self.restart(node, false);
        self.drain();
        let expiry_ms = u64::from(EXPIRER_EXPIRY_S) * 1000;
        let away_ms = if self.rng.chance(500) {
            expiry_ms - 500
        } else {
            expiry_ms + ttl / 3 + 500
        };
        self.note(|| format!("client {idx} back on node {back_on} in {away_ms} ms"));
        for _ in 0..away_ms {
            self.tick();
            self.drain();
        }
        if let Some(c) = self.clients.get_mut(idx) {
            c.node = back_on;
            c.present = None;
        }
        self.connect(idx);
        self.drain();
        let present = self.clients.get(idx).and_then(|c| c.present);
        // A new session holds nothing of the old one.
        if present == Some(false)
            && let Some(c) = self.clients.get_mut(idx)
        {
            c.filters.clear();
        }
        // Long enough for the reaper to have scanned after the orphan expired: the lowest
        // live node scans every [`REAP_EVERY_HEARTBEATS`] heartbeats once connected for a
        // ttl (and restarted nodes count again from their start).
        let between_scans = u64::from(REAP_EVERY_HEARTBEATS) * (ttl / 3 + 1);
        self.pass(2 * ttl + between_scans + 1000);
        self.check_c15();
        self.ended = Some(EndedStart {
            node,
            back_on,
            client: idx,
            away_ms,
            present,
            orphan,
            keeper,
        });
    }

    /// Lets `ms` pass, from one node's deadline to the next: as many ticks, when nothing but
    /// the nodes' timers acts meanwhile.
    fn pass(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            let next = self
                .nodes
                .iter()
                .filter_map(|nd| nd.broker.poll_timeout())
                .map(|at| at.0)
                .min();
            let at = next.map_or(end, |at| at.clamp(self.now + 1, end));
            self.now = at - 1;
            self.tick();
            self.drain();
        }
    }

    /// On some seeds, one node loses NATS for longer than `node_ttl` once everything is
    /// delivered: its clients must be sent away, a CONNECT meanwhile refused, and one after
    /// NATS is back accepted (C11).
    fn cut_past_ttl(&mut self) {
        if !self.rng.chance(300) {
            return;
        }
        let node = self.rng.below(self.nodes.len() as u64) as usize;
        let Some(ttl) = self.node_ttl(node) else {
            return;
        };
        let clients: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients.get(i).is_some_and(|c| c.up && c.node == node))
            .collect();
        for &i in &clients {
            if let Some(c) = self.clients.get_mut(i) {
                c.expect_away = true;
            }
        }
        self.note(|| format!("node {node} cut past node_ttl"));
        if let Some(nd) = self.nodes.get_mut(node) {
            nd.cut = true;
        }
        if self.mutation != Some(ClusterMutation::LinkUnreported) {
            self.feed(node, Input::ClusterLink { up: false });
        }
        for _ in 0..=ttl {
            self.tick();
            self.drain();
        }
        // A clean session sent away ends with its subscriptions; a persistent one stays.
        for &i in &clients {
            if let Some(c) = self.clients.get_mut(i)
                && !matches!(c.kind, Kind::Mover | Kind::Expirer | Kind::Keeper)
                && !c.up
            {
                c.cleared = true;
            }
        }
        let during = self.add_client_quiet(Kind::Prober, node, true);
        self.drain();
        self.heal();
        self.drain();
        let after = self.add_client_quiet(Kind::Prober, node, false);
        self.drain();
        self.long_cut = Some(LongCut {
            node,
            clients,
            during,
            after,
        });
    }

    // ----- the checkers -------------------------------------------------------------------

    fn outcome(mut self) -> ClusterOutcome {
        let mut violations = std::mem::take(&mut self.problems);
        self.check_c1(&mut violations);
        self.check_c2(&mut violations);
        self.check_c3(&mut violations);
        self.check_c4(&mut violations);
        self.check_c5(&mut violations);
        self.check_c6(&mut violations);
        self.check_c7(&mut violations);
        self.check_c8(&mut violations);
        self.check_c9(&mut violations);
        self.check_c10(&mut violations);
        self.check_c11(&mut violations);
        self.check_c12(&mut violations);
        self.check_c13(&mut violations);
        self.check_c14(&mut violations);
        let deliveries = self
            .clients
            .iter()
            .map(|c| c.got.iter().filter(|g| !g.retain).count() as u64)
            .sum();
        ClusterOutcome {
            seed: self.seed,
            nodes: self.nodes.len(),
            partitioned: self.partitioned,
            restarted: self.restarted,
            hash: self.hash.finish(),
            messages: self.sent.len() as u64,
            deliveries,
            copies: self.engine.copies,
            retained_writes: self.engine.bucket.len() as u64,
            refusals: self.refusals,
            moves: self
                .clients
                .iter()
                .filter(|c| c.kind == Kind::Mover)
                .map(|c| c.roams as u64)
                .sum(),
            caught_up: self.engine.caught_up,
            moved_qos2: self
                .clients
                .iter()
                .filter(|c| c.kind == Kind::Mover && c.roams > 0)
                .map(|c| c.got.iter().filter(|g| g.qos == QoS::ExactlyOnce).count() as u64)
                .sum(),
            listed: self.audit.as_ref().map_or(0, |a| a.want.len() as u64),
            sent_away: self.long_cut.as_ref().map_or(0, |c| c.clients.len() as u64),
            ended_resumed: self
                .ended
                .as_ref()
                .map_or(0, |e| u64::from(e.present == Some(true))),
            ended_expired: self
                .ended
                .as_ref()
                .map_or(0, |e| u64::from(e.present == Some(false))),
            violations,
            log: self.log.unwrap_or_default(),
        }
    }

    /// The publishes matching `matches`, as a multiset of (topic, payload).
    fn expected(&self, matches: impl Fn(&Sent) -> bool) -> BTreeMap<(String, Bytes), i64> {
        let mut m = BTreeMap::new();
        for s in &self.sent {
            if matches(s) {
                *m.entry((s.topic.clone(), s.payload.clone())).or_insert(0) += 1;
            }
        }
        m
    }

    /// Differences between what was expected and what came, at most a few.
    fn compare(
        name: &str,
        who: &str,
        mut want: BTreeMap<(String, Bytes), i64>,
        got: &[&Got],
        out: &mut Vec<String>,
    ) {
        for g in got {
            *want
                .entry((g.topic.clone(), g.payload.clone()))
                .or_insert(0) -= 1;
        }
        let bad: Vec<String> = want
            .iter()
            .filter(|(_, n)| **n != 0)
            .take(4)
            .map(|((t, p), n)| {
                if *n > 0 {
                    format!("missing {n}x {t} {p:?}")
                } else {
                    format!("extra {}x {t} {p:?}", -n)
                }
            })
            .collect();
        if !bad.is_empty() {
            out.push(format!("{name} {who}: {}", bad.join("; ")));
        }
    }

    /// C1: each stable client gets every message its plain filters match exactly once, and
    /// nothing else; a churning client gets none it never asked for, and a message at most
    /// once per filter it ever held that matches it: while a client changes its filters, a
    /// message on its way may come once through the old way in and once through the new
    /// (MQTT 5 §3.3.4 allows a copy per matching subscription).
    fn check_c1(&self, out: &mut Vec<String>) {
        for (idx, c) in self.clients.iter().enumerate() {
            let live: Vec<&Got> = c.got.iter().filter(|g| !g.retain).collect();
            match c.kind {
                Kind::Stable => {
                    let want = self.expected(|s| {
                        c.filters.iter().any(|(f, (_, no_local))| {
                            tidemq_core::topic::matches(f, &s.topic)
                                && !(*no_local && s.publisher == idx)
                        })
                    });
                    let who = format!("client {idx} on node {} ({:?})", c.node, c.filters);
                    Self::compare("C1", &who, want, &live, out);
                }
                Kind::Churn => {
                    let mut seen: BTreeMap<Bytes, usize> = BTreeMap::new();
                    for g in &live {
                        let ways = c
                            .ever
                            .iter()
                            .filter(|f| tidemq_core::topic::matches(f, &g.topic))
                            .count();
                        if ways == 0 {
                            out.push(format!("C1 client {idx} got {} unasked", g.topic));
                        }
                        if g.payload.is_empty() {
                            continue;
                        }
                        let n = seen.entry(g.payload.clone()).or_default();
                        *n += 1;
                        // A session per node it roamed to may each take a copy.
                        if *n > ways.max(1) * (1 + c.roams) {
                            out.push(format!(
                                "C1 client {idx} got {:?} {n} times, more than its {ways} matching filters",
                                g.payload
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// C2: each message whose topic a share group's filter matches reaches exactly one of
    /// its members, cluster-wide.
    fn check_c2(&self, out: &mut Vec<String>) {
        for (g, (name, filter)) in self.groups.iter().enumerate() {
            let got: Vec<&Got> = self
                .clients
                .iter()
                .filter(|c| c.kind == Kind::Member(g))
                .flat_map(|c| c.got.iter().filter(|m| !m.retain))
                .collect();
            // Members a full node refused are not in the group; with none left it gets nothing.
            let held = self
                .clients
                .iter()
                .any(|c| c.kind == Kind::Member(g) && !c.shared.is_empty());
            let want = self.expected(|s| held && tidemq_core::topic::matches(filter, &s.topic));
            let who = format!("group {g} $share/{name}/{filter}");
            Self::compare("C2", &who, want, &got, out);
        }
    }

    /// C3: every node's fresh `#` subscriber gets the bucket's last value per topic.
    fn check_c3(&self, out: &mut Vec<String>) {
        let mut want: BTreeMap<&str, Option<Bytes>> = BTreeMap::new();
        for (key, value, _) in &self.engine.bucket {
            let payload = value
                .as_ref()
                .and_then(|v| Envelope::decode(v.clone()).ok())
                .map(|e| e.payload)
                .filter(|p| !p.is_empty());
            want.insert(key.as_str(), payload);
        }
        let want: BTreeMap<String, Bytes> = want
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect();
        for c in self.clients.iter().filter(|c| c.kind == Kind::Auditor) {
            let mut got = BTreeMap::new();
            for g in c.got.iter().filter(|g| g.retain) {
                let Ok(key) = topic_key(&g.topic, MAX_SUBJECT) else {
                    out.push(format!("C3 node {}: unmappable topic {}", c.node, g.topic));
                    continue;
                };
                if got.insert(key, g.payload.clone()).is_some() {
                    out.push(format!("C3 node {}: {} retained twice", c.node, g.topic));
                }
            }
            if got != want {
                let diff: Vec<String> = want
                    .iter()
                    .filter(|(k, v)| got.get(*k) != Some(v))
                    .map(|(k, v)| format!("{k}: want {v:?} got {:?}", got.get(k)))
                    .chain(
                        got.iter()
                            .filter(|(k, _)| !want.contains_key(*k))
                            .map(|(k, v)| format!("{k}: want none got {v:?}")),
                    )
                    .take(4)
                    .collect();
                out.push(format!("C3 node {}: {}", c.node, diff.join("; ")));
            }
        }
    }

    /// C4: per (publisher, subscriber, topic), deliveries come in publish order. (K1: a node
    /// that routed the first copy it saw let a newer NATS subscription's copy overtake an
    /// older one's; a session now takes copies through its lowest-numbered filter only.)
    ///
    /// Clients that change their filters are not held to it: a message on its way may reach
    /// them through a filter they dropped and took again, and MQTT orders what one
    /// subscription carries.
    fn check_c4(&self, out: &mut Vec<String>) {
        for (idx, c) in self.clients.iter().enumerate() {
            // A churning client's clean sessions start afresh on each node.
            if c.kind == Kind::Churn {
                continue;
            }
            // A moved session may get a message again (QoS 1, from its cursor on): each
            // message's first arrival is in order, what its catch-up read brings before what
            // the new node routes meanwhile. Its QoS 0 messages (live, at most once) may be
            // overtaken across a move by a copy still on its way to the node it returns to.
            let mut seen: BTreeSet<&Bytes> = BTreeSet::new();
            // Order holds per publisher, node and QoS (QoS 0 goes live, QoS 1/2 through the
            // stream): one that roamed has two paths. MQTT orders per topic and delivered QoS
            // (a QoS 2 PUBLISH to a persistent session waits for its record, QoS 1 does not).
            let from: BTreeMap<&Bytes, Path> = self
                .sent
                .iter()
                .map(|s| (&s.payload, (s.node, s.qos == QoS::AtMostOnce)))
                .collect();
            let mut last: BTreeMap<(usize, Path, QoS, &str), (u64, &Got)> = BTreeMap::new();
            for g in c.got.iter().filter(|g| !g.retain) {
                if c.kind == Kind::Mover && !seen.insert(&g.payload) {
                    continue;
                }
                let Some((publisher, seq)) = tag(&g.payload) else {
                    continue;
                };
                // A share group takes QoS 1/2 live from the node that routed the message: a
                // publisher that moved has its messages routed by two nodes, with no order
                // between the two nodes' live copies (docs/cluster.md, "Routing").
                let moved = self
                    .clients
                    .get(publisher)
                    .is_some_and(|p| p.kind == Kind::Mover && p.roams > 0);
                if matches!(c.kind, Kind::Member(_)) && moved {
                    continue;
                }
                let node = from.get(&g.payload).copied().unwrap_or((usize::MAX, false));
                if c.kind == Kind::Mover && node.1 {
                    continue;
                }
                let key = (publisher, node, g.qos, g.topic.as_str());
                let Some((prev, early)) = last.insert(key, (seq, g)) else {
                    continue;
                };
                if prev < seq {
                    continue;
                }
                let line = format!(
                    "C4 client {idx} ({:?}) on node {}: from client {publisher} on {} seq {seq} after {prev} (via {:?}, then {:?})",
                    c.kind, c.node, g.topic, early.via, g.via
                );
                out.push(line);
            }
        }
    }

    /// C9: a persistent session that moves between nodes loses nothing: every QoS 1 message
    /// its filters (held throughout) match reaches it at least once, wherever it was when
    /// the message was published (QoS 1 allows a message again after a move).
    fn check_c9(&self, out: &mut Vec<String>) {
        for (idx, c) in self.clients.iter().enumerate() {
            if c.kind != Kind::Mover {
                continue;
            }
            let got: BTreeSet<&Bytes> = c.got.iter().map(|g| &g.payload).collect();
            let missing: Vec<&Sent> = self
                .sent
                .iter()
                .filter(|s| s.qos != QoS::AtMostOnce && !got.contains(&s.payload))
                .filter(|s| {
                    c.filters
                        .keys()
                        .any(|f| tidemq_core::topic::matches(f, &s.topic))
                })
                .collect();
            if let Some(s) = missing.first() {
                out.push(format!(
                    "C9 client {idx} (moved {} times, now on node {}, filters {:?}) lost {} of its QoS 1 messages, first {:?} on {} from client {} on node {}",
                    c.roams,
                    c.node,
                    c.filters.keys().collect::<Vec<_>>(),
                    missing.len(),
                    s.payload,
                    s.topic,
                    s.publisher,
                    s.node
                ));
            }
        }
    }

    /// C12: a persistent session that moves between nodes gets each QoS 2 message once: its
    /// client (which, like any, takes a PUBLISH again with a packet id it holds as the same
    /// message) never sees one twice, wherever the session was when it went out.
    fn check_c12(&self, out: &mut Vec<String>) {
        for (idx, c) in self.clients.iter().enumerate() {
            if c.kind != Kind::Mover {
                continue;
            }
            let mut seen: BTreeMap<&Bytes, &Got> = BTreeMap::new();
            // An empty payload (a retained message cleared) is not one message.
            let live = c.got.iter().filter(|g| !g.retain && !g.payload.is_empty());
            for g in live.filter(|g| g.qos == QoS::ExactlyOnce) {
                if let Some(first) = seen.insert(&g.payload, g) {
                    out.push(format!(
                        "C12 client {idx} (moved {} times) got QoS 2 message {:?} on {} twice: on node {} at {}, again on node {} at {}",
                        c.roams, g.payload, g.topic, first.node, first.at, g.node, g.at
                    ));
                }
            }
        }
    }

    /// C6: a delivery is the message as sent: QoS the lower of the published one and the
    /// highest granted by the matching subscriptions, and to v5 subscribers the v5 properties.
    fn check_c6(&self, out: &mut Vec<String>) {
        let sent: BTreeMap<&Bytes, &Sent> = self
            .sent
            .iter()
            .filter(|s| !s.payload.is_empty())
            .map(|s| (&s.payload, s))
            .collect();
        for (idx, c) in self.clients.iter().enumerate() {
            for g in c.got.iter().filter(|g| !g.retain) {
                let Some(s) = sent.get(&g.payload) else {
                    continue;
                };
                let granted = match c.kind {
                    Kind::Stable => c
                        .filters
                        .iter()
                        .filter(|(f, (_, no_local))| {
                            tidemq_core::topic::matches(f, &s.topic)
                                && !(*no_local && s.publisher == idx)
                        })
                        .map(|(_, (q, _))| *q)
                        .max(),
                    Kind::Member(_) => c.shared.values().copied().max(),
                    // Filters that changed while messages flowed: no one answer.
                    _ => None,
                };
                if let Some(granted) = granted
                    && g.qos != s.qos.min(granted)
                {
                    out.push(format!(
                        "C6 client {idx}: {:?} at {:?}, published at {:?}, granted {granted:?}",
                        g.payload, g.qos, s.qos
                    ));
                }
                let (a, b) = (&g.properties, &s.properties);
                let same = a.user_properties == b.user_properties
                    && a.content_type == b.content_type
                    && a.response_topic == b.response_topic
                    && a.correlation_data == b.correlation_data
                    && a.payload_format_indicator == b.payload_format_indicator;
                if c.v5 && !same {
                    out.push(format!(
                        "C6 client {idx}: {:?} properties {a:?}, sent {b:?}",
                        g.payload
                    ));
                }
            }
        }
    }

    /// C7: read your writes — once a node took a client's retained message, a new
    /// subscriber on that node gets it or a later write to the bucket, never an older one.
    ///
    /// (K3: a node stored its clients' retained messages at once, then its watch replayed the
    /// bucket's older entries over them; a node now passes over other writes of a topic while
    /// its own are on their way.)
    fn check_c7(&self, out: &mut Vec<String>) {
        let pos: BTreeMap<Bytes, usize> = self
            .engine
            .bucket
            .iter()
            .enumerate()
            .filter_map(|(i, (_, v, _))| {
                let e = Envelope::decode(v.clone()?).ok()?;
                // Deletions (no payload) are alike: C3 judges them.
                (!e.payload.is_empty()).then_some((e.payload, i))
            })
            .collect();
        for (idx, c) in self.clients.iter().enumerate() {
            for g in c.got.iter().filter(|g| g.retain && !g.payload.is_empty()) {
                let since = self.started_at.get(g.node).copied().unwrap_or(0);
                let Some(pw) = pos.get(&g.payload) else {
                    continue;
                };
                let newer = self.sent.iter().find(|s| {
                    s.retain
                        && s.node == g.node
                        && s.at >= since
                        && s.at < g.at
                        && s.topic == g.topic
                        && pos.get(&s.payload).is_some_and(|pv| pv > pw)
                });
                if let Some(s) = newer {
                    out.push(format!(
                        "C7 client {idx} on node {} at {}: retained {} {:?}, older than {:?} taken there at {}",
                        g.node, g.at, g.topic, g.payload, s.payload, s.at
                    ));
                }
            }
        }
    }

    /// C8: one owner per client id. Once drained, every connection a client left open on
    /// another node has been closed by that node.
    fn check_c8(&self, out: &mut Vec<String>) {
        for r in &self.roamed {
            if !self.closed.contains(&r.conn) {
                out.push(format!(
                    "C8 client {}'s connection {} on node {} still open after it connected \
                     elsewhere",
                    r.client, r.conn, r.node
                ));
            }
        }
    }

    /// C11: a node without NATS for longer than `node_ttl` sent every client away (v5
    /// DISCONNECT 0x9C, 3.1.1 closed), refused a CONNECT meanwhile (0x9C / 3), and accepted
    /// one once NATS was back.
    /// C13: a session whose node's start ended under it (no disconnect time in its record)
    /// is resumed within its expiry counted from that end, and not resumed once it has passed
    /// by more than the time the others take to see the end (a heartbeat interval).
    fn check_c13(&self, out: &mut Vec<String>) {
        let Some(e) = &self.ended else {
            return;
        };
        let Some(ttl) = self.node_ttl(e.node) else {
            return;
        };
        let expiry_ms = u64::from(EXPIRER_EXPIRY_S) * 1000;
        let want = if e.away_ms < expiry_ms {
            Some(true)
        } else if e.away_ms > expiry_ms + ttl / 3 {
            Some(false)
        } else {
            None
        };
        if want.is_some() && e.present != want {
            out.push(format!(
                "C13 client {} back on node {} {} ms after node {} restarted: session present {:?}, want {want:?}",
                e.client, e.back_on, e.away_ms, e.node, e.present
            ));
        }
    }

    /// C14: the reaper deleted the record of the session that expired with its node's start
    /// and never came back, and left the one with an hour left and that of the client back.
    fn check_c14(&self, out: &mut Vec<String>) {
        let Some(e) = &self.ended else {
            return;
        };
        let has_record = |idx: usize| {
            let key = format!("c{idx}");
            self.engine.sessions.get(&key).is_some_and(|(value, _)| {
                matches!(record::parse_value(value, &key), (_, Some(Ok(_))))
            })
        };
        if has_record(e.orphan) {
            out.push(format!(
                "C14 the record of client {} (expired with node {}'s start) was not reaped",
                e.orphan, e.node
            ));
        }
        // Back on a live node: that node's now.
        if !has_record(e.client) {
            out.push(format!(
                "C14 the record of client {}, back on node {}, is gone",
                e.client, e.back_on
            ));
        }
        if !has_record(e.keeper) {
            out.push(format!(
                "C14 the record of client {} (an hour's expiry, node {} restarted) is gone",
                e.keeper, e.node
            ));
        }
    }

    /// C15: the entry of every connected client names its node: the reaper deleted no
    /// live claim (checked after it has scanned, in the phase that waits for it).
    fn check_c15(&mut self) {
        for (i, c) in self.clients.iter().enumerate() {
            if !c.up || c.node == usize::MAX {
                continue;
            }
            let key = format!("c{i}");
            let owner = self.engine.sessions.get(&key).and_then(|(v, _)| {
                tidemq_core::cluster::owner::parse_claim(v).map(|(n, _)| n.to_owned())
            });
            if owner.as_deref() != Some(format!("n{}", c.node).as_str()) {
                self.problems.push(format!(
                    "C15 client {i} is up on node {} but its entry names {owner:?}",
                    c.node
                ));
            }
        }
    }

    fn check_c11(&self, out: &mut Vec<String>) {
        let Some(cut) = &self.long_cut else {
            return;
        };
        let n = cut.node;
        for &i in &cut.clients {
            let Some(c) = self.clients.get(i) else {
                continue;
            };
            // 3.1.1 has no server DISCONNECT: closed without one.
            let sent_away = if c.v5 {
                c.away == Some(0x9C)
            } else {
                c.closed_away && c.away.is_none()
            };
            if !sent_away {
                out.push(format!(
                    "C11 node {n}: client {i} not sent away (v5 {}, reason {:?}, closed {})",
                    c.v5, c.away, c.closed_away
                ));
            }
        }
        if let Some(c) = self.clients.get(cut.during) {
            let want = if c.v5 { 0x9C } else { 3 };
            if c.up || c.away != Some(want) {
                out.push(format!(
                    "C11 node {n}: a CONNECT without NATS got {:?} (up {})",
                    c.away, c.up
                ));
            }
        }
        if self.clients.get(cut.after).is_some_and(|c| !c.up) {
            out.push(format!(
                "C11 node {n}: a CONNECT once NATS was back was not accepted"
            ));
        }
    }

    /// C10: a node's cluster-wide client list names every connected client of every node
    /// with the node that holds it, once, and every node answered.
    fn check_c10(&self, out: &mut Vec<String>) {
        let Some(audit) = &self.audit else {
            return;
        };
        let n = audit.node;
        let Some((status, body)) = self.replies.get(&audit.req_id) else {
            out.push(format!("C10 node {n}: no answer to the client list"));
            return;
        };
        let doc = std::str::from_utf8(body).ok().and_then(crate::json::parse);
        let Some(doc) = doc.filter(|_| *status == 200) else {
            out.push(format!("C10 node {n}: client list answered {status}"));
            return;
        };
        let text = |j: Option<&Json>| match j {
            Some(Json::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let mut got = BTreeSet::new();
        if let Some(Json::Arr(items)) = doc.get("data") {
            for item in items {
                let pair = (text(item.get("client_id")), text(item.get("node")));
                let (Some(id), Some(node)) = pair else {
                    out.push(format!("C10 node {n}: item without client_id or node"));
                    continue;
                };
                if !got.insert((id.clone(), node)) {
                    out.push(format!("C10 node {n}: {id} listed twice"));
                }
            }
        }
        let missing: Vec<_> = audit.want.difference(&got).take(4).collect();
        let unasked: Vec<_> = got.difference(&audit.want).take(4).collect();
        if !missing.is_empty() || !unasked.is_empty() {
            out.push(format!(
                "C10 node {n}: missing {missing:?}, not connected {unasked:?}"
            ));
        }
        let silent = doc.get("cluster").and_then(|c| c.get("missing"));
        if !matches!(silent, Some(Json::Arr(a)) if a.is_empty()) {
            out.push(format!("C10 node {n}: nodes did not answer: {silent:?}"));
        }
    }

    /// C5: once drained, the engine holds for each node exactly the NATS subscriptions its
    /// sessions' distinct filters need: none left behind by an unsubscribe, none missing.
    fn check_c5(&self, out: &mut Vec<String>) {
        for n in 0..self.nodes.len() {
            let mut raws = BTreeSet::new();
            for c in self.clients.iter().filter(|c| c.node == n && !c.cleared) {
                raws.extend(c.filters.keys().cloned());
                raws.extend(c.shared.keys().cloned());
            }
            let mut want: BTreeMap<(String, Option<String>), i64> = BTreeMap::new();
            for raw in &raws {
                match subscription(DEFAULT_PREFIX, Space::Live, raw, MAX_SUBJECT) {
                    Ok(sub) => {
                        for subject in sub.subjects {
                            *want.entry((subject, sub.queue.clone())).or_insert(0) += 1;
                        }
                    }
                    Err(e) => out.push(format!("C5 node {n}: no subjects for {raw}: {e:?}")),
                }
            }
            for ((node, sid), held) in &self.engine.subs {
                // The node's kick, heartbeat and admin subjects are its own, not a session's.
                if *node == n && !node_own(*sid) {
                    *want.entry(held.clone()).or_insert(0) -= 1;
                }
            }
            let bad: Vec<String> = want
                .iter()
                .filter(|(_, k)| **k != 0)
                .take(4)
                .map(|((subject, queue), k)| {
                    let what = if *k > 0 { "missing" } else { "left behind" };
                    format!("{what} {}x {subject} {queue:?}", k.abs())
                })
                .collect();
            if !bad.is_empty() {
                out.push(format!("C5 node {n}: {}", bad.join("; ")));
            }
        }
    }
}

/// K1 (fixed), scripted on two nodes: client X on node 1 holds `a/+`; client P on node 0
/// publishes m1 then m2 on `a/b` (QoS 0, the live path); between the two the engine makes node 1's second
/// subscription, for client Y's `a/b`, so m2 is queued on both of node 1's subscriptions and
/// m1 on the older one only. The engine serves the newer subscription first. Returns the
/// payloads X got, in order (publish order is `P:0:1`, `P:0:2`).
pub fn overtaking_subscription() -> Vec<String> {
    let mut w = ClusterWorld::new(0, None);
    let p = w.add_client(Kind::Stable, 0);
    let x = w.add_client(Kind::Stable, 1);
    let y = w.add_client(Kind::Stable, 1);
    w.subscribe(x, "a/+", QoS::AtMostOnce);
    w.drain();
    w.publishing = true;
    // QoS 0: QoS 1/2 go through the node feed now, one ordered read per node.
    w.publish_to(p, "a/b".to_owned(), QoS::AtMostOnce, false, false);
    w.take_op(0, 0);
    w.subscribe(y, "a/b", QoS::AtMostOnce);
    w.take_op(1, 0);
    w.publish_to(p, "a/b".to_owned(), QoS::AtMostOnce, false, false);
    w.take_op(0, 0);
    let fifos: Vec<FifoKey> = w.engine.fifos.keys().copied().collect();
    // Newest subscription first: sids grow.
    for key in fifos.into_iter().rev() {
        while w.engine.fifos.get(&key).is_some_and(|f| !f.is_empty()) {
            w.deliver(key);
        }
    }
    w.payloads_of(x)
}

/// K2 (fixed), scripted on two nodes: a v5 client on node 0 publishes a retained message
/// with a message expiry interval of 5 s; 10 s later node 1 restarts and its new watch replays
/// the bucket, whose value still says 5 s, so node 1 holds the message for 5 s more while
/// node 0 has expired it. Returns the retained topics a fresh subscriber gets on each node.
pub fn expired_retained_after_restart() -> Vec<Vec<String>> {
    let mut w = ClusterWorld::new(0, None);
    let p = w.add_client(Kind::Stable, 0);
    if let Some(c) = w.clients.get_mut(p) {
        c.v5 = true;
    }
    w.connect(p);
    let properties = Properties {
        message_expiry_interval: Some(5),
        ..Properties::default()
    };
    w.send(
        p,
        &Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "r".to_owned(),
            packet_id: Some(1),
            properties,
            payload: Bytes::from_static(b"P:0:1"),
        }),
    );
    w.drain();
    w.now += 10_000;
    w.tick();
    w.restart(1, true);
    w.drain();
    (0..2)
        .map(|node| {
            let idx = w.add_client(Kind::Auditor, node);
            w.subscribe(idx, "#", QoS::AtLeastOnce);
            w.clients
                .get(idx)
                .map(|c| c.got.iter().map(|g| g.topic.clone()).collect())
                .unwrap_or_default()
        })
        .collect()
}

/// K3 (fixed), scripted on two nodes: client B on node 1 writes retained `r`, which the
/// bucket takes first; then client W on node 0 writes `r`, which node 0 stores at once and the
/// bucket takes second. Node 0's watch then hands over B's older write, and a new subscriber on
/// node 0 gets it although node 0 took W's later one. Returns what that subscriber got.
pub fn retained_read_after_own_write() -> Vec<String> {
    let mut w = ClusterWorld::new(0, None);
    let writer = w.add_client(Kind::Stable, 0);
    let other = w.add_client(Kind::Stable, 1);
    w.publish_to(other, "r".to_owned(), QoS::AtLeastOnce, true, false);
    w.take_op(1, 2);
    w.publish_to(writer, "r".to_owned(), QoS::AtLeastOnce, true, false);
    w.take_op(0, 2);
    w.watch(0);
    let reader = w.add_client(Kind::Stable, 0);
    w.subscribe(reader, "r", QoS::AtLeastOnce);
    w.payloads_of(reader)
}

/// Runs one seed and checks it.
pub fn run_cluster_seed(seed: u64, mutation: Option<ClusterMutation>) -> ClusterOutcome {
    ClusterWorld::new(seed, mutation).run()
}
