//! The journal's files: a checksummed header, then records framed one by one or in batches
//! (segments), or every live record and a closing mark (snapshots).

use bytes::{BufMut, BytesMut};

use super::record::{Cursor, Record, put_bytes};

/// Why bytes could not be read back as journal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalError {
    /// The file does not start with a valid header.
    BadHeader(&'static str),
    /// A record at `offset` failed its length, checksum, sequence or content check.
    BadRecord { offset: usize, what: &'static str },
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::BadHeader(what) => write!(f, "bad file header: {what}"),
            JournalError::BadRecord { offset, what } => {
                write!(f, "bad record at byte {offset}: {what}")
            }
        }
    }
}

const MAGIC: &[u8; 4] = b"TMQJ";
const FORMAT_VERSION: u8 = 1;
/// magic, version, kind, first sequence number, CRC of the preceding 14 bytes.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 8 + 4;
/// length, CRC, sequence number.
const FRAME_LEN: usize = 4 + 4 + 8;
/// No single record is larger than this (a message of the MQTT maximum plus its keys).
pub const MAX_RECORD_LEN: usize = 268_435_455 + 64 * 1024;
/// Record type of a snapshot's closing mark; never in a segment.
const T_SNAPSHOT_END: u8 = 0xFE;
/// Frame type of a batch: the records of one broker input, numbered from the frame's
/// sequence number, under one checksum, so recovery applies all of them or none.
const T_BATCH: u8 = 0xFD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// Records appended as they happen, numbered from `first_seq`.
    Segment,
    /// Every live record at `first_seq` (the last sequence number it covers).
    Snapshot,
}

/// The header every journal file starts with.
pub fn encode_header(kind: FileKind, first_seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let mut body = BytesMut::with_capacity(HEADER_LEN);
    body.put_slice(MAGIC);
    body.put_u8(FORMAT_VERSION);
    body.put_u8(match kind {
        FileKind::Segment => 0,
        FileKind::Snapshot => 1,
    });
    body.put_u64(first_seq);
    let crc = crc32c(&body);
    body.put_u32(crc);
    h.copy_from_slice(&body);
    h
}

pub fn decode_header(bytes: &[u8]) -> Result<(FileKind, u64), JournalError> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Err(JournalError::BadHeader("file shorter than its header"));
    };
    let mut r = Cursor { buf: h };
    let magic = r.take(4).map_err(JournalError::BadHeader)?;
    if magic != MAGIC {
        return Err(JournalError::BadHeader("not a TideMQ journal file"));
    }
    let version = r.u8().map_err(JournalError::BadHeader)?;
    if version != FORMAT_VERSION {
        return Err(JournalError::BadHeader("unsupported format version"));
    }
    let kind = match r.u8().map_err(JournalError::BadHeader)? {
        0 => FileKind::Segment,
        1 => FileKind::Snapshot,
        _ => return Err(JournalError::BadHeader("unknown file kind")),
    };
    let first_seq = r.u64().map_err(JournalError::BadHeader)?;
    let crc = r.u32().map_err(JournalError::BadHeader)?;
    if crc != crc32c(h.get(..HEADER_LEN - 4).unwrap_or_default()) {
        return Err(JournalError::BadHeader("header checksum mismatch"));
    }
    Ok((kind, first_seq))
}

/// Appends one framed record: `[len u32][crc32c u32 over seq and body][seq u64][body]`.
pub fn encode_frame(seq: u64, record: &Record, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    record.encode(&mut body);
    frame_body(seq, &body, out);
}

/// Appends the records of one input, numbered `first_seq..`, as one frame: a crash that
/// cuts it leaves none of them, so no input is ever half applied after a restart.
pub fn encode_batch(first_seq: u64, records: &[Record], out: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_u8(T_BATCH);
    body.put_u32(records.len() as u32);
    let mut one = BytesMut::new();
    for r in records {
        one.clear();
        r.encode(&mut one);
        put_bytes(&mut body, &one);
    }
    frame_body(first_seq, &body, out);
}

/// The records of a batch frame's body (after its type byte).
fn decode_batch(body: &[u8]) -> Result<Vec<Record>, &'static str> {
    let mut r = Cursor { buf: body };
    let count = r.u32()? as usize;
    // Each record takes at least its 4-byte length and a type byte.
    if count > r.buf.len() / 5 {
        return Err("batch count past the end");
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        records.push(Record::decode(r.bytes()?)?);
    }
    if !r.buf.is_empty() {
        return Err("trailing bytes after the batch");
    }
    Ok(records)
}

fn frame_body(seq: u64, body: &[u8], out: &mut BytesMut) {
    out.reserve(FRAME_LEN + body.len());
    out.put_u32(body.len() as u32);
    out.put_u32(crc32c::crc32c_append(crc32c(&seq.to_be_bytes()), body));
    out.put_u64(seq);
    out.put_slice(body);
}

/// The closing mark of a snapshot holding `count` records.
pub fn encode_snapshot_end(upto: u64, count: u64, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    body.put_u8(T_SNAPSHOT_END);
    body.put_u64(count);
    frame_body(upto, &body, out);
}

