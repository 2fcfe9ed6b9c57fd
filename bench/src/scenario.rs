//! The load scenarios. Each is bounded in time (`seconds`, then at most `drain` more for
//! messages still on their way) and in count (`messages` per publisher), stops by itself and
//! checks what arrived against what was sent.
//!
//! Publishers are paced by an end-to-end window: a publisher sends only while fewer than
//! `window` of its flow's messages are published and not yet received by every subscriber of
//! the flow. The broker's backlog per subscriber therefore stays bounded, so a broker that
//! drops QoS 0 for slow readers or bounds its queues (as MQTT brokers do) is measured at the
//! rate it can sustain without loss, and a QoS 1 loss is a real loss.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tidemq_core::codec::QoS;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::{ConnStats, Latency, Outcome, WireStats};
use crate::usage::{self, CpuMark};
use crate::wire::{
    self, AliasMap, Client, PublishTemplate, Stamp, TopicBy, append_puback, drain_frames,
    parse_publish,
};
use tidemq_core::codec::Packet;

/// Everything a scenario can be told. Each scenario reads the fields it needs.
#[derive(Debug, Clone)]
pub struct Opts {
    pub addr: SocketAddr,
    /// Where the subscribers of fan-in, fan-out and latency connect, if not `addr`.
    pub sub_addr: Option<SocketAddr>,
    /// The broker's process id, for its CPU use and memory (optional).
    pub broker_pid: Option<u32>,
    /// Names the broker in the output (`tidemq`, `mosquitto`, ...).
    pub label: String,
    /// How long publishers publish.
    pub seconds: f64,
    /// How long, after publishing stops, to wait for messages still on their way.
    pub drain: f64,
    pub qos: QoS,
    /// Payload bytes per message (at least 16: the stamp).
    pub payload: usize,
    /// fan-in: publishers into one wildcard subscriber.
    pub publishers: usize,
    /// fan-out: subscribers of the one publisher's topic.
    pub subscribers: usize,
    /// point-to-point: publisher/subscriber pairs, one topic each.
    pub pairs: usize,
    /// latency: messages per second.
    pub rate: f64,
    /// connections: idle clients to open.
    pub connections: usize,
    /// connections: connection attempts in progress at once.
    pub concurrency: usize,
    /// connections: seconds to hold the idle clients before measuring memory.
    pub hold: f64,
    /// Most messages one publisher sends.
    pub messages: u64,
    /// End-to-end window per flow, in messages (see the module documentation); 0 = what a
    /// broker with default limits holds per subscriber without dropping: for QoS 0 up to 8192
    /// messages or 2 MiB, for QoS 1 2048 (tidemq: `msq_len` 2048 + `max_inflight` 1024).
    pub window: u64,
    /// Most messages per write.
    pub batch: usize,
    /// QoS 1: most unacknowledged PUBLISHes per publisher.
    pub inflight: u64,
    /// Keep alive sent in CONNECT, seconds.
    pub keep_alive: u16,
    /// Subscribers connect with clean session 0 (a session the broker keeps).
    pub persistent: bool,
    /// soak: clients connected and disconnected again per churn cycle.
    pub churn: usize,
    /// soak: seconds between churn cycles.
    pub churn_every: f64,
    /// soak: seconds between samples of the broker's RSS.
    pub sample_every: f64,
    /// aliases: distinct topics the publisher goes round.
    pub topics: usize,
    /// aliases: bytes per topic name.
    pub topic_len: usize,
    /// aliases: the Topic Alias Maximum the (MQTT 5) subscriber announces; 0 = none.
    pub alias_max: u16,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            sub_addr: None,
            broker_pid: None,
            label: "broker".to_owned(),
            seconds: 5.0,
            drain: 5.0,
            qos: QoS::AtMostOnce,
            payload: 16,
            publishers: 8,
            subscribers: 16,
            pairs: 8,
            rate: 1000.0,
            connections: 10_000,
            concurrency: 64,
            hold: 1.0,
            messages: 50_000_000,
            window: 0,
            batch: 64,
            inflight: 512,
            keep_alive: 60,
            persistent: false,
            churn: 500,
            churn_every: 10.0,
            sample_every: 5.0,
            topics: 8,
            topic_len: 200,
            alias_max: 16,
        }
    }
}

/// The scenarios, by their command-line names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    FanIn,
    FanOut,
    PointToPoint,
    Latency,
    Connections,
    Soak,
    Aliases,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::FanIn,
        Scenario::FanOut,
        Scenario::PointToPoint,
        Scenario::Latency,
        Scenario::Connections,
        Scenario::Soak,
        Scenario::Aliases,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::PointToPoint => "p2p",
            Scenario::Latency => "latency",
            Scenario::Connections => "connections",
            Scenario::Soak => "soak",
            Scenario::Aliases => "aliases",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        match s {
            "point-to-point" => Some(Scenario::PointToPoint),
            _ => Scenario::ALL.into_iter().find(|x| x.name() == s),
        }
    }
}

