//! The simulated store (persistence-ops.md §1.8 (c)): what the runtime's journal does with
//! the core's records, on a seeded clock, with crashes.
//!
//! Each [`Output::Persist`](tidemq_core::Output::Persist) batch goes to a writer (a few
//! milliseconds), then:
//! - `sync = fsync`: a group commit starts shortly after the first unsynced write and takes a
//!   seeded time (0–50 ms, sometimes much longer); its end makes everything written before it
//!   started durable, and reports `PersistDone` for it;
//! - `sync = os` (and `none`): `PersistDone` follows the write; the operating system writes
//!   back in the background every few seconds.
//!
//! A crash keeps what the disk holds: a *process* crash keeps everything written (with
//! `fsync`, that can be more than was reported durable), a *power loss* only what was synced
//! plus, most of the time, a random byte prefix of the rest. The kept bytes are real journal
//! bytes, one frame per batch as the runtime writes them ([`persist::encode_batch`]), read
//! back with the core's own scanner: a cut frame fails its checksum and is dropped whole.
//! Every record read back is compared with the one written, and the snapshot file with its
//! records. A store failure (`PersistFailed`, then nothing more) strikes at a seeded time in
//! some S6 seeds; the world then takes the broker down a little later (fail fast).
//!
//! Snapshots replace the journal up to their `upto` once they reach the disk (a seeded delay
//! later); a crash before that loses the snapshot, never the journal.

use std::collections::VecDeque;

use bytes::BytesMut;
use tidemq_core::config::SyncMode;
use tidemq_core::persist::{self, FileKind, Record, Recovered};

use crate::rng::Rng;

/// What the store tells the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreAct {
    /// Feed `Input::PersistDone { upto }`.
    Done(u64),
    /// Feed `Input::PersistFailed`.
    Failed,
    /// A snapshot reached the disk.
    SnapshotStored(u64),
}

/// What a crash left.
#[derive(Debug)]
pub struct Crashed {
    pub recovered: Recovered,
    pub handed: u64,
    pub done: u64,
    pub kept: u64,
    /// Records that did not read back as they were written (codec round trip), or a
    /// snapshot that did not verify.
    pub damage: Vec<String>,
}

pub struct SimStore {
    pub mode: SyncMode,
    rng: Rng,
    /// The snapshot on disk: its `upto` and records.
    snap_upto: u64,
    snap: Vec<Record>,
    /// Batches after the snapshot, handed to us (written or not), in order: first sequence
    /// number and records. One batch is one journal frame, as the runtime writes it.
    journal: VecDeque<(u64, Vec<Record>)>,
    handed: u64,
    written: u64,
    synced: u64,
    /// Last `PersistDone` reported.
    reported: u64,
    /// Batches waiting for the writer: (write at, upto).
    writes: VecDeque<(u64, u64)>,
    /// A group commit about to start.
    flush_start: Option<u64>,
    /// A group commit under way: (ends at, covers up to).
    flush: Option<(u64, u64)>,
    /// `PersistDone` reports on their way: (at, upto).
    reports: VecDeque<(u64, u64)>,
    /// Background writeback of the operating system (`os`, `none`).
    next_writeback: u64,
    /// A snapshot being written: (lands at, upto, records).
    pending_snapshot: Option<(u64, u64, Vec<Record>)>,
    /// The first group commit (`fsync`) or write (`os`, `none`) at or after this time fails.
    pub fail_at: Option<u64>,
    pub failed: bool,
    /// Planted bug: `fsync` mode reports records durable when merely written, and a crash
    /// keeps only what was synced.
    lie: bool,
}

/// Everything in `records` applied in order to `base`.
fn replay<'a>(
    base: impl IntoIterator<Item = &'a Record>,
    records: impl IntoIterator<Item = &'a Record>,
    upto: u64,
) -> Recovered {
    let mut r = Recovered::default();
    for rec in base.into_iter().chain(records) {
        r.apply(rec.clone());
    }
    r.last_seq = upto;
    r.prune();
    r
}

impl SimStore {
    pub fn new(mode: SyncMode, rng: Rng, lie: bool) -> SimStore {
        SimStore {
            mode,
            rng,
            snap_upto: 0,
            snap: Vec::new(),
            journal: VecDeque::new(),
            handed: 0,
            written: 0,
            synced: 0,
            reported: 0,
            writes: VecDeque::new(),
            flush_start: None,
            flush: None,
            reports: VecDeque::new(),
            next_writeback: 0,
            pending_snapshot: None,
            fail_at: None,
            failed: false,
            lie,
        }
    }

