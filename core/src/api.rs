//! The core's contract: what goes in ([`Input`]), what comes out ([`Output`], [`BrokerEvent`]),
//! and the two identifiers both sides share ([`Instant`], [`ConnId`]). Nothing here knows how
//! the broker works inside.

use bytes::Bytes;

use crate::admin;
use crate::codec::ReasonCode;
use crate::config::{Config, ConfigError};
use crate::persist;

/// A point on the core's monotonic time axis, in milliseconds from an arbitrary origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    pub fn plus_ms(self, ms: u64) -> Instant {
        Instant(self.0.saturating_add(ms))
    }

    pub fn plus_secs(self, secs: u64) -> Instant {
        self.plus_ms(secs.saturating_mul(1000))
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A network connection, numbered by the caller (the runtime or a simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// Everything that can happen to the broker. One input is one mutation.
#[derive(Debug, Clone)]
pub enum Input {
    /// A client connection was accepted. `peer` is its address as `ip:port`.
    Accepted { conn: ConnId, peer: String },
    /// The common name of the client certificate a TLS connection presented and the
    /// runtime verified; sent after `Accepted`, before any bytes. Used as the user name when
    /// `tls.use_identity_as_username` is on.
    PeerCertificate { conn: ConnId, identity: String },
    /// Bytes arrived on a connection, in any fragmentation.
    Received { conn: ConnId, bytes: Bytes },
    /// The connection's writer has put `bytes` more bytes of earlier [`Output::Transmit`]s on
    /// the wire; this is the core's flow control towards slow readers.
    Written { conn: ConnId, bytes: usize },
    /// The connection closed from the other side or failed.
    Closed { conn: ConnId },
    /// `now` reached `Broker::poll_timeout`.
    Timeout,
    /// The wall clock, in milliseconds since the Unix epoch, at `now`. Used only for
    /// timestamps shown to users.
    WallClock { unix_ms: u64 },
    /// Replace the configuration. Applied only if it validates; limits advertised to
    /// clients already connected stay as they were told.
    ConfigChange(Box<Config>),
    /// Stop: every connection is told (v5: DISCONNECT 0x8B) and closed.
    Shutdown,
    /// The head of an admin HTTP request, before its body is read: answered by
    /// [`Output::AdminAuthorized`] when the credentials are good, else by a 401
    /// [`Output::AdminReply`]. The runtime reads no body from a client it has not authorized.
    AdminAuthorize {
        req_id: u64,
        credentials: admin::Credentials,
    },
    /// An HTTP API V1 request: its body and what the client presented. Answered by
    /// [`Output::AdminReply`] with the same `req_id`.
    Admin {
        req_id: u64,
        credentials: admin::Credentials,
        body: Bytes,
    },
    /// An HTTP API v4 request (`/api/v4[/...]`): method, path and query as received (the
    /// path still percent-encoded), its body, and what the client presented. Answered by
    /// [`Output::AdminReply`] with the same `req_id`, from the state at this point in the
    /// input order.
    AdminV4 {
        req_id: u64,
        credentials: admin::Credentials,
        method: String,
        path: String,
        query: String,
        body: Bytes,
    },
    /// The process's resident memory and CPU use, sampled by the runtime every few seconds,
    /// for the v4 API's metrics. `cpu_percent` is the share of the machine's CPU time since
    /// the previous sample.
    ProcessStats { rss_bytes: u64, cpu_percent: f64 },
    /// `GET /metrics` on the scrape listener (`metrics.listen`), which asks for no
    /// credentials: answered by [`Output::AdminReply`] with the Prometheus text.
    MetricsScrape { req_id: u64 },
    /// The runtime's own connection counters (refusals by its limits), cumulative; sent
    /// with the process figures and before each metrics request.
    RuntimeCounters(crate::metrics::RuntimeConnCounters),
    /// The store thread's figures (commit durations, bytes, snapshots), cumulative; sent
    /// like [`Input::RuntimeCounters`].
    StoreFigures(crate::metrics::StoreFigures),
    /// The socket an [`Output::BridgeConnect`] asked for is open.
    BridgeConnected { conn: ConnId },
    /// The socket an [`Output::BridgeConnect`] asked for could not be opened.
    BridgeConnectFailed { conn: ConnId, error: String },
    /// The outcome of an [`Output::WriteConfig`].
    AdminConfigWritten {
        req_id: u64,
        result: Result<(), String>,
    },
    /// The outcome of an [`Output::Control`] restart: the configuration files were re-read
    /// and put in force, or what did not take effect.
    ControlDone {
        req_id: u64,
        result: Result<(), String>,
    },
    /// Every record of [`Output::Persist`] numbered up to `upto` is durable as the
    /// configured `persistence.sync` mode promises. Reported in order.
    PersistDone { upto: u64 },
    /// The store cannot keep records any more (a failed fsync is not retried): nothing
    /// waiting on it is released, and new work that needs it is refused.
    PersistFailed { error: String },
    /// The store's journal has grown: answer with [`Output::Snapshot`] of everything live.
    SnapshotRequest,
    /// The store's disk use (journal segments and snapshots), after a commit or snapshot.
    /// `refusing`: the writer refused records (past `persistence.max_disk` plus its slack,
    /// or the disk is full) and will keep refusing until an [`Output::Snapshot`] covers them;
    /// output waiting on them is released by that snapshot's [`Input::PersistDone`].
    StoreUsage { bytes: u64, refusing: bool },
    /// The answer to [`Output::Authenticate`] for this connection. One per request; an
    /// answer for a connection no longer waiting is ignored.
    AuthResult { conn: ConnId, outcome: AuthOutcome },
    /// The answer to an [`Output::Authorize`].
    AuthorizeResult {
        conn: ConnId,
        action: crate::acl::Action,
        topic: String,
        allow: bool,
    },
    /// Cluster mode: a message NATS delivered on the subscription [`Output::ClusterSubscribe`]
    /// made as `sid`, with the subject it was published to.
    ClusterMessage {
        sid: u64,
        subject: String,
        payload: Bytes,
    },
    /// Cluster mode: the answer to [`Output::ClusterDurable`] `token`: JetStream acknowledged
    /// the write at this stream sequence, or (`None`) did not within
    /// `cluster.publish_timeout` or refused it.
    ClusterDurableDone { token: u64, seq: Option<u64> },
    /// Cluster mode: the [`Output::ClusterRetain`] of `key` could not be written.
    ClusterRetainFailed { key: String },
    /// Cluster mode: the node's connection to NATS went down or came back. Down for
    /// `cluster.node_ttl`, the node closes its clients' connections (v5 DISCONNECT 0x9C, Use
    /// another server) and refuses CONNECTs until it is back.
    ClusterLink { up: bool },
    /// Cluster mode: the retained bucket's entry `key` changed (from the node's one watch of
    /// it, in the bucket's order): its new value, or `None` once deleted.
    ClusterRetained { key: String, value: Option<Bytes> },
    /// Cluster mode: a message of the durable stream, read by the node's feed (the whole
    /// stream from the node's start, in stream order, each once), with its sequence and
    /// subject.
    ClusterFeedMessage {
        seq: u64,
        subject: String,
        payload: Bytes,
    },
    /// Cluster mode: the node feed starts after the durable stream's message `seq` (its last
    /// when the feed opened): what came before counts as read.
    ClusterFeedStart { seq: u64 },
    /// Cluster mode: the answer to [`Output::ClusterRecord`] `token`.
    ClusterRecorded { token: u64, answer: RecordAnswer },
    /// Cluster mode: a message of the catch-up read [`Output::ClusterCatchUp`] `token`, in
    /// stream order.
    ClusterCatchUpMessage {
        token: u64,
        seq: u64,
        subject: String,
        payload: Bytes,
    },
    /// Cluster mode: the catch-up read `token` has read all it was asked for (`ok`), or
    /// stopped (the stream could not be read within `cluster.publish_timeout`).
    ClusterCatchUpDone { token: u64, ok: bool },
    /// Cluster mode: the answer to [`Output::ClusterLookup`] `token`: the entry's value and
    /// revision, `None` when the key holds none, or why the bucket could not be read within
    /// `cluster.publish_timeout`.
    ClusterLookedUp {
        token: u64,
        entry: Result<Option<(Bytes, u64)>, String>,
    },
    /// Cluster mode: the answer to [`Output::ClusterClaim`] `token`: the revision the claim
    /// was written at and the entry it replaced (its value and revision), or `revision: None`
    /// when it could not be written within `cluster.publish_timeout`.
    ClusterClaimed {
        token: u64,
        revision: Option<u64>,
        previous: Option<(Bytes, u64)>,
    },
    /// Cluster mode: entries of the sessions bucket for the scan [`Output::ClusterScan`]
    /// `token` (key, value, revision), at most [`SCAN_BATCH`] at once; `done` with the last
    /// (also when the bucket could not be read on).
    ClusterScanned {
        token: u64,
        entries: Vec<(String, Bytes, u64)>,
        done: bool,
    },
}

/// Most entries of the sessions bucket in one [`Input::ClusterScanned`].
pub const SCAN_BATCH: usize = 64;

/// The sessions bucket's answer to a record write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordAnswer {
    /// Written at this revision.
    Written(u64),
    /// Another node owns the entry now: the session here must end.
    Fenced,
    /// Not written (no answer within `cluster.publish_timeout`); tried again later.
    Failed,
}

/// A password on its way to be checked: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(pub Bytes);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// How a connection's credentials are to be checked ([`Output::Authenticate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// Against the password table (`auth.password`, `auth.password_file`).
    Password,
    /// The password table for the users it holds, `auth.http_auth` for the others.
    PasswordThenHttp,
}

