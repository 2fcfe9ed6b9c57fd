//! Persistence as a client sees it: acknowledgements wait until what they promise is durable,
//! nothing overtakes a held acknowledgement, a failed store never acknowledges, and a broker
//! restarted from its journal (or a snapshot) resumes sessions, queues, retained messages and
//! QoS 2 flows where they were.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use bytes::{BufMut, Bytes, BytesMut};
use harness::*;
use tidemq_core::codec::{Packet, Properties, Publish, QoS, Subscribe, SubscriptionOptions};
use tidemq_core::config::SyncMode;
use tidemq_core::persist::{
    FileKind, Record, Recovered, encode_batch, encode_frame, encode_header, encode_snapshot_end,
    read_snapshot, scan_segment,
};
use tidemq_core::{Broker, BrokerEvent, Config, ConnId, Input, Instant};

/// The wall clock when every test starts (2023-11-14T22:13:20Z).
const T0: u64 = 1_700_000_000_000;

fn durable_config(sync: SyncMode) -> Config {
    let mut c = quiet_config();
    c.persistence.enable = true;
    c.persistence.sync = sync;
    c
}

fn harness_with(config: Config) -> Harness {
    let mut h = Harness::with_config(config);
    h.input(Input::WallClock { unix_ms: T0 });
    h
}

fn durable(sync: SyncMode) -> Harness {
    harness_with(durable_config(sync))
}

/// The wall clock of the harness now.
fn wall(h: &Harness) -> u64 {
    T0 + h.now.0
}

/// Runs `f` against a store that answers every write at once.
fn store_keeping_up<R>(h: &mut Harness, f: impl FnOnce(&mut Harness) -> R) -> R {
    let was = h.auto_persist;
    h.auto_persist = true;
    let r = f(h);
    h.auto_persist = was;
    r
}

/// A v5 client with a session that outlives its connection.
fn persistent_v5(h: &mut Harness, id: &str, clean_start: bool) -> (ConnId, bool) {
    store_keeping_up(h, |h| {
        let (conn, ack) = h.connect(
            id,
            V5,
            clean_start,
            ConnectOpts::default().session_expiry(3600),
        );
        assert_eq!(ack.code, 0, "CONNACK for {id}");
        (conn, ack.session_present)
    })
}

/// A v3.1.1 client with clean session 0.
fn persistent_v311(h: &mut Harness, id: &str) -> (ConnId, bool) {
    store_keeping_up(h, |h| {
        let (conn, ack) = h.connect(id, V311, false, ConnectOpts::default());
        assert_eq!(ack.code, 0, "CONNACK for {id}");
        (conn, ack.session_present)
    })
}

fn subscribe_durably(h: &mut Harness, conn: ConnId, filter: &str, qos: QoS) {
    store_keeping_up(h, |h| {
        let ack = h.subscribe(conn, filter, qos);
        assert_eq!(ack.reasons, vec![qos as u8]);
    });
}

/// The records of every `Output::Persist` from batch `since` on.
fn records_since(h: &Harness, since: usize) -> Vec<Record> {
    h.persisted[since..]
        .iter()
        .flat_map(|(_, r)| r.iter().cloned())
        .collect()
}

fn last_upto(h: &Harness) -> u64 {
    h.persisted.last().map_or(0, |(upto, _)| *upto)
}

/// Bytes transmitted to `conn` since `mark`.
fn sent_since(h: &Harness, conn: ConnId, mark: usize) -> Vec<u8> {
    h.client_state(conn).transmitted[mark..].to_vec()
}

fn sent_len(h: &Harness, conn: ConnId) -> usize {
    h.client_state(conn).transmitted.len()
}

fn done(h: &mut Harness, upto: u64) {
    h.input(Input::PersistDone { upto });
}

/// The store reports every record handed out so far durable.
fn done_all(h: &mut Harness) {
    let upto = last_upto(h);
    done(h, upto);
}

/// Replays the journal the harness collected (every `Output::Persist` written as one batch
/// frame, as the store does, into one segment and read back), checking that the batches are
/// numbered one after another.
fn recover(persisted: &[(u64, Vec<Record>)]) -> Recovered {
    let first = persisted
        .first()
        .map_or(1, |(upto, r)| upto + 1 - r.len() as u64);
    assert_eq!(first, 1, "the first record of a new store is number 1");
    let mut segment = BytesMut::new();
    segment.put_slice(&encode_header(FileKind::Segment, first));
    let mut seq = first;
    for (upto, records) in persisted {
        assert!(!records.is_empty(), "an empty Output::Persist");
        encode_batch(seq, records, &mut segment).unwrap();
        seq += records.len() as u64;
        assert_eq!(
            *upto,
            seq - 1,
            "Output::Persist {{ upto }} is not the number of its last record"
        );
    }
    let (_, scan) = scan_segment(&segment).unwrap();
    assert!(scan.stopped.is_none(), "{:?}", scan.stopped);
    let mut state = Recovered::default();
    for (seq, r) in scan.records {
        state.apply(r);
        state.last_seq = seq;
    }
    state
}

/// Replays an `Output::Snapshot` alone, through the snapshot file format.
fn recover_snapshot(upto: u64, records: &[Record]) -> Recovered {
    let mut file = BytesMut::new();
    file.put_slice(&encode_header(FileKind::Snapshot, upto));
    for r in records {
        encode_frame(upto, r, &mut file).unwrap();
    }
    encode_snapshot_end(upto, records.len() as u64, &mut file);
    let (at, back) = read_snapshot(&file).unwrap();
    assert_eq!(at, upto);
    let mut state = Recovered::default();
    for r in back {
        state.apply(r);
    }
    state.last_seq = upto;
    state
}

/// A new broker with the same configuration, restored from `state` at wall clock `unix_ms`;
/// it keeps `journal` so that its own records continue it.
fn restart_from(
    config: Config,
    state: Recovered,
    journal: Vec<(u64, Vec<Record>)>,
    unix_ms: u64,
) -> Harness {
    let mut h = Harness::with_config(config.clone());
    // The new process's monotonic clock starts anywhere; here it keeps `wall` meaningful.
    h.now = Instant(unix_ms - T0);
    h.broker = Broker::new(config, 1, h.now);
    h.persisted = journal;
    h.auto_persist = true;
    h.restore(state, unix_ms);
    h
}

/// The broker crashes and restarts from every record it handed out, `after_ms` later.
fn restart(old: &Harness, config: Config, after_ms: u64) -> Harness {
    let state = recover(&old.persisted);
    restart_from(config, state, old.persisted.clone(), wall(old) + after_ms)
}

fn publish_v5(topic: &str, payload: &str, qos: QoS, properties: Properties) -> Publish {
    let mut p = publish_msg(topic, payload, qos);
    p.properties = properties;
    p
}

