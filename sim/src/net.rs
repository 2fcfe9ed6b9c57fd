//! The network model: one ordered byte pipe per direction of each connection, with latency,
//! jitter, fragmentation, coalescing, holds (partitions) and black holes.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Open,
    /// Partitioned: bytes wait (TCP keeps retransmitting) until released.
    Held,
    /// Silently lost, no FIN or RST: the connection is dead for good.
    BlackHole,
}

#[derive(Debug, Clone)]
pub enum Seg {
    Data(Bytes),
    Fin,
}

/// How a pipe times and cuts its bytes.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Per mille of sends cut into random fragments (down to single bytes).
    pub fragment_per_mille: u64,
}

#[derive(Debug, Clone)]
pub struct Pipe {
    q: VecDeque<(u64, Seg)>,
    pub mode: Mode,
    last_at: u64,
    /// Bytes queued and not delivered, plus bytes swallowed by a black hole.
    pub in_flight: usize,
}

impl Pipe {
    pub fn new(mode: Mode) -> Pipe {
        Pipe {
            q: VecDeque::new(),
            mode,
            last_at: 0,
            in_flight: 0,
        }
    }

    fn arrival(&mut self, now: u64, shape: &LinkShape, rng: &mut Rng) -> u64 {
        let at = (now + shape.latency_ms + rng.below(shape.jitter_ms + 1)).max(self.last_at);
        self.last_at = at;
        at
    }

    pub fn push(&mut self, now: u64, shape: &LinkShape, rng: &mut Rng, seg: Seg) {
        if self.mode == Mode::BlackHole {
            if let Seg::Data(b) = &seg {
                self.in_flight += b.len();
            }
            return;
        }
        match seg {
            Seg::Data(mut bytes) => {
                self.in_flight += bytes.len();
                let cut = rng.chance(shape.fragment_per_mille);
                while !bytes.is_empty() {
                    let n = if cut {
                        rng.range(1, bytes.len().min(64) as u64) as usize
                    } else {
                        bytes.len()
                    };
                    let piece = bytes.split_to(n.min(bytes.len()));
                    let at = self.arrival(now, shape, rng);
                    self.q.push_back((at, Seg::Data(piece)));
                }
            }
            Seg::Fin => {
                let at = self.arrival(now, shape, rng);
                self.q.push_back((at, Seg::Fin));
            }
        }
    }

    /// When the next segment arrives, if the pipe is open.
    pub fn next_due(&self) -> Option<u64> {
        if self.mode != Mode::Open {
            return None;
        }
        self.q.front().map(|(at, _)| *at)
    }

    /// Everything due at `now`, coalesced: the bytes, and whether a FIN follows them.
    pub fn take_due(&mut self, now: u64) -> (Bytes, bool) {
        let mut out = BytesMut::new();
        if self.mode != Mode::Open {
            return (out.freeze(), false);
        }
        while let Some((at, _)) = self.q.front() {
            if *at > now {
                break;
            }
            match self.q.pop_front() {
                Some((_, Seg::Data(b))) => {
                    self.in_flight = self.in_flight.saturating_sub(b.len());
                    out.extend_from_slice(&b);
                }
                Some((_, Seg::Fin)) => return (out.freeze(), true),
                None => break,
            }
        }
        (out.freeze(), false)
    }

    /// Ends a hold: queued bytes move on from `now`.
    pub fn release(&mut self, now: u64) {
        if self.mode == Mode::Held {
            self.mode = Mode::Open;
            for (at, _) in self.q.iter_mut() {
                *at = (*at).max(now);
            }
            self.last_at = self.last_at.max(now);
        }
    }

    pub fn hold(&mut self) {
        if self.mode == Mode::Open {
            self.mode = Mode::Held;
        }
    }

    pub fn black_hole(&mut self) {
        self.mode = Mode::BlackHole;
        let lost: usize = self
            .q
            .drain(..)
            .map(|(_, s)| match s {
                Seg::Data(b) => b.len(),
                Seg::Fin => 0,
            })
            .sum();
        let _ = lost;
    }

    pub fn clear(&mut self) {
        self.q.clear();
        self.in_flight = 0;
    }

    pub fn is_idle(&self) -> bool {
        self.q.is_empty()
    }
}
