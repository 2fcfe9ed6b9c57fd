//! Bridge worlds (robustness.md §3.5 S13–S15): two brokers, or a broker and a scripted hostile
//! remote, in one simulated network. A broker's [`Output::BridgeConnect`] is answered by
//! opening a simulated connection to the other side (`Input::Accepted` there, then
//! `Input::BridgeConnected` here); its bytes then go through the same [`Pipe`] model as a
//! client's, with partitions, black holes, RST and refused connects, also during a drain.
//!
//! Clients here are small and never faulted: the uplink is what is under test.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Ack, ConnAck, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscriptionOptions, decode_packet, encode_packet,
};
use tidemq_core::config::{BridgeConfig, BridgeForward, BridgeSubscription};
use tidemq_core::{Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};

use crate::client::pub_of;
use crate::mutation::Mutation;
use crate::net::{LinkShape, Mode, Pipe, Seg};
use crate::rng::Rng;
use crate::scenario::Family;
use crate::trace::{Delivery, Ev, Got, Tag, Trace};

const MAX_ITERATIONS: u64 = 1_500_000;
const WIDE: DecodeLimits = DecodeLimits {
    max_packet_size: 268_435_460,
    max_user_properties: usize::MAX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MiniRole {
    Pub,
    Sub,
}

/// What the bridge checkers need to know about a run.
#[derive(Debug, Clone)]
pub struct Meta {
    pub family: Family,
    pub v5: bool,
    pub clean_start: bool,
    pub keepalive: u16,
    pub backoff_max: u32,
    pub queue_len: u32,
    /// Per actor: its broker and role.
    pub actors: Vec<(u8, MiniRole)>,
}

// ----- clients ---------------------------------------------------------------------------

struct Mini {
    broker: u8,
    client_id: String,
    role: MiniRole,
    v5: bool,
    topics: Vec<String>,
    filters: Vec<String>,
    conn: Option<u64>,
    rx: BytesMut,
    up: bool,
    next_seq: u64,
    next_pid: u16,
    inflight: BTreeMap<u16, (String, Tag)>,
    next_wake: u64,
    think: (u64, u64),
    window: usize,
    /// Publishes from and until these times (subscribers are in place by `from`).
    from: u64,
    until: u64,
    /// At most this many messages (S15: a handful).
    max_msgs: u64,
}

impl Mini {
    fn version(&self) -> ProtocolVersion {
        if self.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        }
    }

    fn enc(&self, p: &Packet) -> Bytes {
        let mut b = BytesMut::new();
        let _ = encode_packet(p, self.version(), &mut b);
        b.freeze()
    }

    fn connect(&self) -> Bytes {
        let persistent = self.role == MiniRole::Sub;
        let mut properties = Properties::default();
        if self.v5 && persistent {
            properties.session_expiry_interval = Some(u32::MAX);
        }
        self.enc(&Packet::Connect(Box::new(Connect {
            version: self.version(),
            clean_start: !persistent,
            keep_alive: 0,
            properties,
            client_id: self.client_id.clone(),
            will: None,
            username: None,
            password: None,
        })))
    }

    fn on_bytes(&mut self, idx: usize, now: u64, trace: &mut Trace, bytes: &[u8]) -> Vec<Bytes> {
        self.rx.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let version = self.version();
            let p = match decode_packet(&mut self.rx, Some(version), &WIDE) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    trace.push(Ev::Stuck(format!("client {idx} cannot decode: {e}")));
                    self.rx.clear();
                    break;
                }
            };
            match p {
                Packet::ConnAck(a) if a.code.0 == 0 => {
                    self.up = true;
                    if !self.filters.is_empty() {
                        let filters = self
                            .filters
                            .iter()
                            .map(|f| {
                                (
                                    f.clone(),
                                    SubscriptionOptions {
                                        qos: QoS::AtLeastOnce,
                                        no_local: false,
                                        retain_as_published: false,
                                        retain_handling: 0,
                                    },
                                )
                            })
                            .collect();
                        out.push(self.enc(&Packet::Subscribe(Subscribe {
                            packet_id: 1,
                            properties: Properties::default(),
                            filters,
                        })));
                    }
                    self.next_wake = now;
                }
                Packet::Publish(p) => {
                    trace.push(Ev::Delivered(Delivery {
                        actor: idx,
                        conn: self.conn.unwrap_or(0),
                        publish: pub_of(&p),
                        first: true,
                    }));
                    let pid = p.packet_id.unwrap_or(0);
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => out.push(self.enc(&Packet::PubAck(ack(pid, 0)))),
                        QoS::ExactlyOnce => out.push(self.enc(&Packet::PubRec(ack(pid, 0)))),
                    }
                }
                Packet::PubRel(a) => out.push(self.enc(&Packet::PubComp(ack(a.packet_id, 0)))),
                Packet::PubAck(a) => {
                    if let Some((topic, tag)) = self.inflight.remove(&a.packet_id) {
                        trace.push(Ev::PubAcked {
                            actor: idx,
                            broker: self.broker,
                            topic,
                            tag,
                        });
                    }
                }
                _ => {}
            }
        }
        out
    }

    fn tick(&mut self, idx: usize, now: u64, rng: &mut Rng) -> Vec<Bytes> {
        self.next_wake = now + rng.range(self.think.0, self.think.1);
        if self.role != MiniRole::Pub
            || !self.up
            || now >= self.until
            || now < self.from
            || self.next_seq > self.max_msgs
            || self.inflight.len() >= self.window
        {
            return Vec::new();
        }
        let topic = rng
            .pick(&self.topics)
            .cloned()
            .unwrap_or_else(|| "t/a".to_owned());
        let seq = self.next_seq;
        self.next_seq += 1;
        let pid = self.next_pid;
        self.next_pid = if pid == u16::MAX { 1 } else { pid + 1 };
        let payload = format!("M:{idx}:{seq}");
        self.inflight
            .insert(pid, (topic.clone(), Tag::parse(payload.as_bytes())));
        vec![self.enc(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(pid),
            properties: Properties::default(),
            payload: Bytes::from(payload),
        }))]
    }
}