fn payload_of(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements wait for the store
// ---------------------------------------------------------------------------------------------

#[test]
fn qos1_puback_waits_until_the_message_queued_for_a_persistent_session_is_durable() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let p = h.client("p", V311);

    let mark = h.persisted.len();
    let before = sent_len(&h, p);
    let pid = h.publish(p, "t", "m1", Q1, false).unwrap();
    assert_eq!(pid, 1);
    assert!(h.recv(p).is_empty(), "PUBACK before the message is durable");
    assert_eq!(sent_len(&h, p), before);

    // One batch: the message body, then the delivery owed to "s".
    assert_eq!(h.persisted.len(), mark + 1);
    let (upto, records) = h.persisted[mark].clone();
    assert_eq!(records.len(), 2, "{records:?}");
    let Record::MsgPut(m) = &records[0] else {
        panic!("expected the message first: {records:?}");
    };
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("t", &b"m1"[..]));
    assert_eq!(m.qos, Q1);
    assert!(!m.retain);
    assert!(
        matches!(&records[1], Record::QueuePut { client_id, msg_id, qos: QoS::AtLeastOnce, .. }
            if client_id == "s" && *msg_id == m.id),
        "{records:?}"
    );

    // Durable up to the message only: still waiting for the delivery record.
    done(&mut h, upto - 1);
    assert!(
        h.recv(p).is_empty(),
        "PUBACK before the delivery is durable"
    );
    done(&mut h, upto);
    assert_eq!(sent_since(&h, p, before), [0x40, 0x02, 0x00, 0x01]);
}

#[test]
fn qos1_publish_to_a_v311_persistent_session_also_waits() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v311(&mut h, "s311");
    subscribe_durably(&mut h, s, "t", Q2);
    h.close(s);
    let p = h.client("p", V5);
    let mark = h.persisted.len();
    h.publish(p, "t", "m", Q1, false);
    assert!(h.recv(p).is_empty());
    let records = records_since(&h, mark);
    assert!(
        matches!(&records[..], [Record::MsgPut(_), Record::QueuePut { client_id, qos: QoS::AtLeastOnce, .. }] if client_id == "s311"),
        "{records:?}"
    );
    done_all(&mut h);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1 && a.reason == 0));
}

#[test]
fn a_message_to_an_online_persistent_subscriber_is_delivered_only_once_durable() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    let p = h.client("p", V5);
    h.publish(p, "t", "m", Q1, false);
    assert!(
        h.recv(s).is_empty(),
        "delivered before its record is durable"
    );
    assert!(h.recv(p).is_empty());
    done_all(&mut h);
    let got = h.publishes(s);
    assert_eq!(got.len(), 1);
    assert_eq!(payload_of(&got[0]), "m");
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1));

    // Its PUBACK ends the delivery.
    let mark = h.persisted.len();
    h.puback(s, got[0].packet_id.unwrap());
    assert!(
        matches!(&records_since(&h, mark)[..], [Record::QueueDel { client_id, .. }] if client_id == "s"),
        "{:?}",
        records_since(&h, mark)
    );
}

#[test]
fn qos1_publish_reaching_only_clean_sessions_is_acknowledged_at_once() {
    let mut h = durable(SyncMode::Fsync);
    let c = h.client("c", V311);
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V311);
    let mark = h.persisted.len();
    let before = sent_len(&h, p);
    h.publish(p, "t", "m", Q1, false);
    assert_eq!(sent_since(&h, p, before), [0x40, 0x02, 0x00, 0x01]);
    h.recv(p);
    assert_eq!(h.payloads(c), vec!["m"]);
    // To nobody at all.
    h.publish(p, "nobody", "m", Q1, false);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 2));
    assert_eq!(h.persisted.len(), mark, "{:?}", &h.persisted[mark..]);
}

#[test]
fn qos1_publish_downgraded_to_qos0_for_a_persistent_subscriber_is_acknowledged_at_once() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q0);
    let p = h.client("p", V311);
    let mark = h.persisted.len();
    h.publish(p, "t", "m", Q1, false);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1));
    assert_eq!(h.payloads(s), vec!["m"]);
    assert_eq!(h.persisted.len(), mark);
}

#[test]
fn connack_of_a_persistent_session_waits_for_its_session_record() {
    let mut h = durable(SyncMode::Fsync);
    let conn = h.accept();
    let ack = h.connect_on(
        conn,
        "s",
        V5,
        true,
        ConnectOpts::default().session_expiry(60),
    );
    assert!(ack.is_none(), "CONNACK before the session is durable");
    assert!(h.recv(conn).is_empty());
    let records = records_since(&h, 0);
    assert!(
        matches!(&records[..], [Record::SessionPut { client_id, version: 5, expiry_secs: 60, disconnected_at_unix_ms: None }] if client_id == "s"),
        "{records:?}"
    );
    done_all(&mut h);
    assert!(matches!(h.recv_one(conn), Packet::ConnAck(a) if a.code == 0 && !a.session_present));
    // A clean session's CONNACK does not wait.
    let mark = h.persisted.len();
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert_eq!(h.persisted.len(), mark);
}

#[test]
fn suback_of_a_persistent_session_waits_for_the_subscription_record() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    let mark = h.persisted.len();
    let before = sent_len(&h, s);
    h.send(
        s,
        &Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: Properties {
                subscription_identifiers: vec![7],
                ..Properties::default()
            },
            filters: vec![("a/+".to_owned(), sub_opts(Q1))],
        }),
    );
    assert!(
        h.recv(s).is_empty(),
        "SUBACK before the subscription is durable"
    );
    let records = records_since(&h, mark);
    assert_eq!(
        records,
        vec![Record::SubPut {
            client_id: "s".to_owned(),
            filter: "a/+".to_owned(),
            options: 1,
            subscription_id: Some(7),
        }]
    );
    done_all(&mut h);
    // v5 SUBACK: id 10, no properties, granted QoS 1.
    assert_eq!(
        sent_since(&h, s, before),
        [0x90, 0x04, 0x00, 0x0A, 0x00, 0x01]
    );
    h.recv(s);

    // UNSUBACK waits for the subscription's removal the same way.
    let mark = h.persisted.len();
    h.send(
        s,
        &Packet::Unsubscribe(tidemq_core::codec::Unsubscribe {
            packet_id: 11,
            properties: Properties::default(),
            filters: vec!["a/+".to_owned()],
        }),
    );
    assert!(
        h.recv(s).is_empty(),
        "UNSUBACK before the removal is durable"
    );
    assert_eq!(
        records_since(&h, mark),
        vec![Record::SubDel {
            client_id: "s".to_owned(),
            filter: "a/+".to_owned()
        }]
    );
    done_all(&mut h);
    assert!(matches!(h.recv_one(s), Packet::UnsubAck(u) if u.packet_id == 11));
}

#[test]
fn suback_of_a_clean_session_is_sent_at_once() {
    let mut h = durable(SyncMode::Fsync);
    let c = h.client("c", V311);
    let mark = h.persisted.len();
    let before = sent_len(&h, c);
    // The harness panics unless the SUBACK is already there.
    let ack = h.subscribe(c, "a/#", Q2);
    assert_eq!(ack.reasons, vec![2]);
    assert_eq!(sent_since(&h, c, before), [0x90, 0x03, 0x00, 0x01, 0x02]);
    assert_eq!(h.persisted.len(), mark);
}

