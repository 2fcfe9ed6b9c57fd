#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The journal's binary form and replay: records round-trip through frames, segments and
//! snapshots; a torn tail or a flipped bit never yields a record that was not written; replay
//! into `Recovered` and `prune` keep exactly what is still referred to.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tidemq_core::codec::{Properties, QoS};
use tidemq_core::persist::{
    BATCH_PART_LEN, BridgeEntry, FileKind, HEADER_LEN, JournalError, MAX_RECORD_LEN,
    QueuedDelivery, Record, Recovered, StoredMessage, crc32c, decode_header, encode_batch,
    encode_batch_parts, encode_frame, encode_header, encode_snapshot_end, read_snapshot,
    scan_segment,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Building journal files
// ---------------------------------------------------------------------------------------------

/// A segment numbered from `first_seq`, and the byte offset where each frame starts (plus
/// the end of the last one).
fn segment(first_seq: u64, records: &[Record]) -> (Vec<u8>, Vec<usize>) {
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, first_seq));
    let mut bounds = vec![out.len()];
    for (i, r) in records.iter().enumerate() {
        encode_frame(first_seq.wrapping_add(i as u64), r, &mut out).unwrap();
        bounds.push(out.len());
    }
    (out.to_vec(), bounds)
}

/// Records before each frame of a segment of one-record frames.
fn singles(n: usize) -> Vec<usize> {
    (0..=n).collect()
}

/// One frame: a lone record, or the records of one broker input as a batch.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
enum Unit {
    One(Record),
    Batch(Vec<Record>),
}

/// A segment of `units` numbered from `first_seq`: its bytes, the frame bounds, the records
/// before each frame, and all the records in order.
fn unit_segment(first_seq: u64, units: &[Unit]) -> (Vec<u8>, Vec<usize>, Vec<usize>, Vec<Record>) {
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, first_seq));
    let mut bounds = vec![out.len()];
    let mut before = vec![0];
    let mut all = Vec::new();
    for u in units {
        let seq = first_seq.wrapping_add(all.len() as u64);
        match u {
            Unit::One(r) => {
                encode_frame(seq, r, &mut out).unwrap();
                all.push(r.clone());
            }
            Unit::Batch(rs) => {
                encode_batch(seq, rs, &mut out).unwrap();
                all.extend(rs.iter().cloned());
            }
        }
        bounds.push(out.len());
        before.push(all.len());
    }
    (out.to_vec(), bounds, before, all)
}

fn snapshot(upto: u64, records: &[Record]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Snapshot, upto));
    for r in records {
        encode_frame(upto, r, &mut out).unwrap();
    }
    encode_snapshot_end(upto, records.len() as u64, &mut out);
    out.to_vec()
}

fn frame(seq: u64, record: &Record) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(seq, record, &mut out).unwrap();
    out.to_vec()
}

fn numbered(first_seq: u64, records: &[Record]) -> Vec<(u64, Record)> {
    records
        .iter()
        .enumerate()
        .map(|(i, r)| (first_seq.wrapping_add(i as u64), r.clone()))
        .collect()
}

fn v5_properties() -> Properties {
    Properties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".to_owned()),
        response_topic: Some("reply/here".to_owned()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01corr")),
        user_properties: vec![
            ("k".to_owned(), "v".to_owned()),
            ("k".to_owned(), "second value".to_owned()),
            ("ünïcödé".to_owned(), String::new()),
        ],
        ..Properties::default()
    }
}

fn message(id: u64, topic: &str, payload: &[u8]) -> StoredMessage {
    StoredMessage {
        id,
        topic: topic.to_owned(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        expires_at_unix_ms: None,
    }
}

/// One record of every kind, the message with v5 properties and an expiry.
fn sample_records() -> Vec<Record> {
    vec![
        Record::SessionPut {
            client_id: "client-1".to_owned(),
            version: 5,
            expiry_secs: 3600,
            disconnected_at_unix_ms: Some(1_700_000_000_123),
        },
        Record::SubPut {
            client_id: "client-1".to_owned(),
            filter: "$share/g/a/+/c".to_owned(),
            options: 0x2D,
            subscription_id: Some(268_435_455),
        },
        Record::MsgPut(Box::new(StoredMessage {
            id: 42,
            topic: "a/b/c".to_owned(),
            payload: Bytes::from_static(b"hello \x00\xff world"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: v5_properties(),
            expires_at_unix_ms: Some(1_700_000_060_000),
        })),
        Record::QueuePut {
            client_id: "client-1".to_owned(),
            entry: 7,
            msg_id: 42,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![1, 268_435_455],
            sent: None,
        },
        Record::QueuePut {
            client_id: "client-1".to_owned(),
            entry: 8,
            msg_id: 42,
            qos: QoS::AtLeastOnce,
            retain: true,
            subscription_ids: vec![],
            sent: Some(65_535),
        },
        Record::OutState {
            client_id: "client-1".to_owned(),
            entry: 7,
            packet_id: 65535,
            released: true,
        },
        Record::InQos2Put {
            client_id: "client-1".to_owned(),
            packet_id: 9,
        },
        Record::RetainPut {
            topic: "a/b/c".to_owned(),
            msg_id: 42,
        },
        Record::BridgePut {
            bridge: "cloud".to_owned(),
            entry: 3,
            msg_id: 42,
            qos: QoS::AtLeastOnce,
            retain: true,
        },
        Record::BridgeDel {
            bridge: "cloud".to_owned(),
            entry: 3,
        },
        Record::RetainDel {
            topic: "a/b/c".to_owned(),
        },
        Record::InQos2Del {
            client_id: "client-1".to_owned(),
            packet_id: 9,
        },
        Record::QueueDel {
            client_id: "client-1".to_owned(),
            entry: 7,
        },
        Record::SubDel {
            client_id: "client-1".to_owned(),
            filter: "$share/g/a/+/c".to_owned(),
        },
        Record::SessionDel {
            client_id: "client-1".to_owned(),
        },
        Record::SessionPut {
            client_id: String::new(),
            version: 4,
            expiry_secs: u32::MAX,
            disconnected_at_unix_ms: None,
        },
        Record::MsgPut(Box::new(StoredMessage {
            id: u64::MAX,
            topic: "/".to_owned(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            expires_at_unix_ms: None,
        })),
    ]
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Keys in records are any UTF-8 (U+0000 included: they are not MQTT strings on disk).
fn key() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        3 => "[a-c]{0,3}",
        1 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
    ]
}

/// An MQTT string: no U+0000.
fn mqtt_string(max_chars: usize) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(
        any::<char>().prop_map(|c| if c == '\0' { '_' } else { c }),
        0..=max_chars,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> + Clone {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> + Clone {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::weighted(0.5, s)
}

/// Every property a PUBLISH may carry.
fn publish_properties() -> impl Strategy<Value = Properties> {
    (
        opt(0u8..=1),
        opt(any::<u32>()),
        opt(mqtt_string(20)),
        opt(mqtt_string(20)),
        opt(binary(20)),
        prop::collection::vec((mqtt_string(8), mqtt_string(8)), 0..5),
        prop::collection::vec(1u32..=268_435_455, 0..3),
        opt(1u16..=u16::MAX),
    )
        .prop_map(
            |(pfi, expiry, content_type, response_topic, correlation, user, sub_ids, alias)| {
                Properties {
                    payload_format_indicator: pfi,
                    message_expiry_interval: expiry,
                    content_type,
                    response_topic,
                    correlation_data: correlation,
                    user_properties: user,
                    subscription_identifiers: sub_ids,
                    topic_alias: alias,
                    ..Properties::default()
                }
            },
        )
}

fn stored_message() -> impl Strategy<Value = StoredMessage> {
    (
        any::<u64>(),
        mqtt_string(24),
        prop_oneof![4 => binary(64), 1 => binary(4096)],
        qos(),
        any::<bool>(),
        prop_oneof![1 => Just(Properties::default()), 3 => publish_properties()],
        opt(any::<u64>()),
    )
        .prop_map(
            |(id, topic, payload, qos, retain, properties, expires_at_unix_ms)| StoredMessage {
                id,
                topic,
                payload,
                qos,
                retain,
                properties,
                expires_at_unix_ms,
            },
        )
}

fn any_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (key(), any::<u8>(), any::<u32>(), opt(any::<u64>())).prop_map(
            |(client_id, version, expiry_secs, disconnected_at_unix_ms)| Record::SessionPut {
                client_id,
                version,
                expiry_secs,
                disconnected_at_unix_ms,
            }
        ),
        key().prop_map(|client_id| Record::SessionDel { client_id }),
        (key(), key(), any::<u8>(), opt(any::<u32>())).prop_map(
            |(client_id, filter, options, subscription_id)| Record::SubPut {
                client_id,
                filter,
                options,
                subscription_id,
            }
        ),
        (key(), key()).prop_map(|(client_id, filter)| Record::SubDel { client_id, filter }),
        stored_message().prop_map(|m| Record::MsgPut(Box::new(m))),
        (
            key(),
            any::<u64>(),
            any::<u64>(),
            qos(),
            any::<bool>(),
            prop::collection::vec(any::<u32>(), 0..4),
            prop::option::of(any::<u16>())
        )
            .prop_map(
                |(client_id, entry, msg_id, qos, retain, subscription_ids, sent)| {
                    Record::QueuePut {
                        client_id,
                        entry,
                        msg_id,
                        qos,
                        retain,
                        subscription_ids,
                        sent,
                    }
                }
            ),
        (key(), any::<u64>(), any::<u16>(), any::<bool>()).prop_map(
            |(client_id, entry, packet_id, released)| Record::OutState {
                client_id,
                entry,
                packet_id,
                released,
            }
        ),
        (key(), any::<u64>()).prop_map(|(client_id, entry)| Record::QueueDel { client_id, entry }),
        (key(), any::<u16>()).prop_map(|(client_id, packet_id)| Record::InQos2Put {
            client_id,
            packet_id
        }),
        (key(), any::<u16>()).prop_map(|(client_id, packet_id)| Record::InQos2Del {
            client_id,
            packet_id
        }),
        (key(), any::<u64>()).prop_map(|(topic, msg_id)| Record::RetainPut { topic, msg_id }),
        key().prop_map(|topic| Record::RetainDel { topic }),
        (key(), any::<u64>(), any::<u64>(), qos(), any::<bool>()).prop_map(
            |(bridge, entry, msg_id, qos, retain)| Record::BridgePut {
                bridge,
                entry,
                msg_id,
                qos,
                retain,
            }
        ),
        (key(), any::<u64>()).prop_map(|(bridge, entry)| Record::BridgeDel { bridge, entry }),
    ]
}

fn unit() -> impl Strategy<Value = Unit> {
    prop_oneof![
        2 => any_record().prop_map(Unit::One),
        3 => prop::collection::vec(any_record(), 1..5).prop_map(Unit::Batch),
        1 => Just(Unit::Batch(vec![])),
    ]
}

fn first_seq() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(1u64),
        any::<u64>(),
        // Numbering that wraps inside the segment.
        (0u64..4).prop_map(|d| u64::MAX - d),
    ]
}

