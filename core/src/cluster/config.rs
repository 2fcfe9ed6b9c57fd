//! The `cluster { }` settings: read at start (a reload keeps the running ones), each bounded.

use serde::{Deserialize, Serialize};

use super::subject;

/// A setting out of its bounds: the key, and what it must be.
pub type Invalid = (&'static str, String);

/// Cluster mode (design: `docs/cluster.md`). Off by default; when off nothing of the cluster
/// exists at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub enable: bool,
    /// The NATS servers (1..=16); the client fails over between them.
    pub nats_urls: Vec<String>,
    /// This node's name: `[A-Za-z0-9-]{1,64}`, unique in the cluster.
    pub node_name: String,
    /// The cluster's own subject namespace: 1..=32 bytes of `[a-z0-9]`.
    pub subject_prefix: String,
    /// JetStream replicas of the retained bucket (1..=5).
    pub replicas: u8,
    /// NATS subscriptions this node holds (1..=1048576); a `#` filter counts two.
    pub max_subscriptions: u32,
    /// Longest subject, or subject with its queue group (64..=3584 bytes): longer topics and
    /// filters are refused in cluster mode.
    pub max_subject_len: u32,
    /// How long a QoS 1/2 message may wait for JetStream's acknowledgement before it is
    /// refused (100..=60000 ms).
    pub publish_timeout_ms: u64,
    /// The durable stream's caps: bytes (1MB..) and age (1s..).
    pub durable_max_bytes: u64,
    pub durable_max_age_ms: u64,
    /// The retained bucket's cap in bytes (1MB..=half of `max_memory`): every node mirrors
    /// all of it within its memory budget.
    pub retained_max_bytes: u64,
    /// The sessions bucket's cap in bytes (1MB..): one entry per client id a node serves
    /// (its owner, and a persistent session's record).
    pub sessions_max_bytes: u64,
    /// How often a persistent session's cursor may be written to its record (10..=60000 ms):
    /// shorter means fewer messages delivered again after a move, more bucket writes.
    pub record_interval_ms: u64,
    /// A node not heard of for this long is gone (2s..=5m); each node's heartbeat goes out
    /// every third of it.
    pub node_ttl_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            enable: false,
            nats_urls: vec!["nats://127.0.0.1:4222".to_owned()],
            node_name: String::new(),
            subject_prefix: subject::DEFAULT_PREFIX.to_owned(),
            replicas: 3,
            max_subscriptions: 65_536,
            max_subject_len: 2048,
            retained_max_bytes: 32 * 1024 * 1024,
            sessions_max_bytes: 64 * 1024 * 1024,
            record_interval_ms: 1000,
            node_ttl_ms: 10_000,
            publish_timeout_ms: 10_000,
            durable_max_bytes: 10 * 1024 * 1024 * 1024,
            durable_max_age_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// The longest subject nats-server's default control line (4096 bytes) leaves room for.
pub const MAX_SUBJECT_LEN: u32 = 3584;

impl ClusterConfig {
    /// Checks every bound; `max_memory` is the node's memory budget, which must hold the
    /// retained bucket's mirror.
    pub fn validate(&self, max_memory: u64) -> Result<(), Invalid> {
        let err = |key, message: &str| Err((key, message.to_owned()));
        if subject::validate_prefix(&self.subject_prefix).is_err() {
            return err(
                "cluster.subject_prefix",
                "must be 1 to 32 characters of a-z and 0-9",
            );
        }
        if !(1..=5).contains(&self.replicas) {
            return err("cluster.replicas", "must be between 1 and 5");
        }
        if !(1..=1_048_576).contains(&self.max_subscriptions) {
            return err("cluster.max_subscriptions", "must be between 1 and 1048576");
        }
        if !(64..=MAX_SUBJECT_LEN).contains(&self.max_subject_len) {
            return err("cluster.max_subject_len", "must be between 64 and 3584");
        }
        if !(100..=60_000).contains(&self.publish_timeout_ms) {
            return err("cluster.publish_timeout", "must be between 100ms and 60s");
        }
        if !(10..=60_000).contains(&self.record_interval_ms) {
            return err("cluster.record_interval", "must be between 10ms and 60s");
        }
        if !(2000..=300_000).contains(&self.node_ttl_ms) {
            return err("cluster.node_ttl", "must be between 2s and 5m");
        }
        if self.durable_max_bytes < 1024 * 1024 {
            return err("cluster.durable_max_bytes", "must be at least 1MB");
        }
        if self.durable_max_age_ms < 1000 {
            return err("cluster.durable_max_age", "must be at least 1s");
        }
        if self.retained_max_bytes < 1024 * 1024 {
            return err("cluster.retained_max_bytes", "must be at least 1MB");
        }
        if self.sessions_max_bytes < 1024 * 1024 {
            return err("cluster.sessions_max_bytes", "must be at least 1MB");
        }
        if !self.enable {
            return Ok(());
        }
        if self.retained_max_bytes > max_memory / 2 {
            return err(
                "cluster.retained_max_bytes",
                "must be at most half of max_memory: every node holds the whole retained bucket",
            );
        }
        let name_ok = (1..=64).contains(&self.node_name.len())
            && self
                .node_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !name_ok {
            return err(
                "cluster.node_name",
                "is required in cluster mode: 1 to 64 characters of A-Z, a-z, 0-9 and -",
            );
        }
        if !(1..=16).contains(&self.nats_urls.len()) {
            return err("cluster.nats_urls", "must list 1 to 16 NATS servers");
        }
        if let Some(bad) = self.nats_urls.iter().find(|u| !nats_url_ok(u)) {
            return Err((
                "cluster.nats_urls",
                format!("{bad:?} is not a nats://host:port address"),
            ));
        }
        Ok(())
    }
}

/// `nats://host:port` (or `host:port`): a host and a port number, nothing else.
fn nats_url_ok(url: &str) -> bool {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    !host.is_empty() && !host.contains(['/', '@', ' ']) && port.parse::<u16>().is_ok_and(|p| p != 0)
}