/// The verdict on an [`Output::Authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Good credentials. A superuser is not subject to the ACL.
    Allow { superuser: bool },
    /// Wrong user name or password (v5 CONNACK 0x86, 3.1.1 return code 4).
    Deny,
    /// The checker could not take the request (v5 CONNACK 0x89, 3.1.1 return code 3).
    Busy,
}

/// What the broker asks its driver to do, or tells it.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Write these bytes to the connection, in order.
    Transmit { conn: ConnId, bytes: Bytes },
    /// Close the connection after the bytes already asked for are written. No
    /// [`Input::Closed`] is needed afterwards.
    Close { conn: ConnId },
    /// Something worth logging or counting.
    Event(BrokerEvent),
    /// The answer to [`Input::Admin`], [`Input::AdminV4`] or a refused
    /// [`Input::AdminAuthorize`]: HTTP status, body and its content type.
    AdminReply {
        req_id: u64,
        status: u16,
        body: Bytes,
        /// `application/json`, or the Prometheus text format for `/api/v4/prometheus`.
        content_type: &'static str,
        /// `WWW-Authenticate` value for a 401.
        challenge: Option<&'static str>,
    },
    /// The credentials of an [`Input::AdminAuthorize`] are good: read the request's body.
    AdminAuthorized { req_id: u64 },
    /// Persist these settings (admin API set-configuration), then report with
    /// [`Input::AdminConfigWritten`]; they take effect only once written.
    WriteConfig {
        req_id: u64,
        changes: Vec<admin::ConfigChange>,
    },
    /// The admin API asked the process to restart (re-read its configuration and apply it)
    /// or stop. A restart is answered with [`Input::ControlDone`].
    Control {
        req_id: u64,
        action: admin::ControlAction,
    },
    /// Open a connection to a bridge's remote broker (`address` as configured, e.g.
    /// `mqtt-tcp://host:1883`) under the id `conn`; answer with [`Input::BridgeConnected`]
    /// or [`Input::BridgeConnectFailed`]. Its bytes then flow like a client's.
    BridgeConnect {
        conn: ConnId,
        bridge: String,
        address: String,
    },
    /// Keep these records, numbered `upto - len + 1 ..= upto`, in order; report with
    /// [`Input::PersistDone`]. Output that depends on them is held until then.
    Persist {
        upto: u64,
        records: Vec<persist::Record>,
    },
    /// Every live record as of sequence number `upto`: it replaces the journal up to there.
    Snapshot {
        upto: u64,
        records: Vec<persist::Record>,
    },
    /// Check these credentials and answer with [`Input::AuthResult`]. The connection sends
    /// nothing further through the core until then; its connect timeout keeps running.
    Authenticate {
        conn: ConnId,
        username: String,
        password: Secret,
        client_id: String,
        /// The peer's address as `ip:port`.
        peer: String,
        method: AuthMethod,
    },
    /// May this client do `action` on `topic` (a topic name, or a filter as subscribed)? No
    /// ACL rule decided it and `auth.http_auth.acl_req` is set. Answer with
    /// [`Input::AuthorizeResult`]; the connection's packets wait until every question of the
    /// packet is answered.
    Authorize {
        conn: ConnId,
        client_id: String,
        username: Option<String>,
        peer: String,
        action: crate::acl::Action,
        topic: String,
    },
    /// Cluster mode: subscribe to `subject` (in `queue` for a shared subscription) and give
    /// what arrives as [`Input::ClusterMessage`] with this `sid`. Queue subscriptions must
    /// see this node's own publishes; the others must not (the node routed them already).
    ClusterSubscribe {
        sid: u64,
        subject: String,
        queue: Option<String>,
    },
    /// Cluster mode: drop the subscription made as `sid`.
    ClusterUnsubscribe { sid: u64 },
    /// Cluster mode: publish `payload` (a message envelope) on `subject`, in output order.
    /// A `droppable` one (QoS 0) may be dropped, and counted, when the queue to NATS is full;
    /// the others were acknowledged by JetStream and are not.
    ClusterPublish {
        subject: String,
        payload: Bytes,
        droppable: bool,
    },
    /// Cluster mode: write `payload` (a message envelope) to the durable stream on `subject`,
    /// with `msg_id` as its de-duplication id, and answer with [`Input::ClusterDurableDone`].
    /// Nothing of the message happens before the answer.
    ClusterDurable {
        token: u64,
        subject: String,
        msg_id: String,
        payload: Bytes,
    },
    /// Cluster mode: put `value` at `key` in the retained bucket, or delete `key` (`None`).
    ClusterRetain { key: String, value: Option<Bytes> },
    /// Cluster mode: write `value` at `key` in the sessions bucket by compare-and-swap on the
    /// revision read just before (create if absent or deleted), reading again on a conflict,
    /// and answer with [`Input::ClusterClaimed`].
    ClusterClaim {
        token: u64,
        key: String,
        value: Bytes,
        /// Keep the session record of the entry replaced (what follows its first line)
        /// after `value`: a persistent session resuming; otherwise the record goes.
        keep_record: bool,
    },
    /// Cluster mode: write `value` at `key` in the sessions bucket over exactly `revision`
    /// (this node's last write), and answer with [`Input::ClusterRecorded`]: on a conflict
    /// the entry is read again, and if its first line is still `value`'s the write is made
    /// over the revision read (an earlier write of this node answered late), otherwise
    /// another node owns the key now (fenced).
    ClusterRecord {
        token: u64,
        key: String,
        value: Bytes,
        revision: u64,
    },
    /// Cluster mode: read the durable stream's messages `from..=to` (in order, through a
    /// reader of its own) and give them as [`Input::ClusterCatchUpMessage`], then
    /// [`Input::ClusterCatchUpDone`].
    ClusterCatchUp { token: u64, from: u64, to: u64 },
    /// Cluster mode: read the sessions bucket's entry `key` and answer with
    /// [`Input::ClusterLookedUp`].
    ClusterLookup { token: u64, key: String },
    /// Cluster mode: delete `key` from the sessions bucket if it is still at `revision`.
    ClusterRelease { key: String, revision: u64 },
    /// Cluster mode: read every entry of the sessions bucket and give them, in batches, as
    /// [`Input::ClusterScanned`].
    ClusterScan { token: u64 },
}

/// Observable facts, for logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub enum BrokerEvent {
    ClientConnected {
        conn: ConnId,
        client_id: String,
        protocol: u8,
        session_present: bool,
    },
    ConnectRefused {
        conn: ConnId,
        client_id: String,
        reason_code: ReasonCode,
    },
    ClientDisconnected {
        conn: ConnId,
        client_id: Option<String>,
        reason_code: ReasonCode,
        detail: String,
    },
    SessionExpired {
        client_id: String,
    },
    /// An offline session ended early to bring memory back under `max_memory`.
    SessionShed {
        client_id: String,
    },
    MessagesDropped {
        client_id: String,
        count: u64,
        why: &'static str,
    },
    BridgeUp {
        bridge: String,
    },
    BridgeDown {
        bridge: String,
        detail: String,
        retry_in_ms: u64,
    },
    ConfigApplied,
    ConfigRejected {
        error: ConfigError,
    },
    /// The store failed; durable work is refused from now on.
    StoreFailed {
        error: String,
    },
    /// The store reached `persistence.max_disk` (`full`), or came back under it: new durable
    /// work is refused with 0x97 while full.
    StoreFull {
        full: bool,
        used: u64,
        cap: u64,
    },
}