/// Records over a few keys, so that replay sees puts, deletes and references collide.
fn small_record() -> impl Strategy<Value = Record> {
    let client = prop_oneof![Just("a".to_owned()), Just("b".to_owned())];
    let topic = prop_oneof![Just("t/1".to_owned()), Just("t/2".to_owned())];
    let bridge = prop_oneof![Just("x".to_owned()), Just("y".to_owned())];
    let id = 1u64..5;
    let entry = 1u64..4;
    prop_oneof![
        (client.clone(), 0u32..3, opt(0u64..10)).prop_map(|(client_id, expiry_secs, at)| {
            Record::SessionPut {
                client_id,
                version: 5,
                expiry_secs,
                disconnected_at_unix_ms: at,
            }
        }),
        client
            .clone()
            .prop_map(|client_id| Record::SessionDel { client_id }),
        (client.clone(), topic.clone(), 0u8..3).prop_map(|(client_id, filter, options)| {
            Record::SubPut {
                client_id,
                filter,
                options,
                subscription_id: None,
            }
        }),
        (client.clone(), topic.clone())
            .prop_map(|(client_id, filter)| Record::SubDel { client_id, filter }),
        (id.clone(), topic.clone())
            .prop_map(|(id, topic)| Record::MsgPut(Box::new(message(id, &topic, b"p")))),
        (client.clone(), entry.clone(), id.clone(), qos()).prop_map(
            |(client_id, entry, msg_id, qos)| Record::QueuePut {
                client_id,
                entry,
                msg_id,
                qos,
                retain: false,
                subscription_ids: vec![],
                sent: None,
            }
        ),
        (client.clone(), entry.clone(), 1u16..3, any::<bool>()).prop_map(
            |(client_id, entry, packet_id, released)| Record::OutState {
                client_id,
                entry,
                packet_id,
                released,
            }
        ),
        (client.clone(), entry.clone())
            .prop_map(|(client_id, entry)| Record::QueueDel { client_id, entry }),
        (client.clone(), 1u16..3).prop_map(|(client_id, packet_id)| Record::InQos2Put {
            client_id,
            packet_id
        }),
        (client, 1u16..3).prop_map(|(client_id, packet_id)| Record::InQos2Del {
            client_id,
            packet_id
        }),
        (topic.clone(), id.clone()).prop_map(|(topic, msg_id)| Record::RetainPut { topic, msg_id }),
        topic.prop_map(|topic| Record::RetainDel { topic }),
        (bridge.clone(), entry.clone(), id).prop_map(|(bridge, entry, msg_id)| {
            Record::BridgePut {
                bridge,
                entry,
                msg_id,
                qos: QoS::AtLeastOnce,
                retain: false,
            }
        }),
        (bridge, entry).prop_map(|(bridge, entry)| Record::BridgeDel { bridge, entry }),
    ]
}

fn replay(records: &[Record]) -> Recovered {
    let mut r = Recovered::default();
    for rec in records {
        r.apply(rec.clone());
    }
    r
}

/// What `prune` promises: every reference resolves and every message is referred to.
fn assert_pruned(r: &Recovered) {
    let mut used = std::collections::BTreeSet::new();
    for (client, s) in &r.sessions {
        for (entry, d) in &s.queue {
            assert!(
                r.messages.contains_key(&d.msg_id),
                "{client} entry {entry} refers to missing message {}",
                d.msg_id
            );
            used.insert(d.msg_id);
        }
    }
    for (topic, id) in &r.retained {
        assert!(
            r.messages.contains_key(id),
            "retained {topic} -> missing {id}"
        );
        used.insert(*id);
    }
    for (name, b) in &r.bridges {
        assert!(!b.is_empty(), "empty bridge {name} kept");
        for e in b.values() {
            assert!(r.messages.contains_key(&e.msg_id));
            used.insert(e.msg_id);
        }
    }
    let kept: std::collections::BTreeSet<u64> = r.messages.keys().copied().collect();
    assert_eq!(kept, used, "messages nothing refers to were kept");
}

