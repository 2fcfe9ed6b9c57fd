//! What only the runtime can enforce: how many sockets the broker holds, how fast it takes new
//! ones, how long a peer may leave bytes unread, and how long a closed connection lingers. The
//! core budgets MQTT bytes per connection; these bound descriptors, time and transport bytes.
//!
//! The settings are named constants for now, overridable through `TIDEMQ_*` environment
//! variables, until the configuration (which lives in the core) carries them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// Descriptors kept free for everything that is not a client connection: the store's segment,
/// snapshot and directory handles, configuration and certificate reads at a reload, log files,
/// listeners, DNS and bridge sockets being opened.
pub const FD_RESERVE: usize = 64;
/// Used when the open-files limit cannot be read (not Linux).
pub const FALLBACK_MAX_CONNECTIONS: usize = 4096;
/// Off by default: many clients share an address behind NAT, proxies and load balancers.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 0;
/// New connections per second once the burst is spent; refusals past it are closed at once.
pub const DEFAULT_MAX_CONN_RATE: u32 = 10_000;
/// Connections accepted back to back before the rate applies (a fleet reconnecting).
pub const DEFAULT_MAX_CONN_BURST: u32 = 20_000;
/// A connection with bytes waiting that the peer has not taken for this long is cut.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// After the core closes a connection: at most this long reading and discarding, so that a
/// client still writing reads the DISCONNECT or CONNACK reason instead of a reset.
pub const DEFAULT_DISCONNECT_LINGER: Duration = Duration::from_secs(1);
/// ... and at most this many bytes discarded.
pub const DEFAULT_DISCONNECT_LINGER_BYTES: usize = 64 * 1024;
/// Refusals and accept errors are logged at most once per interval, with counts.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The runtime's own bytes queued beside the core's (WebSocket frame headers, a pong, a
/// close frame): allowed on top of the core's hard limit of twice `max_write_buffer`.
pub const TRANSPORT_SLACK: usize = 64 * 1024;

/// The runtime's limits, built once by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeLimits {
    /// Client connections at once, counted from accept (handshakes and lingering closes too).
    pub max_connections: usize,
    /// Connections at once from one IP address; 0 = no limit.
    pub max_connections_per_ip: usize,
    /// New connections per second; 0 = no limit.
    pub max_conn_rate: u32,
    pub max_conn_burst: u32,
    pub write_stall_timeout: Duration,
    pub disconnect_linger: Duration,
    pub disconnect_linger_bytes: usize,
    /// How many descriptors `max_connections` leaves free.
    pub fd_reserve: usize,
}

impl Default for RuntimeLimits {
    fn default() -> RuntimeLimits {
        RuntimeLimits {
            max_connections: FALLBACK_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_conn_rate: DEFAULT_MAX_CONN_RATE,
            max_conn_burst: DEFAULT_MAX_CONN_BURST,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            disconnect_linger: DEFAULT_DISCONNECT_LINGER,
            disconnect_linger_bytes: DEFAULT_DISCONNECT_LINGER_BYTES,
            fd_reserve: FD_RESERVE,
        }
    }
}

/// The process's descriptor situation at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft open-files limit (`ulimit -n`); `None` if unknown or unlimited.
    pub limit: Option<usize>,
    /// Descriptors open now (listeners, the store, log files, ...).
    pub open: usize,
}

impl FdBudget {
    /// Reads `/proc/self/limits` and `/proc/self/fd` (Linux); elsewhere the limit is unknown.
    pub fn current() -> FdBudget {
        let limit = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|text| parse_open_files_limit(&text));
        // The directory listing holds one descriptor of its own.
        let open = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count().saturating_sub(1))
            .unwrap_or(0);
        FdBudget { limit, open }
    }
}