fn ack(packet_id: u16, reason: u8) -> Ack {
    Ack {
        packet_id,
        reason: ReasonCode(reason),
        properties: Properties::default(),
    }
}

// ----- the hostile remote (S14) ----------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// A CONNACK the codec must reject (variant).
    BadConnAck(u8),
    /// A well-formed CONNACK that refuses.
    Refuse,
    /// SUBACK with the wrong number of reason codes, or the wrong packet id (variant).
    SubAckMismatch(u8),
    /// Accepts, then sends PUBLISHes that remap to invalid topics, into `$SYS`, or outside
    /// every subscription, mixed with valid ones.
    EvilPublish,
    /// Accepts, then garbage.
    Garbage,
    /// Never answers (the connect timeout must fire).
    Silent,
    /// Accepts, then acks for unknown packet ids and PUBRELs nobody asked for.
    AckChaos,
    /// A PUBLISH before the CONNACK.
    EarlyPublish,
    /// Accepts, never acknowledges the bridge's messages.
    Sink,
}

struct Hostile {
    script: Script,
    rx: BytesMut,
    version: Option<ProtocolVersion>,
    link: u64,
    n: u64,
    filters: usize,
}

impl Hostile {
    fn enc(&self, p: &Packet) -> Bytes {
        let mut b = BytesMut::new();
        let _ = encode_packet(p, self.version.unwrap_or(ProtocolVersion::V311), &mut b);
        b.freeze()
    }

