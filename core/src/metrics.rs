//! The broker's own counters (plain integer adds on the hot path, no clock, no I/O) and the
//! figures it shows but does not count itself: the process's memory and CPU use and the
//! runtime's connection refusals (both sent by the runtime), and the maxima NanoMQ reports.
//! `broker/metrics.rs` renders them; `sys_tree.rs` publishes them under `$SYS/broker`.
//!
//! Built with the `no-hot-metrics` feature, the per-packet and per-message counters compile
//! to nothing: that build exists only to measure what they cost (BENCHMARKS.md).

use std::collections::BTreeMap;

use crate::codec::QoS;

/// Process figures and the maxima NanoMQ shows (updated when scraped, as NanoMQ does, and
/// for memory and CPU at every sample).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    pub rss_bytes: u64,
    pub rss_max: u64,
    pub cpu_percent: f64,
    pub cpu_max: f64,
    pub connections_max: u64,
    pub sessions_max: u64,
    pub topics_max: u64,
    pub subscribers_max: u64,
}

/// Why a message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The session's queue held `msq_len` messages.
    QueueFull,
    /// QoS 0 to a connection whose writer is full.
    SlowReader,
    /// Its message expiry interval ran out before delivery.
    Expired,
    /// It matched no subscription.
    NoSubscriber,
    /// Larger than the client accepts, no packet identifier free, or a bridge's outbox full.
    OverLimit,
    /// The store failed, so a durable delivery could not be kept.
    StoreFailed,
    /// Its session ended (expired or was discarded) with the message still queued.
    SessionEnded,
    /// Past `max_memory`'s high mark: a queue stopped growing, or a retained message was
    /// not taken.
    MemoryBudget,
}

impl DropReason {
    pub const ALL: [DropReason; 8] = [
        DropReason::QueueFull,
        DropReason::SlowReader,
        DropReason::Expired,
        DropReason::NoSubscriber,
        DropReason::OverLimit,
        DropReason::StoreFailed,
        DropReason::SessionEnded,
        DropReason::MemoryBudget,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::SlowReader => "slow_reader",
            DropReason::Expired => "expired",
            DropReason::NoSubscriber => "no_subscriber",
            DropReason::OverLimit => "over_limit",
            DropReason::StoreFailed => "store_failed",
            DropReason::SessionEnded => "session_ended",
            DropReason::MemoryBudget => "memory_budget",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds (milliseconds on the core's time axis) of the publish-to-deliver buckets.
pub(crate) const LATENCY_BOUNDS_MS: [u64; 10] = [1, 5, 10, 25, 50, 100, 250, 1000, 5000, 30000];

/// A cumulative histogram in whole milliseconds: bucket `i` counts observations up to
/// `LATENCY_BOUNDS_MS[i]`, the last one everything above.
#[derive(Debug, Clone, Default)]
pub(crate) struct Histogram {
    pub buckets: [u64; LATENCY_BOUNDS_MS.len() + 1],
    pub count: u64,
    pub sum_ms: u64,
}

impl Histogram {
    #[inline]
    pub fn observe(&mut self, ms: u64) {
        let i = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.count += 1;
        self.sum_ms = self.sum_ms.saturating_add(ms);
    }

    /// `(upper bound, cumulative count)`, `None` for `+Inf`.
    pub fn cumulative(&self) -> Vec<(Option<u64>, u64)> {
        let mut total = 0;
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                total += n;
                (LATENCY_BOUNDS_MS.get(i).copied(), total)
            })
            .collect()
    }
}

/// Connections the runtime refused or cut before the core heard of them, as it last reported
/// them (cumulative since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeConnCounters {
    /// Sockets accepted.
    pub accepted: u64,
    /// Refused: the broker held its maximum of connections.
    pub refused_max_connections: u64,
    /// Refused: the address held its maximum.
    pub refused_per_ip: u64,
    /// Refused: new connections came faster than the configured rate.
    pub refused_rate: u64,
    /// `accept` failed (out of descriptors, ...).
    pub accept_errors: u64,
    /// Cut: the peer took no bytes for the write stall timeout.
    pub write_stalls: u64,
    /// Cut: more bytes queued than the budget allows.
    pub queue_overflows: u64,
    /// Cluster mode: QoS 0 messages and retained writes dropped because the queue to NATS
    /// was full.
    pub cluster_dropped: u64,
}

/// Upper bounds (microseconds) of the store's commit-duration buckets: 50 µs to 1 s.
pub const COMMIT_BOUNDS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// The store thread's figures as the runtime last reported them (cumulative since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFigures {
    /// Group commits by duration (append through fsync): bucket `i` counts those up to
    /// `COMMIT_BOUNDS_US[i]`, the last one everything above.
    pub commit_buckets: [u64; COMMIT_BOUNDS_US.len() + 1],
    pub commit_sum_us: u64,
    /// Records per group commit, summed (with the bucket counts: the mean group size).
    pub group_records: u64,
    /// Bytes written to journal segments.
    pub journal_bytes: u64,
    pub snapshots_written: u64,
    /// How long the last snapshot took to write.
    pub last_snapshot_us: u64,
    /// Bytes of the store's files (journal segments and snapshots).
    pub disk_bytes: u64,
}

impl StoreFigures {
    /// The bucket a commit of `us` microseconds falls in.
    pub fn bucket_of(us: u64) -> usize {
        COMMIT_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(COMMIT_BOUNDS_US.len())
    }
}

/// Packet type numbers run from 1 (CONNECT) to 15 (AUTH).
pub(crate) const PACKET_KINDS: usize = 16;

