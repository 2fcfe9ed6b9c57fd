//! The `tidemq_*` metrics after NanoMQ's 15 in `/metrics` and `/api/v4/prometheus`, in the
//! Prometheus text format 0.0.4 written by hand: units in the names, base units (seconds,
//! bytes), `_total` on counters, HELP and TYPE for every family, labels of low cardinality
//! (never a client id or a topic; a bridge's name is configuration).

use std::fmt::Write as _;

use super::Broker;
use super::metrics::label;
use crate::bridge::Link;
use crate::metrics::{COMMIT_BOUNDS_US, DropReason, LATENCY_BOUNDS_MS};

/// Packet type names by number, for the `type` label.
const PACKET_NAMES: [&str; 16] = [
    "reserved",
    "connect",
    "connack",
    "publish",
    "puback",
    "pubrec",
    "pubrel",
    "pubcomp",
    "subscribe",
    "suback",
    "unsubscribe",
    "unsuback",
    "pingreq",
    "pingresp",
    "disconnect",
    "auth",
];

/// One metric family being written: its head once, then its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

impl Broker {
    pub(super) fn tidemq_text(&self, out: &mut String) {
        let mut o = Out(std::mem::take(out));
        let l = self.live();
        let c = &self.counters;
        o.family(
            "tidemq_build_info",
            "gauge",
            "Always 1; the version is a label.",
        );
        o.sample(
            "tidemq_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );
        o.one(
            "tidemq_uptime_seconds",
            "gauge",
            "Seconds since the broker started.",
            self.now.since(self.started) as f64 / 1000.0,
        );
        o.one(
            "tidemq_connections",
            "gauge",
            "Clients connected now.",
            l.connected,
        );
        o.family(
            "tidemq_sessions",
            "gauge",
            "Sessions, connected or offline (persistent, waiting for their client).",
        );
        o.sample("tidemq_sessions", &[("state", "connected")], l.connected);
        o.sample("tidemq_sessions", &[("state", "offline")], l.offline);
        o.family(
            "tidemq_subscriptions",
            "gauge",
            "Subscriptions held by sessions, normal or shared ($share/...).",
        );
        o.sample(
            "tidemq_subscriptions",
            &[("kind", "normal")],
            l.subscriptions,
        );
        o.sample(
            "tidemq_subscriptions",
            &[("kind", "shared")],
            l.shared_subscriptions,
        );
        o.one(
            "tidemq_retained_messages",
            "gauge",
            "Retained messages held.",
            l.retained,
        );
        o.one(
            "tidemq_retained_bytes",
            "gauge",
            "Payload bytes of the retained messages.",
            l.retained_bytes,
        );
        o.one(
            "tidemq_memory_counted_bytes",
            "gauge",
            "Bytes the broker holds for peers, as counted against max_memory.",
            self.memory_used() as u64,
        );
        o.one(
            "tidemq_memory_budget_bytes",
            "gauge",
            "The memory budget (max_memory); past 3/4 of it queues stop growing.",
            self.config.max_memory,
        );
        o.one(
            "tidemq_inflight_messages",
            "gauge",
            "QoS 1/2 deliveries sent and not yet acknowledged, over all sessions.",
            l.inflight,
        );
        o.one(
            "tidemq_queued_messages",
            "gauge",
            "Deliveries waiting in session queues, over all sessions.",
            l.queued,
        );
        o.one(
            "tidemq_queued_bytes",
            "gauge",
            "Payload bytes waiting in session queues.",
            l.queued_bytes,
        );
        for (name, help, counts) in [
            (
                "tidemq_packets_received_total",
                "MQTT control packets received from clients, by type.",
                &c.packets_in,
            ),
            (
                "tidemq_packets_sent_total",
                "MQTT control packets sent to clients, by type.",
                &c.packets_out,
            ),
        ] {
            o.family(name, "counter", help);
            for (n, kind) in counts.iter().zip(PACKET_NAMES).skip(1) {
                o.sample(name, &[("type", kind)], n);
            }
        }
        o.one(
            "tidemq_bytes_received_total",
            "counter",
            "Bytes read from client connections.",
            c.bytes_in,
        );
        o.one(
            "tidemq_bytes_sent_total",
            "counter",
            "Bytes handed to client connections' writers.",
            c.bytes_out,
        );
        for (name, help, counts) in [
            (
                "tidemq_messages_received_total",
                "Messages accepted (client PUBLISH, wills, bridges, the admin API), by QoS; not $SYS.",
                &c.publish_in,
            ),
            (
                "tidemq_messages_sent_total",
                "Messages delivered to clients and bridge remotes, by QoS; not $SYS.",
                &c.publish_out,
            ),
        ] {
            o.family(name, "counter", help);
            for (qos, n) in ["0", "1", "2"].iter().zip(counts.iter()) {
                o.sample(name, &[("qos", qos)], n);
            }
        }
        o.one(
            "tidemq_messages_received_bytes_total",
            "counter",
            "Payload bytes of the messages received.",
            c.publish_in_bytes,
        );
        o.one(
            "tidemq_messages_sent_bytes_total",
            "counter",
            "Payload bytes of the messages sent.",
            c.publish_out_bytes,
        );
        o.one(
            "tidemq_sys_messages_sent_total",
            "counter",
            "$SYS messages delivered to subscribers.",
            c.sys_out,
        );
        o.family(
            "tidemq_messages_dropped_total",
            "counter",
            "Messages not delivered, by reason.",
        );
        for why in DropReason::ALL {
            o.sample(
                "tidemq_messages_dropped_total",
                &[("reason", why.label())],
                c.drops_of(why),
            );
        }
        self.latency_text(&mut o);
        self.connection_text(&mut o);
        o.one(
            "tidemq_store_commits_total",
            "counter",
            "Store commits reported durable.",
            c.store_commits,
        );
        o.one(
            "tidemq_store_records_total",
            "counter",
            "Records handed to the store.",
            c.store_records,
        );
        o.one(
            "tidemq_store_snapshots_total",
            "counter",
            "Snapshots of the live state taken for the store.",
            c.store_snapshots,
        );
        self.store_text(&mut o);
        o.family(
            "tidemq_admin_requests_total",
            "counter",
            "Admin API requests answered, by HTTP status.",
        );
        for (code, n) in &c.admin_replies {
            o.sample(
                "tidemq_admin_requests_total",
                &[("code", &code.to_string())],
                n,
            );
        }
        self.bridge_text(&mut o);
        self.cluster_text(&mut o);
        o.one(
            "tidemq_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process at the runtime's last sample.",
            self.metrics.rss_bytes,
        );
        *out = o.0;
    }

    fn latency_text(&self, o: &mut Out) {
        let name = "tidemq_publish_deliver_latency_seconds";
        let h = &self.counters.latency;
        o.family(
            name,
            "histogram",
            "Time from a message's arrival to its first delivery, on the broker's clock.",
        );
        let bucket = format!("{name}_bucket");
        for (bound, n) in h.cumulative() {
            let le = bound.map_or("+Inf".to_owned(), |ms| (ms as f64 / 1000.0).to_string());
            o.sample(&bucket, &[("le", &le)], n);
        }
        o.sample(&format!("{name}_sum"), &[], h.sum_ms as f64 / 1000.0);
        o.sample(&format!("{name}_count"), &[], h.count);
        debug_assert_eq!(h.buckets.len(), LATENCY_BOUNDS_MS.len() + 1);
    }

    /// The store thread's figures (all zero with persistence off).
    fn store_text(&self, o: &mut Out) {
        let s = &self.counters.store;
        let name = "tidemq_store_commit_duration_seconds";
        o.family(
            name,
            "histogram",
            "Group commits (append through fsync) by how long they took.",
        );
        let bucket = format!("{name}_bucket");
        let mut total = 0;
        for (i, n) in s.commit_buckets.iter().enumerate() {
            total += n;
            let le = COMMIT_BOUNDS_US
                .get(i)
                .map_or("+Inf".to_owned(), |us| (*us as f64 / 1e6).to_string());
            o.sample(&bucket, &[("le", &le)], total);
        }
        o.sample(&format!("{name}_sum"), &[], s.commit_sum_us as f64 / 1e6);
        o.sample(&format!("{name}_count"), &[], total);
        o.one(
            "tidemq_store_group_records_total",
            "counter",
            "Records written by the group commits (over their count: the mean group size).",
            s.group_records,
        );
        o.one(
            "tidemq_store_journal_written_bytes_total",
            "counter",
            "Bytes written to journal segments.",
            s.journal_bytes,
        );
        o.one(
            "tidemq_store_disk_bytes",
            "gauge",
            "Disk the store uses (journal segments and snapshots); new durable work is \
             refused at persistence.max_disk.",
            s.disk_bytes,
        );
        o.one(
            "tidemq_store_snapshots_written_total",
            "counter",
            "Snapshots the store wrote.",
            s.snapshots_written,
        );
        o.one(
            "tidemq_store_last_snapshot_duration_seconds",
            "gauge",
            "How long the last snapshot took to write.",
            s.last_snapshot_us as f64 / 1e6,
        );
    }

    fn connection_text(&self, o: &mut Out) {
        let c = &self.counters;
        let r = &c.runtime;
        o.one(
            "tidemq_connections_accepted_total",
            "counter",
            "Client connections the broker took on.",
            c.sockets,
        );
        o.family(
            "tidemq_connects_total",
            "counter",
            "CONNECT packets answered, by result.",
        );
        let refused: u64 = c.connects_refused.values().sum();
        o.sample(
            "tidemq_connects_total",
            &[("result", "success")],
            c.connects_ok,
        );
        o.sample("tidemq_connects_total", &[("result", "refused")], refused);
        o.family(
            "tidemq_connects_refused_total",
            "counter",
            "CONNECT packets refused, by CONNACK reason code.",
        );
        for (code, n) in &c.connects_refused {
            o.sample(
                "tidemq_connects_refused_total",
                &[("reason_code", &format!("0x{code:02x}"))],
                n,
            );
        }
        o.family(
            "tidemq_connections_refused_total",
            "counter",
            "Connections the runtime refused before MQTT, by reason.",
        );
        for (reason, n) in [
            ("max_connections", r.refused_max_connections),
            ("per_ip", r.refused_per_ip),
            ("rate", r.refused_rate),
            ("accept_error", r.accept_errors),
        ] {
            o.sample("tidemq_connections_refused_total", &[("reason", reason)], n);
        }
        o.family(
            "tidemq_connections_cut_total",
            "counter",
            "Connections the runtime cut, by reason.",
        );
        o.sample(
            "tidemq_connections_cut_total",
            &[("reason", "write_stall")],
            r.write_stalls,
        );
        o.sample(
            "tidemq_connections_cut_total",
            &[("reason", "queue_overflow")],
            r.queue_overflows,
        );
        o.one(
            "tidemq_sessions_expired_total",
            "counter",
            "Sessions removed because their expiry interval ran out.",
            c.sessions_expired,
        );
    }

    fn bridge_text(&self, o: &mut Out) {
        let families: [(&str, &str, &str); 6] = [
            (
                "tidemq_bridge_up",
                "gauge",
                "1 while the bridge's link is up.",
            ),
            (
                "tidemq_bridge_outbox_messages",
                "gauge",
                "Messages waiting for the remote or in flight there.",
            ),
            (
                "tidemq_bridge_reconnects_total",
                "counter",
                "Times the bridge's link came up again after the first.",
            ),
            (
                "tidemq_bridge_messages_total",
                "counter",
                "Messages forwarded to the remote or received from it.",
            ),
            (
                "tidemq_bridge_bytes_total",
                "counter",
                "Bytes of the packets forwarded to the remote or received from it.",
            ),
            (
                "tidemq_bridge_dropped_total",
                "counter",
                "Messages the bridge dropped, by direction.",
            ),
        ];
        for (i, (name, kind, help)) in families.iter().enumerate() {
            o.family(name, kind, help);
            for b in self.bridges_in_order() {
                let n = b.name.as_str();
                let k = &b.counters;
                match i {
                    0 => o.sample(name, &[("bridge", n)], u8::from(b.link == Link::Up)),
                    1 => {
                        let (queued, inflight) = b.backlog();
                        o.sample(name, &[("bridge", n)], queued + inflight);
                    }
                    2 => o.sample(name, &[("bridge", n)], k.connects.saturating_sub(1)),
                    _ => {
                        let (fwd, rcv) = match i {
                            3 => (k.tx_msgs, k.rx_msgs),
                            4 => (k.tx_bytes, k.rx_bytes),
                            _ => (k.send_drop, k.recv_drop),
                        };
                        o.sample(name, &[("bridge", n), ("direction", "forward")], fwd);
                        o.sample(name, &[("bridge", n), ("direction", "receive")], rcv);
                    }
                }
            }
        }
    }

    /// Cluster mode's figures (absent on a single node).
    fn cluster_text(&self, o: &mut Out) {
        let Some(c) = self.cluster.as_deref() else {
            return;
        };
        let k = &c.counters;
        let claims = c.owner.counters;
        let families: [(&str, &str, &str, u64); 20] = [
            (
                "tidemq_cluster_nats_subscriptions",
                "gauge",
                "NATS subscriptions this node holds for its sessions' distinct filters.",
                c.interest.subscriptions() as u64,
            ),
            (
                "tidemq_cluster_filters",
                "gauge",
                "Distinct filters (and share groups) of this node's sessions.",
                c.interest.filters() as u64,
            ),
            (
                "tidemq_cluster_published_total",
                "counter",
                "Messages this node published to the other nodes.",
                k.published,
            ),
            (
                "tidemq_cluster_received_total",
                "counter",
                "Copies of messages from other nodes taken here (one per matching NATS subscription).",
                k.received,
            ),
            (
                "tidemq_cluster_durable_total",
                "counter",
                "QoS 1/2 messages JetStream acknowledged before they were routed.",
                k.durable,
            ),
            (
                "tidemq_cluster_durable_failed_total",
                "counter",
                "QoS 1/2 messages JetStream did not acknowledge: refused to their publisher.",
                k.durable_failed,
            ),
            (
                "tidemq_cluster_refused_total",
                "counter",
                "Publishes and subscriptions refused for the cluster (subject too long, full), and malformed messages from it.",
                k.refused + k.malformed,
            ),
            (
                "tidemq_cluster_dropped_total",
                "counter",
                "QoS 0 messages and retained writes dropped because the queue to NATS was full.",
                self.counters.runtime.cluster_dropped,
            ),
            (
                "tidemq_cluster_claims_total",
                "counter",
                "Client ids this node claimed in the sessions bucket.",
                claims.claims,
            ),
            (
                "tidemq_cluster_claims_failed_total",
                "counter",
                "Claims of client ids the sessions bucket did not take in time.",
                claims.claims_failed,
            ),
            (
                "tidemq_cluster_taken_over_total",
                "counter",
                "Sessions ended here because another node claimed their client id.",
                claims.taken_over,
            ),
            (
                "tidemq_cluster_session_records_total",
                "counter",
                "Persistent sessions' records written to the sessions bucket.",
                claims.records,
            ),
            (
                "tidemq_cluster_session_records_failed_total",
                "counter",
                "Session record writes not made (no answer in time, or fenced by another owner).",
                claims.records_failed,
            ),
            (
                "tidemq_cluster_sessions_resumed_total",
                "counter",
                "Persistent sessions resumed here from another node's record.",
                claims.resumed,
            ),
            (
                "tidemq_cluster_caught_up_total",
                "counter",
                "Messages catch-up reads of the durable stream brought to resumed sessions.",
                claims.caught_up,
            ),
            (
                "tidemq_cluster_scans_total",
                "counter",
                "Reads of the whole sessions bucket this node made as the reaper.",
                c.reaper.scans,
            ),
            (
                "tidemq_cluster_records_reaped_total",
                "counter",
                "Deletes asked for by this node's scans: entries of ended node starts nobody would resume.",
                c.reaper.reaped,
            ),
            (
                "tidemq_cluster_nodes",
                "gauge",
                "Nodes whose heartbeat this node heard within node_ttl, itself included.",
                c.nodes.live().count() as u64 + 1,
            ),
            (
                "tidemq_cluster_cut_off",
                "gauge",
                "1 while the node, without NATS for node_ttl, sends its clients to another server.",
                u64::from(c.cut_off),
            ),
            (
                "tidemq_cluster_heartbeats_ignored_total",
                "counter",
                "Heartbeats ignored: malformed, this node's own name from another node, or past 64 nodes.",
                c.nodes.ignored,
            ),
        ];
        for (name, kind, help, value) in families {
            o.one(name, kind, help, value);
        }
    }
}
