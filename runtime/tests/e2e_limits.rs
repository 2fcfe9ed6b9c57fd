//! The runtime's limits against the real `tidemq` binary and real sockets: connections over
//! the global and per-IP limits are refused at once, a WebSocket client that floods pings and
//! never reads cannot grow the broker, a subscriber that stops reading is cut by the write
//! stall timeout (also once the core has closed it), a client still writing after a protocol
//! error reads the DISCONNECT reason, and idle sockets cannot take the store's descriptors.
//!
//! Limits are set through the `TIDEMQ_*` environment variables the runtime reads until the
//! configuration carries them. Every wait is bounded.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use support::{Dir, Running, TIDEMQ, free_port, rss_kib, wait_for};
use tidemq_core::codec::{
    Ack, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, decode_packet, encode_packet,
};

/// Starts the broker on `conf` with `env` set, optionally under `ulimit -n`.
fn start_with(dir: &Dir, conf: &str, env: &[(&str, &str)], nofile: Option<u32>) -> Running {
    let conf_path = dir.file("tidemq.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let log = dir.file("log");
    let mut command = match nofile {
        Some(n) => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                TIDEMQ,
            ]);
            c
        }
        None => Command::new(TIDEMQ),
    };
    command
        .args(["start", "--conf"])
        .arg(&conf_path)
        .arg("--pid_file")
        .arg(dir.file("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text == "RUST_LOG"
            || key_text.starts_with("NANOMQ_")
            || key_text.starts_with("TIDEMQ_")
        {
            command.env_remove(&key);
        }
    }
    for (k, v) in env {
        command.env(k, v);
    }
    let child = command.spawn().unwrap();
    let running = Running { child, log };
    // Wait on the log, not with a probe connection: probes would take places under the limits.
    let listeners = conf.matches(".bind").count();
    wait_for("the broker to listen", Duration::from_secs(10), || {
        running.log().matches("listening").count() >= listeners
    });
    running
}

fn pid(running: &Running) -> u32 {
    running.child.id()
}

fn broker_running(running: &Running) -> bool {
    std::fs::metadata(format!("/proc/{}", pid(running))).is_ok()
        && !std::fs::read_to_string(format!("/proc/{}/stat", pid(running)))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Descriptors the broker has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A small MQTT client on a blocking socket, with the core's codec.
struct Client {
    s: TcpStream,
    rx: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    fn open(port: u16, version: ProtocolVersion) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Client {
            s,
            rx: BytesMut::new(),
            version,
        }
    }

    fn connect(port: u16, id: &str, version: ProtocolVersion) -> Client {
        let mut c = Client::open(port, version);
        c.send(&connect_packet(id, version));
        match c.recv() {
            Some(Packet::ConnAck(ack)) if ack.code == 0 => c,
            other => panic!("{id}: expected CONNACK 0, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode_packet(packet, self.version, &mut out).unwrap();
        self.s.write_all(&out).unwrap();
    }

    /// The next packet; `None` at end of stream, on an error or after the read timeout.
    fn recv(&mut self) -> Option<Packet> {
        let limits = DecodeLimits {
            max_packet_size: 1 << 24,
            max_user_properties: 64,
        };
        loop {
            if let Ok(Some(p)) = decode_packet(&mut self.rx, Some(self.version), &limits) {
                return Some(p);
            }
            let mut buf = [0u8; 16 * 1024];
            match self.s.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        }));
        assert!(matches!(self.recv(), Some(Packet::SubAck(_))));
    }
}

fn connect_packet(id: &str, version: ProtocolVersion) -> Packet {
    connect_session(id, version, true)
}

fn connect_session(id: &str, version: ProtocolVersion, clean_start: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        clean_start,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: id.to_owned(),
        will: None,
        username: None,
        password: None,
    }))
}

fn publish(topic: &str, qos: QoS, id: u16, payload: Bytes) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id: (qos != QoS::AtMostOnce).then_some(id),
        properties: Properties::default(),
        payload,
    })
}

