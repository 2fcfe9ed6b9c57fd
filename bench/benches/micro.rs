//! Micro-benchmarks of the hot paths, with a small timing loop of our own (no criterion):
//! PUBLISH encode and decode, subscription-trie matching with many filters, and the broker
//! routing one PUBLISH to 100 subscribers through `Broker::handle_input`.
//!
//! `cargo bench -p tidemq-bench [-- FILTER]`; with `MICRO_OPS=N`, N operations each, untimed
//! (for instruction counts under callgrind).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    self, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, PublishRef, QoS,
    Subscribe, SubscriptionOptions,
};
use tidemq_core::topic::SubscriptionTrie;
use tidemq_core::{Broker, Config, ConnId, Input, Instant as CoreInstant, Output};

const WARM_UP: Duration = Duration::from_millis(200);
const MEASURE: Duration = Duration::from_secs(1);

/// Runs `f` (which does some operations and returns how many) until [`MEASURE`] has passed,
/// after a warm-up, and prints the time per operation.
fn bench(filter: &Option<String>, name: &str, unit: &str, mut f: impl FnMut() -> u64) {
    if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
        return;
    }
    // MICRO_OPS=N: exactly N operations, untimed, for counting instructions under callgrind
    // (two counts' difference over their operations gives instructions per operation).
    if let Some(n) = std::env::var("MICRO_OPS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    {
        let mut ops = 0;
        while ops < n {
            ops += black_box(f());
        }
        println!("{name:<48} {ops:>10} {unit} (untimed)");
        return;
    }
    let warm = Instant::now();
    while warm.elapsed() < WARM_UP {
        black_box(f());
    }
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < MEASURE {
        ops += black_box(f());
    }
    let elapsed = start.elapsed();
    let ns = elapsed.as_nanos() as f64 / ops.max(1) as f64;
    println!(
        "{name:<48} {ns:>10.1} ns/{unit:<9} {:>8.2} M{unit}/s",
        1e3 / ns
    );
}

fn publish(payload: usize, qos: QoS) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: "sensors/site-17/device-4711/temperature".to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(4711),
        properties: Properties::default(),
        payload: Bytes::from(vec![0x5a; payload]),
    }
}

fn encoded(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    codec::encode_packet(packet, version, &mut out).unwrap();
    out.to_vec()
}

fn codec_benches(filter: &Option<String>) {
    for (payload, version) in [
        (16, ProtocolVersion::V311),
        (1024, ProtocolVersion::V311),
        (16, ProtocolVersion::V5),
    ] {
        let v = if version.is_v5() { "v5" } else { "v3.1.1" };
        let p = publish(payload, QoS::AtLeastOnce);
        let mut out = BytesMut::with_capacity(64 * 1024);
        bench(
            filter,
            &format!("codec: encode PUBLISH {payload} B {v}"),
            "msg",
            || {
                out.clear();
                for _ in 0..100 {
                    PublishRef::of(&p).encode(version, &mut out).unwrap();
                }
                100
            },
        );
        let one = encoded(&Packet::Publish(p.clone()), version);
        let many: Vec<u8> = one.repeat(100);
        let limits = DecodeLimits::default();
        let mut buf = BytesMut::with_capacity(many.len() * 2);
        bench(
            filter,
            &format!("codec: decode PUBLISH {payload} B {v}"),
            "msg",
            || {
                buf.extend_from_slice(&many);
                let mut n = 0;
                while let Some(packet) =
                    codec::decode_packet(&mut buf, Some(version), &limits).unwrap()
                {
                    black_box(&packet);
                    n += 1;
                }
                n
            },
        );
    }
}

fn trie_benches(filter: &Option<String>) {
    // 10,000 exact filters, 1,000 single-level and 100 multi-level wildcards.
    let mut trie: SubscriptionTrie<u64, u32> = SubscriptionTrie::default();
    let mut key = 0u64;
    for site in 0..100 {
        for device in 0..100 {
            trie.insert(
                &format!("sensors/site-{site}/device-{device}/temperature"),
                None,
                key,
                0,
            );
            key += 1;
        }
    }
    for device in 0..1000 {
        trie.insert(&format!("sensors/+/device-{device}/+"), None, key, 0);
        key += 1;
    }
    for site in 0..100 {
        trie.insert(&format!("sensors/site-{site}/#"), None, key, 0);
        key += 1;
    }
    let topics: Vec<String> = (0..1024)
        .map(|i| {
            format!(
                "sensors/site-{}/device-{}/temperature",
                i % 100,
                (i * 7) % 100
            )
        })
        .collect();
    let mut out = Vec::new();
    let mut matched = 0usize;
    bench(
        filter,
        &format!("trie: match among {} filters", trie.len()),
        "match",
        || {
            for t in &topics {
                out.clear();
                trie.matches(t, &mut out);
                matched += out.len();
            }
            topics.len() as u64
        },
    );
    black_box(matched);
}

