//! The store's disk cap (`persistence.max_disk`) as clients see it: at the cap new durable
//! work is refused with 0x97 (3.1.1: SUBACK 0x80, a closed connection, CONNACK 3) while
//! work that needs no store goes on and stored sessions drain; the broker compacts with
//! snapshots, and takes durable work again once the store is back under the cap. A writer
//! that refused records is healed by the next snapshot, which releases what waited on them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::Packet;
use tidemq_core::config::SyncMode;
use tidemq_core::config_parse::{Format, load};
use tidemq_core::{BrokerEvent, Config, ConnId, Input};

const CAP: u64 = 1 << 20;

fn capped() -> Harness {
    let mut c: Config = quiet_config();
    c.persistence.enable = true;
    c.persistence.sync = SyncMode::Fsync;
    c.persistence.max_disk = CAP;
    let mut h = Harness::with_config(c);
    h.input(Input::WallClock {
        unix_ms: 1_700_000_000_000,
    });
    h.auto_persist = true;
    h
}

fn usage(h: &mut Harness, bytes: u64, refusing: bool) {
    h.input(Input::StoreUsage { bytes, refusing });
}

fn full_events(h: &mut Harness) -> Vec<bool> {
    h.take_events()
        .into_iter()
        .filter_map(|e| match e {
            BrokerEvent::StoreFull { full, .. } => Some(full),
            _ => None,
        })
        .collect()
}

fn puback(h: &mut Harness, conn: ConnId) -> (u16, u8) {
    match h.recv_one(conn) {
        Packet::PubAck(a) => (a.packet_id, a.reason.0),
        p => panic!("expected PUBACK, got {p:?}"),
    }
}

/// A persistent v5 session subscribed to `filter` at QoS 1, offline.
fn offline_subscriber(h: &mut Harness, id: &str, filter: &str) {
    let (s, ack) = h.connect(id, V5, true, ConnectOpts::default().session_expiry(3600));
    assert_eq!(ack.code, 0);
    assert_eq!(h.subscribe(s, filter, Q1).reasons, vec![1]);
    h.close(s);
}

#[test]
fn at_the_cap_durable_work_is_refused_and_accepted_again_when_space_frees() {
    let mut h = capped();
    offline_subscriber(&mut h, "s", "t");
    let (s2, _) = h.connect("s2", V5, true, ConnectOpts::default().session_expiry(60));
    let c = h.client("c", V5);
    h.subscribe(c, "clean/t", Q1);
    let p = h.client("p", V5);
    h.publish(p, "t", "before", Q1, false);
    assert_eq!(puback(&mut h, p), (1, 0));

    // Under the cap nothing changes; at it the broker says so and compacts at once.
    usage(&mut h, CAP - 1, false);
    assert!(full_events(&mut h).is_empty());
    assert!(h.snapshots.is_empty());
    usage(&mut h, CAP, false);
    assert_eq!(full_events(&mut h), vec![true]);
    assert_eq!(h.snapshots.len(), 1, "a full store is compacted");

    // New durable work: refused with 0x97.
    h.publish(p, "t", "for s", Q1, false);
    assert_eq!(puback(&mut h, p), (2, 0x97));
    h.publish(p, "t", "for s", Q2, false);
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 3 && a.reason.0 == 0x97));
    h.publish(p, "r", "retained", Q1, true);
    assert_eq!(puback(&mut h, p), (4, 0x97));
    assert_eq!(h.subscribe(s2, "x", Q1).reasons, vec![0x97]);
    let (_, ack) = h.connect("new", V5, true, ConnectOpts::default().session_expiry(60));
    assert_eq!(ack.code, 0x97, "a new persistent session at the cap");
    assert!(!h.is_closed(p), "a v5 publisher is told, not cut");

    // Work that needs no store goes on.
    h.publish(p, "clean/t", "fine", Q1, false);
    assert_eq!(puback(&mut h, p), (5, 0));
    assert_eq!(h.payloads(c), vec!["fine"]);
    h.publish(p, "t", "qos 0", Q0, false);
    assert!(!h.is_closed(p));
    let (_, ack) = h.connect("clean", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    // A stored session resumes and drains its queue (that frees space).
    let (s, ack) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(3600));
    assert_eq!(ack.code, 0);
    assert!(ack.session_present);
    let got = h.publishes(s);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"before");
    let before = h.persisted.len();
    h.puback(s, got[0].packet_id.unwrap());
    assert!(
        h.persisted.len() > before,
        "the acknowledgement is recorded at the cap"
    );

    // Just under the cap is not enough (hysteresis): still full.
    usage(&mut h, CAP - 1, false);
    assert!(full_events(&mut h).is_empty());
    h.publish(p, "t", "still full", Q1, false);
    assert_eq!(puback(&mut h, p), (6, 0x97));

    // The compaction timer snapshots again while full and records were written since.
    let snaps = h.snapshots.len();
    h.advance(1_000);
    assert_eq!(
        h.snapshots.len(),
        snaps + 1,
        "compacted again after a second"
    );
    h.advance(10_000);
    assert_eq!(
        h.snapshots.len(),
        snaps + 1,
        "no snapshot when nothing was written since the last"
    );

    // Back under the low mark: accepted again.
    usage(&mut h, CAP / 2, false);
    assert_eq!(full_events(&mut h), vec![false]);
    h.publish(p, "t", "after", Q1, false);
    assert_eq!(puback(&mut h, p), (7, 0));
    assert_eq!(h.subscribe(s2, "x", Q1).reasons, vec![1]);
    let (_, ack) = h.connect("new", V5, true, ConnectOpts::default().session_expiry(60));
    assert_eq!(ack.code, 0);
    let snaps = h.snapshots.len();
    h.advance(120_000);
    assert_eq!(h.snapshots.len(), snaps, "no compaction under the cap");
}