/// An honest client's CONNECT, SUBSCRIBE and QoS 1 PUBLISH to itself, until the message is
/// back: how long it took (bounded by the client's read timeout).
fn honest_round_trip(port: u16, id: &str, version: ProtocolVersion) -> Duration {
    let started = Instant::now();
    let mut honest = Client::connect(port, id, version);
    honest.subscribe("honest/t", QoS::AtLeastOnce);
    honest.send(&publish(
        "honest/t",
        QoS::AtLeastOnce,
        900,
        Bytes::from_static(b"hi"),
    ));
    loop {
        match honest.recv() {
            Some(Packet::Publish(p)) if p.topic == "honest/t" => return started.elapsed(),
            Some(_) => {}
            None => panic!("{id}: the message never came back"),
        }
    }
}

/// True if the broker closes `s` without answering (bounded: 5 s).
fn refused(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut out = BytesMut::new();
    encode_packet(
        &connect_packet("refused", ProtocolVersion::V311),
        ProtocolVersion::V311,
        &mut out,
    )
    .unwrap();
    // The close may come before the CONNECT is written.
    let _ = s.write_all(&out);
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
        ),
        Ok(_) => false,
    }
}

/// A client connected from another loopback address (std cannot bind a client socket), kept
/// open until killed; prints the CONNACK's return code or `closed`.
fn connect_from(ip: &str, port: u16, id: &str) -> (Child, String) {
    let script = format!(
        "import socket,sys,time\n\
         s=socket.socket(); s.bind(('{ip}',0)); s.connect(('127.0.0.1',{port}))\n\
         cid=b'{id}'\n\
         body=b'\\x00\\x04MQTT\\x04\\x02\\x00\\x3c'+len(cid).to_bytes(2,'big')+cid\n\
         s.sendall(bytes([0x10,len(body)])+body)\n\
         s.settimeout(5)\n\
         try:\n  d=s.recv(4)\nexcept OSError:\n  d=b''\n\
         print(d[3] if len(d)==4 else 'closed', flush=True)\n\
         time.sleep(30)\n"
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    (child, String::from_utf8_lossy(&line).into_owned())
}

#[test]
fn connections_over_the_global_and_per_ip_limits_are_refused_at_once() {
    let dir = Dir::new("limits-refuse");
    let port = free_port();
    let broker = start_with(
        &dir,
        &format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\nlog.level = info\n"),
        &[
            ("TIDEMQ_MAX_CONNECTIONS", "5"),
            ("TIDEMQ_MAX_CONNECTIONS_PER_IP", "3"),
        ],
        None,
    );
    let v = ProtocolVersion::V311;
    let mut local: Vec<Client> = (0..3)
        .map(|i| Client::connect(port, &format!("local-{i}"), v))
        .collect();
    // The fourth from 127.0.0.1 is over the per-IP limit, however often it tries.
    for _ in 0..10 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(
            refused(s),
            "a fourth connection from one address must be refused"
        );
    }
    // Another address still gets in, up to the global limit of 5.
    let (mut a, code_a) = connect_from("127.0.0.2", port, "other-a");
    let (mut b, code_b) = connect_from("127.0.0.2", port, "other-b");
    assert_eq!((code_a.as_str(), code_b.as_str()), ("0", "0"));
    let (mut c, code_c) = connect_from("127.0.0.3", port, "other-c");
    assert_eq!(
        code_c, "closed",
        "a sixth connection is over the global limit"
    );
    for child in [&mut a, &mut b, &mut c] {
        let _ = child.kill();
        let _ = child.wait();
    }
    // A closed connection gives its place back.
    local.pop();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut back = None;
    while back.is_none() && Instant::now() < deadline {
        let mut c = Client::open(port, v);
        c.send(&connect_packet("local-again", v));
        if let Some(Packet::ConnAck(ack)) = c.recv() {
            assert_eq!(ack.code, 0);
            back = Some(c);
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert!(
        back.is_some(),
        "the place of a closed connection was not freed"
    );
    // Eleven refusals, one log line (the rest wait for the next interval).
    let log = broker.log();
    assert_eq!(
        log.matches("connections refused").count(),
        1,
        "refusals are logged once per interval:\n{log}"
    );
    drop(local);
}

/// A raw WebSocket client: handshake, then masked frames.
fn ws_connect(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    s
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn websocket_ping_flood_from_a_client_that_never_reads_stays_bounded() {
    let dir = Dir::new("limits-ping-flood");
    let (port, ws) = (free_port(), free_port());
    let broker = start_with(
        &dir,
        &format!(
            "listeners.tcp.bind = \"127.0.0.1:{port}\"\nlisteners.ws.bind = \"127.0.0.1:{ws}/mqtt\"\n"
        ),
        &[],
        None,
    );
    let pid = pid(&broker);
    let mut flood = ws_connect(ws);
    let mut connect = BytesMut::new();
    encode_packet(
        &connect_packet("flooder", ProtocolVersion::V311),
        ProtocolVersion::V311,
        &mut connect,
    )
    .unwrap();
    flood.write_all(&masked(0x2, &connect)).unwrap();
    let before = rss_kib(pid);
    // 125-byte pings, 8 MiB at a time, never reading a pong: up to 128 MiB or 20 s, until the
    // socket blocks (its buffers full) for good or the broker cuts it.
    let flooder = std::thread::spawn(move || {
        let ping = masked(0x9, &[0x5a; 125]);
        let burst: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 64_000)
            .collect();
        flood
            .set_write_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let started = Instant::now();
        let mut sent = 0usize;
        while sent < 128 << 20 && started.elapsed() < Duration::from_secs(20) {
            match flood.write(&burst) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        (sent, flood)
    });
    // Meanwhile an honest client's round trip: CONNECT, SUBSCRIBE, QoS 1 PUBLISH to itself.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut honest = Client::connect(port, "honest", ProtocolVersion::V311);
    honest.subscribe("honest/t", QoS::AtLeastOnce);
    honest.send(&publish(
        "honest/t",
        QoS::AtLeastOnce,
        7,
        Bytes::from_static(b"hi"),
    ));
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match honest.recv() {
            Some(Packet::PubAck(a)) if a.packet_id == 7 => acked = true,
            Some(Packet::Publish(p)) => {
                delivered = true;
                honest.send(&Packet::PubAck(Ack {
                    packet_id: p.packet_id.unwrap(),
                    reason: ReasonCode(0),
                    properties: Properties::default(),
                }));
            }
            Some(_) => {}
            None => panic!("the honest client lost its connection during the flood"),
        }
    }
    let round_trip = started.elapsed();
    let (sent, _flood) = flooder.join().unwrap();
    let after = rss_kib(pid);
    assert!(
        sent > 16 << 20,
        "the flood should have got well into the broker: {sent} bytes"
    );
    let growth = after.saturating_sub(before);
    assert!(
        growth < 16 * 1024,
        "RSS grew {growth} KiB ({before} -> {after}) for {} MiB of pings",
        sent >> 20
    );
    assert!(
        round_trip < Duration::from_secs(2),
        "honest round trip took {round_trip:?} during the flood"
    );
    println!(
        "websocket ping flood: {} MiB of pings never read; honest round trip {round_trip:?}; RSS grew {growth} KiB",
        sent >> 20
    );
}

#[test]
fn subscriber_that_stops_reading_is_cut_by_the_write_stall_timeout() {
    let dir = Dir::new("limits-stall");
    let port = free_port();
    let broker = start_with(
        &dir,
        &format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\n"),
        &[("TIDEMQ_WRITE_STALL_TIMEOUT", "1s")],
        None,
    );
    let pid = pid(&broker);
    let v = ProtocolVersion::V311;
    let mut publisher = Client::connect(port, "stall-pub", v);
    let baseline = open_fds(pid);
    // One that never reads, and one the core closes (a takeover) while its bytes cannot go.
    let mut stuck = Client::connect(port, "stall-open", v);
    stuck.subscribe("big/#", QoS::AtMostOnce);
    let mut closed = Client::connect(port, "stall-closed", v);
    closed.subscribe("big/#", QoS::AtMostOnce);
    assert_eq!(open_fds(pid), baseline + 2);
    let payload = Bytes::from(vec![0u8; 512 * 1024]);
    for i in 0..64 {
        publisher.send(&publish("big/x", QoS::AtMostOnce, i, payload.clone()));
    }
    // The publisher's connection still works (its PINGREQ is answered).
    publisher.send(&Packet::PingReq);
    assert!(matches!(publisher.recv(), Some(Packet::PingResp)));
    let _taker = Client::connect(port, "stall-closed", v);
    // Both sockets are dropped once they made no progress for the stall timeout: back to the
    // publisher's and the new client's descriptors.
    wait_for(
        "both stalled sockets to be dropped",
        Duration::from_secs(10),
        || open_fds(pid) == baseline + 1,
    );
    wait_for("the cut to be logged", Duration::from_secs(5), || {
        broker.log().contains("connections cut")
    });
    // The cut one sees its connection end once it reads what it was sent.
    stuck
        .s
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    let ended = loop {
        match stuck.s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => total += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                break false;
            }
            Err(_) => break true,
        }
        assert!(total < 64 << 20, "more bytes than were published");
    };
    assert!(ended, "the stalled subscriber's connection did not end");
    drop(closed);
}

