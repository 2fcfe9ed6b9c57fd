//! Durable state as records: what the broker asks its store to keep, their binary form, the
//! journal framing around them, and replay into the state a restarted broker resumes from.
//!
//! Pure: the runtime owns the files and the group commit; everything here takes and returns
//! bytes, so the recovery decoder is fuzzed like every other parser.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, DecodeLimits, Packet, Properties, ProtocolVersion, PublishRef, QoS};

/// A message as kept on disk, shared by every record that refers to its `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    pub id: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// v5 PUBLISH properties to pass on (no alias, no subscription ids, no expiry).
    pub properties: Properties,
    /// Wall-clock expiry, milliseconds since the Unix epoch.
    pub expires_at_unix_ms: Option<u64>,
}

/// One change to durable state. Every record is keyed, so replaying one twice is harmless.
// Records only travel from the core to the store; boxing the message would cost an
// allocation per stored message for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A persistent session exists (or changed): created, reconnected, or disconnected at
    /// `disconnected_at_unix_ms`.
    SessionPut {
        client_id: String,
        version: u8,
        expiry_secs: u32,
        disconnected_at_unix_ms: Option<u64>,
    },
    /// The session and everything it held are gone.
    SessionDel {
        client_id: String,
    },
    SubPut {
        client_id: String,
        filter: String,
        /// The v5 SUBSCRIBE options byte.
        options: u8,
        subscription_id: Option<u32>,
    },
    SubDel {
        client_id: String,
        filter: String,
    },
    MsgPut(StoredMessage),
    /// A message owed to a session, in `entry` order.
    QueuePut {
        client_id: String,
        entry: u64,
        msg_id: u64,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
    },
    /// An outbound QoS 2 delivery got its packet id (`released`: PUBREL sent).
    OutState {
        client_id: String,
        entry: u64,
        packet_id: u16,
        released: bool,
    },
    /// The delivery finished or was dropped.
    QueueDel {
        client_id: String,
        entry: u64,
    },
    /// An inbound QoS 2 packet id was accepted (PUBREC) and awaits its PUBREL.
    InQos2Put {
        client_id: String,
        packet_id: u16,
    },
    InQos2Del {
        client_id: String,
        packet_id: u16,
    },
    RetainPut {
        topic: String,
        msg_id: u64,
    },
    RetainDel {
        topic: String,
    },
    /// A message waiting to be forwarded over a bridge, in `entry` order.
    BridgePut {
        bridge: String,
        entry: u64,
        msg_id: u64,
        qos: QoS,
        retain: bool,
    },
    BridgeDel {
        bridge: String,
        entry: u64,
    },
}

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

// ----- record encoding ---------------------------------------------------------------------

const T_SESSION_PUT: u8 = 1;
const T_SESSION_DEL: u8 = 2;
const T_SUB_PUT: u8 = 3;
const T_SUB_DEL: u8 = 4;
const T_MSG_PUT: u8 = 5;
const T_QUEUE_PUT: u8 = 6;
const T_OUT_STATE: u8 = 7;
const T_QUEUE_DEL: u8 = 8;
const T_INQOS2_PUT: u8 = 9;
const T_INQOS2_DEL: u8 = 10;
const T_RETAIN_PUT: u8 = 11;
const T_RETAIN_DEL: u8 = 12;
const T_BRIDGE_PUT: u8 = 13;
const T_BRIDGE_DEL: u8 = 14;

