//! A hostile remote broker floods a bridge of the real `tidemq` binary: large QoS 0 messages for
//! a local subscriber that never reads, large retained QoS 1 messages, QoS 2 messages never
//! released, and a packet header past the maximum size, while the remote never reads what the
//! bridge sends it. The broker's RSS growth stays under 256 MiB and an honest client's CONNECT,
//! SUBSCRIBE and QoS 1 round trip stays under 2 s. Every loop and wait is bounded.
//!
//! `cargo test --release -p tidemq-runtime --test e2e_bridge_flood -- --nocapture` measures the
//! release binary and prints the figures.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use support::{Dir, free_port, rss_kib, start, wait_for};
use tidemq_core::codec::{
    ConnAck, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, Subscribe, SubscriptionOptions, decode_packet, encode_packet,
};

const V5: ProtocolVersion = ProtocolVersion::V5;
/// How long the remote floods at most.
const FLOOD_FOR: Duration = Duration::from_secs(30);

fn encode(packet: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    encode_packet(packet, V5, &mut out).unwrap();
    out
}

/// A small MQTT client on a blocking socket, with the core's codec.
struct Client {
    s: TcpStream,
    rx: BytesMut,
}

impl Client {
    fn connect(port: u16, id: &str) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut c = Client {
            s,
            rx: BytesMut::new(),
        };
        c.send(&connect_packet(id));
        match c.recv(Some(V5)) {
            Some(Packet::ConnAck(ack)) if ack.code == 0 => c,
            other => panic!("{id}: expected CONNACK 0, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) {
        self.s.write_all(&encode(packet)).unwrap();
    }

    /// The next packet; `None` at end of stream, on an error or after the read timeout.
    fn recv(&mut self, version: Option<ProtocolVersion>) -> Option<Packet> {
        let limits = DecodeLimits {
            max_packet_size: 1 << 24,
            max_user_properties: 64,
        };
        loop {
            if let Ok(Some(p)) = decode_packet(&mut self.rx, version, &limits) {
                return Some(p);
            }
            let mut buf = [0u8; 16 * 1024];
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
            }
        }
    }
}

fn connect_packet(id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: V5,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: id.to_owned(),
        will: None,
        username: None,
        password: None,
    }))
}

fn subscribe(filter: &str) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(
            filter.to_owned(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..SubscriptionOptions::default()
            },
        )],
    })
}

fn publish(topic: &str, qos: QoS, id: u16, retain: bool, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: Properties::default(),
        payload,
    })
}

/// An honest client's CONNECT, SUBSCRIBE and QoS 1 PUBLISH to itself, until the message is
/// back: how long it took (bounded by the client's read timeout).
fn honest_round_trip(port: u16, id: &str) -> Duration {
    let started = Instant::now();
    let mut honest = Client::connect(port, id);
    honest.send(&subscribe("honest/t"));
    assert!(matches!(honest.recv(Some(V5)), Some(Packet::SubAck(_))));
    honest.send(&publish(
        "honest/t",
        QoS::AtLeastOnce,
        900,
        false,
        Bytes::from_static(b"hi"),
    ));
    loop {
        match honest.recv(Some(V5)) {
            Some(Packet::Publish(p)) if p.topic == "honest/t" => return started.elapsed(),
            Some(_) => {}
            None => panic!("{id}: the message never came back"),
        }
    }
}

/// What the hostile remote did.
#[derive(Debug, Default)]
struct Flood {
    links: u32,
    messages: u64,
    bytes: u64,
}

/// Accepts the bridge's next link (bounded), answers its CONNECT and SUBSCRIBE, and from then
/// on never reads.
fn accept_link(listener: &TcpListener, until: Instant) -> Option<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    let s = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => return None,
        }
    };
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut link = Client {
        s,
        rx: BytesMut::new(),
    };
    match link.recv(None)? {
        Packet::Connect(c) => assert_eq!(c.version, V5),
        other => panic!("expected the bridge's CONNECT, got {other:?}"),
    }
    link.send(&Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode(0),
        properties: Properties::default(),
    }));
    let Some(Packet::Subscribe(s)) = link.recv(Some(V5)) else {
        return None;
    };
    link.send(&Packet::SubAck(SubAck {
        packet_id: s.packet_id,
        properties: Properties::default(),
        reasons: vec![ReasonCode(2); s.filters.len()],
    }));
    Some(link.s)
}

/// Writes one packet to the link; false once the broker has closed it.
fn write(s: &mut TcpStream, p: &Packet, flood: &mut Flood) -> bool {
    let bytes = encode(p);
    let ok = s.write_all(&bytes).is_ok();
    if ok {
        flood.messages += 1;
        flood.bytes += bytes.len() as u64;
    }
    ok
}

