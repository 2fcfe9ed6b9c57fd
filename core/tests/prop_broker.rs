//! No input byte sequence can panic the core, and every connection whose bytes fail to
//! decode is closed.
//!
//! Several connections of one broker get random bytes, or valid packet streams with random
//! byte flips, cut into random fragments and interleaved with time advances, write
//! acknowledgements and closes. A shadow decoder per connection, fed the same bytes, says
//! when the broker must have seen a decode error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tidemq_core::codec::{
    Ack, Connect, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonOnly, Subscribe, SubscriptionOptions, Unsubscribe, Will, decode_packet, encode_packet,
};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};

const MAX_PACKET: u32 = 512;

const FILTERS: &[&str] = &["a/+", "#", "$share/g/a/b", "a/b", "+/#", "$SYS/#", "a/#/b"];
const TOPICS: &[&str] = &["a/b", "a", "b/c/d", "a/b", "$SYS/x", "a/b/c", "a"];
/// Topics that end the connection; used now and then.
const BAD_TOPICS: &[&str] = &["", "a/+"];
const CLIENT_IDS: &[&str] = &["a", "b", "", "a"];

fn qos(n: u16) -> QoS {
    QoS::from_u8((n % 3) as u8).unwrap()
}

fn pick<'a>(table: &[&'a str], n: u16) -> &'a str {
    table[usize::from(n) % table.len()]
}

/// A CONNECT then packets built from `ops`, all valid on the wire (if not always in meaning).
fn valid_stream(version_pick: u8, connect: u16, ops: &[(u8, u16)]) -> Vec<u8> {
    let version = [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ][usize::from(version_pick % 3)];
    let v5 = version.is_v5();
    let mut properties = Properties::default();
    if v5 && connect & 0x10 != 0 {
        properties.session_expiry_interval = Some(u32::from(connect % 7));
        properties.receive_maximum = Some(1 + connect % 3);
        properties.maximum_packet_size = Some(64 + u32::from(connect % 200));
    }
    let will = (connect & 0x20 != 0).then(|| Will {
        topic: pick(TOPICS, connect >> 6).to_owned(),
        payload: Bytes::from_static(b"will"),
        qos: qos(connect >> 3),
        retain: connect & 0x40 != 0,
        properties: Properties {
            will_delay_interval: (v5 && connect & 0x80 != 0).then_some(2),
            ..Properties::default()
        },
    });
    let mut packets = vec![Packet::Connect(Box::new(Connect {
        version,
        clean_start: connect & 1 != 0,
        keep_alive: connect % 4 * 10,
        properties,
        client_id: pick(CLIENT_IDS, connect >> 1).to_owned(),
        will,
        username: None,
        password: None,
    }))];
    for &(kind, n) in ops {
        let id = 1 + n % 4;
        let ack = Ack {
            packet_id: id,
            reason: tidemq_core::codec::ReasonCode(0),
            properties: Properties::default(),
        };
        packets.push(match kind % 16 {
            0..=2 => Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Properties::default(),
                filters: vec![(
                    pick(FILTERS, n >> 2).to_owned(),
                    SubscriptionOptions {
                        qos: qos(n >> 5),
                        no_local: v5 && n & 0x100 != 0,
                        retain_as_published: v5 && n & 0x200 != 0,
                        retain_handling: if v5 { ((n >> 10) % 3) as u8 } else { 0 },
                    },
                )],
            }),
            3..=7 | 15 => {
                let q = qos(n >> 2);
                let mut properties = Properties::default();
                if v5 && n & 0x100 != 0 {
                    properties.topic_alias = Some((n >> 9) % 4);
                }
                if v5 && n & 0x800 != 0 {
                    properties.message_expiry_interval = Some(1);
                }
                Packet::Publish(Publish {
                    dup: false,
                    qos: q,
                    retain: n & 0x80 != 0,
                    topic: if n & 0x7000 == 0x7000 {
                        pick(BAD_TOPICS, n >> 4)
                    } else {
                        pick(TOPICS, n >> 4)
                    }
                    .to_owned(),
                    packet_id: (q != QoS::AtMostOnce).then_some(id),
                    properties,
                    payload: Bytes::from(vec![b'p'; usize::from(n % 40)]),
                })
            }
            8 => Packet::PubAck(ack),
            9 => Packet::PubRec(ack),
            10 => Packet::PubRel(ack),
            11 => Packet::PubComp(ack),
            12 => Packet::PingReq,
            13 => Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties::default(),
                filters: vec![pick(FILTERS, n >> 2).to_owned()],
            }),
            _ => Packet::Disconnect(ReasonOnly {
                reason: tidemq_core::codec::ReasonCode(if v5 && n & 1 != 0 { 0x04 } else { 0 }),
                properties: Properties::default(),
            }),
        });
    }
    let mut out = BytesMut::new();
    for p in &packets {
        encode_packet(p, version, &mut out).unwrap();
    }
    out.to_vec()
}

