//! The durable store: the core's records appended to a checksummed journal in segments,
//! committed in groups, compacted by snapshots, and read back at start-up.
//!
//! Files in `persistence.data_dir`:
//! - `journal-<first seq>.tmj`: records numbered from the file's first sequence number;
//! - `snapshot-<upto>.tmj`: every live record as of `upto`, valid only with its closing mark.
//!
//! Recovery loads the newest valid snapshot, then the segments after it. A damaged tail of
//! the last segment is what a crash leaves: it is cut off with a warning. Damage anywhere
//! else is corruption and stops start-up, unless `on_corruption = truncate`.
//!
//! All file access goes through [`StoreDir`], so tests can inject lost writes, torn writes,
//! bit flips and I/O errors.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant as StdInstant};

use bytes::BytesMut;
use tidemq_core::config::{PersistenceConfig, SyncMode};
use tidemq_core::persist::{self, FileKind, Record, Recovered};
use tidemq_core::{COMMIT_BOUNDS_US, StoreFigures};
use tracing::{info, warn};

/// A directory of store files.
pub trait StoreDir: Send {
    /// File names in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// A new, empty file open for appending (replacing any file of that name).
    fn create(&mut self, name: &str) -> io::Result<Box<dyn StoreFile>>;
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Makes creations, renames and removals durable.
    fn sync_dir(&mut self) -> io::Result<()>;
}

/// A file open for appending.
pub trait StoreFile: Send {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Cuts the file back to `len` bytes; the next append goes there.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
    /// Makes everything appended so far durable (fdatasync).
    fn sync(&mut self) -> io::Result<()>;
}

/// The real directory.
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// The data directory is private: created 0700, or refused if someone else could
    /// write to it (see [`crate::files::private_dir`]).
    pub fn open(path: impl Into<PathBuf>) -> io::Result<FsDir> {
        let path = path.into();
        crate::files::private_dir(&path)?;
        Ok(FsDir { path })
    }
}

struct FsFile(File);

impl StoreFile for FsFile {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all(bytes)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)?;
        self.0.seek(SeekFrom::Start(len)).map(drop)
    }

    fn sync(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl StoreDir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path.join(name))
    }

    fn create(&mut self, name: &str) -> io::Result<Box<dyn StoreFile>> {
        let file = crate::files::create_private(&self.path.join(name))?;
        Ok(Box::new(FsFile(file)))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path.join(from), self.path.join(to))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.path.join(name))?;
        file.set_len(len)?;
        file.sync_all()
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("journal-{first_seq:020}.tmj")
}

fn snapshot_name(upto: u64) -> String {
    format!("snapshot-{upto:020}.tmj")
}

fn parse_name(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".tmj")?
        .parse()
        .ok()
}

/// What recovery found, besides the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub snapshot: Option<u64>,
    pub segments: usize,
    pub records: u64,
    /// Bytes cut from the end of the last segment (a crash's torn tail).
    pub truncated_bytes: u64,
    /// Damage found before the tail and skipped (`on_corruption = truncate`).
    pub salvaged: Vec<String>,
}

/// The open journal: where records go.
pub struct Journal {
    dir: Box<dyn StoreDir>,
    sync: SyncMode,
    segment_size: u64,
    snapshot_threshold: u64,
    active: Box<dyn StoreFile>,
    active_len: u64,
    /// Sequence number of the next record.
    next_seq: u64,
    /// Segment files written since the last snapshot, oldest first.
    segments: Vec<String>,
    /// Journal bytes since the last snapshot.
    since_snapshot: u64,
    snapshot_asked: bool,
    unsynced: bool,
    /// An operation failed: nothing more is written (a failed fsync is never retried, and
    /// an append after a short write would follow garbage).
    failed: bool,
    /// Bytes written to segments since the journal was opened.
    written: u64,
    /// Bytes of the store's files: the snapshot and the segments since.
    disk_bytes: u64,
    /// No append goes past this (`persistence.max_disk` plus slack).
    hard_limit: u64,
    /// Records were refused (the hard limit, or a full disk): every append is refused until
    /// a snapshot covers them, so the journal never has a gap.
    refusing: bool,
}

