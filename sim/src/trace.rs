//! The typed trace of a run, and its hash.

use std::hash::{Hash, Hasher};

/// What a payload says about where it came from. Publishers write `M:<actor>:<seq>` (plain),
/// `R:<actor>:<seq>` (retained); wills carry `W:<actor>:<conn>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    Msg {
        publisher: usize,
        seq: u64,
    },
    Retained {
        publisher: usize,
        seq: u64,
    },
    Will {
        actor: usize,
        conn: u64,
    },
    /// A hostile remote's message (`H:<conn>:<n>`, bridge worlds).
    Hostile {
        conn: u64,
        n: u64,
    },
    /// Zero-length payload (clears a retained message).
    Empty,
    /// Anything else (`$SYS` events, garbage).
    Other,
}

impl Tag {
    pub fn parse(payload: &[u8]) -> Tag {
        if payload.is_empty() {
            return Tag::Empty;
        }
        let Ok(s) = std::str::from_utf8(payload) else {
            return Tag::Other;
        };
        let mut it = s.split(':');
        let (Some(kind), Some(a), Some(b)) = (it.next(), it.next(), it.next()) else {
            return Tag::Other;
        };
        let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<u64>()) else {
            return Tag::Other;
        };
        match kind {
            "M" => Tag::Msg {
                publisher: a,
                seq: b,
            },
            "R" => Tag::Retained {
                publisher: a,
                seq: b,
            },
            "W" => Tag::Will { actor: a, conn: b },
            "H" => Tag::Hostile {
                conn: a as u64,
                n: b,
            },
            _ => Tag::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// A PUBLISH as seen on the wire, either direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pub {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub pid: Option<u16>,
    pub tag: Tag,
    /// v5 message expiry interval, seconds.
    pub expiry: Option<u32>,
}

/// A whole packet the broker read from a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Got {
    Connect {
        client_id: String,
        clean_start: bool,
        v5: bool,
        /// Requested session expiry in seconds (`u32::MAX` = never; 3.1.1 persistent).
        expiry: u32,
        keep_alive: u16,
        /// Will delay (seconds) and tag.
        will: Option<(u32, Tag)>,
    },
    Publish(Pub),
    Subscribe(Vec<(String, u8)>),
    Unsubscribe(Vec<String>),
    Disconnect {
        reason: u8,
    },
    Ack(AckKind, u16),
    Ping,
    Other,
}

/// A whole packet the broker wrote to a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Sent {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish(Pub),
    Ack(AckKind, u16, u8),
    SubAck(Vec<u8>),
    /// The v5 reason codes (none for 3.1.1).
    UnsubAck(Vec<u8>),
    Disconnect {
        reason: u8,
    },
    PingResp,
    Other,
}