/// Runs one scenario, bounded overall by its time settings plus a margin for set-up.
pub async fn run(scenario: Scenario, opts: &Opts) -> io::Result<Outcome> {
    let bound = opts.seconds + opts.drain + opts.hold + 120.0;
    let work = async {
        match scenario {
            Scenario::FanIn => fan_in(opts).await,
            Scenario::FanOut => fan_out(opts).await,
            Scenario::PointToPoint => point_to_point(opts).await,
            Scenario::Latency => latency(opts).await,
            Scenario::Connections => connections(opts).await,
            Scenario::Soak => soak(opts).await,
            Scenario::Aliases => aliases(opts).await,
        }
    };
    tokio::time::timeout(Duration::from_secs_f64(bound), work)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{} did not finish within {bound:.0} s", scenario.name()),
            )
        })?
}

/// P publishers on `.../fan-in/<i>` into one subscriber of `.../fan-in/#`.
pub async fn fan_in(opts: &Opts) -> io::Result<Outcome> {
    let base = format!("{}/fan-in", run_tag());
    let flow = FlowSpec {
        topics: (0..opts.publishers.max(1))
            .map(|i| format!("{base}/{i}"))
            .collect(),
        filter: format!("{base}/#"),
        subscribers: 1,
    };
    run_flows(opts, "fan-in", vec![flow], None).await
}

/// One publisher into S subscribers of its topic; the rate counts deliveries.
pub async fn fan_out(opts: &Opts) -> io::Result<Outcome> {
    let topic = format!("{}/fan-out", run_tag());
    let flow = FlowSpec {
        topics: vec![topic.clone()],
        filter: topic,
        subscribers: opts.subscribers.max(1),
    };
    run_flows(opts, "fan-out", vec![flow], None).await
}

/// N publisher/subscriber pairs, each on a topic of its own.
pub async fn point_to_point(opts: &Opts) -> io::Result<Outcome> {
    let base = format!("{}/p2p", run_tag());
    let flows = (0..opts.pairs.max(1))
        .map(|i| {
            let topic = format!("{base}/{i}");
            FlowSpec {
                topics: vec![topic.clone()],
                filter: topic,
                subscribers: 1,
            }
        })
        .collect();
    run_flows(opts, "p2p", flows, None).await
}

/// One publisher at a fixed rate into one subscriber; publish-to-deliver latency from the
/// send time stamped in each payload.
pub async fn latency(opts: &Opts) -> io::Result<Outcome> {
    let topic = format!("{}/latency", run_tag());
    let flow = FlowSpec {
        topics: vec![topic.clone()],
        filter: topic,
        subscribers: 1,
    };
    if opts.rate.is_nan() || opts.rate <= 0.0 || opts.rate.is_infinite() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--rate must be above 0",
        ));
    }
    run_flows(opts, "latency", vec![flow], Some(opts.rate)).await
}

/// A long steady run: `pairs` publisher/subscriber pairs at `rate` messages per second in
/// all (checked like p2p: QoS 1 fails on any loss), `churn` clients connecting and leaving
/// every `churn_every` seconds beside them, and the broker's RSS sampled every `sample_every`
/// seconds. Bounded memory under steady work is the result.
pub async fn soak(opts: &Opts) -> io::Result<Outcome> {
    let tag = run_tag();
    let pairs = opts.pairs.max(1);
    if opts.rate.is_nan() || opts.rate <= 0.0 || opts.rate.is_infinite() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--rate must be above 0",
        ));
    }
    let specs = (0..pairs)
        .map(|i| {
            let topic = format!("{tag}/soak/{i}");
            FlowSpec {
                topics: vec![topic.clone()],
                filter: topic,
                subscribers: 1,
            }
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_rss(
        opts.broker_pid,
        Duration::from_secs_f64(opts.sample_every.max(0.1)),
        stop.clone(),
    ));
    let churner = tokio::spawn(churn(
        opts.addr,
        format!("{tag}-churn"),
        opts.churn,
        Duration::from_secs_f64(opts.churn_every.max(0.1)),
        opts.keep_alive,
        stop.clone(),
    ));
    let flows = run_flows(opts, "soak", specs, Some(opts.rate / pairs as f64)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    let (cycles, churn_errors) = churner.await.unwrap_or((0, 1));
    let mut outcome = flows?;
    outcome.param("churn", opts.churn);
    outcome.param("churn_cycles", cycles);
    if churn_errors > 0 {
        outcome.errors.push(format!(
            "{churn_errors} churn connections failed to connect"
        ));
        outcome.ok = false;
    }
    outcome.rss_samples = samples;
    Ok(outcome)
}

/// (seconds since start, VmRSS KiB) every `every`, until `stop`.
async fn sample_rss(pid: Option<u32>, every: Duration, stop: Arc<AtomicBool>) -> Vec<(f64, u64)> {
    let Some(pid) = pid else {
        return Vec::new();
    };
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if let Some(kib) = usage::rss_kib(pid) {
            samples.push((start.elapsed().as_secs_f64(), kib));
        }
    }
    samples
}