#[test]
fn qos2_pubrec_and_pubcomp_wait_for_the_packet_id_records() {
    let mut h = durable(SyncMode::Fsync);
    let (p, _) = persistent_v5(&mut h, "p", true);
    let mark = h.persisted.len();
    let before = sent_len(&h, p);
    h.publish(p, "nobody", "m", Q2, false);
    assert!(
        h.recv(p).is_empty(),
        "PUBREC before the packet id is durable"
    );
    assert_eq!(
        records_since(&h, mark),
        vec![Record::InQos2Put {
            client_id: "p".to_owned(),
            packet_id: 1
        }]
    );
    done_all(&mut h);
    // v5 PUBREC, success, short form.
    assert_eq!(sent_since(&h, p, before), [0x50, 0x02, 0x00, 0x01]);
    h.recv(p);

    let mark = h.persisted.len();
    h.pubrel(p, 1);
    assert!(
        h.recv(p).is_empty(),
        "PUBCOMP before the release is durable"
    );
    assert_eq!(
        records_since(&h, mark),
        vec![Record::InQos2Del {
            client_id: "p".to_owned(),
            packet_id: 1
        }]
    );
    done_all(&mut h);
    assert!(matches!(h.recv_one(p), Packet::PubComp(a) if a.packet_id == 1));
}

#[test]
fn qos2_from_a_clean_session_is_acknowledged_at_once() {
    let mut h = durable(SyncMode::Fsync);
    let p = h.client("p", V311);
    let mark = h.persisted.len();
    h.publish(p, "nobody", "m", Q2, false);
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 1));
    h.pubrel(p, 1);
    assert!(matches!(h.recv_one(p), Packet::PubComp(a) if a.packet_id == 1));
    assert_eq!(h.persisted.len(), mark);
}

#[test]
fn retained_publish_is_acknowledged_only_once_the_retained_message_is_durable() {
    let mut h = durable(SyncMode::Fsync);
    let p = h.client("p", V311);
    let mark = h.persisted.len();
    h.publish(p, "r", "keep", Q1, true);
    assert!(
        h.recv(p).is_empty(),
        "PUBACK before the retained message is durable"
    );
    let records = records_since(&h, mark);
    let [Record::MsgPut(m), Record::RetainPut { topic, msg_id }] = &records[..] else {
        panic!("expected MsgPut + RetainPut: {records:?}");
    };
    assert!(m.retain);
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("r", &b"keep"[..]));
    assert_eq!((topic.as_str(), *msg_id), ("r", m.id));
    done_all(&mut h);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1));

    // Clearing it waits for its deletion.
    let mark = h.persisted.len();
    h.publish(p, "r", "", Q1, true);
    assert!(h.recv(p).is_empty());
    assert_eq!(
        records_since(&h, mark),
        vec![Record::RetainDel {
            topic: "r".to_owned()
        }]
    );
    done_all(&mut h);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 2));

    // Clearing a topic with nothing retained changes nothing durable.
    let mark = h.persisted.len();
    h.publish(p, "r", "", Q1, true);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 3));
    assert_eq!(h.persisted.len(), mark);
}

// ---------------------------------------------------------------------------------------------
// Order
// ---------------------------------------------------------------------------------------------

fn pubacks(packets: &[Packet]) -> Vec<u16> {
    packets
        .iter()
        .map(|p| match p {
            Packet::PubAck(a) => a.packet_id,
            other => panic!("expected PUBACK, got {other:?}"),
        })
        .collect()
}

#[test]
fn a_later_puback_in_the_same_input_never_overtakes_a_held_one() {
    let mut h = durable(SyncMode::Fsync);
    h.fragment = Fragment::Whole;
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "durable/t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    let mut a = publish_msg("durable/t", "A", Q1);
    a.packet_id = Some(1);
    let mut b = publish_msg("nobody", "B", Q1);
    b.packet_id = Some(2);
    h.send_all(p, &[Packet::Publish(a), Packet::Publish(b)]);
    assert!(h.recv(p).is_empty(), "B's PUBACK overtook A's");
    done_all(&mut h);
    assert_eq!(pubacks(&h.recv(p)), vec![1, 2]);
}

#[test]
fn a_later_puback_in_a_later_input_never_overtakes_a_held_one() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "durable/t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    let other = h.client("other", V311);
    h.publish(p, "durable/t", "A", Q1, false);
    let held_upto = last_upto(&h);
    h.publish(p, "nobody", "B", Q1, false);
    h.ping(p);
    assert!(
        h.recv(p).is_empty(),
        "later output overtook the held PUBACK"
    );
    // Another connection is not held up by this one.
    h.ping(other);
    assert!(matches!(h.recv_one(other), Packet::PingResp));
    done(&mut h, held_upto);
    let got = h.recv(p);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(pubacks(&got[..2]), vec![1, 2]);
    assert!(matches!(got[2], Packet::PingResp));
}

#[test]
fn held_output_is_released_in_order_of_the_records_it_waits_for() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    h.publish(p, "t", "1", Q1, false);
    let first = last_upto(&h);
    h.publish(p, "t", "2", Q1, false);
    let second = last_upto(&h);
    assert!(second > first);
    done(&mut h, first);
    assert_eq!(pubacks(&h.recv(p)), vec![1], "only the first is durable");
    done(&mut h, second);
    assert_eq!(pubacks(&h.recv(p)), vec![2]);
}

// ---------------------------------------------------------------------------------------------
// Sync modes and failure
// ---------------------------------------------------------------------------------------------

#[test]
fn with_sync_none_records_are_handed_out_but_nothing_waits() {
    let mut h = durable(SyncMode::None);
    // No PersistDone is ever sent in this test: CONNACK and SUBACK come at once all the same.
    let (s, ack) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(60));
    assert_eq!(ack.code, 0);
    h.subscribe(s, "t", Q1);
    assert!(
        matches!(
            &records_since(&h, 0)[..],
            [Record::SessionPut { .. }, Record::SubPut { .. }]
        ),
        "{:?}",
        h.persisted
    );
    h.close(s);
    let p = h.client("p", V311);
    let mark = h.persisted.len();
    h.publish(p, "t", "m", Q1, false);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1));
    let records = records_since(&h, mark);
    assert!(
        matches!(&records[..], [Record::MsgPut(_), Record::QueuePut { .. }]),
        "{records:?}"
    );
    h.publish(p, "r", "x", Q1, true);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 2));
    assert!(h.persisted.len() >= mark + 2);
}

#[test]
fn with_sync_os_acknowledgements_wait_like_fsync() {
    let mut h = durable(SyncMode::Os);
    let p = h.client("p", V311);
    h.publish(p, "r", "x", Q1, true);
    assert!(h.recv(p).is_empty());
    done_all(&mut h);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1));
}

#[test]
fn persistence_off_hands_out_no_records_and_no_snapshot() {
    let mut h = harness_with(quiet_config());
    let (s, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(60));
    h.subscribe(s, "t", Q2);
    h.close(s);
    let p = h.client("p", V311);
    h.publish(p, "t", "m", Q1, true);
    assert!(matches!(h.recv_one(p), Packet::PubAck(_)));
    h.input(Input::SnapshotRequest);
    assert!(h.persisted.is_empty());
    assert!(h.snapshots.is_empty());
}

