#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The real runtime (driver, connection tasks, admin HTTP server) on turmoil's simulated
//! network: hosts, held and released links, partitions, all from one seed. Clients speak MQTT
//! with the core's codec. What the pure simulation cannot see: the driver's plumbing.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidemq_core::Config;
use tidemq_core::codec::{
    Ack, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    Subscribe, SubscriptionOptions, decode_packet, encode_packet,
};
use tidemq_runtime::Server;
use tidemq_runtime::net::{BoxFuture, BoxStream, Listener, Network};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct TurmoilNet;

struct TurmoilListener(turmoil::net::TcpListener);

impl Listener for TurmoilListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (stream, peer) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxStream, peer))
        })
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Network for TurmoilNet {
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TurmoilListener(listener)) as Box<dyn Listener>)
        })
    }
    fn connect(&self, target: String) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(target.as_str()).await?;
            Ok(Box::new(stream) as BoxStream)
        })
    }
}

fn broker_config() -> Config {
    let mut config = Config {
        url: "nmq-tcp://0.0.0.0:1883".to_owned(),
        // $SYS timestamps come from the host's wall clock; keep them out of the trace.
        sys_events: false,
        ..Config::default()
    };
    config.http_server.enable = true;
    // The simulated clients are other hosts.
    config.http_server.ip_addr = "0.0.0.0".to_owned();
    config.http_server.port = 8081;
    config
}

/// An MQTT client over a turmoil stream, using the core's codec.
struct Client {
    stream: turmoil::net::TcpStream,
    rx: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    async fn connect(id: &str, clean_start: bool) -> Client {
        Client::try_connect(id, clean_start).await.unwrap()
    }

    async fn try_connect(id: &str, clean_start: bool) -> io::Result<Client> {
        let stream = turmoil::net::TcpStream::connect(("broker", 1883)).await?;
        let mut c = Client {
            stream,
            rx: BytesMut::new(),
            version: ProtocolVersion::V5,
        };
        let properties = Properties {
            session_expiry_interval: Some(600),
            ..Properties::default()
        };
        c.try_send(&Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V5,
            clean_start,
            keep_alive: 60,
            properties,
            client_id: id.to_owned(),
            will: None,
            username: None,
            password: None,
        })))
        .await?;
        match c.try_recv().await {
            Some(Packet::ConnAck(ack)) if ack.code.0 == 0 => Ok(c),
            other => Err(io::Error::other(format!("expected CONNACK, got {other:?}"))),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode_packet(packet, self.version, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet, or `None` when the connection broke.
    async fn try_recv(&mut self) -> Option<Packet> {
        let limits = DecodeLimits {
            max_packet_size: 1 << 20,
            max_user_properties: 64,
        };
        loop {
            if let Ok(Some(p)) = decode_packet(&mut self.rx, Some(self.version), &limits) {
                return Some(p);
            }
            match self.stream.read_buf(&mut self.rx).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        }
    }

    async fn try_send(&mut self, packet: &Packet) -> io::Result<()> {
        let mut out = BytesMut::new();
        encode_packet(packet, self.version, &mut out)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.stream.write_all(&out).await
    }

    async fn recv(&mut self) -> Packet {
        let limits = DecodeLimits {
            max_packet_size: 1 << 20,
            max_user_properties: 64,
        };
        loop {
            if let Some(p) = decode_packet(&mut self.rx, Some(self.version), &limits).unwrap() {
                return p;
            }
            let n = self.stream.read_buf(&mut self.rx).await.unwrap();
            assert!(n > 0, "connection closed by the broker");
        }
    }
}

fn publish(topic: &str, payload: String, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: topic.to_owned(),
        packet_id: Some(id),
        properties: Properties::default(),
        payload: Bytes::from(payload),
    })
}

const MESSAGES: u16 = 40;