// ---------------------------------------------------------------------------------------------
// (a) Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_record_round_trips_through_its_body(record in any_record()) {
        let mut body = BytesMut::new();
        record.encode(&mut body);
        prop_assert_eq!(Record::decode(&body), Ok(record));
    }

    #[test]
    fn a_segment_gives_back_its_records_with_their_sequence_numbers(
        first in first_seq(),
        records in prop::collection::vec(any_record(), 0..12),
    ) {
        let (bytes, bounds) = segment(first, &records);
        let (seq, scan) = scan_segment(&bytes).unwrap();
        prop_assert_eq!(seq, first);
        prop_assert_eq!(&scan.records, &numbered(first, &records));
        prop_assert_eq!(scan.valid_len, bytes.len());
        prop_assert_eq!(*bounds.last().unwrap(), bytes.len());
        prop_assert!(scan.stopped.is_none(), "stopped: {:?}", scan.stopped);
        prop_assert!(scan.rest_is_zero);
    }

    #[test]
    fn a_snapshot_gives_back_its_records(
        upto in any::<u64>(),
        records in prop::collection::vec(any_record(), 0..12),
    ) {
        let bytes = snapshot(upto, &records);
        prop_assert_eq!(read_snapshot(&bytes), Ok((upto, records)));
    }

    // (b) A torn tail keeps the frames written before it, and nothing else.
    #[test]
    fn a_segment_cut_anywhere_keeps_exactly_its_whole_frames(
        first in first_seq(),
        records in prop::collection::vec(any_record(), 1..6),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let (bytes, bounds) = segment(first, &records);
        let cut = cut_at.index(bytes.len() + 1);
        check_cut(&bytes, &bounds, &singles(records.len()), first, &records, cut);
    }

    // (c) One flipped bit is always caught.
    #[test]
    fn a_flipped_bit_never_gives_a_record_that_was_not_written(
        first in first_seq(),
        records in prop::collection::vec(any_record(), 1..6),
        bit_at in any::<prop::sample::Index>(),
    ) {
        let (bytes, bounds) = segment(first, &records);
        let bit = bit_at.index(bytes.len() * 8);
        check_flip(&bytes, &bounds, &singles(records.len()), first, &records, bit);
    }

    #[test]
    fn a_snapshot_with_a_flipped_bit_is_refused(
        upto in any::<u64>(),
        records in prop::collection::vec(any_record(), 0..6),
        bit_at in any::<prop::sample::Index>(),
    ) {
        let mut bytes = snapshot(upto, &records);
        let bit = bit_at.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(read_snapshot(&bytes).is_err());
    }

    #[test]
    fn arbitrary_bytes_after_a_header_never_panic(
        first in any::<u64>(),
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        for kind in [FileKind::Segment, FileKind::Snapshot] {
            let mut bytes = encode_header(kind, first).to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok((_, scan)) = scan_segment(&bytes) {
                prop_assert!(scan.valid_len <= bytes.len());
                for (_, r) in scan.records {
                    let mut body = BytesMut::new();
                    r.encode(&mut body);
                    prop_assert_eq!(Record::decode(&body), Ok(r));
                }
            }
            let _ = read_snapshot(&bytes);
        }
    }

    #[test]
    fn a_segment_of_batches_gives_back_every_record_numbered_in_order(
        first in first_seq(),
        units in prop::collection::vec(unit(), 0..8),
    ) {
        let (bytes, _, _, all) = unit_segment(first, &units);
        let (seq, scan) = scan_segment(&bytes).unwrap();
        prop_assert_eq!(seq, first);
        prop_assert_eq!(&scan.records, &numbered(first, &all));
        prop_assert_eq!(scan.valid_len, bytes.len());
        prop_assert!(scan.stopped.is_none(), "stopped: {:?}", scan.stopped);
    }

    // A batch is one broker input: a crash that tears it leaves none of it.
    #[test]
    fn a_torn_batch_leaves_none_of_its_records(
        first in first_seq(),
        units in prop::collection::vec(unit(), 1..6),
        cut_at in any::<prop::sample::Index>(),
    ) {
        let (bytes, bounds, before, all) = unit_segment(first, &units);
        let cut = cut_at.index(bytes.len() + 1);
        check_cut(&bytes, &bounds, &before, first, &all, cut);
    }

    #[test]
    fn a_flipped_bit_in_a_batch_drops_the_whole_batch(
        first in first_seq(),
        units in prop::collection::vec(unit(), 1..6),
        bit_at in any::<prop::sample::Index>(),
    ) {
        let (bytes, bounds, before, all) = unit_segment(first, &units);
        let bit = bit_at.index(bytes.len() * 8);
        check_flip(&bytes, &bounds, &before, first, &all, bit);
    }

    #[test]
    fn arbitrary_record_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Ok(r) = Record::decode(&body) {
            let mut again = BytesMut::new();
            r.encode(&mut again);
            prop_assert_eq!(Record::decode(&again), Ok(r));
        }
    }
}

/// Checks a scan of `bytes[..cut]`: the frames that end by `cut` and nothing else. Frame
/// `i` spans `bounds[i]..bounds[i + 1]` and follows `before[i]` records.
fn check_cut(
    bytes: &[u8],
    bounds: &[usize],
    before: &[usize],
    first: u64,
    records: &[Record],
    cut: usize,
) {
    let torn = &bytes[..cut];
    if cut < HEADER_LEN {
        assert!(
            matches!(scan_segment(torn), Err(JournalError::BadHeader(_))),
            "cut at {cut} inside the header"
        );
        return;
    }
    let (seq, scan) = scan_segment(torn).unwrap();
    assert_eq!(seq, first);
    // Frames that end at or before the cut are kept, in order; the torn one is not.
    let whole = bounds[1..].iter().filter(|end| **end <= cut).count();
    assert_eq!(
        scan.records,
        numbered(first, &records[..before[whole]]),
        "cut at {cut}"
    );
    assert_eq!(scan.valid_len, bounds[whole], "cut at {cut}");
    assert!(scan.valid_len <= cut);
    assert_eq!(
        scan.stopped.is_none(),
        scan.valid_len == cut,
        "cut at {cut}: {:?}",
        scan.stopped
    );
    if let Some(stopped) = &scan.stopped {
        assert!(
            matches!(stopped, JournalError::BadRecord { offset, .. } if *offset == scan.valid_len),
            "cut at {cut}: {stopped:?}"
        );
    }
}

/// Checks a scan of `bytes` with `bit` flipped: the frames before the damaged one, and a
/// reason to stop there.
fn check_flip(
    bytes: &[u8],
    bounds: &[usize],
    before: &[usize],
    first: u64,
    records: &[Record],
    bit: usize,
) {
    let mut damaged = bytes.to_vec();
    damaged[bit / 8] ^= 1 << (bit % 8);
    let byte = bit / 8;
    if byte < HEADER_LEN {
        assert!(
            matches!(scan_segment(&damaged), Err(JournalError::BadHeader(_))),
            "bit {bit} in the header"
        );
        return;
    }
    // The frame the flipped byte belongs to.
    let hit = bounds
        .windows(2)
        .position(|w| w[0] <= byte && byte < w[1])
        .unwrap();
    let (seq, scan) = scan_segment(&damaged).unwrap();
    assert_eq!(seq, first);
    assert_eq!(
        scan.records,
        numbered(first, &records[..before[hit]]),
        "bit {bit} (frame {hit}) let a record through"
    );
    assert_eq!(scan.valid_len, bounds[hit], "bit {bit}");
    assert!(
        matches!(&scan.stopped, Some(JournalError::BadRecord { offset, .. }) if *offset == bounds[hit]),
        "bit {bit}: {:?}",
        scan.stopped
    );
}

#[test]
fn crc32c_is_the_castagnoli_checksum() {
    // The standard check value of CRC-32C.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(b""), 0);
}