#[test]
fn client_still_writing_after_a_protocol_error_reads_the_disconnect_reason() {
    let dir = Dir::new("limits-linger");
    let port = free_port();
    let _broker = start_with(
        &dir,
        &format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\n"),
        &[],
        None,
    );
    let v = ProtocolVersion::V5;
    let mut c = Client::connect(port, "linger", v);
    c.s.set_nonblocking(true).unwrap();
    // A second CONNECT is a protocol error (DISCONNECT 0x82); the client goes on writing, as
    // a client with a queue of publishes does, looks for input between writes, and gives up
    // at the first failed write (a broken pipe), as such clients do.
    let mut second = BytesMut::new();
    encode_packet(&connect_packet("linger", v), v, &mut second).unwrap();
    // With more bytes behind it than the broker reads at once: closing the socket on them
    // unread would reset the connection.
    second.extend_from_slice(&[0x30u8; 32 * 1024]);
    c.s.set_nonblocking(false).unwrap();
    c.s.write_all(&second).unwrap();
    c.s.set_nonblocking(true).unwrap();
    let junk = vec![0x30u8; 4096];
    let limits = DecodeLimits {
        max_packet_size: 1 << 20,
        max_user_properties: 64,
    };
    let mut reason = None;
    let mut write_error = None;
    let mut sent = second.len();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        // Some work, then the next batch of writes, then a look at what came in.
        std::thread::sleep(Duration::from_millis(2));
        for _ in 0..2 {
            match c.s.write(&junk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => {
                    write_error = Some(e);
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        if write_error.is_some() {
            break;
        }
        let mut buf = [0u8; 256];
        match c.s.read(&mut buf) {
            Ok(n) if n > 0 => {
                c.rx.extend_from_slice(&buf[..n]);
                if let Ok(Some(Packet::Disconnect(d))) = decode_packet(&mut c.rx, Some(v), &limits)
                {
                    reason = Some(d.reason);
                    break;
                }
            }
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }
    assert_eq!(
        reason,
        Some(ReasonCode(0x82)),
        "expected DISCONNECT 0x82 before any error; wrote {sent} bytes, error {write_error:?}"
    );
}

#[test]
fn idle_sockets_cannot_take_the_descriptors_the_store_needs() {
    let dir = Dir::new("limits-fds");
    let port = free_port();
    let data = dir.file("data");
    let broker = start_with(
        &dir,
        &format!(
            "listeners.tcp.bind = \"127.0.0.1:{port}\"\n\
             mqtt.connect_timeout = 60s\n\
             persistence {{\n  data_dir = \"{}\"\n  sync = os\n  segment_size = 64KB\n  snapshot_threshold = 128KB\n}}\n",
            data.display()
        ),
        &[],
        Some(160),
    );
    let pid = pid(&broker);
    let v = ProtocolVersion::V311;
    // A persistent subscriber and a publisher first.
    let mut sub = Client::open(port, v);
    sub.send(&connect_session("fd-sub", v, false));
    assert!(matches!(sub.recv(), Some(Packet::ConnAck(a)) if a.code == 0));
    sub.subscribe("fd/#", QoS::AtLeastOnce);
    let mut publisher = Client::connect(port, "fd-pub", v);
    // Then idle sockets until the broker refuses them: far more than the descriptors allow.
    let mut idle = Vec::new();
    let mut refusals = 0;
    for _ in 0..300 {
        let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
            refusals += 1;
            continue;
        };
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut probe = [0u8; 1];
        match (&s).read(&mut probe) {
            // Closed at once: refused.
            Ok(0) => refusals += 1,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                idle.push(s)
            }
            _ => refusals += 1,
        }
    }
    assert!(refusals > 0, "the broker never refused a connection");
    assert!(!idle.is_empty());
    let held = open_fds(pid);
    assert!(held < 160, "{held} descriptors open, limit 160");
    // Now the store rotates segments and takes snapshots: 400 KiB of QoS 1 messages to a
    // persistent session, every one acknowledged.
    let payload = Bytes::from(vec![7u8; 1024]);
    for i in 1..=400u16 {
        publisher.send(&publish("fd/x", QoS::AtLeastOnce, i, payload.clone()));
        match publisher.recv() {
            Some(Packet::PubAck(a)) if a.packet_id == i => {}
            other => panic!(
                "message {i}: expected PUBACK, got {other:?}\n{}",
                broker.log()
            ),
        }
    }
    let mut got = 0;
    while got < 400 {
        match sub.recv() {
            Some(Packet::Publish(p)) => {
                got += 1;
                sub.send(&Packet::PubAck(Ack {
                    packet_id: p.packet_id.unwrap(),
                    reason: ReasonCode(0),
                    properties: Properties::default(),
                }));
            }
            Some(_) => {}
            None => panic!("subscriber lost after {got} messages\n{}", broker.log()),
        }
    }
    let log = broker.log();
    assert!(!log.contains("store failed"), "{log}");
    assert!(broker_running(&broker), "{log}");
    assert!(log.contains("connections refused"), "{log}");
    let segments = std::fs::read_dir(Path::new(&data)).unwrap().count();
    assert!(segments >= 1);
    // Free the idle sockets: new clients get in again.
    drop(idle);
    wait_for("a new client to get in", Duration::from_secs(5), || {
        let mut c = Client::open(port, v);
        c.send(&connect_packet("fd-late", v));
        matches!(c.recv(), Some(Packet::ConnAck(a)) if a.code == 0)
    });
}

/// One SUBSCRIBE of as many copies of `#` as a packet holds, from a client with a stored
/// session that never reads, with 200 retained messages: the copies are one subscription, so
/// the retained messages are queued once, the journal gets one record, an honest client's
/// round trip stays quick, the broker's memory barely moves, and a kill -9 leaves a journal
/// that starts.
#[test]
fn a_subscribe_of_many_identical_filters_stays_bounded_and_the_journal_restarts() {
    let dir = Dir::new("limits-filters");
    let port = free_port();
    let data = dir.file("data");
    let conf = format!(
        "listeners.tcp.bind = \"127.0.0.1:{port}\"\nmqtt.max_packet_size = 1MB\n\
         persistence {{\n  data_dir = \"{}\"\n  sync = os\n}}\n",
        data.display()
    );
    let mut broker = start_with(&dir, &conf, &[], None);
    let pid = pid(&broker);
    let v = ProtocolVersion::V311;
    let mut publisher = Client::connect(port, "filters-pub", v);
    for i in 0..200 {
        let mut p = publish(
            &format!("kept/{i}"),
            QoS::AtLeastOnce,
            i + 1,
            Bytes::from(vec![7u8; 1024]),
        );
        if let Packet::Publish(p) = &mut p {
            p.retain = true;
        }
        publisher.send(&p);
        assert!(matches!(publisher.recv(), Some(Packet::PubAck(_))));
    }
    let before = rss_kib(pid);
    let mut attacker = Client::open(port, v);
    attacker.send(&connect_session("filters-attacker", v, false));
    assert!(matches!(attacker.recv(), Some(Packet::ConnAck(_))));
    // "#" costs 4 bytes: 2 of length, 1 of filter, 1 of options.
    let copies = (1_000_000 - 16) / 4;
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..SubscriptionOptions::default()
    };
    attacker.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("#".to_owned(), options); copies],
    }));
    // The attacker never reads again. An honest client's round trip:
    let round_trip = honest_round_trip(port, "filters-honest", v);
    let grown = rss_kib(pid).saturating_sub(before);
    println!("{copies} copies of #: honest round trip {round_trip:?}, RSS grew {grown} KiB");
    assert!(round_trip < Duration::from_secs(2), "{round_trip:?}");
    assert!(grown < 256 * 1024, "RSS grew {grown} KiB");
    // Killed mid-flight, the journal restarts.
    broker.child.kill().unwrap();
    broker.child.wait().unwrap();
    drop(broker);
    let restarted = start_with(&dir, &conf, &[], None);
    let mut again = Client::connect(port, "filters-after", v);
    again.subscribe("kept/199", QoS::AtLeastOnce);
    assert!(
        matches!(again.recv(), Some(Packet::Publish(p)) if p.topic == "kept/199"),
        "retained messages survive the restart"
    );
    drop(restarted);
}

