//! The store's disk cap (`persistence.max_disk`): the runtime reports the store's disk use,
//! the broker refuses new durable work at the cap and compacts the journal with snapshots
//! until the store is under it again.

use super::Broker;
use crate::api::{BrokerEvent, Instant};
use crate::ids::SessionId;
use crate::timer::Timer;

/// The first wait between compactions of a full store; it doubles while a snapshot does not
/// bring the store under the cap (live data near the cap), up to [`COMPACT_MAX_MS`].
const COMPACT_FIRST_MS: u64 = 1_000;
const COMPACT_MAX_MS: u64 = 60_000;

impl Broker {
    /// The runtime's report of the store's disk use after a commit or snapshot.
    pub(super) fn store_usage(&mut self, bytes: u64, refusing: bool) {
        let p = &self.config.persistence;
        let (cap, low) = (p.max_disk, p.disk_low_mark());
        let (changed, began) = self.store.set_usage(bytes, refusing, cap, low);
        if let Some(full) = changed {
            self.event(BrokerEvent::StoreFull {
                full,
                used: bytes,
                cap,
            });
        }
        if !self.store.full() {
            self.timers
                .arm(Timer::Compact, &mut self.compact.armed, None);
            self.compact.wait_ms = 0;
            return;
        }
        // A writer that starts refusing records waits for a snapshot: one now. Otherwise the
        // first crossing compacts at once and later tries wait their turn.
        if began || self.compact.armed.is_none() {
            self.compact_now();
        }
    }

    pub(super) fn compact_tick(&mut self, at: Instant) {
        if self.compact.armed != Some(at) {
            return;
        }
        self.compact.armed = None;
        if self.store.full() {
            self.compact_now();
        }
    }

    /// A snapshot if one would shrink the store, and the next try armed.
    fn compact_now(&mut self) {
        if self.store.snapshot_would_help() {
            self.write_snapshot();
        }
        self.compact.wait_ms = (self.compact.wait_ms * 2).clamp(COMPACT_FIRST_MS, COMPACT_MAX_MS);
        let at = self.now.plus_ms(self.compact.wait_ms);
        self.timers
            .arm(Timer::Compact, &mut self.compact.armed, Some(at));
    }

    /// A snapshot of everything live, after this input's records so far (the snapshot covers
    /// them, so they must reach the store before it).
    pub(super) fn write_snapshot(&mut self) {
        self.flush_records();
        let in_order: Vec<SessionId> = self.by_client_id.values().copied().collect();
        let bridges = self.bridge_records();
        let wall = self.wall();
        if let Some(out) =
            self.store
                .snapshot(&self.retained, &mut self.sessions, &in_order, bridges, wall)
        {
            self.counters.store_snapshots += 1;
            self.outputs.push_back(out);
        }
    }
}