/// One message handed to a client application (or seen by the client library).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Delivery {
    pub actor: usize,
    pub conn: u64,
    pub publish: Pub,
    /// Not a repeat of a QoS 2 packet id the client still holds (its application sees it).
    pub first: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Ev {
    /// The broker (re)started: every earlier session and connection is gone.
    BrokerStart {
        incarnation: u32,
    },
    Heal,
    Quiesced,
    ConnOpened {
        conn: u64,
        actor: usize,
    },
    BrokerGot {
        conn: u64,
        actor: usize,
        pkt: Got,
    },
    BrokerSent {
        conn: u64,
        actor: usize,
        pkt: Sent,
    },
    /// The broker asked for this connection's credentials to be checked.
    AuthAsked {
        conn: u64,
    },
    /// The sim answered that check: 0 allow, 1 deny, 2 busy, 3 allow as superuser.
    AuthAnswered {
        conn: u64,
        outcome: u8,
    },
    /// The broker's side of a connection ended (its Close, or our Closed input).
    BrokerClosed {
        conn: u64,
        by_broker: bool,
    },
    /// Bytes the reference decoder (or alias check) rejects reached the broker.
    GarbageFed {
        conn: u64,
        code: u8,
        notify: bool,
    },
    Delivered(Delivery),
    ClientAck {
        actor: usize,
        conn: u64,
        kind: AckKind,
        pid: u16,
    },
    /// The client saw its connection end.
    ClientLost {
        actor: usize,
        conn: u64,
    },
    Dropped {
        client_id: String,
        count: u64,
        why: String,
    },
    SessionExpired {
        client_id: String,
    },
    Fault(String),
    /// Broker counters against what the simulator knows.
    Stats {
        connections: u64,
        open_conns: u64,
        sessions: u64,
        retained: u64,
    },
    /// An offline session ended early to bring memory back under the budget.
    SessionShed {
        client_id: String,
    },
    /// What the broker holds for peers, past its bound.
    MemoryOver {
        used: u64,
        bound: u64,
    },
    /// S25's hostile bridge remote sent a message on this topic (the bridge brings it in).
    RemotePublished {
        topic: String,
    },
    /// A write backlog the simulator holds for a connection, against its bound.
    Backlog {
        conn: u64,
        bytes: u64,
        bound: u64,
    },
    /// The end-of-run retained audit: one retained message seen by a fresh subscriber.
    RetainedSeen {
        topic: String,
        tag: Tag,
    },
    /// The broker kept silent past the keepalive limit.
    KeepAliveMissed {
        conn: u64,
        silent_ms: u64,
        limit_ms: u64,
    },
    /// The broker closed for keepalive before the limit.
    KeepAliveEarly {
        conn: u64,
        silent_ms: u64,
        limit_ms: u64,
    },
    /// A simulation step limit or a quiescence timeout was hit.
    Stuck(String),
    /// The core panicked.
    Panic(String),

    // ----- bridge worlds (S13-S15): `broker` 0 is the local broker, 1 the remote ------
    /// A broker asked for a bridge socket.
    BridgeConnect {
        broker: u8,
        conn: u64,
    },
    BridgeUp {
        broker: u8,
    },
    BridgeDown {
        broker: u8,
        detail: String,
        retry_in_ms: u64,
    },
    /// A PUBLISH written on a bridge link: by the bridge of `owner` (`up`), or towards it.
    LinkPublish {
        owner: u8,
        up: bool,
        topic: String,
        tag: Tag,
        dup: bool,
    },
    /// A SUBACK the bridge of `owner` received, with its reason codes.
    LinkSubAck {
        owner: u8,
        reasons: Vec<u8>,
    },
    /// A client's QoS 1 PUBLISH was acknowledged by its broker: the broker accepted it.
    PubAcked {
        actor: usize,
        broker: u8,
        topic: String,
        tag: Tag,
    },
    /// A bridge (or its remote session) dropped messages: `broker`'s MessagesDropped.
    BridgeDropped {
        broker: u8,
        client_id: String,
        count: u64,
        why: String,
    },
    /// End of a bridge run: a broker's own counters.
    BrokerStats {
        broker: u8,
        dropped: u64,
        backlog: u64,
    },

    // ----- admin plane (S20/S21) ---------------------------------------------------------
    /// An HTTP API request: `req` is the code the sim meant (0 for garbage), `seq` the seq
    /// it sent (if an integer), `auth_ok` whether the credentials match the config in force.
    AdminReq {
        req_id: u64,
        req: i64,
        seq: Option<i64>,
        auth_ok: bool,
    },
    /// An HTTP API v4 request: `read` when it changes nothing; `kick` names the client a
    /// `DELETE /clients/{id}` kicks. `auth_ok` as for [`Ev::AdminReq`].
    AdminV4Req {
        req_id: u64,
        method: String,
        target: String,
        auth_ok: bool,
        read: bool,
        kick: Option<String>,
    },
    AdminReply {
        req_id: u64,
        status: u16,
        body: String,
        challenge: bool,
    },
    /// The broker asked for a set-configuration to be written.
    AdminWrite {
        req_id: u64,
    },
    /// The sim answered that write.
    AdminWritten {
        req_id: u64,
        ok: bool,
    },
    AdminControl,
    /// A request head sent before its body (`Input::AdminAuthorize`), as the runtime does;
    /// `auth_ok` as for [`Ev::AdminReq`].
    AdminHead {
        req_id: u64,
        auth_ok: bool,
    },
    /// The broker let the head's body be read.
    AdminAuthorized {
        req_id: u64,
    },
    /// The simulated runtime finished re-reading the configuration for a req 10 restart.
    AdminRestarted {
        req_id: u64,
        ok: bool,
    },
    /// A configuration change was sent; `valid` by construction.
    ConfigSent {
        valid: bool,
    },
    /// The broker's verdict on a configuration (change or write).
    ConfigEvent {
        applied: bool,
    },

    // ----- persistence (S6/S7 with a store) -----------------------------------------------
    /// The broker handed records `upto - recs.len() + 1 ..= upto` to the store.
    Persist {
        upto: u64,
        recs: Vec<Rec>,
    },
    /// The store reported everything up to `upto` durable (`Input::PersistDone`).
    PersistDone {
        upto: u64,
    },
    /// The store failed (`Input::PersistFailed`): it reports nothing more this life.
    PersistFailed,
    /// The broker answered `Input::SnapshotRequest` with `records` records as of `upto`.
    SnapshotTaken {
        upto: u64,
        records: u64,
    },
    /// A snapshot reached the disk and replaced the journal up to `upto`.
    SnapshotStored {
        upto: u64,
    },
    /// P2: a snapshot's records do not rebuild the state its journal prefix rebuilds.
    SnapshotMismatch {
        upto: u64,
        detail: String,
    },
    /// The broker process died. `handed`: last record sequence number handed out; `done`:
    /// last one the broker was told (or, with `sync = none`, assumed) durable; `kept`: last
    /// one the store still holds (snapshot or journal prefix).
    Crash {
        power_loss: bool,
        handed: u64,
        done: u64,
        kept: u64,
    },
    /// What the new broker was restored from (after the store's own pruning), right after
    /// its `BrokerStart`.
    Restored {
        kept: u64,
        sessions: Vec<RestoredSession>,
        retained: Vec<(String, Tag)>,
    },
    /// The restored broker's own counts, right after `restore`.
    RestoreStats {
        sessions: u64,
        retained: u64,
    },
}