#[test]
fn after_a_store_failure_durable_work_is_refused_with_quota_exceeded() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let (s2, _) = persistent_v5(&mut h, "s2", true);
    let c = h.client("c", V5);
    h.subscribe(c, "clean/t", Q1);
    let p = h.client("p", V5);

    h.input(Input::PersistFailed {
        error: "fsync: EIO".to_owned(),
    });
    assert!(h.take_events().contains(&BrokerEvent::StoreFailed {
        error: "fsync: EIO".to_owned()
    }));
    let mark = h.persisted.len();

    // A QoS 1 message for a persistent session, a retained message, a QoS 2 message.
    h.publish(p, "t", "for s", Q1, false);
    assert!(
        matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 1 && a.reason == 0x97),
        "QoS 1 to a persistent session accepted with a failed store"
    );
    h.publish(p, "r", "retained", Q1, true);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 2 && a.reason == 0x97));
    h.publish(p, "t", "for s", Q2, false);
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 3 && a.reason == 0x97));
    // A subscription of a persistent session.
    let ack = h.subscribe(s2, "x", Q1);
    assert_eq!(ack.reasons, vec![0x97]);
    // A new persistent session.
    let (_, ack) = h.connect("s3", V5, true, ConnectOpts::default().session_expiry(60));
    assert_eq!(ack.code, 0x97);
    assert!(!ack.session_present);
    // Nothing was handed to the failed store, and a second failure is not reported again.
    assert_eq!(h.persisted.len(), mark, "records handed to a failed store");
    h.input(Input::PersistFailed {
        error: "again".to_owned(),
    });
    assert!(
        !h.take_events()
            .iter()
            .any(|e| matches!(e, BrokerEvent::StoreFailed { .. }))
    );

    // Work that needs no store goes on.
    h.publish(p, "clean/t", "fine", Q1, false);
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == 4 && a.reason == 0));
    assert_eq!(h.payloads(c), vec!["fine"]);
    h.publish(p, "t", "qos0 is not kept", Q0, false);
    assert!(!h.is_closed(p));
    let (_, ack) = h.connect("clean", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
}

#[test]
fn after_a_store_failure_a_v311_client_doing_durable_work_is_refused() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v311(&mut h, "s");
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    h.input(Input::PersistFailed {
        error: "ENOSPC".to_owned(),
    });
    let before = sent_len(&h, p);
    h.publish(p, "t", "for s", Q1, false);
    assert!(h.is_closed(p), "3.1.1 publisher not disconnected");
    assert_eq!(sent_len(&h, p), before, "something was acknowledged");
    // Clean session 0: return code 3, server unavailable.
    let (_, ack) = h.connect("s", V311, false, ConnectOpts::default());
    assert_eq!(ack.code, 3);
    let (_, ack) = h.connect("other", V311, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
}

#[test]
fn after_a_store_failure_a_client_with_a_stored_session_still_gets_an_answer_to_a_clean_connect() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let (s3, _) = persistent_v311(&mut h, "s311");
    h.close(s3);
    h.input(Input::PersistFailed {
        error: "fsync: EIO".to_owned(),
    });
    // Clean sessions are still served; ending the stored one needs a record the store can no
    // longer take. Either answer (accepted, or refused with 0x97 / return code 3) is a
    // CONNACK: silence leaves the client waiting for its keep-alive to run out.
    for (id, version, clean_start, expiry) in [
        ("s", V5, false, 0u32),
        ("s", V5, true, 0),
        ("s311", V311, true, 0),
    ] {
        let conn = h.accept();
        let mut opts = ConnectOpts::default();
        if version == V5 {
            opts = opts.session_expiry(expiry);
        }
        let ack = h.connect_on(conn, id, version, clean_start, opts);
        let ack = ack.unwrap_or_else(|| {
            panic!(
                "{id} (clean start {clean_start}, expiry {expiry}): no CONNACK after the store \
                 failed"
            )
        });
        assert!(
            [0, 0x97, 3].contains(&ack.code.0),
            "{id}: CONNACK {:#x}",
            ack.code
        );
        assert!(!ack.session_present);
        h.close(conn);
    }
}

#[test]
fn an_ack_waiting_when_the_store_fails_is_never_sent() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    let other = h.client("other", V311);
    h.publish(p, "t", "m", Q1, false);
    assert!(h.recv(p).is_empty());
    h.input(Input::PersistFailed {
        error: "fsync: EIO".to_owned(),
    });
    h.ping(other);
    assert!(matches!(h.recv_one(other), Packet::PingResp));
    assert!(
        h.recv(p).is_empty(),
        "an acknowledgement whose records never became durable was sent"
    );
    // Its acknowledgement can never come: the connection is cut (3.1.1: no word), so the
    // client reconnects and sends again instead of waiting forever.
    assert!(h.is_closed(p));
    assert!(!h.is_closed(other));
}

#[test]
fn a_v5_connection_waiting_for_a_failed_store_is_told_0x97_and_nothing_else() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let p = h.client("p", V5);
    let before = sent_len(&h, p);
    h.publish(p, "t", "m", Q1, false);
    // A later publish with no durable consequence queues behind the held PUBACK.
    h.publish(p, "elsewhere", "n", Q1, false);
    assert!(h.recv(p).is_empty());
    h.input(Input::PersistFailed {
        error: "fsync: EIO".to_owned(),
    });
    assert_eq!(sent_since(&h, p, before), [0xe0, 0x02, 0x97, 0x00]);
    assert!(h.is_closed(p));
}

#[test]
fn after_a_store_failure_unsubscribe_and_pubrel_on_a_stored_session_are_answered() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    // An inbound QoS 2 message from the stored session, released only after the failure.
    store_keeping_up(&mut h, |h| {
        let mut p = publish_msg("x", "m", Q2);
        p.packet_id = Some(7);
        h.send(s, &Packet::Publish(p));
    });
    assert!(matches!(h.recv_one(s), Packet::PubRec(a) if a.packet_id == 7 && a.reason == 0));
    h.input(Input::PersistFailed {
        error: "fsync: EIO".to_owned(),
    });
    // UNSUBSCRIBE: refused per filter (the change would not survive a restart).
    h.send(
        s,
        &Packet::Unsubscribe(tidemq_core::codec::Unsubscribe {
            packet_id: 3,
            properties: Properties::default(),
            filters: vec!["t".to_owned()],
        }),
    );
    assert!(
        matches!(h.recv_one(s), Packet::UnsubAck(u) if u.packet_id == 3 && u.reasons == vec![0x80]),
        "UNSUBSCRIBE after a store failure not refused"
    );
    // PUBREL: its PUBCOMP would need a record the store cannot take; the client is told
    // (DISCONNECT 0x97) instead of waiting for a PUBCOMP that never comes.
    let before = sent_len(&h, s);
    h.send(
        s,
        &Packet::PubRel(tidemq_core::codec::Ack::new(
            7,
            tidemq_core::codec::reason::SUCCESS,
        )),
    );
    assert_eq!(sent_since(&h, s, before), [0xe0, 0x02, 0x97, 0x00]);
    assert!(h.is_closed(s));
}