fn put_str(out: &mut BytesMut, s: &str) {
    put_bytes(out, s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_opt_u64(out: &mut BytesMut, v: Option<u64>) {
    match v {
        Some(v) => {
            out.put_u8(1);
            out.put_u64(v);
        }
        None => out.put_u8(0),
    }
}

impl Record {
    /// Appends the record's body (type byte and fields).
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Record::SessionPut {
                client_id,
                version,
                expiry_secs,
                disconnected_at_unix_ms,
            } => {
                out.put_u8(T_SESSION_PUT);
                put_str(out, client_id);
                out.put_u8(*version);
                out.put_u32(*expiry_secs);
                put_opt_u64(out, *disconnected_at_unix_ms);
            }
            Record::SessionDel { client_id } => {
                out.put_u8(T_SESSION_DEL);
                put_str(out, client_id);
            }
            Record::SubPut {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                out.put_u8(T_SUB_PUT);
                put_str(out, client_id);
                put_str(out, filter);
                out.put_u8(*options);
                put_opt_u64(out, subscription_id.map(u64::from));
            }
            Record::SubDel { client_id, filter } => {
                out.put_u8(T_SUB_DEL);
                put_str(out, client_id);
                put_str(out, filter);
            }
            Record::MsgPut(m) => {
                out.put_u8(T_MSG_PUT);
                out.put_u64(m.id);
                out.put_u8(m.qos as u8);
                out.put_u8(u8::from(m.retain));
                put_opt_u64(out, m.expires_at_unix_ms);
                // Topic, properties and payload as a v5 PUBLISH: the codec already validates
                // every part of it on the way back in.
                let publish = PublishRef {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: &m.topic,
                    packet_id: None,
                    properties: &m.properties,
                    payload: &m.payload,
                };
                let mut packet = BytesMut::with_capacity(publish.encoded_len(ProtocolVersion::V5));
                // A message the broker accepted always fits a PUBLISH.
                let _ = publish.encode(ProtocolVersion::V5, &mut packet);
                put_bytes(out, &packet);
            }
            Record::QueuePut {
                client_id,
                entry,
                msg_id,
                qos,
                retain,
                subscription_ids,
            } => {
                out.put_u8(T_QUEUE_PUT);
                put_str(out, client_id);
                out.put_u64(*entry);
                out.put_u64(*msg_id);
                out.put_u8(*qos as u8);
                out.put_u8(u8::from(*retain));
                out.put_u32(subscription_ids.len() as u32);
                for id in subscription_ids {
                    out.put_u32(*id);
                }
            }
            Record::OutState {
                client_id,
                entry,
                packet_id,
                released,
            } => {
                out.put_u8(T_OUT_STATE);
                put_str(out, client_id);
                out.put_u64(*entry);
                out.put_u16(*packet_id);
                out.put_u8(u8::from(*released));
            }
            Record::QueueDel { client_id, entry } => {
                out.put_u8(T_QUEUE_DEL);
                put_str(out, client_id);
                out.put_u64(*entry);
            }
            Record::InQos2Put {
                client_id,
                packet_id,
            } => {
                out.put_u8(T_INQOS2_PUT);
                put_str(out, client_id);
                out.put_u16(*packet_id);
            }
            Record::InQos2Del {
                client_id,
                packet_id,
            } => {
                out.put_u8(T_INQOS2_DEL);
                put_str(out, client_id);
                out.put_u16(*packet_id);
            }
            Record::RetainPut { topic, msg_id } => {
                out.put_u8(T_RETAIN_PUT);
                put_str(out, topic);
                out.put_u64(*msg_id);
            }
            Record::RetainDel { topic } => {
                out.put_u8(T_RETAIN_DEL);
                put_str(out, topic);
            }
            Record::BridgePut {
                bridge,
                entry,
                msg_id,
                qos,
                retain,
            } => {
                out.put_u8(T_BRIDGE_PUT);
                put_str(out, bridge);
                out.put_u64(*entry);
                out.put_u64(*msg_id);
                out.put_u8(*qos as u8);
                out.put_u8(u8::from(*retain));
            }
            Record::BridgeDel { bridge, entry } => {
                out.put_u8(T_BRIDGE_DEL);
                put_str(out, bridge);
                out.put_u64(*entry);
            }
        }
    }

    /// Reads one record body; every byte must be used.
    pub fn decode(body: &[u8]) -> Result<Record, &'static str> {
        let mut r = Cursor { buf: body };
        let record = match r.u8()? {
            T_SESSION_PUT => Record::SessionPut {
                client_id: r.string()?,
                version: r.u8()?,
                expiry_secs: r.u32()?,
                disconnected_at_unix_ms: r.opt_u64()?,
            },
            T_SESSION_DEL => Record::SessionDel {
                client_id: r.string()?,
            },
            T_SUB_PUT => Record::SubPut {
                client_id: r.string()?,
                filter: r.string()?,
                options: r.u8()?,
                subscription_id: match r.opt_u64()? {
                    Some(v) => Some(u32::try_from(v).map_err(|_| "subscription id too large")?),
                    None => None,
                },
            },
            T_SUB_DEL => Record::SubDel {
                client_id: r.string()?,
                filter: r.string()?,
            },
            T_MSG_PUT => {
                let id = r.u64()?;
                let qos = r.qos()?;
                let retain = r.bool()?;
                let expires_at_unix_ms = r.opt_u64()?;
                let packet = r.bytes()?;
                let mut buf = BytesMut::from(packet);
                let limits = DecodeLimits {
                    max_packet_size: usize::MAX,
                    max_user_properties: usize::MAX,
                };
                let publish =
                    match codec::decode_packet(&mut buf, Some(ProtocolVersion::V5), &limits) {
                        Ok(Some(Packet::Publish(p))) if buf.is_empty() => p,
                        _ => return Err("message is not a well-formed PUBLISH"),
                    };
                Record::MsgPut(StoredMessage {
                    id,
                    topic: publish.topic,
                    payload: publish.payload,
                    qos,
                    retain,
                    properties: publish.properties,
                    expires_at_unix_ms,
                })
            }
            T_QUEUE_PUT => {
                let client_id = r.string()?;
                let entry = r.u64()?;
                let msg_id = r.u64()?;
                let qos = r.qos()?;
                let retain = r.bool()?;
                let n = r.u32()? as usize;
                if n > r.buf.len() / 4 {
                    return Err("subscription id count past the end");
                }
                let mut subscription_ids = Vec::with_capacity(n);
                for _ in 0..n {
                    subscription_ids.push(r.u32()?);
                }
                Record::QueuePut {
                    client_id,
                    entry,
                    msg_id,
                    qos,
                    retain,
                    subscription_ids,
                }
            }
            T_OUT_STATE => Record::OutState {
                client_id: r.string()?,
                entry: r.u64()?,
                packet_id: r.u16()?,
                released: r.bool()?,
            },
            T_QUEUE_DEL => Record::QueueDel {
                client_id: r.string()?,
                entry: r.u64()?,
            },
            T_INQOS2_PUT => Record::InQos2Put {
                client_id: r.string()?,
                packet_id: r.u16()?,
            },
            T_INQOS2_DEL => Record::InQos2Del {
                client_id: r.string()?,
                packet_id: r.u16()?,
            },
            T_RETAIN_PUT => Record::RetainPut {
                topic: r.string()?,
                msg_id: r.u64()?,
            },
            T_RETAIN_DEL => Record::RetainDel { topic: r.string()? },
            T_BRIDGE_PUT => Record::BridgePut {
                bridge: r.string()?,
                entry: r.u64()?,
                msg_id: r.u64()?,
                qos: r.qos()?,
                retain: r.bool()?,
            },
            T_BRIDGE_DEL => Record::BridgeDel {
                bridge: r.string()?,
                entry: r.u64()?,
            },
            _ => return Err("unknown record type"),
        };
        if !r.buf.is_empty() {
            return Err("trailing bytes after the record");
        }
        Ok(record)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.buf.len() < n {
            return Err("record ends early");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bool(&mut self) -> Result<bool, &'static str> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("flag is neither 0 nor 1"),
        }
    }

    fn qos(&mut self) -> Result<QoS, &'static str> {
        QoS::from_u8(self.u8()?).ok_or("QoS out of range")
    }

    fn opt_u64(&mut self) -> Result<Option<u64>, &'static str> {
        if self.bool()? {
            Ok(Some(self.u64()?))
        } else {
            Ok(None)
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let b = self.bytes()?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| "string is not UTF-8")
    }
}

