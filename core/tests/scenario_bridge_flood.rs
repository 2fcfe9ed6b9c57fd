//! A hostile remote broker flooding a bridge: every byte the link holds is in the memory count,
//! what the remote may make the bridge hold is bounded (packet size, unreleased QoS 2 ids, the
//! budget's high mark, output it does not read), and all of it is given back when the link
//! goes down and comes back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Ack, ConnAck, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, SubAck, Subscribe, SubscriptionOptions, decode_packet, encode_packet,
};
use tidemq_core::config::{BridgeConfig, BridgeForward, BridgeSubscription};
use tidemq_core::{Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};

const MIB: u64 = 1024 * 1024;
const BUDGET: u64 = 2 * MIB;
const MAX_PACKET: u32 = 32 * 1024;
const WRITE_BUFFER: u32 = 32 * 1024;
const RECEIVE_MAX: u16 = 8;
/// The subscriber that never reads.
const SUB: ConnId = ConnId(1);
/// A local publisher of what the bridge forwards.
const PUB: ConnId = ConnId(2);

struct World {
    broker: Broker,
    now: Instant,
    v: ProtocolVersion,
    written: BTreeMap<ConnId, BytesMut>,
    /// Connections whose writer never reports bytes written.
    withheld: BTreeSet<ConnId>,
    dialed: Vec<ConnId>,
    closed: BTreeSet<ConnId>,
    downs: Vec<String>,
    peak: usize,
}

impl World {
    fn new(v5: bool) -> World {
        let mut config = Config {
            max_memory: BUDGET,
            max_packet_size: MAX_PACKET,
            max_write_buffer: WRITE_BUFFER,
            receive_maximum: RECEIVE_MAX,
            ..Config::default()
        };
        config.bridges.insert(
            "b".to_owned(),
            BridgeConfig {
                enable: true,
                address: "mqtt-tcp://remote:1883".to_owned(),
                proto_ver: if v5 { 5 } else { 4 },
                clean_start: true,
                forwards: vec![BridgeForward {
                    local_topic: "up/#".to_owned(),
                    qos: Some(1),
                    ..BridgeForward::default()
                }],
                subscription: vec![BridgeSubscription {
                    remote_topic: "in/#".to_owned(),
                    local_topic: "from/#".to_owned(),
                    qos: 2,
                }],
                ..BridgeConfig::default()
            },
        );
        World {
            broker: Broker::new(config, 7, Instant(0)),
            now: Instant(0),
            v: if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V311
            },
            written: BTreeMap::new(),
            withheld: BTreeSet::new(),
            dialed: Vec::new(),
            closed: BTreeSet::new(),
            downs: Vec::new(),
            peak: 0,
        }
    }

    fn input(&mut self, input: Input) {
        let mut pending = vec![input];
        while let Some(input) = pending.pop() {
            self.broker.handle_input(self.now, input);
            self.peak = self.peak.max(self.broker.memory_used());
            while let Some(out) = self.broker.poll_output() {
                match out {
                    Output::Transmit { conn, bytes } => {
                        self.written
                            .entry(conn)
                            .or_default()
                            .extend_from_slice(&bytes);
                        if !self.withheld.contains(&conn) {
                            pending.push(Input::Written {
                                conn,
                                bytes: bytes.len(),
                            });
                        }
                    }
                    Output::BridgeConnect { conn, .. } => self.dialed.push(conn),
                    Output::Close { conn } => {
                        self.closed.insert(conn);
                    }
                    Output::Event(BrokerEvent::BridgeDown { detail, .. }) => {
                        self.downs.push(detail)
                    }
                    _ => {}
                }
            }
        }
    }

    fn send_raw(&mut self, conn: ConnId, bytes: Bytes) {
        self.input(Input::Received { conn, bytes });
    }

    fn send(&mut self, conn: ConnId, packet: &Packet) {
        let mut bytes = BytesMut::new();
        encode_packet(packet, self.v, &mut bytes).unwrap();
        self.send_raw(conn, bytes.freeze());
    }

    fn read(&mut self, conn: ConnId) -> Vec<Packet> {
        let buf = self.written.entry(conn).or_default();
        let mut out = Vec::new();
        while let Some(p) = decode_packet(buf, Some(self.v), &DecodeLimits::default()).unwrap() {
            out.push(p);
        }
        out
    }

    fn client(&mut self, conn: ConnId, client_id: &str) {
        self.input(Input::Accepted {
            conn,
            peer: format!("127.0.0.1:{}", 5000 + conn.0),
        });
        self.send(
            conn,
            &Packet::Connect(Box::new(Connect {
                version: self.v,
                clean_start: true,
                keep_alive: 0,
                properties: Properties::default(),
                client_id: client_id.to_owned(),
                will: None,
                username: None,
                password: None,
            })),
        );
        assert!(matches!(self.read(conn).as_slice(), [Packet::ConnAck(_)]));
    }

    /// Lets time run to the bridge's next attempt and opens its link; returns the link and
    /// the CONNECT it sent.
    fn dial(&mut self) -> (ConnId, Connect) {
        let before = self.dialed.len();
        while self.dialed.len() == before {
            self.now = self.broker.poll_timeout().unwrap();
            self.input(Input::Timeout);
        }
        let link = *self.dialed.last().unwrap();
        self.input(Input::BridgeConnected { conn: link });
        let mut buf = self.written.remove(&link).unwrap_or_default();
        let connect = match decode_packet(&mut buf, None, &DecodeLimits::default()).unwrap() {
            Some(Packet::Connect(c)) => *c,
            other => panic!("expected CONNECT, got {other:?}"),
        };
        self.written.insert(link, buf);
        (link, connect)
    }

    /// A link up, its SUBSCRIBE answered.
    fn up(&mut self) -> (ConnId, Connect) {
        let (link, connect) = self.dial();
        self.send(
            link,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: ReasonCode(0),
                properties: Properties::default(),
            }),
        );
        // Only the SUBSCRIBE: what follows it is the test's to read.
        let buf = self.written.entry(link).or_default();
        let Ok(Some(Packet::Subscribe(Subscribe { packet_id, .. }))) =
            decode_packet(buf, Some(self.v), &DecodeLimits::default())
        else {
            panic!("expected SUBSCRIBE");
        };
        self.send(
            link,
            &Packet::SubAck(SubAck {
                packet_id,
                properties: Properties::default(),
                reasons: vec![ReasonCode(2)],
            }),
        );
        (link, connect)
    }

    /// What the budget allows plus what each live connection and the bridge may still take
    /// once past its high mark (the bound the simulation's I2 holds the broker to).
    fn bound(&self) -> usize {
        let packet = MAX_PACKET as usize + 512;
        let per_conn = 2 * WRITE_BUFFER as usize + 3 * packet + 4096;
        let per_session = (16 + 32 + RECEIVE_MAX as usize + 1) * packet + 1024;
        BUDGET as usize + 3 * per_conn + 2 * per_session
    }
}

