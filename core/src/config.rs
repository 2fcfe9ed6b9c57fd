//! The broker's typed configuration. File formats are parsed elsewhere into this shape; the
//! core only sees values, and validates them before they take effect.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Everything the core needs to know. Defaults follow NanoMQ where it has a setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Largest packet accepted from a client, fixed header included (NanoMQ `max_packet_size`).
    pub max_packet_size: u32,
    /// Most user properties in one packet (NanoMQ `property_size`).
    pub property_size: u32,
    /// Offline / backlog queue length per session (NanoMQ `msq_len`).
    pub msq_len: u32,
    /// Seconds NanoMQ waits before resending; we resend on session resume as the spec asks,
    /// and keep the value for API compatibility (NanoMQ `qos_duration`).
    pub qos_duration: u32,
    /// Clients that give no user name may connect (NanoMQ `allow_anonymous`).
    pub allow_anonymous: bool,
    /// user name -> password. A client giving a user name must match one; with none listed,
    /// named clients count as anonymous (see `allow_anonymous`).
    pub users: BTreeMap<String, String>,
    /// A connection is closed after `keepalive * keepalive_multiplier` seconds of silence.
    pub keepalive_multiplier: f64,
    /// Largest keepalive a client may ask for, in seconds; 0 = no cap. v5 clients asking more
    /// are told the server keepalive, v3 clients are held to it.
    pub max_keepalive: u16,
    /// Milliseconds a new connection may take to send CONNECT.
    pub connect_timeout_ms: u64,
    /// Unacknowledged QoS 1/2 messages we accept from one client (our Receive Maximum).
    pub receive_maximum: u16,
    /// Unacknowledged QoS 1/2 messages we send to one client, capped by its Receive Maximum.
    pub max_inflight: u16,
    /// Topic aliases a v5 client may use towards us.
    pub max_topic_alias: u16,
    /// Topic aliases we set towards a v5 client (within its Topic Alias Maximum); 0 = none.
    pub max_topic_alias_out: u16,
    /// Longest client identifier accepted.
    pub max_client_id_len: u32,
    /// Subscriptions one session may hold.
    pub max_subscriptions: u32,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: u32,
    /// Bytes handed to a connection's writer and not yet written before QoS 0 messages to it
    /// are dropped and QoS 1/2 messages wait in its queue.
    pub max_write_buffer: u32,
    /// Largest session expiry a v5 client may ask for, in seconds.
    pub max_session_expiry: u32,
    /// Largest session expiry granted to a client without a user name, in seconds (a 3.1.1
    /// persistent session's "never" included).
    pub anonymous_session_expiry: u32,
    /// Bytes the broker may hold for peers (sessions, queues, messages, retained messages,
    /// connection buffers): past three quarters of it queues, the retained store and output to
    /// connections that do not keep up stop growing; past all of it new sessions and
    /// subscriptions are refused and offline sessions nearest their end are ended.
    pub max_memory: u64,
    /// Publish `$SYS/brokers/connected` and `$SYS/brokers/disconnected` events.
    pub sys_events: bool,
    /// Seconds between publications of the `$SYS/broker/...` statistics tree; 0 = off (the
    /// default, as NanoMQ publishes no such tree).
    pub sys_interval: u32,
    /// Address (`ip:port`) of a listener serving only `GET /metrics` without credentials,
    /// for scrapers; `None` (the default) = none.
    pub metrics_listen: Option<String>,
    /// The MQTT-over-TCP listener, NanoMQ URL form (`nmq-tcp://0.0.0.0:1883`).
    pub url: String,
    /// Serve the TCP listener at all (HOCON `listeners.tcp.enable`).
    pub tcp_enable: bool,
    /// NanoMQ's daemon flag: run in the background (`-d`).
    pub daemon: bool,
    /// NanoMQ thread-pool sizing; TideMQ sizes its runtime from `max_taskq_thread` (0 = one
    /// worker per core) and keeps the others for API compatibility.
    pub num_taskq_thread: u32,
    pub max_taskq_thread: u32,
    pub parallel: u32,
    pub tls: TlsConfig,
    pub websocket: WebSocketConfig,
    pub http_server: HttpServerConfig,
    /// Named MQTT bridges (old-format single bridge is named `default`).
    pub bridges: BTreeMap<String, BridgeConfig>,
    pub log: LogConfig,
    pub persistence: PersistenceConfig,
    pub auth: AuthConfig,
    /// Cluster mode (`cluster { }`), off by default; read at start only.
    pub cluster: crate::cluster::config::ClusterConfig,
    /// The ACL (`auth.acl`, `auth.no_match`, `auth.deny_action`; old format `acl_enable`,
    /// `acl_nomatch`, `acl.rule.N`). Read from the configuration files only.
    #[serde(skip)]
    pub acl: crate::acl::AclSettings,
}