#[test]
fn a_takeover_tells_the_old_connection_0x8e_even_when_its_output_waits_for_the_store() {
    let mut h = durable(SyncMode::Fsync);
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    h.close(s);
    let (old, _) = persistent_v5(&mut h, "p", true);
    let before = sent_len(&h, old);
    h.publish(old, "t", "m", Q1, false);
    assert!(h.recv(old).is_empty(), "PUBACK before the store");
    // The same client id connects again while the PUBACK waits for the store.
    let (_new, ack) = store_keeping_up(&mut h, |h| {
        h.connect("p", V5, false, ConnectOpts::default().session_expiry(3600))
    });
    assert_eq!(ack.code, 0);
    // The held PUBACK is not sent (its record may never be durable); the reason is.
    assert_eq!(sent_since(&h, old, before), [0xe0, 0x02, 0x8e, 0x00]);
    assert!(h.is_closed(old));
}

#[test]
fn after_a_store_failure_a_will_for_a_persistent_subscriber_does_not_stall_clean_subscribers() {
    let mut h = durable(SyncMode::Fsync);
    let (d, _) = persistent_v5(&mut h, "durable-sub", true);
    subscribe_durably(&mut h, d, "will/s", Q1);
    let c = h.client("clean-sub", V311);
    h.subscribe(c, "will/s", Q0);
    let (s, _) = store_keeping_up(&mut h, |h| {
        h.connect(
            "s",
            V5,
            true,
            ConnectOpts::default().will("will/s", "gone", Q1, false),
        )
    });
    h.input(Input::PersistFailed {
        error: "fsync: EIO".to_owned(),
    });
    // The will needs the store for "durable-sub" only; "clean-sub" gets a QoS 0 copy that
    // depends on nothing the store keeps.
    h.close(s);
    h.ping(c);
    let got = h.recv(c);
    assert!(
        matches!(got.as_slice(), [Packet::Publish(m), Packet::PingResp] if &m.payload[..] == b"gone"),
        "a clean subscriber's connection stalled for good after the store failed: {got:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[test]
fn record_numbers_run_on_without_gaps_across_a_restart() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    h.subscribe(s, "t", Q1);
    let p = h.client("p", V311);
    h.publish(p, "t", "m", Q1, false);
    assert!(!h.persisted.is_empty());
    let before = last_upto(&h);
    let mut h2 = restart(&h, config, 0);
    let (p2, _) = h2.connect("p", V311, true, ConnectOpts::default());
    h2.publish(p2, "t", "n", Q1, false);
    assert!(last_upto(&h2) > before);
    // `recover` checks that every batch follows on from the one before.
    let state = recover(&h2.persisted);
    assert_eq!(state.last_seq, last_upto(&h2));
}

#[test]
fn restart_keeps_a_persistent_session_its_queued_qos1_messages_and_their_properties() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    let ack = h.subscribe_with(
        s,
        &[("t", sub_opts(Q1))],
        Properties {
            subscription_identifiers: vec![5],
            ..Properties::default()
        },
    );
    assert_eq!(ack.reasons, vec![1]);
    h.close(s);
    let p = h.client("p", V5);
    let props = Properties {
        content_type: Some("text/plain".to_owned()),
        user_properties: vec![
            ("k".to_owned(), "v".to_owned()),
            ("k".to_owned(), "w".to_owned()),
        ],
        correlation_data: Some(Bytes::from_static(b"\x00\x01")),
        ..Properties::default()
    };
    h.publish_with(p, publish_v5("t", "m1", Q1, props.clone()));
    h.publish_with(p, publish_v5("t", "m2", Q2, Properties::default()));
    assert_eq!(h.recv(p).len(), 2);

    let mut h = restart(&h, config, 1000);
    let (s, present) = persistent_v5(&mut h, "s", false);
    assert!(present, "session lost in the restart");
    let got = h.publishes(s);
    assert_eq!(
        got.iter().map(payload_of).collect::<Vec<_>>(),
        vec!["m1", "m2"]
    );
    assert!(got.iter().all(|m| m.qos == Q1 && m.topic == "t"));
    assert_eq!(got[0].properties.content_type, props.content_type);
    assert_eq!(got[0].properties.user_properties, props.user_properties);
    assert_eq!(got[0].properties.correlation_data, props.correlation_data);
    assert_eq!(got[0].properties.subscription_identifiers, vec![5]);
    assert_eq!(got[1].properties.subscription_identifiers, vec![5]);
    for m in &got {
        h.puback(s, m.packet_id.unwrap());
    }

    // The subscription still routes what is published after the restart.
    let p = h.client("p", V5);
    h.publish(p, "t", "m3", Q1, false);
    let got = h.publishes(s);
    assert_eq!(got.len(), 1);
    assert_eq!(payload_of(&got[0]), "m3");
    assert_eq!(got[0].properties.subscription_identifiers, vec![5]);
}

#[test]
fn restart_keeps_the_subscription_of_a_session_that_has_not_reconnected_yet() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    let (s, _) = persistent_v311(&mut h, "s");
    subscribe_durably(&mut h, s, "a/+", Q1);
    h.close(s);
    let mut h = restart(&h, config, 0);
    // Published while the session is still offline after the restart: queued for it.
    let p = h.client("p", V311);
    h.publish(p, "a/b", "queued", Q1, false);
    let (s, present) = persistent_v311(&mut h, "s");
    assert!(present);
    let got = h.publishes(s);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].topic.as_str(), payload_of(&got[0])),
        ("a/b", "queued")
    );
}

#[test]
fn restart_keeps_shared_subscriptions_and_v5_subscription_options() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    let local = SubscriptionOptions {
        qos: Q1,
        no_local: true,
        retain_as_published: true,
        retain_handling: 2,
    };
    let ack = h.subscribe_with(
        s,
        &[("own/#", local), ("$share/g/jobs/#", sub_opts(Q2))],
        Properties::default(),
    );
    assert_eq!(ack.reasons, vec![1, 2]);
    let p = h.client("p", V5);
    h.publish(p, "own/r", "retained", Q1, true);
    h.publishes_acked(s);

    let mut h = restart(&h, config, 0);
    // The only member of the group is offline: the job waits in its queue.
    let p = h.client("p", V5);
    h.publish(p, "jobs/1", "job", Q2, false);
    let (s, present) = persistent_v5(&mut h, "s", false);
    assert!(present);
    let got = h.publishes_acked(s);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].topic.as_str(), got[0].qos), ("jobs/1", Q2));
    // No local: its own message does not come back; retain as published: the flag stays.
    h.publish(s, "own/x", "mine", Q1, false);
    assert!(matches!(h.recv_one(s), Packet::PubAck(_)));
    h.publish(p, "own/y", "theirs", Q1, true);
    let got = h.publishes(s);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(payload_of(&got[0]), "theirs");
    assert!(got[0].retain, "retain as published lost in the restart");
}