/// What became of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Written,
    /// Not written: the store is at its limit or the disk is full. Nothing of it is in the
    /// journal; a snapshot at or after its records makes them durable.
    Refused,
}

fn is_enospc(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC)
}

impl Journal {
    /// Opens the store, recovering its state. Errors name the file and what is wrong.
    pub fn open(
        mut dir: Box<dyn StoreDir>,
        config: &PersistenceConfig,
    ) -> Result<(Journal, Recovered, RecoveryReport), String> {
        let salvage = config.on_corruption == "truncate";
        let mut names = dir
            .list()
            .map_err(|e| format!("cannot list the store: {e}"))?;
        names.sort();
        let mut report = RecoveryReport::default();
        let mut state = Recovered::default();
        // The newest snapshot that verifies; older ones (and broken newer ones) are stale.
        let mut snapshots: Vec<(u64, String)> = names
            .iter()
            .filter_map(|n| parse_name(n, "snapshot-").map(|s| (s, n.clone())))
            .collect();
        snapshots.sort();
        let mut base = 0;
        let mut stale = Vec::new();
        let mut disk_bytes = 0u64;
        while let Some((upto, name)) = snapshots.pop() {
            if report.snapshot.is_some() {
                stale.push(name);
                continue;
            }
            let bytes = dir.read(&name).map_err(|e| format!("{name}: {e}"))?;
            match persist::read_snapshot(&bytes) {
                Ok((at, records)) if at == upto => {
                    disk_bytes += bytes.len() as u64;
                    for r in records {
                        state.apply(r);
                    }
                    base = upto;
                    report.snapshot = Some(upto);
                }
                Ok(_) => return Err(format!("{name}: header does not match the file name")),
                // A snapshot is renamed into place only once complete and synced, so a
                // broken one is corruption.
                Err(e) if salvage => {
                    report.salvaged.push(format!("{name}: {e} (ignored)"));
                    stale.push(name);
                }
                Err(e) => return Err(format!("{name}: {e}")),
            }
        }
        let mut segments: Vec<(u64, String)> = names
            .iter()
            .filter_map(|n| parse_name(n, "journal-").map(|s| (s, n.clone())))
            .collect();
        segments.sort();
        // Segments wholly before the snapshot are leftovers of a compaction.
        let first_needed = segments
            .iter()
            .rposition(|(first, _)| *first <= base + 1)
            .unwrap_or(0);
        let mut expect = base + 1;
        let count = segments.len();
        let firsts: Vec<u64> = segments.iter().map(|(f, _)| *f).collect();
        let mut keep = Vec::new();
        let mut stop = false;
        for (i, (first, name)) in segments.into_iter().enumerate() {
            if i < first_needed || stop {
                stale.push(name);
                continue;
            }
            let last = i + 1 == count;
            let bytes = dir.read(&name).map_err(|e| format!("{name}: {e}"))?;
            let (file_first, scan) = match persist::scan_segment(&bytes) {
                Ok(v) => v,
                Err(e)
                    if last
                        && (bytes.len() < persist::HEADER_LEN || bytes.iter().all(|b| *b == 0)) =>
                {
                    // Created but its header never made it (a file system may keep the size
                    // of a write without its data): an empty tail.
                    warn!(file = name, "store: empty last segment ({e}), removed");
                    stale.push(name);
                    continue;
                }
                Err(e) if salvage => {
                    report
                        .salvaged
                        .push(format!("{name}: {e}; it and later files skipped"));
                    stale.push(name);
                    stop = true;
                    continue;
                }
                Err(e) => return Err(format!("{name}: {e}")),
            };
            if file_first != first {
                return Err(format!("{name}: header says it starts at {file_first}"));
            }
            if first > expect {
                let e = format!("{name}: records {expect}..{first} are missing");
                if !salvage {
                    return Err(e);
                }
                report.salvaged.push(e);
                stale.push(name);
                stop = true;
                continue;
            }
            report.segments += 1;
            for (seq, record) in scan.records {
                if seq < expect {
                    continue;
                }
                state.apply(record);
                report.records += 1;
                expect = seq + 1;
            }
            if let Some(e) = scan.stopped {
                let cut = bytes.len() as u64 - scan.valid_len as u64;
                // A tail cut at an earlier start and back after a power cut: the next segment
                // carries on exactly where the valid part ends.
                let cut_before = firsts.get(i + 1) == Some(&expect);
                if last || scan.rest_is_zero || cut_before {
                    // What a crash leaves: a record cut short or never written.
                    if !scan.rest_is_zero {
                        report.truncated_bytes += cut;
                        warn!(file = name, bytes = cut, "store: torn tail removed ({e})");
                    }
                } else if salvage {
                    report
                        .salvaged
                        .push(format!("{name}: {e}; the rest of the journal skipped"));
                    stop = true;
                } else {
                    return Err(format!(
                        "{name}: {e} (not at the end of the journal: the store is damaged; \
                         set persistence.on_corruption = truncate to start with what is \
                         readable)"
                    ));
                }
                dir.truncate(&name, scan.valid_len as u64)
                    .map_err(|e| format!("{name}: cannot cut the damaged tail: {e}"))?;
                disk_bytes += scan.valid_len as u64;
            } else {
                disk_bytes += bytes.len() as u64;
            }
            keep.push(name);
        }
        // Snapshots a crash interrupted before their rename.
        stale.extend(names.iter().filter(|n| n.ends_with(".tmj.tmp")).cloned());
        for name in stale {
            dir.remove(&name).map_err(|e| format!("{name}: {e}"))?;
        }
        state.last_seq = expect - 1;
        let next_seq = expect;
        // Appends always go to a fresh segment, so a cut tail is never written over.
        let first = segment_name(next_seq);
        if keep.contains(&first) {
            // Replaced by the fresh segment below (it holds no record past `expect`).
            disk_bytes = disk_bytes.saturating_sub(persist::HEADER_LEN as u64);
        }
        keep.retain(|n| *n != first);
        let mut active = dir.create(&first).map_err(|e| format!("{first}: {e}"))?;
        let header = persist::encode_header(FileKind::Segment, next_seq);
        active
            .append(&header)
            .and_then(|()| active.sync())
            .and_then(|()| dir.sync_dir())
            .map_err(|e| format!("{first}: {e}"))?;
        keep.push(first);
        let journal = Journal {
            dir,
            sync: config.sync,
            segment_size: config.segment_size,
            snapshot_threshold: config.snapshot_threshold,
            active,
            active_len: header.len() as u64,
            next_seq,
            segments: keep,
            since_snapshot: 0,
            snapshot_asked: false,
            unsynced: false,
            failed: false,
            written: 0,
            disk_bytes: disk_bytes + header.len() as u64,
            hard_limit: config.disk_hard_limit(),
            refusing: false,
        };
        Ok((journal, state, report))
    }