/// What `allow_anonymous` means (`auth.anonymous_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnonymousMode {
    /// NanoMQ's: `allow_anonymous = true` accepts every client without looking at its
    /// credentials; `false` refuses an empty user name or password.
    Nanomq,
    /// Credentials a client gives are always checked; `allow_anonymous` only admits
    /// clients that give no user name.
    Strict,
}

/// Password checks (`auth.*` beyond the ACL). The checks run outside the core; these are
/// its bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub anonymous_mode: AnonymousMode,
    /// A Mosquitto-format password file (`user:hash` lines), read by the runtime.
    pub password_file: Option<String>,
    /// Connections waiting for their credentials to be checked; beyond, CONNECT is
    /// refused as busy (v5 0x89, 3.1.1 return code 3).
    pub max_pending: u32,
    /// Bytes a connection may send after its CONNECT while it waits; beyond, it is
    /// refused with 0x97 (3.1.1: return code 3).
    pub max_held_bytes: u32,
    /// Password checks run at once (threads); 0 = one per core.
    pub workers: u32,
    /// How long a successful check is remembered, in milliseconds; 0 = not at all.
    pub cache_ttl_ms: u64,
    /// Successful checks remembered at most.
    pub cache_max: u32,
    /// NanoMQ's `auth.http_auth`: users not in the password table are asked of a web service.
    pub http_auth: HttpAuthConfig,
}

/// One request of `auth.http_auth` (`auth_req`, `super_req`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuthRequest {
    /// `http://host:port/path`.
    pub url: String,
    /// `POST` (default) or `GET`.
    pub method: String,
    pub headers: BTreeMap<String, String>,
    /// Sent as `k=v&...` (the query for GET, the body for POST); values may hold the
    /// placeholders `%u %c %a %P %p %r`.
    pub params: Vec<(String, String)>,
}

/// NanoMQ's `auth.http_auth`: HTTP 200 allows, any other status denies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpAuthConfig {
    /// On when the section is present, unless `enable = false`.
    pub enable: bool,
    pub auth_req: Option<HttpAuthRequest>,
    /// 200 makes the client a superuser, not subject to the ACL.
    pub super_req: Option<HttpAuthRequest>,
    /// Asked about a PUBLISH or SUBSCRIBE that no rule of `auth.acl` decides (`%A`: 1
    /// subscribe, 2 publish; `%t`: the topic or filter); 200 allows.
    pub acl_req: Option<HttpAuthRequest>,
    /// Whole request, in milliseconds.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Requests at once.
    pub pool_size: u32,
    /// How long an allowing answer is remembered, in milliseconds; 0 = not at all.
    pub cache_ttl_ms: u64,
    /// When the server cannot be reached or does not answer in time: deny (default) or allow.
    pub allow_on_error: bool,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            enable: false,
            auth_req: None,
            super_req: None,
            acl_req: None,
            timeout_ms: 5_000,
            connect_timeout_ms: 5_000,
            pool_size: 32,
            cache_ttl_ms: 30_000,
            allow_on_error: false,
        }
    }
}

impl HttpAuthConfig {
    /// Whether clients are asked about at all.
    pub fn asks(&self) -> bool {
        self.enable && self.auth_req.is_some()
    }

    /// Whether PUBLISH and SUBSCRIBE the ACL file does not decide are asked about.
    pub fn asks_acl(&self) -> bool {
        self.enable && self.acl_req.is_some()
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            anonymous_mode: AnonymousMode::Strict,
            password_file: None,
            max_pending: 1024,
            max_held_bytes: 64 * 1024,
            workers: 0,
            cache_ttl_ms: 300_000,
            cache_max: 10_000,
            http_auth: HttpAuthConfig::default(),
        }
    }
}

/// When the store's writes count as done (`persistence.sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// Written and fsynced: survives power loss. Acks wait for it.
    Fsync,
    /// Written to the operating system: survives the process being killed. Acks wait for it.
    Os,
    /// Written in the background; acks never wait (Mosquitto's and NanoMQ's promise).
    None,
}