/// One seeded run: a QoS 1 subscriber whose link to the broker is held for a while, a
/// publisher, and an admin client asking req 2 over HTTP. Returns what the subscriber saw,
/// with simulated arrival times, and the admin reply.
fn run(seed: u64) -> (Vec<(u128, String)>, String) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .enable_random_order()
        .build();
    sim.host("broker", move || async move {
        let server = Server::bind_on(Arc::new(TurmoilNet), broker_config(), seed).await?;
        server.run(std::future::pending()).await?;
        Ok(())
    });
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let admin_reply = Arc::new(std::sync::Mutex::new(String::new()));

    let seen_sub = seen.clone();
    sim.client("sub", async move {
        let mut c = Client::connect("sub", true).await;
        c.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                "t/#".to_owned(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            )],
        }))
        .await;
        assert!(matches!(c.recv().await, Packet::SubAck(_)));
        let mut got = 0;
        while got < MESSAGES {
            if let Packet::Publish(p) = c.recv().await {
                if !p.dup {
                    got += 1;
                }
                let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
                seen_sub
                    .lock()
                    .unwrap()
                    .push((at, String::from_utf8_lossy(&p.payload).into_owned()));
                let id = p.packet_id.unwrap();
                c.send(&Packet::PubAck(Ack {
                    packet_id: id,
                    reason: ReasonCode(0),
                    properties: Properties::default(),
                }))
                .await;
            }
        }
        // Stay connected while the admin client looks.
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(c);
        Ok(())
    });

    sim.client("pub", async move {
        // Let the subscriber subscribe first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut c = Client::connect("pub", true).await;
        for i in 1..=MESSAGES {
            if i == 10 {
                // The subscriber's link stalls: everything between it and the broker waits.
                turmoil::hold("sub", "broker");
            }
            if i == 30 {
                turmoil::release("sub", "broker");
            }
            c.send(&publish("t/seq", format!("m{i:03}"), i)).await;
            assert!(matches!(c.recv().await, Packet::PubAck(a) if a.packet_id == i));
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(c);
        Ok(())
    });

    let reply = admin_reply.clone();
    sim.client("admin", async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut s = turmoil::net::TcpStream::connect(("broker", 8081)).await.unwrap();
        let body = r#"{"req":2,"seq":7}"#;
        let request = format!(
            "POST /api/v1 HTTP/1.1\r\nHost: broker\r\nAuthorization: Basic YWRtaW46cHVibGlj\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        *reply.lock().unwrap() = text;
        Ok(())
    });

    sim.run().unwrap();
    let seen = seen.lock().unwrap().clone();
    let reply = admin_reply.lock().unwrap().clone();
    (seen, reply)
}

#[test]
fn held_link_delays_but_loses_nothing_and_admin_answers_over_http() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let (seen, reply) = run(seed);
    let first: Vec<&str> = seen.iter().map(|(_, m)| m.as_str()).collect();
    let expected: Vec<String> = (1..=MESSAGES).map(|i| format!("m{i:03}")).collect();
    assert_eq!(
        first, expected,
        "SIM_SEED={seed}: every QoS 1 message, in order, once"
    );
    // m010..m029 were held on the subscriber's link and arrive together at the release.
    let held: Vec<u128> = seen[9..29].iter().map(|(at, _)| *at).collect();
    assert!(
        held.iter().all(|at| *at == held[0]),
        "SIM_SEED={seed}: {seen:?}"
    );
    assert!(held[0] > seen[8].0, "SIM_SEED={seed}: {seen:?}");
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "SIM_SEED={seed}: {reply}"
    );
    let body = reply.rsplit("\r\n\r\n").next().unwrap();
    let json: serde_json_probe::Value = serde_json_probe::parse(body);
    assert_eq!(json.code, 0, "SIM_SEED={seed}: {body}");
    assert_eq!(json.seq, 7);
    assert_eq!(
        json.client_size, 2,
        "SIM_SEED={seed}: sub and pub are connected: {body}"
    );
    assert_eq!(
        json.message_in,
        i64::from(MESSAGES),
        "SIM_SEED={seed}: {body}"
    );
    assert_eq!(
        json.message_out,
        i64::from(MESSAGES),
        "SIM_SEED={seed}: {body}"
    );
}

