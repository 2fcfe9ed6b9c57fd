//! Telling a message's first copy from the others. NATS delivers a message once per matching
//! subscription, each subscription in order but in any interleaving with the others, so a node
//! remembers, per origin `(node, epoch)`, which of that origin's last [`WINDOW`] sequence numbers
//! it has routed: a bitmap of 8 KiB. At most `max_nodes` origins are remembered; a new one
//! beyond that forgets the one least recently heard from (a node's previous epoch, in practice).

use std::collections::BTreeMap;

use super::envelope::Stamp;
use crate::memory::{Charge, Ledger};

/// Sequence numbers remembered per origin.
pub const WINDOW: u64 = 65_536;
const WORDS: usize = (WINDOW / 64) as usize;
/// What one origin's window costs, counted against `max_memory`.
pub const WINDOW_BYTES: usize = WORDS * 8 + 128;

/// What a copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Copy {
    /// The first seen: route it.
    First,
    /// Routed already, from another subscription.
    Again,
    /// Older than the window: it cannot be told from a new message, so it is dropped.
    Late,
}

struct Window {
    /// One past the highest sequence seen.
    top: u64,
    bits: Box<[u64; WORDS]>,
    heard: u64,
    _charge: Charge,
}

impl Window {
    fn bit(seq: u64) -> (usize, u64) {
        let at = seq % WINDOW;
        ((at / 64) as usize, 1 << (at % 64))
    }

    fn see(&mut self, seq: u64) -> Copy {
        if seq >= self.top {
            if seq - self.top >= WINDOW {
                self.bits.fill(0);
            } else {
                for s in self.top..seq {
                    let (w, b) = Window::bit(s);
                    if let Some(word) = self.bits.get_mut(w) {
                        *word &= !b;
                    }
                }
            }
            self.top = seq + 1;
            let (w, b) = Window::bit(seq);
            if let Some(word) = self.bits.get_mut(w) {
                *word = (*word & !b) | b;
            }
            return Copy::First;
        }
        if self.top - seq > WINDOW {
            return Copy::Late;
        }
        let (w, b) = Window::bit(seq);
        match self.bits.get_mut(w) {
            Some(word) if *word & b == 0 => {
                *word |= b;
                Copy::First
            }
            _ => Copy::Again,
        }
    }
}

/// The windows of every origin heard from, at most `max` of them.
#[derive(Default)]
pub struct CopyWindows {
    windows: BTreeMap<(String, u64), Window>,
    clock: u64,
}

impl CopyWindows {
    pub fn see(&mut self, stamp: &Stamp, max: usize, ledger: &Ledger) -> Copy {
        self.clock += 1;
        let key = (stamp.node.clone(), stamp.epoch);
        if !self.windows.contains_key(&key) {
            if self.windows.len() >= max.max(1) {
                let oldest = self
                    .windows
                    .iter()
                    .min_by_key(|(_, w)| w.heard)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    self.windows.remove(&oldest);
                }
            }
            self.windows.insert(
                key.clone(),
                Window {
                    top: 0,
                    bits: Box::new([0; WORDS]),
                    heard: 0,
                    _charge: ledger.charge(WINDOW_BYTES),
                },
            );
        }
        match self.windows.get_mut(&key) {
            Some(w) => {
                w.heard = self.clock;
                w.see(stamp.seq)
            }
            None => Copy::First,
        }
    }

    /// Origins whose windows are held.
    pub fn origins(&self) -> usize {
        self.windows.len()
    }
}