/// The soft limit from `/proc/self/limits` ("Max open files  1024  4096  files").
fn parse_open_files_limit(text: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

impl RuntimeLimits {
    /// Defaults with `max_connections` derived from the descriptors: the open-files limit,
    /// less what is open now, less the reserve and `extra` (the admin API's connections,
    /// bridges).
    pub fn from_fds(fds: FdBudget, extra: usize) -> RuntimeLimits {
        let reserve = FD_RESERVE + extra;
        let max_connections = match fds.limit {
            Some(limit) => limit.saturating_sub(fds.open + reserve),
            None => FALLBACK_MAX_CONNECTIONS,
        };
        RuntimeLimits {
            max_connections,
            fd_reserve: reserve,
            ..RuntimeLimits::default()
        }
    }

    /// Applies `TIDEMQ_*` overrides from `env`; returns a warning for each it could not use.
    /// `TIDEMQ_MAX_CONNECTIONS` cannot go above what the descriptors allow.
    pub fn with_env(mut self, env: &BTreeMap<String, String>) -> (RuntimeLimits, Vec<String>) {
        use tidemq_core::config_parse::{parse_duration_ms, parse_size};
        let mut warnings = Vec::new();
        let mut get = |name: &str, parse: &dyn Fn(&str) -> Result<u64, String>| -> Option<u64> {
            let text = env.get(name)?;
            match parse(text.trim()) {
                Ok(v) => Some(v),
                Err(e) => {
                    warnings.push(format!("{name}={text:?} ignored: {e}"));
                    None
                }
            }
        };
        let count = |t: &str| t.parse::<u64>().map_err(|e| e.to_string());
        let ms = |t: &str| parse_duration_ms(t);
        let bytes = |t: &str| parse_size(t);
        let fd_cap = self.max_connections;
        if let Some(v) = get("TIDEMQ_MAX_CONNECTIONS", &count) {
            self.max_connections = usize::try_from(v).unwrap_or(usize::MAX).min(fd_cap);
        }
        if let Some(v) = get("TIDEMQ_MAX_CONNECTIONS_PER_IP", &count) {
            self.max_connections_per_ip = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = get("TIDEMQ_MAX_CONN_RATE", &count) {
            self.max_conn_rate = u32::try_from(v).unwrap_or(u32::MAX);
        }
        if let Some(v) = get("TIDEMQ_MAX_CONN_BURST", &count) {
            self.max_conn_burst = u32::try_from(v).unwrap_or(u32::MAX);
        }
        if let Some(v) = get("TIDEMQ_WRITE_STALL_TIMEOUT", &ms) {
            self.write_stall_timeout = Duration::from_millis(v.max(1));
        }
        if let Some(v) = get("TIDEMQ_DISCONNECT_LINGER", &ms) {
            self.disconnect_linger = Duration::from_millis(v);
        }
        if let Some(v) = get("TIDEMQ_DISCONNECT_LINGER_BYTES", &bytes) {
            self.disconnect_linger_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = env.get("TIDEMQ_MAX_CONNECTIONS")
            && v.trim().parse::<usize>().is_ok_and(|v| v > fd_cap)
        {
            warnings.push(format!(
                "TIDEMQ_MAX_CONNECTIONS={v} lowered to {fd_cap}: the open-files limit leaves no more"
            ));
        }
        (self, warnings)
    }
}

/// Counters the metrics can read: connections refused and cut by the runtime's limits.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub accepted: AtomicU64,
    pub refused_max_connections: AtomicU64,
    pub refused_per_ip: AtomicU64,
    pub refused_rate: AtomicU64,
    /// `accept` failed (out of descriptors, ...).
    pub accept_errors: AtomicU64,
    /// Cut because the peer took no bytes for the write stall timeout.
    pub write_stalls: AtomicU64,
    /// Cut because more bytes were queued than the budget allows.
    pub queue_overflows: AtomicU64,
    /// Closed connections that lingered reading before the socket was dropped.
    pub lingered: AtomicU64,
}

/// A copy of [`ConnCounters`] and the gauges, at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub open: u64,
    pub accepted: u64,
    pub refused_max_connections: u64,
    pub refused_per_ip: u64,
    pub refused_rate: u64,
    pub accept_errors: u64,
    pub write_stalls: u64,
    pub queue_overflows: u64,
    pub lingered: u64,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    PerIp,
    Rate,
}

/// Admits or refuses new connections: the global and per-IP counts and the accept rate. One
/// per broker, shared by every listener.
#[derive(Debug)]
pub struct ConnGate {
    counters: Arc<ConnCounters>,
    state: Mutex<GateState>,
}

#[derive(Debug)]
struct GateState {
    limits: RuntimeLimits,
    open: usize,
    /// Only kept when there is a per-IP limit.
    per_ip: BTreeMap<IpAddr, usize>,
    tokens: f64,
    refilled: Option<Instant>,
    log: RefusalLog,
}

/// What happened since the last log line.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    max_connections: u64,
    per_ip: u64,
    rate: u64,
    accept_errors: u64,
    last_error: Option<String>,
    write_stalls: u64,
    queue_overflows: u64,
}