#[test]
fn clean_start_after_a_restart_discards_the_stored_session_for_good() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v311(&mut h, "s");
    h.subscribe(s, "t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    h.publish(p, "t", "old", Q1, false);

    let mut h = restart(&h, config.clone(), 0);
    let (s, ack) = h.connect("s", V311, true, ConnectOpts::default());
    assert!(!ack.session_present);
    assert!(h.recv(s).is_empty());
    h.close(s);

    let mut h = restart(&h, config, 0);
    let (s, present) = persistent_v311(&mut h, "s");
    assert!(!present, "a discarded session came back");
    assert!(h.recv(s).is_empty());
    let p = h.client("p", V311);
    h.publish(p, "t", "new", Q1, false);
    assert!(h.recv(s).is_empty(), "its subscription came back");
}

#[test]
fn session_expiry_set_at_disconnect_is_kept_across_a_restart() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    h.subscribe(s, "t", Q1);
    h.disconnect_with(
        s,
        0,
        Properties {
            session_expiry_interval: Some(10),
            ..Properties::default()
        },
    );
    let mut h = restart(&h, config, 20_000);
    let (_, ack) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(10));
    assert!(
        !ack.session_present,
        "expiry shortened to 10 s at DISCONNECT, back 20 s later"
    );
}

#[test]
fn session_expiry_zero_at_disconnect_deletes_the_stored_session() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    h.subscribe(s, "t", Q1);
    let mark = h.persisted.len();
    h.disconnect_with(
        s,
        0,
        Properties {
            session_expiry_interval: Some(0),
            ..Properties::default()
        },
    );
    assert_eq!(
        records_since(&h, mark),
        vec![Record::SessionDel {
            client_id: "s".to_owned()
        }]
    );
    let mut h = restart(&h, config, 0);
    let (_, present) = persistent_v5(&mut h, "s", false);
    assert!(!present);
}

#[test]
fn a_restored_session_that_never_resumes_still_expires_across_another_restart() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    // Still connected when the broker goes down: the journal has no disconnect time.
    let (s, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(60));
    h.subscribe(s, "t", Q1);

    // Restarted: the session is disconnected from now on, 60 s left.
    let mut h = restart(&h, config.clone(), 0);
    h.advance_secs(50);
    // Down again after 50 s, back 20 s later: 70 s since the session lost its connection.
    let mut h = restart(&h, config, 20_000);
    let (_, ack) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(60));
    assert!(
        !ack.session_present,
        "a session with expiry 60 s outlived 70 s without a connection (the clock restarts \
         at every restart)"
    );
}

#[test]
fn restart_resends_an_unacknowledged_qos1_publish_with_its_packet_id_and_dup() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v311(&mut h, "s");
    h.subscribe(s, "t", Q1);
    let p = h.client("p", V311);
    for m in ["a", "b", "c"] {
        h.publish(p, "t", m, Q1, false);
    }
    let first = h.publishes(s);
    assert_eq!(first.len(), 3);
    // Only "b" is acknowledged before the crash.
    h.puback(s, first[1].packet_id.unwrap());

    let mut h = restart(&h, config, 0);
    let (s, present) = persistent_v311(&mut h, "s");
    assert!(present);
    let again = h.publishes(s);
    assert_eq!(
        again.iter().map(payload_of).collect::<Vec<_>>(),
        vec!["a", "c"]
    );
    // [MQTT-4.4.0-1]: unacknowledged PUBLISH packets are re-sent with their original packet
    // identifiers (and DUP), as they are on a reconnect without a restart.
    assert_eq!(
        again
            .iter()
            .map(|m| (m.packet_id, m.dup))
            .collect::<Vec<_>>(),
        vec![(first[0].packet_id, true), (first[2].packet_id, true)]
    );
}

#[test]
fn acknowledged_messages_are_not_redelivered_after_a_restart() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v311(&mut h, "s");
    h.subscribe(s, "t", Q1);
    let p = h.client("p", V311);
    h.publish(p, "t", "acked", Q1, false);
    h.publish(p, "t", "not acked", Q1, false);
    let got = h.publishes(s);
    assert_eq!(got.len(), 2);
    h.puback(s, got[0].packet_id.unwrap());

    let mut h = restart(&h, config, 0);
    let (s, present) = persistent_v311(&mut h, "s");
    assert!(present);
    let again = h.publishes(s);
    assert_eq!(
        again.iter().map(payload_of).collect::<Vec<_>>(),
        vec!["not acked"]
    );
}

#[test]
fn restart_keeps_retained_messages_and_their_deletion() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let p = h.client("p", V5);
    h.publish(p, "r/1", "keep", Q1, true);
    h.publish(p, "r/2", "cleared", Q1, true);
    h.publish(p, "r/2", "", Q0, true);
    h.publish(p, "r/3", "old", Q0, true);
    h.publish(p, "r/3", "new", Q0, true);

    let mut h = restart(&h, config, 0);
    let c = h.client("c", V5);
    h.subscribe(c, "r/#", Q2);
    let mut got = h.publishes(c);
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        got.iter()
            .map(|m| (m.topic.as_str(), payload_of(m), m.retain, m.qos))
            .collect::<Vec<_>>(),
        vec![("r/1", "keep", true, Q1), ("r/3", "new", true, Q0)]
    );
}

#[test]
fn restart_resumes_an_outbound_qos2_delivery_with_its_pubrel_and_packet_id() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v311(&mut h, "s");
    h.subscribe(s, "t", Q2);
    let p = h.client("p", V311);
    h.publish(p, "t", "released", Q2, false);
    h.publish(p, "t", "unreleased", Q2, false);
    let got = h.publishes(s);
    assert_eq!(got.len(), 2);
    let (x, y) = (got[0].packet_id.unwrap(), got[1].packet_id.unwrap());
    h.pubrec(s, x);
    assert!(matches!(h.recv_one(s), Packet::PubRel(a) if a.packet_id == x));
    // The broker goes down before the PUBCOMP for x and the PUBREC for y.

    let mut h = restart(&h, config.clone(), 0);
    let (s, present) = persistent_v311(&mut h, "s");
    assert!(present);
    let resent = h.recv(s);
    assert_eq!(resent.len(), 2, "{resent:?}");
    assert!(
        matches!(&resent[0], Packet::PubRel(a) if a.packet_id == x),
        "expected PUBREL {x} first: {resent:?}"
    );
    let Packet::Publish(m) = &resent[1] else {
        panic!("expected the unreleased PUBLISH again: {resent:?}");
    };
    assert_eq!(m.packet_id, Some(y), "QoS 2 resent under another packet id");
    assert!(m.dup, "QoS 2 resent without DUP");
    assert_eq!(m.qos, Q2);
    assert_eq!(payload_of(m), "unreleased");

    h.pubcomp(s, x);
    h.pubrec(s, y);
    assert!(matches!(h.recv_one(s), Packet::PubRel(a) if a.packet_id == y));
    h.pubcomp(s, y);
    assert!(h.recv(s).is_empty());

    // Finished flows stay finished after another restart.
    let mut h = restart(&h, config, 0);
    let (s, present) = persistent_v311(&mut h, "s");
    assert!(present);
    assert!(h.recv(s).is_empty(), "finished QoS 2 flows resent");
}

