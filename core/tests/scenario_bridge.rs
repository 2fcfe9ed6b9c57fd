//! A bridge's QoS 2 flow across a reconnect, with the test playing the remote broker: when
//! the remote kept the session, what was in flight is resent with the same packet id (PUBLISH
//! with DUP, or PUBREL); when it did not, it starts again as a new message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Ack, ConnAck, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, decode_packet, encode_packet,
};
use tidemq_core::config::{BridgeConfig, BridgeForward};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};

const CLIENT: ConnId = ConnId(1);

struct World {
    broker: Broker,
    now: Instant,
    /// Bytes the broker wrote, per connection, not yet read.
    written: BTreeMap<ConnId, BytesMut>,
    /// Connections the bridge asked for, in order.
    dialed: Vec<ConnId>,
}

impl World {
    fn new(clean_start: bool) -> World {
        let mut config = Config::default();
        config.bridges.insert(
            "b".to_owned(),
            BridgeConfig {
                enable: true,
                address: "mqtt-tcp://remote:1883".to_owned(),
                proto_ver: 5,
                clean_start,
                forwards: vec![BridgeForward {
                    local_topic: "up/#".to_owned(),
                    qos: Some(2),
                    ..BridgeForward::default()
                }],
                ..BridgeConfig::default()
            },
        );
        let mut w = World {
            broker: Broker::new(config, 7, Instant(0)),
            now: Instant(0),
            written: BTreeMap::new(),
            dialed: Vec::new(),
        };
        w.input(Input::Accepted {
            conn: CLIENT,
            peer: "127.0.0.1:5000".to_owned(),
        });
        w.send(CLIENT, ProtocolVersion::V5, &connect("pub"));
        w
    }

    fn input(&mut self, input: Input) {
        self.broker.handle_input(self.now, input);
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, bytes } => {
                    self.written
                        .entry(conn)
                        .or_default()
                        .extend_from_slice(&bytes);
                    self.broker.handle_input(
                        self.now,
                        Input::Written {
                            conn,
                            bytes: bytes.len(),
                        },
                    );
                }
                Output::BridgeConnect { conn, .. } => self.dialed.push(conn),
                _ => {}
            }
        }
    }

    fn send(&mut self, conn: ConnId, version: ProtocolVersion, packet: &Packet) {
        let mut bytes = BytesMut::new();
        encode_packet(packet, version, &mut bytes).unwrap();
        self.input(Input::Received {
            conn,
            bytes: bytes.freeze(),
        });
    }

    /// Every whole packet the broker wrote to `conn` since the last call.
    fn read(&mut self, conn: ConnId) -> Vec<Packet> {
        let limits = DecodeLimits::default();
        let buf = self.written.entry(conn).or_default();
        let mut out = Vec::new();
        // The bridge speaks first on its link, so its side starts "after CONNECT".
        let version = Some(ProtocolVersion::V5);
        while let Some(p) = decode_packet(buf, version, &limits).unwrap() {
            out.push(p);
        }
        out
    }

    /// Lets time run to the bridge's next attempt and opens its link; returns the link.
    fn dial(&mut self) -> ConnId {
        let before = self.dialed.len();
        while self.dialed.len() == before {
            self.now = self.broker.poll_timeout().unwrap();
            self.input(Input::Timeout);
        }
        let link = *self.dialed.last().unwrap();
        self.input(Input::BridgeConnected { conn: link });
        let mut buf = self.written.remove(&link).unwrap_or_default();
        // The CONNECT is read before the protocol version is known.
        let connect = decode_packet(&mut buf, None, &DecodeLimits::default()).unwrap();
        assert!(matches!(connect, Some(Packet::Connect(_))), "{connect:?}");
        self.written.insert(link, buf);
        link
    }

    fn connack(&mut self, link: ConnId, session_present: bool) {
        let ack = ConnAck {
            session_present,
            code: ReasonCode(0),
            properties: Properties::default(),
        };
        self.send(link, ProtocolVersion::V5, &Packet::ConnAck(ack));
    }
}

fn connect(client_id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        properties: Properties::default(),
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
    }))
}

/// A QoS 1 message from the local client; the bridge forwards it at QoS 2.
fn publish_locally(w: &mut World) {
    let p = Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "up/x".to_owned(),
        packet_id: Some(1),
        properties: Properties::default(),
        payload: Bytes::from_static(b"m"),
    };
    w.send(CLIENT, ProtocolVersion::V5, &Packet::Publish(p));
}

fn only_publish(packets: Vec<Packet>) -> Publish {
    match packets.as_slice() {
        [Packet::Publish(p)] => p.clone(),
        other => panic!("expected one PUBLISH, got {other:?}"),
    }
}

#[test]
fn kept_session_resends_the_same_packet_id_with_dup_then_the_pubrel() {
    let mut w = World::new(false);
    let link = w.dial();
    w.connack(link, false);
    publish_locally(&mut w);
    let first = only_publish(w.read(link));
    assert_eq!((first.qos, first.dup), (QoS::ExactlyOnce, false));
    let id = first.packet_id.unwrap();

    // The link drops before the PUBREC: the remote (session kept) may hold the id.
    w.input(Input::Closed { conn: link });
    let link = w.dial();
    w.connack(link, true);
    let again = only_publish(w.read(link));
    assert_eq!((again.packet_id, again.dup), (Some(id), true));

    // PUBREC, then the link drops before the PUBCOMP: only the PUBREL is resent.
    w.send(
        link,
        ProtocolVersion::V5,
        &Packet::PubRec(Ack::new(id, ReasonCode(0))),
    );
    assert_eq!(
        w.read(link),
        vec![Packet::PubRel(Ack::new(id, ReasonCode(0)))]
    );
    w.input(Input::Closed { conn: link });
    let link = w.dial();
    w.connack(link, true);
    assert_eq!(
        w.read(link),
        vec![Packet::PubRel(Ack::new(id, ReasonCode(0)))]
    );
    w.send(
        link,
        ProtocolVersion::V5,
        &Packet::PubComp(Ack::new(id, ReasonCode(0))),
    );
    assert_eq!(w.broker.bridge_backlog().get("b"), Some(&(0, 0)));
}

#[test]
fn lost_session_sends_the_message_again_as_new() {
    let mut w = World::new(false);
    let link = w.dial();
    w.connack(link, false);
    publish_locally(&mut w);
    let first = only_publish(w.read(link));
    w.input(Input::Closed { conn: link });
    let link = w.dial();
    // The remote did not keep the session: its old id means nothing there now.
    w.connack(link, false);
    let again = only_publish(w.read(link));
    assert!(!again.dup);
    assert_eq!(again.payload, first.payload);
    assert_eq!(w.broker.bridge_backlog().get("b"), Some(&(0, 1)));
}
