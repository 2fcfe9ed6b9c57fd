//! The memory the core holds on behalf of peers, counted against one budget (`max_memory`).
//!
//! Whatever holds bytes for a peer — a message body, a delivery waiting in a queue or in flight,
//! a session with its subscriptions, a connection with its buffers and aliases — carries a
//! [`Charge`]. A charge is taken when the thing is made and given back when it is dropped, so no
//! path that forgets an item (expiry, takeover, a closed connection, a dropped output) can leave
//! the count wrong. The broker asks [`Memory`] before it keeps anything more: past the budget it
//! refuses (v5 0x97, 3.1.1 close or return code 3), drops and counts (QoS 0, queues), or sheds
//! what is least worth keeping (offline sessions nearest their end), and never grows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Config;

/// What one queued or in-flight delivery costs beside its message.
pub(crate) const DELIVERY_BYTES: usize = 96;
/// What a message costs beside its topic, payload and properties.
pub(crate) const MESSAGE_BYTES: usize = 160;
/// What a session costs beside its client id and subscriptions.
pub(crate) const SESSION_BYTES: usize = 640;
/// What one subscription costs beside its filter (held twice: session and index).
pub(crate) const SUBSCRIPTION_BYTES: usize = 128;
/// What a connection costs beside its buffers.
pub(crate) const CONN_BYTES: usize = 512;
/// What a bridge costs beside its link's buffers and the messages it keeps.
pub(crate) const BRIDGE_BYTES: usize = 1024;
/// What one inbound QoS 2 id awaiting its PUBREL costs (a map entry).
pub(crate) const QOS2_ID_BYTES: usize = 16;
/// Past the budget's high mark, a connection may still hold this much unwritten output, so a
/// client that reads keeps getting its messages while the ones that do not read are held back.
pub(crate) const FAIR_BACKLOG: usize = 64 * 1024;

/// Past the budget's high mark, a session's queue may still hold this many messages.
pub(crate) const FAIR_QUEUE: usize = 16;

/// The most the count may read against `budget` with this many live connections and
/// sessions. The budget is asked before anything more is kept; what may still come on top is
/// stated per live connection (twice `max_write_buffer` of output, a few packets of the
/// largest size in its buffers, one per topic alias) and per session (a short queue and its
/// windows of largest packets); a bridge link may take what one connection and one session
/// may (its unwritten output and a packet being read, its outbox's short queue and its
/// windows). The simulation and the stateful fuzz target hold the broker to it after every
/// input.
pub fn accounting_bound(config: &Config, budget: u64, connections: u64, sessions: u64) -> u64 {
    let bridges = config.bridges.len() as u64;
    let (connections, sessions) = (connections + bridges, sessions + bridges);
    let packet = u64::from(config.max_packet_size) + 512;
    let per_conn = 2 * u64::from(config.max_write_buffer)
        + (3 + u64::from(config.max_topic_alias)) * packet
        + 4096;
    let entries = 16 + u64::from(config.max_inflight) + u64::from(config.receive_maximum) + 1;
    let per_session = entries * packet + 1024;
    budget
        .saturating_add(connections.saturating_mul(per_conn))
        .saturating_add(sessions.saturating_mul(per_session))
}

/// The count itself, shared by every charge of one broker.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger(Arc<AtomicUsize>);

impl Ledger {
    pub fn charge(&self, bytes: usize) -> Charge {
        self.take(bytes);
        Charge {
            ledger: self.clone(),
            bytes,
        }
    }

    /// Counts bytes whose holder gives them back itself (a delivery, through its message's
    /// ledger: no second handle to carry per delivery).
    pub fn take(&self, bytes: usize) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn give_back(&self, bytes: usize) {
        self.0.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes counted while this lives; given back when it is dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    ledger: Ledger,
    bytes: usize,
}

impl Charge {
    /// Counts `bytes` instead of what was counted before.
    pub fn set(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.ledger.take(bytes - self.bytes);
        } else {
            self.ledger.give_back(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }
}

impl Clone for Charge {
    fn clone(&self) -> Charge {
        self.ledger.charge(self.bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.ledger.give_back(self.bytes);
    }
}

/// Where the count stands against a budget (`max_memory`, read from the configuration at
/// each question, so a reload applies at once).
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub ledger: Ledger,
}

impl Memory {
    pub fn used(&self) -> usize {
        self.ledger.used()
    }

    /// Past the whole budget: no new session or subscription is admitted.
    pub fn over_budget(&self, budget: u64) -> bool {
        self.used() as u64 >= budget
    }

    /// Past three quarters of it: what piles up (queues, retained messages, output to a
    /// connection that is not keeping up) stops growing, so the last quarter stays for
    /// connections, sessions and subscriptions.
    pub fn under_pressure(&self, budget: u64) -> bool {
        self.used() as u64 >= budget / 4 * 3
    }
}