/// Every `every`, `count` clients connect, stay a second and disconnect; returns the cycles
/// completed and the connections that failed.
async fn churn(
    addr: SocketAddr,
    tag: String,
    count: usize,
    every: Duration,
    keep_alive: u16,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let (mut cycles, mut failed) = (0u64, 0u64);
    if count == 0 {
        return (0, 0);
    }
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let gate = Arc::new(Semaphore::new(32));
        let mut tasks = JoinSet::new();
        for i in 0..count {
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            let id = format!("{tag}-{cycles}-{i}");
            tasks.spawn(async move {
                let c = tokio::time::timeout(
                    wire::HANDSHAKE_TIMEOUT,
                    Client::connect(addr, &id, keep_alive),
                )
                .await;
                drop(permit);
                c.ok().and_then(Result::ok)
            });
        }
        let mut clients = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined.ok().flatten() {
                Some(c) => clients.push(c),
                None => failed += 1,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        disconnect_all(clients, 64).await;
        cycles += 1;
    }
    (cycles, failed)
}

/// A unique prefix for this run's topics and client ids.
fn run_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "tmqb{}x{nanos:x}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

struct FlowSpec {
    /// One publisher per topic.
    topics: Vec<String>,
    filter: String,
    subscribers: usize,
}

/// The shared state of one flow: its publishers' output, its subscribers' progress.
struct Flow {
    window: u64,
    /// Messages its publishers have written.
    sent: AtomicU64,
    /// Messages each subscriber has received.
    received: Vec<AtomicU64>,
    /// What each subscriber should receive; `u64::MAX` while publishing goes on.
    expected: AtomicU64,
    /// Wakes publishers: room in the window, or acknowledgements.
    room: Notify,
    /// Wakes subscribers: publishing ended.
    ended: Notify,
}

impl Flow {
    fn new(window: u64, subscribers: usize) -> Flow {
        Flow {
            window: window.max(1),
            sent: AtomicU64::new(0),
            received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            expected: AtomicU64::new(u64::MAX),
            room: Notify::new(),
            ended: Notify::new(),
        }
    }

    /// How many more messages may be published now.
    fn room(&self) -> u64 {
        let sent = self.sent.load(Ordering::Relaxed);
        let slowest = self
            .received
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .min()
            .unwrap_or(sent);
        self.window.saturating_sub(sent.saturating_sub(slowest))
    }

    fn end(&self) {
        self.expected
            .store(self.sent.load(Ordering::Relaxed), Ordering::Relaxed);
        self.ended.notify_waiters();
    }
}

struct PubPlan {
    id: u32,
    /// Message `seq` goes to `topics[seq % topics.len()]` (one topic but in `aliases`).
    topics: Vec<String>,
    qos: QoS,
    payload: usize,
    batch: u64,
    inflight: u64,
    messages: u64,
    start: Instant,
    deadline: Instant,
    drain: Duration,
    /// Messages per second, for the latency scenario.
    rate: Option<f64>,
    origin: std::time::Instant,
}

struct PubResult {
    sent: u64,
    acked: u64,
    client: Client,
}

