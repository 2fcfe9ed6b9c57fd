//! Persistence under `kill -9`: the real `tidemq` binary, killed with SIGKILL at random moments
//! while sequence-numbered QoS 1 and QoS 2 traffic flows to persistent sessions and retained
//! topics, and restarted on the same data directory, many times.
//!
//! The clients are a small raw MQTT client over `std::net::TcpStream` (v3.1.1 and v5), so
//! the test knows exactly which acknowledgements arrived before each kill:
//! - a QoS 1 publish is accepted once its PUBACK arrived, a QoS 2 publish once its PUBREC
//!   arrived; publishers keep their sessions and, on reconnecting, resend what is unacknowledged
//!   (PUBLISH with DUP, or PUBREL) with the original packet ids, as MQTT requires;
//! - subscribers are QoS 2 receivers that keep their "received, awaiting PUBREL" packet ids
//!   across reconnects (delivering on the first PUBLISH, never again for the same id until
//!   PUBREL), so exactly-once is checkable;
//! - every CONNACK after the first one of a persistent session must say Session Present.
//!
//! After the last restart the publishers finish their flows, probes are published, every
//! subscriber reconnects and drains, and the test checks: every accepted message published
//! after a subscriber's SUBACK reached that subscriber at least once (exactly once where both
//! the message and the subscription are QoS 2), nothing arrived for a filter after its
//! UNSUBACK, every retained topic holds its last accepted value or a later one.
//!
//! With `sync = fsync` and `sync = os` all of that must hold (a kill -9 loses no write the
//! process made); with `sync = none` only that every restart recovers and starts cleanly.
//!
//! `TIDEMQ_PERSIST_SEED=<n>` replays a seed (kill moments and client behaviour; thread timing
//! still varies); `TIDEMQ_PERSIST_KILLS=<n>` changes the number of kills (soak runs). On
//! failure the data directory as each kill left it (`data-at-kill-<k>`) and the broker logs
//! are kept, and their place is printed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::{Dir, Running, free_port, start};

// ----- a seeded random number generator ------------------------------------------------------

/// SplitMix64: small, and good enough for choosing moments and sizes.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A generator of its own for `name`, derived from this seed.
    fn fork(seed: u64, name: &str) -> Rng {
        let mut h = seed ^ 0xA076_1D64_78BD_642F;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01B3);
        }
        Rng::new(h)
    }
}

fn seed() -> u64 {
    match std::env::var("TIDEMQ_PERSIST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("TIDEMQ_PERSIST_SEED must be a number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

// ----- a raw MQTT client ---------------------------------------------------------------------

#[derive(Debug)]
enum Pkt {
    ConnAck {
        session_present: bool,
        code: u8,
    },
    Publish {
        topic: String,
        payload: String,
        qos: u8,
        dup: bool,
        pid: u16,
    },
    PubAck {
        pid: u16,
        code: u8,
    },
    PubRec {
        pid: u16,
        code: u8,
    },
    PubRel {
        pid: u16,
    },
    PubComp {
        pid: u16,
    },
    SubAck {
        pid: u16,
        codes: Vec<u8>,
    },
    UnsubAck {
        pid: u16,
    },
    Disconnect {
        code: u8,
    },
    Other(u8),
}

fn put_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

fn put_str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A v5 variable-length integer at `at`: (value, bytes used).
fn get_varint(b: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut n = 0usize;
    let mut mult = 1usize;
    for i in 0..4 {
        let byte = *b.get(at + i)?;
        n += usize::from(byte & 0x7f) * mult;
        if byte & 0x80 == 0 {
            return Some((n, i + 1));
        }
        mult *= 128;
    }
    None
}

fn get_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn decode(first: u8, body: &[u8], v5: bool) -> Option<Pkt> {
    let kind = first >> 4;
    Some(match kind {
        2 => Pkt::ConnAck {
            session_present: body.first()? & 1 == 1,
            code: *body.get(1)?,
        },
        3 => {
            let qos = (first >> 1) & 3;
            let dup = first & 8 != 0;
            let tlen = usize::from(get_u16(body, 0)?);
            let topic = String::from_utf8(body.get(2..2 + tlen)?.to_vec()).ok()?;
            let mut at = 2 + tlen;
            let mut pid = 0;
            if qos > 0 {
                pid = get_u16(body, at)?;
                at += 2;
            }
            if v5 {
                let (plen, used) = get_varint(body, at)?;
                at += used + plen;
            }
            let payload = String::from_utf8_lossy(body.get(at..)?).into_owned();
            Pkt::Publish {
                topic,
                payload,
                qos,
                dup,
                pid,
            }
        }
        4..=7 => {
            let pid = get_u16(body, 0)?;
            let code = body.get(2).copied().unwrap_or(0);
            match kind {
                4 => Pkt::PubAck { pid, code },
                5 => Pkt::PubRec { pid, code },
                6 => Pkt::PubRel { pid },
                _ => Pkt::PubComp { pid },
            }
        }
        9 => {
            let pid = get_u16(body, 0)?;
            let mut at = 2;
            if v5 {
                let (plen, used) = get_varint(body, at)?;
                at += used + plen;
            }
            Pkt::SubAck {
                pid,
                codes: body.get(at..)?.to_vec(),
            }
        }
        11 => Pkt::UnsubAck {
            pid: get_u16(body, 0)?,
        },
        14 => Pkt::Disconnect {
            code: body.first().copied().unwrap_or(0),
        },
        other => Pkt::Other(other),
    })
}

fn enc_connect(client_id: &str, v5: bool, clean: bool) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(b"MQTT", &mut b);
    b.push(if v5 { 5 } else { 4 });
    b.push(if clean { 0x02 } else { 0x00 });
    b.extend_from_slice(&0u16.to_be_bytes()); // no keepalive
    if v5 {
        if clean {
            b.push(0);
        } else {
            // Session Expiry Interval 3600 s.
            b.extend_from_slice(&[5, 0x11]);
            b.extend_from_slice(&3600u32.to_be_bytes());
        }
    }
    put_str(client_id.as_bytes(), &mut b);
    frame(0x10, &b)
}

fn enc_publish(
    v5: bool,
    topic: &str,
    payload: &str,
    qos: u8,
    pid: u16,
    dup: bool,
    retain: bool,
) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(topic.as_bytes(), &mut b);
    if qos > 0 {
        b.extend_from_slice(&pid.to_be_bytes());
    }
    if v5 {
        b.push(0);
    }
    b.extend_from_slice(payload.as_bytes());
    let first = 0x30 | (qos << 1) | if dup { 8 } else { 0 } | u8::from(retain);
    frame(first, &b)
}

/// PUBACK (4), PUBREC (5), PUBREL (6), PUBCOMP (7), success.
fn enc_ack(kind: u8, pid: u16) -> Vec<u8> {
    let first = (kind << 4) | if kind == 6 { 2 } else { 0 };
    frame(first, &pid.to_be_bytes())
}

