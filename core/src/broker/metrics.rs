//! Metrics for the v4 API from what the broker already counts: `GET /api/v4/prometheus`
//! and `GET /metrics` (NanoMQ's 15 metrics, byte-compatible, then the `tidemq_*` set of
//! `exposition.rs`) and
//! `GET /api/v4/metrics` (process and per-bridge figures, NanoMQ's shape without `code`).
//! The process figures come from the runtime ([`Input::ProcessStats`]); the `_max` values are
//! kept here. The observability work extends this file.
//!
//! [`Input::ProcessStats`]: crate::api::Input::ProcessStats

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Broker;
use crate::bridge::{Bridge, BridgeCounters, Link};

/// The broker's gauges at one moment.
struct Gauges {
    connections: u64,
    sessions: u64,
    topics: u64,
    subscribers: u64,
}

/// A bridge's state as `/metrics` reports it.
pub(super) fn bridge_state(b: &Bridge) -> &'static str {
    match b.link {
        _ if b.switched_off => "disabled",
        Link::Up => "connected",
        Link::Connecting | Link::AwaitingConnAck => "connecting",
        Link::Down => "disconnected",
    }
}

impl Broker {
    /// Sessions with a connection: the clients connected now.
    pub(super) fn connected_clients(&self) -> usize {
        self.sessions.values().filter(|s| s.conn.is_some()).count()
    }
}

impl Broker {
    pub(super) fn process_stats(&mut self, rss_bytes: u64, cpu_percent: f64) {
        let cpu = if cpu_percent.is_finite() {
            cpu_percent.clamp(0.0, 100_000.0)
        } else {
            0.0
        };
        let m = &mut self.metrics;
        m.rss_bytes = rss_bytes;
        m.rss_max = m.rss_max.max(rss_bytes);
        m.cpu_percent = cpu;
        m.cpu_max = m.cpu_max.max(cpu);
    }

    fn gauges(&self) -> Gauges {
        let topics = self
            .subscriptions
            .levels()
            .iter()
            .flatten()
            .filter(|n| !n.subscribers.is_empty())
            .count();
        Gauges {
            connections: self.connected_clients() as u64,
            sessions: self.sessions.len() as u64,
            topics: topics as u64,
            subscribers: self
                .sessions
                .values()
                .filter(|s| !s.subscriptions.is_empty())
                .count() as u64,
        }
    }