/// What the broker counts as it works.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counters {
    /// Control packets from clients and to them, by packet type number.
    pub packets_in: [u64; PACKET_KINDS],
    pub packets_out: [u64; PACKET_KINDS],
    /// Bytes read from and handed out to client connections.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Client PUBLISH packets accepted, and their payload bytes, by QoS.
    pub publish_in: [u64; 3],
    pub publish_in_bytes: u64,
    /// PUBLISH packets delivered (not `$SYS`), and their payload bytes, by QoS.
    pub publish_out: [u64; 3],
    pub publish_out_bytes: u64,
    /// `$SYS` messages delivered, outside the message counters above.
    pub sys_out: u64,
    pub drops: [u64; DropReason::ALL.len()],
    /// CONNECT packets answered with success, and refused (by reason code).
    pub connects_ok: u64,
    pub connects_refused: BTreeMap<u8, u64>,
    /// Client connections accepted.
    pub sockets: u64,
    /// Sessions removed because their expiry interval ran out.
    pub sessions_expired: u64,
    /// Publish-to-deliver delay of first deliveries (not resends).
    pub latency: Histogram,
    /// Store: commit reports, records handed out, snapshots taken.
    pub store_commits: u64,
    pub store_records: u64,
    pub store_snapshots: u64,
    /// Admin API replies by HTTP status.
    pub admin_replies: BTreeMap<u16, u64>,
    pub runtime: RuntimeConnCounters,
    pub store: StoreFigures,
}

/// `QoS` as an index into the per-QoS counters.
#[inline]
fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Adds `n` to a counter, unless the build leaves hot-path counters out.
#[inline(always)]
fn add(slot: Option<&mut u64>, n: u64) {
    if cfg!(not(feature = "no-hot-metrics"))
        && let Some(slot) = slot
    {
        *slot = slot.wrapping_add(n);
    }
}

impl Counters {
    #[inline]
    pub fn packet_in(&mut self, kind: u8) {
        add(self.packets_in.get_mut(usize::from(kind)), 1);
    }

    #[inline]
    pub fn bytes_in(&mut self, n: usize) {
        add(Some(&mut self.bytes_in), n as u64);
    }

    #[inline]
    pub fn packet_out(&mut self, kind: u8) {
        add(self.packets_out.get_mut(usize::from(kind)), 1);
    }

    #[inline]
    pub fn bytes_out(&mut self, n: usize) {
        add(Some(&mut self.bytes_out), n as u64);
    }

    #[inline]
    pub fn publish_in(&mut self, qos: QoS, payload: usize) {
        add(self.publish_in.get_mut(qos_index(qos)), 1);
        add(Some(&mut self.publish_in_bytes), payload as u64);
    }

    /// A PUBLISH written to a connection; `latency_ms` for a first delivery.
    #[inline]
    pub fn publish_out(&mut self, qos: QoS, payload: usize, latency_ms: Option<u64>) {
        add(self.publish_out.get_mut(qos_index(qos)), 1);
        add(Some(&mut self.publish_out_bytes), payload as u64);
        add(self.packets_out.get_mut(3), 1);
        if cfg!(not(feature = "no-hot-metrics"))
            && let Some(ms) = latency_ms
        {
            self.latency.observe(ms);
        }
    }

    #[inline]
    pub fn sys_out(&mut self) {
        add(self.packets_out.get_mut(3), 1);
        add(Some(&mut self.sys_out), 1);
    }

    #[inline]
    pub fn dropped(&mut self, why: DropReason, n: u64) {
        add(self.drops.get_mut(why.index()), n);
    }

    pub fn drops_of(&self, why: DropReason) -> u64 {
        self.drops.get(why.index()).copied().unwrap_or(0)
    }

    pub fn admin_reply(&mut self, status: u16) {
        *self.admin_replies.entry(status).or_insert(0) += 1;
    }

    pub fn connect_refused(&mut self, code: u8) {
        *self.connects_refused.entry(code).or_insert(0) += 1;
    }

    pub fn publish_in_total(&self) -> u64 {
        self.publish_in.iter().sum()
    }

    pub fn publish_out_total(&self) -> u64 {
        self.publish_out.iter().sum()
    }
}

#[cfg(all(test, not(feature = "no-hot-metrics")))]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let mut h = Histogram::default();
        for ms in [0, 1, 2, 30, 30_000, 30_001, u64::MAX] {
            h.observe(ms);
        }
        let c = h.cumulative();
        assert_eq!(c.first(), Some(&(Some(1), 2)));
        assert_eq!(c.get(1), Some(&(Some(5), 3)));
        assert_eq!(c.get(4), Some(&(Some(50), 4)));
        assert_eq!(c.get(9), Some(&(Some(30_000), 5)));
        assert_eq!(c.last(), Some(&(None, 7)));
        assert_eq!(h.count, 7);
        assert_eq!(h.sum_ms, u64::MAX);
    }

    #[test]
    fn counters_add_by_kind_and_qos() {
        let mut c = Counters::default();
        c.packet_in(1);
        c.packet_in(99);
        c.publish_in(QoS::ExactlyOnce, 7);
        c.publish_out(QoS::AtLeastOnce, 3, Some(4));
        c.dropped(DropReason::QueueFull, 2);
        assert_eq!(c.packets_in.get(1), Some(&1));
        assert_eq!(c.publish_in, [0, 0, 1]);
        assert_eq!(c.publish_in_bytes, 7);
        assert_eq!(c.publish_out, [0, 1, 0]);
        assert_eq!(c.packets_out.get(3), Some(&1));
        assert_eq!(c.latency.count, 1);
        assert_eq!(c.drops_of(DropReason::QueueFull), 2);
        assert_eq!(c.drops_of(DropReason::Expired), 0);
    }
}
