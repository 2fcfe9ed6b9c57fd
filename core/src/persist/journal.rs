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
    /// The writer refused data the reader would refuse (it writes nothing then).
    TooLarge(&'static str),
}

impl std::fmt::Display for JournalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JournalError::BadHeader(what) => write!(f, "bad file header: {what}"),
            JournalError::BadRecord { offset, what } => {
                write!(f, "bad record at byte {offset}: {what}")
            }
            JournalError::TooLarge(what) => write!(f, "not written: {what}"),
        }
    }
}

impl std::error::Error for JournalError {}

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
/// Frame type of one part of a batch too large for one frame: `[flags u8][bytes]`, every
/// part numbered with the batch's first sequence number. The parts' bytes, joined, are a
/// batch body; recovery applies it only when the final part is there, so a chain cut by a
/// crash is a torn tail like a cut frame. A chain never spans segment files.
const T_BATCH_PART: u8 = 0xFC;
/// Part flag: more parts follow.
const PART_MORE: u8 = 1;
/// Bytes of a batch body per frame: a batch larger than this is written in parts. Well
/// under [`MAX_RECORD_LEN`], so a part frame is always readable; a recovery reads at most
/// this much before a checksum tells it whether a part is whole.
pub const BATCH_PART_LEN: usize = 16 << 20;
/// No batch (the records of one input) is larger than this: the writer refuses more, and
/// the reader never gathers more parts than this.
pub const MAX_BATCH_LEN: usize = 1 << 30;

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
/// A record over [`MAX_RECORD_LEN`] is refused (the reader would refuse its frame).
pub fn encode_frame(seq: u64, record: &Record, out: &mut BytesMut) -> Result<(), JournalError> {
    let mut body = BytesMut::new();
    record.encode(&mut body);
    if body.len() > MAX_RECORD_LEN {
        return Err(JournalError::TooLarge(
            "a record over the maximum record length",
        ));
    }
    frame_body(seq, &body, out);
    Ok(())
}

/// Appends the records of one input, numbered `first_seq..`, as one frame: a crash that
/// cuts it leaves none of them, so no input is ever half applied after a restart. A batch
/// over [`BATCH_PART_LEN`] goes in consecutive part frames, applied only together.
pub fn encode_batch(
    first_seq: u64,
    records: &[Record],
    out: &mut BytesMut,
) -> Result<(), JournalError> {
    encode_batch_parts(first_seq, records, BATCH_PART_LEN, out)
}

/// [`encode_batch`] with parts of at most `part_len` bytes (at least 1, at most
/// [`BATCH_PART_LEN`]): tests use small parts to exercise chains cheaply. Writes nothing
/// on error.
pub fn encode_batch_parts(
    first_seq: u64,
    records: &[Record],
    part_len: usize,
    out: &mut BytesMut,
) -> Result<(), JournalError> {
    if part_len == 0 || part_len > BATCH_PART_LEN {
        return Err(JournalError::TooLarge("a batch part size out of range"));
    }
    let count = u32::try_from(records.len())
        .map_err(|_| JournalError::TooLarge("more records in one batch than a count holds"))?;
    let mut body = BytesMut::new();
    body.put_u8(T_BATCH);
    body.put_u32(count);
    let mut one = BytesMut::new();
    for r in records {
        one.clear();
        r.encode(&mut one);
        if one.len() > MAX_RECORD_LEN {
            return Err(JournalError::TooLarge(
                "a record over the maximum record length",
            ));
        }
        put_bytes(&mut body, &one);
        if body.len() > MAX_BATCH_LEN {
            return Err(JournalError::TooLarge(
                "a batch over the maximum batch length",
            ));
        }
    }
    if body.len() <= part_len {
        frame_body(first_seq, &body, out);
        return Ok(());
    }
    // The batch body without its type byte, cut into parts.
    let payload = body.get(1..).unwrap_or_default();
    let mut chunks = payload.chunks(part_len).peekable();
    let mut part = BytesMut::with_capacity(part_len + 2);
    while let Some(chunk) = chunks.next() {
        part.clear();
        part.put_u8(T_BATCH_PART);
        part.put_u8(if chunks.peek().is_some() {
            PART_MORE
        } else {
            0
        });
        part.put_slice(chunk);
        frame_body(first_seq, &part, out);
    }
    Ok(())
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
    // The parts of a batch read so far; nothing of it counts before its final part.
    let mut chain: Option<BytesMut> = None;
    while let Some(rest) = bytes.get(offset..) {
        if rest.is_empty() {
            break;
        }
        let (seq, body, used) = match read_frame(rest) {
            Ok(frame) => frame,
            Err(what) => {
                scan.stopped = Some(JournalError::BadRecord { offset, what });
                break;
            }
        };
        if seq != expect {
            scan.stopped = Some(JournalError::BadRecord {
                offset,
                what: "sequence number out of order",
            });
            break;
        }
        let decoded = match (body.split_first(), chain.as_mut()) {
            (Some((&T_BATCH_PART, part)), _) => match part.split_first() {
                Some((&flags, bytes)) if flags & !PART_MORE == 0 => {
                    let joined = chain.get_or_insert_with(BytesMut::new);
                    if joined.len() + bytes.len() > MAX_BATCH_LEN {
                        Err("batch parts over the maximum batch length")
                    } else {
                        joined.put_slice(bytes);
                        if flags & PART_MORE != 0 {
                            offset += used;
                            continue;
                        }
                        let joined = chain.take().unwrap_or_default();
                        decode_batch(&joined)
                    }
                }
                _ => Err("bad batch part flags"),
            },
            (_, Some(_)) => Err("a batch's parts end without their final part"),
            (Some((&T_SNAPSHOT_END, _)) | None, None) => Err("snapshot mark inside a segment"),
            (Some((&T_BATCH, rest)), None) => decode_batch(rest),
            (Some(_), None) => Record::decode(body).map(|r| vec![r]),
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
    if chain.is_some() && scan.stopped.is_none() {
        // The bytes end inside a chain: a torn tail, from where the chain starts.
        scan.stopped = Some(JournalError::BadRecord {
            offset: scan.valid_len,
            what: "a batch cut short (its final part is missing)",
        });
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