/// The hostile remote: per link, large QoS 0 and retained QoS 1 messages, then QoS 2 messages
/// it never releases (past the bridge's receive maximum), and on a last link a header past the
/// maximum packet size. Stops at `FLOOD_FOR` or when `stop` says so.
fn hostile_remote(
    listener: TcpListener,
    go: mpsc::Receiver<()>,
    stop: mpsc::Receiver<()>,
) -> Flood {
    let until = Instant::now() + FLOOD_FOR;
    let mut flood = Flood::default();
    let big = Bytes::from(vec![b'F'; 64 * 1024]);
    let mut first = true;
    for round in 0..4u32 {
        let Some(mut s) = accept_link(&listener, until) else {
            break;
        };
        flood.links += 1;
        if first {
            // The local subscriber that never reads is in place.
            let _ = go.recv_timeout(Duration::from_secs(10));
            first = false;
        }
        if round == 3 {
            // A PUBLISH header announcing 256 MiB: refused at its header.
            let _ = s.write_all(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
            let _ = s.write_all(&[0u8; 4096]);
            drain_until_closed(&mut s, until);
            break;
        }
        // 2,000 messages of 64 KiB (125 MiB) per link, half of them retained on topics of
        // their own.
        let mut open = true;
        for i in 0..2_000u32 {
            if Instant::now() > until || stop.try_recv().is_ok() {
                return flood;
            }
            let id = (i % 60_000 + 1) as u16;
            let p = if i % 2 == 0 {
                publish("in/big", QoS::AtMostOnce, 0, false, big.clone())
            } else {
                publish(
                    &format!("in/r/{round}/{i}"),
                    QoS::AtLeastOnce,
                    id,
                    true,
                    big.clone(),
                )
            };
            if !write(&mut s, &p, &mut flood) {
                open = false;
                break;
            }
        }
        // QoS 2 never released, past any receive maximum.
        for id in 1..=2_000u16 {
            if !open || Instant::now() > until {
                break;
            }
            let p = publish(
                "in/q2",
                QoS::ExactlyOnce,
                id,
                false,
                Bytes::from_static(b"q2"),
            );
            open = write(&mut s, &p, &mut flood);
        }
        // The broker closes the link; hanging up first would reset it and lose what is
        // still unread there.
        drain_until_closed(&mut s, until);
    }
    flood
}

/// Reads (and drops) what the broker sent until it closes the link, bounded.
fn drain_until_closed(s: &mut TcpStream, until: Instant) {
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < until + Duration::from_secs(5) {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_flooding_bridge_remote_stays_within_the_memory_budget() {
    let dir = Dir::new("bridge-flood");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let remote = listener.local_addr().unwrap().port();
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{port}\"\nbridges.mqtt.remote {{\n  server = \"mqtt-tcp://127.0.0.1:{remote}\"\n  proto_ver = 5\n  clientid = \"flood-bridge\"\n  keepalive = 60s\n  backoff_max = 2s\n  forwards = [{{ local_topic = \"up/#\" }}]\n  subscription = [{{ remote_topic = \"in/#\", local_topic = \"from/#\", qos = 2 }}]\n}}\n"
        ),
    )
    .unwrap();
    let (go_tx, go_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let remote = std::thread::spawn(move || hostile_remote(listener, go_rx, stop_rx));
    let broker = start(&conf, &dir.file("pid"), &dir.file("log"), port);
    let pid = broker.child.id();
    wait_for("the bridge", Duration::from_secs(20), || {
        broker.log().contains("bridge connected")
    });
    let before = rss_kib(pid);
    // A local subscriber of everything the remote sends, that never reads.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut out = encode(&connect_packet("silent"));
    out.extend_from_slice(&encode(&subscribe("from/#")));
    silent.write_all(&out).unwrap();
    let _ = go_tx.send(());

    let started = Instant::now();
    let (mut peak, mut worst, mut trips) = (before, Duration::ZERO, 0);
    while !remote.is_finished() && started.elapsed() < FLOOD_FOR + Duration::from_secs(5) {
        let rtt = honest_round_trip(port, &format!("honest-{trips}"));
        trips += 1;
        worst = worst.max(rtt);
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(300));
        peak = peak.max(rss_kib(pid));
    }
    let _ = stop_tx.send(());
    let flood = remote.join().unwrap();
    // One more once the flood is over, and the last figures.
    let rtt = honest_round_trip(port, "honest-after");
    worst = worst.max(rtt);
    peak = peak.max(rss_kib(pid));
    let grown = peak.saturating_sub(before);
    let log = broker.log();
    let cuts: Vec<&str> = log.lines().filter(|l| l.contains("bridge down")).collect();
    println!(
        "bridge flood: {} links, {} messages ({} MiB) sent by the remote; RSS {before} KiB \
         before, peak {peak} KiB, grew {grown} KiB; {trips} honest round trips, worst {worst:?}; \
         {} link cuts",
        flood.links,
        flood.messages,
        flood.bytes / (1024 * 1024),
        cuts.len()
    );
    for cut in &cuts {
        println!("  {cut}");
    }
    assert!(flood.messages > 1_000, "the remote flooded: {flood:?}");
    assert!(
        worst < Duration::from_secs(2),
        "honest round trip {worst:?}"
    );
    assert!(grown < 256 * 1024, "RSS grew {grown} KiB");
    assert!(
        log.contains("receive maximum") || log.contains("not reading"),
        "the QoS 2 flood or the unread acknowledgements cut the link"
    );
    assert!(
        log.contains("exceeds the maximum"),
        "the oversized header cut the link"
    );
    drop(silent);
    drop(broker);
}