fn enc_subscribe(v5: bool, pid: u16, filters: &[(String, u8)]) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        b.push(0);
    }
    for (f, qos) in filters {
        put_str(f.as_bytes(), &mut b);
        b.push(*qos);
    }
    frame(0x82, &b)
}

fn enc_unsubscribe(v5: bool, pid: u16, filter: &str) -> Vec<u8> {
    let mut b = pid.to_be_bytes().to_vec();
    if v5 {
        b.push(0);
    }
    put_str(filter.as_bytes(), &mut b);
    frame(0xA2, &b)
}

/// One TCP connection speaking MQTT 3.1.1 or 5.
struct Mqtt {
    stream: TcpStream,
    v5: bool,
    buf: Vec<u8>,
}

impl Mqtt {
    /// Connects and waits for CONNACK: the connection and Session Present.
    fn connect(port: u16, client_id: &str, v5: bool, clean: bool) -> io::Result<(Mqtt, bool)> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut m = Mqtt {
            stream,
            v5,
            buf: Vec::new(),
        };
        m.send(&enc_connect(client_id, v5, clean))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(ErrorKind::TimedOut, "no CONNACK"));
            }
            match m.recv(left)? {
                Some(Pkt::ConnAck {
                    session_present,
                    code,
                }) => {
                    if code != 0 {
                        return Err(io::Error::other(format!("CONNACK refused: {code:#x}")));
                    }
                    return Ok((m, session_present));
                }
                Some(other) => {
                    return Err(io::Error::other(format!("{other:?} before CONNACK")));
                }
                None => {}
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn disconnect(mut self) {
        let _ = self.send(&[0xE0, 0]);
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        // Wait (bounded) for the broker to close, so that the session is offline when we
        // return.
        let _ = self
            .stream
            .set_read_timeout(Some(Duration::from_millis(500)));
        let mut sink = [0u8; 4096];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(1) {
            match self.stream.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    /// The next packet within `wait`; `None` if nothing complete arrived. An error when the
    /// connection is gone or sent something undecodable.
    fn recv(&mut self, wait: Duration) -> io::Result<Option<Pkt>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(p) = self.parse()? {
                return Ok(Some(p));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let mut tmp = [0u8; 16 * 1024];
            match self.stream.read(&mut tmp) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed")),
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn parse(&mut self) -> io::Result<Option<Pkt>> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        let Some((len, used)) = get_varint(&self.buf, 1) else {
            return Ok(None);
        };
        let total = 1 + used + len;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body: Vec<u8> = self.buf[1 + used..total].to_vec();
        self.buf.drain(..total);
        decode(first, &body, self.v5)
            .map(Some)
            .ok_or_else(|| io::Error::other(format!("undecodable packet {first:#x} {body:?}")))
    }
}

// ----- what the clients share and record -----------------------------------------------------

struct Shared {
    port: u16,
    /// Logical clock: SUBACK receipt, first PUBLISH write and ack receipt are ordered by it.
    clock: AtomicU64,
    /// Kills so far.
    round: AtomicUsize,
    stop_publishing: AtomicBool,
    finish: AtomicBool,
    deadline: Instant,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn round(&self) -> usize {
        self.round.load(Ordering::SeqCst)
    }

    fn late(&self) -> bool {
        Instant::now() > self.deadline
    }
}

/// One message a publisher wrote (the first time).
#[derive(Debug, Clone)]
struct Sent {
    payload: String,
    topic: String,
    qos: u8,
    retain: bool,
    /// Clock when the first PUBLISH was written.
    first_sent: u64,
    sent_round: usize,
    /// Clock and round when PUBACK / PUBREC arrived.
    acked: Option<(u64, usize)>,
}

/// MQTT topic matching for the simple filters used here.
fn matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

// ----- publishers ----------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PubKind {
    Qos1,
    Qos2,
    Mixed,
    Retained,
}

const RETAINED_KEYS: u64 = 8;

#[derive(Clone)]
struct PubCfg {
    name: &'static str,
    v5: bool,
    kind: PubKind,
    topic: &'static str,
    /// Unacknowledged messages at most (at most RETAINED_KEYS for retained ones, so a resent
    /// old value never follows a newer one on the same topic).
    window: usize,
    pace: Duration,
    max: usize,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum Stage {
    Sent,
    Received,
}

struct PubState {
    cfg: PubCfg,
    sent: Vec<Sent>,
    /// pid -> (index in `sent`, stage).
    pending: BTreeMap<u16, (usize, Stage)>,
    next_pid: u16,
    established: bool,
    connects: usize,
    resends: usize,
    problems: Vec<String>,
}

impl PubState {
    fn new(cfg: PubCfg) -> PubState {
        PubState {
            cfg,
            sent: Vec::new(),
            pending: BTreeMap::new(),
            next_pid: 0,
            established: false,
            connects: 0,
            resends: 0,
            problems: Vec::new(),
        }
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0 && !self.pending.contains_key(&self.next_pid) {
                return self.next_pid;
            }
        }
    }

    fn problem(&mut self, round: usize, what: String) {
        self.problems.push(format!(
            "publisher {} (round {round}): {what}",
            self.cfg.name
        ));
    }
}

fn run_publisher(cfg: PubCfg, shared: Arc<Shared>, mut rng: Rng) -> PubState {
    let mut st = PubState::new(cfg);
    let v5 = st.cfg.v5;
    let id = st.cfg.name.to_owned();
    'outer: loop {
        if shared.late() {
            let n = st.pending.len();
            st.problem(shared.round(), format!("gave up with {n} unfinished flows"));
            break;
        }
        if shared.stop_publishing.load(Ordering::SeqCst) && st.pending.is_empty() {
            break;
        }
        let Ok((mut c, sp)) = Mqtt::connect(shared.port, &id, v5, false) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        st.connects += 1;
        if st.established && !sp {
            st.problem(
                shared.round(),
                "CONNACK without Session Present for an acknowledged session".into(),
            );
        }
        st.established = true;
        // Resend what is unacknowledged, in the original order, with the original ids.
        let mut order: Vec<(usize, u16, Stage)> =
            st.pending.iter().map(|(p, (i, s))| (*i, *p, *s)).collect();
        order.sort_by_key(|(i, _, _)| *i);
        for (i, pid, stage) in order {
            let bytes = match stage {
                Stage::Sent => {
                    let m = &st.sent[i];
                    enc_publish(v5, &m.topic, &m.payload, m.qos, pid, true, m.retain)
                }
                Stage::Received => enc_ack(6, pid),
            };
            st.resends += 1;
            if c.send(&bytes).is_err() {
                continue 'outer;
            }
        }
        let mut last_publish = Instant::now() - st.cfg.pace;
        loop {
            let stopping = shared.stop_publishing.load(Ordering::SeqCst);
            if stopping && st.pending.is_empty() {
                c.disconnect();
                break 'outer;
            }
            if shared.late() {
                continue 'outer;
            }
            if !stopping
                && st.sent.len() < st.cfg.max
                && st.pending.len() < st.cfg.window
                && last_publish.elapsed() >= st.cfg.pace
            {
                let seq = st.sent.len();
                let (topic, qos, retain) = match st.cfg.kind {
                    PubKind::Qos1 => (st.cfg.topic.to_owned(), 1, false),
                    PubKind::Qos2 => (st.cfg.topic.to_owned(), 2, false),
                    PubKind::Mixed => (st.cfg.topic.to_owned(), rng.range(1, 2) as u8, false),
                    PubKind::Retained => (
                        format!("r/{}", seq as u64 % RETAINED_KEYS),
                        rng.range(1, 2) as u8,
                        true,
                    ),
                };
                let payload = format!("{}:{seq}", st.cfg.name);
                let pid = st.alloc_pid();
                let bytes = enc_publish(v5, &topic, &payload, qos, pid, false, retain);
                st.sent.push(Sent {
                    payload,
                    topic,
                    qos,
                    retain,
                    first_sent: shared.tick(),
                    sent_round: shared.round(),
                    acked: None,
                });
                st.pending.insert(pid, (seq, Stage::Sent));
                last_publish = Instant::now();
                if c.send(&bytes).is_err() {
                    continue 'outer;
                }
            }
            let wait = if stopping {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(1)
            };
            let pkt = match c.recv(wait) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(_) => continue 'outer,
            };
            let round = shared.round();
            let reply = match pkt {
                Pkt::PubAck { pid, code } => {
                    match st.pending.get(&pid).copied() {
                        Some((i, Stage::Sent)) if st.sent[i].qos == 1 => {
                            st.pending.remove(&pid);
                            if code < 0x80 {
                                st.sent[i].acked = Some((shared.tick(), round));
                            } else {
                                let p = st.sent[i].payload.clone();
                                st.problem(round, format!("PUBACK {code:#x} for {p}"));
                            }
                        }
                        other => st.problem(round, format!("PUBACK {pid} for {other:?}")),
                    }
                    None
                }
                Pkt::PubRec { pid, code } => match st.pending.get(&pid).copied() {
                    Some((i, Stage::Sent)) if st.sent[i].qos == 2 => {
                        if code < 0x80 {
                            st.sent[i].acked = Some((shared.tick(), round));
                            st.pending.insert(pid, (i, Stage::Received));
                            Some(enc_ack(6, pid))
                        } else {
                            st.pending.remove(&pid);
                            let p = st.sent[i].payload.clone();
                            st.problem(round, format!("PUBREC {code:#x} for {p}"));
                            None
                        }
                    }
                    Some((_, Stage::Received)) => Some(enc_ack(6, pid)),
                    other => {
                        st.problem(round, format!("PUBREC {pid} for {other:?}"));
                        None
                    }
                },
                Pkt::PubComp { pid } => {
                    match st.pending.get(&pid).copied() {
                        Some((_, Stage::Received)) => {
                            st.pending.remove(&pid);
                        }
                        other => st.problem(round, format!("PUBCOMP {pid} for {other:?}")),
                    }
                    None
                }
                Pkt::Disconnect { .. } => continue 'outer,
                other => {
                    st.problem(round, format!("unexpected {other:?}"));
                    None
                }
            };
            if let Some(bytes) = reply
                && c.send(&bytes).is_err()
            {
                continue 'outer;
            }
        }
    }
    st
}