impl RefusalLog {
    fn pending(&self) -> bool {
        self.max_connections
            + self.per_ip
            + self.rate
            + self.accept_errors
            + self.write_stalls
            + self.queue_overflows
            > 0
    }
}

/// Connections the runtime cut, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The peer took no bytes for the write stall timeout.
    WriteStall,
    /// More bytes queued than the budget allows.
    QueueOverflow,
}

impl ConnGate {
    pub fn new(limits: RuntimeLimits) -> Arc<ConnGate> {
        Arc::new(ConnGate {
            state: Mutex::new(GateState {
                tokens: f64::from(limits.max_conn_burst.max(1)),
                limits,
                open: 0,
                per_ip: BTreeMap::new(),
                refilled: None,
                log: RefusalLog::default(),
            }),
            counters: Arc::new(ConnCounters::default()),
        })
    }

    /// Replaces the limits (before the listeners start); the rate bucket starts full.
    pub fn set_limits(&self, limits: RuntimeLimits) {
        if let Ok(mut state) = self.state.lock() {
            state.tokens = f64::from(limits.max_conn_burst.max(1));
            state.refilled = None;
            state.limits = limits;
        }
    }

    pub fn limits(&self) -> RuntimeLimits {
        self.state
            .lock()
            .map(|s| s.limits.clone())
            .unwrap_or_default()
    }

    pub fn counters(&self) -> &Arc<ConnCounters> {
        &self.counters
    }

    pub fn stats(&self) -> ConnStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnStats {
            open: self.state.lock().map_or(0, |s| s.open as u64),
            accepted: get(&c.accepted),
            refused_max_connections: get(&c.refused_max_connections),
            refused_per_ip: get(&c.refused_per_ip),
            refused_rate: get(&c.refused_rate),
            accept_errors: get(&c.accept_errors),
            write_stalls: get(&c.write_stalls),
            queue_overflows: get(&c.queue_overflows),
            lingered: get(&c.lingered),
        }
    }

    /// Admits a connection from `ip` (the permit frees its place when dropped), or refuses it;
    /// a refusal is counted and logged at most once per [`REFUSAL_LOG_INTERVAL`].
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<ConnPermit, Refusal> {
        let Ok(mut state) = self.state.lock() else {
            return Err(Refusal::MaxConnections);
        };
        let refusal = check(&mut state, ip, now);
        match refusal {
            None => {
                state.open += 1;
                if state.limits.max_connections_per_ip > 0 {
                    *state.per_ip.entry(ip).or_insert(0) += 1;
                }
                self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                Ok(ConnPermit {
                    gate: self.clone(),
                    ip,
                })
            }
            Some(why) => {
                let (counter, pending) = match why {
                    Refusal::MaxConnections => (
                        &self.counters.refused_max_connections,
                        &mut state.log.max_connections,
                    ),
                    Refusal::PerIp => (&self.counters.refused_per_ip, &mut state.log.per_ip),
                    Refusal::Rate => (&self.counters.refused_rate, &mut state.log.rate),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                *pending += 1;
                self.log_if_due(&mut state, now);
                Err(why)
            }
        }
    }

    /// Counts a failed `accept` (logged with the refusals).
    pub fn note_accept_error(&self, error: &std::io::Error, now: Instant) {
        self.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut state) = self.state.lock() {
            state.log.accept_errors += 1;
            state.log.last_error = Some(error.to_string());
            self.log_if_due(&mut state, now);
        }
    }

    /// Counts a connection the runtime cut (logged with the refusals).
    pub fn note_cut(&self, cut: Cut, now: Instant) {
        let counter = match cut {
            Cut::WriteStall => &self.counters.write_stalls,
            Cut::QueueOverflow => &self.counters.queue_overflows,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut state) = self.state.lock() {
            match cut {
                Cut::WriteStall => state.log.write_stalls += 1,
                Cut::QueueOverflow => state.log.queue_overflows += 1,
            }
            self.log_if_due(&mut state, now);
        }
    }

    /// Logs what is pending once the interval has passed (called on each refusal and
    /// periodically by the driver, so the last burst is reported too).
    pub fn flush_log(&self, now: Instant) {
        if let Ok(mut state) = self.state.lock() {
            self.log_if_due(&mut state, now);
        }
    }

    fn log_if_due(&self, state: &mut GateState, now: Instant) {
        let limits = &state.limits;
        let log = &mut state.log;
        if !log.pending()
            || log
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_INTERVAL)
        {
            return;
        }
        let since = log
            .last
            .map(|t| format!("{} s", now.saturating_duration_since(t).as_secs()));
        if log.max_connections + log.per_ip + log.rate > 0 {
            warn!(
                max_connections = log.max_connections,
                per_ip = log.per_ip,
                rate = log.rate,
                open = state.open,
                limit = limits.max_connections,
                limit_per_ip = limits.max_connections_per_ip,
                rate_per_s = limits.max_conn_rate,
                "connections refused{}",
                since
                    .as_deref()
                    .map_or(String::new(), |s| format!(" in the last {s}"))
            );
        }
        if log.accept_errors > 0 {
            warn!(
                count = log.accept_errors,
                error = log.last_error.as_deref().unwrap_or("-"),
                open = state.open,
                "accept failed"
            );
        }
        if log.write_stalls + log.queue_overflows > 0 {
            warn!(
                write_stalls = log.write_stalls,
                queue_overflows = log.queue_overflows,
                stall_timeout_ms = limits.write_stall_timeout.as_millis() as u64,
                "connections cut: the peer did not read"
            );
        }
        *log = RefusalLog {
            last: Some(now),
            ..RefusalLog::default()
        };
    }

    fn release(&self, ip: IpAddr) {
        if let Ok(mut state) = self.state.lock() {
            state.open = state.open.saturating_sub(1);
            if let Some(n) = state.per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.per_ip.remove(&ip);
                }
            }
        }
    }
}

