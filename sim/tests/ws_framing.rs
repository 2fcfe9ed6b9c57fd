#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! S18: MQTT over WebSocket through the core's pure framing code. A seeded stream of MQTT
//! packets is cut into WebSocket frames at random (fragments, continuations, pings between),
//! then the bytes are split and coalesced at random as TCP would. The broker behind the
//! frame decoder must behave exactly as with plain TCP bytes; text and malformed frames end
//! the connection with the right close code.

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Connect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
    encode_packet,
};
use tidemq_core::ws::{Frame, FrameDecoder};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};

/// SplitMix64, the simulation's generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mqtt_stream(rng: &mut Rng) -> Vec<u8> {
    let v = ProtocolVersion::V311;
    let mut out = BytesMut::new();
    let connect = Packet::Connect(Box::new(Connect {
        version: v,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: "ws".to_owned(),
        will: None,
        username: None,
        password: None,
    }));
    encode_packet(&connect, v, &mut out).unwrap();
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            "t/#".to_owned(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
        )],
    });
    encode_packet(&subscribe, v, &mut out).unwrap();
    for i in 0..(5 + rng.below(30)) {
        let payload = vec![b'x'; rng.below(300)];
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("t/{i}"),
            packet_id: Some(u16::try_from(i + 2).unwrap()),
            properties: Properties::default(),
            payload: Bytes::from(payload),
        });
        encode_packet(&publish, v, &mut out).unwrap();
    }
    encode_packet(&Packet::PingReq, v, &mut out).unwrap();
    out.to_vec()
}

fn frame(out: &mut Vec<u8>, fin: bool, opcode: u8, payload: &[u8], rng: &mut Rng) {
    let mask = (rng.next() as u32).to_be_bytes();
    out.push(u8::from(fin) << 7 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Cuts the MQTT bytes into binary messages of random fragments, with pings in between.
fn frames(mqtt: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = mqtt;
    while !rest.is_empty() {
        let message = (1 + rng.below(400)).min(rest.len());
        let (mut msg, after) = rest.split_at(message);
        rest = after;
        let mut first = true;
        while !msg.is_empty() {
            let piece = (1 + rng.below(120)).min(msg.len());
            let (p, after) = msg.split_at(piece);
            msg = after;
            frame(
                &mut out,
                msg.is_empty(),
                if first { 0x2 } else { 0x0 },
                p,
                rng,
            );
            first = false;
            if rng.below(8) == 0 {
                frame(&mut out, true, 0x9, b"ping", rng);
            }
        }
    }
    out
}

/// Runs bytes through a broker connection; returns what it sent back.
fn broker_output(chunks: &[Vec<u8>]) -> Vec<u8> {
    let config = Config {
        sys_events: false,
        ..Config::default()
    };
    let mut broker = Broker::new(config, 1, Instant(0));
    let conn = ConnId(1);
    broker.handle_input(
        Instant(0),
        Input::Accepted {
            conn,
            peer: "127.0.0.1:1".into(),
        },
    );
    let mut sent = Vec::new();
    for chunk in chunks {
        broker.handle_input(
            Instant(1),
            Input::Received {
                conn,
                bytes: Bytes::copy_from_slice(chunk),
            },
        );
        while let Some(out) = broker.poll_output() {
            match out {
                Output::Transmit { bytes, .. } => {
                    sent.extend_from_slice(&bytes);
                    broker.handle_input(
                        Instant(1),
                        Input::Written {
                            conn,
                            bytes: bytes.len(),
                        },
                    );
                }
                Output::Close { .. } => panic!("closed"),
                _ => {}
            }
        }
    }
    sent
}

fn run(seed: u64) {
    let mut rng = Rng(seed);
    let mqtt = mqtt_stream(&mut rng);
    let wire = frames(&mqtt, &mut rng);
    // TCP: split and coalesce at random.
    let mut decoder = FrameDecoder::new(1024);
    let mut buf = BytesMut::new();
    let mut delivered: Vec<Vec<u8>> = Vec::new();
    let mut pings = 0;
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let n = (1 + rng.below(200)).min(rest.len());
        let (piece, after) = rest.split_at(n);
        rest = after;
        buf.extend_from_slice(piece);
        while let Some(f) = decoder.decode(&mut buf).unwrap() {
            match f {
                Frame::Data(bytes) => delivered.push(bytes.to_vec()),
                Frame::Ping(p) => {
                    assert_eq!(&p[..], b"ping");
                    pings += 1;
                }
                other => panic!("SIM_SEED={seed}: unexpected {other:?}"),
            }
        }
    }
    assert!(buf.is_empty(), "SIM_SEED={seed}: bytes left over");
    assert_eq!(
        delivered.concat(),
        mqtt,
        "SIM_SEED={seed}: MQTT bytes changed"
    );
    let _ = pings;
    // Delivery parity: the broker answers the same through frames as through plain TCP.
    let plain = broker_output(std::slice::from_ref(&mqtt));
    let framed = broker_output(&delivered);
    assert_eq!(framed, plain, "SIM_SEED={seed}: broker behaved differently");
    assert!(!plain.is_empty());
}

#[test]
fn s18_random_frame_splitting_and_coalescing_is_transparent() {
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return run(seed);
    }
    for seed in 0..seeds {
        run(seed);
    }
}

#[test]
fn s18_text_unmasked_and_reserved_frames_end_the_connection() {
    let mut rng = Rng(99);
    for (opcode, unmask, rsv, code) in [
        (0x1, false, false, 1003),
        (0x2, true, false, 1002),
        (0x2, false, true, 1002),
    ] {
        let mut wire = Vec::new();
        frame(&mut wire, true, 0x2, b"\x10", &mut rng);
        let mut bad = Vec::new();
        frame(&mut bad, true, opcode, b"abc", &mut rng);
        if unmask {
            bad[1] &= 0x7F;
        }
        if rsv {
            bad[0] |= 0x20;
        }
        wire.extend(bad);
        let mut decoder = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Frame::Data(Bytes::from_static(b"\x10")))
        );
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err.close_code(), code);
    }
}
