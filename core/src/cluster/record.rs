//! A persistent session's record in the sessions bucket, so the session can resume on another
//! node: after the owner's line (`<node> <epoch>`, see `owner.rs`) comes its cursor in the
//! durable stream, its outbound QoS 2 window and the QoS 2 messages it finished past the
//! cursor (`broker/cluster_qos2.rs`), then the session's own records (`SessionPut`, one
//! `SubPut` per subscription) in the journal's binary form, each behind its length.

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};

use super::envelope::Stamp;
use crate::persist::{Record, Recovered, RecoveredSession};

/// The body's format; the earlier ones are still read, and written when they say all (a node
/// of the last version reads them during an upgrade).
const FORMAT: u8 = 3;
/// Without inbound QoS 2 ids marked stored.
const FORMAT_WITHOUT_STORED: u8 = 2;
const FORMAT_WITHOUT_QOS2: u8 = 1;

/// QoS 2 messages a record holds in flight at most; more wait for room.
pub const MAX_QOS2_WINDOW: usize = 1024;
/// QoS 2 messages finished past the cursor a record holds at most; more wait for the cursor.
pub const MAX_QOS2_DONE: usize = 4096;
/// Inbound QoS 2 ids awaiting PUBREL a record holds at most; past it a QoS 2 PUBLISH is
/// refused (v5 PUBREC 0x97; 3.1.1 closed).
pub const MAX_QOS2_INBOUND: usize = 1024;

/// The largest record a session may have: well within a NATS message (1 MB by default).
/// A SUBSCRIBE that would grow a persistent session's record past it is refused.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// What one subscription adds to a record: its bytes, beside the filter's and the client
/// id's (length, type, two string lengths, options, subscription id).
pub fn subscription_bytes(client_id: &str, filter: &str) -> usize {
    4 + 1 + 4 + client_id.len() + 4 + filter.len() + 1 + 9
}

/// What a session's record says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionRecord {
    /// The durable stream's sequence up to which every message for the session was
    /// delivered (`None`: not known, nothing to catch up).
    pub cursor: Option<u64>,
    /// Outbound QoS 2 messages in flight, by packet id: their stream sequence, and whether
    /// PUBREL went (or may go) out.
    pub qos2_window: BTreeMap<u16, (u64, bool)>,
    /// Stream sequences past the cursor whose QoS 2 delivery finished: never sent again.
    pub qos2_done: BTreeSet<u64>,
    /// Inbound QoS 2 ids awaiting PUBREL, each with the stamp its message is (or is being)
    /// written to the stream with: its dedup id, so a resend on another node is stored once.
    pub qos2_inbound: BTreeMap<u16, Stamp>,
    /// Those of `qos2_inbound` whose stream write JetStream confirmed: a PUBLISH again with
    /// one is answered without a write (past the stream's `duplicate_window` a write again
    /// would store it twice).
    pub qos2_inbound_stored: BTreeSet<u16>,
    pub session: RecoveredSession,
}

/// The sessions-bucket value: the owner's line, then the record.
pub fn record_value(owner_line: &[u8], client_id: &str, record: &SessionRecord) -> Bytes {
    let mut out = BytesMut::with_capacity(owner_line.len() + 64);
    out.put_slice(owner_line);
    out.put_u8(b'\n');
    // The oldest format that says all: a node of the last version reads it too (a cluster
    // being upgraded).
    let qos2 = !(record.qos2_window.is_empty()
        && record.qos2_done.is_empty()
        && record.qos2_inbound.is_empty());
    let stored = stored_ids(record);
    out.put_u8(match (qos2, stored.is_empty()) {
        (false, _) => FORMAT_WITHOUT_QOS2,
        (true, true) => FORMAT_WITHOUT_STORED,
        (true, false) => FORMAT,
    });
    match record.cursor {
        Some(c) => {
            out.put_u8(1);
            out.put_u64(c);
        }
        None => out.put_u8(0),
    }
    if qos2 {
        put_qos2(&mut out, record);
    }
    if qos2 && !stored.is_empty() {
        // At most the inbound ids' number, itself at most MAX_QOS2_INBOUND.
        out.put_u16(stored.len().min(usize::from(u16::MAX)) as u16);
        for pid in stored.iter().take(usize::from(u16::MAX)) {
            out.put_u16(*pid);
        }
    }
    let s = &record.session;
    let mut put = |r: Record| {
        let mut body = BytesMut::new();
        r.encode(&mut body);
        out.put_u32(body.len() as u32);
        out.put_slice(&body);
    };
    put(Record::SessionPut {
        client_id: client_id.to_owned(),
        version: s.version,
        expiry_secs: s.expiry_secs,
        disconnected_at_unix_ms: s.disconnected_at_unix_ms,
    });
    for (filter, (options, id)) in &s.subscriptions {
        put(Record::SubPut {
            client_id: client_id.to_owned(),
            filter: filter.clone(),
            options: *options,
            subscription_id: *id,
        });
    }
    out.freeze()
}

