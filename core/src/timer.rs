//! The timer table: one entry per armed deadline, ordered by time. Each owner keeps the
//! instant it armed in a slot of its own, so a timer that fires after it was re-armed is
//! recognised as stale and ignored.

use std::collections::BTreeSet;

use crate::api::{ConnId, Instant};
use crate::ids::{BridgeId, SessionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// Keep alive, or the connect timeout before CONNECT.
    Conn(ConnId),
    /// Will delay and session expiry of a disconnected session.
    Session(SessionId),
    /// A bridge's reconnect, connect timeout or keep alive.
    Bridge(BridgeId),
    /// The next `$SYS/broker` tree publication.
    Sys,
    /// Retained replays that used up one step's work go on.
    Replay,
    /// The next compaction of a store at its disk cap.
    Compact,
    /// Cluster mode: session records' cursors move and failed writes are tried again.
    ClusterRecords,
    /// Cluster mode: this node's heartbeat goes out and silent nodes are forgotten.
    ClusterHeartbeat,
    /// Cluster mode: admin lists stop waiting for nodes that did not answer.
    ClusterGather,
    /// Cluster mode: the node has been without NATS for `node_ttl`.
    ClusterCutOff,
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    armed: BTreeSet<(Instant, Timer)>,
}

impl Timers {
    /// Re-arms `timer` at `at` (or disarms it for `None`); `slot` is its owner's record of
    /// what is armed.
    pub fn arm(&mut self, timer: Timer, slot: &mut Option<Instant>, at: Option<Instant>) {
        if let Some(old) = slot.take() {
            self.armed.remove(&(old, timer));
        }
        if let Some(at) = at {
            *slot = Some(at);
            self.armed.insert((at, timer));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.armed.first().map(|(at, _)| *at)
    }

    /// Takes the earliest timer due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        let &(at, timer) = self.armed.first()?;
        if at > now {
            return None;
        }
        self.armed.remove(&(at, timer));
        Some((at, timer))
    }
}
