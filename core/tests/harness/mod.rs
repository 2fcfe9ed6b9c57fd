//! A test harness for the sans-IO core, in the style of quinn's `Pair`: one [`Broker`], a
//! simulated millisecond clock, and fake clients that speak MQTT through the crate's own codec.
//!
//! Every output is drained after each input: transmitted bytes are decoded into the target
//! client's inbox (and, unless withheld, acknowledged with `Written`), closes are recorded,
//! events are kept. Client bytes are fed in random, seeded fragments by default.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Ack, ConnAck, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, ReasonOnly, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe, Will,
    decode_packet, encode_packet,
};
use tidemq_core::persist::{Record, Recovered};
use tidemq_core::{
    AuthOutcome, Broker, BrokerEvent, Config, ConnId, Input, Instant, Output, Stats,
};

#[allow(unused_imports)]
pub use tidemq_core::codec::ProtocolVersion::{V5, V31, V311};
#[allow(unused_imports)]
pub use tidemq_core::codec::QoS::{AtLeastOnce as Q1, AtMostOnce as Q0, ExactlyOnce as Q2};

/// How the harness cuts client bytes into `Received` inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Everything sent at once in one input.
    Whole,
    /// One byte per input.
    Bytewise,
    /// Random pieces, from the harness seed.
    Random,
}

/// What a fake client asks for in CONNECT besides id, version and clean start.
#[derive(Debug, Clone, Default)]
pub struct ConnectOpts {
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub will: Option<Will>,
    pub properties: Properties,
}

impl ConnectOpts {
    pub fn keep_alive(mut self, secs: u16) -> Self {
        self.keep_alive = secs;
        self
    }

    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.username = Some(name.to_owned());
        self.password = Some(Bytes::copy_from_slice(password.as_bytes()));
        self
    }

    pub fn username(mut self, name: &str) -> Self {
        self.username = Some(name.to_owned());
        self
    }

    pub fn will(mut self, topic: &str, payload: &str, qos: QoS, retain: bool) -> Self {
        self.will = Some(Will {
            topic: topic.to_owned(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos,
            retain,
            properties: Properties::default(),
        });
        self
    }

    pub fn will_delay(mut self, secs: u32) -> Self {
        if let Some(w) = &mut self.will {
            w.properties.will_delay_interval = Some(secs);
        }
        self
    }

    pub fn session_expiry(mut self, secs: u32) -> Self {
        self.properties.session_expiry_interval = Some(secs);
        self
    }

    pub fn receive_maximum(mut self, n: u16) -> Self {
        self.properties.receive_maximum = Some(n);
        self
    }

    pub fn max_packet_size(mut self, n: u32) -> Self {
        self.properties.maximum_packet_size = Some(n);
        self
    }
}

/// One fake client connection.
#[derive(Debug)]
pub struct Client {
    pub conn: ConnId,
    pub version: ProtocolVersion,
    /// Bytes from the broker not yet decoded (a partial packet).
    pub rx: BytesMut,
    /// Decoded packets not yet taken by `recv`.
    pub inbox: VecDeque<Packet>,
    /// Every byte the broker transmitted to this client.
    pub transmitted: Vec<u8>,
    pub closed: bool,
    /// Slow reader: transmitted bytes are not acknowledged with `Written`.
    pub withhold_written: bool,
    /// Bytes transmitted and not yet acknowledged.
    pub unwritten: usize,
    next_packet_id: u16,
}

pub struct Harness {
    pub broker: Broker,
    pub now: Instant,
    pub clients: BTreeMap<ConnId, Client>,
    pub events: Vec<BrokerEvent>,
    /// Every output, in order: two runs with the same inputs and seed must agree.
    pub log: Vec<Output>,
    /// How client bytes are cut into `Received` inputs.
    pub fragment: Fragment,
    /// Every `Output::Persist` as `(upto, records)`, in order.
    pub persisted: Vec<(u64, Vec<Record>)>,
    /// Every `Output::Snapshot` as `(upto, records)`, in order.
    pub snapshots: Vec<(u64, Vec<Record>)>,
    /// A store that never lags: each `Output::Persist` is answered at once with
    /// `Input::PersistDone` (off by default, so tests can hold the store back).
    pub auto_persist: bool,
    /// Credential checks answered at once against the configured users, compared as
    /// plaintext (what the runtime does with plaintext values); off: kept in `auth_asked`.
    pub auto_auth: bool,
    /// Every `Output::Authenticate` not answered automatically: connection, user, password.
    pub auth_asked: Vec<(ConnId, String, Vec<u8>)>,
    /// Every `Output::Authorize`: connection, action, topic (answered by the test).
    pub acl_asked: Vec<(ConnId, tidemq_core::acl::Action, String)>,
    rng: u64,
    /// The broker's seed, kept for a broker restored from the store.
    seed: u64,
    next_conn: u64,
}