/// A retained flood past `max_memory`'s high mark (defaults: 128MB), then 100 subscribers of
/// those retained messages that never read: the flood is told 0x97 once the retained store
/// reaches three quarters of the budget, the non-readers hold at most 64 KiB and a packet each,
/// and an honest client still connects, subscribes and gets a QoS 1 message within 2 s.
#[test]
fn a_retained_flood_and_non_reading_subscribers_stay_within_the_memory_budget() {
    let dir = Dir::new("limits-memory");
    let port = free_port();
    let conf = format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\n");
    let broker = start_with(&dir, &conf, &[], None);
    let pid = pid(&broker);
    let before = rss_kib(pid);
    let v5 = ProtocolVersion::V5;
    let mut flooder = Client::connect(port, "memory-flooder", v5);
    let payload = Bytes::from(vec![b'X'; 64 * 1024]);
    let (mut kept, mut refused) = (0u32, 0u32);
    // 2,400 messages of 64 KiB: 150 MiB offered.
    for i in 0..2_400u32 {
        let id = (i % 60_000 + 1) as u16;
        let mut p = publish(&format!("flood/{i}"), QoS::AtLeastOnce, id, payload.clone());
        if let Packet::Publish(p) = &mut p {
            p.retain = true;
        }
        flooder.send(&p);
        match flooder.recv() {
            Some(Packet::PubAck(a)) if a.reason == ReasonCode(0) => kept += 1,
            Some(Packet::PubAck(a)) if a.reason == ReasonCode(0x97) => refused += 1,
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(refused > 0, "nothing refused after {kept} kept");
    assert!(
        u64::from(kept) * 64 < 100 * 1024,
        "{kept} retained messages of 64 KiB kept: more than the budget's high mark"
    );
    // 100 subscribers of all of them that never read.
    let mut silent = Vec::new();
    for n in 0..100 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut out = BytesMut::new();
        encode_packet(&connect_packet(&format!("silent-{n}"), v5), v5, &mut out).unwrap();
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("flood/#".to_owned(), SubscriptionOptions::default())],
        });
        encode_packet(&subscribe, v5, &mut out).unwrap();
        s.write_all(&out).unwrap();
        silent.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let round_trip = honest_round_trip(port, "memory-honest", v5);
    let grown = rss_kib(pid).saturating_sub(before);
    println!(
        "retained flood: {kept} kept, {refused} refused; 100 non-readers; honest round trip \
         {round_trip:?}; RSS grew {grown} KiB"
    );
    assert!(round_trip < Duration::from_secs(2), "{round_trip:?}");
    assert!(grown < 256 * 1024, "RSS grew {grown} KiB");
    drop(silent);
    drop(broker);
}