    fn publish(&mut self, topic: &str, qos: QoS, pid: u16) -> Bytes {
        self.n += 1;
        let payload = format!("H:{}:{}", self.link, self.n);
        self.enc(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.to_owned(),
            packet_id: (qos != QoS::AtMostOnce).then_some(pid),
            properties: Properties::default(),
            payload: Bytes::from(payload),
        }))
    }

    fn connack(&self, code: u8) -> Bytes {
        self.enc(&Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode(code),
            properties: Properties::default(),
        }))
    }

    fn evil(&mut self, rng: &mut Rng) -> Vec<Bytes> {
        let mut out = Vec::new();
        for _ in 0..rng.range(1, 6) {
            let pid = rng.range(1, 9) as u16;
            let b = match rng.below(10) {
                0 => self.publish("in/+", QoS::AtLeastOnce, pid),
                1 => self.publish("$SYS/brokers/connected", QoS::AtLeastOnce, pid),
                2 => self.publish("loc/evil", QoS::AtLeastOnce, pid),
                3 => self.publish("cmd/x", QoS::AtLeastOnce, pid),
                4 => self.publish("", QoS::AtMostOnce, pid),
                5 => self.publish("in/ok/#", QoS::AtLeastOnce, pid),
                6 => {
                    let mut b = BytesMut::from(&self.publish("in/q2", QoS::ExactlyOnce, pid)[..]);
                    b.extend_from_slice(&self.publish("in/q2", QoS::ExactlyOnce, pid));
                    b.extend_from_slice(&self.enc(&Packet::PubRel(ack(pid, 0))));
                    b.freeze()
                }
                7 => self.publish("t/evil", QoS::AtLeastOnce, pid),
                _ => self.publish("in/ok", QoS::AtLeastOnce, pid),
            };
            out.push(b);
        }
        out
    }

    /// Bytes from the bridge; returns what to answer and whether to hang up.
    fn on_bytes(&mut self, bytes: &[u8], rng: &mut Rng) -> (Vec<Bytes>, bool) {
        self.rx.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            let p = match decode_packet(&mut self.rx, self.version, &WIDE) {
                Ok(Some(p)) => p,
                Ok(None) => return (out, false),
                Err(_) => return (out, true),
            };
            match p {
                Packet::Connect(c) => {
                    self.version = Some(c.version);
                    let v5 = c.version.is_v5();
                    match self.script {
                        Script::BadConnAck(k) => {
                            let raw: &[u8] = match k % 6 {
                                0 => &[0x20, 0x01, 0x00],
                                1 => &[0x20, 0x02, 0x02, 0x00],
                                2 => &[0x21, 0x02, 0x00, 0x00],
                                3 => &[0x20, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
                                4 => &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x05],
                                _ => &[0x20, 0x02, 0x01, 0x05],
                            };
                            out.push(Bytes::copy_from_slice(raw));
                        }
                        Script::Refuse => out.push(self.connack(if v5 { 0x87 } else { 0x05 })),
                        Script::Silent => {}
                        Script::EarlyPublish => {
                            out.push(self.publish("in/early", QoS::AtLeastOnce, 1));
                            out.push(self.connack(0));
                        }
                        Script::Garbage => {
                            out.push(self.connack(0));
                            let n = rng.range(1, 40) as usize;
                            let g: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                            out.push(Bytes::from(g));
                        }
                        Script::EvilPublish => {
                            out.push(self.connack(0));
                            out.extend(self.evil(rng));
                        }
                        Script::AckChaos => {
                            out.push(self.connack(0));
                            for _ in 0..rng.range(1, 5) {
                                let pid = rng.range(1, 20) as u16;
                                let pkt = match rng.below(4) {
                                    0 => Packet::PubAck(ack(pid, 0)),
                                    1 => Packet::PubRec(ack(pid, 0)),
                                    2 => Packet::PubComp(ack(pid, 0)),
                                    _ => Packet::PubRel(ack(pid, 0)),
                                };
                                out.push(self.enc(&pkt));
                            }
                        }
                        Script::SubAckMismatch(_) | Script::Sink => out.push(self.connack(0)),
                    }
                }
                Packet::Subscribe(s) => {
                    self.filters = s.filters.len();
                    let mut reasons = vec![1u8; s.filters.len()];
                    let mut packet_id = s.packet_id;
                    if let Script::SubAckMismatch(k) = self.script {
                        match k % 3 {
                            0 => reasons.push(1),
                            1 => {
                                reasons.pop();
                            }
                            _ => packet_id = packet_id.wrapping_add(1).max(1),
                        }
                    }
                    if reasons.is_empty() {
                        reasons.push(0x80);
                    }
                    out.push(self.enc(&Packet::SubAck(SubAck {
                        packet_id,
                        properties: Properties::default(),
                        reasons: reasons.into_iter().map(ReasonCode).collect(),
                    })));
                    if self.script == Script::EvilPublish {
                        out.extend(self.evil(rng));
                    }
                }
                Packet::Publish(p) => {
                    if self.script != Script::Sink
                        && let Some(pid) = p.packet_id
                    {
                        let pkt = if p.qos == QoS::ExactlyOnce {
                            Packet::PubRec(ack(pid, 0))
                        } else {
                            Packet::PubAck(ack(pid, 0))
                        };
                        out.push(self.enc(&pkt));
                    }
                    if self.script == Script::EvilPublish && rng.chance(300) {
                        out.extend(self.evil(rng));
                    }
                }
                Packet::PubRel(a) => out.push(self.enc(&Packet::PubComp(ack(a.packet_id, 0)))),
                Packet::PingReq => {
                    out.push(self.enc(&Packet::PingResp));
                    if self.script == Script::EvilPublish {
                        out.extend(self.evil(rng));
                    }
                }
                Packet::Disconnect(_) => return (out, true),
                _ => {}
            }
            // Even a remote that answers well hangs up now and then: more scripts per run.
            if rng.chance(20) {
                return (out, true);
            }
        }
    }
}

// ----- the network -----------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Client(usize),
    /// A broker's bridge, by its own conn id.
    Bridge(u8, u64),
    /// A broker's accepted connection.
    Broker(u8, u64),
    Hostile,
}

struct Link {
    init: End,
    acc: End,
    /// Initiator to acceptor.
    up: Pipe,
    down: Pipe,
    init_open: bool,
    acc_open: bool,
    /// The broker whose bridge opened it.
    owner: Option<u8>,
    sh_up: BytesMut,
    sh_up_version: Option<ProtocolVersion>,
    sh_down: BytesMut,
    version: ProtocolVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Both,
    Up,
    Down,
}

pub struct BridgeWorld {
    pub meta: Meta,
    brokers: Vec<Broker>,
    pub trace: Trace,
    net_rng: Rng,
    fault_rng: Rng,
    client_rng: Rng,
    shape: LinkShape,
    links: BTreeMap<u64, Link>,
    by_end: BTreeMap<(u8, u64), u64>,
    next_link: u64,
    minis: Vec<Mini>,
    hostiles: BTreeMap<u64, Hostile>,
    part: Option<(Part, u64)>,
    refuse_until: u64,
    bridge_up: [bool; 2],
    heal: bool,
    faults: bool,
    next_fault: u64,
    now: u64,
    iterations: u64,
    chaos_ms: u64,
    pub config: Config,
    mutation: Option<Mutation>,
}