/// Client-side decoding accepts anything the MQTT limits allow.
const CLIENT_LIMITS: DecodeLimits = DecodeLimits {
    max_packet_size: 268_435_460,
    max_user_properties: usize::MAX,
};

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with_config(Config::default())
    }

    pub fn with_config(config: Config) -> Harness {
        Harness::with_seed(config, 1)
    }

    /// `seed` drives both the broker and the fragmentation of client bytes.
    pub fn with_seed(config: Config, seed: u64) -> Harness {
        let now = Instant(0);
        Harness {
            broker: Broker::new(config, seed, now),
            now,
            clients: BTreeMap::new(),
            events: Vec::new(),
            log: Vec::new(),
            fragment: Fragment::Random,
            persisted: Vec::new(),
            snapshots: Vec::new(),
            auto_persist: false,
            auto_auth: true,
            auth_asked: Vec::new(),
            acl_asked: Vec::new(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            seed,
            next_conn: 1,
        }
    }

    /// Reseeds only the fragmentation, leaving the broker's seed alone.
    pub fn fragment_seed(&mut self, seed: u64) {
        self.rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    // ----- driving the broker ------------------------------------------------------------

    /// Applies one input at the current time and drains every output, acknowledging writes
    /// for clients that are not withholding them.
    pub fn input(&mut self, input: Input) {
        self.run(VecDeque::from([input]));
    }

    /// Replaces the broker by one restored from what a store recovered (same configuration
    /// and seed), then drains what that produced.
    pub fn restore(&mut self, state: Recovered, unix_ms: u64) {
        let config = self.broker.config().clone();
        self.broker = Broker::from_recovered(config, self.seed, self.now, state, unix_ms);
        self.run(VecDeque::new());
    }

    /// Drains the outputs waiting, then applies `pending` (and the inputs the outputs give
    /// rise to) one at a time.
    fn run(&mut self, mut pending: VecDeque<Input>) {
        loop {
            while let Some(out) = self.broker.poll_output() {
                self.log.push(out.clone());
                match out {
                    Output::Transmit { conn, bytes } => {
                        let c = self
                            .clients
                            .get_mut(&conn)
                            .unwrap_or_else(|| panic!("transmit to unknown {conn}"));
                        assert!(!c.closed, "transmit to {conn} after Close");
                        c.transmitted.extend_from_slice(&bytes);
                        c.rx.extend_from_slice(&bytes);
                        loop {
                            match decode_packet(&mut c.rx, Some(c.version), &CLIENT_LIMITS) {
                                Ok(Some(p)) => c.inbox.push_back(p),
                                Ok(None) => break,
                                Err(e) => panic!("{conn} got undecodable bytes: {e}"),
                            }
                        }
                        if c.withhold_written {
                            c.unwritten += bytes.len();
                        } else {
                            pending.push_back(Input::Written {
                                conn,
                                bytes: bytes.len(),
                            });
                        }
                    }
                    Output::Close { conn } => {
                        let c = self
                            .clients
                            .get_mut(&conn)
                            .unwrap_or_else(|| panic!("close of unknown {conn}"));
                        assert!(!c.closed, "{conn} closed twice");
                        c.closed = true;
                    }
                    Output::Event(e) => self.events.push(e),
                    Output::Persist { upto, records } => {
                        self.persisted.push((upto, records));
                        if self.auto_persist {
                            pending.push_back(Input::PersistDone { upto });
                        }
                    }
                    Output::Snapshot { upto, records } => self.snapshots.push((upto, records)),
                    Output::Authenticate {
                        conn,
                        username,
                        password,
                        ..
                    } => {
                        if self.auto_auth {
                            let good = self
                                .broker
                                .config()
                                .users
                                .get(&username)
                                .is_some_and(|p| p.as_bytes() == password.0.as_ref());
                            let outcome = if good {
                                AuthOutcome::Allow { superuser: false }
                            } else {
                                AuthOutcome::Deny
                            };
                            pending.push_back(Input::AuthResult { conn, outcome });
                        } else {
                            self.auth_asked.push((conn, username, password.0.to_vec()));
                        }
                    }
                    Output::Authorize {
                        conn,
                        action,
                        topic,
                        ..
                    } => self.acl_asked.push((conn, action, topic)),
                    Output::AdminReply { .. }
                    | Output::AdminAuthorized { .. }
                    | Output::WriteConfig { .. }
                    | Output::Control { .. }
                    | Output::BridgeConnect { .. }
                    // Cluster outputs are read from `log` by the cluster scenarios.
                    | Output::ClusterSubscribe { .. }
                    | Output::ClusterUnsubscribe { .. }
                    | Output::ClusterPublish { .. }
                    | Output::ClusterRetain { .. }
                    | Output::ClusterClaim { .. }
                    | Output::ClusterRecord { .. }
                    | Output::ClusterCatchUp { .. }
                    | Output::ClusterLookup { .. }
                    | Output::ClusterRelease { .. }
                    | Output::ClusterScan { .. }
                    | Output::ClusterDurable { .. } => {}
                }
            }
            let Some(input) = pending.pop_front() else {
                return;
            };
            self.broker.handle_input(self.now, input);
        }
    }

    /// Moves the clock forward by `ms`, firing every timer that falls due on the way at its
    /// own instant.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now.plus_ms(ms);
        let mut fired = 0;
        while let Some(at) = self.broker.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.input(Input::Timeout);
            fired += 1;
            assert!(fired < 100_000, "timer at {at:?} keeps firing");
        }
        self.now = target;
    }

    pub fn advance_secs(&mut self, secs: u64) {
        self.advance(secs * 1000);
    }

    pub fn stats(&self) -> Stats {
        self.broker.stats()
    }

    pub fn take_events(&mut self) -> Vec<BrokerEvent> {
        std::mem::take(&mut self.events)
    }

    // ----- connections -------------------------------------------------------------------

    /// A new TCP connection, not yet sending anything.
    pub fn accept(&mut self) -> ConnId {
        let n = self.next_conn;
        self.accept_from(&format!("10.0.0.{}:{}", n % 250 + 1, 40_000 + n))
    }

    pub fn accept_from(&mut self, peer: &str) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.clients.insert(
            conn,
            Client {
                conn,
                version: V311,
                rx: BytesMut::new(),
                inbox: VecDeque::new(),
                transmitted: Vec::new(),
                closed: false,
                withhold_written: false,
                unwritten: 0,
                next_packet_id: 1,
            },
        );
        self.input(Input::Accepted {
            conn,
            peer: peer.to_owned(),
        });
        conn
    }

    /// Opens a connection and sends CONNECT; panics unless a CONNACK comes back.
    pub fn connect(
        &mut self,
        client_id: &str,
        version: ProtocolVersion,
        clean_start: bool,
        opts: ConnectOpts,
    ) -> (ConnId, ConnAck) {
        let conn = self.accept();
        let ack = self
            .connect_on(conn, client_id, version, clean_start, opts)
            .unwrap_or_else(|| panic!("no CONNACK for {client_id:?}"));
        (conn, ack)
    }

    /// A clean connection with default options that must be accepted.
    pub fn client(&mut self, client_id: &str, version: ProtocolVersion) -> ConnId {
        let (conn, ack) = self.connect(client_id, version, true, ConnectOpts::default());
        assert_eq!(ack.code, 0, "CONNACK for {client_id:?}");
        conn
    }

    /// Sends CONNECT on an accepted connection and takes the CONNACK, if the first packet
    /// back is one (anything else stays in the inbox).
    pub fn connect_on(
        &mut self,
        conn: ConnId,
        client_id: &str,
        version: ProtocolVersion,
        clean_start: bool,
        opts: ConnectOpts,
    ) -> Option<ConnAck> {
        let connect = Connect {
            version,
            clean_start,
            keep_alive: opts.keep_alive,
            properties: opts.properties,
            client_id: client_id.to_owned(),
            will: opts.will,
            username: opts.username,
            password: opts.password,
        };
        self.send(conn, &Packet::Connect(Box::new(connect)));
        let c = self.clients.get_mut(&conn)?;
        if !matches!(c.inbox.front(), Some(Packet::ConnAck(_))) {
            return None;
        }
        match c.inbox.pop_front() {
            Some(Packet::ConnAck(a)) => Some(a),
            _ => None,
        }
    }

    /// The peer closes the connection (or it fails).
    pub fn close(&mut self, conn: ConnId) {
        self.input(Input::Closed { conn });
        if let Some(c) = self.clients.get_mut(&conn) {
            c.closed = true;
        }
    }

    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.clients.get(&conn).is_some_and(|c| c.closed)
    }

    pub fn client_state(&self, conn: ConnId) -> &Client {
        &self.clients[&conn]
    }

    /// Stop (or resume) acknowledging this client's writes, like a reader that stalls.
    pub fn withhold_written(&mut self, conn: ConnId, withhold: bool) {
        self.clients.get_mut(&conn).unwrap().withhold_written = withhold;
    }

    /// Reports every withheld byte as written and resumes acknowledging.
    pub fn release_written(&mut self, conn: ConnId) {
        let c = self.clients.get_mut(&conn).unwrap();
        c.withhold_written = false;
        let bytes = std::mem::take(&mut c.unwritten);
        self.input(Input::Written { conn, bytes });
    }

    // ----- client to broker --------------------------------------------------------------

    /// Encodes `packet` in the client's protocol version and feeds it.
    pub fn send(&mut self, conn: ConnId, packet: &Packet) {
        self.send_all(conn, std::slice::from_ref(packet));
    }

    /// Several packets back to back, fragmented as one stream.
    pub fn send_all(&mut self, conn: ConnId, packets: &[Packet]) {
        let mut buf = BytesMut::new();
        for packet in packets {
            let version = match packet {
                Packet::Connect(c) => {
                    self.clients.get_mut(&conn).unwrap().version = c.version;
                    c.version
                }
                _ => self.clients[&conn].version,
            };
            encode_packet(packet, version, &mut buf).unwrap();
        }
        self.send_raw(conn, &buf);
    }

    /// Feeds bytes cut as `fragment` says.
    pub fn send_raw(&mut self, conn: ConnId, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = match self.fragment {
                Fragment::Whole => rest.len(),
                Fragment::Bytewise => 1,
                Fragment::Random => {
                    // Mostly small pieces, sometimes everything left.
                    let r = self.next_rand();
                    if r.is_multiple_of(4) {
                        rest.len()
                    } else {
                        1 + (r >> 8) as usize % rest.len().min(8)
                    }
                }
            };
            let (head, tail) = rest.split_at(n);
            rest = tail;
            self.input(Input::Received {
                conn,
                bytes: Bytes::copy_from_slice(head),
            });
        }
    }

    fn packet_id(&mut self, conn: ConnId) -> u16 {
        let c = self.clients.get_mut(&conn).unwrap();
        let id = c.next_packet_id;
        c.next_packet_id = c.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Publishes and returns the packet id used (None for QoS 0).
    pub fn publish(
        &mut self,
        conn: ConnId,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
    ) -> Option<u16> {
        let mut p = publish_msg(topic, payload, qos);
        p.retain = retain;
        self.publish_with(conn, p)
    }

    /// Publishes `p`, filling in a packet id for QoS 1/2 when it has none.
    pub fn publish_with(&mut self, conn: ConnId, mut p: Publish) -> Option<u16> {
        if p.qos != QoS::AtMostOnce && p.packet_id.is_none() {
            p.packet_id = Some(self.packet_id(conn));
        }
        let pid = p.packet_id;
        self.send(conn, &Packet::Publish(p));
        pid
    }

    pub fn subscribe(&mut self, conn: ConnId, filter: &str, qos: QoS) -> SubAck {
        let opts = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        self.subscribe_with(conn, &[(filter, opts)], Properties::default())
    }

    /// Sends SUBSCRIBE and takes its SUBACK out of the inbox (other packets stay).
    pub fn subscribe_with(
        &mut self,
        conn: ConnId,
        filters: &[(&str, SubscriptionOptions)],
        properties: Properties,
    ) -> SubAck {
        let packet_id = self.packet_id(conn);
        self.send(
            conn,
            &Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters: filters.iter().map(|(f, o)| ((*f).to_owned(), *o)).collect(),
            }),
        );
        let c = self.clients.get_mut(&conn).unwrap();
        let pos = c
            .inbox
            .iter()
            .position(|p| matches!(p, Packet::SubAck(s) if s.packet_id == packet_id))
            .unwrap_or_else(|| panic!("no SUBACK {packet_id} on {conn}: {:?}", c.inbox));
        match c.inbox.remove(pos) {
            Some(Packet::SubAck(s)) => s,
            _ => unreachable!(),
        }
    }

    pub fn unsubscribe(&mut self, conn: ConnId, filters: &[&str]) -> UnsubAck {
        let packet_id = self.packet_id(conn);
        self.send(
            conn,
            &Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: Properties::default(),
                filters: filters.iter().map(|f| (*f).to_owned()).collect(),
            }),
        );
        let c = self.clients.get_mut(&conn).unwrap();
        let pos = c
            .inbox
            .iter()
            .position(|p| matches!(p, Packet::UnsubAck(u) if u.packet_id == packet_id))
            .unwrap_or_else(|| panic!("no UNSUBACK {packet_id} on {conn}: {:?}", c.inbox));
        match c.inbox.remove(pos) {
            Some(Packet::UnsubAck(u)) => u,
            _ => unreachable!(),
        }
    }

    pub fn puback(&mut self, conn: ConnId, packet_id: u16) {
        self.send(conn, &Packet::PubAck(ack(packet_id)));
    }

    pub fn pubrec(&mut self, conn: ConnId, packet_id: u16) {
        self.send(conn, &Packet::PubRec(ack(packet_id)));
    }

    pub fn pubrel(&mut self, conn: ConnId, packet_id: u16) {
        self.send(conn, &Packet::PubRel(ack(packet_id)));
    }

    pub fn pubcomp(&mut self, conn: ConnId, packet_id: u16) {
        self.send(conn, &Packet::PubComp(ack(packet_id)));
    }

    pub fn ping(&mut self, conn: ConnId) {
        self.send(conn, &Packet::PingReq);
    }

    pub fn disconnect(&mut self, conn: ConnId, reason: u8) {
        self.disconnect_with(conn, reason, Properties::default());
    }

    pub fn disconnect_with(&mut self, conn: ConnId, reason: u8, properties: Properties) {
        let reason = ReasonCode(reason);
        self.send(conn, &Packet::Disconnect(ReasonOnly { reason, properties }));
    }

    // ----- broker to client --------------------------------------------------------------

    /// Every packet received and not yet taken.
    pub fn recv(&mut self, conn: ConnId) -> Vec<Packet> {
        self.clients
            .get_mut(&conn)
            .map(|c| c.inbox.drain(..).collect())
            .unwrap_or_default()
    }

    /// Takes the inbox and returns its PUBLISH packets, panicking on anything else.
    pub fn publishes(&mut self, conn: ConnId) -> Vec<Publish> {
        self.recv(conn)
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => p,
                other => panic!("{conn}: expected only PUBLISH, got {other:?}"),
            })
            .collect()
    }

    /// Takes every PUBLISH, acknowledging QoS 1/2 ones (QoS 2 through PUBCOMP) until no
    /// more come; other packets are dropped.
    pub fn publishes_acked(&mut self, conn: ConnId) -> Vec<Publish> {
        let mut out = Vec::new();
        loop {
            let got: Vec<Publish> = self
                .recv(conn)
                .into_iter()
                .filter_map(|p| match p {
                    Packet::Publish(p) => Some(p),
                    _ => None,
                })
                .collect();
            if got.is_empty() {
                return out;
            }
            for p in &got {
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => self.puback(conn, id),
                    (QoS::ExactlyOnce, Some(id)) => {
                        self.pubrec(conn, id);
                        self.pubcomp(conn, id);
                    }
                    _ => {}
                }
            }
            out.extend(got);
        }
    }

    /// Payloads of the PUBLISH packets received, as strings.
    pub fn payloads(&mut self, conn: ConnId) -> Vec<String> {
        self.publishes(conn)
            .iter()
            .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
            .collect()
    }

    /// The one packet waiting, panicking unless there is exactly one.
    pub fn recv_one(&mut self, conn: ConnId) -> Packet {
        let mut got = self.recv(conn);
        assert_eq!(got.len(), 1, "{conn}: expected one packet, got {got:?}");
        got.remove(0)
    }

    /// The v5 DISCONNECT reason the broker sent, if the last packet is a DISCONNECT.
    pub fn disconnect_reason(&mut self, conn: ConnId) -> Option<u8> {
        match self.recv(conn).pop() {
            Some(Packet::Disconnect(d)) => Some(d.reason.0),
            _ => None,
        }
    }
}

pub fn ack(packet_id: u16) -> Ack {
    Ack {
        packet_id,
        reason: ReasonCode(0),
        properties: Properties::default(),
    }
}

pub fn publish_msg(topic: &str, payload: &str, qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

pub fn sub_opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// Config with `$SYS` events off, so they do not show up in `#` tests' counters.
pub fn quiet_config() -> Config {
    Config {
        sys_events: false,
        ..Config::default()
    }
}

/// The scrape's text, as the scrape listener gets it.
pub fn scrape(h: &mut Harness) -> String {
    let from = h.log.len();
    h.input(Input::MetricsScrape { req_id: 77 });
    h.log[from..]
        .iter()
        .find_map(|o| match o {
            Output::AdminReply {
                req_id: 77, body, ..
            } => Some(String::from_utf8(body.to_vec()).unwrap()),
            _ => None,
        })
        .expect("a reply")
}

/// The value of the sample written exactly `sample` (name and labels).
pub fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
        .parse()
        .unwrap()
}
