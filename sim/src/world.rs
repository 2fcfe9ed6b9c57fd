//! The simulated world: one broker core, the network, the clients, faults and time.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tidemq_core::admin::{Credentials, JwtVerdict};
use tidemq_core::codec::{
    DecodeError, DecodeLimits, Packet, ProtocolVersion, ReasonCode, decode_packet,
};
use tidemq_core::config::HttpAuthType;
use tidemq_core::persist::{Record, Recovered};
use tidemq_core::{AuthOutcome, Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};

use crate::client::{Client, Cmd, Ctx, Role, pub_of};
use crate::mutation::Mutation;
use crate::net::{Mode, Pipe, Seg};
use crate::remote::FloodRemote;
use crate::rng::Rng;
use crate::scenario::{Family, Knobs};
use crate::store::{SimStore, StoreAct};
use crate::trace::{AckKind, Ev, Got, Rec, RestoredSession, Sent, Tag, Trace};

/// The wall clock the simulated brokers are given: sim time plus this.
pub const WALL_BASE_MS: u64 = 1_700_000_000_000;

/// Most loop iterations one run may take: a livelock shows up as `Stuck`.
const MAX_ITERATIONS: u64 = 2_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Both,
    ClientToBroker,
    BrokerToClient,
}

struct SimConn {
    actor: usize,
    c2s: Pipe,
    s2c: Pipe,
    /// Broker output not yet accepted by the socket (the broker's unwritten bytes).
    sendq: VecDeque<Seg>,
    sendq_bytes: usize,
    broker_open: bool,
    client_open: bool,
    /// Reference decoder of what the broker reads.
    shadow_in: BytesMut,
    in_version: Option<ProtocolVersion>,
    /// Topic aliases the broker set towards the client (alias -> topic).
    out_aliases: BTreeMap<u16, String>,
    in_dead: bool,
    aliases: BTreeMap<u16, String>,
    alias_max: u16,
    shadow_out: BytesMut,
    /// Last whole packet the broker read, and the silence it allows.
    last_rx: u64,
    idle_limit: u64,
    keepalive_close: bool,
    /// The client stopped reading (an adversary): held until the broker closes.
    stopped_reading: bool,
}

/// Where a broker crash waits to happen (S6/S7 with a store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrashPoint {
    /// Right after the broker hands the store a batch (before it is written).
    NextPersist,
    /// After a group commit, before its `PersistDone` reaches the broker.
    NextDone,
    /// While a snapshot is being written.
    MidSnapshot,
}

/// What a checker needs to know about an actor.
#[derive(Debug, Clone)]
pub struct ActorInfo {
    pub client_id: String,
    pub role: Role,
    pub v5: bool,
    pub receive_max: Option<u16>,
}

pub struct World {
    pub knobs: Knobs,
    seed: u64,
    broker: Broker,
    incarnation: u32,
    pub trace: Trace,
    net_rng: Rng,
    fault_rng: Rng,
    client_rng: Rng,
    conns: BTreeMap<u64, SimConn>,
    next_conn: u64,
    pub clients: Vec<Client>,
    /// Per actor: a partition in force and when it ends.
    partitions: BTreeMap<usize, (Dir, u64)>,
    /// Swizzle: actors to clog at a time.
    swizzle: Vec<(u64, usize, bool)>,
    heal: bool,
    next_fault: u64,
    frozen_until: u64,
    now: u64,
    iterations: u64,
    rotate: usize,
    pub mutation: Option<Mutation>,
    /// The memory budget I2 holds the broker to when the broker was given another.
    budget_under_test: Option<u64>,
    // Admin plane (S20/S21).
    admin_rng: Rng,
    admin_on: bool,
    next_admin: u64,
    next_req: u64,
    /// Set-configuration writes to answer: (when, req id, succeed).
    writes: Vec<(u64, u64, bool)>,
    /// Req 10 restarts to answer: (when, req id, applied wholly).
    restarts: Vec<(u64, u64, bool)>,
    /// Credential checks to answer: (when, conn, outcome as in `Ev::AuthAnswered`); the
    /// delays are drawn per request, so answers come back out of order.
    auth_answers: Vec<(u64, u64, u8)>,
    auth_rng: Rng,
    /// What a connection waiting for its check sent, from its CONNECT on: the broker reads
    /// it only after the answer, and the trace shows it then.
    auth_stash: BTreeMap<u64, Vec<Ev>>,
    /// Recorded after `pre_event`, in the same step.
    pre_extra: Vec<Ev>,
    /// Request heads the broker authorized (their bodies may be sent).
    authorized: std::collections::BTreeSet<u64>,
    /// The admin password in force, as far as the sim knows.
    password: String,
    /// The password a configuration change being fed would bring.
    sent_password: Option<String>,
    /// Recorded as the first event of the next input's step.
    pre_event: Option<Ev>,
    // Persistence (S6/S7).
    store: Option<SimStore>,
    persist_rng: Rng,
    /// The broker is down (crashed) until then.
    down_until: Option<u64>,
    /// What the next broker is restored from.
    recovered: Option<Recovered>,
    /// A crash waiting for its point, and the time it happens regardless.
    crash_point: Option<(CrashPoint, u64)>,
    crash_now: bool,
    next_snapshot: u64,
    /// After a store failure, the broker exits (fail fast) at this time.
    fail_exit_at: Option<u64>,
    /// QoS of each stored delivery (client id, entry), to tell its `OutState` records apart.
    entry_qos: BTreeMap<(String, u64), u8>,
    /// S25: the hostile bridge remote, its own random stream, and what it sent during the
    /// current input (fed after it).
    remote: Option<FloodRemote>,
    remote_rng: Rng,
    remote_inputs: Vec<Input>,
}

impl World {
    pub fn new(seed: u64, mutation: Option<Mutation>) -> World {
        World::in_family(seed, Family::of_seed(seed), mutation)
    }

    pub fn in_family(seed: u64, family: Family, mutation: Option<Mutation>) -> World {
        let mut knobs = Knobs::in_family(seed, family);
        // The planted limit removal: the broker runs without the budget the checks hold it to.
        let budget_under_test = (mutation == Some(Mutation::NoMemoryBudget)).then(|| {
            let budget = knobs.config.max_memory;
            knobs.config.max_memory = 1 << 50;
            budget
        });
        let mut master = Rng::new(seed.wrapping_mul(31).wrapping_add(7));
        let clients = knobs
            .profiles
            .iter()
            .enumerate()
            .map(|(i, p)| Client::new(i, p.clone(), (i as u64) * 37))
            .collect();
        let mut trace = Trace::default();
        trace.push(Ev::BrokerStart { incarnation: 0 });
        let net_rng = master.fork();
        let fault_rng = master.fork();
        let client_rng = master.fork();
        let admin_rng = master.fork();
        let mut persist_rng = master.fork();
        let mut broker = Broker::new(knobs.config.clone(), seed, Instant(0));
        let store = knobs.config.persistence.enable.then(|| {
            let lie = mutation == Some(Mutation::StoreAcksUnsynced);
            let mut store = SimStore::new(knobs.config.persistence.sync, persist_rng.fork(), lie);
            if let Some((lo, hi)) = knobs.persist_fail {
                store.fail_at = Some(persist_rng.range(lo, hi));
            }
            broker = Broker::from_recovered(
                knobs.config.clone(),
                seed,
                Instant(0),
                Recovered::default(),
                WALL_BASE_MS,
            );
            store
        });
        World {
            broker,
            seed,
            incarnation: 0,
            trace,
            net_rng,
            fault_rng,
            client_rng,
            admin_rng,
            store,
            persist_rng,
            down_until: None,
            recovered: None,
            crash_point: None,
            crash_now: false,
            next_snapshot: 2_000,
            fail_exit_at: None,
            entry_qos: BTreeMap::new(),
            admin_on: matches!(knobs.family, Family::S20 | Family::S21),
            next_admin: 500,
            next_req: 1,
            writes: Vec::new(),
            restarts: Vec::new(),
            auth_answers: Vec::new(),
            auth_stash: BTreeMap::new(),
            pre_extra: Vec::new(),
            // Its own stream: other families draw exactly what they drew before.
            auth_rng: Rng::new(seed ^ 0xA17E_5EED_0000_0001),
            authorized: std::collections::BTreeSet::new(),
            password: knobs.config.http_server.password.clone(),
            sent_password: None,
            pre_event: None,
            conns: BTreeMap::new(),
            next_conn: 1,
            clients,
            partitions: BTreeMap::new(),
            swizzle: Vec::new(),
            heal: false,
            next_fault: 1_000,
            frozen_until: 0,
            now: 0,
            iterations: 0,
            rotate: 0,
            mutation,
            budget_under_test,
            remote: knobs
                .bridge_flood
                .then(|| FloodRemote::new(knobs.config.max_packet_size)),
            remote_rng: Rng::new(seed ^ 0xB21D_6E00_F100_D001),
            remote_inputs: Vec::new(),
            knobs,
        }
    }