fn bridge_config(rng: &mut Rng, family: Family) -> BridgeConfig {
    let v5 = family == Family::S15 || rng.chance(500);
    let small_queue = family == Family::S13 && rng.chance(300);
    let (forwards, subscription) = if family == Family::S15 {
        (
            vec![BridgeForward {
                local_topic: "t/#".to_owned(),
                remote_topic: String::new(),
                qos: None,
                retain: None,
            }],
            Vec::new(),
        )
    } else {
        let mut subs = vec![BridgeSubscription {
            remote_topic: "in/#".to_owned(),
            local_topic: "from_remote/#".to_owned(),
            qos: 1,
        }];
        if family == Family::S14 {
            subs.push(BridgeSubscription {
                remote_topic: "cmd/x".to_owned(),
                local_topic: "$SYS/evil".to_owned(),
                qos: 1,
            });
        }
        (
            vec![BridgeForward {
                local_topic: "t/#".to_owned(),
                remote_topic: "fwd/#".to_owned(),
                qos: None,
                retain: None,
            }],
            subs,
        )
    };
    BridgeConfig {
        enable: true,
        address: "mqtt-tcp://remote:1883".to_owned(),
        proto_ver: if v5 { 5 } else { 4 },
        clientid: String::new(),
        keepalive: rng.range(1, 8) as u16,
        clean_start: family != Family::S15 && rng.chance(400),
        forwards,
        subscription,
        max_send_queue_len: if small_queue {
            rng.range(3, 40) as u32
        } else {
            32_768
        },
        backoff_max: rng.range(1, 12) as u32,
        ..BridgeConfig::default()
    }
}

impl BridgeWorld {
    pub fn new(seed: u64, family: Family, mutation: Option<Mutation>) -> BridgeWorld {
        let mut rng = Rng::new(seed ^ 0xB81D_6E00);
        let mut master = Rng::new(seed.wrapping_mul(31).wrapping_add(11));
        let mut bc = bridge_config(&mut rng, family);
        bc.clientid = "bridge-a".to_owned();
        let base = Config {
            sys_events: family == Family::S14,
            ..Config::default()
        };
        let mut local = base.clone();
        local.bridges.insert("up".to_owned(), bc.clone());
        let mut remote = base.clone();
        if family == Family::S15 {
            let mut back = bc.clone();
            back.clientid = "bridge-b".to_owned();
            remote.bridges.insert("back".to_owned(), back);
        }
        let shape = LinkShape {
            latency_ms: rng.range(0, 30),
            jitter_ms: rng.range(0, 30),
            fragment_per_mille: rng.range(0, 600),
        };
        let chaos_ms = if family == Family::S15 {
            rng.range(3_000, 8_000)
        } else {
            rng.range(15_000, 40_000)
        };
        let pub_until = if family == Family::S13 {
            chaos_ms.saturating_sub(rng.range(2_000, 8_000))
        } else {
            chaos_ms
        };
        let mut minis = Vec::new();
        let mut mini = |broker: u8, role: MiniRole, topics: &[&str], filters: &[&str]| Mini {
            broker,
            client_id: String::new(),
            role,
            v5: rng.chance(500),
            topics: topics.iter().map(|s| (*s).to_owned()).collect(),
            filters: filters.iter().map(|s| (*s).to_owned()).collect(),
            conn: None,
            rx: BytesMut::new(),
            up: false,
            next_seq: 1,
            next_pid: 1,
            inflight: BTreeMap::new(),
            next_wake: 0,
            think: (30, 400),
            window: 8,
            from: 1_500,
            until: pub_until,
            max_msgs: u64::MAX,
        };
        match family {
            Family::S13 => {
                minis.push(mini(0, MiniRole::Pub, &["t/a", "t/b/c"], &[]));
                minis.push(mini(0, MiniRole::Pub, &["t/a", "t/x"], &[]));
                minis.push(mini(1, MiniRole::Pub, &["in/a", "in/b"], &[]));
                minis.push(mini(1, MiniRole::Sub, &[], &["fwd/#"]));
                minis.push(mini(0, MiniRole::Sub, &[], &["from_remote/#", "t/#"]));
            }
            Family::S14 => {
                minis.push(mini(0, MiniRole::Pub, &["t/a", "loc/a", "loc/b"], &[]));
                minis.push(mini(0, MiniRole::Pub, &["loc/c", "t/b"], &[]));
                minis.push(mini(
                    0,
                    MiniRole::Sub,
                    &[],
                    &["loc/#", "t/#", "from_remote/#", "$SYS/#"],
                ));
            }
            _ => {
                minis.push(mini(0, MiniRole::Pub, &["t/x"], &[]));
                minis.push(mini(1, MiniRole::Pub, &["t/y"], &[]));
                minis.push(mini(0, MiniRole::Sub, &[], &["t/#"]));
                minis.push(mini(1, MiniRole::Sub, &[], &["t/#"]));
            }
        }
        for (i, m) in minis.iter_mut().enumerate() {
            let kind = if m.role == MiniRole::Pub { "p" } else { "s" };
            m.client_id = format!("{kind}{}-{i}", m.broker);
            m.next_wake = rng.range(0, 500);
            m.window = rng.range(1, 8) as usize;
            if family == Family::S15 {
                m.max_msgs = rng.range(1, 5);
                m.think = (200, 1_000);
            }
        }
        let meta = Meta {
            family,
            v5: bc.proto_ver == 5,
            clean_start: bc.clean_start,
            keepalive: bc.keepalive,
            backoff_max: bc.backoff_max,
            queue_len: bc.max_send_queue_len,
            actors: minis.iter().map(|m| (m.broker, m.role)).collect(),
        };
        let mut trace = Trace::default();
        trace.push(Ev::BrokerStart { incarnation: 0 });
        let brokers = vec![
            Broker::new(local.clone(), seed, Instant(0)),
            Broker::new(remote, seed ^ 0xB, Instant(0)),
        ];
        BridgeWorld {
            meta,
            brokers,
            trace,
            net_rng: master.fork(),
            fault_rng: master.fork(),
            client_rng: master.fork(),
            shape,
            links: BTreeMap::new(),
            by_end: BTreeMap::new(),
            next_link: 1,
            minis,
            hostiles: BTreeMap::new(),
            part: None,
            refuse_until: 0,
            bridge_up: [false; 2],
            heal: false,
            faults: family == Family::S13,
            next_fault: 2_000,
            now: 0,
            iterations: 0,
            chaos_ms,
            config: local,
            mutation,
        }
    }