/// What a scan of one file found: the records of its longest valid prefix, where that
/// prefix ends, and why it ends there if not at the end of the bytes.
#[derive(Debug, Default)]
pub struct Scan {
    pub records: Vec<(u64, Record)>,
    /// Bytes of the valid prefix, header included.
    pub valid_len: usize,
    pub stopped: Option<JournalError>,
    /// Whether the bytes after the valid prefix are only zeros (preallocated space).
    pub rest_is_zero: bool,
}

/// Reads a segment: records must be numbered `first_seq`, `first_seq + 1`, …; reading stops
/// at the first frame that is incomplete, fails its checksum or breaks the numbering.
pub fn scan_segment(bytes: &[u8]) -> Result<(u64, Scan), JournalError> {
    let (kind, first_seq) = decode_header(bytes)?;
    if kind != FileKind::Segment {
        return Err(JournalError::BadHeader(
            "a snapshot where a segment was expected",
        ));
    }
    let mut scan = Scan {
        valid_len: HEADER_LEN,
        ..Scan::default()
    };
    let mut expect = first_seq;
    let mut offset = HEADER_LEN;
    while let Some(rest) = bytes.get(offset..) {
        if rest.is_empty() {
            break;
        }
        match read_frame(rest) {
            Ok((seq, body, used)) => {
                if seq != expect {
                    scan.stopped = Some(JournalError::BadRecord {
                        offset,
                        what: "sequence number out of order",
                    });
                    break;
                }
                let decoded = match body.split_first() {
                    Some((&T_SNAPSHOT_END, _)) | None => Err("snapshot mark inside a segment"),
                    Some((&T_BATCH, rest)) => decode_batch(rest),
                    Some(_) => Record::decode(body).map(|r| vec![r]),
                };
                match decoded {
                    Ok(records) => {
                        for r in records {
                            scan.records.push((expect, r));
                            expect = expect.wrapping_add(1);
                        }
                    }
                    Err(what) => {
                        scan.stopped = Some(JournalError::BadRecord { offset, what });
                        break;
                    }
                }
                offset += used;
                scan.valid_len = offset;
            }
            Err(what) => {
                scan.stopped = Some(JournalError::BadRecord { offset, what });
                break;
            }
        }
    }
    scan.rest_is_zero = bytes
        .get(scan.valid_len..)
        .is_none_or(|r| r.iter().all(|b| *b == 0));
    Ok((first_seq, scan))
}

/// Reads a snapshot; it counts only if every frame verifies and its closing mark is there.
pub fn read_snapshot(bytes: &[u8]) -> Result<(u64, Vec<Record>), JournalError> {
    let (kind, upto) = decode_header(bytes)?;
    if kind != FileKind::Snapshot {
        return Err(JournalError::BadHeader(
            "a segment where a snapshot was expected",
        ));
    }
    let mut records = Vec::new();
    let mut offset = HEADER_LEN;
    loop {
        let rest = bytes.get(offset..).unwrap_or_default();
        let (seq, body, used) =
            read_frame(rest).map_err(|what| JournalError::BadRecord { offset, what })?;
        if seq != upto {
            return Err(JournalError::BadRecord {
                offset,
                what: "snapshot record from another snapshot",
            });
        }
        if body.first() == Some(&T_SNAPSHOT_END) {
            let mut r = Cursor {
                buf: body.get(1..).unwrap_or_default(),
            };
            let count = r
                .u64()
                .map_err(|what| JournalError::BadRecord { offset, what })?;
            if count != records.len() as u64 || !r.buf.is_empty() || offset + used != bytes.len() {
                return Err(JournalError::BadRecord {
                    offset,
                    what: "snapshot closing mark does not match its contents",
                });
            }
            return Ok((upto, records));
        }
        let record =
            Record::decode(body).map_err(|what| JournalError::BadRecord { offset, what })?;
        records.push(record);
        offset += used;
    }
}

/// One frame at the front of `bytes`: `(seq, body, bytes used)`.
fn read_frame(bytes: &[u8]) -> Result<(u64, &[u8], usize), &'static str> {
    let mut r = Cursor { buf: bytes };
    let len = r.u32().map_err(|_| "frame header cut short")? as usize;
    if len == 0 {
        return Err("empty frame (end of written data)");
    }
    if len > MAX_RECORD_LEN {
        return Err("frame length over the maximum");
    }
    let crc = r.u32().map_err(|_| "frame header cut short")?;
    let seq_bytes: [u8; 8] = r.array().map_err(|_| "frame header cut short")?;
    let body = r.take(len).map_err(|_| "frame cut short")?;
    if crc32c::crc32c_append(crc32c(&seq_bytes), body) != crc {
        return Err("checksum mismatch");
    }
    Ok((u64::from_be_bytes(seq_bytes), body, FRAME_LEN + len))
}

/// CRC-32C (Castagnoli), as every journal frame and header carries it; the crate uses the
/// CPU's CRC instruction where there is one.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