/// Durable sessions, subscriptions, queued and in-flight QoS 1/2 messages, retained
/// messages and bridge outboxes (`persistence { ... }`; NanoMQ's `sqlite` block maps here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceConfig {
    pub enable: bool,
    /// Directory of the journal and snapshots.
    pub data_dir: String,
    pub sync: SyncMode,
    /// Longest wait before a group of records is committed, in milliseconds.
    pub flush_interval_ms: u64,
    /// Records that commit a group at once.
    pub max_batch: u32,
    /// Bytes per journal segment before a new one starts.
    pub segment_size: u64,
    /// Journal bytes since the last snapshot that make the next one.
    pub snapshot_threshold: u64,
    /// Damage before the last segment's tail: refuse to start (`fail`) or keep the valid
    /// part and go on (`truncate`).
    pub on_corruption: String,
    /// When the store fails (a write or fsync error, a full disk): exit so a supervisor
    /// restarts the broker on a consistent journal (`true`), or keep running and refuse
    /// everything that needs the store with reason code 0x97 (`false`).
    pub fail_fast: bool,
    /// Disk the store may use (journal segments and snapshots), in bytes. At the cap new
    /// durable work is refused (0x97) and the journal is compacted; it is accepted again
    /// once a snapshot brings the store under the cap. The writer itself refuses appends a
    /// quarter past it (see the runtime's store).
    pub max_disk: u64,
}

/// The smallest `persistence.max_disk`: room for a snapshot and some journal.
pub const MIN_MAX_DISK: u64 = 1024 * 1024;

impl PersistenceConfig {
    /// Under this a full store takes new durable work again (an eighth under the cap, so a
    /// store whose live data sits near the cap is not compacted after every message).
    pub fn disk_low_mark(&self) -> u64 {
        self.max_disk - self.max_disk / 8
    }

    /// The writer appends nothing past this (a quarter over the cap: the broker's refusal
    /// is based on usage reported after each commit, so a little more arrives first).
    /// Snapshots are not held to it: they replace the segments.
    pub fn disk_hard_limit(&self) -> u64 {
        self.max_disk.saturating_add(self.max_disk / 4)
    }
}

impl Default for PersistenceConfig {
    fn default() -> Self {
        PersistenceConfig {
            enable: false,
            data_dir: "/var/lib/tidemq".to_owned(),
            sync: SyncMode::Fsync,
            flush_interval_ms: 5,
            max_batch: 1024,
            segment_size: 64 * 1024 * 1024,
            snapshot_threshold: 256 * 1024 * 1024,
            on_corruption: "fail".to_owned(),
            fail_fast: true,
            max_disk: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// The TLS listener (NanoMQ `tls.*`, HOCON `listeners.ssl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub enable: bool,
    pub url: String,
    pub keyfile: Option<String>,
    pub certfile: Option<String>,
    pub cacertfile: Option<String>,
    pub key_password: Option<String>,
    pub verify_peer: bool,
    pub fail_if_no_peer_cert: bool,
    /// A verified client certificate's common name becomes the client's user name, and
    /// no password is needed (mosquitto's option of the same name).
    pub use_identity_as_username: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enable: false,
            url: "tls+nmq-tcp://0.0.0.0:8883".to_owned(),
            keyfile: None,
            certfile: None,
            cacertfile: None,
            key_password: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            use_identity_as_username: false,
        }
    }
}

/// The WebSocket listeners (NanoMQ `websocket.*`, HOCON `listeners.ws` / `listeners.wss`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    pub enable: bool,
    pub url: String,
    pub tls_url: String,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            enable: false,
            url: "nmq-ws://0.0.0.0:8083/mqtt".to_owned(),
            tls_url: "nmq-wss://0.0.0.0:8084/mqtt".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuthType {
    Basic,
    Jwt,
    NoAuth,
}

/// The admin HTTP API (NanoMQ `http_server.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServerConfig {
    pub enable: bool,
    pub ip_addr: String,
    pub port: u16,
    pub username: String,
    pub password: String,
    pub auth_type: HttpAuthType,
    pub jwt_public_keyfile: Option<String>,
    /// Largest request body accepted, in bytes.
    pub max_body: u64,
    /// Concurrent admin connections that have sent an authorized request.
    pub limit_conn: u32,
}