#[test]
fn at_the_cap_a_v311_client_is_refused_as_the_spec_says() {
    let mut h = capped();
    let (s, ack) = h.connect("s", V311, false, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    h.subscribe(s, "t", Q1);
    let p = h.client("p", V311);
    usage(&mut h, CAP + 5, false);
    assert_eq!(full_events(&mut h), vec![true]);
    // SUBSCRIBE of a stored session: 0x80.
    assert_eq!(h.subscribe(s, "x", Q1).reasons, vec![0x80]);
    // A new persistent session: return code 3 (server unavailable).
    let (_, ack) = h.connect("new", V311, false, ConnectOpts::default());
    assert_eq!(ack.code, 3);
    // QoS 1 for a stored session: no way to say no but closing.
    h.publish(p, "t", "m", Q1, false);
    assert!(h.is_closed(p));
    // QoS 0 goes on.
    let q = h.client("q", V311);
    h.publish(q, "t", "qos 0", Q0, false);
    assert!(!h.is_closed(q));
    assert_eq!(h.payloads(s), vec!["qos 0"]);
}

#[test]
fn a_writer_that_refused_records_is_healed_by_the_next_snapshot() {
    let mut h = capped();
    offline_subscriber(&mut h, "s", "t");
    let p = h.client("p", V5);
    // The store lags: the acknowledgement waits for the record.
    h.auto_persist = false;
    h.publish(p, "t", "m", Q1, false);
    assert!(h.recv(p).is_empty(), "acknowledged before durable");
    let upto = h.persisted.last().unwrap().0;
    // The writer refused it (its hard limit, or a full disk): a snapshot at once.
    usage(&mut h, CAP / 4, true);
    assert_eq!(full_events(&mut h), vec![true]);
    let (snap_upto, records) = h.snapshots.last().cloned().expect("a snapshot at once");
    assert!(snap_upto >= upto, "the snapshot covers the refused record");
    assert!(!records.is_empty());
    assert!(h.recv(p).is_empty());
    // Refused again (say the snapshot found no room): no second snapshot until the timer.
    usage(&mut h, CAP / 4, true);
    assert_eq!(h.snapshots.len(), 1);
    h.advance(1_000);
    assert_eq!(h.snapshots.len(), 2, "the snapshot is tried again");
    // The snapshot is written: what waited on the refused record goes out.
    let snap_upto = h.snapshots.last().unwrap().0;
    h.input(Input::PersistDone { upto: snap_upto });
    usage(&mut h, CAP / 4, false);
    assert_eq!(full_events(&mut h), vec![false]);
    assert_eq!(puback(&mut h, p), (1, 0));
}

#[test]
fn max_disk_is_parsed_and_has_a_floor() {
    let c = Config::default();
    assert_eq!(c.persistence.max_disk, 10 << 30, "the documented default");
    let mut small = Config::default();
    small.persistence.max_disk = (1 << 20) - 1;
    let e = small.validate().unwrap_err();
    assert_eq!(e.key, "persistence.max_disk");
    let env = std::collections::BTreeMap::new();
    let base = Config::default();
    let (c, _) = load(
        &base,
        "persistence { enable = true, max_disk = 2GB }",
        Format::Hocon,
        &env,
    )
    .unwrap();
    assert_eq!(c.persistence.max_disk, 2 << 30);
    let (c, _) = load(&base, "persistence.max_disk=64MB\n", Format::KeyValue, &env).unwrap();
    assert_eq!(c.persistence.max_disk, 64 << 20);
}