// ----- journal framing ---------------------------------------------------------------------

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
    let mut crc = Crc32c::new();
    crc.update(&seq.to_be_bytes());
    crc.update(body);
    out.put_u32(crc.finish());
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
    let mut c = Crc32c::new();
    c.update(&seq_bytes);
    c.update(body);
    if c.finish() != crc {
        return Err("checksum mismatch");
    }
    Ok((u64::from_be_bytes(seq_bytes), body, FRAME_LEN + len))
}

// ----- CRC-32C (Castagnoli), table driven ----------------------------------------------------

// `i < 256` in a const block: the index cannot be out of range.
#[allow(clippy::indexing_slicing)]
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0x82F6_3B78 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

struct Crc32c(u32);

impl Crc32c {
    fn new() -> Crc32c {
        Crc32c(!0)
    }

    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            let idx = ((self.0 ^ u32::from(*b)) & 0xFF) as usize;
            self.0 = CRC_TABLE.get(idx).copied().unwrap_or(0) ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(bytes);
    c.finish()
}

// ----- replay ------------------------------------------------------------------------------

/// A delivery owed to a session after replay.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedDelivery {
    pub msg_id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Packet id and whether PUBREL went out, for a QoS 2 delivery under way.
    pub out_state: Option<(u16, bool)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecoveredSession {
    pub version: u8,
    pub expiry_secs: u32,
    pub disconnected_at_unix_ms: Option<u64>,
    /// Raw filter -> (options byte, subscription id).
    pub subscriptions: BTreeMap<String, (u8, Option<u32>)>,
    pub queue: BTreeMap<u64, QueuedDelivery>,
    pub awaiting_rel: BTreeSet<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BridgeEntry {
    pub msg_id: u64,
    pub qos: QoS,
    pub retain: bool,
}

/// Durable state rebuilt from a snapshot and the records after it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recovered {
    pub sessions: BTreeMap<String, RecoveredSession>,
    pub messages: BTreeMap<u64, StoredMessage>,
    pub retained: BTreeMap<String, u64>,
    pub bridges: BTreeMap<String, BTreeMap<u64, BridgeEntry>>,
    /// The sequence number of the last record applied.
    pub last_seq: u64,
}

