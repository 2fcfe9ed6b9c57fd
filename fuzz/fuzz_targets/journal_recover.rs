//! Journal recovery: whatever bytes a crash or a bad disk leaves, scanning a segment and
//! reading a snapshot never panic, every record they accept re-encodes and reads back the
//! same, and replaying what was accepted (then pruning) never panics and leaves only
//! references that resolve.
//!
//! The bytes are tried three ways: as one record body, as a file found on disk (segment or
//! snapshot, as the header says), and cut into bodies (`[len u8][body]...`) that are framed
//! with valid checksums, so that mutated bodies (records and batches of records) reach the
//! decoders through the scanner.
#![no_main]

use std::collections::BTreeSet;

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use tidemq_core::persist::{
    FileKind, HEADER_LEN, Record, Recovered, Scan, crc32c, encode_batch, encode_batch_parts,
    encode_frame, encode_header, encode_snapshot_end, read_snapshot, scan_segment,
};

fuzz_target!(|data: &[u8]| {
    let mut state = Recovered::default();

    // One record body.
    if let Ok(record) = Record::decode(data) {
        assert_eq!(
            reencode(&record),
            record,
            "a decoded body changed on re-encoding"
        );
        state.apply(record);
    }

    // A file as found on disk.
    if let Ok((first, scan)) = scan_segment(data) {
        check_scan(data, first, &scan);
        replay(&mut state, scan);
    }
    if let Ok((upto, records)) = read_snapshot(data) {
        check_snapshot(upto, &records);
        for r in records {
            state.apply(r);
        }
        state.last_seq = state.last_seq.max(upto);
    }

    // Bodies framed with valid checksums.
    let sealed = seal(data);
    let (first, scan) = scan_segment(&sealed).expect("a sealed segment has a valid header");
    assert_eq!(first, 1);
    check_scan(&sealed, first, &scan);
    replay(&mut state, scan);

    let _ = state.summary();
    state.prune();
    check_pruned(&state);
    let _ = state.summary();
});

fn reencode(record: &Record) -> Record {
    let mut body = BytesMut::new();
    record.encode(&mut body);
    Record::decode(&body).expect("an encoded record decodes")
}

fn replay(state: &mut Recovered, scan: Scan) {
    for (seq, r) in scan.records {
        state.apply(r);
        state.last_seq = seq;
    }
}

fn check_scan(bytes: &[u8], first: u64, scan: &Scan) {
    assert!(scan.valid_len >= HEADER_LEN && scan.valid_len <= bytes.len());
    if scan.stopped.is_none() {
        assert_eq!(
            scan.valid_len,
            bytes.len(),
            "stopped early without a reason"
        );
    }
    let rest = bytes
        .get(scan.valid_len..)
        .expect("valid_len within the bytes");
    assert_eq!(scan.rest_is_zero, rest.iter().all(|b| *b == 0));
    for (i, (seq, _)) in scan.records.iter().enumerate() {
        assert_eq!(
            *seq,
            first.wrapping_add(i as u64),
            "records out of sequence"
        );
    }

    // The valid prefix alone reads back the same, without complaint.
    let prefix = bytes
        .get(..scan.valid_len)
        .expect("valid_len within the bytes");
    let (again_first, again) = scan_segment(prefix).expect("the valid prefix has a header");
    assert_eq!(again_first, first);
    assert_eq!(
        again.records, scan.records,
        "the valid prefix scans differently"
    );
    assert!(again.stopped.is_none());
    assert_eq!(again.valid_len, prefix.len());

    // Every record re-encodes to a segment that scans back to the same records.
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, first));
    for (seq, r) in &scan.records {
        assert_eq!(reencode(r), *r, "a scanned record changed on re-encoding");
        encode_frame(*seq, r, &mut out).expect("a scanned record is writable");
    }
    let (re_first, re) = scan_segment(&out).expect("a re-encoded segment has a header");
    assert_eq!(re_first, first);
    assert_eq!(
        re.records, scan.records,
        "re-encoded records scan differently"
    );
    assert!(re.stopped.is_none());
    assert_eq!(re.valid_len, out.len());

    // And so does the same run of records written as one batch (one broker input).
    let records: Vec<Record> = scan.records.iter().map(|(_, r)| r.clone()).collect();
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, first));
    encode_batch(first, &records, &mut out).expect("scanned records are writable");
    let (_, re) = scan_segment(&out).expect("a batch segment has a header");
    assert_eq!(
        re.records, scan.records,
        "records re-encoded as a batch scan differently"
    );
    assert!(re.stopped.is_none());

    // And as a chain of small parts: read back whole, and every cut of it leaves all of
    // the batch or none of it.
    let part_len = 1 + bytes.len() % 61;
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, first));
    encode_batch_parts(first, &records, part_len, &mut out).expect("scanned records are writable");
    let (_, re) = scan_segment(&out).expect("a chained segment has a header");
    assert_eq!(
        re.records, scan.records,
        "a chained batch scans differently"
    );
    assert!(re.stopped.is_none());
    if out.len() <= 4096 {
        for cut in HEADER_LEN..out.len() {
            let (_, torn) = scan_segment(&out[..cut]).expect("a cut chain keeps its header");
            assert!(
                torn.records.is_empty(),
                "a cut chain gave up some of its records"
            );
            assert_eq!(torn.valid_len, HEADER_LEN);
        }
    }
}

fn check_snapshot(upto: u64, records: &[Record]) {
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Snapshot, upto));
    for r in records {
        assert_eq!(reencode(r), *r, "a snapshot record changed on re-encoding");
        encode_frame(upto, r, &mut out).expect("a snapshot record is writable");
    }
    encode_snapshot_end(upto, records.len() as u64, &mut out);
    let (again_upto, again) = read_snapshot(&out).expect("a re-encoded snapshot reads back");
    assert_eq!(again_upto, upto);
    assert_eq!(again, records, "a re-encoded snapshot reads differently");
}

/// A segment from 1 whose frames hold the bodies `[len u8][body]...` cut from `data`. A
/// body that looks like a batch part with more to come keeps the sequence number, as a
/// chain's parts do.
fn seal(data: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, 1));
    let mut rest = data;
    let mut seq = 1u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (body, tail) = tail.split_at(n);
        rest = tail;
        let mut covered = seq.to_be_bytes().to_vec();
        covered.extend_from_slice(body);
        out.put_u32(body.len() as u32);
        out.put_u32(crc32c(&covered));
        out.put_u64(seq);
        out.put_slice(body);
        if !body.starts_with(&[0xFC, 1]) {
            seq += 1;
        }
    }
    out.to_vec()
}

fn check_pruned(state: &Recovered) {
    let mut used = BTreeSet::new();
    for s in state.sessions.values() {
        for d in s.queue.values() {
            assert!(
                state.messages.contains_key(&d.msg_id),
                "queue entry left dangling"
            );
            used.insert(d.msg_id);
        }
    }
    for id in state.retained.values() {
        assert!(
            state.messages.contains_key(id),
            "retained topic left dangling"
        );
        used.insert(*id);
    }
    for b in state.bridges.values() {
        assert!(!b.is_empty(), "empty bridge outbox kept");
        for e in b.values() {
            assert!(
                state.messages.contains_key(&e.msg_id),
                "bridge entry left dangling"
            );
            used.insert(e.msg_id);
        }
    }
    assert!(
        state.messages.keys().all(|id| used.contains(id)),
        "a message nothing refers to survived prune"
    );
}