fn check(state: &mut GateState, ip: IpAddr, now: Instant) -> Option<Refusal> {
    let limits = &state.limits;
    if state.open >= limits.max_connections {
        return Some(Refusal::MaxConnections);
    }
    let per_ip = limits.max_connections_per_ip;
    if per_ip > 0 && state.per_ip.get(&ip).copied().unwrap_or(0) >= per_ip {
        return Some(Refusal::PerIp);
    }
    if limits.max_conn_rate > 0 {
        let burst = f64::from(limits.max_conn_burst.max(1));
        if let Some(last) = state.refilled {
            let earned =
                now.saturating_duration_since(last).as_secs_f64() * f64::from(limits.max_conn_rate);
            state.tokens = (state.tokens + earned).min(burst);
        }
        state.refilled = Some(now);
        if state.tokens < 1.0 {
            return Some(Refusal::Rate);
        }
        state.tokens -= 1.0;
    }
    None
}

/// A connection's place under the limits, held for as long as its socket is open.
#[derive(Debug)]
pub struct ConnPermit {
    gate: Arc<ConnGate>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.gate.release(self.ip);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn limits(max: usize, per_ip: usize, rate: u32, burst: u32) -> RuntimeLimits {
        RuntimeLimits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            max_conn_rate: rate,
            max_conn_burst: burst,
            ..RuntimeLimits::default()
        }
    }

    #[test]
    fn global_limit_refuses_until_a_permit_is_dropped() {
        let gate = ConnGate::new(limits(2, 0, 0, 1));
        let now = Instant::now();
        let a = gate.admit(ip(1), now).unwrap();
        let _b = gate.admit(ip(2), now).unwrap();
        assert_eq!(gate.admit(ip(3), now).unwrap_err(), Refusal::MaxConnections);
        drop(a);
        let _c = gate.admit(ip(3), now).unwrap();
        let stats = gate.stats();
        assert_eq!(stats.accepted, 3);
        assert_eq!(stats.refused_max_connections, 1);
        assert_eq!(stats.open, 2);
    }

    #[test]
    fn per_ip_limit_counts_each_address_separately() {
        let gate = ConnGate::new(limits(100, 2, 0, 1));
        let now = Instant::now();
        let held: Vec<_> = (0..2).map(|_| gate.admit(ip(1), now).unwrap()).collect();
        assert_eq!(gate.admit(ip(1), now).unwrap_err(), Refusal::PerIp);
        assert!(gate.admit(ip(2), now).is_ok());
        drop(held);
        assert!(gate.admit(ip(1), now).is_ok());
        assert_eq!(gate.stats().refused_per_ip, 1);
        // The map forgets addresses with nothing open.
        assert!(gate.state.lock().unwrap().per_ip.len() <= 1);
    }

    #[test]
    fn rate_limit_allows_the_burst_then_refills_at_the_rate() {
        let gate = ConnGate::new(limits(1000, 0, 10, 5));
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(gate.admit(ip(1), start).unwrap());
        }
        assert_eq!(gate.admit(ip(1), start).unwrap_err(), Refusal::Rate);
        // 10 per second: one more after 100 ms, not before.
        let later = start + Duration::from_millis(50);
        assert_eq!(gate.admit(ip(1), later).unwrap_err(), Refusal::Rate);
        let later = start + Duration::from_millis(110);
        held.push(gate.admit(ip(1), later).unwrap());
        // Never more than the burst, however long it was quiet.
        let much_later = start + Duration::from_secs(3600);
        let admitted = (0..20)
            .filter(|_| gate.admit(ip(1), much_later).map(|p| held.push(p)).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(gate.stats().refused_rate, 2 + 15);
    }

    #[test]
    fn refusals_do_not_use_rate_tokens() {
        let gate = ConnGate::new(limits(1, 0, 1, 2));
        let now = Instant::now();
        let first = gate.admit(ip(1), now).unwrap();
        for _ in 0..10 {
            assert_eq!(gate.admit(ip(1), now).unwrap_err(), Refusal::MaxConnections);
        }
        drop(first);
        assert!(
            gate.admit(ip(1), now).is_ok(),
            "one token left of the burst of 2"
        );
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let gate = ConnGate::new(limits(0, 0, 0, 1));
        let start = Instant::now();
        for i in 0..100 {
            let _ = gate.admit(ip(1), start + Duration::from_millis(i));
        }
        {
            let state = gate.state.lock().unwrap();
            // The first refusal was logged at once; the other 99 wait for the interval.
            assert_eq!(state.log.max_connections, 99);
            assert_eq!(state.log.last, Some(start));
        }
        gate.flush_log(start + REFUSAL_LOG_INTERVAL);
        {
            let state = gate.state.lock().unwrap();
            assert_eq!(state.log.max_connections, 0);
            assert_eq!(state.log.last, Some(start + REFUSAL_LOG_INTERVAL));
        }
        assert_eq!(gate.stats().refused_max_connections, 100);
    }

    #[test]
    fn max_connections_leave_the_reserve_free() {
        let fds = FdBudget {
            limit: Some(1024),
            open: 12,
        };
        let limits = RuntimeLimits::from_fds(fds, 32);
        assert_eq!(limits.max_connections, 1024 - 12 - FD_RESERVE - 32);
        assert_eq!(limits.fd_reserve, FD_RESERVE + 32);
        let tiny = FdBudget {
            limit: Some(50),
            open: 10,
        };
        assert_eq!(RuntimeLimits::from_fds(tiny, 0).max_connections, 0);
        let unknown = FdBudget {
            limit: None,
            open: 0,
        };
        assert_eq!(
            RuntimeLimits::from_fds(unknown, 0).max_connections,
            FALLBACK_MAX_CONNECTIONS
        );
    }

    #[test]
    fn open_files_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_files_limit(text), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        assert_eq!(parse_open_files_limit(""), None);
    }

    #[test]
    fn environment_overrides_are_parsed_and_capped() {
        let base = RuntimeLimits::from_fds(
            FdBudget {
                limit: Some(1000),
                open: 0,
            },
            0,
        );
        let env: BTreeMap<String, String> = [
            ("TIDEMQ_MAX_CONNECTIONS", "5000"),
            ("TIDEMQ_MAX_CONNECTIONS_PER_IP", "3"),
            ("TIDEMQ_MAX_CONN_RATE", "50"),
            ("TIDEMQ_WRITE_STALL_TIMEOUT", "2s"),
            ("TIDEMQ_DISCONNECT_LINGER", "250ms"),
            ("TIDEMQ_DISCONNECT_LINGER_BYTES", "1KB"),
            ("TIDEMQ_MAX_CONN_BURST", "many"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (limits, warnings) = base.clone().with_env(&env);
        assert_eq!(limits.max_connections, base.max_connections, "capped");
        assert_eq!(limits.max_connections_per_ip, 3);
        assert_eq!(limits.max_conn_rate, 50);
        assert_eq!(limits.max_conn_burst, DEFAULT_MAX_CONN_BURST);
        assert_eq!(limits.write_stall_timeout, Duration::from_secs(2));
        assert_eq!(limits.disconnect_linger, Duration::from_millis(250));
        assert_eq!(limits.disconnect_linger_bytes, 1024);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }
}