/// A record's QoS 2 state (format 2).
fn put_qos2(out: &mut BytesMut, record: &SessionRecord) {
    // Bounded by MAX_QOS2_WINDOW and MAX_QOS2_DONE (a QoS 2 delivery of the stream waits
    // for room) and MAX_QOS2_INBOUND (a QoS 2 PUBLISH past it is refused).
    out.put_u16(record.qos2_window.len().min(usize::from(u16::MAX)) as u16);
    for (pid, (seq, released)) in record.qos2_window.iter().take(usize::from(u16::MAX)) {
        out.put_u16(*pid);
        out.put_u64(*seq);
        out.put_u8(u8::from(*released));
    }
    out.put_u32(record.qos2_done.len() as u32);
    for seq in &record.qos2_done {
        out.put_u64(*seq);
    }
    out.put_u16(record.qos2_inbound.len().min(usize::from(u16::MAX)) as u16);
    for (pid, stamp) in record.qos2_inbound.iter().take(usize::from(u16::MAX)) {
        out.put_u16(*pid);
        // Node names are at most 64 bytes (`cluster.node_name`).
        let node = stamp.node.as_bytes();
        let node = node.get(..node.len().min(255)).unwrap_or_default();
        out.put_u8(node.len() as u8);
        out.put_slice(node);
        out.put_u64(stamp.epoch);
        out.put_u64(stamp.seq);
    }
}

/// The stored marks a record can carry: those of its inbound ids.
fn stored_ids(record: &SessionRecord) -> Vec<u16> {
    record
        .qos2_inbound_stored
        .iter()
        .copied()
        .filter(|pid| record.qos2_inbound.contains_key(pid))
        .collect()
}

/// The owner's line of a sessions-bucket value.
pub fn owner_line(value: &[u8]) -> &[u8] {
    value.split(|&b| b == b'\n').next().unwrap_or(value)
}

/// The owner's line of a value, and the record after it if there is one. `None` for a
/// record that is not one (another version, cut short, another client's).
pub fn parse_value<'a>(
    value: &'a [u8],
    client_id: &str,
) -> (&'a [u8], Option<Result<SessionRecord, &'static str>>) {
    let Some(end) = value.iter().position(|&b| b == b'\n') else {
        return (value, None);
    };
    let (line, body) = value.split_at(end);
    (
        line,
        Some(parse_body(body.get(1..).unwrap_or(&[]), client_id)),
    )
}

/// Reads a body front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("record cut short");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "record cut short")?;
        Ok(u32::from_be_bytes(b))
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b: [u8; 2] = self.take(2)?.try_into().map_err(|_| "record cut short")?;
        Ok(u16::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
}

