//! The reaper's bookkeeping. Entries in the sessions bucket whose owner's start ended with
//! nobody to end them (the node died, or restarted as another start) would stay until their
//! client came back. One node, the live one with the lowest name, scans the bucket every
//! [`REAP_EVERY_HEARTBEATS`] heartbeats and deletes those nobody would resume
//! (`broker/cluster_reaper.rs`). Two nodes that both take themselves for the lowest for a
//! while only read twice: every delete is made over the revision read.

/// Heartbeats between scans: six `node_ttl`s (a heartbeat goes every third of it), a minute
/// by default. A scan reads the whole bucket; what it deletes only waits.
pub const REAP_EVERY_HEARTBEATS: u32 = 18;

/// Most deletes one scan asks for: a dead node's many entries go over several scans rather
/// than as a burst of requests beside live clients' claims.
pub const MAX_REAPS_PER_SCAN: u32 = 256;

#[derive(Debug, Default)]
pub struct Reaper {
    /// The scan running, by token. A scan still running when the next is due is given up
    /// (the runtime stops its read when asked for the next).
    pub scan: Option<u64>,
    beats: u32,
    next_token: u64,
    /// Scans asked for; deletes asked for in this scan, and in all (one loses to a newer
    /// write of its key).
    pub scans: u64,
    reaps_this_scan: u32,
    pub reaped: u64,
}

impl Reaper {
    /// A heartbeat went out; `may_scan`: this node is the one to scan now. The new scan's
    /// token when one is due.
    pub fn beat(&mut self, may_scan: bool) -> Option<u64> {
        self.beats = self.beats.saturating_add(1);
        if self.beats < REAP_EVERY_HEARTBEATS || !may_scan {
            return None;
        }
        self.beats = 0;
        self.next_token += 1;
        self.scans += 1;
        self.reaps_this_scan = 0;
        self.scan = Some(self.next_token);
        Some(self.next_token)
    }

    /// Counts a delete of the running scan; `false` past [`MAX_REAPS_PER_SCAN`].
    pub fn may_reap(&mut self) -> bool {
        if self.reaps_this_scan >= MAX_REAPS_PER_SCAN {
            return false;
        }
        self.reaps_this_scan += 1;
        self.reaped += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_comes_every_18_heartbeats_and_asks_for_at_most_256_deletes() {
        let mut r = Reaper::default();
        for _ in 1..REAP_EVERY_HEARTBEATS {
            assert_eq!(r.beat(true), None);
        }
        assert_eq!(r.beat(true), Some(1));
        assert!((0..MAX_REAPS_PER_SCAN).all(|_| r.may_reap()));
        assert!(!r.may_reap());
        // Not the scanning node when due: the next beat that may scan does.
        for _ in 0..REAP_EVERY_HEARTBEATS {
            assert_eq!(r.beat(false), None);
        }
        assert_eq!(r.beat(true), Some(2));
        assert!(r.may_reap());
        assert_eq!((r.scans, r.reaped), (2, u64::from(MAX_REAPS_PER_SCAN) + 1));
    }
}
