//! A persistent session's outbound QoS 2 messages as its record in the sessions bucket must
//! show them, so that the session, moved to another node, sends none of them twice (the
//! broker's side is `broker/cluster_qos2.rs`).
//!
//! Inbound, a client's QoS 2 PUBLISH to a persistent session is in the record with the stamp
//! its stream write will carry (its dedup id) before that write is made, and stays there until
//! its PUBREL: the next node answers a PUBLISH again with that id by writing it again under the
//! same dedup id (stored once), and a PUBREL with PUBCOMP. The PUBCOMP waits for a record
//! without the id, so a client reusing it is never taken for a resend. Once JetStream confirms
//! the write, the next record marks the id stored: the next node answers a PUBLISH again with
//! a marked id without writing it, since past the stream's `duplicate_window` (2 minutes) a
//! write again would store the message twice.
//!
//! A message is known by its sequence in the durable stream. Before its PUBLISH first goes
//! out, its (packet id, sequence) is in a record the bucket acknowledged; before its PUBREL
//! goes out, so is its released stage; once its PUBCOMP came, its sequence stays in the
//! record's finished set until the cursor passes it. The next node resends a PUBLISH with its
//! packet id and DUP (the client holds the id until PUBREL: one delivery), or the PUBREL, and
//! skips finished ones when the stream brings them again.

use std::collections::{BTreeMap, BTreeSet};

use super::envelope::Stamp;
use crate::memory::{Charge, Ledger};
use crate::window::OutStage;

use super::record::{MAX_QOS2_DONE, MAX_QOS2_WINDOW};

/// What one entry of these maps costs (key, value, node overhead).
const ENTRY_BYTES: usize = 48;

/// A QoS 2 window as written in a record: packet id -> (stream sequence, released).
pub(crate) type Window = BTreeMap<u16, (u64, bool)>;

/// Inbound QoS 2 ids awaiting PUBREL -> the stamp of their stream write.
pub(crate) type Inbound = BTreeMap<u16, Stamp>;

/// The QoS 2 state a record carries.
#[derive(Default)]
pub(crate) struct Qos2Record {
    pub window: Window,
    pub done: BTreeSet<u64>,
    pub inbound: Inbound,
    /// Those of `inbound` whose stream write was confirmed.
    pub stored: BTreeSet<u16>,
}

pub(crate) struct ExactlyOnce {
    /// The window in the last record the bucket acknowledged.
    pub recorded: Window,
    /// The window in the record write on its way.
    pub writing: Option<Window>,
    /// Packet ids whose next packet (first PUBLISH, or PUBREL) waits for a record.
    pub owed: BTreeSet<u16>,
    /// Sequences past the cursor whose delivery finished.
    pub done: BTreeSet<u64>,
    /// Resumed from a record: sequence -> packet id of messages in flight there, until the
    /// stream brings the message (PUBLISH stage) or the flow ends (PUBREL stage).
    pub resumed: BTreeMap<u64, (u16, OutStage)>,
    /// Inbound ids as the next record write carries them, as the write on its way and the
    /// last acknowledged one have them.
    pub inbound: Inbound,
    pub inbound_writing: Option<Inbound>,
    pub inbound_recorded: Inbound,
    /// Inbound ids whose PUBREL came: their PUBCOMP waits for a record without them.
    pub releasing: BTreeSet<u16>,
    /// Inbound ids resumed from a record whose stream write this node has not confirmed.
    pub resumed_inbound: BTreeSet<u16>,
    /// Inbound ids whose stream write was confirmed (here, or as the record says), for the
    /// next record write.
    pub stored: BTreeSet<u16>,
    charge: Charge,
}

impl ExactlyOnce {
    pub fn new(ledger: &Ledger) -> ExactlyOnce {
        ExactlyOnce {
            recorded: Window::new(),
            writing: None,
            owed: BTreeSet::new(),
            done: BTreeSet::new(),
            resumed: BTreeMap::new(),
            inbound: Inbound::new(),
            inbound_writing: None,
            inbound_recorded: Inbound::new(),
            releasing: BTreeSet::new(),
            resumed_inbound: BTreeSet::new(),
            stored: BTreeSet::new(),
            charge: ledger.charge(0),
        }
    }

    /// Resumed from a record with this QoS 2 state.
    pub fn resume(&mut self, record: Qos2Record) {
        let Qos2Record {
            window,
            done,
            inbound,
            stored,
        } = record;
        // A stored one needs no write again: a PUBLISH again with it is a resend.
        self.resumed_inbound = inbound
            .keys()
            .copied()
            .filter(|pid| !stored.contains(pid))
            .collect();
        self.stored = stored;
        self.inbound_recorded = inbound.clone();
        self.inbound = inbound;
        self.resumed = window
            .iter()
            .map(|(&pid, &(seq, released))| {
                let stage = if released {
                    OutStage::Released
                } else {
                    OutStage::Published
                };
                (seq, (pid, stage))
            })
            .collect();
        self.recorded = window;
        self.done = done;
        self.recount();
    }

    /// Whether another QoS 2 message may enter the window: room in the record for it, and
    /// for the sequences of everything in the window once finished.
    pub fn has_room(&self) -> bool {
        let window = self
            .recorded
            .len()
            .max(self.writing.as_ref().map_or(0, Window::len))
            + self.owed.len();
        window < MAX_QOS2_WINDOW && self.done.len() + window < MAX_QOS2_DONE
    }

    /// Whether the packet of `pid` at `stage` for `seq` may go out: the record says so.
    pub fn recorded_as(&self, pid: u16, seq: u64, stage: OutStage) -> bool {
        self.recorded.get(&pid) == Some(&(seq, stage == OutStage::Released))
    }

    /// A delivery of `seq` finished past the cursor: not to be sent again.
    pub fn finish(&mut self, seq: u64, cursor: Option<u64>) {
        self.resumed.remove(&seq);
        if cursor.is_none_or(|c| seq > c) {
            self.done.insert(seq);
        }
        self.recount();
    }

    /// The cursor moved to `cursor`: what it passed needs no mark. Whether room opened.
    pub fn cursor_moved(&mut self, cursor: u64) -> bool {
        let full = !self.has_room();
        self.done = self.done.split_off(&cursor.saturating_add(1));
        self.recount();
        full && self.has_room()
    }

    pub fn recount(&mut self) {
        let entries = self.recorded.len()
            + self.writing.as_ref().map_or(0, Window::len)
            + self.owed.len()
            + self.done.len()
            + self.resumed.len()
            + self.releasing.len()
            + self.resumed_inbound.len()
            + self.stored.len();
        // An inbound entry holds a stamp (its node's name, at most 64 bytes).
        let inbound = self.inbound.len()
            + self.inbound_writing.as_ref().map_or(0, Inbound::len)
            + self.inbound_recorded.len();
        self.charge
            .set(entries * ENTRY_BYTES + inbound * (ENTRY_BYTES + 64));
    }
}