    /// Appends the records of one input, numbered `upto - len + 1 ..= upto`, as one batch
    /// (one frame, or a chain of parts read back only whole; the write, not the commit). A
    /// segment is only ever left between inputs, so an input is never split across files.
    ///
    /// Past the disk limit, or on a full disk, the input is refused (nothing of it is
    /// written, the store does not fail) and so is every later one until a snapshot.
    pub fn append(&mut self, upto: u64, records: &[Record]) -> io::Result<Appended> {
        self.check_usable()?;
        let result = self.append_inner(upto, records);
        self.failed |= result.is_err();
        result
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other(
                "the store failed earlier; nothing more is written",
            ));
        }
        Ok(())
    }

    fn append_inner(&mut self, upto: u64, records: &[Record]) -> io::Result<Appended> {
        if self.refusing {
            return Ok(Appended::Refused);
        }
        let first = (upto + 1)
            .checked_sub(records.len() as u64)
            .filter(|f| *f == self.next_seq)
            .ok_or_else(|| {
                io::Error::other(format!(
                    "records up to {upto} ({} of them) where {} was expected next",
                    records.len(),
                    self.next_seq
                ))
            })?;
        if records.is_empty() {
            return Ok(Appended::Written);
        }
        let mut buf = BytesMut::new();
        // Checked before anything is written: a batch the reader would refuse is an error.
        persist::encode_batch(first, records, &mut buf).map_err(io::Error::other)?;
        let rotates = self.active_len >= self.segment_size;
        let header = if rotates { persist::HEADER_LEN } else { 0 };
        if self.disk_bytes + (header + buf.len()) as u64 > self.hard_limit {
            warn!(
                disk_bytes = self.disk_bytes,
                limit = self.hard_limit,
                "store: at its disk limit, records refused until the next snapshot"
            );
            self.refusing = true;
            return Ok(Appended::Refused);
        }
        if rotates {
            self.rotate(first)?;
        }
        match self.write_active(&buf) {
            Err(e) if is_enospc(&e) => {
                // A write(2) that failed leaves its file as before once cut back: the store
                // carries on after a snapshot, when there is room again.
                self.active.truncate(self.active_len)?;
                warn!(error = %e, "store: disk full, records refused until the next snapshot");
                self.refusing = true;
                Ok(Appended::Refused)
            }
            Err(e) => Err(e),
            Ok(()) => {
                self.next_seq = upto + 1;
                Ok(Appended::Written)
            }
        }
    }

    fn write_active(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.active.append(bytes)?;
        self.active_len += bytes.len() as u64;
        self.since_snapshot += bytes.len() as u64;
        self.written += bytes.len() as u64;
        self.disk_bytes += bytes.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Bytes of the store's files.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Whether appends are refused until the next snapshot.
    pub fn refusing(&self) -> bool {
        self.refusing
    }

    /// Closes the active segment (synced) and starts one at `first_seq`.
    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        self.commit()?;
        let name = segment_name(first_seq);
        let mut file = self.dir.create(&name)?;
        let header = persist::encode_header(FileKind::Segment, first_seq);
        file.append(&header)?;
        if self.sync == SyncMode::Fsync {
            file.sync()?;
            self.dir.sync_dir()?;
        }
        self.active = file;
        self.active_len = header.len() as u64;
        self.disk_bytes += header.len() as u64;
        self.segments.push(name);
        Ok(())
    }

    /// Makes appended records as durable as `sync` promises.
    pub fn commit(&mut self) -> io::Result<()> {
        self.check_usable()?;
        if self.unsynced && self.sync == SyncMode::Fsync {
            let result = self.active.sync();
            self.failed |= result.is_err();
            result?;
        }
        self.unsynced = false;
        Ok(())
    }

    /// Whether the journal has grown enough to ask the core for a snapshot (once).
    pub fn wants_snapshot(&mut self) -> bool {
        if !self.snapshot_asked && self.since_snapshot >= self.snapshot_threshold {
            self.snapshot_asked = true;
            return true;
        }
        false
    }

    /// Writes a snapshot of everything up to `upto` and drops the segments it replaces. On a
    /// full disk it is not written (`Refused`) and the journal stays as it was.
    pub fn snapshot(&mut self, upto: u64, records: &[Record]) -> io::Result<Appended> {
        self.check_usable()?;
        let result = self.snapshot_inner(upto, records);
        self.failed |= result.is_err();
        result
    }

    fn snapshot_inner(&mut self, upto: u64, records: &[Record]) -> io::Result<Appended> {
        // While appends are refused the journal stops short of `upto`: the snapshot covers
        // the records it does not have.
        let in_place = if self.refusing {
            upto + 1 >= self.next_seq
        } else {
            upto + 1 == self.next_seq
        };
        if !in_place {
            return Err(io::Error::other(format!(
                "snapshot at {upto} while the journal is at {}",
                self.next_seq - 1
            )));
        }
        self.commit()?;
        let name = snapshot_name(upto);
        let tmp = format!("{name}.tmp");
        let snap_len = match self.write_snapshot_file(&tmp, upto, records) {
            Ok(len) => len,
            Err(e) if is_enospc(&e) => {
                // Only the tmp file changed: without it the store is as before (a leftover
                // is removed at the next start).
                let _ = self.dir.remove(&tmp);
                warn!(error = %e, "store: disk full, snapshot not written");
                return Ok(Appended::Refused);
            }
            Err(e) => return Err(e),
        };
        self.dir.rename(&tmp, &name)?;
        self.dir.sync_dir()?;
        let old = std::mem::take(&mut self.segments);
        let next = segment_name(upto + 1);
        let mut active = self.dir.create(&next)?;
        let header = persist::encode_header(FileKind::Segment, upto + 1);
        active.append(&header)?;
        active.sync()?;
        self.dir.sync_dir()?;
        self.active = active;
        self.active_len = header.len() as u64;
        self.next_seq = upto + 1;
        self.refusing = false;
        self.segments.push(next.clone());
        for seg in old.iter().filter(|s| **s != next) {
            self.dir.remove(seg)?;
        }
        for n in self.dir.list()? {
            if parse_name(&n, "snapshot-").is_some_and(|s| s < upto) {
                self.dir.remove(&n)?;
            }
        }
        self.dir.sync_dir()?;
        self.disk_bytes = snap_len + header.len() as u64;
        self.since_snapshot = 0;
        self.snapshot_asked = false;
        Ok(Appended::Written)
    }

    /// The snapshot file, synced; its length.
    fn write_snapshot_file(&mut self, tmp: &str, upto: u64, records: &[Record]) -> io::Result<u64> {
        let mut file = self.dir.create(tmp)?;
        let mut len = 0u64;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&persist::encode_header(FileKind::Snapshot, upto));
        for r in records {
            persist::encode_frame(upto, r, &mut buf).map_err(io::Error::other)?;
            if buf.len() >= 1 << 20 {
                file.append(&buf)?;
                len += buf.len() as u64;
                buf.clear();
            }
        }
        persist::encode_snapshot_end(upto, records.len() as u64, &mut buf);
        file.append(&buf)?;
        len += buf.len() as u64;
        // A snapshot replaces synced segments, so it is synced whatever the mode.
        file.sync()?;
        Ok(len)
    }
}