fn parse_body(body: &[u8], client_id: &str) -> Result<SessionRecord, &'static str> {
    let mut r = Reader(body);
    let format = match r.take(1)? {
        [FORMAT] => FORMAT,
        [FORMAT_WITHOUT_STORED] => FORMAT_WITHOUT_STORED,
        [FORMAT_WITHOUT_QOS2] => FORMAT_WITHOUT_QOS2,
        _ => return Err("record of another format"),
    };
    let cursor = match r.take(1)? {
        [0] => None,
        [1] => Some(r.u64()?),
        _ => return Err("bad cursor flag"),
    };
    let mut qos2_window = BTreeMap::new();
    let mut window_seqs = BTreeSet::new();
    let mut qos2_done = BTreeSet::new();
    let mut qos2_inbound = BTreeMap::new();
    let mut qos2_inbound_stored = BTreeSet::new();
    if format != FORMAT_WITHOUT_QOS2 {
        for _ in 0..r.u16()? {
            let (pid, seq) = (r.u16()?, r.u64()?);
            let released = match r.take(1)? {
                [0] => false,
                [1] => true,
                _ => return Err("bad QoS 2 stage"),
            };
            // Sequence 0 is no stream message; one message is in flight under one id only.
            let twice = !window_seqs.insert(seq);
            if pid == 0 || seq == 0 || twice || qos2_window.insert(pid, (seq, released)).is_some() {
                return Err("bad QoS 2 window entry");
            }
        }
        let done = r.u32()? as usize;
        // Past the cap a reader still takes what a writer may have (its window finishing
        // while the cursor is held).
        if done > MAX_QOS2_DONE + MAX_QOS2_WINDOW {
            return Err("too many finished QoS 2 messages");
        }
        for _ in 0..done {
            qos2_done.insert(r.u64()?);
        }
        for _ in 0..r.u16()? {
            let pid = r.u16()?;
            let len = usize::from(r.take(1)?.first().copied().unwrap_or(0));
            // `cluster.node_name` is at most 64 bytes.
            if len > 64 {
                return Err("bad node name");
            }
            let node = std::str::from_utf8(r.take(len)?).map_err(|_| "bad node name")?;
            let stamp = Stamp {
                node: node.to_owned(),
                epoch: r.u64()?,
                seq: r.u64()?,
            };
            if pid == 0 || qos2_inbound.insert(pid, stamp).is_some() {
                return Err("bad inbound QoS 2 packet id");
            }
        }
    }
    if format == FORMAT {
        // A mark for an id the record does not hold is dropped: without it the id is only
        // written again under its dedup id.
        for _ in 0..r.u16()? {
            let pid = r.u16()?;
            if qos2_inbound.contains_key(&pid) {
                qos2_inbound_stored.insert(pid);
            }
        }
    }
    let mut recovered = Recovered::default();
    let mut records = 0;
    while !r.0.is_empty() {
        let len = r.u32()? as usize;
        let record = Record::decode(r.take(len)?)?;
        let mine = match &record {
            Record::SessionPut { client_id: c, .. } | Record::SubPut { client_id: c, .. } => {
                c == client_id
            }
            _ => false,
        };
        // The first record says the session; subscriptions follow.
        let in_place = matches!(
            (&record, records),
            (Record::SessionPut { .. }, 0) | (Record::SubPut { .. }, 1..)
        );
        if !mine || !in_place {
            return Err("record of something else");
        }
        recovered.apply(record);
        records += 1;
    }
    let session = recovered
        .sessions
        .remove(client_id)
        .ok_or("record without its session")?;
    Ok(SessionRecord {
        cursor,
        qos2_window,
        qos2_done,
        qos2_inbound,
        qos2_inbound_stored,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_what_was_written() {
        let mut session = RecoveredSession {
            version: 5,
            expiry_secs: 3600,
            disconnected_at_unix_ms: Some(1_700_000_000_000),
            ..Default::default()
        };
        session
            .subscriptions
            .insert("a/+/c\n#".to_owned(), (0b10_0001, Some(7)));
        session
            .subscriptions
            .insert("$share/g/x".to_owned(), (2, None));
        let record = SessionRecord {
            cursor: Some(u64::MAX - 1),
            qos2_window: BTreeMap::from([(1, (7, false)), (65535, (u64::MAX, true))]),
            qos2_done: BTreeSet::from([9, 12]),
            qos2_inbound: BTreeMap::from([(
                3,
                Stamp {
                    node: "node-b".to_owned(),
                    epoch: 0x1f,
                    seq: 40,
                },
            )]),
            qos2_inbound_stored: BTreeSet::new(),
            session,
        };
        let value = record_value(b"node-a 1f", "c/1", &record);
        let (line, parsed) = parse_value(&value, "c/1");
        assert_eq!(line, b"node-a 1f");
        assert_eq!(parsed, Some(Ok(record.clone())));
        // Another client id's record is not this one's.
        assert!(matches!(parse_value(&value, "c/2").1, Some(Err(_))));
        // A cut never reads as the whole (a cut at a record's end is a shorter record).
        for cut in 10..value.len() {
            let (_, parsed) = parse_value(&value[..cut], "c/1");
            assert_ne!(parsed, Some(Ok(record.clone())), "cut at {cut}");
        }
        // A record of the first format (no QoS 2 state) still reads.
        let mut old = vec![FORMAT_WITHOUT_QOS2];
        old.extend_from_slice(&value[line.len() + 2..line.len() + 11]);
        let qos2_bytes = 2 + 2 * 11 + 4 + 2 * 8 + 2 + (2 + 1 + 6 + 16);
        old.extend_from_slice(&value[line.len() + 11 + qos2_bytes..]);
        let without = SessionRecord {
            qos2_window: BTreeMap::new(),
            qos2_done: BTreeSet::new(),
            qos2_inbound: BTreeMap::new(),
            ..record.clone()
        };
        // Without stored marks the second format is written; with one, the third.
        assert_eq!(value.get(10), Some(&FORMAT_WITHOUT_STORED));
        let stored = SessionRecord {
            qos2_inbound_stored: BTreeSet::from([3]),
            ..record.clone()
        };
        let marked = record_value(b"node-a 1f", "c/1", &stored);
        assert_eq!(marked.get(10), Some(&FORMAT));
        assert_eq!(parse_value(&marked, "c/1").1, Some(Ok(stored.clone())));
        for cut in 10..marked.len() {
            let (_, parsed) = parse_value(&marked[..cut], "c/1");
            assert_ne!(parsed, Some(Ok(stored.clone())), "cut at {cut}");
        }
        // A mark for an id the record does not hold is not written, and dropped when read.
        let stray = SessionRecord {
            qos2_inbound_stored: BTreeSet::from([4]),
            ..record.clone()
        };
        assert_eq!(record_value(b"node-a 1f", "c/1", &stray), value);
        let mut bad = marked.to_vec();
        let at = line.len() + 11 + qos2_bytes;
        assert_eq!(bad.get(at..at + 4), Some(&[0, 1, 0, 3][..]));
        bad[at + 3] = 4;
        assert_eq!(parse_value(&bad, "c/1").1, Some(Ok(record.clone())));
        assert_eq!(parse_body(&old, "c/1"), Ok(without.clone()));
        // Without QoS 2 state the first format is written (a node of the last version reads it).
        let plain = record_value(b"n 1", "c/1", &without);
        assert_eq!(plain.get(4), Some(&FORMAT_WITHOUT_QOS2));
        assert_eq!(parse_value(&plain, "c/1").1, Some(Ok(without)));
        // An owner's line alone (a claim) has no record.
        assert_eq!(parse_value(b"node-a 1f", "c/1"), (&b"node-a 1f"[..], None));
    }
}