// ----- subscribers ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Connected through the rounds, reconnecting after each kill.
    Online,
    /// Subscribes at the start, then offline until the end.
    Offline,
    /// Connects and disconnects at random; unsubscribes `t/a` from round 2 on.
    Flap,
    /// Creates its session and subscribes in round 2, then offline until the end.
    Late,
}

#[derive(Debug, Clone)]
struct Filter {
    filter: String,
    /// Granted QoS.
    qos: u8,
    suback_at: Option<u64>,
    /// Clock at the first UNSUBSCRIBE written, and at its UNSUBACK.
    unsub_sent_at: Option<u64>,
    unsuback_at: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Delivery {
    qos: u8,
    dup: bool,
    round: usize,
    final_phase: bool,
}

struct SubState {
    id: String,
    v5: bool,
    role: Role,
    filters: Vec<Filter>,
    /// QoS 2 packet ids received and not yet released, with the payload delivered for them.
    awaiting: HashMap<u16, String>,
    deliveries: HashMap<String, Vec<Delivery>>,
    /// A CONNACK was received for this persistent session: later ones must say Session
    /// Present.
    established: bool,
    connects: usize,
    dup_suppressed: usize,
    problems: Vec<String>,
    final_phase: bool,
}

impl SubState {
    fn new(id: &str, v5: bool, role: Role, filters: &[(&str, u8)]) -> SubState {
        SubState {
            id: id.to_owned(),
            v5,
            role,
            filters: filters
                .iter()
                .map(|(f, q)| Filter {
                    filter: (*f).to_owned(),
                    qos: *q,
                    suback_at: None,
                    unsub_sent_at: None,
                    unsuback_at: None,
                })
                .collect(),
            awaiting: HashMap::new(),
            deliveries: HashMap::new(),
            established: false,
            connects: 0,
            dup_suppressed: 0,
            problems: Vec::new(),
            final_phase: false,
        }
    }

    fn problem(&mut self, round: usize, what: String) {
        self.problems
            .push(format!("subscriber {} (round {round}): {what}", self.id));
    }

    fn connect(&mut self, shared: &Shared) -> Option<Mqtt> {
        let (c, sp) = Mqtt::connect(shared.port, &self.id, self.v5, false).ok()?;
        self.connects += 1;
        if self.established && !sp {
            self.problem(
                shared.round(),
                "CONNACK without Session Present for an acknowledged session".into(),
            );
            // A receiver whose session is gone starts afresh.
            self.awaiting.clear();
        }
        self.established = true;
        Some(c)
    }

    /// Handles one packet as a QoS 2 receiver. Returns SUBACK / UNSUBACK to the caller.
    fn on_packet(&mut self, c: &mut Mqtt, pkt: Pkt, round: usize) -> io::Result<Option<Pkt>> {
        match pkt {
            Pkt::Publish {
                topic,
                payload,
                qos,
                dup,
                pid,
            } => {
                if qos == 2
                    && let Some(held) = self.awaiting.get(&pid)
                {
                    // Still awaiting PUBREL for this id: the same message again.
                    if *held != payload {
                        let held = held.clone();
                        self.problem(
                            round,
                            format!(
                                "PUBLISH pid {pid} carries {payload} (dup={dup}, {topic}) while \
                                 {held} awaits PUBREL under that id"
                            ),
                        );
                    }
                    self.dup_suppressed += 1;
                } else {
                    if !topic.starts_with("t/") {
                        self.problem(round, format!("message on unexpected topic {topic}"));
                    }
                    self.deliveries
                        .entry(payload.clone())
                        .or_default()
                        .push(Delivery {
                            qos,
                            dup,
                            round,
                            final_phase: self.final_phase,
                        });
                    if qos == 2 {
                        self.awaiting.insert(pid, payload);
                    }
                }
                match qos {
                    1 => c.send(&enc_ack(4, pid))?,
                    2 => c.send(&enc_ack(5, pid))?,
                    _ => {}
                }
                Ok(None)
            }
            Pkt::PubRel { pid } => {
                self.awaiting.remove(&pid);
                c.send(&enc_ack(7, pid))?;
                Ok(None)
            }
            Pkt::SubAck { .. } | Pkt::UnsubAck { .. } => Ok(Some(pkt)),
            Pkt::Disconnect { code } => Err(io::Error::other(format!("DISCONNECT {code:#x}"))),
            Pkt::Other(kind) => {
                self.problem(round, format!("unexpected packet type {kind}"));
                Ok(None)
            }
            other => {
                self.problem(round, format!("unexpected {other:?}"));
                Ok(None)
            }
        }
    }