#[test]
fn restart_remembers_an_inbound_qos2_id_awaiting_its_pubrel() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let c = h.client("c", V5);
    h.subscribe(c, "t", Q2);
    let (p, _) = persistent_v5(&mut h, "p", true);
    let mut once = publish_msg("t", "once", Q2);
    once.packet_id = Some(7);
    h.publish_with(p, once.clone());
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 7));
    assert_eq!(
        h.publishes_acked(c)
            .iter()
            .map(payload_of)
            .collect::<Vec<_>>(),
        vec!["once"]
    );
    // Down before the PUBREL.

    let mut h = restart(&h, config, 0);
    let c = h.client("c2", V5);
    h.subscribe(c, "t", Q2);
    let (p, present) = persistent_v5(&mut h, "p", false);
    assert!(present);
    let mut again = once.clone();
    again.dup = true;
    h.publish_with(p, again);
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 7 && a.reason == 0));
    assert!(h.recv(c).is_empty(), "a QoS 2 message delivered twice");
    h.pubrel(p, 7);
    assert!(matches!(h.recv_one(p), Packet::PubComp(a) if a.packet_id == 7 && a.reason == 0));
    assert!(h.recv(c).is_empty());
    // Released: the id carries a new message now.
    let mut next = publish_msg("t", "next", Q2);
    next.packet_id = Some(7);
    h.publish_with(p, next);
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 7));
    assert_eq!(
        h.publishes_acked(c)
            .iter()
            .map(payload_of)
            .collect::<Vec<_>>(),
        vec!["next"]
    );
}

#[test]
fn session_expired_while_the_broker_was_down_is_gone_after_restart() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    h.advance_secs(5);
    let (s, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(10));
    h.subscribe(s, "t", Q1);
    h.close(s);
    let p = h.client("p", V311);
    h.publish(p, "t", "queued", Q1, false);
    let down_at = wall(&h);

    let mut h = restart(&h, config, 20_000);
    let deleted = h
        .persisted
        .iter()
        .rev()
        .flat_map(|(_, r)| r.iter())
        .any(|r| matches!(r, Record::SessionDel { client_id } if client_id == "s"));
    assert!(deleted, "expired session not deleted from the store");
    assert!(h.take_events().contains(&BrokerEvent::SessionExpired {
        client_id: "s".to_owned()
    }));
    let (s, ack) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(10));
    assert!(
        !ack.session_present,
        "session disconnected at {down_at} with expiry 10 s came back 20 s later"
    );
    assert!(
        h.recv(s).is_empty(),
        "queue of an expired session delivered"
    );
}

#[test]
fn session_within_its_expiry_survives_restart_and_expires_on_time() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(10));
    h.subscribe(s, "t", Q1);
    h.close(s);

    // Down for 4 s: 6 s of the 10 are left.
    let mut h = restart(&h, config.clone(), 4_000);
    assert!(h.take_events().is_empty());
    h.advance(5_999);
    assert!(
        !h.take_events()
            .iter()
            .any(|e| matches!(e, BrokerEvent::SessionExpired { .. })),
        "expired early"
    );
    h.advance(1);
    assert_eq!(
        h.take_events(),
        vec![BrokerEvent::SessionExpired {
            client_id: "s".to_owned()
        }]
    );

    // And a session that reconnects in time is present.
    let mut h2 = harness_with(config.clone());
    h2.auto_persist = true;
    let (s, _) = h2.connect("s", V5, true, ConnectOpts::default().session_expiry(10));
    h2.subscribe(s, "t", Q1);
    h2.close(s);
    let mut h2 = restart(&h2, config, 9_000);
    let (_, ack) = h2.connect("s", V5, false, ConnectOpts::default().session_expiry(10));
    assert!(ack.session_present);
}

#[test]
fn message_expiry_counts_the_time_the_broker_was_down() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    h.subscribe(s, "t", Q1);
    h.close(s);
    let p = h.client("p", V5);
    let expiring = |secs| Properties {
        message_expiry_interval: Some(secs),
        ..Properties::default()
    };
    h.publish_with(p, publish_v5("t", "short", Q1, expiring(10)));
    h.publish_with(p, publish_v5("t", "long", Q1, expiring(100)));

    let mut h = restart(&h, config, 30_000);
    let (s, present) = persistent_v5(&mut h, "s", false);
    assert!(present);
    let got = h.publishes(s);
    assert_eq!(
        got.iter().map(payload_of).collect::<Vec<_>>(),
        vec!["long"],
        "a message expired during the downtime was delivered"
    );
    assert_eq!(got[0].properties.message_expiry_interval, Some(70));
}

// ---------------------------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------------------------

/// Sessions of both versions with queued, in-flight, released and inbound QoS 2 state, a
/// retained message, and some of it finished again.
fn busy_broker(config: &Config) -> Harness {
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (a, _) = persistent_v5(&mut h, "a", true);
    h.subscribe_with(
        a,
        &[("t/#", sub_opts(Q2))],
        Properties {
            subscription_identifiers: vec![3],
            ..Properties::default()
        },
    );
    let (b, _) = persistent_v311(&mut h, "b");
    h.subscribe(b, "t/+", Q1);
    h.subscribe(b, "gone", Q1);
    h.unsubscribe(b, &["gone"]);
    let p = h.client("p", V5);
    for i in 0..4 {
        h.publish(p, &format!("t/{i}"), &format!("m{i}"), Q2, false);
    }
    h.publish(p, "t/r", "retained", Q1, true);
    h.publish(p, "t/x", "cleared", Q1, true);
    h.publish(p, "t/x", "", Q1, true);
    // a: finishes m0, releases m1, leaves m2 and m3 in flight.
    let got = h.publishes(a);
    let ids: Vec<u16> = got.iter().map(|m| m.packet_id.unwrap()).collect();
    h.pubrec(a, ids[0]);
    h.pubcomp(a, ids[0]);
    h.pubrec(a, ids[1]);
    // b: acknowledges two, goes offline with the rest.
    let got = h.publishes(b);
    h.puback(b, got[0].packet_id.unwrap());
    h.puback(b, got[1].packet_id.unwrap());
    h.close(b);
    // A persistent publisher with an inbound QoS 2 id waiting for its PUBREL.
    let (q, _) = persistent_v5(&mut h, "q", true);
    let mut m = publish_msg("t/q", "from q", Q2);
    m.packet_id = Some(9);
    h.publish_with(q, m);
    h.close(a);
    h.recv(q);
    h
}

