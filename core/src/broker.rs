//! The broker: owns every connection, session, subscription, retained message, bridge and
//! timer, and turns inputs into outputs. This file holds the state and the entry points; each
//! flow lives in a file of its own under `broker/`:
//!
//! | file | flow |
//! |---|---|
//! | `io.rs` | bytes in and out: accept, decode, the packet dispatch, send, flush, back-pressure, close |
//! | `keepalive.rs` | the connect timeout and keep alive |
//! | `connect.rs` | CONNECT, takeover, CONNACK, DISCONNECT |
//! | `auth.rs` | credentials: decided here, or checked outside and waited for |
//! | `acl.rs` | the ACL on PUBLISH and SUBSCRIBE, and stored subscriptions after an ACL change |
//! | `expiry.rs` | a session without its connection: will delay, expiry, its end |
//! | `inbound.rs` | client PUBLISH, inbound QoS 2 (PUBREC, PUBREL, PUBCOMP) |
//! | `route.rs` | retained messages and routing to subscriptions and bridges |
//! | `deliver.rs` | delivery to a session: queue, window, PUBLISH, PUBACK/PUBREC/PUBCOMP |
//! | `subscribe.rs` | SUBSCRIBE and UNSUBSCRIBE |
//! | `will.rs` | wills and `$SYS` events |
//! | `bridging.rs` | driving the bridges: links, forwarding, their messages coming in |
//! | `clustering.rs` | cluster mode: NATS interest, messages to and from other nodes, the retained mirror |
//! | `admin_api.rs` | the HTTP API V1 requests |
//! | `admin_v4.rs` | the HTTP API v4 requests (`admin_v4_mqtt.rs`: publish and subscribe on a client's behalf; `admin_v4_bridge.rs`: bridges) |
//! | `metrics.rs` | the v4 API's metrics and NanoMQ's Prometheus text (`exposition.rs`: the `tidemq_*` set) |
//! | `sys_stats.rs` | the broker's figures at one moment, and the `$SYS/broker` tree timer |
//! | `restore.rs` | rebuilding the broker from what the store recovered |

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use crate::admin::PendingConfig;
use crate::api::{BrokerEvent, ConnId, Input, Instant, Output};
use crate::bridge::Bridge;
use crate::codec::reason;
use crate::config::Config;
use crate::conn::{CloseReason, Conn};
use crate::durable::{Durability, Wall};
use crate::ids::BridgeId;
use crate::ids::SessionId;
use crate::message::{EncodedQos0, Message};
use crate::retain_trie::RetainTrie;
use crate::rng::Rng;
use crate::session::{Session, Subscription};
use crate::timer::{Timer, Timers};
use crate::topic::SubscriptionTrie;

mod acl;
mod admin_api;
mod admin_v4;
mod admin_v4_bridge;
mod admin_v4_mqtt;
mod auth;
mod bridging;
mod cluster_link;
mod cluster_nodes;
mod cluster_owner;
mod cluster_qos2;
mod cluster_reaper;
mod cluster_session;
mod clustering;
mod connect;
mod deliver;
mod disk;
mod expiry;
mod exposition;
mod inbound;
mod io;
mod keepalive;
mod metrics;
mod restore;
mod retained_replay;
mod route;
mod subscribe;
mod sys_stats;
mod will;

/// Broker-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained: u64,
    /// PUBLISH packets accepted from clients, and wills.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Messages that could not be delivered: queue full, slow reader, expired, too large.
    pub messages_dropped: u64,
    /// Client messages (and wills) that matched no subscription.
    pub messages_unrouted: u64,
    /// Credential checks answered: good, bad, and refused as busy (here or by the checker).
    pub auth_succeeded: u64,
    pub auth_failed: u64,
    pub auth_busy: u64,
    /// ACL decisions on client PUBLISH and SUBSCRIBE.
    pub acl_allowed: u64,
    pub acl_denied: u64,
    /// Stored subscriptions an ACL change removed.
    pub acl_revoked: u64,
}