fn publish(topic: &str, qos: QoS, pid: u16, size: usize) -> Packet {
    retained(topic, qos, pid, size, false)
}

fn retained(topic: &str, qos: QoS, pid: u16, size: usize, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: Properties::default(),
        payload: Bytes::from(vec![b'x'; size]),
    })
}

/// A subscriber of the remote's topics that never reads, and a local publisher.
fn locals(w: &mut World) {
    w.client(SUB, "s");
    w.client(PUB, "p");
    w.send(
        SUB,
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "from/#".to_owned(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            )],
        }),
    );
    w.withheld.insert(SUB);
}

#[test]
fn a_flooding_remote_stays_within_the_budget_and_everything_is_given_back() {
    let mut w = World::new(true);
    let idle = w.broker.memory_used();
    locals(&mut w);
    let (link, connect) = w.up();
    // The remote is told what it may send.
    assert_eq!(connect.properties.receive_maximum, Some(RECEIVE_MAX));
    assert_eq!(connect.properties.maximum_packet_size, Some(MAX_PACKET));

    // QoS 2 without PUBREL: up to the receive maximum, then the link is closed with 0x93.
    for pid in 1..=RECEIVE_MAX {
        w.send(link, &publish("in/q2", QoS::ExactlyOnce, 1000 + pid, 10));
        assert!(matches!(w.read(link).as_slice(), [Packet::PubRec(_)]));
    }
    let held = w.broker.memory_used();
    w.send(link, &publish("in/q2", QoS::ExactlyOnce, 2000, 10));
    match w.read(link).as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode(0x93)),
        other => panic!("expected DISCONNECT 0x93, got {other:?}"),
    }
    assert!(w.closed.contains(&link));
    assert!(w.downs.last().unwrap().contains("receive maximum"));
    assert!(
        w.broker.memory_used() <= held,
        "the link's buffers given back"
    );

    let (link, _) = w.up();
    // Large QoS 0 messages for a subscriber that does not read, and QoS 1 retained ones
    // (kept for good), far past the budget.
    let mut refused = 0;
    for i in 0..600u16 {
        let (qos, retain) = if i % 2 == 0 {
            (QoS::AtMostOnce, false)
        } else {
            (QoS::AtLeastOnce, true)
        };
        let topic = format!("in/r/{i}");
        w.send(link, &retained(&topic, qos, i % 100 + 1, 8 * 1024, retain));
        for p in w.read(link) {
            match p {
                Packet::PubAck(a) if a.reason == ReasonCode(0x97) => refused += 1,
                Packet::PubAck(a) if a.reason == ReasonCode(0) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            w.broker.memory_used() <= w.bound(),
            "message {i}: {} counted, bound {}",
            w.broker.memory_used(),
            w.bound()
        );
    }
    assert!(
        refused > 100,
        "QoS 1 past the high mark refused with 0x97: {refused}"
    );
    assert!(
        w.peak as u64 > BUDGET / 2,
        "the flood was counted: peak {}",
        w.peak
    );
    assert!(
        w.peak as u64 <= BUDGET,
        "held within the budget: peak {}",
        w.peak
    );

    // A packet header past the maximum size: refused at its header, the buffer never grows.
    let (link, _) = w.up();
    let before = w.broker.memory_used();
    let mut huge = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x80, 0x04][..]);
    huge.extend_from_slice(&[0u8; 1000]);
    w.send_raw(link, huge.freeze());
    match w.read(link).as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, ReasonCode(0x95)),
        other => panic!("expected DISCONNECT 0x95, got {other:?}"),
    }
    assert!(w.closed.contains(&link));
    assert!(
        w.broker.memory_used() <= before,
        "nothing kept of the oversized packet"
    );

    // The retained messages are cleared, the subscriber and the publisher leave, the link
    // comes back (the remote lost the session): nothing is left counted.
    for i in 0..600u16 {
        w.send(
            PUB,
            &retained(&format!("from/r/{i}"), QoS::AtMostOnce, 0, 0, true),
        );
    }
    w.input(Input::Closed { conn: SUB });
    w.input(Input::Closed { conn: PUB });
    let (link, _) = w.up();
    w.input(Input::Closed { conn: link });
    assert_eq!(w.broker.memory_used(), idle, "nothing left counted");
    println!(
        "flood: peak {} bytes counted (budget {BUDGET}, bound {}), {refused} QoS 1 refused",
        w.peak,
        w.bound()
    );
}

