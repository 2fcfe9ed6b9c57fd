//! The figures the admin API's metrics show that the broker does not count itself: the
//! process's memory and CPU use (sampled by the runtime) and the maxima NanoMQ reports.
//! `broker/metrics.rs` renders them.

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