impl HttpServerConfig {
    /// Basic auth with NanoMQ's well-known `admin` / `public`, on an address other hosts
    /// can reach: worth a warning at every start.
    pub fn exposes_default_credentials(&self) -> bool {
        let loopback = self
            .ip_addr
            .parse::<crate::ip::IpAddress>()
            .is_ok_and(|ip| ip.is_loopback())
            || self.ip_addr.eq_ignore_ascii_case("localhost");
        self.enable
            && !loopback
            && self.auth_type == HttpAuthType::Basic
            && self.username == "admin"
            && self.password == "public"
    }
}

impl Default for HttpServerConfig {
    fn default() -> Self {
        HttpServerConfig {
            enable: false,
            // NanoMQ listens on 0.0.0.0; exposing the API beyond this host is a choice.
            ip_addr: "127.0.0.1".to_owned(),
            port: 8081,
            username: "admin".to_owned(),
            password: "public".to_owned(),
            auth_type: HttpAuthType::Basic,
            jwt_public_keyfile: None,
            max_body: 1024 * 1024,
            limit_conn: 32,
        }
    }
}

/// A local topic forwarded to the remote broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeForward {
    /// Local filter to forward.
    pub local_topic: String,
    /// Remote topic prefix replacement; empty keeps the local topic.
    pub remote_topic: String,
    pub qos: Option<u8>,
    pub retain: Option<bool>,
}

/// A remote filter subscribed to and republished locally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeSubscription {
    /// Remote filter to subscribe to.
    pub remote_topic: String,
    /// Local topic replacement; empty keeps the remote topic.
    pub local_topic: String,
    pub qos: u8,
}

/// One MQTT bridge (NanoMQ `bridge.mqtt.*`, HOCON `bridges.mqtt.<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    pub enable: bool,
    /// `mqtt-tcp://host:port` (also `tls+mqtt-tcp://`).
    pub address: String,
    /// 4 (3.1.1) or 5.
    pub proto_ver: u8,
    pub clientid: String,
    pub keepalive: u16,
    pub clean_start: bool,
    pub parallel: u32,
    pub username: Option<String>,
    pub password: Option<String>,
    pub forwards: Vec<BridgeForward>,
    pub subscription: Vec<BridgeSubscription>,
    /// Messages held for the remote while it is unreachable.
    pub max_send_queue_len: u32,
    /// Longest reconnect backoff, in seconds.
    pub backoff_max: u32,
    /// TLS towards the remote (`tls+mqtt-tcp://` addresses, or `ssl.enable`).
    pub ssl: BridgeTls,
}

impl BridgeConfig {
    /// The first forward rule whose local filter takes `topic`: the one that forwards it.
    pub fn forward_rule(&self, topic: &str) -> Option<&BridgeForward> {
        self.forwards
            .iter()
            .find(|f| crate::topic::matches(&f.local_topic, topic))
    }
}

/// TLS settings of a bridge (NanoMQ `bridges.mqtt.<name>.ssl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeTls {
    pub enable: bool,
    /// CA certificates that sign the remote's certificate (PEM); required for TLS.
    pub cacertfile: Option<String>,
    /// Client certificate and key, when the remote asks for one.
    pub certfile: Option<String>,
    pub keyfile: Option<String>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            enable: false,
            address: "mqtt-tcp://127.0.0.1:1883".to_owned(),
            proto_ver: 4,
            clientid: "bridge_client".to_owned(),
            keepalive: 60,
            clean_start: true,
            parallel: 2,
            username: None,
            password: None,
            forwards: Vec::new(),
            subscription: Vec::new(),
            max_send_queue_len: 32_768,
            backoff_max: 60,
            ssl: BridgeTls::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Where logs go: `console`, `file` (and `syslog`, accepted as console).
    pub to: Vec<String>,
    /// trace, debug, info, warn, error.
    pub level: String,
    /// `text`, or `json`: one object per line, for log collectors.
    pub format: String,
    pub dir: String,
    pub file: String,
    /// Bytes per file before rotating.
    pub rotation_size: u64,
    pub rotation_count: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            to: vec!["console".to_owned()],
            level: "info".to_owned(),
            format: "text".to_owned(),
            dir: "/tmp".to_owned(),
            file: "tidemq.log".to_owned(),
            rotation_size: 10 * 1024 * 1024,
            rotation_count: 5,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_packet_size: 1024 * 1024,
            property_size: 32,
            msq_len: 2048,
            qos_duration: 10,
            allow_anonymous: true,
            users: BTreeMap::new(),
            keepalive_multiplier: 1.5,
            max_keepalive: 0,
            connect_timeout_ms: 10_000,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_topic_alias: 1024,
            max_topic_alias_out: 0,
            max_client_id_len: 1024,
            max_subscriptions: 10_000,
            max_topic_levels: 128,
            max_write_buffer: 4 * 1024 * 1024,
            max_session_expiry: u32::MAX,
            anonymous_session_expiry: 24 * 3600,
            max_memory: 128 * 1024 * 1024,
            sys_events: true,
            sys_interval: 0,
            metrics_listen: None,
            url: "nmq-tcp://0.0.0.0:1883".to_owned(),
            tcp_enable: true,
            daemon: false,
            num_taskq_thread: 0,
            max_taskq_thread: 0,
            parallel: 0,
            tls: TlsConfig::default(),
            websocket: WebSocketConfig::default(),
            http_server: HttpServerConfig::default(),
            bridges: BTreeMap::new(),
            log: LogConfig::default(),
            persistence: PersistenceConfig::default(),
            cluster: Default::default(),
            auth: AuthConfig::default(),
            acl: crate::acl::AclSettings::default(),
        }
    }
}