#[test]
fn a_remote_that_does_not_read_is_cut_and_the_outbox_stays_bounded() {
    let mut w = World::new(true);
    let idle = w.broker.memory_used();
    locals(&mut w);
    let (link, _) = w.up();
    w.withheld.insert(link);
    // Forwards pile up in the outbox (the remote's window is open, its socket is not read):
    // output stops at max_write_buffer, the rest waits counted.
    let before = w.broker.memory_used();
    for i in 0..200u16 {
        w.send(PUB, &publish("up/x", QoS::AtLeastOnce, i % 50 + 1, 2048));
        w.read(PUB);
    }
    let (queued, inflight) = w.broker.bridge_backlog()["b"];
    assert!(queued > 0, "the outbox holds what the writer cannot take");
    assert!(
        w.broker.memory_used() > before + (queued + inflight) * 2048,
        "the outbox and the unwritten output are counted"
    );
    // The remote floods small QoS 1 messages and never reads our PUBACKs: cut at twice
    // max_write_buffer of unwritten output.
    let mut sent = 0;
    while !w.closed.contains(&link) && sent < 40_000 {
        w.send(
            link,
            &publish("in/s", QoS::AtLeastOnce, sent % 60_000 + 1, 1),
        );
        sent += 1;
    }
    assert!(w.closed.contains(&link), "cut after {sent} messages");
    assert!(w.downs.last().unwrap().contains("not reading"));
    assert!(w.broker.memory_used() <= w.bound());
    // Everything goes: the subscriber, the publisher, and the outbox once the remote takes it.
    w.input(Input::Closed { conn: SUB });
    w.input(Input::Closed { conn: PUB });
    w.withheld.clear();
    let (link, _) = w.up();
    for _ in 0..1000 {
        let acks: Vec<u16> = w
            .read(link)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => p.packet_id,
                _ => None,
            })
            .collect();
        if acks.is_empty() {
            break;
        }
        for id in acks {
            w.send(link, &Packet::PubAck(Ack::new(id, ReasonCode(0))));
        }
    }
    assert_eq!(w.broker.bridge_backlog()["b"], (0, 0));
    w.input(Input::Closed { conn: link });
    assert_eq!(w.broker.memory_used(), idle, "nothing left counted");
}

#[test]
fn a_3_1_1_remote_past_the_high_mark_loses_the_link_not_the_message() {
    let mut w = World::new(false);
    locals(&mut w);
    let (link, connect) = w.up();
    assert_eq!(connect.properties, Properties::default());
    let mut sent = 0;
    while !w.closed.contains(&link) && sent < 1000 {
        let topic = format!("in/r/{sent}");
        w.send(
            link,
            &retained(&topic, QoS::AtLeastOnce, sent + 1, 8 * 1024, true),
        );
        sent += 1;
        assert!(w.broker.memory_used() <= w.bound());
    }
    assert!(
        w.closed.contains(&link),
        "the link closes past the high mark"
    );
    assert!(w.downs.last().unwrap().contains("memory budget"));
    // The message that closed it was not acknowledged: the remote keeps it.
    let acks = w
        .read(link)
        .into_iter()
        .filter(|p| matches!(p, Packet::PubAck(_)))
        .count();
    assert_eq!(acks, sent as usize - 1);
}