    // ----- brokers ------------------------------------------------------------------------

    fn feed(&mut self, broker: u8, input: Input) {
        let mut pending = VecDeque::from([(broker, input)]);
        while let Some((b, input)) = pending.pop_front() {
            self.trace.step += 1;
            self.trace.now = self.now;
            if let Input::Received { conn, bytes } = &input {
                self.shadow_client(b, conn.0, bytes);
            }
            let Some(br) = self.brokers.get_mut(usize::from(b)) else {
                continue;
            };
            br.handle_input(Instant(self.now), input);
            let mut outs = Vec::new();
            while let Some(o) = br.poll_output() {
                outs.push(o);
            }
            for o in outs {
                self.output(b, o, &mut pending);
            }
        }
    }

    /// Client PUBLISHes as the broker reads them, in the step that reads them.
    fn shadow_client(&mut self, b: u8, conn: u64, bytes: &Bytes) {
        let Some(id) = self.by_end.get(&(b, conn)).copied() else {
            return;
        };
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        let End::Client(actor) = l.init else {
            return;
        };
        l.sh_up.extend_from_slice(bytes);
        while let Ok(Some(p)) = decode_packet(&mut l.sh_up, l.sh_up_version, &WIDE) {
            match p {
                Packet::Connect(c) => l.sh_up_version = Some(c.version),
                Packet::Publish(p) => self.trace.push(Ev::BrokerGot {
                    conn: id,
                    actor,
                    pkt: Got::Publish(pub_of(&p)),
                }),
                _ => {}
            }
        }
    }