#[test]
fn same_seed_gives_the_same_run() {
    for seed in [1, 2, 3] {
        let a = run(seed);
        let b = run(seed);
        // The HTTP date header is wall-clock time; compare the body only.
        let body = |r: &str| r.rsplit("\r\n\r\n").next().unwrap_or_default().to_owned();
        assert_eq!(
            a.0, b.0,
            "SIM_SEED={seed}: deliveries and their times differ"
        );
        assert_eq!(
            body(&a.1),
            body(&b.1),
            "SIM_SEED={seed}: admin replies differ"
        );
    }
}

/// The few fields of the req 2 reply this test reads (no JSON crate needed here).
mod serde_json_probe {
    pub struct Value {
        pub code: i64,
        pub seq: i64,
        pub client_size: i64,
        pub message_in: i64,
        pub message_out: i64,
    }

    fn number(body: &str, key: &str) -> i64 {
        let at = body
            .find(&format!("\"{key}\":"))
            .unwrap_or_else(|| panic!("no {key} in {body}"));
        body[at + key.len() + 3..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect::<String>()
            .parse()
            .unwrap()
    }

    pub fn parse(body: &str) -> Value {
        Value {
            code: number(body, "code"),
            seq: number(body, "seq"),
            client_size: number(body, "client_size"),
            message_in: number(body, "message_in"),
            message_out: number(body, "message_out"),
        }
    }
}

/// A persistent subscriber partitioned from the broker: its connection breaks, it comes back
/// with the same session after the repair, and gets every QoS 1 message (DUP resends allowed).
fn run_partitioned(seed: u64) -> Vec<String> {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(120))
        .build();
    sim.host("broker", move || async move {
        let server = Server::bind_on(Arc::new(TurmoilNet), broker_config(), seed).await?;
        server.run(std::future::pending()).await?;
        Ok(())
    });
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen_sub = seen.clone();
    sim.client("sub", async move {
        let mut first = true;
        loop {
            let mut c = match tokio::time::timeout(
                Duration::from_secs(2),
                Client::try_connect("sub", first),
            )
            .await
            {
                Ok(Ok(c)) => c,
                _ => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if first {
                c.send(&Packet::Subscribe(Subscribe {
                    packet_id: 1,
                    properties: Properties::default(),
                    filters: vec![(
                        "t/#".to_owned(),
                        SubscriptionOptions {
                            qos: QoS::AtLeastOnce,
                            ..SubscriptionOptions::default()
                        },
                    )],
                }))
                .await;
                first = false;
            }
            // Read until the link breaks or everything is in; a silent link counts as broken.
            loop {
                let packet = tokio::time::timeout(Duration::from_secs(3), c.try_recv()).await;
                let Ok(Some(packet)) = packet else { break };
                if let Packet::Publish(p) = packet {
                    let text = String::from_utf8_lossy(&p.payload).into_owned();
                    let done = {
                        let mut seen = seen_sub.lock().unwrap();
                        if !seen.contains(&text) {
                            seen.push(text);
                        }
                        seen.len() == usize::from(MESSAGES)
                    };
                    let ack = Packet::PubAck(Ack {
                        packet_id: p.packet_id.unwrap(),
                        reason: ReasonCode(0),
                        properties: Properties::default(),
                    });
                    if c.try_send(&ack).await.is_err() {
                        break;
                    }
                    if done {
                        return Ok(());
                    }
                }
            }
        }
    });
    sim.client("pub", async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut c = Client::connect("pub", true).await;
        for i in 1..=MESSAGES {
            if i == 10 {
                turmoil::partition("sub", "broker");
            }
            if i == 30 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                turmoil::repair("sub", "broker");
            }
            c.send(&publish("t/seq", format!("m{i:03}"), i)).await;
            assert!(matches!(c.recv().await, Packet::PubAck(a) if a.packet_id == i));
        }
        Ok(())
    });
    sim.run().unwrap();
    seen.lock().unwrap().clone()
}