fn nanos_since(origin: std::time::Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Reads whatever PUBACKs are waiting, without blocking; returns how many.
fn take_acks(client: &mut Client) -> io::Result<u64> {
    loop {
        client.buf.reserve(16 * 1024);
        match client.rd.try_read_buf(&mut client.buf) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the broker closed a publisher's connection",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    let mut acks = 0;
    drain_frames(&mut client.buf, |first, _| {
        if first >> 4 == 4 {
            acks += 1;
        }
        Ok(())
    })?;
    Ok(acks)
}

async fn run_publisher(
    mut client: Client,
    plan: PubPlan,
    flow: Arc<Flow>,
) -> io::Result<PubResult> {
    let templates = plan
        .topics
        .iter()
        .map(|t| PublishTemplate::new(t, plan.qos, plan.payload))
        .collect::<io::Result<Vec<_>>>()?;
    let longest = templates.iter().map(PublishTemplate::len).max();
    let confirmed = plan.qos != QoS::AtMostOnce;
    let inflight = plan.inflight.clamp(1, 60_000);
    let mut out = Vec::with_capacity(longest.unwrap_or(0) * plan.batch as usize);
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut packet_id: u16 = 1;
    loop {
        if confirmed {
            acked += take_acks(&mut client)?;
        }
        let now = Instant::now();
        if now >= plan.deadline || sent >= plan.messages {
            break;
        }
        let notified = flow.room.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut room = flow.room().min(plan.messages - sent).min(plan.batch);
        if confirmed {
            room = room.min(inflight.saturating_sub(sent - acked));
        }
        let mut wake_at = plan.deadline;
        if let Some(rate) = plan.rate {
            let due = (now.duration_since(plan.start).as_secs_f64() * rate) as u64 + 1;
            room = room.min(due.saturating_sub(sent));
            let next = plan.start + Duration::from_secs_f64((sent as f64) / rate);
            wake_at = wake_at.min(next);
        }
        if room == 0 {
            tokio::select! {
                () = &mut notified => {}
                r = client.rd.readable(), if confirmed => r?,
                () = tokio::time::sleep_until(wake_at) => {}
            }
            continue;
        }
        flow.sent.fetch_add(room, Ordering::Relaxed);
        out.clear();
        // A throughput batch shares one send time; a paced message gets its own.
        let sent_ns = nanos_since(plan.origin);
        for _ in 0..room {
            let stamp = Stamp {
                sent_ns,
                publisher: plan.id,
                seq: sent as u32,
            };
            let next = (sent as usize).checked_rem(templates.len());
            let Some(template) = next.and_then(|i| templates.get(i)) else {
                return Err(io::Error::other("a publisher without a topic"));
            };
            template.append(&mut out, packet_id, stamp);
            packet_id = packet_id.checked_add(1).unwrap_or(1);
            sent += 1;
        }
        client.wr.write_all(&out).await?;
    }
    if confirmed {
        let until = Instant::now() + plan.drain;
        while acked < sent && Instant::now() < until {
            tokio::select! {
                r = client.rd.readable() => r?,
                () = tokio::time::sleep_until(until) => {}
            }
            acked += take_acks(&mut client)?;
        }
    }
    Ok(PubResult {
        sent,
        acked,
        client,
    })
}

struct SubPlan {
    /// This subscriber's slot in `Flow::received`.
    slot: usize,
    /// Publishers in the flow (their ids are 0..publishers).
    publishers: usize,
    /// QoS 0: give up this long after publishing ended without a message (the rest may have
    /// been dropped). QoS 1 waits until `hard_deadline`: nothing may be missing.
    idle: Option<Duration>,
    hard_deadline: Instant,
    keep_latencies: bool,
    origin: std::time::Instant,
}

#[derive(Default)]
struct SubResult {
    delivered: u64,
    /// Messages whose sequence number was not the next one expected from their publisher
    /// (duplicates, reordering) or that came from no known publisher.
    out_of_order: u64,
    last_at: Option<Instant>,
    latencies_ns: Vec<u64>,
}

async fn run_subscriber(
    mut client: Client,
    plan: SubPlan,
    flow: Arc<Flow>,
) -> io::Result<(SubResult, Client)> {
    let mut result = SubResult::default();
    let mut next_seq = vec![0u32; plan.publishers];
    let mut acks = Vec::new();
    let mut ended_at: Option<Instant> = None;
    let received = flow
        .received
        .get(plan.slot)
        .ok_or_else(|| io::Error::other("subscriber slot out of range"))?;
    loop {
        let now_ns = nanos_since(plan.origin);
        let mut got = 0u64;
        let mut out_of_order = 0u64;
        let latencies = &mut result.latencies_ns;
        drain_frames(&mut client.buf, |first, body| {
            if first >> 4 != 3 {
                return Ok(());
            }
            let publish =
                parse_publish(first, body).ok_or_else(|| wire::invalid("malformed PUBLISH"))?;
            got += 1;
            if publish.qos > 0 {
                append_puback(&mut acks, publish.packet_id);
            }
            let Some(stamp) = Stamp::read(publish.payload) else {
                out_of_order += 1;
                return Ok(());
            };
            match next_seq.get_mut(stamp.publisher as usize) {
                Some(next) if stamp.seq == *next => *next = next.wrapping_add(1),
                // A gap is a loss; it shows in the count.
                Some(next) if stamp.seq > *next => *next = stamp.seq.wrapping_add(1),
                _ => out_of_order += 1,
            }
            if plan.keep_latencies {
                latencies.push(now_ns.saturating_sub(stamp.sent_ns));
            }
            Ok(())
        })?;
        if got > 0 {
            result.delivered += got;
            result.out_of_order += out_of_order;
            result.last_at = Some(Instant::now());
            received.fetch_add(got, Ordering::Relaxed);
            flow.room.notify_waiters();
        }
        if !acks.is_empty() {
            client.wr.write_all(&acks).await?;
            acks.clear();
        }
        let ended = flow.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let expected = flow.expected.load(Ordering::Relaxed);
        let Some(wait_until) = stop_waiting_at(
            expected,
            result.delivered,
            result.last_at,
            plan.idle,
            plan.hard_deadline,
            &mut ended_at,
        ) else {
            break;
        };
        tokio::select! {
            r = client.read_more() => { r?; }
            () = &mut ended => {}
            () = tokio::time::sleep_until(wait_until) => {}
        }
    }
    Ok((result, client))
}

/// How long a subscriber waits for more: `None` once every expected message arrived or the
/// hard deadline passed, or (QoS 0, `idle` set) once publishing ended and nothing came for
/// `idle`; otherwise the instant to wake up by.
fn stop_waiting_at(
    expected: u64,
    delivered: u64,
    last_at: Option<Instant>,
    idle: Option<Duration>,
    hard_deadline: Instant,
    ended_at: &mut Option<Instant>,
) -> Option<Instant> {
    if delivered >= expected {
        return None;
    }
    let now = Instant::now();
    if now >= hard_deadline {
        return None;
    }
    let mut wait_until = hard_deadline;
    if expected != u64::MAX
        && let Some(idle) = idle
    {
        let since = *ended_at.get_or_insert(now);
        let quiet_from = last_at.map_or(since, |t| t.max(since));
        if now >= quiet_from + idle {
            return None;
        }
        wait_until = wait_until.min(quiet_from + idle);
    }
    Some(wait_until)
}

/// The end-to-end window per flow (see [`Opts::window`]) for messages to topics of about
/// `topic_len` bytes.
fn window_for(opts: &Opts, topic_len: usize) -> u64 {
    match opts.window {
        0 if opts.qos == QoS::AtMostOnce => {
            let wire = opts.payload.saturating_add(topic_len) as u64 + 64;
            (2 * 1024 * 1024 / wire).clamp(256, 8192)
        }
        0 => 2048,
        w => w,
    }
}

/// Connects every flow's subscribers and publishers, runs them for `opts.seconds`, waits for
/// what is on its way, and checks the counts.
async fn run_flows(
    opts: &Opts,
    scenario: &'static str,
    specs: Vec<FlowSpec>,
    rate: Option<f64>,
) -> io::Result<Outcome> {
    let tag = run_tag();
    let load1 = usage::load1();
    let window = window_for(opts, 0);
    let mut subscribers = Vec::new();
    let mut publishers = Vec::new();
    let mut flows = Vec::new();
    for (f, spec) in specs.iter().enumerate() {
        let flow = Arc::new(Flow::new(window, spec.subscribers));
        for s in 0..spec.subscribers {
            let id = format!("{tag}-s{f}-{s}");
            let addr = opts.sub_addr.unwrap_or(opts.addr);
            let mut client =
                Client::connect_session(addr, &id, opts.keep_alive, !opts.persistent).await?;
            client.subscribe(&spec.filter, opts.qos).await?;
            subscribers.push((flow.clone(), s, spec.topics.len(), client));
        }
        for (p, topic) in spec.topics.iter().enumerate() {
            let client =
                Client::connect(opts.addr, &format!("{tag}-p{f}-{p}"), opts.keep_alive).await?;
            publishers.push((flow.clone(), p, topic.clone(), client));
        }
        flows.push(flow);
    }
    if opts.sub_addr.is_some() {
        // The subscribers' interest reaches the publishers' node through the cluster in a
        // moment; a message sent before it would be lost to a window that waits for it.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let origin = std::time::Instant::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.seconds.max(0.0));
    let drain = Duration::from_secs_f64(opts.drain.max(0.0));
    let cpu_start = CpuMark::now(opts.broker_pid);
    let mut sub_tasks = JoinSet::new();
    for (flow, slot, publishers, client) in subscribers {
        let plan = SubPlan {
            slot,
            publishers,
            idle: (opts.qos == QoS::AtMostOnce).then(|| Duration::from_secs(1).min(drain)),
            hard_deadline: deadline + drain,
            keep_latencies: rate.is_some(),
            origin,
        };
        sub_tasks.spawn(run_subscriber(client, plan, flow));
    }
    let mut pub_tasks = JoinSet::new();
    for (flow, id, topic, client) in publishers {
        let plan = PubPlan {
            id: id as u32,
            topics: vec![topic],
            qos: opts.qos,
            payload: opts.payload,
            batch: if rate.is_some() {
                1
            } else {
                opts.batch.max(1) as u64
            },
            inflight: opts.inflight,
            messages: opts.messages,
            start,
            deadline,
            drain,
            rate,
            origin,
        };
        pub_tasks.spawn(run_publisher(client, plan, flow));
    }
    let mut errors = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let mut clients = Vec::new();
    while let Some(joined) = pub_tasks.join_next().await {
        match joined.map_err(io::Error::other).and_then(|r| r) {
            Ok(r) => {
                sent += r.sent;
                acked += r.acked;
                clients.push(r.client);
            }
            Err(e) => errors.push(format!("publisher: {e}")),
        }
    }
    for flow in &flows {
        flow.end();
    }
    let mut delivered = 0u64;
    let mut out_of_order = 0u64;
    let mut last_at = None;
    let mut latencies = Vec::new();
    while let Some(joined) = sub_tasks.join_next().await {
        match joined.map_err(io::Error::other).and_then(|r| r) {
            Ok((r, client)) => {
                delivered += r.delivered;
                out_of_order += r.out_of_order;
                last_at = last_at.max(r.last_at);
                latencies.extend(r.latencies_ns);
                clients.push(client);
            }
            Err(e) => errors.push(format!("subscriber: {e}")),
        }
    }
    let cpu = cpu_start.until(&CpuMark::now(opts.broker_pid));
    let broker_rss_kib = opts.broker_pid.and_then(usage::rss_kib);
    disconnect_all(clients, 64).await;
    let expected: u64 = flows
        .iter()
        .map(|f| f.sent.load(Ordering::Relaxed) * f.received.len() as u64)
        .sum();
    let unique = delivered.saturating_sub(out_of_order);
    let missing = expected.saturating_sub(unique);
    let elapsed = last_at.map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let confirmed = opts.qos != QoS::AtMostOnce;
    if confirmed && acked != sent {
        errors.push(format!(
            "{} of {sent} PUBLISHes not acknowledged",
            sent - acked
        ));
    }
    if confirmed && missing > 0 {
        errors.push(format!(
            "QoS 1: {missing} of {expected} deliveries missing (lost, or still not delivered \
             {:.0} s after publishing stopped)",
            drain.as_secs_f64()
        ));
    }
    if out_of_order > 0 {
        errors.push(format!(
            "{out_of_order} deliveries duplicated or out of order"
        ));
    }
    let subscriber_count: usize = specs.iter().map(|s| s.subscribers).sum();
    let mut outcome = Outcome::new(scenario, &opts.label);
    outcome.param(
        "publishers",
        specs.iter().map(|s| s.topics.len()).sum::<usize>(),
    );
    outcome.param("subscribers", subscriber_count);
    outcome.param("qos", opts.qos as u8);
    outcome.param("payload", opts.payload);
    outcome.param("seconds", opts.seconds);
    outcome.param("persistent", u8::from(opts.persistent));
    if let Some(rate) = rate {
        outcome.param("rate", rate);
    } else {
        outcome.param("window", window);
        outcome.param("batch", opts.batch);
    }
    outcome.sent = sent;
    outcome.expected = expected;
    outcome.delivered = delivered;
    outcome.missing = missing;
    outcome.out_of_order = out_of_order;
    outcome.elapsed_s = elapsed;
    outcome.rate = if elapsed > 0.0 {
        delivered as f64 / elapsed
    } else {
        0.0
    };
    outcome.unit = if scenario == "fan-out" {
        "deliveries/s"
    } else {
        "msg/s"
    };
    outcome.latency = rate.map(|_| Latency::from_nanos(latencies));
    outcome.cpu = cpu;
    outcome.broker_rss_kib = broker_rss_kib;
    outcome.load1 = load1;
    outcome.errors = errors;
    outcome.ok = outcome.errors.is_empty() && delivered > 0;
    Ok(outcome)
}

/// Disconnects every client gracefully, a few at a time; bounded by the handshake timeout.
async fn disconnect_all(clients: Vec<Client>, at_once: usize) {
    let gate = Arc::new(Semaphore::new(at_once.max(1)));
    let mut tasks = JoinSet::new();
    for client in clients {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await;
            client.disconnect().await
        });
    }
    let all = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(wire::HANDSHAKE_TIMEOUT * 2, all).await;
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// C idle clients: connect rate, and the broker's memory per connection.
pub async fn connections(opts: &Opts) -> io::Result<Outcome> {
    let wanted = opts.connections;
    if let Some(limit) = open_files_limit()
        && limit < wanted as u64 + 64
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{wanted} connections need more open files than the limit of {limit}: \
                 run under `ulimit -n {}`",
                wanted + 64
            ),
        ));
    }
    let tag = run_tag();
    let load1 = usage::load1();
    let rss_before = opts.broker_pid.and_then(usage::rss_kib);
    let cpu_start = CpuMark::now(opts.broker_pid);
    let gate = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..wanted {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let id = format!("{tag}-c{i}");
        let (addr, keep_alive, clean) = (opts.addr, opts.keep_alive, !opts.persistent);
        tasks.spawn(async move {
            let connected = tokio::time::timeout(
                wire::HANDSHAKE_TIMEOUT,
                Client::connect_session(addr, &id, keep_alive, clean),
            )
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connect + CONNACK timed out",
                ))
            });
            drop(permit);
            connected
        });
    }
    let mut clients = Vec::with_capacity(wanted);
    let mut errors = Vec::new();
    let mut failed = 0u64;
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(io::Error::other).and_then(|r| r) {
            Ok(client) => clients.push(client),
            Err(e) => {
                failed += 1;
                if errors.is_empty() {
                    errors.push(format!("connect failed: {e}"));
                }
            }
        }
    }
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(opts.hold.max(0.0))).await;
    let rss_after = opts.broker_pid.and_then(usage::rss_kib);
    let cpu = cpu_start.until(&CpuMark::now(opts.broker_pid));
    let connected = clients.len() as u64;
    disconnect_all(clients, opts.concurrency).await;
    if failed > 0 {
        errors.push(format!("{failed} of {wanted} connections failed"));
    }
    let rss_per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(a.saturating_sub(b) as f64 * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let mut outcome = Outcome::new("connections", &opts.label);
    outcome.param("connections", wanted);
    outcome.param("concurrency", opts.concurrency);
    outcome.param("hold", opts.hold);
    outcome.param("persistent", u8::from(opts.persistent));
    outcome.sent = wanted as u64;
    outcome.expected = wanted as u64;
    outcome.delivered = connected;
    outcome.missing = failed;
    outcome.elapsed_s = connect_s;
    outcome.rate = if connect_s > 0.0 {
        connected as f64 / connect_s
    } else {
        0.0
    };
    outcome.unit = "conn/s";
    outcome.connections = Some(ConnStats {
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_conn_bytes: rss_per_conn,
    });
    outcome.cpu = cpu;
    outcome.broker_rss_kib = rss_after;
    outcome.load1 = load1;
    outcome.errors = errors;
    outcome.ok = outcome.errors.is_empty();
    Ok(outcome)
}