/// What one connection is fed.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        any::<u8>(),
        any::<u16>(),
        prop::collection::vec((any::<u8>(), any::<u16>()), 0..16),
    );
    let flips = prop::collection::vec((any::<usize>(), 1..=255u8), 0..4);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        valid
            .clone()
            .prop_map(|(v, c, ops)| valid_stream(v, c, &ops)),
        (valid, flips).prop_map(|((v, c, ops), flips)| {
            let mut bytes = valid_stream(v, c, &ops);
            for (at, x) in flips {
                let len = bytes.len();
                bytes[at % len] ^= x;
            }
            bytes
        }),
    ]
}

/// The broker's view of one connection's bytes, replayed with the same decoder.
struct Shadow {
    buf: BytesMut,
    version: Option<ProtocolVersion>,
    failed: bool,
    /// The broker has said Close (or the peer closed): nothing more is read.
    closed: bool,
    /// Undecoded bytes the broker sent, decoded as a client would.
    rx: BytesMut,
}

impl Shadow {
    fn feed(&mut self, bytes: &[u8], limits: &DecodeLimits) {
        if self.failed || self.closed {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            // The broker answers a bad v5 CONNECT in v5.
            let level = tidemq_core::codec::connect_protocol_level(&self.buf);
            match decode_packet(&mut self.buf, self.version, limits) {
                Ok(Some(Packet::Connect(c))) if self.version.is_none() => {
                    self.version = Some(c.version)
                }
                Ok(Some(_)) => {}
                Ok(None) => return,
                Err(e) => {
                    // As `decode_failed` does: a level it does not speak (`MQIsdp` at 5, say) is
                    // answered in 3.1.1, anything else wrong with a level-5 CONNECT in v5.
                    let unsupported = matches!(e, DecodeError::UnsupportedVersion(_));
                    if self.version.is_none() && level == Some(5) && !unsupported {
                        self.version = Some(ProtocolVersion::V5);
                    }
                    self.failed = true;
                    return;
                }
            }
        }
    }
}

struct Driver {
    broker: Broker,
    now: Instant,
    shadows: Vec<Shadow>,
}