#[test]
fn header_is_magic_version_kind_sequence_and_checksum() {
    let h = encode_header(FileKind::Snapshot, 0x0102_0304_0506_0708);
    assert_eq!(h.len(), HEADER_LEN);
    assert_eq!(&h[..4], b"TMQJ");
    assert_eq!(h[4], 1, "format version");
    assert_eq!(h[5], 1, "kind: snapshot");
    assert_eq!(&h[6..14], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(&h[14..], &crc32c(&h[..14]).to_be_bytes());
    assert_eq!(encode_header(FileKind::Segment, 0)[5], 0, "kind: segment");
    assert_eq!(
        decode_header(&h),
        Ok((FileKind::Snapshot, 0x0102_0304_0506_0708))
    );
}

#[test]
fn frame_is_length_checksum_sequence_and_body() {
    let record = Record::RetainDel {
        topic: "a".to_owned(),
    };
    let f = frame(5, &record);
    let mut body = BytesMut::new();
    record.encode(&mut body);
    assert_eq!(&f[..4], &(body.len() as u32).to_be_bytes());
    let mut covered = 5u64.to_be_bytes().to_vec();
    covered.extend_from_slice(&body);
    assert_eq!(&f[4..8], &crc32c(&covered).to_be_bytes());
    assert_eq!(&f[8..16], &5u64.to_be_bytes());
    assert_eq!(&f[16..], &body[..]);
    // Type 12, then the topic with a u32 length.
    assert_eq!(&body[..], &[12, 0, 0, 0, 1, b'a']);
}

#[test]
fn sample_records_round_trip_through_a_segment_and_a_snapshot() {
    let records = sample_records();
    let (bytes, _) = segment(1, &records);
    let (first, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(first, 1);
    assert_eq!(scan.records, numbered(1, &records));
    assert_eq!(read_snapshot(&snapshot(99, &records)), Ok((99, records)));
}

#[test]
fn a_message_keeps_its_v5_properties_payload_and_expiry() {
    let records = sample_records();
    let Record::MsgPut(m) = &records[2] else {
        panic!("sample record 2 is a message");
    };
    let mut body = BytesMut::new();
    records[2].encode(&mut body);
    let Ok(Record::MsgPut(back)) = Record::decode(&body) else {
        panic!("message did not decode");
    };
    assert_eq!(
        back.properties.user_properties,
        m.properties.user_properties
    );
    assert_eq!(
        back.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(&back.payload[..], b"hello \x00\xff world");
    assert_eq!(back.expires_at_unix_ms, Some(1_700_000_060_000));
    assert_eq!(back.qos, QoS::ExactlyOnce);
    assert!(back.retain);
    assert_eq!(back, *m);
}

// ---------------------------------------------------------------------------------------------
// (b) Torn tails, exhaustively on one segment
// ---------------------------------------------------------------------------------------------

#[test]
fn a_segment_cut_at_every_byte_keeps_exactly_its_whole_frames() {
    let records = sample_records();
    let (bytes, bounds) = segment(1000, &records);
    for cut in 0..=bytes.len() {
        check_cut(
            &bytes,
            &bounds,
            &singles(records.len()),
            1000,
            &records,
            cut,
        );
    }
}

#[test]
fn preallocated_zeros_after_the_last_frame_are_recognised() {
    let records = sample_records();
    let (bytes, _) = segment(1, &records);
    for zeros in [1usize, 3, 4, 15, 16, 17, 4096] {
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + zeros, 0);
        let (_, scan) = scan_segment(&padded).unwrap();
        assert_eq!(scan.records, numbered(1, &records), "{zeros} zeros");
        assert_eq!(scan.valid_len, bytes.len());
        assert!(scan.rest_is_zero, "{zeros} zeros");
        assert!(
            matches!(scan.stopped, Some(JournalError::BadRecord { offset, .. }) if offset == bytes.len()),
            "{zeros} zeros: {:?}",
            scan.stopped
        );
    }
    // An empty segment, all preallocated.
    let mut empty = encode_header(FileKind::Segment, 7).to_vec();
    empty.resize(1 << 16, 0);
    let (first, scan) = scan_segment(&empty).unwrap();
    assert_eq!(first, 7);
    assert!(scan.records.is_empty());
    assert_eq!(scan.valid_len, HEADER_LEN);
    assert!(scan.rest_is_zero);
}

#[test]
fn a_torn_frame_before_the_zeros_is_not_taken_for_preallocated_space() {
    let records = sample_records();
    let (bytes, bounds) = segment(1, &records);
    // Half of the message frame, then zeros.
    let cut = (bounds[2] + bounds[3]) / 2;
    let mut torn = bytes[..cut].to_vec();
    torn.resize(bytes.len() + 100, 0);
    let (_, scan) = scan_segment(&torn).unwrap();
    assert_eq!(scan.records, numbered(1, &records[..2]));
    assert_eq!(scan.valid_len, bounds[2]);
    assert!(!scan.rest_is_zero);
    assert!(scan.stopped.is_some());
}

// ---------------------------------------------------------------------------------------------
// (c) Bit flips, exhaustively on one segment
// ---------------------------------------------------------------------------------------------

#[test]
fn every_single_bit_flip_in_a_segment_is_caught() {
    let records = sample_records();
    let (bytes, bounds) = segment(77, &records);
    for bit in 0..bytes.len() * 8 {
        check_flip(&bytes, &bounds, &singles(records.len()), 77, &records, bit);
    }
}

#[test]
fn every_single_bit_flip_in_a_snapshot_is_caught() {
    let records = sample_records();
    let bytes = snapshot(77, &records);
    for bit in 0..bytes.len() * 8 {
        let mut damaged = bytes.clone();
        damaged[bit / 8] ^= 1 << (bit % 8);
        assert!(read_snapshot(&damaged).is_err(), "bit {bit} accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// (d) Numbering and file kinds
// ---------------------------------------------------------------------------------------------

fn stopped_what(scan: &tidemq_core::persist::Scan) -> (usize, &'static str) {
    match scan.stopped {
        Some(JournalError::BadRecord { offset, what }) => (offset, what),
        ref other => panic!("expected a bad record, got {other:?}"),
    }
}

#[test]
fn a_frame_numbered_out_of_order_ends_the_segment() {
    let records = sample_records();
    let mut bytes = encode_header(FileKind::Segment, 5).to_vec();
    bytes.extend(frame(5, &records[0]));
    bytes.extend(frame(6, &records[1]));
    let gap_at = bytes.len();
    // 8 where 7 is due, then a correctly numbered 7 that must not be reached.
    bytes.extend(frame(8, &records[2]));
    bytes.extend(frame(7, &records[3]));
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(5, &records[..2]));
    assert_eq!(scan.valid_len, gap_at);
    assert_eq!(
        stopped_what(&scan),
        (gap_at, "sequence number out of order")
    );
    assert!(!scan.rest_is_zero);
}

#[test]
fn a_repeated_or_backwards_sequence_number_ends_the_segment() {
    let records = sample_records();
    for bad in [5u64, 4, 0, u64::MAX] {
        let mut bytes = encode_header(FileKind::Segment, 5).to_vec();
        bytes.extend(frame(5, &records[0]));
        let at = bytes.len();
        bytes.extend(frame(bad, &records[1]));
        let (_, scan) = scan_segment(&bytes).unwrap();
        assert_eq!(scan.records, numbered(5, &records[..1]), "seq {bad}");
        assert_eq!(stopped_what(&scan), (at, "sequence number out of order"));
    }
}

#[test]
fn the_first_frame_must_carry_the_headers_sequence_number() {
    let records = sample_records();
    let mut bytes = encode_header(FileKind::Segment, 10).to_vec();
    bytes.extend(frame(11, &records[0]));
    let (first, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(first, 10);
    assert!(scan.records.is_empty());
    assert_eq!(scan.valid_len, HEADER_LEN);
    assert_eq!(
        stopped_what(&scan),
        (HEADER_LEN, "sequence number out of order")
    );
}

#[test]
fn a_snapshot_is_not_read_as_a_segment_nor_a_segment_as_a_snapshot() {
    let records = sample_records();
    let snap = snapshot(3, &records);
    assert_eq!(
        scan_segment(&snap).unwrap_err(),
        JournalError::BadHeader("a snapshot where a segment was expected")
    );
    let (seg, _) = segment(3, &records);
    assert_eq!(
        read_snapshot(&seg).unwrap_err(),
        JournalError::BadHeader("a segment where a snapshot was expected")
    );
    // Header only.
    assert!(scan_segment(&encode_header(FileKind::Snapshot, 3)).is_err());
}

#[test]
fn a_snapshot_closing_mark_inside_a_segment_ends_it() {
    let records = sample_records();
    let mut bytes = encode_header(FileKind::Segment, 1).to_vec();
    bytes.extend(frame(1, &records[0]));
    let at = bytes.len();
    let mut end = BytesMut::new();
    encode_snapshot_end(2, 1, &mut end);
    bytes.extend_from_slice(&end);
    bytes.extend(frame(3, &records[1]));
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(1, &records[..1]));
    assert_eq!(stopped_what(&scan), (at, "snapshot mark inside a segment"));
}

#[test]
fn headers_that_are_not_ours_are_refused() {
    let good = encode_header(FileKind::Segment, 1);
    let with = |i: usize, v: u8| {
        let mut h = good;
        h[i] = v;
        // Re-seal so that only the named field is wrong.
        let crc = crc32c(&h[..14]);
        h[14..].copy_from_slice(&crc.to_be_bytes());
        h
    };
    assert_eq!(
        decode_header(&with(0, b'X')),
        Err(JournalError::BadHeader("not a TideMQ journal file"))
    );
    assert_eq!(
        decode_header(&with(4, 2)),
        Err(JournalError::BadHeader("unsupported format version"))
    );
    assert_eq!(
        decode_header(&with(5, 2)),
        Err(JournalError::BadHeader("unknown file kind"))
    );
    let mut bad_crc = good;
    bad_crc[17] ^= 1;
    assert_eq!(
        decode_header(&bad_crc),
        Err(JournalError::BadHeader("header checksum mismatch"))
    );
    assert_eq!(
        decode_header(&good[..HEADER_LEN - 1]),
        Err(JournalError::BadHeader("file shorter than its header"))
    );
    assert!(scan_segment(&[]).is_err());
    assert!(read_snapshot(&[]).is_err());
}

#[test]
fn a_frame_longer_than_any_record_is_refused_without_reading_it() {
    let mut bytes = encode_header(FileKind::Segment, 1).to_vec();
    bytes.extend_from_slice(&((MAX_RECORD_LEN + 1) as u32).to_be_bytes());
    bytes.extend_from_slice(&[0xAB; 12]);
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert!(scan.records.is_empty());
    assert_eq!(
        stopped_what(&scan),
        (HEADER_LEN, "frame length over the maximum")
    );
}

#[test]
fn a_well_framed_body_that_is_not_a_record_ends_the_segment() {
    // Correct length and checksum around a body the decoder refuses.
    let bodies: [(&[u8], &str); 6] = [
        (&[0x63], "unknown record type"),
        (
            &[12, 0, 0, 0, 1, b'a', 0],
            "trailing bytes after the record",
        ),
        (&[12, 0, 0, 0, 2, b'a'], "record ends early"),
        (&[12, 0, 0, 0, 1, 0xFF], "string is not UTF-8"),
        (&[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "record ends early"),
        (&[2, 0xFF, 0xFF, 0xFF, 0xFF], "record ends early"),
    ];
    for (body, what) in bodies {
        assert_eq!(Record::decode(body), Err(what), "{body:?}");
        let mut bytes = encode_header(FileKind::Segment, 1).to_vec();
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        let mut covered = 1u64.to_be_bytes().to_vec();
        covered.extend_from_slice(body);
        bytes.extend_from_slice(&crc32c(&covered).to_be_bytes());
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(body);
        let (_, scan) = scan_segment(&bytes).unwrap();
        assert!(scan.records.is_empty());
        assert_eq!(stopped_what(&scan), (HEADER_LEN, what));
    }
}

#[test]
fn record_fields_out_of_range_are_refused() {
    let mut body = BytesMut::new();
    Record::OutState {
        client_id: "c".to_owned(),
        entry: 1,
        packet_id: 1,
        released: true,
    }
    .encode(&mut body);
    // The released flag is the last byte.
    let mut bad = body.to_vec();
    *bad.last_mut().unwrap() = 2;
    assert_eq!(Record::decode(&bad), Err("flag is neither 0 nor 1"));

    let mut body = BytesMut::new();
    Record::BridgePut {
        bridge: "b".to_owned(),
        entry: 1,
        msg_id: 1,
        qos: QoS::AtLeastOnce,
        retain: false,
    }
    .encode(&mut body);
    let mut bad = body.to_vec();
    let n = bad.len();
    bad[n - 2] = 3;
    assert_eq!(Record::decode(&bad), Err("QoS out of range"));

    // A subscription id above u32.
    let mut body = BytesMut::new();
    body.put_u8(3);
    for s in ["c", "f"] {
        body.put_u32(1);
        body.put_slice(s.as_bytes());
    }
    body.put_u8(0);
    body.put_u8(1);
    body.put_u64(1 << 32);
    assert_eq!(Record::decode(&body), Err("subscription id too large"));

    // A queue entry claiming more subscription ids than it holds.
    let mut body = BytesMut::new();
    Record::QueuePut {
        client_id: "c".to_owned(),
        entry: 1,
        msg_id: 1,
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![],
        sent: None,
    }
    .encode(&mut body);
    let n = body.len();
    body[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        Record::decode(&body),
        Err("subscription id count past the end")
    );

    // A message whose embedded packet is not a PUBLISH.
    let mut body = BytesMut::new();
    body.put_u8(5);
    body.put_u64(1);
    body.put_u8(1);
    body.put_u8(0);
    body.put_u8(0);
    body.put_u32(2);
    body.put_slice(&[0xC0, 0x00]);
    assert_eq!(
        Record::decode(&body),
        Err("message is not a well-formed PUBLISH")
    );
}

fn sample_units() -> Vec<Unit> {
    let r = sample_records();
    vec![
        Unit::Batch(r[..3].to_vec()),
        Unit::One(r[3].clone()),
        Unit::Batch(r[4..10].to_vec()),
        Unit::Batch(r[10..].to_vec()),
    ]
}

#[test]
fn a_segment_of_batches_cut_at_every_byte_keeps_whole_batches_only() {
    let (bytes, bounds, before, all) = unit_segment(500, &sample_units());
    assert_eq!(before, vec![0, 3, 4, 10, all.len()]);
    for cut in 0..=bytes.len() {
        check_cut(&bytes, &bounds, &before, 500, &all, cut);
    }
}

#[test]
fn every_single_bit_flip_in_a_segment_of_batches_is_caught() {
    let (bytes, bounds, before, all) = unit_segment(u64::MAX - 5, &sample_units());
    for bit in 0..bytes.len() * 8 {
        check_flip(&bytes, &bounds, &before, u64::MAX - 5, &all, bit);
    }
}

#[test]
fn the_frame_after_a_batch_carries_the_number_after_its_last_record() {
    let r = sample_records();
    let mut bytes = encode_header(FileKind::Segment, 10).to_vec();
    let mut b = BytesMut::new();
    encode_batch(10, &r[..3], &mut b).unwrap();
    bytes.extend_from_slice(&b);
    let after = bytes.len();
    // 11 where 13 is due.
    bytes.extend(frame(11, &r[3]));
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(10, &r[..3]));
    assert_eq!(stopped_what(&scan), (after, "sequence number out of order"));

    let mut bytes = bytes[..after].to_vec();
    bytes.extend(frame(13, &r[3]));
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(10, &r[..4]));
    assert!(scan.stopped.is_none());
}

/// A frame around `body` with a correct length and checksum.
fn raw_frame(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    let mut covered = seq.to_be_bytes().to_vec();
    covered.extend_from_slice(body);
    out.extend_from_slice(&crc32c(&covered).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn record_body(r: &Record) -> Vec<u8> {
    let mut b = BytesMut::new();
    r.encode(&mut b);
    b.to_vec()
}

#[test]
fn a_batch_with_one_bad_record_is_refused_whole() {
    let r = sample_records();
    // Type byte of a batch, count, then each record with a u32 length.
    let batch = |count: u32, bodies: &[Vec<u8>], tail: &[u8]| {
        let mut body = vec![0xFD];
        body.extend_from_slice(&count.to_be_bytes());
        for b in bodies {
            body.extend_from_slice(&(b.len() as u32).to_be_bytes());
            body.extend_from_slice(b);
        }
        body.extend_from_slice(tail);
        body
    };
    let good = vec![record_body(&r[0]), record_body(&r[1])];
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            batch(3, &[good[0].clone(), vec![0x63], good[1].clone()], &[]),
            "unknown record type",
        ),
        (batch(2, &good, &[0]), "trailing bytes after the batch"),
        (batch(3, &good, &[]), "record ends early"),
        (batch(u32::MAX, &good, &[]), "batch count past the end"),
        (
            batch(
                2,
                &[good[0].clone(), {
                    let mut b = good[1].clone();
                    b.push(0);
                    b
                }],
                &[],
            ),
            "trailing bytes after the record",
        ),
    ];
    for (body, what) in cases {
        let mut bytes = encode_header(FileKind::Segment, 1).to_vec();
        bytes.extend(frame(1, &r[5]));
        let at = bytes.len();
        bytes.extend(raw_frame(2, &body));
        let (_, scan) = scan_segment(&bytes).unwrap();
        assert_eq!(scan.records, numbered(1, &r[5..6]), "{what}");
        assert_eq!(scan.valid_len, at);
        assert_eq!(stopped_what(&scan), (at, what));
    }
    // The same batch, well formed, is read whole.
    let mut bytes = encode_header(FileKind::Segment, 1).to_vec();
    bytes.extend(raw_frame(1, &batch(2, &good, &[])));
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(1, &r[..2]));
}

// ---------------------------------------------------------------------------------------------
// (e) Snapshots count only when complete
// ---------------------------------------------------------------------------------------------

#[test]
fn a_snapshot_without_its_closing_mark_is_refused() {
    let records = sample_records();
    let bytes = snapshot(50, &records);
    let mut end = BytesMut::new();
    encode_snapshot_end(50, records.len() as u64, &mut end);
    let without = &bytes[..bytes.len() - end.len()];
    assert!(matches!(
        read_snapshot(without),
        Err(JournalError::BadRecord { .. })
    ));
    // Nor any shorter prefix.
    for cut in 0..bytes.len() {
        assert!(
            read_snapshot(&bytes[..cut]).is_err(),
            "cut at {cut} accepted"
        );
    }
    // The header alone is not an empty snapshot.
    assert!(read_snapshot(&encode_header(FileKind::Snapshot, 50)).is_err());
    // But a closing mark over zero records is.
    assert_eq!(read_snapshot(&snapshot(50, &[])), Ok((50, vec![])));
}

#[test]
fn a_snapshot_whose_closing_mark_has_the_wrong_count_is_refused() {
    let records = sample_records();
    for count in [
        0,
        records.len() as u64 - 1,
        records.len() as u64 + 1,
        u64::MAX,
    ] {
        let mut bytes = BytesMut::new();
        bytes.put_slice(&encode_header(FileKind::Snapshot, 50));
        for r in &records {
            encode_frame(50, r, &mut bytes).unwrap();
        }
        let at = bytes.len();
        encode_snapshot_end(50, count, &mut bytes);
        assert_eq!(
            read_snapshot(&bytes),
            Err(JournalError::BadRecord {
                offset: at,
                what: "snapshot closing mark does not match its contents"
            }),
            "count {count}"
        );
    }
}

#[test]
fn a_snapshot_with_bytes_after_its_closing_mark_is_refused() {
    let records = sample_records();
    let bytes = snapshot(50, &records);
    for extra in [&[0u8][..], &[0; 16], &[1, 2, 3]] {
        let mut longer = bytes.clone();
        longer.extend_from_slice(extra);
        assert!(read_snapshot(&longer).is_err(), "{extra:?} after the end");
    }
    // Another whole frame after the mark.
    let mut longer = bytes.clone();
    longer.extend(frame(50, &records[0]));
    assert!(read_snapshot(&longer).is_err());
}

#[test]
fn a_snapshot_record_from_another_snapshot_is_refused() {
    let records = sample_records();
    let mut bytes = BytesMut::new();
    bytes.put_slice(&encode_header(FileKind::Snapshot, 50));
    encode_frame(50, &records[0], &mut bytes).unwrap();
    let at = bytes.len();
    encode_frame(49, &records[1], &mut bytes).unwrap();
    encode_snapshot_end(50, 2, &mut bytes);
    assert_eq!(
        read_snapshot(&bytes),
        Err(JournalError::BadRecord {
            offset: at,
            what: "snapshot record from another snapshot"
        })
    );
    // Nor a closing mark of another snapshot.
    let mut bytes = BytesMut::new();
    bytes.put_slice(&encode_header(FileKind::Snapshot, 50));
    encode_snapshot_end(51, 0, &mut bytes);
    assert!(read_snapshot(&bytes).is_err());
}

#[test]
fn a_snapshot_closing_mark_with_bytes_after_its_count_is_refused() {
    // A closing mark is the type byte and a u64 count; anything more is not ours.
    let mut body = vec![0xFE];
    body.extend_from_slice(&0u64.to_be_bytes());
    body.push(0);
    let mut bytes = encode_header(FileKind::Snapshot, 9).to_vec();
    bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
    let mut covered = 9u64.to_be_bytes().to_vec();
    covered.extend_from_slice(&body);
    bytes.extend_from_slice(&crc32c(&covered).to_be_bytes());
    bytes.extend_from_slice(&9u64.to_be_bytes());
    bytes.extend_from_slice(&body);
    assert!(
        read_snapshot(&bytes).is_err(),
        "closing mark with a trailing byte accepted"
    );
}

// ---------------------------------------------------------------------------------------------
// (f) Replay
// ---------------------------------------------------------------------------------------------

fn session_put(client_id: &str, expiry_secs: u32) -> Record {
    Record::SessionPut {
        client_id: client_id.to_owned(),
        version: 5,
        expiry_secs,
        disconnected_at_unix_ms: None,
    }
}

fn queue_put(client_id: &str, entry: u64, msg_id: u64) -> Record {
    Record::QueuePut {
        client_id: client_id.to_owned(),
        entry,
        msg_id,
        qos: QoS::ExactlyOnce,
        retain: false,
        subscription_ids: vec![4],
        sent: None,
    }
}

fn sub_put(client_id: &str, filter: &str) -> Record {
    Record::SubPut {
        client_id: client_id.to_owned(),
        filter: filter.to_owned(),
        options: 1,
        subscription_id: Some(4),
    }
}

#[test]
fn replay_builds_sessions_with_subscriptions_queues_and_qos2_state() {
    let r = replay(&[
        Record::MsgPut(Box::new(message(1, "t", b"one"))),
        session_put("c", 60),
        sub_put("c", "t/#"),
        queue_put("c", 1, 1),
        queue_put("c", 2, 1),
        Record::OutState {
            client_id: "c".to_owned(),
            entry: 1,
            packet_id: 10,
            released: false,
        },
        Record::OutState {
            client_id: "c".to_owned(),
            entry: 1,
            packet_id: 10,
            released: true,
        },
        Record::InQos2Put {
            client_id: "c".to_owned(),
            packet_id: 3,
        },
        Record::InQos2Put {
            client_id: "c".to_owned(),
            packet_id: 4,
        },
        Record::InQos2Del {
            client_id: "c".to_owned(),
            packet_id: 3,
        },
        Record::SessionPut {
            client_id: "c".to_owned(),
            version: 4,
            expiry_secs: 30,
            disconnected_at_unix_ms: Some(5),
        },
    ]);
    let s = &r.sessions["c"];
    // A later SessionPut changes the settings and keeps what the session holds.
    assert_eq!(
        (s.version, s.expiry_secs, s.disconnected_at_unix_ms),
        (4, 30, Some(5))
    );
    assert_eq!(
        s.subscriptions.get("t/#"),
        Some(&(1u8, Some(4u32))),
        "{:?}",
        s.subscriptions
    );
    assert_eq!(s.queue.len(), 2);
    assert_eq!(
        s.queue[&1],
        QueuedDelivery {
            msg_id: 1,
            qos: QoS::ExactlyOnce,
            retain: false,
            subscription_ids: vec![4],
            out_state: Some((10, true)),
        }
    );
    assert_eq!(s.queue[&2].out_state, None);
    assert_eq!(s.awaiting_rel.iter().copied().collect::<Vec<_>>(), vec![4]);
    assert_eq!(r.messages[&1].payload, Bytes::from_static(b"one"));
}

#[test]
fn session_delete_forgets_its_subscriptions_queue_and_qos2_ids() {
    let mut r = replay(&[
        Record::MsgPut(Box::new(message(1, "t", b"one"))),
        session_put("c", 60),
        sub_put("c", "t"),
        queue_put("c", 1, 1),
        Record::InQos2Put {
            client_id: "c".to_owned(),
            packet_id: 3,
        },
        session_put("other", 60),
        Record::SessionDel {
            client_id: "c".to_owned(),
        },
    ]);
    assert!(!r.sessions.contains_key("c"));
    assert!(r.sessions.contains_key("other"));
    // A new session under the same id starts empty.
    r.apply(session_put("c", 60));
    assert_eq!(r.sessions["c"], {
        let mut fresh = replay(&[session_put("c", 60)]);
        fresh.sessions.remove("c").unwrap()
    });
    // And the message nothing refers to any more goes at prune.
    r.prune();
    assert!(r.messages.is_empty());
}

#[test]
fn records_about_an_absent_session_change_nothing() {
    let r = replay(&[
        sub_put("ghost", "t"),
        queue_put("ghost", 1, 1),
        Record::OutState {
            client_id: "ghost".to_owned(),
            entry: 1,
            packet_id: 1,
            released: true,
        },
        Record::InQos2Put {
            client_id: "ghost".to_owned(),
            packet_id: 1,
        },
        Record::SubDel {
            client_id: "ghost".to_owned(),
            filter: "t".to_owned(),
        },
        Record::QueueDel {
            client_id: "ghost".to_owned(),
            entry: 1,
        },
        Record::SessionDel {
            client_id: "ghost".to_owned(),
        },
        Record::RetainDel {
            topic: "nothing".to_owned(),
        },
        Record::BridgeDel {
            bridge: "none".to_owned(),
            entry: 1,
        },
    ]);
    assert_eq!(r, Recovered::default());
}

#[test]
fn queue_delete_and_out_state_act_on_one_entry() {
    let mut r = replay(&[
        Record::MsgPut(Box::new(message(1, "t", b"one"))),
        Record::MsgPut(Box::new(message(2, "t", b"two"))),
        session_put("c", 60),
        queue_put("c", 1, 1),
        queue_put("c", 2, 2),
        // An out state for an entry that is not queued changes nothing.
        Record::OutState {
            client_id: "c".to_owned(),
            entry: 9,
            packet_id: 5,
            released: false,
        },
        Record::OutState {
            client_id: "c".to_owned(),
            entry: 2,
            packet_id: 5,
            released: false,
        },
        Record::QueueDel {
            client_id: "c".to_owned(),
            entry: 1,
        },
    ]);
    let q = &r.sessions["c"].queue;
    assert_eq!(q.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(q[&2].out_state, Some((5, false)));
    // Once deleted, an out state for the entry does not bring it back.
    r.apply(Record::QueueDel {
        client_id: "c".to_owned(),
        entry: 2,
    });
    r.apply(Record::OutState {
        client_id: "c".to_owned(),
        entry: 2,
        packet_id: 5,
        released: true,
    });
    assert!(r.sessions["c"].queue.is_empty());
    r.prune();
    assert!(r.messages.is_empty(), "{:?}", r.messages);
}

#[test]
fn retained_and_bridge_records_replay_by_key() {
    let r = replay(&[
        Record::MsgPut(Box::new(message(1, "a", b"one"))),
        Record::MsgPut(Box::new(message(2, "a", b"two"))),
        Record::RetainPut {
            topic: "a".to_owned(),
            msg_id: 1,
        },
        Record::RetainPut {
            topic: "a".to_owned(),
            msg_id: 2,
        },
        Record::RetainPut {
            topic: "b".to_owned(),
            msg_id: 1,
        },
        Record::RetainDel {
            topic: "b".to_owned(),
        },
        Record::BridgePut {
            bridge: "up".to_owned(),
            entry: 1,
            msg_id: 1,
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        Record::BridgePut {
            bridge: "up".to_owned(),
            entry: 2,
            msg_id: 2,
            qos: QoS::ExactlyOnce,
            retain: true,
        },
        Record::BridgeDel {
            bridge: "up".to_owned(),
            entry: 1,
        },
    ]);
    assert_eq!(r.retained.len(), 1);
    assert_eq!(r.retained["a"], 2);
    assert_eq!(r.bridges["up"].len(), 1);
    assert_eq!(
        r.bridges["up"][&2],
        BridgeEntry {
            msg_id: 2,
            qos: QoS::ExactlyOnce,
            retain: true
        }
    );
}

#[test]
fn prune_drops_unreferenced_messages_and_dangling_references() {
    let mut r = replay(&[
        Record::MsgPut(Box::new(message(1, "q", b"queued"))),
        Record::MsgPut(Box::new(message(2, "r", b"retained"))),
        Record::MsgPut(Box::new(message(3, "b", b"bridged"))),
        Record::MsgPut(Box::new(message(4, "x", b"nobody"))),
        session_put("c", 60),
        queue_put("c", 1, 1),
        // Entries whose message was never stored (or is gone).
        queue_put("c", 2, 99),
        Record::RetainPut {
            topic: "r".to_owned(),
            msg_id: 2,
        },
        Record::RetainPut {
            topic: "gone".to_owned(),
            msg_id: 98,
        },
        Record::BridgePut {
            bridge: "up".to_owned(),
            entry: 1,
            msg_id: 3,
            qos: QoS::AtLeastOnce,
            retain: false,
        },
        Record::BridgePut {
            bridge: "dangling".to_owned(),
            entry: 1,
            msg_id: 97,
            qos: QoS::AtLeastOnce,
            retain: false,
        },
    ]);
    r.last_seq = 11;
    r.prune();
    assert_eq!(
        r.messages.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "message 4 is referred to by nothing"
    );
    assert_eq!(
        r.sessions["c"].queue.keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(r.retained.keys().cloned().collect::<Vec<_>>(), vec!["r"]);
    assert_eq!(r.bridges.keys().cloned().collect::<Vec<_>>(), vec!["up"]);
    assert_eq!(r.last_seq, 11, "prune leaves the sequence number alone");
    assert_pruned(&r);
    assert_eq!(
        r.summary(),
        "1 sessions, 0 subscriptions, 1 queued or in-flight messages, 1 retained, 1 bridge \
         messages, 3 message bodies"
    );
    // Pruning again changes nothing.
    let once = r.clone();
    r.prune();
    assert_eq!(r, once);
}

#[test]
fn a_message_body_rewritten_later_replaces_the_earlier_one() {
    let r = replay(&[
        Record::MsgPut(Box::new(message(1, "t", b"old"))),
        Record::MsgPut(Box::new(message(1, "t", b"new"))),
    ]);
    assert_eq!(r.messages[&1].payload, Bytes::from_static(b"new"));
}

proptest! {
    #![proptest_config(config(256))]

    /// "Every record is keyed, so replaying one twice is harmless."
    #[test]
    fn replaying_a_record_twice_is_harmless(
        records in prop::collection::vec(small_record(), 1..40),
        dup in any::<prop::sample::Index>(),
    ) {
        let i = dup.index(records.len());
        let mut twice = records.clone();
        twice.insert(i, records[i].clone());
        prop_assert_eq!(replay(&twice), replay(&records));
    }

    #[test]
    fn prune_keeps_every_reference_resolvable_and_nothing_else(
        records in prop::collection::vec(small_record(), 0..60),
    ) {
        let mut r = replay(&records);
        let before = r.clone();
        r.prune();
        assert_pruned(&r);
        // Prune only removes: sessions, subscriptions and QoS 2 state are untouched.
        prop_assert_eq!(r.sessions.len(), before.sessions.len());
        for (id, s) in &r.sessions {
            let b = &before.sessions[id];
            prop_assert_eq!(&s.subscriptions, &b.subscriptions);
            prop_assert_eq!(&s.awaiting_rel, &b.awaiting_rel);
            for (entry, d) in &s.queue {
                prop_assert_eq!(Some(d), b.queue.get(entry));
            }
            // What went is exactly what pointed at a missing message.
            for (entry, d) in &b.queue {
                prop_assert_eq!(
                    s.queue.contains_key(entry),
                    before.messages.contains_key(&d.msg_id)
                );
            }
        }
        let again = r.clone();
        r.prune();
        prop_assert_eq!(r, again);
    }

    /// Replay through the journal format equals replay of the records themselves.
    #[test]
    fn replay_from_a_segment_equals_replay_of_its_records(
        records in prop::collection::vec(small_record(), 0..40),
    ) {
        let (bytes, _) = segment(1, &records);
        let (_, scan) = scan_segment(&bytes).unwrap();
        let mut r = Recovered::default();
        for (seq, rec) in scan.records {
            r.apply(rec);
            r.last_seq = seq;
        }
        let mut expect = replay(&records);
        expect.last_seq = records.len() as u64;
        prop_assert_eq!(r, expect);
    }

    /// A snapshot of the replayed state, then the rest of the journal, replays to the same
    /// state as the whole journal.
    #[test]
    fn snapshot_of_a_prefix_then_the_tail_equals_the_whole_journal(
        records in prop::collection::vec(small_record(), 0..40),
        split in any::<prop::sample::Index>(),
    ) {
        let k = split.index(records.len() + 1);
        let prefix = replay(&records[..k]);
        let snap = state_as_records(&prefix);
        let (upto, back) = read_snapshot(&snapshot(k as u64, &snap)).unwrap();
        prop_assert_eq!(upto, k as u64);
        let mut r = replay(&back);
        // (A bridge whose entries are all deleted stays as an empty map until prune.)
        let mut expect = prefix.clone();
        expect.bridges.retain(|_, b| !b.is_empty());
        prop_assert_eq!(&r, &expect);
        for rec in &records[k..] {
            r.apply(rec.clone());
        }
        r.prune();
        let mut whole = replay(&records);
        whole.prune();
        prop_assert_eq!(r, whole);
    }
}

/// The records that rebuild `r` (what a snapshot holds).
fn state_as_records(r: &Recovered) -> Vec<Record> {
    let mut out: Vec<Record> = r
        .messages
        .values()
        .cloned()
        .map(|m| Record::MsgPut(Box::new(m)))
        .collect();
    for (topic, id) in &r.retained {
        out.push(Record::RetainPut {
            topic: topic.clone(),
            msg_id: *id,
        });
    }
    for (client_id, s) in &r.sessions {
        out.push(Record::SessionPut {
            client_id: client_id.clone(),
            version: s.version,
            expiry_secs: s.expiry_secs,
            disconnected_at_unix_ms: s.disconnected_at_unix_ms,
        });
        for (filter, (options, id)) in &s.subscriptions {
            out.push(Record::SubPut {
                client_id: client_id.clone(),
                filter: filter.clone(),
                options: *options,
                subscription_id: *id,
            });
        }
        for (entry, d) in &s.queue {
            out.push(Record::QueuePut {
                client_id: client_id.clone(),
                entry: *entry,
                msg_id: d.msg_id,
                qos: d.qos,
                retain: d.retain,
                subscription_ids: d.subscription_ids.clone(),
                sent: None,
            });
            if let Some((packet_id, released)) = d.out_state {
                out.push(Record::OutState {
                    client_id: client_id.clone(),
                    entry: *entry,
                    packet_id,
                    released,
                });
            }
        }
        for pid in &s.awaiting_rel {
            out.push(Record::InQos2Put {
                client_id: client_id.clone(),
                packet_id: *pid,
            });
        }
    }
    for (bridge, entries) in &r.bridges {
        for (entry, e) in entries {
            out.push(Record::BridgePut {
                bridge: bridge.clone(),
                entry: *entry,
                msg_id: e.msg_id,
                qos: e.qos,
                retain: e.retain,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Batches in parts: whatever the writer emits reads back, and no cut gives part of an input
// ---------------------------------------------------------------------------------------------

/// Inputs written one batch each, with parts of `part_len` bytes: the bytes and the number
/// of records before each input.
fn batched(first: u64, inputs: &[Vec<Record>], part_len: usize) -> (Vec<u8>, Vec<usize>) {
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, first));
    let mut before = vec![0];
    for rs in inputs {
        let seq = first.wrapping_add(*before.last().unwrap() as u64);
        encode_batch_parts(seq, rs, part_len, &mut out).unwrap();
        before.push(before.last().unwrap() + rs.len());
    }
    (out.to_vec(), before)
}

/// The records a (possibly cut) segment gives back must be a whole number of inputs.
fn assert_whole_inputs(bytes: &[u8], first: u64, all: &[Record], before: &[usize]) {
    let (_, scan) = scan_segment(bytes).unwrap();
    let n = scan.records.len();
    assert!(
        before.contains(&n),
        "{n} records is not a whole number of inputs"
    );
    assert_eq!(scan.records, numbered(first, &all[..n]));
    let (_, again) = scan_segment(&bytes[..scan.valid_len]).unwrap();
    assert_eq!(again.records.len(), n, "the valid prefix reads differently");
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn every_batch_the_writer_emits_reads_back_and_cuts_keep_whole_inputs(
        first in first_seq(),
        inputs in prop::collection::vec(prop::collection::vec(any_record(), 0..6), 1..5),
        part_len in 1usize..300,
    ) {
        let (bytes, before) = batched(first, &inputs, part_len);
        let all: Vec<Record> = inputs.concat();
        let (seq, scan) = scan_segment(&bytes).unwrap();
        prop_assert_eq!(seq, first);
        prop_assert_eq!(&scan.records, &numbered(first, &all));
        prop_assert!(scan.stopped.is_none(), "stopped: {:?}", scan.stopped);
        prop_assert_eq!(scan.valid_len, bytes.len());
        for cut in HEADER_LEN..=bytes.len() {
            assert_whole_inputs(&bytes[..cut], first, &all, &before);
        }
    }
}

#[test]
fn a_batch_over_the_part_size_is_written_in_parts_and_read_back_whole() {
    // Three 7 MiB bodies: one input over BATCH_PART_LEN, then a small one.
    let big: Vec<Record> = (0..3u8)
        .map(|i| Record::MsgPut(Box::new(message(u64::from(i), "t", &vec![i; 7 << 20]))))
        .collect();
    let small = sample_records();
    let inputs = vec![big, small];
    let (bytes, before) = batched(5, &inputs, BATCH_PART_LEN);
    let all: Vec<Record> = inputs.concat();
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(5, &all));
    assert!(scan.stopped.is_none());
    // Cuts inside the first part, at the part boundary, and one byte short of the chain's end.
    let first_frame = HEADER_LEN + 16 + 2 + BATCH_PART_LEN;
    let chain_end = {
        let mut one = BytesMut::new();
        encode_batch_parts(5, &inputs[0], BATCH_PART_LEN, &mut one).unwrap();
        HEADER_LEN + one.len()
    };
    assert!(chain_end > first_frame, "the batch was not split");
    for cut in [
        HEADER_LEN + 17,
        first_frame - 1,
        first_frame,
        first_frame + 1,
        chain_end - 1,
        chain_end,
        chain_end + 1,
        bytes.len() - 1,
    ] {
        assert_whole_inputs(&bytes[..cut], 5, &all, &before);
    }
    // A bit flipped in the second part loses the whole input, not its first records.
    let mut damaged = bytes.clone();
    damaged[first_frame + 40] ^= 1;
    let (_, scan) = scan_segment(&damaged).unwrap();
    assert!(scan.records.is_empty());
    assert_eq!(scan.valid_len, HEADER_LEN);
}

#[test]
fn a_single_record_over_the_part_size_is_split_across_parts() {
    let record = Record::MsgPut(Box::new(message(9, "big", &vec![7; BATCH_PART_LEN + 1000])));
    let (bytes, _) = batched(
        1,
        std::slice::from_ref(&vec![record.clone()]),
        BATCH_PART_LEN,
    );
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, vec![(1, record)]);
    assert!(scan.stopped.is_none());
}

#[test]
fn a_record_over_the_maximum_is_refused_and_nothing_is_written() {
    // No message is this large (its PUBLISH would not encode); a key this long stands in.
    let record = Record::RetainDel {
        topic: "t".repeat(MAX_RECORD_LEN),
    };
    let mut out = BytesMut::new();
    assert!(matches!(
        encode_batch(1, std::slice::from_ref(&record), &mut out),
        Err(JournalError::TooLarge(_))
    ));
    assert!(matches!(
        encode_frame(1, &record, &mut out),
        Err(JournalError::TooLarge(_))
    ));
    assert!(out.is_empty());
    assert!(encode_batch_parts(1, &[], 0, &mut out).is_err());
    assert!(encode_batch_parts(1, &[], BATCH_PART_LEN + 1, &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn a_large_batch_frame_of_an_earlier_writer_still_reads() {
    // Before parts, a batch of any size up to MAX_RECORD_LEN was one frame.
    let records: Vec<Record> = (0..2u8)
        .map(|i| Record::MsgPut(Box::new(message(u64::from(i), "t", &vec![i; 9 << 20]))))
        .collect();
    let mut body = BytesMut::new();
    body.put_u8(0xFD);
    body.put_u32(records.len() as u32);
    for r in &records {
        let mut one = BytesMut::new();
        r.encode(&mut one);
        body.put_u32(one.len() as u32);
        body.put_slice(&one);
    }
    assert!(body.len() > BATCH_PART_LEN);
    let mut bytes = BytesMut::new();
    bytes.put_slice(&encode_header(FileKind::Segment, 3));
    bytes.put_u32(body.len() as u32);
    bytes.put_u32(crc32c::crc32c_append(crc32c(&3u64.to_be_bytes()), &body));
    bytes.put_u64(3);
    bytes.put_slice(&body);
    let (_, scan) = scan_segment(&bytes).unwrap();
    assert_eq!(scan.records, numbered(3, &records));
    assert!(scan.stopped.is_none());
}

#[test]
fn a_chain_broken_by_another_frame_stops_the_scan() {
    let records = sample_records();
    let mut out = BytesMut::new();
    out.put_slice(&encode_header(FileKind::Segment, 1));
    let mut chain = BytesMut::new();
    encode_batch_parts(1, &records, 8, &mut chain).unwrap();
    // The first part, then a whole batch at the same number, then the rest of the chain.
    let first_part = 16 + u32::from_be_bytes(chain[..4].try_into().unwrap()) as usize;
    out.put_slice(&chain[..first_part]);
    encode_batch(1, &records, &mut out).unwrap();
    out.put_slice(&chain[first_part..]);
    let (_, scan) = scan_segment(&out).unwrap();
    assert!(scan.records.is_empty());
    assert_eq!(scan.valid_len, HEADER_LEN);
    assert!(scan.stopped.is_some());
}