    /// `GET /api/v4/prometheus`. Scraping updates the `_max` gauges, as in NanoMQ.
    pub(super) fn prometheus_text(&mut self) -> String {
        let g = self.gauges();
        let m = &mut self.metrics;
        m.connections_max = m.connections_max.max(g.connections);
        m.sessions_max = m.sessions_max.max(g.sessions);
        m.topics_max = m.topics_max.max(g.topics);
        m.subscribers_max = m.subscribers_max.max(g.subscribers);
        let m = self.metrics.clone();
        let s = self.stats;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let help = if help.is_empty() {
                String::new()
            } else {
                format!(" {help}")
            };
            let _ = write!(
                out,
                "# TYPE {name} {kind}\n# HELP {name}{help}\n{name} {value}\n"
            );
        };
        metric(
            "nanomq_connections_count",
            "gauge",
            "",
            g.connections.to_string(),
        );
        metric(
            "nanomq_connections_max",
            "gauge",
            "",
            m.connections_max.to_string(),
        );
        metric("nanomq_sessions_count", "gauge", "", g.sessions.to_string());
        metric(
            "nanomq_sessions_max",
            "gauge",
            "",
            m.sessions_max.to_string(),
        );
        metric("nanomq_topics_count", "gauge", "", g.topics.to_string());
        metric("nanomq_topics_max", "gauge", "", m.topics_max.to_string());
        metric(
            "nanomq_subscribers_count",
            "gauge",
            "",
            g.subscribers.to_string(),
        );
        metric(
            "nanomq_subscribers_max",
            "gauge",
            "",
            m.subscribers_max.to_string(),
        );
        metric(
            "nanomq_messages_received",
            "counter",
            "",
            s.messages_received.to_string(),
        );
        metric(
            "nanomq_messages_sent",
            "counter",
            "",
            s.messages_sent.to_string(),
        );
        let dropped = s.messages_dropped + s.messages_unrouted;
        metric(
            "nanomq_messages_dropped",
            "counter",
            "",
            dropped.to_string(),
        );
        metric(
            "nanomq_memory_usage",
            "gauge",
            "(b)",
            m.rss_bytes.to_string(),
        );
        metric(
            "nanomq_memory_usage_max",
            "gauge",
            "(b)",
            m.rss_max.to_string(),
        );
        metric(
            "nanomq_cpu_usage",
            "gauge",
            "(%)",
            format!("{:.2}", m.cpu_percent),
        );
        metric(
            "nanomq_cpu_usage_max",
            "gauge",
            "(%)",
            format!("{:.2}", m.cpu_max),
        );
        // TideMQ's own, in Prometheus' naming conventions.
        self.tidemq_text(&mut out);
        let _ = write!(
            out,
            "# HELP tidemq_acl_decisions_total ACL decisions on client PUBLISH and SUBSCRIBE.\n\
             # TYPE tidemq_acl_decisions_total counter\n\
             tidemq_acl_decisions_total{{decision=\"allow\"}} {}\n\
             tidemq_acl_decisions_total{{decision=\"deny\"}} {}\n\
             # HELP tidemq_acl_revoked_subscriptions_total Stored subscriptions an ACL change removed.\n\
             # TYPE tidemq_acl_revoked_subscriptions_total counter\n\
             tidemq_acl_revoked_subscriptions_total {}\n\
             # HELP tidemq_auth_checks_total Credential checks answered, by outcome.\n\
             # TYPE tidemq_auth_checks_total counter\n\
             tidemq_auth_checks_total{{outcome=\"allow\"}} {}\n\
             tidemq_auth_checks_total{{outcome=\"deny\"}} {}\n\
             tidemq_auth_checks_total{{outcome=\"busy\"}} {}\n",
            s.acl_allowed,
            s.acl_denied,
            s.acl_revoked,
            s.auth_succeeded,
            s.auth_failed,
            s.auth_busy
        );
        out
    }

    pub(super) fn bridges_in_order(&self) -> impl Iterator<Item = &Bridge> {
        self.bridge_ids
            .values()
            .filter_map(|id| self.bridges.get(id))
    }

    /// `GET /api/v4/metrics`: NanoMQ's shape (no `code`), stable per-bridge keys, every
    /// configured bridge listed (one switched off, or disabled in the configuration, as
    /// `disabled`).
    pub(super) fn metrics_json(&self) -> Value {
        let g = self.gauges();
        let bridges: Vec<Value> = self
            .config
            .bridges
            .keys()
            .map(|name| {
                let running = self
                    .bridge_ids
                    .get(name)
                    .and_then(|id| self.bridges.get(id));
                let c = running.map_or(BridgeCounters::default(), |b| b.counters);
                let (state, outbox) = running.map_or(("disabled", 0), |b| {
                    let (q, f) = b.backlog();
                    (bridge_state(b), q + f)
                });
                json!({
                    "name": name,
                    "tx_msgs": c.tx_msgs,
                    "rx_msgs": c.rx_msgs,
                    "tx_bytes": c.tx_bytes,
                    "rx_bytes": c.rx_bytes,
                    "reconnects": c.connects.saturating_sub(1),
                    "send_drop": c.send_drop,
                    "recv_drop": c.recv_drop,
                    "state": state,
                    "outbox": outbox,
                })
            })
            .collect();
        json!({
            "metrics": bridges,
            "cpuinfo": format!("{:.2}%", self.metrics.cpu_percent),
            "memory": self.metrics.rss_bytes.to_string(),
            "connections": g.connections,
        })
    }
}

/// A label value escaped as the text format asks (backslash, quote, newline).
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