impl Driver {
    fn input(&mut self, input: Input) {
        self.broker.handle_input(self.now, input);
        let client_limits = DecodeLimits {
            max_packet_size: 1 << 28,
            max_user_properties: usize::MAX,
        };
        while let Some(out) = self.broker.poll_output() {
            match out {
                Output::Transmit { conn, bytes } => {
                    let s = &mut self.shadows[conn.0 as usize];
                    assert!(!s.closed, "transmit to {conn} after close");
                    s.rx.extend_from_slice(&bytes);
                    let version = s.version.unwrap_or(ProtocolVersion::V311);
                    while let Some(p) = decode_packet(&mut s.rx, Some(version), &client_limits)
                        .unwrap_or_else(|e| panic!("broker sent undecodable bytes: {e}"))
                    {
                        let _ = p;
                    }
                }
                Output::Close { conn } => self.shadows[conn.0 as usize].closed = true,
                Output::Event(_)
                | Output::AdminReply { .. }
                | Output::AdminAuthorized { .. }
                | Output::WriteConfig { .. }
                | Output::Control { .. }
                | Output::BridgeConnect { .. }
                | Output::Persist { .. }
                | Output::Snapshot { .. }
                | Output::Authenticate { .. }
                | Output::Authorize { .. }
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
    }

    fn received(&mut self, conn: usize, bytes: &[u8], limits: &DecodeLimits) {
        self.shadows[conn].feed(bytes, limits);
        self.input(Input::Received {
            conn: ConnId(conn as u64),
            bytes: Bytes::copy_from_slice(bytes),
        });
        let s = &self.shadows[conn];
        assert!(
            !s.failed || s.closed,
            "conn#{conn} failed to decode but is open"
        );
    }

    fn advance(&mut self, ms: u64) {
        let target = self.now.plus_ms(ms);
        while let Some(at) = self.broker.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.input(Input::Timeout);
        }
        self.now = target;
    }
}

/// Feeds the connections' streams in the order `ops` says, with time, closes, writes and
/// configuration changes between; every byte the broker sends must decode, and a shutdown
/// leaves no connection.
fn run(streams: &[Vec<u8>], ops: &[(u8, u16)]) -> u64 {
    let config = Config {
        max_packet_size: MAX_PACKET,
        max_write_buffer: 2048,
        msq_len: 4,
        connect_timeout_ms: 3_000,
        ..Config::default()
    };
    let limits = DecodeLimits {
        max_packet_size: config.max_packet_size as usize,
        max_user_properties: config.property_size as usize,
    };
    let mut d = Driver {
        broker: Broker::new(config.clone(), 1, Instant(0)),
        now: Instant(0),
        shadows: (0..streams.len())
            .map(|_| Shadow {
                buf: BytesMut::new(),
                version: None,
                failed: false,
                closed: false,
                rx: BytesMut::new(),
            })
            .collect(),
    };
    for i in 0..streams.len() {
        d.input(Input::Accepted {
            conn: ConnId(i as u64),
            peer: format!("10.0.0.{i}:1"),
        });
    }
    let mut offsets = vec![0usize; streams.len()];
    for &(op, n) in ops {
        let conn = usize::from(n >> 12) % streams.len();
        match op % 32 {
            0..=23 => {
                let at = offsets[conn];
                let end = (at + 1 + usize::from(n % 64)).min(streams[conn].len());
                offsets[conn] = end;
                d.received(conn, &streams[conn][at..end], &limits);
            }
            24..=27 => d.advance(u64::from(n % 5_000)),
            28 => {
                d.input(Input::Closed {
                    conn: ConnId(conn as u64),
                });
                d.shadows[conn].closed = true;
            }
            // Decode limits stay put: the shadow decoders use them.
            30 => d.input(Input::ConfigChange(Box::new(Config {
                msq_len: u32::from(n % 3),
                max_topic_alias: n % 4,
                receive_maximum: n % 3,
                max_inflight: n % 4,
                max_write_buffer: u32::from(n) * 16,
                max_keepalive: n % 20,
                ..config.clone()
            }))),
            29 => d.input(Input::WallClock {
                unix_ms: u64::MAX - u64::from(n),
            }),
            _ => d.input(Input::Written {
                conn: ConnId(conn as u64),
                bytes: usize::from(n),
            }),
        }
    }
    for (conn, s) in streams.iter().enumerate() {
        let rest = &s[offsets[conn]..];
        if !rest.is_empty() {
            d.received(conn, rest, &limits);
        }
    }
    d.advance(600_000);
    d.input(Input::Shutdown);
    d.broker.stats().connections
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_input_byte_sequence_can_panic_the_core(
        streams in prop::collection::vec(stream(), 1..5),
        ops in prop::collection::vec((any::<u8>(), any::<u16>()), 0..60),
    ) {
        prop_assert_eq!(run(&streams, &ops), 0);
    }
}

/// Found by the property above: an `MQIsdp` CONNECT at level 5 is answered in 3.1.1
/// (unacceptable protocol version), as the shadow client now expects.
#[test]
fn a_level_5_mqisdp_connect_is_answered_in_3_1_1() {
    let connect = vec![
        16, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 5, 0, 0, 0, 0, 0, 192, 0,
    ];
    assert_eq!(run(&[connect], &[(0, 0)]), 0);
}
