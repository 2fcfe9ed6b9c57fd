//! Simulated MQTT clients, written with the core's codec, with randomized behaviour.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Ack, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    ReasonOnly, Subscribe, SubscriptionOptions, Unsubscribe, Will, decode_packet, encode_packet,
};

use crate::rng::Rng;
use crate::trace::{AckKind, Delivery, Ev, Pub, Tag, Trace};

/// What an actor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Publishes and subscribes at random.
    Worker,
    /// Member of the `$share/g/` group on `s/#`.
    SharedMember,
    /// Subscribes `will/#` at QoS 2, never faulted: the observer of wills.
    Watcher,
    /// Shares its client id with other storm actors (S5).
    Storm,
    /// Connects, then sends garbage (S16/S17).
    Fuzzer,
    /// Reads the retained store at the end.
    Auditor,
    /// Publishes QoS 1 to its own topic and subscribes to it, never faulted: its messages
    /// must keep arriving within a bound while adversaries attack (S25).
    Prober,
    /// An adversary (S25): tries to make the broker hold more than its memory budget.
    Flood(Attack),
}

/// What an adversary does (S25).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Retained messages of the largest size, each on a topic of its own.
    Retained,
    /// SUBSCRIBEs full of copies of `#` and of distinct filters.
    Filters,
    /// A new persistent session under a new client id, again and again.
    Sessions,
    /// PINGREQs, while never reading the answers.
    Pings,
    /// Subscribes to `#`, then never reads.
    NonReader,
}

/// Commands a client gives the network.
#[derive(Debug, Clone)]
pub enum Cmd {
    Send(u64, Bytes),
    /// Close our side after what was sent (FIN).
    Close(u64),
    /// Abrupt close (RST).
    Rst(u64),
    /// Stop reading: what the broker sends waits in the network from now on.
    StopReading(u64),
}

pub struct Ctx<'a> {
    pub now: u64,
    pub rng: &'a mut Rng,
    pub trace: &'a mut Trace,
    pub cmds: Vec<Cmd>,
    pub heal: bool,
    /// A planted client-side fault (mutation checks only).
    pub mutation: Option<crate::mutation::Mutation>,
    /// CONNECT carries a user name (the client id) and a password.
    pub credentials: bool,
}