/// A summary of one [`tidemq_core::persist::Record`], enough for the checkers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rec {
    SessionPut {
        client_id: String,
        expiry: u32,
        disconnected: bool,
    },
    SessionDel {
        client_id: String,
    },
    SubPut {
        client_id: String,
        filter: String,
        qos: u8,
    },
    SubDel {
        client_id: String,
        filter: String,
    },
    MsgPut {
        id: u64,
        tag: Tag,
    },
    QueuePut {
        client_id: String,
        entry: u64,
        msg_id: u64,
        qos: u8,
    },
    OutState {
        client_id: String,
        entry: u64,
        pid: u16,
        released: bool,
        /// The delivery's QoS, from its `QueuePut` (0: unknown).
        qos: u8,
    },
    QueueDel {
        client_id: String,
        entry: u64,
    },
    InQos2Put {
        client_id: String,
        pid: u16,
    },
    InQos2Del {
        client_id: String,
        pid: u16,
    },
    RetainPut {
        topic: String,
        msg_id: u64,
    },
    RetainDel {
        topic: String,
    },
    Bridge,
}

impl Rec {
    pub fn of(r: &tidemq_core::persist::Record) -> Rec {
        use tidemq_core::persist::Record as R;
        match r {
            R::SessionPut {
                client_id,
                expiry_secs,
                disconnected_at_unix_ms,
                ..
            } => Rec::SessionPut {
                client_id: client_id.clone(),
                expiry: *expiry_secs,
                disconnected: disconnected_at_unix_ms.is_some(),
            },
            R::SessionDel { client_id } => Rec::SessionDel {
                client_id: client_id.clone(),
            },
            R::SubPut {
                client_id,
                filter,
                options,
                ..
            } => Rec::SubPut {
                client_id: client_id.clone(),
                filter: filter.clone(),
                qos: options & 3,
            },
            R::SubDel { client_id, filter } => Rec::SubDel {
                client_id: client_id.clone(),
                filter: filter.clone(),
            },
            R::MsgPut(m) => Rec::MsgPut {
                id: m.id,
                tag: Tag::parse(&m.payload),
            },
            R::QueuePut {
                client_id,
                entry,
                msg_id,
                qos,
                ..
            } => Rec::QueuePut {
                client_id: client_id.clone(),
                entry: *entry,
                msg_id: *msg_id,
                qos: *qos as u8,
            },
            R::OutState {
                client_id,
                entry,
                packet_id,
                released,
            } => Rec::OutState {
                client_id: client_id.clone(),
                entry: *entry,
                pid: *packet_id,
                released: *released,
                qos: 0,
            },
            R::QueueDel { client_id, entry } => Rec::QueueDel {
                client_id: client_id.clone(),
                entry: *entry,
            },
            R::InQos2Put {
                client_id,
                packet_id,
            } => Rec::InQos2Put {
                client_id: client_id.clone(),
                pid: *packet_id,
            },
            R::InQos2Del {
                client_id,
                packet_id,
            } => Rec::InQos2Del {
                client_id: client_id.clone(),
                pid: *packet_id,
            },
            R::RetainPut { topic, msg_id } => Rec::RetainPut {
                topic: topic.clone(),
                msg_id: *msg_id,
            },
            R::RetainDel { topic } => Rec::RetainDel {
                topic: topic.clone(),
            },
            R::BridgePut { .. } | R::BridgeDel { .. } => Rec::Bridge,
        }
    }

    /// Whether an acknowledgement of the input that produced it must wait for it
    /// (persistence-ops.md §1.7: deletes of finished deliveries, the disconnect time of a
    /// session and the packet id of a QoS 1 delivery are written lazily).
    pub fn gating(&self) -> bool {
        !matches!(
            self,
            Rec::QueueDel { .. }
                | Rec::SessionPut {
                    disconnected: true,
                    ..
                }
                | Rec::OutState { qos: 1, .. }
                | Rec::Bridge
        )
    }
}

/// One session as the store gave it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RestoredSession {
    pub client_id: String,
    pub expiry: u32,
    /// When the store says it lost its connection, sim milliseconds (`None`: connected).
    pub disconnected_at: Option<u64>,
    pub subs: Vec<(String, u8)>,
    pub awaiting_rel: Vec<u16>,
    /// Deliveries it holds (queued or in flight).
    pub queued: u64,
}

/// One recorded event: which input it belongs to, and when.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Entry {
    pub step: u64,
    pub at: u64,
    pub ev: Ev,
}

#[derive(Debug, Clone, Default)]
pub struct Trace {
    pub entries: Vec<Entry>,
    pub step: u64,
    pub now: u64,
}

impl Trace {
    pub fn push(&mut self, ev: Ev) {
        self.entries.push(Entry {
            step: self.step,
            at: self.now,
            ev,
        });
    }

    /// FNV-1a over the hashed events: equal traces give equal hashes on one build.
    pub fn hash(&self) -> u64 {
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        for e in &self.entries {
            e.hash(&mut h);
        }
        h.finish()
    }
}

/// FNV-1a: a stable hash for traces, the same on every platform and run.
pub(crate) struct Fnv(pub u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}