/// Work for the store thread, in the core's output order.
pub enum StoreCmd {
    Persist { upto: u64, records: Vec<Record> },
    Snapshot { upto: u64, records: Vec<Record> },
}

/// What the store thread reports back.
#[derive(Debug)]
pub enum StoreEvent {
    Done {
        upto: u64,
    },
    Failed {
        error: String,
    },
    SnapshotWanted,
    /// The store's disk use, reported when it matters to the broker: near or over
    /// `persistence.max_disk`, just back under it, or while appends are refused.
    Usage {
        bytes: u64,
        refusing: bool,
    },
}

/// Runs the journal on its own thread: appends what arrives, commits in groups
/// (`flush_interval` after the first pending record, or `max_batch` records), reports each
/// commit. After a failure it reports once and stops: a failed fsync is never retried.
pub fn spawn(
    journal: Journal,
    config: &PersistenceConfig,
    report: impl Fn(StoreEvent) + Send + 'static,
) -> io::Result<(std_mpsc::Sender<StoreCmd>, std::thread::JoinHandle<()>)> {
    spawn_with_stats(journal, config, Arc::default(), report)
}

/// The store thread's figures for the metrics, updated as it works, read by the driver.
#[derive(Debug, Default)]
pub struct StoreStats {
    commit_buckets: [AtomicU64; COMMIT_BOUNDS_US.len() + 1],
    commit_sum_us: AtomicU64,
    group_records: AtomicU64,
    journal_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    snapshots_written: AtomicU64,
    last_snapshot_us: AtomicU64,
}