    fn output(&mut self, b: u8, out: Output, pending: &mut VecDeque<(u8, Input)>) {
        match out {
            Output::Transmit { conn, bytes } => {
                let Some(id) = self.by_end.get(&(b, conn.0)).copied() else {
                    return;
                };
                let now = self.now;
                let Some(l) = self.links.get_mut(&id) else {
                    return;
                };
                let from_init = l.init == End::Bridge(b, conn.0);
                let mut events = Vec::new();
                if let Some(owner) = l.owner {
                    let (buf, version) = if from_init {
                        (&mut l.sh_up, l.sh_up_version)
                    } else {
                        (&mut l.sh_down, Some(l.version))
                    };
                    buf.extend_from_slice(&bytes);
                    while let Ok(Some(p)) = decode_packet(buf, version, &WIDE) {
                        match p {
                            Packet::Connect(c) if from_init => l.sh_up_version = Some(c.version),
                            Packet::Publish(p) => events.push(Ev::LinkPublish {
                                owner,
                                up: from_init,
                                topic: p.topic.clone(),
                                tag: Tag::parse(&p.payload),
                                dup: p.dup,
                            }),
                            Packet::SubAck(s) if !from_init => events.push(Ev::LinkSubAck {
                                owner,
                                reasons: s.reasons.iter().map(|r| r.0).collect(),
                            }),
                            _ => {}
                        }
                    }
                }
                let len = bytes.len();
                let (pipe, open) = if from_init {
                    (&mut l.up, l.init_open)
                } else {
                    (&mut l.down, l.acc_open)
                };
                if open {
                    pipe.push(now, &self.shape, &mut self.net_rng, Seg::Data(bytes));
                }
                for e in events {
                    self.trace.push(e);
                }
                if !from_init {
                    pending.push_back((b, Input::Written { conn, bytes: len }));
                }
            }
            Output::Close { conn } => {
                let Some(id) = self.by_end.get(&(b, conn.0)).copied() else {
                    return;
                };
                let now = self.now;
                if let Some(l) = self.links.get_mut(&id) {
                    if l.init == End::Bridge(b, conn.0) {
                        if l.init_open {
                            l.init_open = false;
                            l.up.push(now, &self.shape, &mut self.net_rng, Seg::Fin);
                        }
                    } else if l.acc_open {
                        l.acc_open = false;
                        l.down.push(now, &self.shape, &mut self.net_rng, Seg::Fin);
                    }
                }
            }
            Output::BridgeConnect { conn, .. } => {
                self.trace.push(Ev::BridgeConnect {
                    broker: b,
                    conn: conn.0,
                });
                if self.now < self.refuse_until {
                    pending.push_back((
                        b,
                        Input::BridgeConnectFailed {
                            conn,
                            error: "connection refused".to_owned(),
                        },
                    ));
                    return;
                }
                let id = self.next_link;
                self.next_link += 1;
                let version = if self.meta.v5 {
                    ProtocolVersion::V5
                } else {
                    ProtocolVersion::V311
                };
                let acc = if self.meta.family == Family::S14 {
                    let script = match self.fault_rng.below(9) {
                        0 => Script::BadConnAck(self.fault_rng.below(6) as u8),
                        1 => Script::Refuse,
                        2 => Script::SubAckMismatch(self.fault_rng.below(3) as u8),
                        3 => Script::Garbage,
                        4 => Script::Silent,
                        5 => Script::AckChaos,
                        6 => Script::EarlyPublish,
                        7 => Script::Sink,
                        _ => Script::EvilPublish,
                    };
                    self.trace
                        .push(Ev::Fault(format!("hostile {id}: {script:?}")));
                    self.hostiles.insert(
                        id,
                        Hostile {
                            script,
                            rx: BytesMut::new(),
                            version: None,
                            link: id,
                            n: 0,
                            filters: 0,
                        },
                    );
                    End::Hostile
                } else {
                    End::Broker(1 - b.min(1), id)
                };
                let mut up = Pipe::new(Mode::Open);
                let mut down = Pipe::new(Mode::Open);
                if let Some((p, _)) = self.part {
                    if p != Part::Down {
                        up.hold();
                    }
                    if p != Part::Up {
                        down.hold();
                    }
                }
                self.links.insert(
                    id,
                    Link {
                        init: End::Bridge(b, conn.0),
                        acc,
                        up,
                        down,
                        init_open: true,
                        acc_open: true,
                        owner: Some(b),
                        sh_up: BytesMut::new(),
                        sh_up_version: None,
                        sh_down: BytesMut::new(),
                        version,
                    },
                );
                self.by_end.insert((b, conn.0), id);
                if let End::Broker(r, _) = acc {
                    self.by_end.insert((r, id), id);
                    pending.push_back((
                        r,
                        Input::Accepted {
                            conn: ConnId(id),
                            peer: format!("10.9.0.{}:{}", b + 1, 30_000 + id),
                        },
                    ));
                }
                pending.push_back((b, Input::BridgeConnected { conn }));
            }
            Output::Event(e) => match e {
                BrokerEvent::BridgeUp { .. } => {
                    if let Some(u) = self.bridge_up.get_mut(usize::from(b)) {
                        *u = true;
                    }
                    self.trace.push(Ev::BridgeUp { broker: b });
                    // Fault the drain now and then: a link that comes up with a backlog.
                    if self.faults && !self.heal && self.fault_rng.chance(600) {
                        let backlog: usize = self
                            .brokers
                            .get(usize::from(b))
                            .map(|br| br.bridge_backlog().values().map(|(o, i)| o + i).sum())
                            .unwrap_or(0);
                        if backlog > 0 {
                            let at = self.now + self.fault_rng.range(0, 400);
                            self.next_fault = self.next_fault.min(at);
                        }
                    }
                }
                BrokerEvent::BridgeDown {
                    detail,
                    retry_in_ms,
                    ..
                } => {
                    if retry_in_ms > 0
                        && let Some(u) = self.bridge_up.get_mut(usize::from(b))
                    {
                        *u = false;
                    }
                    self.trace.push(Ev::BridgeDown {
                        broker: b,
                        detail,
                        retry_in_ms,
                    });
                }
                BrokerEvent::MessagesDropped {
                    client_id,
                    count,
                    why,
                } => self.trace.push(Ev::BridgeDropped {
                    broker: b,
                    client_id,
                    count,
                    why: why.to_owned(),
                }),
                BrokerEvent::ClientDisconnected {
                    conn, client_id, ..
                } => {
                    if let Some(&id) = self.by_end.get(&(b, conn.0))
                        && let Some(End::Client(a)) = self.links.get(&id).map(|l| l.init)
                    {
                        self.trace.push(Ev::ClientLost { actor: a, conn: id });
                        let _ = client_id;
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    // ----- the loop -----------------------------------------------------------------------

    fn open_clients(&mut self) {
        for i in 0..self.minis.len() {
            let Some(m) = self.minis.get(i) else {
                continue;
            };
            if m.conn.is_some() || m.next_wake > self.now {
                continue;
            }
            let b = m.broker;
            let hello = m.connect();
            let id = self.next_link;
            self.next_link += 1;
            let mut up = Pipe::new(Mode::Open);
            up.push(self.now, &self.shape, &mut self.net_rng, Seg::Data(hello));
            self.links.insert(
                id,
                Link {
                    init: End::Client(i),
                    acc: End::Broker(b, id),
                    up,
                    down: Pipe::new(Mode::Open),
                    init_open: true,
                    acc_open: true,
                    owner: None,
                    sh_up: BytesMut::new(),
                    sh_up_version: None,
                    sh_down: BytesMut::new(),
                    version: ProtocolVersion::V311,
                },
            );
            self.by_end.insert((b, id), id);
            if let Some(m) = self.minis.get_mut(i) {
                m.conn = Some(id);
            }
            self.trace.push(Ev::ConnOpened { conn: id, actor: i });
            self.feed(
                b,
                Input::Accepted {
                    conn: ConnId(id),
                    peer: format!("10.0.{b}.{}:4000{}", i + 1, i),
                },
            );
        }
    }

    fn send_client(&mut self, i: usize, out: Vec<Bytes>) {
        let Some(id) = self.minis.get(i).and_then(|m| m.conn) else {
            return;
        };
        let now = self.now;
        if let Some(l) = self.links.get_mut(&id) {
            for b in out {
                l.up.push(now, &self.shape, &mut self.net_rng, Seg::Data(b));
            }
        }
    }

    fn deliver(&mut self) {
        let now = self.now;
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in ids {
            // Initiator to acceptor.
            let Some(l) = self.links.get_mut(&id) else {
                continue;
            };
            let (bytes, fin) = l.up.take_due(now);
            let (acc, open) = (l.acc, l.acc_open);
            if open && (!bytes.is_empty() || fin) {
                match acc {
                    End::Broker(r, c) => {
                        if !bytes.is_empty() {
                            self.feed(
                                r,
                                Input::Received {
                                    conn: ConnId(c),
                                    bytes,
                                },
                            );
                        }
                        if fin {
                            if let Some(l) = self.links.get_mut(&id) {
                                l.acc_open = false;
                            }
                            self.feed(r, Input::Closed { conn: ConnId(c) });
                        }
                    }
                    End::Hostile => {
                        let (out, hang) = match self.hostiles.get_mut(&id) {
                            Some(h) if !bytes.is_empty() => h.on_bytes(&bytes, &mut self.fault_rng),
                            _ => (Vec::new(), false),
                        };
                        if let Some(l) = self.links.get_mut(&id) {
                            for b in out {
                                l.down
                                    .push(now, &self.shape, &mut self.net_rng, Seg::Data(b));
                            }
                            if hang || fin {
                                l.acc_open = false;
                                l.down.push(now, &self.shape, &mut self.net_rng, Seg::Fin);
                            }
                        }
                    }
                    _ => {}
                }
            }
            // Acceptor to initiator.
            let Some(l) = self.links.get_mut(&id) else {
                continue;
            };
            let (bytes, fin) = l.down.take_due(now);
            let (init, open) = (l.init, l.init_open);
            if !open || (bytes.is_empty() && !fin) {
                continue;
            }
            if fin && let Some(l) = self.links.get_mut(&id) {
                l.init_open = false;
            }
            match init {
                End::Bridge(b, c) => {
                    if !bytes.is_empty() {
                        self.feed(
                            b,
                            Input::Received {
                                conn: ConnId(c),
                                bytes,
                            },
                        );
                    }
                    if fin {
                        self.feed(b, Input::Closed { conn: ConnId(c) });
                    }
                }
                End::Client(i) => {
                    let out = match self.minis.get_mut(i) {
                        Some(m) => m.on_bytes(i, now, &mut self.trace, &bytes),
                        None => Vec::new(),
                    };
                    self.send_client(i, out);
                    if fin {
                        self.trace.push(Ev::ClientLost { actor: i, conn: id });
                    }
                }
                _ => {}
            }
        }
        self.links.retain(|_, l| {
            l.init_open || l.acc_open || (!l.up.is_idle() && l.up.mode == Mode::Open)
        });
    }

    fn bridge_links(&self) -> Vec<u64> {
        self.links
            .iter()
            .filter(|(_, l)| l.owner.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn inject_fault(&mut self) {
        let now = self.now;
        let dur = self.fault_rng.range(300, 12_000);
        match self.fault_rng.below(1000) {
            0..300 => self.partition(Part::Both, now + dur),
            300..450 => {
                let p = if self.fault_rng.chance(500) {
                    Part::Up
                } else {
                    Part::Down
                };
                self.partition(p, now + dur);
            }
            450..600 => {
                self.trace.push(Ev::Fault("black hole uplink".to_owned()));
                for id in self.bridge_links() {
                    if let Some(l) = self.links.get_mut(&id) {
                        l.up.black_hole();
                        l.down.black_hole();
                    }
                }
            }
            600..850 => {
                self.trace.push(Ev::Fault("rst uplink".to_owned()));
                for id in self.bridge_links() {
                    let Some(l) = self.links.get_mut(&id) else {
                        continue;
                    };
                    l.up.clear();
                    l.down.clear();
                    let (init, acc) = (l.init, l.acc);
                    let (io, ao) = (l.init_open, l.acc_open);
                    l.init_open = false;
                    l.acc_open = false;
                    if let (End::Bridge(b, c), true) = (init, io) {
                        self.feed(b, Input::Closed { conn: ConnId(c) });
                    }
                    if let (End::Broker(r, c), true) = (acc, ao) {
                        self.feed(r, Input::Closed { conn: ConnId(c) });
                    }
                }
            }
            _ => {
                self.trace
                    .push(Ev::Fault(format!("refuse uplink until {}", now + dur)));
                self.refuse_until = now + dur;
            }
        }
    }

    fn partition(&mut self, p: Part, until: u64) {
        self.trace
            .push(Ev::Fault(format!("partition uplink {p:?} until {until}")));
        self.part = Some((p, until));
        for id in self.bridge_links() {
            if let Some(l) = self.links.get_mut(&id) {
                if p != Part::Down {
                    l.up.hold();
                }
                if p != Part::Up {
                    l.down.hold();
                }
            }
        }
    }

    fn repair(&mut self) {
        if self.part.take().is_none() {
            return;
        }
        self.trace.push(Ev::Fault("repair uplink".to_owned()));
        let now = self.now;
        for l in self.links.values_mut() {
            l.up.release(now);
            l.down.release(now);
        }
    }

    fn next_time(&self) -> u64 {
        let mut t = u64::MAX;
        for b in &self.brokers {
            if let Some(at) = b.poll_timeout() {
                t = t.min(at.0);
            }
        }
        for l in self.links.values() {
            for at in [l.up.next_due(), l.down.next_due()].into_iter().flatten() {
                t = t.min(at);
            }
        }
        for m in &self.minis {
            t = t.min(m.next_wake);
        }
        if let Some((_, until)) = self.part {
            t = t.min(until);
        }
        if self.faults && !self.heal {
            t = t.min(self.next_fault);
        }
        t.max(self.now)
    }

    fn run_until(&mut self, until: u64, stop: &dyn Fn(&BridgeWorld) -> bool) -> bool {
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
            for b in 0..self.brokers.len() {
                let due = self
                    .brokers
                    .get(b)
                    .and_then(Broker::poll_timeout)
                    .is_some_and(|at| at.0 <= self.now);
                if due {
                    self.feed(b as u8, Input::Timeout);
                }
            }
            self.deliver();
            self.open_clients();
            for i in 0..self.minis.len() {
                let out = match self.minis.get_mut(i) {
                    Some(m) if m.next_wake <= self.now => m.tick(i, self.now, &mut self.client_rng),
                    _ => continue,
                };
                self.send_client(i, out);
            }
            if self.part.is_some_and(|(_, until)| until <= self.now) {
                self.repair();
            }
            if self.faults && !self.heal && self.now >= self.next_fault {
                self.inject_fault();
                self.next_fault = self.now + self.fault_rng.range(1_000, 5_000);
            }
            if self.now >= until {
                return true;
            }
        }
    }

    fn quiescent(&self) -> bool {
        let clients = self.minis.iter().all(|m| m.up && m.inflight.is_empty());
        let net = self.links.values().all(|l| {
            (l.up.is_idle() || l.up.mode == Mode::BlackHole)
                && (l.down.is_idle() || l.down.mode == Mode::BlackHole)
        });
        if self.meta.family == Family::S14 {
            let client_links = self.links.values().filter(|l| l.owner.is_none());
            return clients
                && client_links
                    .into_iter()
                    .all(|l| l.up.is_idle() && l.down.is_idle());
        }
        let backlog = self
            .brokers
            .iter()
            .all(|b| b.bridge_backlog().values().all(|(o, i)| *o == 0 && *i == 0));
        let ups = self
            .brokers
            .iter()
            .zip(self.bridge_up)
            .all(|(b, up)| b.bridge_backlog().is_empty() || up);
        clients && net && backlog && ups
    }

    pub fn run(&mut self) {
        let chaos = self.chaos_ms;
        if !self.run_until(chaos, &|_| false) {
            return;
        }
        self.heal = true;
        self.trace.push(Ev::Heal);
        self.repair();
        self.refuse_until = 0;
        // Long enough for a dead uplink to be noticed and the backoff to come round.
        let settle = self.now
            + u64::from(self.meta.keepalive) * 3_000
            + u64::from(self.meta.backoff_max) * 1_300
            + 12_000;
        if !self.run_until(settle, &|_| false) {
            return;
        }
        let end = self.now + 120_000;
        if !self.run_until(end, &|w| w.quiescent()) {
            return;
        }
        if self.quiescent() {
            self.trace.push(Ev::Quiesced);
        } else {
            let backlog: Vec<_> = self.brokers.iter().map(|b| b.bridge_backlog()).collect();
            self.trace.push(Ev::Stuck(format!(
                "no quiescence 120 s into heal: backlog {backlog:?}, up {:?}",
                self.bridge_up
            )));
        }
        for (i, b) in self.brokers.iter().enumerate() {
            let s = b.stats();
            self.trace.push(Ev::BrokerStats {
                broker: i as u8,
                dropped: s.messages_dropped,
                backlog: b
                    .bridge_backlog()
                    .values()
                    .map(|(o, i)| o + i)
                    .sum::<usize>() as u64,
            });
        }
        let _ = self.mutation;
    }
}