impl Recovered {
    /// Applies one record. Records that refer to something absent change nothing.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::SessionPut {
                client_id,
                version,
                expiry_secs,
                disconnected_at_unix_ms,
            } => {
                let s = self.sessions.entry(client_id).or_default();
                s.version = version;
                s.expiry_secs = expiry_secs;
                s.disconnected_at_unix_ms = disconnected_at_unix_ms;
            }
            Record::SessionDel { client_id } => {
                self.sessions.remove(&client_id);
            }
            Record::SubPut {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.subscriptions.insert(filter, (options, subscription_id));
                }
            }
            Record::SubDel { client_id, filter } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.subscriptions.remove(&filter);
                }
            }
            Record::MsgPut(m) => {
                self.messages.insert(m.id, m);
            }
            Record::QueuePut {
                client_id,
                entry,
                msg_id,
                qos,
                retain,
                subscription_ids,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.queue.insert(
                        entry,
                        QueuedDelivery {
                            msg_id,
                            qos,
                            retain,
                            subscription_ids,
                            out_state: None,
                        },
                    );
                }
            }
            Record::OutState {
                client_id,
                entry,
                packet_id,
                released,
            } => {
                if let Some(d) = self
                    .sessions
                    .get_mut(&client_id)
                    .and_then(|s| s.queue.get_mut(&entry))
                {
                    d.out_state = Some((packet_id, released));
                }
            }
            Record::QueueDel { client_id, entry } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.queue.remove(&entry);
                }
            }
            Record::InQos2Put {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.awaiting_rel.insert(packet_id);
                }
            }
            Record::InQos2Del {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.awaiting_rel.remove(&packet_id);
                }
            }
            Record::RetainPut { topic, msg_id } => {
                self.retained.insert(topic, msg_id);
            }
            Record::RetainDel { topic } => {
                self.retained.remove(&topic);
            }
            Record::BridgePut {
                bridge,
                entry,
                msg_id,
                qos,
                retain,
            } => {
                self.bridges.entry(bridge).or_default().insert(
                    entry,
                    BridgeEntry {
                        msg_id,
                        qos,
                        retain,
                    },
                );
            }
            Record::BridgeDel { bridge, entry } => {
                if let Some(b) = self.bridges.get_mut(&bridge) {
                    b.remove(&entry);
                }
            }
        }
    }

    /// Drops what nothing refers to any more: messages no delivery, retained topic or bridge
    /// entry uses, and deliveries or retained topics whose message is missing.
    pub fn prune(&mut self) {
        let messages = &self.messages;
        for s in self.sessions.values_mut() {
            s.queue.retain(|_, d| messages.contains_key(&d.msg_id));
        }
        self.retained.retain(|_, id| messages.contains_key(id));
        for b in self.bridges.values_mut() {
            b.retain(|_, e| messages.contains_key(&e.msg_id));
        }
        self.bridges.retain(|_, b| !b.is_empty());
        let mut used = BTreeSet::new();
        for s in self.sessions.values() {
            used.extend(s.queue.values().map(|d| d.msg_id));
        }
        used.extend(self.retained.values().copied());
        for b in self.bridges.values() {
            used.extend(b.values().map(|e| e.msg_id));
        }
        self.messages.retain(|id, _| used.contains(id));
    }

    /// Counts for the start-up log line.
    pub fn summary(&self) -> String {
        let queued: usize = self.sessions.values().map(|s| s.queue.len()).sum();
        let subs: usize = self.sessions.values().map(|s| s.subscriptions.len()).sum();
        let bridged: usize = self.bridges.values().map(BTreeMap::len).sum();
        format!(
            "{} sessions, {} subscriptions, {} queued or in-flight messages, {} retained, {} \
             bridge messages, {} message bodies",
            self.sessions.len(),
            subs,
            queued,
            self.retained.len(),
            bridged,
            self.messages.len()
        )
    }
}