impl StoreStats {
    fn commit(&self, took: Duration, records: usize) {
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(b) = self.commit_buckets.get(StoreFigures::bucket_of(us)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.commit_sum_us.fetch_add(us, Ordering::Relaxed);
        self.group_records
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    pub fn figures(&self) -> StoreFigures {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut f = StoreFigures {
            commit_sum_us: get(&self.commit_sum_us),
            group_records: get(&self.group_records),
            journal_bytes: get(&self.journal_bytes),
            disk_bytes: get(&self.disk_bytes),
            snapshots_written: get(&self.snapshots_written),
            last_snapshot_us: get(&self.last_snapshot_us),
            ..StoreFigures::default()
        };
        for (to, from) in f.commit_buckets.iter_mut().zip(&self.commit_buckets) {
            *to = get(from);
        }
        f
    }
}

/// [`spawn`], keeping `stats` up to date.
pub fn spawn_with_stats(
    mut journal: Journal,
    config: &PersistenceConfig,
    stats: Arc<StoreStats>,
    report: impl Fn(StoreEvent) + Send + 'static,
) -> io::Result<(std_mpsc::Sender<StoreCmd>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel::<StoreCmd>();
    let window = Duration::from_millis(config.flush_interval_ms);
    let wait = config.sync == SyncMode::Fsync;
    let max_batch = config.max_batch as usize;
    // Usage is reported from a little under the low mark, so the broker sees the store come
    // back under it; below that it does not matter to the broker.
    let report_from = config.disk_low_mark() - config.disk_low_mark() / 8;
    let handle = std::thread::Builder::new()
        .name("tidemq-store".to_owned())
        .spawn(move || {
            let mut commits: u64 = 0;
            // A store already near its cap at start (or a cap lowered since) is reported.
            stats
                .disk_bytes
                .store(journal.disk_bytes(), Ordering::Relaxed);
            let mut reported_high = journal.disk_bytes() >= report_from;
            if reported_high {
                report(StoreEvent::Usage {
                    bytes: journal.disk_bytes(),
                    refusing: false,
                });
            }
            while let Ok(cmd) = rx.recv() {
                let started = StdInstant::now();
                let mut pending = 0usize;
                let mut upto = None;
                let mut next = Some(cmd);
                let result = loop {
                    let Some(cmd) = next.take() else {
                        break Ok(());
                    };
                    let r = match cmd {
                        StoreCmd::Persist { upto: u, records } => {
                            let r = journal.append(u, &records);
                            // Refused records are never reported done: a snapshot covers them.
                            if let Ok(Appended::Written) = r {
                                pending += records.len();
                                upto = Some(u);
                            }
                            r.map(drop)
                        }
                        StoreCmd::Snapshot { upto: u, records } => {
                            let began = StdInstant::now();
                            let r = journal.snapshot(u, &records);
                            if let Ok(Appended::Written) = r {
                                let us = began.elapsed().as_micros().min(u128::from(u64::MAX));
                                stats.last_snapshot_us.store(us as u64, Ordering::Relaxed);
                                stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
                                info!(records = records.len(), upto = u, "store: snapshot written");
                                upto = Some(u);
                            }
                            r.map(drop)
                        }
                    };
                    if let Err(e) = r {
                        break Err(e);
                    }
                    if pending >= max_batch {
                        break Ok(());
                    }
                    // Gather the group: whatever is queued, and in fsync mode whatever
                    // arrives within the flush window.
                    next = match rx.try_recv() {
                        Ok(cmd) => Some(cmd),
                        Err(_) if wait => {
                            let left = window.saturating_sub(started.elapsed());
                            rx.recv_timeout(left).ok()
                        }
                        Err(_) => None,
                    };
                };
                if let Err(e) = result.and_then(|()| journal.commit()) {
                    report(StoreEvent::Failed {
                        error: format!("store write failed, no further writes: {e}"),
                    });
                    return;
                }
                commits += 1;
                stats.commit(started.elapsed(), pending);
                stats
                    .journal_bytes
                    .store(journal.written, Ordering::Relaxed);
                if let Some(upto) = upto {
                    report(StoreEvent::Done { upto });
                }
                let bytes = journal.disk_bytes();
                stats.disk_bytes.store(bytes, Ordering::Relaxed);
                let high = bytes >= report_from || journal.refusing();
                if high || reported_high {
                    report(StoreEvent::Usage {
                        bytes,
                        refusing: journal.refusing(),
                    });
                }
                reported_high = high;
                if journal.wants_snapshot() {
                    report(StoreEvent::SnapshotWanted);
                }
                if commits.is_multiple_of(10_000) {
                    tracing::debug!(commits, "store: group commits");
                }
            }
        })?;
    Ok((tx, handle))
}

#[cfg(test)]
mod tests;
