//! The reaper's bookkeeping. Records in the sessions bucket whose owner's start ended
//! with nobody to end them (the node died, or restarted as another start) would stay until
//! their client came back. One node, the live one with the lowest name, scans the bucket
//! every [`REAP_EVERY_HEARTBEATS`] heartbeats and deletes those a returning client would find
//! expired (`broker/cluster_reaper.rs`). Two nodes that both take themselves for the lowest
//! for a while only read twice: every delete is made over the revision read.

/// Heartbeats between scans: six `node_ttl`s (a heartbeat goes every third of it), a minute
/// by default. A scan reads the whole bucket; what it deletes only waits.
pub const REAP_EVERY_HEARTBEATS: u32 = 18;

#[derive(Debug, Default)]
pub struct Reaper {
    /// The scan running, by token; a scan still running when the next is due is given up.
    pub scan: Option<u64>,
    beats: u32,
    next_token: u64,
    /// Scans made, and deletes asked for (one loses to a newer write of its key).
    pub scans: u64,
    pub reaped: u64,
}

impl Reaper {
    /// A heartbeat went out; `reaps`: this node is the one to scan now. The new scan's token
    /// when one is due.
    pub fn beat(&mut self, reaps: bool) -> Option<u64> {
        self.beats = self.beats.saturating_add(1);
        if self.beats < REAP_EVERY_HEARTBEATS || !reaps {
            return None;
        }
        self.beats = 0;
        self.next_token += 1;
        self.scans += 1;
        self.scan = Some(self.next_token);
        Some(self.next_token)
    }
}