/// Client-side decoding accepts anything MQTT allows.
const CLIENT_LIMITS: DecodeLimits = DecodeLimits {
    max_packet_size: 268_435_460,
    max_user_properties: usize::MAX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutStage {
    Published,
    Released,
}

#[derive(Debug, Clone)]
struct OutMsg {
    publish: Publish,
    stage: OutStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Down,
    /// CONNECT sent at this time.
    Connecting(u64),
    Up,
}

/// Knobs for one actor, drawn from the seed.
#[derive(Debug, Clone)]
pub struct Profile {
    pub client_id: String,
    pub role: Role,
    pub version: ProtocolVersion,
    pub persistent: bool,
    /// v5 session expiry (seconds) for persistent sessions.
    pub expiry: u32,
    pub keep_alive: u16,
    /// v5 Receive Maximum we announce.
    pub receive_max: Option<u16>,
    /// Will: delay in seconds (v5), QoS.
    pub will: Option<(u32, u8)>,
    /// Filters with QoS (subscribed whenever the session is new).
    pub filters: Vec<(String, u8)>,
    /// Publisher window (own cap besides the server's Receive Maximum).
    pub window: u16,
    /// Per mille per action of: publish, retained publish, message expiry.
    pub publish_rate: u64,
    pub retain_rate: u64,
    pub expiry_rate: u64,
    /// The Topic Alias Maximum this client offers the broker (v5).
    pub accept_aliases: Option<u16>,
    pub topic_alias: bool,
    pub alias_abuse: bool,
    pub churn_subs: bool,
    /// Per mille per action of withholding acks for a while, and of leaving.
    pub withhold_rate: u64,
    pub leave_rate: u64,
    /// Per mille per action of turning into a fuzzer on this connection (S17).
    pub fuzz_rate: u64,
    /// Milliseconds between actions.
    pub think_ms: (u64, u64),
    /// The broker's Receive Maximum (3.1.1 clients cannot be told it).
    pub server_receive_max: u16,
    /// The broker's keepalive cap (3.1.1 clients are held to it without being told).
    pub server_max_keepalive: u16,
    /// The broker's maximum packet size (adversaries send the largest they may).
    pub server_max_packet: u32,
    pub faultable: bool,
}

pub struct Client {
    pub idx: usize,
    pub p: Profile,
    pub conn: Option<u64>,
    link: Link,
    rx: BytesMut,
    pub generation: u32,
    next_seq: u64,
    out: BTreeMap<u16, OutMsg>,
    out_order: VecDeque<u16>,
    next_pid: u16,
    /// Inbound QoS 1/2 received with the ack withheld: pid -> QoS.
    in_unacked: BTreeMap<u16, u8>,
    /// Inbound QoS 2 ids PUBREC'd (or withheld) and not yet released.
    in_q2: BTreeSet<u16>,
    withhold: bool,
    server_rm: u16,
    alias_max: u16,
    /// Keepalive in force on the current connection, seconds.
    keep_alive: u16,
    aliases: BTreeMap<String, u16>,
    /// Topic aliases the broker set on this connection (alias -> topic).
    in_aliases: BTreeMap<u16, String>,
    next_sub_pid: u16,
    pub next_wake: u64,
    last_sent: u64,
    ping_sent: Option<u64>,
    /// The client stays away until then (a long absence can outlive the session).
    pub offline_until: u64,
    /// For fuzzers: garbage sent, waiting for the close.
    pub fuzzing: bool,
    pub done: bool,
}

fn qos_of(q: u8) -> QoS {
    QoS::from_u8(q).unwrap_or(QoS::AtMostOnce)
}

pub fn pub_of(p: &Publish) -> Pub {
    Pub {
        topic: p.topic.clone(),
        qos: p.qos as u8,
        retain: p.retain,
        dup: p.dup,
        pid: p.packet_id,
        tag: Tag::parse(&p.payload),
        expiry: p.properties.message_expiry_interval,
    }
}

const TOPICS: &[&str] = &["t/a/x", "t/a/y", "t/b/x", "t/c/z", "$app/x"];
const RETAIN_TOPICS: &[&str] = &["r/a", "r/b", "r/a/x", "r/c"];
const SHARED_TOPICS: &[&str] = &["s/a", "s/b"];

impl Client {
    pub fn new(idx: usize, p: Profile, start: u64) -> Client {
        Client {
            idx,
            p,
            conn: None,
            link: Link::Down,
            rx: BytesMut::new(),
            generation: 0,
            next_seq: 1,
            out: BTreeMap::new(),
            out_order: VecDeque::new(),
            next_pid: 1,
            in_unacked: BTreeMap::new(),
            in_q2: BTreeSet::new(),
            withhold: false,
            server_rm: u16::MAX,
            alias_max: 0,
            keep_alive: 0,
            aliases: BTreeMap::new(),
            in_aliases: BTreeMap::new(),
            next_sub_pid: 1,
            next_wake: start,
            last_sent: 0,
            ping_sent: None,
            offline_until: start,
            fuzzing: false,
            done: false,
        }
    }

    pub fn is_up(&self) -> bool {
        self.link == Link::Up
    }

    /// Nothing of ours in flight: every publish completed, no ack withheld.
    pub fn is_drained(&self) -> bool {
        self.out.is_empty() && self.in_unacked.is_empty()
    }

    pub fn debug_state(&self) -> String {
        format!(
            "{:?} conn {:?} out {:?} unacked {:?}",
            self.link,
            self.conn,
            self.out_order,
            self.in_unacked.keys().collect::<Vec<_>>()
        )
    }

    pub fn wants_connect(&self, now: u64) -> bool {
        !self.done && self.conn.is_none() && now >= self.offline_until
    }

    fn send(&mut self, ctx: &mut Ctx, packet: &Packet) {
        let Some(conn) = self.conn else {
            return;
        };
        let mut buf = BytesMut::new();
        if encode_packet(packet, self.p.version, &mut buf).is_ok() {
            self.last_sent = ctx.now;
            ctx.cmds.push(Cmd::Send(conn, buf.freeze()));
        }
    }

    fn send_ack(&mut self, ctx: &mut Ctx, kind: AckKind, pid: u16) {
        let a = Ack {
            packet_id: pid,
            reason: ReasonCode(0),
            properties: Properties::default(),
        };
        let packet = match kind {
            AckKind::PubAck => Packet::PubAck(a),
            AckKind::PubRec => Packet::PubRec(a),
            AckKind::PubRel => Packet::PubRel(a),
            AckKind::PubComp => Packet::PubComp(a),
        };
        if let Some(conn) = self.conn {
            ctx.trace.push(Ev::ClientAck {
                actor: self.idx,
                conn,
                kind,
                pid,
            });
        }
        self.send(ctx, &packet);
    }

    /// Opens a session on the new connection `conn`.
    pub fn start(&mut self, ctx: &mut Ctx, conn: u64) {
        self.conn = Some(conn);
        self.link = Link::Connecting(ctx.now);
        self.rx.clear();
        self.ping_sent = None;
        self.aliases.clear();
        self.in_aliases.clear();
        let v5 = self.p.version.is_v5();
        let mut properties = Properties::default();
        if v5 {
            if self.p.persistent {
                properties.session_expiry_interval = Some(self.p.expiry);
            }
            properties.receive_maximum = self.p.receive_max;
            properties.topic_alias_maximum = self.p.accept_aliases;
        }
        let will = self.p.will.map(|(delay, q)| Will {
            topic: format!("will/{}", self.idx),
            payload: Bytes::from(format!("W:{}:{}", self.idx, conn)),
            qos: qos_of(q),
            retain: false,
            properties: Properties {
                will_delay_interval: (v5 && delay > 0).then_some(delay),
                ..Properties::default()
            },
        });
        let connect = Connect {
            version: self.p.version,
            clean_start: !self.p.persistent,
            keep_alive: self.p.keep_alive,
            properties,
            client_id: self.p.client_id.clone(),
            will,
            username: ctx.credentials.then(|| self.p.client_id.clone()),
            password: ctx.credentials.then(|| Bytes::from_static(b"pw")),
        };
        if self.p.role == Role::Fuzzer {
            match ctx.rng.below(4) {
                // Silent: only the connect timeout ends it.
                0 => return,
                // A bad first packet.
                1 => return self.garbage(ctx),
                // Slowloris: the CONNECT's first byte, and nothing more.
                2 => {
                    ctx.cmds.push(Cmd::Send(conn, Bytes::from_static(&[0x10])));
                    return;
                }
                _ => {}
            }
        }
        self.send(ctx, &Packet::Connect(Box::new(connect)));
    }

    /// The connection ended under us (FIN, RST, DISCONNECT, or we gave up on it).
    pub fn lost(&mut self, ctx: &mut Ctx, conn: u64) {
        if self.conn != Some(conn) {
            return;
        }
        ctx.trace.push(Ev::ClientLost {
            actor: self.idx,
            conn,
        });
        self.conn = None;
        self.link = Link::Down;
        // Acks withheld on the old connection: the broker resends what it still holds.
        self.in_unacked.clear();
        let backoff = if ctx.heal {
            ctx.rng.range(1, 300)
        } else {
            ctx.rng.range(1, 2_000)
        };
        self.offline_until = self.offline_until.max(ctx.now + backoff);
        self.next_wake = self.offline_until;
        if self.p.role == Role::Fuzzer {
            self.done = true;
        }
    }

    /// Leaves for good with a normal DISCONNECT (storm actors at heal).
    pub fn retire(&mut self, ctx: &mut Ctx) {
        self.done = true;
        if self.conn.is_some() {
            self.send(ctx, &Packet::Disconnect(ReasonOnly::default()));
            self.abandon(ctx, false);
        }
        self.done = true;
    }

    /// We give up on the connection: FIN (or RST) from our side.
    fn abandon(&mut self, ctx: &mut Ctx, rst: bool) {
        if let Some(conn) = self.conn {
            ctx.cmds.push(if rst {
                Cmd::Rst(conn)
            } else {
                Cmd::Close(conn)
            });
            self.lost(ctx, conn);
        }
    }

    pub fn on_bytes(&mut self, ctx: &mut Ctx, conn: u64, bytes: &[u8]) {
        if self.conn != Some(conn) {
            return;
        }
        self.rx.extend_from_slice(bytes);
        loop {
            if self.conn != Some(conn) {
                return;
            }
            match decode_packet(&mut self.rx, Some(self.p.version), &CLIENT_LIMITS) {
                Ok(Some(p)) => self.on_packet(ctx, conn, p),
                Ok(None) => return,
                Err(_) => {
                    // The broker sent bytes we cannot decode: give up on this connection.
                    ctx.trace
                        .push(Ev::Fault(format!("client {} undecodable", self.idx)));
                    self.abandon(ctx, true);
                    return;
                }
            }
        }
    }

    fn on_packet(&mut self, ctx: &mut Ctx, conn: u64, packet: Packet) {
        self.ping_sent = None;
        match packet {
            Packet::ConnAck(c) => {
                if c.code.0 != 0 {
                    self.abandon(ctx, false);
                    return;
                }
                self.link = Link::Up;
                if !c.session_present {
                    self.generation += 1;
                    self.out.clear();
                    self.out_order.clear();
                    self.in_q2.clear();
                }
                self.server_rm = if self.p.version.is_v5() {
                    c.properties.receive_maximum.unwrap_or(u16::MAX)
                } else {
                    self.p.server_receive_max
                };
                self.alias_max = c.properties.topic_alias_maximum.unwrap_or(0);
                let cap = self.p.server_max_keepalive;
                let asked = self.p.keep_alive;
                self.keep_alive = match c.properties.server_keep_alive {
                    Some(k) => k,
                    None if cap > 0 && (asked == 0 || asked > cap) => cap,
                    None => asked,
                };
                if c.session_present {
                    // Resend what is unacknowledged, in order, with the original ids.
                    let ids: Vec<u16> = self.out_order.iter().copied().collect();
                    for pid in ids {
                        let Some(m) = self.out.get(&pid).cloned() else {
                            continue;
                        };
                        match m.stage {
                            OutStage::Published => {
                                let mut p = m.publish;
                                p.dup = true;
                                self.send(ctx, &Packet::Publish(p));
                            }
                            OutStage::Released => self.send_ack(ctx, AckKind::PubRel, pid),
                        }
                    }
                }
                let want = match self.p.role {
                    Role::Watcher | Role::Auditor => true,
                    _ => !c.session_present || !self.p.persistent,
                };
                if want && !self.p.filters.is_empty() {
                    let filters = self.p.filters.clone();
                    self.subscribe(ctx, &filters, 0);
                }
                if self.p.role == Role::Fuzzer {
                    self.garbage(ctx);
                }
                if self.p.role == Role::Flood(Attack::Pings) {
                    ctx.cmds.push(Cmd::StopReading(conn));
                }
            }
            Packet::SubAck(_) if self.p.role == Role::Flood(Attack::NonReader) => {
                ctx.cmds.push(Cmd::StopReading(conn));
            }
            Packet::Publish(p) => self.on_publish(ctx, conn, p),
            Packet::PubAck(a)
                if self
                    .out
                    .get(&a.packet_id)
                    .is_some_and(|m| m.publish.qos == QoS::AtLeastOnce) =>
            {
                self.remove_out(a.packet_id);
            }
            Packet::PubRec(a) => {
                if let Some(m) = self.out.get_mut(&a.packet_id)
                    && m.publish.qos == QoS::ExactlyOnce
                {
                    if a.reason.0 >= 0x80 {
                        self.remove_out(a.packet_id);
                    } else {
                        m.stage = OutStage::Released;
                        self.send_ack(ctx, AckKind::PubRel, a.packet_id);
                    }
                }
            }
            Packet::PubComp(a)
                if self
                    .out
                    .get(&a.packet_id)
                    .is_some_and(|m| m.stage == OutStage::Released) =>
            {
                self.remove_out(a.packet_id);
            }
            Packet::PubRel(a) => {
                self.in_q2.remove(&a.packet_id);
                self.send_ack(ctx, AckKind::PubComp, a.packet_id);
            }
            Packet::Disconnect(_) => {
                // The broker closes next; we stop using the connection now.
                self.abandon(ctx, false);
            }
            _ => {}
        }
    }

    fn remove_out(&mut self, pid: u16) {
        self.out.remove(&pid);
        self.out_order.retain(|x| *x != pid);
    }

    fn on_publish(&mut self, ctx: &mut Ctx, conn: u64, mut p: Publish) {
        // The broker's topic aliases (set with the topic, later used instead of it).
        if let Some(alias) = p.properties.topic_alias.take()
            && ctx.mutation != Some(crate::mutation::Mutation::ForgetServerAliases)
        {
            if p.topic.is_empty() {
                p.topic = self.in_aliases.get(&alias).cloned().unwrap_or_default();
            } else {
                self.in_aliases.insert(alias, p.topic.clone());
            }
        }
        let pid = p.packet_id.unwrap_or(0);
        let first = match p.qos {
            QoS::ExactlyOnce => !self.in_q2.contains(&pid),
            _ => true,
        };
        let d = Delivery {
            actor: self.idx,
            conn,
            publish: pub_of(&p),
            first,
        };
        let tag = d.publish.tag;
        match ctx.mutation {
            Some(crate::mutation::Mutation::LoseQos1)
                if p.qos == QoS::AtLeastOnce
                    && matches!(tag, Tag::Msg { seq, .. } if seq % 3 == 0) => {}
            Some(crate::mutation::Mutation::SwallowWill) if matches!(tag, Tag::Will { .. }) => {}
            Some(crate::mutation::Mutation::StarveProber)
                if self.p.role == Role::Prober
                    && matches!(tag, Tag::Msg { seq, .. } if seq % 3 == 0) => {}
            Some(crate::mutation::Mutation::DuplicateQos2)
                if p.qos == QoS::ExactlyOnce && first =>
            {
                ctx.trace.push(Ev::Delivered(d.clone()));
                ctx.trace.push(Ev::Delivered(d));
            }
            _ => ctx.trace.push(Ev::Delivered(d)),
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                if self.withhold {
                    self.in_unacked.insert(pid, 1);
                } else {
                    self.send_ack(ctx, AckKind::PubAck, pid);
                }
            }
            QoS::ExactlyOnce => {
                self.in_q2.insert(pid);
                if self.withhold {
                    self.in_unacked.insert(pid, 2);
                } else {
                    self.send_ack(ctx, AckKind::PubRec, pid);
                }
            }
        }
    }

    /// A QoS 1 message to the prober's own topic (S25's liveness).
    fn probe(&mut self, ctx: &mut Ctx) {
        if self.out.len() >= self.window() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let pid = self.alloc_pid();
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("h/{}", self.idx),
            packet_id: Some(pid),
            properties: Properties::default(),
            payload: Bytes::from(format!("M:{}:{}:", self.idx, seq)),
        };
        self.out.insert(
            pid,
            OutMsg {
                publish: publish.clone(),
                stage: OutStage::Published,
            },
        );
        self.out_order.push_back(pid);
        self.send(ctx, &Packet::Publish(publish));
    }

    fn flush_acks(&mut self, ctx: &mut Ctx) {
        let pending = std::mem::take(&mut self.in_unacked);
        for (pid, q) in pending {
            let kind = if q == 1 {
                AckKind::PubAck
            } else {
                AckKind::PubRec
            };
            self.send_ack(ctx, kind, pid);
        }
    }

    fn subscribe(&mut self, ctx: &mut Ctx, filters: &[(String, u8)], rh: u8) {
        let pid = self.next_sub_pid;
        self.next_sub_pid = self.next_sub_pid.wrapping_add(1).max(1);
        let s = Subscribe {
            packet_id: pid,
            properties: Properties::default(),
            filters: filters
                .iter()
                .map(|(f, q)| {
                    (
                        f.clone(),
                        SubscriptionOptions {
                            qos: qos_of(*q),
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: if self.p.version.is_v5() { rh } else { 0 },
                        },
                    )
                })
                .collect(),
        };
        self.send(ctx, &Packet::Subscribe(s));
    }

    fn window(&self) -> usize {
        usize::from(self.p.window.min(self.server_rm).max(1))
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            let id = self.next_pid;
            self.next_pid = if id == u16::MAX { 1 } else { id + 1 };
            if !self.out.contains_key(&id) {
                return id;
            }
        }
    }

    /// One round of an adversary's attack.
    fn flood(&mut self, ctx: &mut Ctx, attack: Attack) {
        let big = self.p.server_max_packet.saturating_sub(64).max(1) as usize;
        match attack {
            Attack::Retained => {
                for _ in 0..4 {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    let pid = self.alloc_pid();
                    let publish = Publish {
                        dup: false,
                        qos: QoS::AtLeastOnce,
                        retain: true,
                        topic: format!("x/r/{}/{seq}", self.idx),
                        packet_id: Some(pid),
                        properties: Properties::default(),
                        payload: Bytes::from(vec![b'X'; big]),
                    };
                    self.send(ctx, &Packet::Publish(publish));
                }
            }
            Attack::Filters => {
                let mut filters = vec![("#".to_owned(), 1u8); 100];
                for _ in 0..40 {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    filters.push((format!("x/f/{seq}"), 1));
                }
                self.subscribe(ctx, &filters, 0);
            }
            Attack::Sessions => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.send(ctx, &Packet::Disconnect(ReasonOnly::default()));
                self.abandon(ctx, false);
                self.p.client_id = format!("flood{}-{seq}", self.idx);
                self.offline_until = ctx.now + 1;
                self.next_wake = self.offline_until;
            }
            Attack::Pings => {
                for _ in 0..50 {
                    self.send(ctx, &Packet::PingReq);
                }
            }
            Attack::NonReader => {}
        }
    }

    fn publish(&mut self, ctx: &mut Ctx) {
        if self.p.role == Role::Prober {
            return self.probe(ctx);
        }
        let rng = &mut *ctx.rng;
        let retained = rng.chance(self.p.retain_rate);
        let shared = self.p.role == Role::Worker && rng.chance(150);
        let q = if retained {
            rng.below(2) as u8
        } else {
            rng.below(3) as u8
        };
        if q > 0 && self.out.len() >= self.window() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let (topic, payload) = if retained {
            let t = rng.pick(RETAIN_TOPICS).copied().unwrap_or("r/a");
            let payload = if rng.chance(150) {
                Bytes::new()
            } else {
                Bytes::from(format!("R:{}:{}", self.idx, seq))
            };
            (t, payload)
        } else {
            let t = if shared {
                rng.pick(SHARED_TOPICS).copied().unwrap_or("s/a")
            } else {
                rng.pick(TOPICS).copied().unwrap_or("t/a/x")
            };
            let pad = "x".repeat(rng.below(40) as usize);
            (t, Bytes::from(format!("M:{}:{}:{}", self.idx, seq, pad)))
        };
        let mut properties = Properties::default();
        if self.p.version.is_v5() && !retained && rng.chance(self.p.expiry_rate) {
            properties.message_expiry_interval = Some(rng.range(1, 20) as u32);
        }
        let mut publish = Publish {
            dup: false,
            qos: qos_of(q),
            retain: retained,
            topic: topic.to_owned(),
            packet_id: None,
            properties,
            payload,
        };
        if q > 0 {
            let pid = self.alloc_pid();
            publish.packet_id = Some(pid);
            self.out.insert(
                pid,
                OutMsg {
                    publish: publish.clone(),
                    stage: OutStage::Published,
                },
            );
            self.out_order.push_back(pid);
        }
        // Topic aliases apply to this one transmission only (resends carry the topic).
        let mut wire = publish;
        if self.p.topic_alias && self.alias_max > 0 {
            let rng = &mut *ctx.rng;
            if self.p.alias_abuse && rng.chance(20) {
                wire.properties.topic_alias = Some(self.alias_max.saturating_add(1));
                ctx.trace
                    .push(Ev::Fault(format!("client {} abuses topic alias", self.idx)));
            } else if let Some(&a) = self.aliases.get(&wire.topic)
                && rng.chance(700)
            {
                wire.properties.topic_alias = Some(a);
                wire.topic = String::new();
            } else if rng.chance(500) {
                let a = rng.range(1, u64::from(self.alias_max)) as u16;
                self.aliases.retain(|_, v| *v != a);
                self.aliases.insert(wire.topic.clone(), a);
                wire.properties.topic_alias = Some(a);
            }
        }
        self.send(ctx, &Packet::Publish(wire));
    }

    /// Random bytes, or a valid packet with flipped bytes, or a forbidden packet.
    fn garbage(&mut self, ctx: &mut Ctx) {
        let rng = &mut *ctx.rng;
        let mut bytes: Vec<u8> = match rng.below(4) {
            0 => (0..rng.range(1, 40))
                .map(|_| rng.below(256) as u8)
                .collect(),
            1 => {
                // Huge remaining length.
                vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0, 1, b'a']
            }
            2 => vec![0x30 | 0x06, 0x05, 0x00, 0x01, b'a', 0x00, 0x01], // QoS 3
            _ => {
                let mut buf = BytesMut::new();
                let p = Packet::Subscribe(Subscribe {
                    packet_id: 0,
                    properties: Properties::default(),
                    filters: vec![("a/#/b".to_owned(), SubscriptionOptions::default())],
                });
                let _ = encode_packet(&p, self.p.version, &mut buf);
                buf.to_vec()
            }
        };
        if bytes.is_empty() {
            bytes.push(0);
        }
        self.fuzzing = true;
        if let Some(conn) = self.conn {
            ctx.cmds.push(Cmd::Send(conn, Bytes::from(bytes)));
        }
    }

    /// Periodic work: keepalive, connect timeout, and a random action.
    pub fn tick(&mut self, ctx: &mut Ctx) {
        let now = ctx.now;
        let ka = u64::from(self.keep_alive) * 1000;
        if let Link::Connecting(since) = self.link
            && now >= since + 5_000
        {
            let rst = ctx.heal || ctx.rng.chance(500);
            self.abandon(ctx, rst);
        }
        if self.link == Link::Up && ka > 0 {
            if let Some(at) = self.ping_sent {
                if now >= at + ka {
                    // No answer: the connection is dead to us.
                    self.abandon(ctx, false);
                }
            } else if now >= self.last_sent + ka / 2 {
                self.ping_sent = Some(now);
                self.send(ctx, &Packet::PingReq);
            }
        }
        if self.link == Link::Up {
            self.act(ctx);
        }
        let think = ctx.rng.range(self.p.think_ms.0, self.p.think_ms.1);
        let mut wake = now + think;
        if ka > 0 && self.link == Link::Up {
            wake = wake.min(self.last_sent + ka / 2).max(now + 1);
        }
        self.next_wake = wake;
    }

    fn act(&mut self, ctx: &mut Ctx) {
        if let Role::Flood(attack) = self.p.role {
            if ctx.heal {
                // The attack ends with the chaos: gone for good, abruptly.
                self.done = true;
                return self.abandon(ctx, true);
            }
            return self.flood(ctx, attack);
        }
        if ctx.heal {
            self.withhold = false;
            self.flush_acks(ctx);
            return;
        }
        match self.p.role {
            Role::Watcher | Role::Auditor | Role::Fuzzer => return,
            _ => {}
        }
        if self.withhold {
            if ctx.rng.chance(200) {
                self.withhold = false;
                self.flush_acks(ctx);
            }
        } else if ctx.rng.chance(self.p.withhold_rate) {
            self.withhold = true;
        }
        if ctx.rng.chance(self.p.publish_rate) {
            self.publish(ctx);
        }
        if ctx.rng.chance(self.p.fuzz_rate) {
            self.garbage(ctx);
            return;
        }
        if self.p.churn_subs && ctx.rng.chance(60) && !self.p.filters.is_empty() {
            let i = ctx.rng.below(self.p.filters.len() as u64) as usize;
            if let Some((f, q)) = self.p.filters.get(i).cloned() {
                if ctx.rng.chance(500) {
                    let pid = self.next_sub_pid;
                    self.next_sub_pid = self.next_sub_pid.wrapping_add(1).max(1);
                    self.send(
                        ctx,
                        &Packet::Unsubscribe(Unsubscribe {
                            packet_id: pid,
                            properties: Properties::default(),
                            filters: vec![f],
                        }),
                    );
                } else {
                    let rh = ctx.rng.below(3) as u8;
                    self.subscribe(ctx, &[(f, q)], rh);
                }
            }
        }
        if self.p.role == Role::Storm && ctx.rng.chance(100) {
            // Storm actors leave abruptly and come back at once.
            self.abandon(ctx, true);
            return;
        }
        if ctx.rng.chance(self.p.leave_rate) {
            let v5 = self.p.version.is_v5();
            match ctx.rng.below(4) {
                0 => {
                    self.send(ctx, &Packet::Disconnect(ReasonOnly::default()));
                    self.abandon(ctx, false);
                }
                1 if v5 => {
                    self.send(
                        ctx,
                        &Packet::Disconnect(ReasonOnly {
                            reason: ReasonCode(0x04),
                            properties: Properties::default(),
                        }),
                    );
                    self.abandon(ctx, false);
                }
                2 => self.abandon(ctx, true),
                _ => self.abandon(ctx, false),
            }
            if ctx.rng.chance(200) {
                // A long absence: may outlive the session and the will delay.
                self.offline_until = ctx.now + ctx.rng.range(2_000, 40_000);
                self.next_wake = self.offline_until;
            }
        }
    }
}