    pub fn actors(&self) -> Vec<ActorInfo> {
        self.clients
            .iter()
            .map(|c| ActorInfo {
                client_id: c.p.client_id.clone(),
                role: c.p.role.clone(),
                v5: c.p.version.is_v5(),
                receive_max: c.p.receive_max,
            })
            .collect()
    }

    fn limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_packet_size: self.knobs.config.max_packet_size as usize,
            max_user_properties: self.knobs.config.property_size as usize,
        }
    }

    // ----- the broker ---------------------------------------------------------------------

    fn feed(&mut self, input: Input) {
        if self.down_until.is_some() {
            return;
        }
        let mut pending = VecDeque::from([input]);
        while let Some(input) = pending.pop_front() {
            self.trace.step += 1;
            self.trace.now = self.now;
            if let Some(ev) = self.pre_event.take() {
                self.trace.push(ev);
            }
            for ev in std::mem::take(&mut self.pre_extra) {
                self.trace.push(ev);
            }
            if let Input::Received { conn, bytes } = &input {
                self.shadow_in(conn.0, bytes);
            }
            self.broker.handle_input(Instant(self.now), input);
            while let Some(out) = self.broker.poll_output() {
                self.output(out);
            }
            self.check_memory();
            pending.extend(self.remote_inputs.drain(..));
            let ids: Vec<u64> = self.conns.keys().copied().collect();
            for id in ids {
                if let Some(written) = self.pump_sendq(id)
                    && written > 0
                {
                    pending.push_back(Input::Written {
                        conn: ConnId(id),
                        bytes: written,
                    });
                }
            }
        }
    }

    /// I2: what the broker holds for peers stays within `max_memory` plus what each live
    /// connection and session may still take once past it: a connection its write backlog
    /// (acknowledgements go out past the budget, up to twice `max_write_buffer`), a packet
    /// being read, its aliases; a session a short queue and its windows, each entry a
    /// message of the largest size.
    fn check_memory(&mut self) {
        let c = &self.knobs.config;
        let budget = self.budget_under_test.unwrap_or(c.max_memory);
        let stats = self.broker.stats();
        let bound = tidemq_core::accounting_bound(c, budget, stats.connections, stats.sessions);
        let used = self.broker.memory_used() as u64;
        if used > bound {
            self.trace.push(Ev::MemoryOver { used, bound });
        }
    }

    /// The reference decoder: what the broker must have read from these bytes.
    fn shadow_in(&mut self, id: u64, bytes: &Bytes) {
        let limits = self.limits();
        let alias_max_cfg = self.knobs.config.max_topic_alias;
        let max_ka = self.knobs.config.max_keepalive;
        let mult = self.knobs.config.keepalive_multiplier;
        let now = self.now;
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.in_dead {
            return;
        }
        c.shadow_in.extend_from_slice(bytes);
        let actor = c.actor;
        let mut events = Vec::new();
        loop {
            let version = c.in_version;
            let level = tidemq_core::codec::connect_protocol_level(&c.shadow_in);
            match decode_packet(&mut c.shadow_in, version, &limits) {
                Ok(None) => break,
                Err(e) => {
                    c.in_dead = true;
                    // A bad v5 CONNECT is answered (CONNACK with the reason) in v5; a level
                    // its protocol name does not speak (`MQIsdp` at 5) in 3.1.1.
                    let unsupported = matches!(e, DecodeError::UnsupportedVersion(_));
                    if version.is_none() && level == Some(5) && !unsupported {
                        c.in_version = Some(ProtocolVersion::V5);
                    }
                    events.push(Ev::GarbageFed {
                        conn: id,
                        code: e.reason_code().0,
                        notify: version == Some(ProtocolVersion::V5),
                    });
                    break;
                }
                Ok(Some(p)) => {
                    c.last_rx = now;
                    let got = match p {
                        Packet::Connect(cn) => {
                            c.in_version = Some(cn.version);
                            c.alias_max = alias_max_cfg;
                            let ka = if max_ka > 0 && (cn.keep_alive == 0 || cn.keep_alive > max_ka)
                            {
                                max_ka
                            } else {
                                cn.keep_alive
                            };
                            c.idle_limit = (f64::from(ka) * 1000.0 * mult) as u64;
                            let v5 = cn.version.is_v5();
                            Got::Connect {
                                client_id: cn.client_id.clone(),
                                clean_start: cn.clean_start,
                                v5,
                                expiry: if v5 {
                                    cn.properties.session_expiry_interval.unwrap_or(0)
                                } else if cn.clean_start {
                                    0
                                } else {
                                    u32::MAX
                                },
                                keep_alive: ka,
                                will: cn.will.as_ref().map(|w| {
                                    (
                                        w.properties.will_delay_interval.unwrap_or(0),
                                        Tag::parse(&w.payload),
                                    )
                                }),
                            }
                        }
                        Packet::Publish(mut p) => {
                            if let Some(a) = p.properties.topic_alias {
                                if a == 0 || a > c.alias_max {
                                    c.in_dead = true;
                                    events.push(Ev::GarbageFed {
                                        conn: id,
                                        code: 0x94,
                                        notify: version == Some(ProtocolVersion::V5),
                                    });
                                    break;
                                }
                                if p.topic.is_empty() {
                                    match c.aliases.get(&a) {
                                        Some(t) => p.topic = t.clone(),
                                        None => {
                                            c.in_dead = true;
                                            events.push(Ev::GarbageFed {
                                                conn: id,
                                                code: 0x82,
                                                notify: version == Some(ProtocolVersion::V5),
                                            });
                                            break;
                                        }
                                    }
                                } else {
                                    c.aliases.insert(a, p.topic.clone());
                                }
                            }
                            Got::Publish(pub_of(&p))
                        }
                        Packet::Subscribe(s) => Got::Subscribe(
                            s.filters
                                .iter()
                                .map(|(f, o)| (f.clone(), o.qos as u8))
                                .collect(),
                        ),
                        Packet::Unsubscribe(u) => Got::Unsubscribe(u.filters.clone()),
                        Packet::Disconnect(d) => {
                            c.in_dead = true;
                            events.push(Ev::BrokerGot {
                                conn: id,
                                actor,
                                pkt: Got::Disconnect { reason: d.reason.0 },
                            });
                            break;
                        }
                        Packet::PubAck(a) => Got::Ack(AckKind::PubAck, a.packet_id),
                        Packet::PubRec(a) => Got::Ack(AckKind::PubRec, a.packet_id),
                        Packet::PubRel(a) => Got::Ack(AckKind::PubRel, a.packet_id),
                        Packet::PubComp(a) => Got::Ack(AckKind::PubComp, a.packet_id),
                        Packet::PingReq => Got::Ping,
                        _ => Got::Other,
                    };
                    events.push(Ev::BrokerGot {
                        conn: id,
                        actor,
                        pkt: got,
                    });
                }
            }
        }
        for e in events {
            match self.auth_stash.get_mut(&id) {
                Some(stash) => stash.push(e),
                None => self.trace.push(e),
            }
        }
    }

    fn output(&mut self, out: Output) {
        match out {
            Output::Transmit { conn, bytes } if self.is_remote_link(conn.0) => {
                if let Some(r) = &mut self.remote {
                    let answers = r.on_bytes(&bytes, &mut self.remote_rng);
                    if r.reading {
                        self.remote_inputs.push(Input::Written {
                            conn,
                            bytes: bytes.len(),
                        });
                    }
                    for bytes in answers {
                        self.remote_inputs.push(Input::Received { conn, bytes });
                    }
                }
            }
            Output::Close { conn } if self.is_remote_link(conn.0) => {
                if let Some(r) = &mut self.remote {
                    r.closed();
                }
            }
            Output::Transmit { conn, bytes } => {
                let id = conn.0;
                let mut events = Vec::new();
                if let Some(c) = self.conns.get_mut(&id) {
                    c.shadow_out.extend_from_slice(&bytes);
                    let version = c.in_version.unwrap_or(ProtocolVersion::V311);
                    let limits = DecodeLimits {
                        max_packet_size: 268_435_460,
                        max_user_properties: usize::MAX,
                    };
                    while let Ok(Some(p)) = decode_packet(&mut c.shadow_out, Some(version), &limits)
                    {
                        let sent = match p {
                            Packet::ConnAck(a) => Sent::ConnAck {
                                session_present: a.session_present,
                                code: a.code.0,
                            },
                            Packet::Publish(mut p) => {
                                if let Some(alias) = p.properties.topic_alias {
                                    if p.topic.is_empty() {
                                        match c.out_aliases.get(&alias) {
                                            Some(t) => p.topic = t.clone(),
                                            None => events.push(Ev::Fault(format!(
                                                "broker used unknown topic alias {alias}"
                                            ))),
                                        }
                                    } else {
                                        c.out_aliases.insert(alias, p.topic.clone());
                                    }
                                }
                                Sent::Publish(pub_of(&p))
                            }
                            Packet::PubAck(a) => {
                                Sent::Ack(AckKind::PubAck, a.packet_id, a.reason.0)
                            }
                            Packet::PubRec(a) => {
                                Sent::Ack(AckKind::PubRec, a.packet_id, a.reason.0)
                            }
                            Packet::PubRel(a) => {
                                Sent::Ack(AckKind::PubRel, a.packet_id, a.reason.0)
                            }
                            Packet::PubComp(a) => {
                                Sent::Ack(AckKind::PubComp, a.packet_id, a.reason.0)
                            }
                            Packet::SubAck(s) => {
                                Sent::SubAck(s.reasons.iter().map(|r| r.0).collect())
                            }
                            Packet::UnsubAck(u) => {
                                Sent::UnsubAck(u.reasons.iter().map(|r| r.0).collect())
                            }
                            Packet::Disconnect(d) => Sent::Disconnect { reason: d.reason.0 },
                            Packet::PingResp => Sent::PingResp,
                            _ => Sent::Other,
                        };
                        events.push(Ev::BrokerSent {
                            conn: id,
                            actor: c.actor,
                            pkt: sent,
                        });
                    }
                    c.sendq_bytes += bytes.len();
                    c.sendq.push_back(Seg::Data(bytes));
                    let bound = u64::from(self.knobs.config.max_write_buffer)
                        + 2 * u64::from(self.knobs.config.max_packet_size)
                        + 16_384;
                    let backlog = (c.sendq_bytes + c.s2c.in_flight) as u64;
                    if backlog > bound + self.knobs.sndbuf as u64 {
                        events.push(Ev::Backlog {
                            conn: id,
                            bytes: backlog,
                            bound: bound + self.knobs.sndbuf as u64,
                        });
                    }
                }
                for e in events {
                    self.trace.push(e);
                }
            }
            Output::Close { conn } => {
                if let Some(c) = self.conns.get_mut(&conn.0)
                    && c.broker_open
                {
                    c.broker_open = false;
                    c.sendq.push_back(Seg::Fin);
                    if c.stopped_reading {
                        // The reader that never read learns of the close at last.
                        c.s2c.release(self.now);
                    }
                    if c.keepalive_close {
                        let silent = self.now.saturating_sub(c.last_rx);
                        if silent < c.idle_limit {
                            let limit = c.idle_limit;
                            self.trace.push(Ev::KeepAliveEarly {
                                conn: conn.0,
                                silent_ms: silent,
                                limit_ms: limit,
                            });
                        }
                    }
                    self.auth_stash.remove(&conn.0);
                    self.trace.push(Ev::BrokerClosed {
                        conn: conn.0,
                        by_broker: true,
                    });
                }
            }
            Output::Event(e) => match e {
                BrokerEvent::MessagesDropped {
                    client_id,
                    count,
                    why,
                } => self.trace.push(Ev::Dropped {
                    client_id,
                    count,
                    why: why.to_owned(),
                }),
                BrokerEvent::SessionExpired { client_id } => {
                    self.trace.push(Ev::SessionExpired { client_id })
                }
                BrokerEvent::SessionShed { client_id } => {
                    self.trace.push(Ev::SessionShed { client_id })
                }
                BrokerEvent::ClientDisconnected {
                    conn,
                    reason_code: ReasonCode(0x8D),
                    ..
                } => {
                    if let Some(c) = self.conns.get_mut(&conn.0) {
                        c.keepalive_close = true;
                    }
                }
                BrokerEvent::ConfigApplied => {
                    if let Some(pw) = self.sent_password.take() {
                        self.password = pw;
                    }
                    self.trace.push(Ev::ConfigEvent { applied: true });
                }
                BrokerEvent::ConfigRejected { .. } => {
                    self.trace.push(Ev::ConfigEvent { applied: false })
                }
                _ => {}
            },
            Output::AdminReply {
                req_id,
                status,
                body,
                challenge,
                ..
            } => self.trace.push(Ev::AdminReply {
                req_id,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
                challenge: challenge.is_some(),
            }),
            Output::AdminAuthorized { req_id } => {
                self.trace.push(Ev::AdminAuthorized { req_id });
                self.authorized.insert(req_id);
            }
            Output::WriteConfig { req_id, .. } => {
                self.trace.push(Ev::AdminWrite { req_id });
                let at = self.now + self.admin_rng.range(0, 2_000);
                let ok = self.admin_rng.chance(700);
                self.writes.push((at, req_id, ok));
            }
            Output::Control { req_id, action } => {
                self.trace.push(Ev::AdminControl);
                if action == tidemq_core::admin::ControlAction::Restart {
                    let at = self.now + self.admin_rng.range(0, 500);
                    let ok = self.admin_rng.chance(800);
                    self.restarts.push((at, req_id, ok));
                }
            }
            Output::Persist { upto, records } => {
                let recs = records.iter().map(|r| self.summarize(r)).collect();
                self.trace.push(Ev::Persist { upto, recs });
                if let Some(store) = &mut self.store {
                    store.persist(self.now, upto, records);
                }
                if matches!(self.crash_point, Some((CrashPoint::NextPersist, _))) {
                    self.crash_now = true;
                }
            }
            Output::Snapshot { upto, records } => {
                self.trace.push(Ev::SnapshotTaken {
                    upto,
                    records: records.len() as u64,
                });
                if let Some(store) = &mut self.store
                    && let Some(detail) = store.snapshot(self.now, upto, records)
                {
                    self.trace.push(Ev::SnapshotMismatch { upto, detail });
                }
                if matches!(self.crash_point, Some((CrashPoint::MidSnapshot, _))) {
                    self.crash_now = true;
                }
            }
            // S25's hostile remote takes the link during the chaos; other bridges are
            // simulated in their own world (`bridge`).
            Output::BridgeConnect { conn, .. } => {
                if let Some(r) = &mut self.remote {
                    if r.retired {
                        self.remote_inputs.push(Input::BridgeConnectFailed {
                            conn,
                            error: "refused".to_owned(),
                        });
                    } else {
                        let at = self.now + 1 + self.remote_rng.below(5);
                        r.connect(conn.0, at);
                    }
                }
            }
            // No family configures an ACL service: being asked is a fault of the broker.
            // This world runs one node without cluster mode; the cluster world drives those.
            Output::ClusterSubscribe { .. }
            | Output::ClusterUnsubscribe { .. }
            | Output::ClusterPublish { .. }
            | Output::ClusterRetain { .. }
            | Output::ClusterClaim { .. }
            | Output::ClusterLookup { .. }
            | Output::ClusterRelease { .. }
            | Output::ClusterScan { .. }
            | Output::ClusterRecord { .. }
            | Output::ClusterCatchUp { .. }
            | Output::ClusterDurable { .. } => self.trace.push(Ev::Stuck(
                "a cluster output from a node without cluster mode".to_owned(),
            )),
            Output::Authorize { conn, .. } => self.trace.push(Ev::Stuck(format!(
                "conn {}: the ACL service was asked, none is configured",
                conn.0
            ))),
            Output::Authenticate { conn, .. } => {
                let connect = self.trace.entries.iter().rposition(|e| {
                    matches!(&e.ev, Ev::BrokerGot { conn: c, pkt: Got::Connect { .. }, .. } if *c == conn.0)
                });
                let stash = connect
                    .map(|i| self.trace.entries.remove(i).ev)
                    .into_iter()
                    .collect();
                self.auth_stash.insert(conn.0, stash);
                self.trace.push(Ev::AuthAsked { conn: conn.0 });
                let rng = &mut self.auth_rng;
                // Most answers within a second; some late (past the connect timeout), some
                // never (the connect timeout ends the wait).
                if rng.chance(30) {
                    return;
                }
                let delay = if rng.chance(100) {
                    rng.range(1_000, 8_000)
                } else {
                    rng.range(0, 1_000)
                };
                let outcome = if self.mutation == Some(Mutation::AuthGrantsSuperuser) {
                    3
                } else if rng.chance(60) {
                    1
                } else if rng.chance(60) {
                    2
                } else {
                    0
                };
                self.auth_answers.push((self.now + delay, conn.0, outcome));
            }
        }
    }

    /// A record for the trace; an `OutState` learns its delivery's QoS from the `QueuePut`.
    fn summarize(&mut self, r: &Record) -> Rec {
        let mut rec = Rec::of(r);
        match &mut rec {
            Rec::QueuePut {
                client_id,
                entry,
                qos,
                ..
            } => {
                self.entry_qos.insert((client_id.clone(), *entry), *qos);
            }
            Rec::QueueDel { client_id, entry } => {
                self.entry_qos.remove(&(client_id.clone(), *entry));
            }
            Rec::SessionDel { client_id } => {
                let cid = client_id.clone();
                self.entry_qos.retain(|(c, _), _| *c != cid);
            }
            Rec::OutState {
                client_id,
                entry,
                qos,
                ..
            } => {
                *qos = self
                    .entry_qos
                    .get(&(client_id.clone(), *entry))
                    .copied()
                    .unwrap_or(0);
            }
            _ => {}
        }
        rec
    }

    // ----- the admin plane (S20/S21) ------------------------------------------------------

    fn admin_request(&mut self) {
        let rng = &mut self.admin_rng;
        let seq = rng.range(0, 1_000_000) as i64;
        let garbage: &[&str] = &[
            "",
            "{",
            "[1,2,3]",
            "null",
            "{\"req\":\"2\",\"seq\":1}",
            "{\"req\":2}",
            "{\"seq\":5}",
            "{\"req\":2,\"seq\":1.5}",
            "{\"req\":2,\"seq\":18446744073709551615}",
            "{\"req\":-1,\"seq\":-3}",
            "{\"req\":12,\"seq\":3,\"data\":[]}",
            "{\"req\":1e2,\"seq\":1}",
            "{\"req\":2,\"seq\":1,\"req\":4}",
            "{\"req\":10,\"seq\":2,\"action\":7}",
            "\u{feff}{\"req\":2,\"seq\":1}",
        ];
        let reads = [2i64, 4, 5, 11, 13];
        let (req, seq, body): (i64, Option<i64>, Vec<u8>) = match rng.below(24) {
            0..=9 => {
                let r = *rng.pick(&reads).unwrap_or(&2);
                (
                    r,
                    Some(seq),
                    format!("{{\"req\":{r},\"seq\":{seq}}}").into_bytes(),
                )
            }
            10 => {
                let action = *rng
                    .pick(&["restart", "stop", "Stop", "reboot"])
                    .unwrap_or(&"x");
                (
                    10,
                    Some(seq),
                    format!("{{\"req\":10,\"seq\":{seq},\"action\":\"{action}\"}}").into_bytes(),
                )
            }
            11..=13 => {
                let n = rng.range(1, 64);
                let data = match rng.below(10) {
                    0 => format!("{{\"num_taskq_thread\":{n}}}"),
                    1 => format!("{{\"qos_duration\":{n}}}"),
                    2 => "{\"daemon\":false}".to_owned(),
                    3 => format!("{{\"parallel\":{n},\"qos_duration\":{n}}}"),
                    4 => "{\"msq_len\":0}".to_owned(),
                    5 => "{\"msq_len\":\"many\"}".to_owned(),
                    6 => "{\"nope\":1}".to_owned(),
                    7 => "{\"tls\":5}".to_owned(),
                    8 => "{\"http_server\":{\"port\":0}}".to_owned(),
                    _ => "{\"bridge\":{\"proto_ver\":3}}".to_owned(),
                };
                (
                    12,
                    Some(seq),
                    format!("{{\"req\":12,\"seq\":{seq},\"data\":{data}}}").into_bytes(),
                )
            }
            14 => (
                99,
                Some(seq),
                format!("{{\"req\":99,\"seq\":{seq}}}").into_bytes(),
            ),
            15 => {
                let n = rng.range(1, 300) as usize;
                (
                    0,
                    None,
                    format!("{}{}", "[".repeat(n), "]".repeat(n)).into_bytes(),
                )
            }
            16 => {
                let n = rng.range(0, 64) as usize;
                (0, None, (0..n).map(|_| rng.next_u64() as u8).collect())
            }
            _ => (
                0,
                None,
                rng.pick(garbage).unwrap_or(&"").as_bytes().to_vec(),
            ),
        };
        let good = basic("admin", &self.password);
        let rng = &mut self.admin_rng;
        let (authorization, jwt, auth_ok) = match rng.below(12) {
            0..=7 => (Some(good), None, true),
            8 => (Some(basic("admin", "wrong")), None, false),
            9 => (None, None, false),
            10 => (
                Some("Bearer abc.def.ghi".to_owned()),
                Some(JwtVerdict::Valid),
                false,
            ),
            _ => {
                let h = *rng
                    .pick(&[
                        "Basic !!!!",
                        "basic",
                        "Basic YWRtaW4=",
                        "Digest x",
                        "Basic  ",
                    ])
                    .unwrap_or(&"");
                (Some(h.to_owned()), None, false)
            }
        };
        let auth_ok = auth_ok || self.knobs.config.http_server.auth_type == HttpAuthType::NoAuth;
        // As the runtime does: the head first, the body only once authorized. Now and then
        // the body comes alone, as from a runtime that skipped the head: the core checks again.
        if !self.admin_rng.chance(125) {
            let head = self.next_req;
            self.next_req += 1;
            self.pre_event = Some(Ev::AdminHead {
                req_id: head,
                auth_ok,
            });
            self.feed(Input::AdminAuthorize {
                req_id: head,
                credentials: Credentials {
                    authorization: authorization.clone(),
                    jwt,
                },
            });
            if !self.authorized.remove(&head) {
                return;
            }
        }
        let req_id = self.next_req;
        self.next_req += 1;
        self.pre_event = Some(Ev::AdminReq {
            req_id,
            req,
            seq,
            auth_ok,
        });
        self.feed(Input::Admin {
            req_id,
            credentials: Credentials { authorization, jwt },
            body: Bytes::from(body),
        });
    }

    /// An HTTP API v4 request: reads (with and without filters and paging), requests the
    /// API refuses, and now and then a kick of one of the clients (keeping its session).
    fn admin_v4_request(&mut self) {
        let actors = self.clients.len() as u64;
        let rng = &mut self.admin_rng;
        let reads: &[&str] = &[
            "/api/v4",
            "/api/v4/brokers",
            "/api/v4/nodes",
            "/api/v4/metrics",
            "/api/v4/prometheus",
            "/api/v4/clients",
            "/api/v4/clients?conn_state=connected&_page=1&_limit=5",
            "/api/v4/clients?proto_ver=5&_like_clientid=c",
            "/api/v4/subscriptions?qos=1",
            "/api/v4/subscriptions",
            "/api/v4/topic-tree",
            "/api/v4/retained?topic=%23&_limit=10",
            "/api/v4/reload",
            "/api/v4/configuration/basic",
            "/api/v4/bridges",
        ];
        let refused: &[(&str, &str)] = &[
            ("GET", "/api/v4/nowhere"),
            ("PATCH", "/api/v4/brokers"),
            ("DELETE", "/api/v4/brokers"),
            ("GET", "/api/v4/clients?conn_state=maybe"),
            ("GET", "/api/v4/clients?_limit=0"),
            ("GET", "/api/v4/clients/%ZZ"),
            ("GET", "/api/v4/configuration/nope"),
            ("DELETE", "/api/v4/clients/nobody-at-all"),
        ];
        let (method, target, read, kick) = match rng.below(10) {
            0..=5 => {
                let t = *rng.pick(reads).unwrap_or(&"/api/v4");
                ("GET".to_owned(), t.to_owned(), true, None)
            }
            6 | 7 => {
                let (m, t) = *rng.pick(refused).unwrap_or(&("GET", "/api/v4/x"));
                (m.to_owned(), t.to_owned(), false, None)
            }
            _ => {
                let actor = rng.below(actors.max(1)) as usize;
                let Some(client) = self.clients.get(actor) else {
                    return;
                };
                let id = client.p.client_id.clone();
                let target = format!("/api/v4/clients/{}?keep_session=true", encode(&id));
                ("DELETE".to_owned(), target, false, Some(id))
            }
        };
        let rng = &mut self.admin_rng;
        let (authorization, auth_ok) = match rng.below(10) {
            0..=7 => (Some(basic("admin", &self.password)), true),
            8 => (Some(basic("admin", "wrong")), false),
            _ => (None, false),
        };
        let auth_ok = auth_ok || self.knobs.config.http_server.auth_type == HttpAuthType::NoAuth;
        let credentials = Credentials {
            authorization,
            jwt: None,
        };
        // The head first, as the runtime sends it.
        let head = self.next_req;
        self.next_req += 1;
        self.pre_event = Some(Ev::AdminHead {
            req_id: head,
            auth_ok,
        });
        self.feed(Input::AdminAuthorize {
            req_id: head,
            credentials: credentials.clone(),
        });
        if !self.authorized.remove(&head) {
            return;
        }
        let req_id = self.next_req;
        self.next_req += 1;
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (path, query) = (path.to_owned(), query.to_owned());
        self.pre_event = Some(Ev::AdminV4Req {
            req_id,
            method: method.clone(),
            target: target.clone(),
            auth_ok,
            read,
            kick,
        });
        self.feed(Input::AdminV4 {
            req_id,
            credentials,
            method,
            path,
            query,
            body: Bytes::new(),
        });
    }

    fn config_change(&mut self) {
        let rng = &mut self.admin_rng;
        let mut config: Config = self.knobs.config.clone();
        config.http_server.password = self.password.clone();
        let valid = rng.chance(400);
        if valid {
            let pw = format!("pw{}", rng.range(0, 999));
            config.http_server.password = pw.clone();
            config.num_taskq_thread = rng.range(1, 16) as u32;
            self.sent_password = Some(pw);
        } else {
            // An invalid change that would also open the admin plane: it must not take.
            if rng.chance(500) {
                config.http_server.auth_type = HttpAuthType::NoAuth;
            }
            match rng.below(9) {
                0 => config.msq_len = 0,
                1 => config.max_packet_size = 3,
                2 => config.keepalive_multiplier = 0.5,
                3 => config.receive_maximum = 0,
                4 => config.http_server.port = 0,
                5 => config.http_server.auth_type = HttpAuthType::Jwt,
                6 => {
                    let b = tidemq_core::config::BridgeConfig {
                        proto_ver: 3,
                        ..Default::default()
                    };
                    config.bridges.insert("bad".to_owned(), b);
                }
                7 => config.max_write_buffer = 10,
                _ => config.max_inflight = 0,
            }
        }
        self.pre_event = Some(Ev::ConfigSent { valid });
        self.feed(Input::ConfigChange(Box::new(config)));
        self.sent_password = None;
    }

    /// Credential checks whose answer is due, in the order they fall due.
    fn run_auth(&mut self) {
        let now = self.now;
        let (mut due, later): (Vec<_>, Vec<_>) =
            self.auth_answers.drain(..).partition(|a| a.0 <= now);
        self.auth_answers = later;
        due.sort();
        for (_, conn, outcome) in due {
            let mut held = self.auth_stash.remove(&conn).unwrap_or_default();
            if !matches!(outcome, 0 | 3) {
                // Refused: nothing after the CONNECT is ever read.
                held.truncate(1);
            }
            self.pre_extra = held;
            self.pre_event = Some(Ev::AuthAnswered { conn, outcome });
            // Keep alive counts from the CONNACK.
            if let Some(c) = self.conns.get_mut(&conn) {
                c.last_rx = now;
            }
            let outcome = match outcome {
                0 => AuthOutcome::Allow { superuser: false },
                1 => AuthOutcome::Deny,
                2 => AuthOutcome::Busy,
                _ => AuthOutcome::Allow { superuser: true },
            };
            self.feed(Input::AuthResult {
                conn: ConnId(conn),
                outcome,
            });
        }
    }

    fn run_admin(&mut self) {
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.writes.drain(..).partition(|w| w.0 <= now);
        self.writes = later;
        let (restarted, later): (Vec<_>, Vec<_>) =
            self.restarts.drain(..).partition(|w| w.0 <= now);
        self.restarts = later;
        for (_, req_id, ok) in restarted {
            self.pre_event = Some(Ev::AdminRestarted { req_id, ok });
            self.feed(Input::ControlDone {
                req_id,
                result: if ok {
                    Ok(())
                } else {
                    Err("tls: certificate file not found".to_owned())
                },
            });
        }
        for (_, req_id, ok) in due {
            self.pre_event = Some(Ev::AdminWritten { req_id, ok });
            self.feed(Input::AdminConfigWritten {
                req_id,
                result: if ok {
                    Ok(())
                } else {
                    Err("disk full".to_owned())
                },
            });
        }
        if !self.admin_on || self.heal || now < self.next_admin {
            return;
        }
        let change_rate = if self.knobs.family == Family::S20 {
            250
        } else {
            60
        };
        if self.admin_rng.chance(change_rate) {
            self.config_change();
        } else if self.admin_rng.chance(400) {
            self.admin_v4_request();
        } else {
            self.admin_request();
        }
        let (lo, hi) = if self.knobs.family == Family::S21 {
            (5, 150)
        } else {
            (50, 800)
        };
        self.next_admin = now + self.admin_rng.range(lo, hi);
    }

    /// Moves broker output into the socket while it has room; returns bytes written.
    fn pump_sendq(&mut self, id: u64) -> Option<usize> {
        let shape = self.knobs.shape;
        let sndbuf = self.knobs.sndbuf;
        let c = self.conns.get_mut(&id)?;
        let mut written = 0;
        while let Some(seg) = c.sendq.front() {
            let len = match seg {
                Seg::Data(b) => b.len(),
                Seg::Fin => 0,
            };
            // A peer that closed its socket takes (and drops) anything.
            if c.client_open && len > 0 && c.s2c.in_flight > 0 && c.s2c.in_flight + len > sndbuf {
                break;
            }
            let Some(seg) = c.sendq.pop_front() else {
                break;
            };
            c.sendq_bytes -= len;
            written += len;
            if c.client_open {
                c.s2c.push(self.now, &shape, &mut self.net_rng, seg);
            }
        }
        Some(written)
    }

    // ----- clients and connections --------------------------------------------------------

    fn ctx_run<F: FnOnce(&mut Client, &mut Ctx)>(&mut self, actor: usize, f: F) {
        let Some(client) = self.clients.get_mut(actor) else {
            return;
        };
        self.trace.now = self.now;
        let mut ctx = Ctx {
            now: self.now,
            rng: &mut self.client_rng,
            trace: &mut self.trace,
            cmds: Vec::new(),
            heal: self.heal,
            mutation: self.mutation,
            credentials: self.knobs.family == Family::Auth,
        };
        f(client, &mut ctx);
        let cmds = ctx.cmds;
        self.apply(cmds);
    }

    fn apply(&mut self, cmds: Vec<Cmd>) {
        let shape = self.knobs.shape;
        for cmd in cmds {
            match cmd {
                Cmd::Send(id, bytes) => {
                    if let Some(c) = self.conns.get_mut(&id)
                        && c.client_open
                    {
                        c.c2s
                            .push(self.now, &shape, &mut self.net_rng, Seg::Data(bytes));
                    }
                }
                Cmd::Close(id) => {
                    if let Some(c) = self.conns.get_mut(&id)
                        && c.client_open
                    {
                        c.client_open = false;
                        c.s2c.clear();
                        c.c2s.push(self.now, &shape, &mut self.net_rng, Seg::Fin);
                    }
                }
                Cmd::StopReading(id) => {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.stopped_reading = true;
                        c.s2c.hold();
                    }
                }
                Cmd::Rst(id) => {
                    if let Some(c) = self.conns.get_mut(&id)
                        && c.client_open
                    {
                        c.client_open = false;
                        c.s2c.clear();
                        if c.c2s.mode != Mode::BlackHole {
                            c.c2s.clear();
                        }
                        c.c2s.push(self.now, &shape, &mut self.net_rng, Seg::Fin);
                    }
                }
            }
        }
    }

    fn open_conn(&mut self, actor: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        let mut c2s = Pipe::new(Mode::Open);
        let mut s2c = Pipe::new(Mode::Open);
        if let Some((dir, _)) = self.partitions.get(&actor) {
            hold(*dir, &mut c2s, &mut s2c);
        }
        self.conns.insert(
            id,
            SimConn {
                actor,
                c2s,
                s2c,
                sendq: VecDeque::new(),
                sendq_bytes: 0,
                broker_open: true,
                client_open: true,
                shadow_in: BytesMut::new(),
                in_version: None,
                out_aliases: BTreeMap::new(),
                in_dead: false,
                aliases: BTreeMap::new(),
                alias_max: 0,
                shadow_out: BytesMut::new(),
                last_rx: self.now,
                idle_limit: self.knobs.config.connect_timeout_ms,
                keepalive_close: false,
                stopped_reading: false,
            },
        );
        self.trace.now = self.now;
        self.trace.push(Ev::ConnOpened { conn: id, actor });
        self.feed(Input::Accepted {
            conn: ConnId(id),
            peer: format!(
                "10.0.{}.{}:{}",
                actor / 250,
                actor % 250 + 1,
                40_000 + id % 20_000
            ),
        });
        self.ctx_run(actor, |c, ctx| c.start(ctx, id));
    }

    fn deliver_pipes(&mut self) {
        let now = self.now;
        let frozen = now < self.frozen_until;
        let mut ids: Vec<u64> = self.conns.keys().copied().collect();
        if self.knobs.random_order && !ids.is_empty() {
            self.rotate = self.rotate.wrapping_add(1);
            let k = self.rotate % ids.len();
            ids.rotate_left(k);
        }
        for id in ids {
            // Client to broker.
            if !frozen {
                let (bytes, fin, open) = match self.conns.get_mut(&id) {
                    Some(c) => {
                        let (b, f) = c.c2s.take_due(now);
                        (b, f, c.broker_open)
                    }
                    None => continue,
                };
                if open && !bytes.is_empty() {
                    self.feed(Input::Received {
                        conn: ConnId(id),
                        bytes,
                    });
                }
                if fin
                    && let Some(c) = self.conns.get_mut(&id)
                    && c.broker_open
                {
                    c.broker_open = false;
                    self.auth_stash.remove(&id);
                    // Recorded in the step of the `Closed` input it causes.
                    self.pre_event = Some(Ev::BrokerClosed {
                        conn: id,
                        by_broker: false,
                    });
                    self.feed(Input::Closed { conn: ConnId(id) });
                }
            }
            // Broker to client.
            let (bytes, fin, actor, open) = match self.conns.get_mut(&id) {
                Some(c) => {
                    let (b, f) = c.s2c.take_due(now);
                    (b, f, c.actor, c.client_open)
                }
                None => continue,
            };
            if open && !bytes.is_empty() {
                self.ctx_run(actor, |c, ctx| c.on_bytes(ctx, id, &bytes));
            }
            if open && fin {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.client_open = false;
                }
                self.ctx_run(actor, |c, ctx| c.lost(ctx, id));
            }
            if let Some(written) = self.pump_sendq(id)
                && written > 0
                && !frozen
            {
                self.feed(Input::Written {
                    conn: ConnId(id),
                    bytes: written,
                });
            }
        }
        // Forget connections both sides are done with.
        self.conns.retain(|_, c| {
            c.broker_open || c.client_open || !c.c2s.is_idle() || !c.sendq.is_empty()
        });
    }

    fn is_remote_link(&self, conn: u64) -> bool {
        self.remote.as_ref().is_some_and(|r| r.link == Some(conn))
    }

    /// The hostile remote: links it was asked for open, it floods, and with the heal it
    /// hangs up for good.
    fn run_remote(&mut self) {
        if self.down_until.is_some() {
            return;
        }
        let Some(r) = &mut self.remote else {
            return;
        };
        if self.heal && !r.retired {
            r.retired = true;
            let dial = r.dial.take();
            let link = r.link;
            r.closed();
            if let Some((conn, _)) = dial {
                self.feed(Input::BridgeConnectFailed {
                    conn: ConnId(conn),
                    error: "refused".to_owned(),
                });
            }
            if let Some(conn) = link {
                self.feed(Input::Closed { conn: ConnId(conn) });
            }
            return;
        }
        if let Some((conn, at)) = r.dial
            && at <= self.now
        {
            r.opened(conn, &mut self.remote_rng);
            self.feed(Input::BridgeConnected { conn: ConnId(conn) });
        }
        let Some(r) = &mut self.remote else {
            return;
        };
        if r.next_wake > self.now {
            return;
        }
        r.next_wake = self.now + self.remote_rng.range(15, 60);
        let out = r.flood(&mut self.remote_rng);
        self.trace.now = self.now;
        for topic in std::mem::take(&mut r.topics) {
            self.trace.push(Ev::RemotePublished { topic });
        }
        for bytes in out {
            // A link cut by what came before takes nothing more.
            let Some(conn) = self.remote.as_ref().and_then(|r| r.link) else {
                break;
            };
            self.feed(Input::Received {
                conn: ConnId(conn),
                bytes,
            });
        }
    }

    fn wake_clients(&mut self) {
        for i in 0..self.clients.len() {
            let (due, connect) = match self.clients.get(i) {
                Some(c) => (c.next_wake <= self.now, c.wants_connect(self.now)),
                None => continue,
            };
            if connect {
                if self.down_until.is_none() {
                    self.open_conn(i);
                }
            } else if due {
                self.ctx_run(i, |c, ctx| c.tick(ctx));
            }
        }
    }

    // ----- faults -------------------------------------------------------------------------

    fn actor_conns(&self, actor: usize) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.actor == actor)
            .map(|(id, _)| *id)
            .collect()
    }

    fn faultable(&mut self) -> Option<usize> {
        let candidates: Vec<usize> = self
            .clients
            .iter()
            .filter(|c| c.p.faultable && !c.done)
            .map(|c| c.idx)
            .collect();
        self.fault_rng.pick(&candidates).copied()
    }

    fn partition(&mut self, actor: usize, dir: Dir, until: u64) {
        self.trace.push(Ev::Fault(format!(
            "partition {actor} {dir:?} until {until}"
        )));
        self.partitions.insert(actor, (dir, until));
        for id in self.actor_conns(actor) {
            if let Some(c) = self.conns.get_mut(&id) {
                hold(dir, &mut c.c2s, &mut c.s2c);
            }
        }
    }

    fn repair(&mut self, actor: usize) {
        if self.partitions.remove(&actor).is_none() {
            return;
        }
        self.trace.push(Ev::Fault(format!("repair {actor}")));
        for id in self.actor_conns(actor) {
            if let Some(c) = self.conns.get_mut(&id) {
                c.c2s.release(self.now);
                c.s2c.release(self.now);
            }
        }
    }

    /// The broker process dies: its connections drop, the store keeps what its disk holds,
    /// and a new broker starts after a downtime.
    fn crash(&mut self, why: &str) {
        // Checks asked of the old broker die with it.
        self.auth_answers.clear();
        self.auth_stash.clear();
        self.crash_point = None;
        self.crash_now = false;
        self.fail_exit_at = None;
        self.incarnation += 1;
        self.trace.now = self.now;
        self.trace.push(Ev::Fault(format!(
            "broker crash {} ({why})",
            self.incarnation
        )));
        let power_loss = self.store.is_some() && self.fault_rng.chance(400);
        let (handed, done, kept) = match &mut self.store {
            Some(store) => {
                let c = store.crash(power_loss);
                for d in c.damage {
                    self.trace.push(Ev::SnapshotMismatch {
                        upto: c.kept,
                        detail: d,
                    });
                }
                self.recovered = Some(c.recovered);
                (c.handed, c.done, c.kept)
            }
            None => (0, 0, 0),
        };
        self.trace.push(Ev::Crash {
            power_loss,
            handed,
            done,
            kept,
        });
        let conns = std::mem::take(&mut self.conns);
        for (id, c) in conns {
            if c.client_open {
                self.ctx_run(c.actor, |cl, ctx| cl.lost(ctx, id));
            }
        }
        let r = self.fault_rng.below(1000);
        let downtime = if r < 650 {
            self.fault_rng.range(0, 500)
        } else if r < 950 {
            self.fault_rng.range(500, 5_000)
        } else {
            self.fault_rng.range(5_000, 30_000)
        };
        let up = self.now + downtime;
        self.down_until = Some(up);
        for c in &mut self.clients {
            let back = up + self.fault_rng.range(0, 300);
            c.offline_until = c.offline_until.max(back);
            c.next_wake = c.next_wake.max(c.offline_until);
        }
        self.partitions.clear();
        self.swizzle.clear();
    }

    /// A new broker, restored from the store if there is one.
    fn start_broker(&mut self) {
        self.down_until = None;
        self.trace.step += 1;
        self.trace.now = self.now;
        self.trace.push(Ev::BrokerStart {
            incarnation: self.incarnation,
        });
        let broker_seed = self.seed ^ u64::from(self.incarnation);
        // The old broker's bridge link went with it.
        if let Some(r) = &mut self.remote {
            r.closed();
            r.dial = None;
        }
        self.broker = Broker::new(self.knobs.config.clone(), broker_seed, Instant(self.now));
        if let Some(rec) = self.recovered.take() {
            let mut view = rec.clone();
            view.prune();
            self.entry_qos = view
                .sessions
                .iter()
                .flat_map(|(cid, s)| {
                    s.queue
                        .iter()
                        .map(move |(e, d)| ((cid.clone(), *e), d.qos as u8))
                })
                .collect();
            let sessions = view
                .sessions
                .iter()
                .map(|(cid, s)| RestoredSession {
                    client_id: cid.clone(),
                    expiry: s.expiry_secs,
                    disconnected_at: s
                        .disconnected_at_unix_ms
                        .map(|w| w.saturating_sub(WALL_BASE_MS)),
                    subs: s
                        .subscriptions
                        .iter()
                        .map(|(f, (o, _))| (f.clone(), o & 3))
                        .collect(),
                    awaiting_rel: s.awaiting_rel.iter().copied().collect(),
                    queued: s.queue.len() as u64,
                })
                .collect();
            let retained = view
                .retained
                .iter()
                .map(|(t, id)| {
                    let tag = view
                        .messages
                        .get(id)
                        .map_or(Tag::Other, |m| Tag::parse(&m.payload));
                    (t.clone(), tag)
                })
                .collect();
            self.trace.push(Ev::Restored {
                kept: rec.last_seq,
                sessions,
                retained,
            });
            self.broker = Broker::from_recovered(
                self.knobs.config.clone(),
                broker_seed,
                Instant(self.now),
                rec,
                WALL_BASE_MS + self.now,
            );
            let s = self.broker.stats();
            self.trace.push(Ev::RestoreStats {
                sessions: s.sessions,
                retained: s.retained,
            });
            while let Some(out) = self.broker.poll_output() {
                self.output(out);
            }
        }
        self.next_snapshot = self.now + self.persist_rng.range(500, 6_000);
    }

    /// Store timing, snapshots, failures and crashes at chosen points.
    fn run_persistence(&mut self) {
        let now = self.now;
        if self.crash_now {
            self.crash("at a persistence step");
        }
        if let Some((_, deadline)) = self.crash_point
            && now >= deadline
        {
            self.crash("at a random point");
        }
        if self.fail_exit_at.is_some_and(|t| now >= t) {
            self.crash("fail fast after a store failure");
        }
        if let Some(up) = self.down_until {
            if now < up {
                return;
            }
            self.start_broker();
        }
        let acts = match &mut self.store {
            Some(store) => store.tick(now),
            None => return,
        };
        for act in acts {
            match act {
                StoreAct::Done(upto) => {
                    if matches!(self.crash_point, Some((CrashPoint::NextDone, _))) {
                        self.crash("after a group commit, before its report");
                        return;
                    }
                    self.pre_event = Some(Ev::PersistDone { upto });
                    self.feed(Input::PersistDone { upto });
                }
                StoreAct::Failed => {
                    self.pre_event = Some(Ev::PersistFailed);
                    self.feed(Input::PersistFailed {
                        error: "EIO on fsync".to_owned(),
                    });
                    self.fail_exit_at = Some(now + self.persist_rng.range(300, 5_000));
                }
                StoreAct::SnapshotStored(upto) => {
                    self.trace.now = now;
                    self.trace.push(Ev::SnapshotStored { upto });
                }
            }
        }
        let failed = self.store.as_ref().is_some_and(|s| s.failed);
        if now >= self.next_snapshot && !failed {
            let grown = self.store.as_ref().map_or(0, SimStore::journal_len);
            if grown > 0 {
                self.feed(Input::SnapshotRequest);
            }
            self.next_snapshot = now + self.persist_rng.range(500, 8_000);
        }
    }

    /// The restart fault: with a store, sometimes at a chosen persistence point.
    fn restart(&mut self) {
        if self.down_until.is_some() || self.crash_point.is_some() {
            return;
        }
        if self.store.is_none() {
            return self.crash("at a random point");
        }
        let deadline = self.now + 2_000;
        let point = match self.fault_rng.below(10) {
            0..=4 => return self.crash("at a random point"),
            5 | 6 => CrashPoint::NextPersist,
            7 | 8 => CrashPoint::NextDone,
            _ => CrashPoint::MidSnapshot,
        };
        if point == CrashPoint::MidSnapshot {
            // Make one.
            self.next_snapshot = self.now;
        }
        self.crash_point = Some((point, deadline));
    }

    fn inject_fault(&mut self) {
        let f = self.knobs.faults.clone();
        let total = f.partition
            + f.one_way
            + f.black_hole
            + f.rst
            + f.restart
            + f.suspend
            + f.wall_jump
            + f.swizzle;
        let mut roll = self.fault_rng.below(total.max(1));
        let mut pick = |w: u64| {
            if roll < w {
                true
            } else {
                roll -= w;
                false
            }
        };
        let now = self.now;
        let dur = self.fault_rng.range(f.partition_ms.0, f.partition_ms.1);
        if pick(f.partition) {
            if let Some(a) = self.faultable() {
                self.partition(a, Dir::Both, now + dur);
            }
        } else if pick(f.one_way) {
            if let Some(a) = self.faultable() {
                let dir = if self.fault_rng.chance(500) {
                    Dir::ClientToBroker
                } else {
                    Dir::BrokerToClient
                };
                self.partition(a, dir, now + dur);
            }
        } else if pick(f.black_hole) {
            if let Some(a) = self.faultable() {
                self.trace.push(Ev::Fault(format!("black hole {a}")));
                for id in self.actor_conns(a) {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.c2s.black_hole();
                        c.s2c.black_hole();
                    }
                }
            }
        } else if pick(f.rst) {
            if let Some(a) = self.faultable() {
                self.trace.push(Ev::Fault(format!("rst {a}")));
                for id in self.actor_conns(a) {
                    self.ctx_run(a, |c, ctx| {
                        if c.conn == Some(id) {
                            ctx.cmds.push(Cmd::Rst(id));
                            c.lost(ctx, id);
                        }
                    });
                }
            }
        } else if pick(f.restart) {
            self.restart();
        } else if pick(f.suspend) {
            let d = self.fault_rng.range(1_000, 30_000);
            self.trace.push(Ev::Fault(format!("suspend broker {d} ms")));
            self.frozen_until = now + d;
        } else if pick(f.wall_jump) {
            let unix_ms = 1_700_000_000_000u64.wrapping_add(self.fault_rng.next_u64() % (1 << 40));
            self.trace.push(Ev::Fault("wall clock jump".to_owned()));
            self.feed(Input::WallClock { unix_ms });
        } else if pick(f.swizzle) {
            let n = self.fault_rng.range(2, 5);
            let mut t = now;
            let mut chosen = Vec::new();
            for _ in 0..n {
                if let Some(a) = self.faultable() {
                    t += self.fault_rng.range(100, 1_000);
                    self.swizzle.push((t, a, true));
                    chosen.push(a);
                }
            }
            while !chosen.is_empty() {
                let i = self.fault_rng.below(chosen.len() as u64) as usize;
                let a = chosen.swap_remove(i.min(chosen.len() - 1));
                t += self.fault_rng.range(100, 3_000);
                self.swizzle.push((t, a, false));
            }
        }
    }

    fn run_faults(&mut self) {
        let now = self.now;
        let due: Vec<usize> = self
            .partitions
            .iter()
            .filter(|(_, (_, until))| *until <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            self.repair(a);
        }
        let (ready, later): (Vec<_>, Vec<_>) = self.swizzle.drain(..).partition(|s| s.0 <= now);
        self.swizzle = later;
        for (_, a, clog) in ready {
            if clog {
                self.partition(a, Dir::Both, u64::MAX);
            } else {
                self.repair(a);
            }
        }
        if !self.heal && now >= self.next_fault {
            self.inject_fault();
            let (lo, hi) = self.knobs.faults.every_ms;
            self.next_fault = now + self.fault_rng.range(lo, hi);
        }
    }

    // ----- checks made while running ------------------------------------------------------

    fn observe(&mut self) {
        if self.now < self.frozen_until || self.down_until.is_some() {
            return;
        }
        let now = self.now;
        let mut events = Vec::new();
        let mut open = 0;
        for (id, c) in &self.conns {
            if !c.broker_open {
                continue;
            }
            open += 1;
            // Waiting for its check: the connect timeout applies, not keep alive.
            if self.auth_stash.contains_key(id) {
                continue;
            }
            if c.idle_limit > 0 && now > c.last_rx + c.idle_limit {
                events.push(Ev::KeepAliveMissed {
                    conn: *id,
                    silent_ms: now - c.last_rx,
                    limit_ms: c.idle_limit,
                });
            }
        }
        for e in events {
            self.trace.push(e);
        }
        if self.iterations.is_multiple_of(64) || !self.trace.entries.is_empty() && open == 0 {
            let s = self.broker.stats();
            self.trace.push(Ev::Stats {
                connections: s.connections,
                open_conns: open,
                sessions: s.sessions,
                retained: s.retained,
            });
        }
    }

    // ----- the loop -----------------------------------------------------------------------

    fn next_time(&self) -> u64 {
        let mut t = u64::MAX;
        if let Some(up) = self.down_until {
            t = t.min(up);
        } else if let Some(at) = self.broker.poll_timeout() {
            t = t.min(at.0.max(self.frozen_until));
        }
        if let Some(store) = &self.store {
            if let Some(at) = store.next_due() {
                t = t.min(at);
            }
            if self.down_until.is_none() && !store.failed {
                t = t.min(self.next_snapshot);
            }
        }
        if let Some((_, at)) = self.crash_point {
            t = t.min(at);
        }
        if let Some(at) = self.fail_exit_at {
            t = t.min(at);
        }
        for c in self.conns.values() {
            if let Some(at) = c.c2s.next_due() {
                t = t.min(at.max(self.frozen_until));
            }
            if let Some(at) = c.s2c.next_due() {
                t = t.min(at);
            }
        }
        for c in &self.clients {
            if !c.done {
                t = t.min(c.next_wake);
            }
        }
        for (_, (_, until)) in self.partitions.iter() {
            t = t.min(*until);
        }
        for s in &self.swizzle {
            t = t.min(s.0);
        }
        if !self.heal {
            t = t.min(self.next_fault);
            if self.admin_on {
                t = t.min(self.next_admin);
            }
        }
        for w in self.writes.iter().chain(&self.restarts) {
            t = t.min(w.0);
        }
        for a in &self.auth_answers {
            t = t.min(a.0);
        }
        if let Some(r) = &self.remote
            && !r.retired
        {
            if let Some((_, at)) = r.dial {
                t = t.min(at);
            }
            if r.link.is_some() {
                t = t.min(r.next_wake);
            }
        }
        t.max(self.now)
    }

    /// Runs until `until`; returns false if the iteration budget ran out.
    fn run_until(&mut self, until: u64, stop: &dyn Fn(&World) -> bool) -> bool {
        loop {
            self.iterations += 1;
            if self.iterations > MAX_ITERATIONS {
                self.trace
                    .push(Ev::Stuck(format!("iteration budget spent at {}", self.now)));
                return false;
            }
            if stop(self) {
                return true;
            }
            let t = self.next_time().max(self.now + 1).min(until);
            self.now = t;
            self.trace.now = t;
            self.run_persistence();
            if self.down_until.is_none()
                && self.now >= self.frozen_until
                && self
                    .broker
                    .poll_timeout()
                    .is_some_and(|at| at.0 <= self.now)
            {
                self.feed(Input::Timeout);
            }
            self.deliver_pipes();
            self.wake_clients();
            self.run_remote();
            self.run_faults();
            self.run_admin();
            self.run_auth();
            self.observe();
            if self.now >= until {
                return true;
            }
        }
    }

    fn quiescent(&self) -> bool {
        let clients_ok = self
            .clients
            .iter()
            .all(|c| c.done || matches!(c.p.role, Role::Fuzzer) || (c.is_up() && c.is_drained()));
        let net_ok = self
            .conns
            .values()
            .all(|c| c.sendq.is_empty() && (c.c2s.mode == Mode::BlackHole || c.c2s.is_idle()))
            && self
                .conns
                .values()
                .all(|c| !c.client_open || c.s2c.is_idle() || c.s2c.mode == Mode::BlackHole);
        // Output the broker holds for the store is not on the network yet.
        let store_ok =
            self.down_until.is_none() && self.store.as_ref().is_none_or(SimStore::settled);
        clients_ok && net_ok && store_ok && self.now >= self.frozen_until
    }

    /// Chaos, then heal, then the retained audit.
    pub fn run(&mut self) {
        let chaos = self.knobs.chaos_ms;
        if !self.run_until(chaos, &|_| false) {
            return;
        }
        self.heal = true;
        self.trace.push(Ev::Heal);
        // A crash waiting for its point is a fault: it does not happen. A failed store still
        // takes its broker down (fail fast), and a failure not yet struck never will.
        self.crash_point = None;
        self.crash_now = false;
        if let Some(store) = &mut self.store {
            store.fail_at = None;
        }
        if self.fail_exit_at.is_some() {
            self.crash("fail fast after a store failure");
        }
        let actors: Vec<usize> = self.partitions.keys().copied().collect();
        for a in actors {
            self.repair(a);
        }
        self.swizzle.clear();
        let storm: Vec<usize> = self
            .clients
            .iter()
            .filter(|c| c.p.role == Role::Storm)
            .map(|c| c.idx)
            .skip(1)
            .collect();
        for i in storm {
            self.ctx_run(i, |c, ctx| c.retire(ctx));
        }
        let now = self.now;
        for c in &mut self.clients {
            c.offline_until = c.offline_until.min(now + 1_000);
            c.next_wake = c.next_wake.min(now + 1_000);
        }
        // Long enough for keepalives to catch dead links, wills to fire, and queues to drain.
        let max_ka = self
            .clients
            .iter()
            .map(|c| u64::from(c.p.keep_alive))
            .max()
            .unwrap_or(0);
        let settle = now + 15_000 + max_ka * 3_000 + 10_000;
        if !self.run_until(settle, &|_| false) {
            return;
        }
        if !self.run_until(settle + 120_000, &|w| w.quiescent()) {
            return;
        }
        if !self.quiescent() {
            let waiting: Vec<String> = self
                .clients
                .iter()
                .filter(|c| !c.done && c.p.role != Role::Fuzzer && !(c.is_up() && c.is_drained()))
                .map(|c| format!("{}:{}", c.idx, c.debug_state()))
                .collect();
            let busy: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| !c.sendq.is_empty() || !c.c2s.is_idle() || !c.s2c.is_idle())
                .map(|(id, _)| *id)
                .collect();
            self.trace.push(Ev::Stuck(format!(
                "no quiescence 120 s into heal: clients {waiting:?}, conns {busy:?}"
            )));
            return;
        }
        self.trace.push(Ev::Quiesced);
        // The retained audit: a fresh subscriber to r/#.
        let idx = self.clients.len();
        self.clients
            .push(Client::new(idx, self.knobs.auditor(), self.now));
        let end = self.now + 30_000;
        self.run_until(end, &|w| {
            w.clients
                .last()
                .is_some_and(|c| c.is_up() && c.is_drained())
                && w.quiescent()
        });
        // Let the auditor's SUBACK and retained messages arrive.
        let end = self.now + 2_000;
        self.run_until(end, &|_| false);
        let open = self.conns.values().filter(|c| c.broker_open).count() as u64;
        let s = self.broker.stats();
        self.trace.push(Ev::Stats {
            connections: s.connections,
            open_conns: open,
            sessions: s.sessions,
            retained: s.retained,
        });
    }
}

/// A `Basic` authorization header.
pub(crate) fn basic(user: &str, pass: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{pass}").into_bytes();
    let mut out = String::from("Basic ");
    for chunk in raw.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let k = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(A.get(k).copied().unwrap_or(b'A')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn hold(dir: Dir, c2s: &mut Pipe, s2c: &mut Pipe) {
    match dir {
        Dir::Both => {
            c2s.hold();
            s2c.hold();
        }
        Dir::ClientToBroker => c2s.hold(),
        Dir::BrokerToClient => s2c.hold(),
    }
}

/// Percent-encodes a client id for a path segment (everything but unreserved characters).
fn encode(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