/// A configuration value outside what the broker can run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The settings that differ from `self` in `new` and that a running broker cannot
    /// change in place (listeners, threads, log destination, bridges).
    pub fn restart_required(&self, new: &Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |changed: bool, key| {
            if changed {
                keys.push(key);
            }
        };
        check(
            self.url != new.url || self.tcp_enable != new.tcp_enable,
            "url",
        );
        check(self.tls != new.tls, "tls");
        check(self.websocket != new.websocket, "websocket");
        check(
            self.http_server.enable != new.http_server.enable
                || self.http_server.port != new.http_server.port
                || self.http_server.ip_addr != new.http_server.ip_addr
                || self.http_server.jwt_public_keyfile != new.http_server.jwt_public_keyfile
                || self.http_server.limit_conn != new.http_server.limit_conn
                || self.http_server.max_body != new.http_server.max_body,
            "http_server",
        );
        // Bridges restart with new settings on reload or req 10, not on req 12 alone.
        check(self.bridges != new.bridges, "bridges");
        check(self.metrics_listen != new.metrics_listen, "metrics.listen");
        check(self.persistence != new.persistence, "persistence");
        check(
            self.num_taskq_thread != new.num_taskq_thread
                || self.max_taskq_thread != new.max_taskq_thread
                || self.parallel != new.parallel
                || self.daemon != new.daemon,
            "system",
        );
        check(
            self.log.to != new.log.to
                || self.log.format != new.log.format
                || self.log.dir != new.log.dir
                || self.log.file != new.log.file
                || self.log.rotation_size != new.log.rotation_size
                || self.log.rotation_count != new.log.rotation_count,
            "log",
        );
        keys
    }

    /// Checks every value; the first bad key is reported.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key, message: &str| {
            Err(ConfigError {
                key,
                message: message.to_owned(),
            })
        };
        if self.max_packet_size < 16 || self.max_packet_size > 268_435_460 {
            return err(
                "max_packet_size",
                "must be between 16 bytes and 256 MiB (the MQTT limit)",
            );
        }
        if self.msq_len == 0 {
            return err("msq_len", "must be at least 1");
        }
        if !(self.keepalive_multiplier.is_finite()
            && self.keepalive_multiplier >= 1.0
            && self.keepalive_multiplier <= 10.0)
        {
            return err("keepalive_multiplier", "must be between 1.0 and 10.0");
        }
        if self.receive_maximum == 0 {
            return err("receive_maximum", "must be at least 1");
        }
        if self.max_inflight == 0 {
            return err("max_inflight", "must be at least 1");
        }
        if self.max_client_id_len == 0 {
            return err("max_client_id_len", "must be at least 1");
        }
        if self.max_topic_levels == 0 {
            return err("max_topic_levels", "must be at least 1");
        }
        if self.max_memory < 1024 * 1024 {
            return err("max_memory", "must be at least 1MB");
        }
        if self.max_write_buffer < 1024 {
            return err("max_write_buffer", "must be at least 1024 bytes");
        }
        if self.connect_timeout_ms == 0 {
            return err("connect_timeout_ms", "must be at least 1");
        }
        if self.http_server.port == 0 {
            return err("http_server.port", "must be between 1 and 65535");
        }
        if self.http_server.auth_type == HttpAuthType::Jwt
            && self.http_server.jwt_public_keyfile.is_none()
        {
            return err(
                "http_server.jwt.public.keyfile",
                "is required when http_server.auth_type = jwt",
            );
        }
        if self.http_server.max_body < 64 {
            return err("http_server.max_body", "must be at least 64 bytes");
        }
        if self.tls.enable && (self.tls.certfile.is_none() || self.tls.keyfile.is_none()) {
            return err(
                "tls.certfile",
                "tls.certfile and tls.keyfile are required when TLS is enabled",
            );
        }
        if self.tls.use_identity_as_username && !self.tls.verify_peer {
            return err(
                "tls.use_identity_as_username",
                "needs tls.verify_peer = true (only a verified certificate names a user)",
            );
        }
        for (name, bridge) in &self.bridges {
            if !matches!(bridge.proto_ver, 4 | 5) {
                return Err(ConfigError {
                    key: "bridge.mqtt.proto_ver",
                    message: format!("bridge {name}: must be 4 (MQTT 3.1.1) or 5"),
                });
            }
            let tls = bridge.ssl.enable || crate::address::wants_tls(&bridge.address);
            if tls && bridge.ssl.cacertfile.is_none() {
                return Err(ConfigError {
                    key: "bridges.mqtt.ssl.cacertfile",
                    message: format!(
                        "bridge {name}: TLS needs the CA file that signs the remote's certificate"
                    ),
                });
            }
            if bridge.subscription.iter().any(|s| s.qos > 2)
                || bridge.forwards.iter().any(|f| f.qos.is_some_and(|q| q > 2))
            {
                return Err(ConfigError {
                    key: "bridge.mqtt.subscription.qos",
                    message: format!("bridge {name}: QoS must be 0, 1 or 2"),
                });
            }
        }
        let p = &self.persistence;
        if p.enable && p.data_dir.is_empty() {
            return err("persistence.data_dir", "must name a directory");
        }
        if p.max_batch == 0 {
            return err("persistence.max_batch", "must be at least 1");
        }
        if p.segment_size < 64 * 1024 {
            return err("persistence.segment_size", "must be at least 64 KiB");
        }
        if p.snapshot_threshold < p.segment_size {
            return err(
                "persistence.snapshot_threshold",
                "must be at least persistence.segment_size",
            );
        }
        if p.max_disk < MIN_MAX_DISK {
            return err(
                "persistence.max_disk",
                "must be at least 1 MiB (the store's disk use is always capped)",
            );
        }
        if !matches!(p.on_corruption.as_str(), "fail" | "truncate") {
            return err("persistence.on_corruption", "must be fail or truncate");
        }
        if !matches!(
            self.log.level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "fatal"
        ) {
            return err(
                "log.level",
                "must be one of trace, debug, info, warn, error, fatal",
            );
        }
        if self.auth.max_pending == 0 {
            return err("auth.max_pending", "must be at least 1");
        }
        if self.auth.max_held_bytes < 1024 {
            return err("auth.max_held_bytes", "must be at least 1024 bytes");
        }
        let h = &self.auth.http_auth;
        for (key, req) in [
            ("auth.http_auth.auth_req.url", &h.auth_req),
            ("auth.http_auth.super_req.url", &h.super_req),
            ("auth.http_auth.acl_req.url", &h.acl_req),
        ] {
            if let Some(req) = req.as_ref().filter(|_| h.enable) {
                if !req.url.starts_with("http://") {
                    return err(key, "must be an http:// URL (https is not supported)");
                }
                if !matches!(req.method.as_str(), "" | "POST" | "GET" | "post" | "get") {
                    return err(key, "method must be POST or GET");
                }
            }
        }
        if h.enable && (h.timeout_ms == 0 || h.connect_timeout_ms == 0 || h.pool_size == 0) {
            return err(
                "auth.http_auth",
                "timeout, connect_timeout and pool_size must be at least 1",
            );
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return err("log.format", "must be text or json");
        }
        self.cluster
            .validate(self.max_memory)
            .map_err(|(key, message)| ConfigError { key, message })
    }
}