/// `count` distinct topic names under `base`, each `len` bytes long (longer when `len` is too
/// short to tell them apart), padded with levels of a made-up device hierarchy.
fn long_topics(base: &str, count: usize, len: usize) -> Vec<String> {
    const FILL: &str = "site-0042/building-7/floor-3/zone-b/rack-12/unit-5/sensor/telemetry/";
    (0..count)
        .map(|i| {
            let mut topic = format!("{base}/{i}");
            if topic.len() < len {
                topic.push('/');
                while topic.len() < len {
                    topic.push_str(FILL);
                }
                // FILL is ASCII: any length is a character boundary.
                topic.truncate(len);
            }
            topic
        })
        .collect()
}

/// Server-to-client topic aliases: one publisher goes round `topics` distinct topic names of
/// `topic_len` bytes, publishing `messages` in all; one MQTT 5 subscriber of all of them
/// announces Topic Alias Maximum `alias_max`, resolves the aliases the broker sets (an unknown
/// one fails the run), checks each message's topic and counts the bytes it reads off its
/// socket. The result is the wire cost per message, with or without aliases.
pub async fn aliases(opts: &Opts) -> io::Result<Outcome> {
    let tag = run_tag();
    let load1 = usage::load1();
    if opts.topic_len > usize::from(u16::MAX) || opts.topics > usize::from(u16::MAX) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--topic-len and --topics must be at most 65535",
        ));
    }
    let topics = long_topics(
        &format!("{tag}/aliases"),
        opts.topics.max(1),
        opts.topic_len,
    );
    let topic_len = topics.iter().map(String::len).max().unwrap_or(0);
    let window = window_for(opts, topic_len);
    let flow = Arc::new(Flow::new(window, 1));
    let mut subscriber = Client::connect_v5(
        opts.addr,
        &format!("{tag}-s"),
        opts.keep_alive,
        opts.alias_max,
    )
    .await?;
    subscriber
        .subscribe(&format!("{tag}/aliases/#"), opts.qos)
        .await?;
    let publisher = Client::connect(opts.addr, &format!("{tag}-p"), opts.keep_alive).await?;
    let origin = std::time::Instant::now();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(opts.seconds.max(0.0));
    let drain = Duration::from_secs_f64(opts.drain.max(0.0));
    let cpu_start = CpuMark::now(opts.broker_pid);
    let sub_plan = AliasSubPlan {
        topics: topics.clone(),
        alias_max: opts.alias_max,
        idle: (opts.qos == QoS::AtMostOnce).then(|| Duration::from_secs(1).min(drain)),
        hard_deadline: deadline + drain,
    };
    let sub_task = tokio::spawn(run_alias_subscriber(subscriber, sub_plan, flow.clone()));
    let pub_plan = PubPlan {
        id: 0,
        topics,
        qos: opts.qos,
        payload: opts.payload,
        batch: opts.batch.max(1) as u64,
        inflight: opts.inflight,
        messages: opts.messages,
        start,
        deadline,
        drain,
        rate: None,
        origin,
    };
    let pub_task = tokio::spawn(run_publisher(publisher, pub_plan, flow.clone()));
    let mut errors = Vec::new();
    let mut clients = Vec::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    match pub_task.await.map_err(io::Error::other).and_then(|r| r) {
        Ok(r) => {
            sent = r.sent;
            acked = r.acked;
            clients.push(r.client);
        }
        Err(e) => errors.push(format!("publisher: {e}")),
    }
    flow.end();
    let mut r = AliasSubResult::default();
    match sub_task.await.map_err(io::Error::other).and_then(|r| r) {
        Ok((result, client)) => {
            r = result;
            clients.push(client);
        }
        Err(e) => errors.push(format!("subscriber: {e}")),
    }
    let cpu = cpu_start.until(&CpuMark::now(opts.broker_pid));
    let broker_rss_kib = opts.broker_pid.and_then(usage::rss_kib);
    disconnect_all(clients, 4).await;
    let expected = flow.sent.load(Ordering::Relaxed);
    let unique = r.delivered.saturating_sub(r.out_of_order);
    let missing = expected.saturating_sub(unique);
    let elapsed = r
        .last_at
        .map_or(0.0, |t| t.duration_since(start).as_secs_f64());
    let confirmed = opts.qos != QoS::AtMostOnce;
    if confirmed && acked != sent {
        errors.push(format!(
            "{} of {sent} PUBLISHes not acknowledged",
            sent - acked
        ));
    }
    if confirmed && missing > 0 {
        errors.push(format!(
            "QoS 1: {missing} of {expected} deliveries missing (lost, or still not delivered \
             {:.0} s after publishing stopped)",
            drain.as_secs_f64()
        ));
    }
    if r.out_of_order > 0 {
        errors.push(format!(
            "{} deliveries duplicated or out of order",
            r.out_of_order
        ));
    }
    if r.alias_errors > 0 {
        errors.push(format!(
            "{} PUBLISHes whose topic could not be resolved, first: {}",
            r.alias_errors,
            r.first_alias_error.as_deref().unwrap_or("?")
        ));
    }
    if r.wrong_topic > 0 {
        errors.push(format!(
            "{} deliveries on the wrong topic, first: {}",
            r.wrong_topic,
            r.first_wrong_topic.as_deref().unwrap_or("?")
        ));
    }
    let mut outcome = Outcome::new("aliases", &opts.label);
    outcome.param("publishers", 1);
    outcome.param("subscribers", 1);
    outcome.param("qos", opts.qos as u8);
    outcome.param("payload", opts.payload);
    outcome.param("topics", opts.topics.max(1));
    outcome.param("topic_len", topic_len);
    outcome.param("alias_max", opts.alias_max);
    outcome.param("messages", opts.messages);
    outcome.param("seconds", opts.seconds);
    outcome.param("window", window);
    outcome.param("batch", opts.batch);
    outcome.sent = sent;
    outcome.expected = expected;
    outcome.delivered = r.delivered;
    outcome.missing = missing;
    outcome.out_of_order = r.out_of_order;
    outcome.elapsed_s = elapsed;
    outcome.rate = if elapsed > 0.0 {
        r.delivered as f64 / elapsed
    } else {
        0.0
    };
    outcome.wire = Some(WireStats {
        bytes: r.wire_bytes,
        bytes_per_msg: (r.delivered > 0).then(|| r.wire_bytes as f64 / r.delivered as f64),
        by_alias: r.aliased,
        with_topic: r.with_topic,
    });
    outcome.cpu = cpu;
    outcome.broker_rss_kib = broker_rss_kib;
    outcome.load1 = load1;
    outcome.errors = errors;
    outcome.ok = outcome.errors.is_empty() && r.delivered > 0;
    Ok(outcome)
}