/// The broker core. See the crate documentation for the calling discipline.
pub struct Broker {
    config: Config,
    rng: Rng,
    now: Instant,
    /// Wall clock at `wall_at`, for timestamps shown to users.
    wall_ms: u64,
    wall_at: Instant,
    // Boxed: map nodes stay small, each entry costs only its own size (memory per idle client).
    conns: BTreeMap<ConnId, Box<Conn>>,
    sessions: BTreeMap<SessionId, Box<Session>>,
    by_client_id: BTreeMap<String, SessionId>,
    offline_by_end: crate::session::OfflineByEnd,
    next_session_id: SessionId,
    subscriptions: SubscriptionTrie<SessionId, Subscription>,
    retained: RetainTrie<Arc<Message>>,
    replay_due: crate::session::ReplayDue,
    timers: Timers,
    outputs: VecDeque<Output>,
    /// Messages dropped during the current input, by client and reason: one
    /// `MessagesDropped` event each when the input ends, however many were dropped.
    drops: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Connections with bytes in `tx`, in the order they were first written this round.
    dirty: Vec<ConnId>,
    stats: Stats,
    /// Admin set-configurations waiting for their file write, in arrival order.
    pending_config: BTreeMap<u64, PendingConfig>,
    /// Restarts asked through the admin API, by request, with the `seq` to answer with.
    pending_restart: BTreeMap<u64, serde_json::Value>,
    /// Enabled bridges, by number; their numbers by name, and by connection.
    bridges: BTreeMap<BridgeId, Bridge>,
    bridge_ids: BTreeMap<String, BridgeId>,
    bridge_conns: BTreeMap<ConnId, BridgeId>,
    next_bridge_id: u32,
    next_bridge_conn: u64,
    /// This broker's mark on messages it bridges out (v5), to recognise them coming back.
    node_id: String,
    store: Durability,
    /// Compaction of a store at its disk cap: the timer, and the wait before the next one.
    compact: crate::durable::Compaction,
    /// The last QoS 0 PUBLISH encoded, so a fan-out encodes each message once per version.
    last_qos0: Option<EncodedQos0>,
    /// When the broker started (the v4 API's uptime).
    started: Instant,
    /// The HTTP API v4's requests between inputs, and the metrics it shows.
    v4: crate::admin::v4::V4Pending,
    metrics: crate::metrics::Metrics,
    /// What the broker holds for peers, against `max_memory`.
    memory: crate::memory::Memory,
    counters: crate::metrics::Counters,
    /// The `$SYS/broker` tree: what was last published, the load averages, its timer.
    sys_tree: crate::sys_tree::SysTree,
    /// Connections waiting for an [`Input::AuthResult`] (bounded by `auth.max_pending`).
    authenticating: BTreeSet<ConnId>,
    /// The ACL service's answers for the packet being processed after them.
    acl_answers: BTreeMap<(crate::acl::Action, String), crate::acl::Decision>,
    /// Cluster mode's state; `None` on a single node.
    cluster: Option<Box<crate::cluster::Cluster>>,
}