/// What clients see from a broker restored from `state`: every packet per client.
fn resume_script(config: &Config, state: Recovered, at: u64) -> Vec<(String, Vec<Packet>)> {
    let mut h = restart_from(config.clone(), state, Vec::new(), at);
    let mut seen = Vec::new();
    let (a, present) = persistent_v5(&mut h, "a", false);
    assert!(present);
    seen.push(("a".to_owned(), h.recv(a)));
    let (b, present) = persistent_v311(&mut h, "b");
    assert!(present);
    seen.push(("b".to_owned(), h.recv(b)));
    let (q, present) = persistent_v5(&mut h, "q", false);
    assert!(present);
    let mut m = publish_msg("t/q", "from q", Q2);
    m.packet_id = Some(9);
    m.dup = true;
    h.publish_with(q, m);
    h.pubrel(q, 9);
    seen.push(("q".to_owned(), h.recv(q)));
    let c = h.client("c", V5);
    h.subscribe(c, "#", Q1);
    seen.push(("c".to_owned(), h.recv(c)));
    let p = h.client("p", V311);
    h.publish(p, "t/new", "after", Q1, false);
    seen.push(("a".to_owned(), h.recv(a)));
    seen.push(("b".to_owned(), h.recv(b)));
    seen
}

#[test]
fn the_sys_tree_is_retained_but_neither_journaled_nor_snapshotted() {
    let mut config = durable_config(SyncMode::Fsync);
    config.sys_interval = 1;
    let mut h = harness_with(config);
    h.auto_persist = true;
    let p = h.client("p", V311);
    h.publish(p, "kept", "m", Q0, true);
    h.advance_secs(3);
    let late = h.client("late", V311);
    h.subscribe(late, "$SYS/broker/uptime", Q0);
    assert!(!h.recv(late).is_empty(), "the tree is retained");
    h.input(Input::SnapshotRequest);
    let retained_topics = |records: &[Record]| -> Vec<String> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::RetainPut { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .collect()
    };
    let (_, snap) = h.snapshots.last().unwrap().clone();
    assert_eq!(retained_topics(&snap), ["kept"]);
    let journaled: Vec<String> = h
        .persisted
        .iter()
        .flat_map(|(_, records)| retained_topics(records))
        .collect();
    assert_eq!(journaled, ["kept"]);
}

#[test]
fn snapshot_replayed_alone_restores_what_the_whole_journal_restores() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = busy_broker(&config);
    let upto = last_upto(&h);
    h.input(Input::SnapshotRequest);
    assert_eq!(h.snapshots.len(), 1);
    let (snap_upto, snap) = h.snapshots[0].clone();
    assert_eq!(snap_upto, upto, "snapshot not taken at the last record");
    assert!(
        h.persisted.last().unwrap().0 == upto,
        "a snapshot request handed out records"
    );

    let mut from_journal = recover(&h.persisted);
    let mut from_snapshot = recover_snapshot(snap_upto, &snap);
    assert_eq!(from_snapshot.last_seq, from_journal.last_seq);
    from_journal.prune();
    from_snapshot.prune();
    assert_eq!(from_snapshot, from_journal);

    let at = wall(&h);
    let journal_view = resume_script(&config, recover(&h.persisted), at);
    let snapshot_view = resume_script(&config, recover_snapshot(snap_upto, &snap), at);
    assert_eq!(snapshot_view, journal_view);
    // And the view is the one expected, not two equal wrong ones.
    // a: the PUBREL of m1, then everything else in flight, in order, with DUP.
    let a_first: Vec<(String, bool)> = journal_view[0]
        .1
        .iter()
        .map(|p| match p {
            Packet::PubRel(r) => (format!("PUBREL {}", r.packet_id), false),
            Packet::Publish(m) => (payload_of(m).to_owned(), m.dup),
            other => panic!("a: {other:?}"),
        })
        .collect();
    let expect: Vec<(String, bool)> = [
        ("PUBREL 2", false),
        ("m2", true),
        ("m3", true),
        ("retained", true),
        ("cleared", true),
        ("", true),
        ("from q", true),
    ]
    .iter()
    .map(|(p, d)| ((*p).to_owned(), *d))
    .collect();
    assert_eq!(a_first, expect);
    // b acknowledged m0 and m1 only; the rest come again, in order.
    let b_payloads: Vec<&str> = journal_view[1]
        .1
        .iter()
        .map(|p| match p {
            Packet::Publish(m) => payload_of(m),
            other => panic!("b: {other:?}"),
        })
        .collect();
    assert_eq!(
        b_payloads,
        vec!["m2", "m3", "retained", "cleared", "", "from q"]
    );
    assert!(
        matches!(&journal_view[2].1[..], [Packet::PubRec(r), Packet::PubComp(c)] if r.packet_id == 9 && c.packet_id == 9)
    );
    assert!(
        journal_view[3]
            .1
            .iter()
            .any(|p| matches!(p, Packet::Publish(m) if m.retain && m.topic == "t/r")),
        "{:?}",
        journal_view[3].1
    );
}

#[test]
fn snapshot_then_the_records_after_it_restore_what_the_whole_journal_restores() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = busy_broker(&config);
    h.input(Input::SnapshotRequest);
    let (upto, snap) = h.snapshots[0].clone();
    // More happens after the snapshot.
    let p = h.client("p2", V311);
    h.publish(p, "t/late", "late", Q1, false);
    h.publish(p, "t/r", "", Q1, true);
    let (a, _) = persistent_v5(&mut h, "a", false);
    for packet in h.recv(a) {
        match packet {
            Packet::Publish(m) => h.pubrec(a, m.packet_id.unwrap()),
            Packet::PubRel(r) => h.pubcomp(a, r.packet_id),
            other => panic!("{other:?}"),
        }
    }
    h.close(a);

    let mut from_snapshot = recover_snapshot(upto, &snap);
    for (batch_upto, records) in &h.persisted {
        let first = batch_upto + 1 - records.len() as u64;
        for (i, r) in records.iter().enumerate() {
            if first + i as u64 > upto {
                from_snapshot.apply(r.clone());
                from_snapshot.last_seq = first + i as u64;
            }
        }
    }
    let mut from_journal = recover(&h.persisted);
    assert_eq!(from_snapshot.last_seq, from_journal.last_seq);
    from_journal.prune();
    from_snapshot.prune();
    assert_eq!(from_snapshot, from_journal);
}

#[test]
fn a_qos1_delivery_sent_at_once_is_one_record_and_a_restart_resends_it_under_its_packet_id() {
    let config = durable_config(SyncMode::Fsync);
    let mut h = harness_with(config.clone());
    h.auto_persist = true;
    let (s, _) = persistent_v5(&mut h, "s", true);
    subscribe_durably(&mut h, s, "t", Q1);
    let p = h.client("p", V5);
    let mark = h.persisted.len();
    h.publish(p, "t", "m", Q1, false);
    let got = h.publishes(s);
    assert_eq!(got.len(), 1);
    let pid = got[0].packet_id.unwrap();
    // The body, then the delivery with the packet id it went out under: no `OutState`.
    let records = records_since(&h, mark);
    assert!(
        matches!(&records[..], [Record::MsgPut(_), Record::QueuePut { client_id, sent: Some(sent), .. }]
            if client_id == "s" && *sent == pid),
        "{records:?}"
    );

    // Unacknowledged when the broker stops: after the restart it goes again, same id, DUP.
    h.close(s);
    let mut h = restart(&h, config, 0);
    let (s, present) = persistent_v5(&mut h, "s", false);
    assert!(present);
    let again = h.publishes(s);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(
        (again[0].packet_id, again[0].dup, payload_of(&again[0])),
        (Some(pid), true, "m")
    );
}