    /// Batches since the snapshot.
    pub fn journal_len(&self) -> usize {
        self.journal.len()
    }

    fn journal_records(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.journal.iter().flat_map(|(first, rs)| {
            rs.iter()
                .enumerate()
                .map(move |(i, r)| (first + i as u64, r))
        })
    }

    /// A flush delay: mostly quick, sometimes a slow disk, rarely a very slow one.
    fn flush_delay(&mut self) -> u64 {
        let r = self.rng.below(1000);
        if r < 880 {
            self.rng.range(0, 50)
        } else if r < 985 {
            self.rng.range(50, 1_500)
        } else {
            self.rng.range(1_500, 8_000)
        }
    }

    /// A batch from `Output::Persist`.
    pub fn persist(&mut self, now: u64, upto: u64, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let n = records.len() as u64;
        let first = upto + 1 - n.min(upto + 1);
        self.journal.push_back((first, records));
        self.handed = self.handed.max(upto);
        if self.failed {
            return;
        }
        let delay = if self.rng.chance(800) {
            0
        } else {
            self.rng.range(1, 4)
        };
        let last = self.writes.back().map_or(0, |w| w.0);
        self.writes.push_back(((now + delay).max(last), upto));
    }

    /// An `Output::Snapshot`: checks it against the journal (P2) and starts writing it.
    /// Returns a description of the difference if the snapshot's records do not rebuild the
    /// state the journal rebuilds.
    pub fn snapshot(&mut self, now: u64, upto: u64, records: Vec<Record>) -> Option<String> {
        let journal = self
            .journal_records()
            .filter(|(s, _)| *s <= upto)
            .map(|(_, r)| r);
        let from_journal = replay(self.snap.iter(), journal, upto);
        let from_snapshot = replay(records.iter(), std::iter::empty(), upto);
        let diff = describe_diff(&from_journal, &from_snapshot);
        if !self.failed {
            let at = now + self.rng.range(2, 300);
            match &self.pending_snapshot {
                Some((_, u, _)) if *u >= upto => {}
                _ => self.pending_snapshot = Some((at, upto, records)),
            }
        }
        diff
    }

    /// Nothing handed to the store is still waiting to be reported durable (so the broker
    /// holds no output for it).
    pub fn settled(&self) -> bool {
        self.failed || self.mode == SyncMode::None || self.reported >= self.handed
    }