impl Broker {
    /// A broker with no connections. `seed` is the only randomness it will ever use.
    pub fn new(config: Config, seed: u64, now: Instant) -> Broker {
        let mode = config.persistence.enable.then_some(config.persistence.sync);
        let mut broker = Broker {
            config,
            rng: Rng::new(seed),
            now,
            wall_ms: 0,
            wall_at: now,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            by_client_id: BTreeMap::new(),
            offline_by_end: Default::default(),
            next_session_id: 1,
            subscriptions: SubscriptionTrie::default(),
            retained: RetainTrie::default(),
            replay_due: Default::default(),
            timers: Timers::default(),
            outputs: VecDeque::new(),
            drops: BTreeMap::new(),
            dirty: Vec::new(),
            stats: Stats::default(),
            pending_config: BTreeMap::new(),
            pending_restart: BTreeMap::new(),
            bridges: BTreeMap::new(),
            bridge_ids: BTreeMap::new(),
            bridge_conns: BTreeMap::new(),
            next_bridge_id: 0,
            next_bridge_conn: 0,
            node_id: String::new(),
            store: Durability::new(mode),
            compact: Default::default(),
            last_qos0: None,
            started: now,
            v4: Default::default(),
            metrics: Default::default(),
            memory: Default::default(),
            counters: Default::default(),
            sys_tree: Default::default(),
            authenticating: BTreeSet::new(),
            acl_answers: BTreeMap::new(),
            cluster: None,
        };
        broker.node_id = format!("{:016x}", broker.rng.next_u64());
        broker.cluster_start();
        broker.configure_bridges();
        broker.arm_sys_timer();
        broker
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len() as u64,
            sessions: self.sessions.len() as u64,
            subscriptions: self.subscriptions.len() as u64,
            retained: self.retained.len() as u64,
            ..self.stats
        }
    }

    /// Bytes held for peers now, as counted against `max_memory`.
    pub fn memory_used(&self) -> usize {
        self.memory.used()
    }

    /// Applies one input at `now`. `now` never goes backwards; an earlier value is treated
    /// as the last one seen.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        self.store.begin_input();
        match input {
            Input::Accepted { conn, peer } => self.accept(conn, peer),
            Input::Received { conn, bytes } => match self.bridge_of(conn) {
                Some(bridge) => self.bridge_receive(bridge, &bytes),
                None => self.receive(conn, &bytes),
            },
            Input::BridgeConnected { conn } => self.bridge_connected(conn),
            Input::BridgeConnectFailed { conn, error } => self.bridge_connect_failed(conn, &error),
            Input::Written { conn, bytes } => self.written(conn, bytes),
            Input::PeerCertificate { conn, identity } => self.peer_certificate(conn, identity),
            Input::Closed { conn } => {
                if let Some(bridge) = self.bridge_of(conn) {
                    self.bridge_link_down(bridge, "connection lost", false);
                } else if self.conns.contains_key(&conn) {
                    self.drop_conn(
                        conn,
                        CloseReason {
                            peer_gone: true,
                            code: reason::UNSPECIFIED_ERROR,
                            notify: false,
                            will: true,
                            detail: "connection lost".to_owned(),
                        },
                    );
                }
            }
            Input::Timeout => self.fire_timers(),
            Input::AuthResult { conn, outcome } => self.auth_result(conn, outcome),
            Input::AuthorizeResult {
                conn,
                action,
                topic,
                allow,
            } => self.acl_result(conn, action, topic, allow),
            Input::ClusterMessage {
                sid,
                subject,
                payload,
            } => self.cluster_message(sid, &subject, payload),
            Input::ClusterRetained { key, value } => self.cluster_retained(&key, value),
            Input::ClusterDurableDone { token, seq } => self.cluster_durable_done(token, seq),
            Input::ClusterFeedMessage {
                seq,
                subject,
                payload,
            } => self.cluster_feed_message(seq, &subject, payload),
            Input::ClusterFeedStart { seq } => {
                if let Some(c) = self.cluster.as_deref_mut() {
                    c.feed_at(seq);
                }
                self.route_after_feed();
                self.start_catch_ups();
            }
            Input::ClusterRecorded { token, answer } => self.cluster_recorded(token, answer),
            Input::ClusterCatchUpMessage {
                token,
                seq,
                subject,
                payload,
            } => self.cluster_catch_up_message(token, seq, &subject, payload),
            Input::ClusterCatchUpDone { token, ok } => self.cluster_catch_up_done(token, ok),
            Input::ClusterLookedUp { token, entry } => self.cluster_looked_up(token, entry),
            Input::ClusterScanned {
                token,
                entries,
                done,
            } => self.cluster_scanned(token, entries, done),
            Input::ClusterClaimed {
                token,
                revision,
                previous,
            } => self.cluster_claimed(token, revision, previous),
            Input::ClusterLink { up } => self.cluster_link(up),
            Input::ClusterRetainFailed { key } => {
                if let Some(c) = self.cluster.as_deref_mut() {
                    c.own_retained_seen(&key);
                }
            }
            Input::WallClock { unix_ms } => {
                self.wall_ms = unix_ms;
                self.wall_at = self.now;
            }
            Input::ConfigChange(config) => match config.validate() {
                Ok(()) => {
                    let acl_changed = self.config.acl != config.acl;
                    // Cluster settings are read at start.
                    let cluster = self.config.cluster.clone();
                    self.config = *config;
                    self.config.cluster = cluster;
                    self.configure_bridges();
                    self.arm_sys_timer();
                    if acl_changed {
                        self.revoke_denied_subscriptions();
                    }
                    self.event(BrokerEvent::ConfigApplied);
                }
                Err(error) => self.event(BrokerEvent::ConfigRejected { error }),
            },
            Input::AdminAuthorize {
                req_id,
                credentials,
            } => self.handle_admin_authorize(req_id, &credentials),
            Input::Admin {
                req_id,
                credentials,
                body,
            } => self.handle_admin(req_id, &credentials, &body),
            Input::AdminV4 {
                req_id,
                credentials,
                method,
                path,
                query,
                body,
            } => self.handle_admin_v4(req_id, &credentials, &method, &path, &query, &body),
            Input::ProcessStats {
                rss_bytes,
                cpu_percent,
            } => self.process_stats(rss_bytes, cpu_percent),
            Input::AdminConfigWritten { req_id, result } => self.config_written(req_id, result),
            Input::ControlDone { req_id, result } => self.control_done(req_id, result),
            Input::RuntimeCounters(c) => self.counters.runtime = c,
            Input::StoreFigures(f) => self.counters.store = f,
            Input::MetricsScrape { req_id } => {
                let text = self.prometheus_text();
                self.v4_reply(req_id, crate::admin::v4::V4Reply::text(text));
            }
            Input::PersistDone { upto } => {
                self.counters.store_commits += 1;
                self.store.done(upto);
                self.release_held();
                self.release_v4_replies();
            }
            Input::PersistFailed { error } => {
                self.fail_v4_replies();
                if self.store.fail() {
                    self.event(BrokerEvent::StoreFailed { error });
                    self.cut_held_connections();
                }
            }
            Input::SnapshotRequest => self.write_snapshot(),
            Input::StoreUsage { bytes, refusing } => self.store_usage(bytes, refusing),
            Input::Shutdown => {
                self.close_bridges();
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    self.drop_conn(
                        conn,
                        CloseReason {
                            peer_gone: false,
                            code: reason::SERVER_SHUTTING_DOWN,
                            notify: true,
                            will: false,
                            detail: "server shutting down".to_owned(),
                        },
                    );
                }
            }
        }
        self.report_drops();
        self.flush_all();
    }

    /// Counts undelivered messages, in the total and by reason.
    fn count_dropped(&mut self, why: crate::metrics::DropReason, n: u64) {
        self.stats.messages_dropped += n;
        self.counters.dropped(why, n);
    }

    /// Counts messages dropped for `client_id`; reported once per input by [`Self::report_drops`].
    fn count_drops(&mut self, client_id: &str, why: &'static str, count: u64) {
        match self.drops.get_mut(client_id) {
            Some(by_why) => *by_why.entry(why).or_insert(0) += count,
            None => {
                self.drops
                    .insert(client_id.to_owned(), BTreeMap::from([(why, count)]));
            }
        }
    }

    fn report_drops(&mut self) {
        for (client_id, by_why) in std::mem::take(&mut self.drops) {
            for (why, count) in by_why {
                self.event(BrokerEvent::MessagesDropped {
                    client_id: client_id.clone(),
                    count,
                    why,
                });
            }
        }
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the broker next needs [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    fn event(&mut self, e: BrokerEvent) {
        match &e {
            BrokerEvent::ClientConnected { .. } => self.counters.connects_ok += 1,
            BrokerEvent::ConnectRefused { reason_code, .. } => {
                self.counters.connect_refused(reason_code.0)
            }
            BrokerEvent::SessionExpired { .. } => self.counters.sessions_expired += 1,
            _ => {}
        }
        self.outputs.push_back(Output::Event(e));
    }

    fn wall_now(&self) -> u64 {
        self.wall_ms.saturating_add(self.now.since(self.wall_at))
    }

    fn wall(&self) -> Wall {
        Wall {
            now: self.now,
            unix_ms: self.wall_now(),
        }
    }

    /// Every timer due now, earliest first; each owner re-arms its own.
    fn fire_timers(&mut self) {
        while let Some((at, timer)) = self.timers.pop_due(self.now) {
            match timer {
                Timer::Conn(id) => self.conn_timer(id, at),
                Timer::Session(sid) => self.session_timer(sid, at),
                Timer::Bridge(key) => self.bridge_timer(key, at),
                Timer::Sys => self.sys_tick(at),
                Timer::Replay => self.replay_timer(),
                Timer::Compact => self.compact_tick(at),
                Timer::ClusterRecords => self.record_tick(),
                Timer::ClusterHeartbeat => self.heartbeat_tick(at),
                Timer::ClusterGather => self.gather_tick(at),
                Timer::ClusterCutOff => self.cut_off_tick(at),
            }
        }
    }
}