struct AliasSubPlan {
    /// What the publisher goes round: message `seq` is on `topics[seq % topics.len()]`.
    topics: Vec<String>,
    alias_max: u16,
    /// As [`SubPlan::idle`].
    idle: Option<Duration>,
    hard_deadline: Instant,
}

#[derive(Default)]
struct AliasSubResult {
    delivered: u64,
    out_of_order: u64,
    last_at: Option<Instant>,
    /// Bytes read off the socket after the SUBACK.
    wire_bytes: u64,
    /// Deliveries that named their topic by alias alone.
    aliased: u64,
    /// Deliveries that carried their topic (with or without an alias).
    with_topic: u64,
    /// Deliveries whose topic could not be resolved (unknown or out-of-range alias, no
    /// topic).
    alias_errors: u64,
    first_alias_error: Option<String>,
    /// Deliveries on another topic than the one published on.
    wrong_topic: u64,
    first_wrong_topic: Option<String>,
}

async fn run_alias_subscriber(
    mut client: Client,
    plan: AliasSubPlan,
    flow: Arc<Flow>,
) -> io::Result<(AliasSubResult, Client)> {
    let mut r = AliasSubResult {
        // Whatever came with the SUBACK is on the wire too.
        wire_bytes: client.buf.len() as u64,
        ..AliasSubResult::default()
    };
    let mut aliases = AliasMap::new(plan.alias_max);
    let mut next_seq = 0u32;
    let mut acks = Vec::new();
    let mut ended_at: Option<Instant> = None;
    let received = flow
        .received
        .first()
        .ok_or_else(|| io::Error::other("a flow without a subscriber"))?;
    loop {
        let mut got = 0u64;
        while let Some(packet) = client.decode_buffered()? {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            got += 1;
            if let Some(id) = publish.packet_id {
                append_puback(&mut acks, id);
            }
            let topic = match aliases.resolve(&publish.topic, publish.properties.topic_alias) {
                Ok((topic, by)) => {
                    if by == TopicBy::Alias {
                        r.aliased += 1;
                    } else {
                        r.with_topic += 1;
                    }
                    Some(topic)
                }
                Err(e) => {
                    r.alias_errors += 1;
                    r.first_alias_error.get_or_insert(e);
                    None
                }
            };
            let Some(stamp) = Stamp::read(&publish.payload).filter(|s| s.publisher == 0) else {
                r.out_of_order += 1;
                continue;
            };
            if stamp.seq == next_seq {
                next_seq = next_seq.wrapping_add(1);
            } else if stamp.seq > next_seq {
                // A gap is a loss; it shows in the count.
                next_seq = stamp.seq.wrapping_add(1);
            } else {
                r.out_of_order += 1;
            }
            let published_on = (stamp.seq as usize)
                .checked_rem(plan.topics.len())
                .and_then(|i| plan.topics.get(i));
            if let Some(topic) = topic
                && published_on.map(String::as_str) != Some(topic)
            {
                r.wrong_topic += 1;
                r.first_wrong_topic.get_or_insert_with(|| {
                    format!(
                        "message {} arrived on {topic:?}, published on {published_on:?}",
                        stamp.seq
                    )
                });
            }
        }
        if got > 0 {
            r.delivered += got;
            r.last_at = Some(Instant::now());
            received.fetch_add(got, Ordering::Relaxed);
            flow.room.notify_waiters();
        }
        if !acks.is_empty() {
            client.wr.write_all(&acks).await?;
            acks.clear();
        }
        let ended = flow.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let expected = flow.expected.load(Ordering::Relaxed);
        let Some(wait_until) = stop_waiting_at(
            expected,
            r.delivered,
            r.last_at,
            plan.idle,
            plan.hard_deadline,
            &mut ended_at,
        ) else {
            break;
        };
        tokio::select! {
            n = client.read_more() => r.wire_bytes += n? as u64,
            () = &mut ended => {}
            () = tokio::time::sleep_until(wait_until) => {}
        }
    }
    Ok((r, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_topics_are_distinct_and_as_long_as_asked() {
        let topics = long_topics("tag/aliases", 12, 200);
        assert_eq!(topics.len(), 12);
        assert!(topics.iter().all(|t| t.len() == 200), "{topics:?}");
        let mut unique = topics.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 12);
        assert!(topics.iter().all(|t| !t.contains(['+', '#'])));
        // Too short to pad: the distinct part stays.
        assert_eq!(
            long_topics("tag/aliases", 2, 3),
            ["tag/aliases/0", "tag/aliases/1"]
        );
        assert_eq!(Scenario::parse("aliases"), Some(Scenario::Aliases));
    }
}