#[test]
fn partitioned_persistent_subscriber_gets_every_qos1_message_after_repair() {
    for seed in [11, 12] {
        let got = run_partitioned(seed);
        let expected: Vec<String> = (1..=MESSAGES).map(|i| format!("m{i:03}")).collect();
        assert_eq!(got, expected, "SIM_SEED={seed}");
    }
}

/// Adversaries against the real runtime, all at once: 200 sockets that never send CONNECT,
/// a storm of connections opened and closed, 40 admin sockets that send a head and then a
/// body a byte at a time, a client that floods PINGREQ, and a retained flood well past a
/// small memory budget. Meanwhile an honest client's CONNECT/SUBSCRIBE/QoS 1 round trip
/// stays under 2 s (simulated time), the admin API answers a real request, and the memory
/// the core counts stays within `accounting_bound` (read from `/metrics`).
fn run_adversaries(seed: u64, broker_budget: u64) -> (Vec<u128>, String, String) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(60))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .build();
    let mut config = adversaries_config();
    config.max_memory = broker_budget;
    sim.host("broker", move || {
        let config = config.clone();
        async move {
            let server = Server::bind_on(Arc::new(TurmoilNet), config, seed).await?;
            server.run(std::future::pending()).await?;
            Ok(())
        }
    });
    let round_trips = Arc::new(std::sync::Mutex::new(Vec::new()));
    let admin_reply = Arc::new(std::sync::Mutex::new(String::new()));
    let metrics = Arc::new(std::sync::Mutex::new(String::new()));

    sim.client("idle", async move {
        let mut held = Vec::new();
        for _ in 0..200 {
            if let Ok(s) = turmoil::net::TcpStream::connect(("broker", 1883)).await {
                held.push(s);
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(held);
        Ok(())
    });
    sim.client("storm", async move {
        for _ in 0..500 {
            if let Ok(mut s) = turmoil::net::TcpStream::connect(("broker", 1883)).await {
                let _ = s.write_all(&[0x10, 0x7f]).await;
            }
        }
        Ok(())
    });
    sim.client("slowadmin", async move {
        let mut slow = Vec::new();
        for _ in 0..40 {
            let mut s = turmoil::net::TcpStream::connect(("broker", 8081)).await?;
            s.write_all(b"POST /api/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
                .await?;
            slow.push(s);
        }
        for _ in 0..20 {
            for s in &mut slow {
                let _ = s.write_all(b" ").await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    });
    sim.client("pinger", async move {
        let mut c = Client::connect("pinger", true).await;
        for _ in 0..20_000 {
            if c.try_send(&Packet::PingReq).await.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });
    sim.client("retainer", async move {
        let mut c = Client::connect("retainer", true).await;
        for i in 0..1000u16 {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: format!("flood/{i}"),
                packet_id: Some(i + 1),
                properties: Properties::default(),
                payload: Bytes::from(vec![b'x'; 16 * 1024]),
            };
            if c.try_send(&Packet::Publish(p)).await.is_err() {
                break;
            }
            // PUBACK, or 0x97 once the budget's high mark is passed.
            if c.try_recv().await.is_none() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });

    let trips = round_trips.clone();
    sim.client("honest", async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for round in 0..20u16 {
            let started = tokio::time::Instant::now();
            let mut c = Client::connect("honest", true).await;
            c.send(&Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![(
                    "honest/t".to_owned(),
                    SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubscriptionOptions::default()
                    },
                )],
            }))
            .await;
            assert!(matches!(c.recv().await, Packet::SubAck(_)));
            c.send(&publish("honest/t", format!("r{round}"), 2)).await;
            let mut got_message = false;
            let mut got_ack = false;
            while !(got_message && got_ack) {
                match c.recv().await {
                    Packet::Publish(p) => {
                        got_message = true;
                        c.send(&Packet::PubAck(Ack {
                            packet_id: p.packet_id.unwrap(),
                            reason: ReasonCode(0),
                            properties: Properties::default(),
                        }))
                        .await;
                    }
                    Packet::PubAck(_) => got_ack = true,
                    _ => {}
                }
            }
            trips.lock().unwrap().push(started.elapsed().as_millis());
            drop(c);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(())
    });

    let reply = admin_reply.clone();
    let scraped = metrics.clone();
    sim.client("admin", async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        *reply.lock().unwrap() = http(
            "POST /api/v1",
            "Authorization: Basic YWRtaW46cHVibGlj\r\n",
            r#"{"req":2,"seq":9}"#,
        )
        .await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        *scraped.lock().unwrap() = http(
            "GET /metrics",
            "Authorization: Basic YWRtaW46cHVibGlj\r\n",
            "",
        )
        .await;
        Ok(())
    });

    sim.run().unwrap();
    let trips = round_trips.lock().unwrap().clone();
    let reply = admin_reply.lock().unwrap().clone();
    let metrics = metrics.lock().unwrap().clone();
    (trips, reply, metrics)
}

/// One HTTP/1.1 request to the broker's admin port; the whole answer.
async fn http(line: &str, headers: &str, body: &str) -> String {
    let mut s = turmoil::net::TcpStream::connect(("broker", 8081))
        .await
        .unwrap();
    let request = format!(
        "{line} HTTP/1.1\r\nHost: broker\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// Small per-connection and per-session allowances, so that the budget is what bounds.
fn adversaries_config() -> Config {
    Config {
        max_packet_size: 32 * 1024,
        max_write_buffer: 64 * 1024,
        max_inflight: 16,
        receive_maximum: 16,
        max_topic_alias: 8,
        ..broker_config()
    }
}

const ADVERSARY_BUDGET: u64 = 4 * 1024 * 1024;

/// What the run must show; the figures for the log, or what went wrong.
fn judge_adversaries(
    (trips, reply, metrics): &(Vec<u128>, String, String),
) -> Result<String, String> {
    let worst = trips.iter().copied().max().unwrap_or_default();
    if trips.len() != 20 || worst >= 2000 {
        return Err(format!("honest round trips {trips:?} ms"));
    }
    if !(reply.starts_with("HTTP/1.1 200") && reply.contains("\"seq\":9")) {
        return Err(format!("admin reply {reply}"));
    }
    let sample = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .ok_or_else(|| format!("no {name} in /metrics: {metrics}"))
    };
    let counted = sample("tidemq_memory_counted_bytes")?;
    let connected = sample("tidemq_sessions{state=\"connected\"}")?;
    let offline = sample("tidemq_sessions{state=\"offline\"}")?;
    let bound = tidemq_core::accounting_bound(
        &adversaries_config(),
        ADVERSARY_BUDGET,
        connected,
        connected + offline,
    );
    if counted > bound {
        return Err(format!("{counted} bytes counted, {bound} allowed"));
    }
    Ok(format!(
        "honest round trips {trips:?} ms (worst {worst}), {counted} bytes counted, {bound} allowed"
    ))
}

#[test]
fn adversaries_leave_honest_clients_and_the_admin_api_served_within_the_budget() {
    let seed = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let run = run_adversaries(seed, ADVERSARY_BUDGET);
    match judge_adversaries(&run) {
        Ok(figures) => eprintln!("SIM_SEED={seed}: {figures}"),
        Err(why) => panic!("SIM_SEED={seed}: {why}"),
    }
}

/// The planted mutation: the broker runs without its budget (1 GiB) while the check holds
/// it to the scenario's; the retained flood then shows.
#[test]
fn adversaries_check_catches_a_broker_without_its_budget() {
    let run = run_adversaries(11, 1 << 30);
    let verdict = judge_adversaries(&run);
    assert!(
        verdict
            .as_ref()
            .is_err_and(|why| why.contains("bytes counted")),
        "{verdict:?}"
    );
}