/// A session flood: 10,000 anonymous clients each leave a persistent session behind. Each is
/// counted against `max_memory` (at the budget, offline sessions nearest their end make room),
/// so the broker stays small and an honest client's round trip stays short.
#[test]
fn a_session_flood_stays_within_the_memory_budget() {
    let dir = Dir::new("limits-sessions");
    let port = free_port();
    let conf = format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\n");
    let broker = start_with(&dir, &conf, &[], None);
    let pid = pid(&broker);
    let before = rss_kib(pid);
    let v = ProtocolVersion::V311;
    let mut out = BytesMut::new();
    let mut sent = 0;
    for n in 0..10_000 {
        // One connection per session, CONNECT (clean session 0) then DISCONNECT, unread.
        out.clear();
        encode_packet(
            &connect_session(&format!("flood-{n}"), v, false),
            v,
            &mut out,
        )
        .unwrap();
        encode_packet(&Packet::Disconnect(Default::default()), v, &mut out).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&out).unwrap();
        sent += 1;
        drop(s);
    }
    let round_trip = honest_round_trip(port, "sessions-honest", v);
    let grown = rss_kib(pid).saturating_sub(before);
    println!("{sent} sessions left behind; honest round trip {round_trip:?}; RSS grew {grown} KiB");
    assert!(round_trip < Duration::from_secs(2), "{round_trip:?}");
    assert!(grown < 256 * 1024, "RSS grew {grown} KiB");
    drop(broker);
}