    /// Connects and subscribes to every filter without a SUBACK yet; true once SUBACKed.
    fn subscribe(&mut self, shared: &Shared) -> Option<Mqtt> {
        let mut c = self.connect(shared)?;
        let want: Vec<(String, u8)> = self
            .filters
            .iter()
            .map(|f| (f.filter.clone(), f.qos))
            .collect();
        c.send(&enc_subscribe(self.v5, 1, &want)).ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let round = shared.round();
            let pkt = c.recv(Duration::from_millis(50)).ok()?;
            let Some(pkt) = pkt else { continue };
            if let Some(Pkt::SubAck { pid: 1, codes }) = self.on_packet(&mut c, pkt, round).ok()? {
                let at = shared.tick();
                if codes.len() != self.filters.len() {
                    self.problem(round, format!("SUBACK with {codes:?}"));
                }
                for (f, code) in self.filters.iter_mut().zip(codes) {
                    if code <= 2 {
                        f.qos = code;
                        f.suback_at = Some(at);
                    }
                }
                if self.filters.iter().any(|f| f.suback_at.is_none()) {
                    let filters = self.filters.clone();
                    self.problem(round, format!("SUBACK refused a filter: {filters:?}"));
                }
                return Some(c);
            }
        }
        None
    }

    /// Reads and answers until `until` says stop (checked between packets) or the connection
    /// ends: true when `until` stopped it.
    fn pump(
        &mut self,
        c: &mut Mqtt,
        shared: &Shared,
        mut until: impl FnMut(&Self) -> bool,
    ) -> bool {
        loop {
            if until(self) {
                return true;
            }
            let round = shared.round();
            let pkt = match c.recv(Duration::from_millis(20)) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(_) => return false,
            };
            match self.on_packet(c, pkt, round) {
                Ok(Some(Pkt::UnsubAck { pid: 2 })) => {
                    let at = shared.tick();
                    for f in &mut self.filters {
                        if f.unsub_sent_at.is_some() && f.unsuback_at.is_none() {
                            f.unsuback_at = Some(at);
                        }
                    }
                }
                Ok(Some(other)) => self.problem(round, format!("unexpected {other:?}")),
                Ok(None) => {}
                Err(_) => return false,
            }
        }
    }
}

/// The rounds' life of an online or flapping subscriber.
fn run_subscriber(mut st: SubState, shared: Arc<Shared>, mut rng: Rng) -> SubState {
    while !shared.finish.load(Ordering::SeqCst) && !shared.late() {
        let Some(mut c) = st.connect(&shared) else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let mut stay = None;
        if st.role == Role::Flap {
            stay = Some(Instant::now() + Duration::from_millis(rng.range(50, 600)));
            if shared.round() >= 2
                && let Some(f) = st
                    .filters
                    .iter_mut()
                    .find(|f| f.filter == "t/a" && f.unsuback_at.is_none())
            {
                let bytes = enc_unsubscribe(st.v5, 2, &f.filter);
                if f.unsub_sent_at.is_none() {
                    f.unsub_sent_at = Some(shared.tick());
                }
                if c.send(&bytes).is_err() {
                    continue;
                }
            }
        }
        let stopped = st.pump(&mut c, &shared, |_| {
            shared.finish.load(Ordering::SeqCst)
                || shared.late()
                || stay.is_some_and(|s| Instant::now() > s)
        });
        if stopped {
            c.disconnect();
            if st.role == Role::Flap && !shared.finish.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(rng.range(50, 600)));
            }
        }
    }
    st
}