/// A broker with `subscribers` clients on one topic and one publisher, all connected.
fn broker_with(subscribers: u64, qos: QoS) -> (Broker, ConnId) {
    let config = Config {
        sys_events: false,
        ..Config::default()
    };
    let mut broker = Broker::new(config, 7, CoreInstant(0));
    let now = CoreInstant(0);
    let connect = |id: &str| {
        Bytes::from(encoded(
            &Packet::Connect(Box::new(Connect {
                version: ProtocolVersion::V311,
                clean_start: true,
                keep_alive: 0,
                properties: Properties::default(),
                client_id: id.to_owned(),
                will: None,
                username: None,
                password: None,
            })),
            ProtocolVersion::V311,
        ))
    };
    let subscribe = Bytes::from(encoded(
        &Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "bench/fan-out".to_owned(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        }),
        ProtocolVersion::V311,
    ));
    for c in 0..=subscribers {
        let conn = ConnId(c);
        broker.handle_input(
            now,
            Input::Accepted {
                conn,
                peer: format!("127.0.0.1:{}", 10_000 + c),
            },
        );
        broker.handle_input(
            now,
            Input::Received {
                conn,
                bytes: connect(&format!("c{c}")),
            },
        );
        if c > 0 {
            broker.handle_input(
                now,
                Input::Received {
                    conn,
                    bytes: subscribe.clone(),
                },
            );
        }
    }
    while broker.poll_output().is_some() {}
    (broker, ConnId(0))
}

fn broker_benches(filter: &Option<String>) {
    const SUBSCRIBERS: u64 = 100;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let (mut broker, publisher) = broker_with(SUBSCRIBERS, qos);
        let mut p = publish(16, qos);
        p.topic = "bench/fan-out".to_owned();
        let bytes = Bytes::from(encoded(&Packet::Publish(p), ProtocolVersion::V311));
        let now = CoreInstant(0);
        let mut written = Vec::new();
        let mut acks = vec![Vec::new(); SUBSCRIBERS as usize + 1];
        bench(
            filter,
            &format!(
                "broker: 1 PUBLISH qos{} -> {SUBSCRIBERS} subscribers",
                qos as u8
            ),
            "publish",
            || {
                broker.handle_input(
                    now,
                    Input::Received {
                        conn: publisher,
                        bytes: bytes.clone(),
                    },
                );
                while let Some(out) = broker.poll_output() {
                    if let Output::Transmit { conn, bytes } = out {
                        if qos != QoS::AtMostOnce && conn != publisher {
                            // The subscriber acknowledges: PUBACK with the same packet id.
                            let id = &bytes[bytes.len() - 16 - 2..bytes.len() - 16];
                            acks[conn.0 as usize].extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
                        }
                        written.push((conn, bytes.len()));
                    }
                }
                // The runtime's writers report what they put on the wire.
                for (conn, n) in written.drain(..) {
                    broker.handle_input(now, Input::Written { conn, bytes: n });
                }
                for (c, ack) in acks.iter_mut().enumerate() {
                    if !ack.is_empty() {
                        let bytes = Bytes::from(std::mem::take(ack));
                        broker.handle_input(
                            now,
                            Input::Received {
                                conn: ConnId(c as u64),
                                bytes,
                            },
                        );
                    }
                }
                while broker.poll_output().is_some() {}
                1
            },
        );
        let stats = broker.stats();
        assert_eq!(
            stats.messages_dropped, 0,
            "the fan-out benchmark dropped messages"
        );
        assert!(stats.messages_sent >= stats.messages_received * SUBSCRIBERS);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument filters by name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    codec_benches(&filter);
    trie_benches(&filter);
    broker_benches(&filter);
}