    /// When something next happens.
    pub fn next_due(&self) -> Option<u64> {
        if self.failed {
            return None;
        }
        [
            self.writes.front().map(|w| w.0),
            self.flush_start,
            self.flush.map(|f| f.0),
            self.reports.front().map(|r| r.0),
            self.pending_snapshot.as_ref().map(|p| p.0),
            (self.mode != SyncMode::Fsync && self.written > self.synced)
                .then_some(self.next_writeback),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs everything due by `now`, in time order.
    pub fn tick(&mut self, now: u64) -> Vec<StoreAct> {
        let mut acts = Vec::new();
        loop {
            if self.failed {
                return acts;
            }
            let Some(t) = self.next_due().filter(|t| *t <= now) else {
                break;
            };
            let failing = self.fail_at.is_some_and(|f| t >= f);
            if self.writes.front().is_some_and(|w| w.0 == t) {
                let Some((_, upto)) = self.writes.pop_front() else {
                    break;
                };
                if failing && self.mode != SyncMode::Fsync {
                    self.fail(&mut acts);
                    continue;
                }
                self.written = self.written.max(upto);
                match self.mode {
                    SyncMode::Fsync if self.lie => self.reports.push_back((t, upto)),
                    SyncMode::Fsync => {
                        if self.flush_start.is_none() && self.flush.is_none() {
                            self.flush_start = Some(t + self.rng.range(0, 5));
                        }
                    }
                    SyncMode::Os | SyncMode::None => {
                        let r = t + self.rng.range(0, 3);
                        let last = self.reports.back().map_or(0, |x| x.0);
                        self.reports.push_back((r.max(last), upto));
                        if self.next_writeback <= t {
                            self.next_writeback = t + self.rng.range(300, 5_000);
                        }
                    }
                }
            } else if self.flush_start == Some(t) {
                self.flush_start = None;
                let d = self.flush_delay();
                self.flush = Some((t + d, self.written));
            } else if self.flush.is_some_and(|f| f.0 == t) {
                let Some((_, covers)) = self.flush.take() else {
                    break;
                };
                if failing {
                    self.fail(&mut acts);
                    continue;
                }
                self.synced = self.synced.max(covers);
                if !self.lie {
                    let r = t + if self.rng.chance(900) {
                        0
                    } else {
                        self.rng.range(1, 3)
                    };
                    let last = self.reports.back().map_or(0, |x| x.0);
                    self.reports.push_back((r.max(last), covers));
                }
                if self.written > self.synced {
                    self.flush_start = Some(t + self.rng.range(0, 5));
                }
            } else if self.reports.front().is_some_and(|r| r.0 == t) {
                let mut upto = 0;
                while let Some(r) = self.reports.front().filter(|r| r.0 == t) {
                    upto = upto.max(r.1);
                    self.reports.pop_front();
                }
                if upto > self.reported {
                    self.reported = upto;
                    acts.push(StoreAct::Done(upto));
                }
            } else if self.pending_snapshot.as_ref().is_some_and(|p| p.0 == t) {
                let Some((_, upto, records)) = self.pending_snapshot.take() else {
                    break;
                };
                if upto > self.snap_upto {
                    self.snap_upto = upto;
                    self.snap = records;
                    while let Some((first, rs)) = self.journal.pop_front() {
                        let last = first + rs.len() as u64 - 1;
                        if last > upto {
                            // A batch across the snapshot keeps its records after it.
                            let skip = upto.saturating_sub(first - 1) as usize;
                            let rest: Vec<Record> = rs.into_iter().skip(skip).collect();
                            self.journal.push_front((upto + 1, rest));
                            break;
                        }
                    }
                    self.written = self.written.max(upto);
                    self.synced = self.synced.max(upto);
                    acts.push(StoreAct::SnapshotStored(upto));
                    if upto > self.reported {
                        self.reported = upto;
                        acts.push(StoreAct::Done(upto));
                    }
                }
            } else if self.mode != SyncMode::Fsync && self.next_writeback == t {
                self.synced = self.written;
                self.next_writeback = t + self.rng.range(300, 5_000);
            } else {
                break;
            }
        }
        acts
    }

    fn fail(&mut self, acts: &mut Vec<StoreAct>) {
        self.failed = true;
        self.fail_at = None;
        self.writes.clear();
        self.flush = None;
        self.flush_start = None;
        self.reports.clear();
        self.pending_snapshot = None;
        acts.push(StoreAct::Failed);
    }

    /// The broker died: keep what the disk holds, read it back as the runtime would, and
    /// start again from it.
    pub fn crash(&mut self, power_loss: bool) -> Crashed {
        let handed = self.handed;
        let done = if self.mode == SyncMode::None {
            handed
        } else {
            self.reported
        };
        // The journal as bytes: a segment after the snapshot.
        let mut seg = BytesMut::new();
        seg.extend_from_slice(&persist::encode_header(
            FileKind::Segment,
            self.snap_upto + 1,
        ));
        let mut synced_len = seg.len();
        let mut damage = Vec::new();
        for (first, rs) in &self.journal {
            let last = first + rs.len() as u64 - 1;
            if last > self.written {
                break;
            }
            if let Err(e) = persist::encode_batch(*first, rs, &mut seg) {
                damage.push(format!("records from {first} refused by the writer: {e}"));
                break;
            }
            if last <= self.synced {
                synced_len = seg.len();
            }
        }
        let written_len = seg.len();
        let keep = if self.lie {
            synced_len
        } else if power_loss {
            if self.rng.chance(300) {
                synced_len
            } else {
                synced_len + self.rng.below((written_len - synced_len) as u64 + 1) as usize
            }
        } else {
            written_len
        };
        let mut recovered = Recovered::default();
        let mut snap_bytes = BytesMut::new();
        if self.snap_upto > 0 {
            snap_bytes
                .extend_from_slice(&persist::encode_header(FileKind::Snapshot, self.snap_upto));
            for r in &self.snap {
                if let Err(e) = persist::encode_frame(self.snap_upto, r, &mut snap_bytes) {
                    damage.push(format!("snapshot record refused by the writer: {e}"));
                }
            }
            persist::encode_snapshot_end(self.snap_upto, self.snap.len() as u64, &mut snap_bytes);
            match persist::read_snapshot(&snap_bytes) {
                Ok((upto, records)) => {
                    if upto != self.snap_upto || records != self.snap {
                        damage.push(format!(
                            "snapshot {} read back differently ({} records, {} written)",
                            self.snap_upto,
                            records.len(),
                            self.snap.len()
                        ));
                    }
                    for r in records {
                        recovered.apply(r);
                    }
                }
                Err(e) => damage.push(format!("snapshot {}: {e}", self.snap_upto)),
            }
        }
        let mut kept = self.snap_upto;
        match persist::scan_segment(seg.get(..keep).unwrap_or_default()) {
            Ok((_, scan)) => {
                for (seq, r) in scan.records {
                    match self.journal_records().find(|(s, _)| *s == seq) {
                        Some((_, orig)) if *orig == r => {}
                        _ => damage.push(format!("record {seq} read back as {r:?}")),
                    }
                    recovered.apply(r);
                    kept = seq;
                }
            }
            Err(e) => damage.push(format!("journal segment: {e}")),
        }
        recovered.last_seq = kept;
        // The store starts again from what it kept (whole batches).
        while self.journal.back().is_some_and(|(s, _)| *s > kept) {
            self.journal.pop_back();
        }
        self.handed = kept;
        self.written = kept;
        self.synced = kept;
        self.reported = kept;
        self.writes.clear();
        self.flush_start = None;
        self.flush = None;
        self.reports.clear();
        self.pending_snapshot = None;
        // A failure still to come strikes the new life (the disk is not repaired by a
        // restart); one that struck is over (the broker exited, the disk was replaced).
        self.failed = false;
        Crashed {
            recovered,
            handed,
            done,
            kept,
            damage,
        }
    }
}

/// What differs between two recovered states, briefly.
fn describe_diff(a: &Recovered, b: &Recovered) -> Option<String> {
    if a == b {
        return None;
    }
    let mut out = Vec::new();
    for (cid, s) in &a.sessions {
        match b.sessions.get(cid) {
            None => out.push(format!("session {cid} only in the journal")),
            Some(t) if t != s => {
                if s.subscriptions != t.subscriptions {
                    out.push(format!(
                        "{cid} subscriptions {:?} vs {:?}",
                        s.subscriptions.keys().collect::<Vec<_>>(),
                        t.subscriptions.keys().collect::<Vec<_>>()
                    ));
                }
                if s.queue != t.queue {
                    out.push(format!(
                        "{cid} queue entries {:?} vs {:?}",
                        s.queue
                            .iter()
                            .map(|(e, d)| (*e, d.msg_id, d.out_state))
                            .collect::<Vec<_>>(),
                        t.queue
                            .iter()
                            .map(|(e, d)| (*e, d.msg_id, d.out_state))
                            .collect::<Vec<_>>()
                    ));
                }
                if s.awaiting_rel != t.awaiting_rel {
                    out.push(format!(
                        "{cid} awaiting PUBREL {:?} vs {:?}",
                        s.awaiting_rel, t.awaiting_rel
                    ));
                }
                if (s.version, s.expiry_secs, s.disconnected_at_unix_ms)
                    != (t.version, t.expiry_secs, t.disconnected_at_unix_ms)
                {
                    out.push(format!(
                        "{cid} settings {:?} vs {:?}",
                        (s.version, s.expiry_secs, s.disconnected_at_unix_ms),
                        (t.version, t.expiry_secs, t.disconnected_at_unix_ms)
                    ));
                }
            }
            _ => {}
        }
    }
    for cid in b.sessions.keys() {
        if !a.sessions.contains_key(cid) {
            out.push(format!("session {cid} only in the snapshot"));
        }
    }
    if a.retained != b.retained {
        out.push(format!("retained {:?} vs {:?}", a.retained, b.retained));
    }
    if a.messages != b.messages {
        let ka: Vec<_> = a.messages.keys().collect();
        let kb: Vec<_> = b.messages.keys().collect();
        if ka == kb {
            for (id, m) in &a.messages {
                if b.messages.get(id) != Some(m) {
                    out.push(format!(
                        "message {id} differs: {:?} vs {:?}",
                        m,
                        b.messages.get(id)
                    ));
                    break;
                }
            }
        } else {
            out.push(format!("message ids {ka:?} vs {kb:?}"));
        }
    }
    if a.bridges != b.bridges {
        out.push("bridge outboxes differ".to_owned());
    }
    if out.is_empty() {
        out.push("states differ".to_owned());
    }
    Some(format!("journal vs snapshot: {}", out.join("; ")))
}