/// A late subscriber: creates its session and subscribes (retrying through kills), then
/// goes offline.
fn run_late(mut st: SubState, shared: Arc<Shared>) -> SubState {
    while !shared.late() {
        if let Some(c) = st.subscribe(&shared) {
            c.disconnect();
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    st
}

/// The final drain: reconnect (Session Present must be 1), receive until every required
/// message arrived and nothing more came for a while.
fn run_drain(
    mut st: SubState,
    required: HashSet<String>,
    strict: bool,
    shared: Arc<Shared>,
) -> SubState {
    st.final_phase = true;
    let deadline = Instant::now() + Duration::from_secs(20);
    let quiet = Duration::from_millis(800);
    loop {
        if Instant::now() > deadline {
            let missing = required
                .iter()
                .filter(|p| !st.deliveries.contains_key(*p))
                .count();
            let awaiting = st.awaiting.len();
            st.problem(
                shared.round(),
                format!(
                    "final drain timed out ({missing} required messages missing, \
                     {awaiting} QoS 2 ids never released)"
                ),
            );
            return st;
        }
        let was_established = st.established;
        let Some(mut c) = st.connect(&shared) else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        if !was_established {
            st.problem(
                shared.round(),
                "never had a session before the drain".into(),
            );
        }
        let mut seen = st.deliveries.values().map(Vec::len).sum::<usize>() + st.dup_suppressed;
        let mut last_change = Instant::now();
        let done = st.pump(&mut c, &shared, |s| {
            let now = s.deliveries.values().map(Vec::len).sum::<usize>() + s.dup_suppressed;
            if now != seen {
                seen = now;
                last_change = Instant::now();
            }
            let complete = (s.awaiting.is_empty() || !strict)
                && required.iter().all(|p| s.deliveries.contains_key(p));
            (complete && last_change.elapsed() > quiet) || Instant::now() > deadline
        });
        if done {
            c.disconnect();
            if Instant::now() > deadline {
                continue;
            }
            return st;
        }
    }
}

// ----- the broker ----------------------------------------------------------------------------

struct Cluster {
    dir: Dir,
    port: u16,
    conf: PathBuf,
    starts: usize,
    running: Option<Running>,
    /// "store recovered: ..." of every start.
    recovered: Vec<String>,
    problems: Vec<String>,
}

impl Cluster {
    fn new(name: &str, sync: &str) -> Cluster {
        let dir = Dir::new(name);
        let port = free_port();
        let conf = dir.file("tidemq.conf");
        let data = dir.file("data");
        std::fs::write(
            &conf,
            format!(
                "listeners.tcp.bind = \"127.0.0.1:{port}\"\n\
                 log.level = info\n\
                 mqtt.max_mqueue_len = 1000000\n\
                 persistence {{\n\
                 \x20 data_dir = \"{}\"\n\
                 \x20 sync = {sync}\n\
                 \x20 flush_interval = 5ms\n\
                 \x20 segment_size = 64KB\n\
                 \x20 snapshot_threshold = 128KB\n\
                 }}\n",
                data.display()
            ),
        )
        .unwrap();
        Cluster {
            dir,
            port,
            conf,
            starts: 0,
            running: None,
            recovered: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.file(&format!("broker-{n}.log"))
    }

    fn start(&mut self) {
        let n = self.starts;
        self.starts += 1;
        let log = self.log_path(n);
        let running = start(&self.conf, &self.dir.file("tidemq.pid"), &log, self.port);
        // The log is written asynchronously: give the line a moment.
        let waited = Instant::now();
        loop {
            let text = running.log();
            if let Some(line) = text.lines().find(|l| l.contains("store recovered")) {
                self.recovered.push(line.to_owned());
                break;
            }
            if waited.elapsed() > Duration::from_secs(5) {
                self.problems
                    .push(format!("start {n}: no \"store recovered\" line in the log"));
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.running = Some(running);
    }

    /// SIGKILL. A broker that already exited by itself is a problem.
    fn kill(&mut self) {
        let Some(mut running) = self.running.take() else {
            return;
        };
        if let Ok(Some(status)) = running.child.try_wait() {
            self.problems.push(format!(
                "start {}: the broker exited by itself ({status}):\n{}",
                self.starts - 1,
                running.log()
            ));
        }
        running.child.kill().unwrap();
        running.child.wait().unwrap();
    }

    /// Every log line that speaks of damage, corruption, a panic or an error.
    fn log_alarms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for n in 0..self.starts {
            let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
            for line in text.lines() {
                let lower = line.to_ascii_lowercase();
                if lower.contains("corrupt")
                    || lower.contains("damaged")
                    || lower.contains("panicked")
                    || lower.contains("store write failed")
                    || line.contains("ERROR")
                {
                    out.push(format!("broker-{n}.log: {line}"));
                }
            }
        }
        out
    }

    fn count_in_logs(&self, what: &str) -> usize {
        (0..self.starts)
            .map(|n| {
                std::fs::read_to_string(self.log_path(n))
                    .unwrap_or_default()
                    .matches(what)
                    .count()
            })
            .sum()
    }

    /// Copies the data directory and logs somewhere that outlives the test.
    fn keep(&self, label: &str) -> PathBuf {
        let to = std::env::temp_dir().join(format!(
            "tidemq-persist-failure-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&to);
        copy_dir(&self.dir.0, &to);
        to
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_dir(&path, &dest);
        } else {
            let _ = std::fs::copy(&path, &dest);
        }
    }
}

// ----- the scenario --------------------------------------------------------------------------

struct Params {
    name: &'static str,
    sync: &'static str,
    kills: usize,
    /// Check delivery guarantees (fsync, os); with `none` only that restarts work.
    strict: bool,
}

fn publisher_cfgs() -> Vec<PubCfg> {
    let p = |name, v5, kind, topic, window| PubCfg {
        name,
        v5,
        kind,
        topic,
        window,
        pace: Duration::from_millis(3),
        max: 2500,
    };
    vec![
        p("pa", false, PubKind::Qos1, "t/a", 8),
        p("pb", false, PubKind::Qos2, "t/b", 8),
        p("pc", true, PubKind::Mixed, "t/c", 8),
        p("pr", false, PubKind::Retained, "", RETAINED_KEYS as usize),
    ]
}

/// Publishes the final probes with a clean session and waits for every flow to finish.
fn publish_probes(port: u16, shared: &Shared) -> Vec<Sent> {
    let (mut c, _) = Mqtt::connect(port, "probe", false, true).unwrap();
    let probes = [("t/a", 1u8), ("t/b", 2), ("t/c", 2), ("t/c", 1)];
    let mut sent = Vec::new();
    let mut open = HashSet::new();
    for (i, (topic, qos)) in probes.iter().enumerate() {
        let pid = i as u16 + 1;
        let payload = format!("probe:{i}");
        sent.push(Sent {
            payload: payload.clone(),
            topic: (*topic).to_owned(),
            qos: *qos,
            retain: false,
            first_sent: shared.tick(),
            sent_round: shared.round(),
            acked: None,
        });
        c.send(&enc_publish(
            false, topic, &payload, *qos, pid, false, false,
        ))
        .unwrap();
        open.insert(pid);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "probe flows did not finish");
        match c.recv(Duration::from_millis(100)).unwrap() {
            Some(Pkt::PubAck { pid, .. }) => {
                sent[usize::from(pid) - 1].acked = Some((shared.tick(), shared.round()));
                open.remove(&pid);
            }
            Some(Pkt::PubRec { pid, .. }) => {
                sent[usize::from(pid) - 1].acked = Some((shared.tick(), shared.round()));
                c.send(&enc_ack(6, pid)).unwrap();
            }
            Some(Pkt::PubComp { pid }) => {
                open.remove(&pid);
            }
            Some(other) => panic!("probe publisher: unexpected {other:?}"),
            None => {}
        }
    }
    c.disconnect();
    sent
}

/// The retained values: topic -> payload, read with a fresh clean session.
fn read_retained(port: u16) -> BTreeMap<String, String> {
    let (mut c, _) = Mqtt::connect(port, "retained-check", false, true).unwrap();
    c.send(&enc_subscribe(false, 1, &[("r/#".to_owned(), 1)]))
        .unwrap();
    let mut out = BTreeMap::new();
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_millis(700) {
        match c.recv(Duration::from_millis(50)).unwrap() {
            Some(Pkt::Publish {
                topic,
                payload,
                qos,
                pid,
                ..
            }) => {
                if qos == 1 {
                    c.send(&enc_ack(4, pid)).unwrap();
                }
                out.insert(topic, payload);
                last = Instant::now();
            }
            Some(_) => last = Instant::now(),
            None => {}
        }
    }
    c.disconnect();
    out
}

fn seq_of(payload: &str) -> Option<u64> {
    payload.rsplit_once(':')?.1.parse().ok()
}

fn scenario(p: &Params) {
    let started = Instant::now();
    let seed = seed();
    eprintln!(
        "[{}] seed = {seed} (replay: TIDEMQ_PERSIST_SEED={seed})",
        p.name
    );
    let kills = std::env::var("TIDEMQ_PERSIST_KILLS")
        .ok()
        .and_then(|k| k.trim().parse().ok())
        .unwrap_or(p.kills);
    let mut rng = Rng::new(seed);
    let mut cluster = Cluster::new(p.name, p.sync);
    cluster.start();
    let shared = Arc::new(Shared {
        port: cluster.port,
        clock: AtomicU64::new(0),
        round: AtomicUsize::new(0),
        stop_publishing: AtomicBool::new(false),
        finish: AtomicBool::new(false),
        deadline: Instant::now() + Duration::from_secs(60 + 4 * kills as u64),
    });

    // Subscribers that exist from the start: subscribed (SUBACK received) before anything is
    // published.
    let specs: Vec<SubState> = vec![
        SubState::new("s3-on", false, Role::Online, &[("t/#", 2)]),
        SubState::new(
            "s5-on",
            true,
            Role::Online,
            &[("t/a", 2), ("t/b", 2), ("t/c", 1)],
        ),
        SubState::new("s3-off", false, Role::Offline, &[("t/#", 2)]),
        SubState::new("s5-off", true, Role::Offline, &[("t/+", 1)]),
        SubState::new("s3-flap", false, Role::Flap, &[("t/a", 1), ("t/b", 2)]),
    ];
    let mut offline = Vec::new();
    let mut sub_threads: Vec<JoinHandle<SubState>> = Vec::new();
    for mut st in specs {
        let c = st
            .subscribe(&shared)
            .unwrap_or_else(|| panic!("{}: initial SUBSCRIBE failed", st.id));
        c.disconnect();
        match st.role {
            Role::Offline => offline.push(st),
            _ => {
                let sh = shared.clone();
                let r = Rng::fork(seed, &st.id);
                sub_threads.push(thread::spawn(move || run_subscriber(st, sh, r)));
            }
        }
    }
    let mut pub_threads = Vec::new();
    for cfg in publisher_cfgs() {
        let sh = shared.clone();
        let r = Rng::fork(seed, cfg.name);
        pub_threads.push(thread::spawn(move || run_publisher(cfg, sh, r)));
    }

    // The kills.
    let mut late_thread = None;
    let mut kill_at = Vec::new();
    for k in 0..kills {
        if k == 2 {
            let st = SubState::new("s5-late", true, Role::Late, &[("t/#", 2)]);
            let sh = shared.clone();
            late_thread = Some(thread::spawn(move || run_late(st, sh)));
        }
        // Mostly in the middle of traffic, sometimes right after the restart (while clients
        // reconnect and resend).
        let ms = if rng.chance(20) {
            rng.range(0, 60)
        } else {
            rng.range(100, 2000)
        };
        thread::sleep(Duration::from_millis(ms));
        cluster.kill();
        // What the kill left, for a failure report (the next snapshot compacts it away).
        copy_dir(
            &cluster.dir.file("data"),
            &cluster.dir.file(&format!("data-at-kill-{k}")),
        );
        kill_at.push(ms);
        shared.round.fetch_add(1, Ordering::SeqCst);
        thread::sleep(Duration::from_millis(rng.range(0, 150)));
        cluster.start();
    }

    // The end: publishers finish their flows and stop.
    shared.stop_publishing.store(true, Ordering::SeqCst);
    let pubs: Vec<PubState> = pub_threads.into_iter().map(|t| t.join().unwrap()).collect();
    shared.finish.store(true, Ordering::SeqCst);
    let mut subs: Vec<SubState> = sub_threads.into_iter().map(|t| t.join().unwrap()).collect();
    if let Some(t) = late_thread {
        subs.push(t.join().unwrap());
    }
    subs.append(&mut offline);
    let traffic_done = started.elapsed();

    // Probes after the final restart: every subscription must still route.
    let probes = publish_probes(cluster.port, &shared);
    let mut messages: Vec<Sent> = pubs.iter().flat_map(|p| p.sent.iter().cloned()).collect();
    messages.extend(probes);
    let by_payload: HashMap<&str, &Sent> =
        messages.iter().map(|m| (m.payload.as_str(), m)).collect();

    let required_for = |st: &SubState| -> HashSet<String> {
        if !p.strict {
            return HashSet::new();
        }
        messages
            .iter()
            .filter(|m| {
                m.acked.is_some()
                    && !m.retain
                    && st.filters.iter().any(|f| {
                        matches(&f.filter, &m.topic)
                            && f.unsub_sent_at.is_none()
                            && f.suback_at.is_some_and(|at| m.first_sent > at)
                    })
            })
            .map(|m| m.payload.clone())
            .collect()
    };
    let drains: Vec<JoinHandle<SubState>> = subs
        .into_iter()
        .map(|st| {
            let required = required_for(&st);
            let sh = shared.clone();
            let strict = p.strict;
            thread::spawn(move || run_drain(st, required, strict, sh))
        })
        .collect();
    let subs: Vec<SubState> = drains.into_iter().map(|t| t.join().unwrap()).collect();
    let retained = read_retained(cluster.port);
    let elapsed = started.elapsed();

    // ----- checks -----
    let mut problems: Vec<String> = cluster.problems.clone();
    for pst in &pubs {
        problems.extend(pst.problems.iter().cloned());
    }
    let mut summary = String::new();
    let _ = writeln!(
        summary,
        "[{}] sync={} seed={seed}: {} kills after {:?} ms; traffic {:.1?}, total {:.1?}",
        p.name, p.sync, kills, kill_at, traffic_done, elapsed
    );
    for pst in &pubs {
        let acked = pst.sent.iter().filter(|m| m.acked.is_some()).count();
        let acked_before_kill = pst
            .sent
            .iter()
            .filter(|m| m.acked.is_some_and(|(_, r)| r < kills))
            .count();
        let q2 = pst
            .sent
            .iter()
            .filter(|m| m.acked.is_some() && m.qos == 2)
            .count();
        let _ = writeln!(
            summary,
            "  publisher {}: {} sent, {acked} acknowledged ({q2} QoS 2; {acked_before_kill} \
             before the last kill), {} connects, {} resends",
            pst.cfg.name,
            pst.sent.len(),
            pst.connects,
            pst.resends
        );
    }
    for st in &subs {
        problems.extend(st.problems.iter().cloned());
        let required = required_for(st);
        let mut missing = Vec::new();
        let mut duplicates_q1 = 0usize;
        let mut exactly_once_broken = Vec::new();
        for (payload, ds) in &st.deliveries {
            let Some(m) = by_payload.get(payload.as_str()) else {
                problems.push(format!(
                    "subscriber {}: delivery of {payload}, which nobody published",
                    st.id
                ));
                continue;
            };
            let matching: Vec<&Filter> = st
                .filters
                .iter()
                .filter(|f| matches(&f.filter, &m.topic))
                .collect();
            let sub_qos = matching.iter().map(|f| f.qos).max().unwrap_or(0);
            if matching.is_empty() {
                problems.push(format!(
                    "subscriber {}: {payload} on {} matches none of its filters",
                    st.id, m.topic
                ));
            }
            // After UNSUBACK (and with no other filter), nothing published later may arrive.
            if !matching.is_empty()
                && matching
                    .iter()
                    .all(|f| f.unsuback_at.is_some_and(|at| m.first_sent > at))
            {
                problems.push(format!(
                    "subscriber {}: {payload} (first sent at clock {}) delivered although \
                     every matching filter was UNSUBACKed before ({matching:?}); deliveries \
                     {ds:?}",
                    st.id, m.first_sent
                ));
            }
            for d in ds {
                if d.qos > m.qos.min(sub_qos) {
                    problems.push(format!(
                        "subscriber {}: {payload} (QoS {}) delivered at QoS {}",
                        st.id, m.qos, d.qos
                    ));
                }
            }
            if ds.len() > 1 {
                if m.qos == 2 && sub_qos == 2 {
                    let how: Vec<String> = ds
                        .iter()
                        .map(|d| {
                            format!(
                                "QoS {} dup={} in round {}{}",
                                d.qos,
                                d.dup,
                                d.round,
                                if d.final_phase { " (final drain)" } else { "" }
                            )
                        })
                        .collect();
                    exactly_once_broken.push(format!(
                        "{payload} (topic {}, first sent in round {}, acknowledged in round \
                         {:?}) delivered {} times: {how:?}",
                        m.topic,
                        m.sent_round,
                        m.acked.map(|a| a.1),
                        ds.len()
                    ));
                } else {
                    duplicates_q1 += ds.len() - 1;
                }
            }
        }
        if p.strict {
            for m in &messages {
                if required.contains(&m.payload) && !st.deliveries.contains_key(&m.payload) {
                    missing.push(m);
                }
            }
            missing.sort_by_key(|m| m.first_sent);
            for m in &missing {
                problems.push(format!(
                    "subscriber {}: LOST {} (topic {}, QoS {}, first sent in round {}, \
                     acknowledged in round {:?}, clock {} / {:?})",
                    st.id,
                    m.payload,
                    m.topic,
                    m.qos,
                    m.sent_round,
                    m.acked.map(|a| a.1),
                    m.first_sent,
                    m.acked.map(|a| a.0)
                ));
            }
            for e in &exactly_once_broken {
                problems.push(format!(
                    "subscriber {}: QoS 2 delivered more than once: {e}",
                    st.id
                ));
            }
            if !st.awaiting.is_empty() {
                problems.push(format!(
                    "subscriber {}: QoS 2 ids never released: {:?}",
                    st.id, st.awaiting
                ));
            }
        }
        let delivered: usize = st.deliveries.values().map(Vec::len).sum();
        let q2_distinct = st
            .deliveries
            .iter()
            .filter(|(_, ds)| ds.iter().any(|d| d.qos == 2))
            .count();
        let with_dup = st.deliveries.values().flatten().filter(|d| d.dup).count();
        let in_final = st
            .deliveries
            .values()
            .flatten()
            .filter(|d| d.final_phase)
            .count();
        let _ = writeln!(
            summary,
            "  subscriber {} ({:?}, v{}): {} required, {delivered} deliveries ({} distinct, \
             {q2_distinct} at QoS 2, {in_final} in the final drain, {with_dup} with DUP), \
             {duplicates_q1} QoS 1 duplicates, {} QoS 2 resends suppressed, {} connects, filters {:?}",
            st.id,
            st.role,
            if st.v5 { 5 } else { 3 },
            required.len(),
            st.deliveries.len(),
            st.dup_suppressed,
            st.connects,
            st.filters
                .iter()
                .map(|f| format!(
                    "{}@{}{}",
                    f.filter,
                    f.qos,
                    if f.unsuback_at.is_some() {
                        " (unsubscribed)"
                    } else if f.unsub_sent_at.is_some() {
                        " (unsubscribe unconfirmed)"
                    } else {
                        ""
                    }
                ))
                .collect::<Vec<_>>()
        );
    }

    // Retained: the last acknowledged value or a later one, on every topic.
    let pr = pubs.iter().find(|s| s.cfg.kind == PubKind::Retained);
    if let Some(pr) = pr.filter(|_| p.strict) {
        let mut last_acked: BTreeMap<&str, u64> = BTreeMap::new();
        let mut sent_on: HashMap<&str, HashSet<u64>> = HashMap::new();
        for m in &pr.sent {
            let seq = seq_of(&m.payload).unwrap();
            sent_on.entry(&m.topic).or_default().insert(seq);
            if m.acked.is_some() {
                let e = last_acked.entry(&m.topic).or_insert(seq);
                *e = (*e).max(seq);
            }
        }
        for (topic, want) in &last_acked {
            match retained.get(*topic) {
                None => problems.push(format!(
                    "retained {topic}: nothing retained, last acknowledged pr:{want}"
                )),
                Some(payload) => {
                    let got = seq_of(payload);
                    let known = got.is_some_and(|g| sent_on[*topic].contains(&g));
                    if !known || got.is_some_and(|g| g < *want) {
                        problems.push(format!(
                            "retained {topic}: holds {payload}, last acknowledged pr:{want}"
                        ));
                    }
                }
            }
        }
        let _ = writeln!(
            summary,
            "  retained: {} topics checked, values {:?}",
            last_acked.len(),
            retained
        );
    }

    let alarms = cluster.log_alarms();
    problems.extend(alarms);
    let _ = writeln!(
        summary,
        "  broker: {} starts, {} snapshots written, {} torn tails cut",
        cluster.starts,
        cluster.count_in_logs("store: snapshot written"),
        cluster.count_in_logs("torn tail removed")
    );
    for (i, line) in cluster.recovered.iter().enumerate() {
        let at = line.find("store recovered").unwrap_or(0);
        let _ = writeln!(summary, "  start {i}: {}", &line[at..]);
    }
    eprintln!("{summary}");

    if !p.strict {
        // `sync = none` promises nothing across a kill: only report what was lost.
        let soft = problems.len();
        problems.retain(|pr| {
            pr.contains("broker exited")
                || pr.contains("store recovered")
                || pr.contains(".log: ")
                || pr.contains("final drain timed out")
        });
        eprintln!(
            "[{}] {} delivery differences tolerated with sync = none",
            p.name,
            soft - problems.len()
        );
    }
    if !problems.is_empty() {
        let kept = cluster.keep(p.name);
        let mut text = String::new();
        let kinds = [
            ("acknowledged messages lost", "LOST"),
            ("QoS 2 deliveries duplicated", "delivered more than once"),
            ("deliveries after UNSUBACK", "UNSUBACKed before"),
            ("sessions lost", "without Session Present"),
            ("retained values lost", "retained "),
        ];
        for (what, needle) in kinds {
            let n = problems.iter().filter(|p| p.contains(needle)).count();
            if n > 0 {
                let _ = writeln!(text, "  {n} {what}");
            }
        }
        for pr in problems.iter().take(60) {
            let _ = writeln!(text, "  {pr}");
        }
        panic!(
            "[{}] seed {seed}: {} problems (data dir and logs kept in {}):\n{text}",
            p.name,
            problems.len(),
            kept.display()
        );
    }
}

#[test]
fn kill9_fsync_keeps_every_acknowledged_message() {
    scenario(&Params {
        name: "persist-fsync",
        sync: "fsync",
        kills: 8,
        strict: true,
    });
}

#[test]
fn kill9_os_keeps_every_acknowledged_message() {
    scenario(&Params {
        name: "persist-os",
        sync: "os",
        kills: 8,
        strict: true,
    });
}

#[test]
fn kill9_sync_none_restarts_cleanly() {
    scenario(&Params {
        name: "persist-none",
        sync: "none",
        kills: 6,
        strict: false,
    });
}

// ----- the disk cap --------------------------------------------------------------------------

/// The next PUBACK/PUBREC on `m` (other packets skipped): its packet id and reason code.
fn ack_of(m: &mut Mqtt) -> (u16, u8) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(Pkt::PubAck { pid, code } | Pkt::PubRec { pid, code }) = m
            .recv(Duration::from_millis(200))
            .expect("the connection stays")
        {
            return (pid, code);
        }
    }
    panic!("no acknowledgement within 10 s");
}

/// A QoS 1 publish and its PUBACK's reason code.
fn publish_q1(m: &mut Mqtt, pid: u16, topic: &str, payload: &str) -> u8 {
    m.send(&enc_publish(true, topic, payload, 1, pid, false, false))
        .unwrap();
    let (got, code) = ack_of(m);
    assert_eq!(got, pid);
    code
}

/// `persistence.max_disk` against the real binary: QoS 1 messages for an offline persistent
/// session fill a 1 MB store until the broker answers 0x97 (while a clean subscriber still
/// gets its QoS 1 messages and new persistent sessions are refused); the session drains, the
/// broker compacts, and publishes are accepted again; a kill -9 then restarts on the journal.
#[test]
fn at_max_disk_durable_work_is_refused_and_accepted_again_after_compaction() {
    let dir = Dir::new("persist-max-disk");
    let port = free_port();
    let conf = dir.file("tidemq.conf");
    let data = dir.file("data");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{port}\"\n\
             log.level = info\n\
             mqtt.max_mqueue_len = 100000\n\
             persistence {{\n\
             \x20 data_dir = \"{}\"\n\
             \x20 sync = fsync\n\
             \x20 flush_interval = 2ms\n\
             \x20 segment_size = 64KB\n\
             \x20 snapshot_threshold = 64MB\n\
             \x20 max_disk = 1MB\n\
             }}\n",
            data.display()
        ),
    )
    .unwrap();
    let disk_use = || -> u64 {
        std::fs::read_dir(&data)
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    };
    let log = dir.file("broker-0.log");
    let broker = start(&conf, &dir.file("tidemq.pid"), &log, port);

    let (s, _) = Mqtt::connect(port, "keeper", true, false).unwrap();
    let mut s = s;
    s.send(&enc_subscribe(true, 1, &[("fill/#".to_owned(), 1)]))
        .unwrap();
    assert!(matches!(
        s.recv(Duration::from_secs(5)).unwrap(),
        Some(Pkt::SubAck { codes, .. }) if codes == vec![1]
    ));
    s.disconnect();
    let (mut c, _) = Mqtt::connect(port, "clean-reader", true, true).unwrap();
    c.send(&enc_subscribe(true, 1, &[("clean/t".to_owned(), 1)]))
        .unwrap();
    assert!(matches!(
        c.recv(Duration::from_secs(5)).unwrap(),
        Some(Pkt::SubAck { codes, .. }) if codes == vec![1]
    ));
    let (mut p, _) = Mqtt::connect(port, "filler", true, true).unwrap();

    // Fill: 8 KB messages until the broker says 0x97.
    let body = "x".repeat(8 * 1024);
    let mut pid = 0u16;
    let mut accepted = 0;
    let refused = loop {
        pid += 1;
        assert!(pid < 2000, "no 0x97 after {accepted} messages");
        match publish_q1(&mut p, pid, &format!("fill/{pid}"), &body) {
            0 => accepted += 1,
            code => break code,
        }
    };
    assert_eq!(refused, 0x97);
    assert!(accepted >= 64, "refused after only {accepted} messages");
    // The compaction at the cap needs the snapshot's room beside the segments it replaces
    // for a moment; then the store is the snapshot and a fresh segment.
    let peak = disk_use();
    thread::sleep(Duration::from_millis(500));
    let at_cap = disk_use();
    eprintln!("refused after {accepted} messages; store {peak} then {at_cap} bytes");
    assert!(peak <= 2 * ((1 << 20) + (1 << 18)), "{peak} bytes");
    assert!(at_cap <= (1 << 20) + (1 << 18), "{at_cap} bytes");
    // Refused again; non-durable work goes on.
    pid += 1;
    assert_eq!(publish_q1(&mut p, pid, "fill/again", &body), 0x97);
    pid += 1;
    assert_eq!(publish_q1(&mut p, pid, "clean/t", "to a clean session"), 0);
    assert!(matches!(
        c.recv(Duration::from_secs(5)).unwrap(),
        Some(Pkt::Publish { payload, .. }) if payload == "to a clean session"
    ));
    let err = Mqtt::connect(port, "newcomer", true, false)
        .err()
        .expect("a new persistent session at the cap");
    assert!(err.to_string().contains("0x97"), "{err}");

    // The session drains; the broker compacts and takes durable work again.
    let (mut s, present) = Mqtt::connect(port, "keeper", true, false).unwrap();
    assert!(present);
    let mut drained = 0;
    while drained < accepted {
        match s.recv(Duration::from_secs(5)).unwrap() {
            Some(Pkt::Publish { pid, qos: 1, .. }) => {
                s.send(&enc_ack(4, pid)).unwrap();
                drained += 1;
            }
            Some(_) => {}
            None => panic!("drained {drained} of {accepted}, then nothing"),
        }
    }
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "durable work still refused {:?} after the drain (store {} bytes)",
            started.elapsed(),
            disk_use()
        );
        thread::sleep(Duration::from_millis(250));
        pid += 1;
        if publish_q1(&mut p, pid, "fill/after", "accepted again") == 0 {
            break;
        }
    }
    eprintln!(
        "accepted again {:?} after the drain; store {} bytes",
        started.elapsed(),
        disk_use()
    );
    assert!(matches!(
        s.recv(Duration::from_secs(5)).unwrap(),
        Some(Pkt::Publish { payload, .. }) if payload == "accepted again"
    ));
    let text = broker.log();
    assert!(text.contains("persistence.max_disk"), "{text}");
    assert!(!text.contains("store write failed"), "{text}");

    // kill -9, and the journal restarts with the session in it.
    drop(s);
    drop(p);
    drop(c);
    drop(broker);
    let log = dir.file("broker-1.log");
    let broker = start(&conf, &dir.file("tidemq.pid"), &log, port);
    let (mut s, present) = Mqtt::connect(port, "keeper", true, false).unwrap();
    assert!(present, "the session came back from the store");
    let (mut p, _) = Mqtt::connect(port, "filler", true, true).unwrap();
    assert_eq!(publish_q1(&mut p, 1, "fill/restarted", "after kill -9"), 0);
    let mut got = Vec::new();
    while let Some(pkt) = s.recv(Duration::from_secs(2)).unwrap() {
        if let Pkt::Publish { payload, .. } = pkt {
            got.push(payload);
        }
    }
    assert!(got.contains(&"after kill -9".to_owned()), "{got:?}");
    assert!(broker.log().contains("store recovered"), "{}", broker.log());
}
