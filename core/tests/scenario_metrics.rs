//! The broker's counters as `/metrics` shows them: they move with the traffic and agree
//! with the NanoMQ figures and req 2 drawn from the same moment.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::{COMMIT_BOUNDS_US, Config, Input, RuntimeConnCounters, StoreFigures};

#[test]
fn counters_follow_the_traffic() {
    let mut h = Harness::with_config(Config {
        msq_len: 2,
        ..Config::default()
    });
    let sub = h.client("sub", V5);
    h.subscribe(sub, "t/#", Q2);
    let (off, _) = h.connect("off", V311, false, ConnectOpts::default());
    h.subscribe(off, "t/q", Q1);
    h.close(off);
    let p = h.client("pub", V5);
    h.publish(p, "t/0", "a", Q0, false);
    h.advance(5);
    h.publish(p, "t/1", "bb", Q1, false);
    h.publish(p, "t/2", "ccc", Q2, true);
    // Three to the offline session's queue of two: one dropped.
    for _ in 0..3 {
        h.publish(p, "t/q", "dddd", Q1, false);
    }
    h.publish(p, "nobody", "e", Q0, false);
    h.input(Input::RuntimeCounters(RuntimeConnCounters {
        refused_rate: 3,
        ..RuntimeConnCounters::default()
    }));
    let text = scrape(&mut h);
    assert_eq!(
        value(&text, "tidemq_messages_received_total{qos=\"0\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "tidemq_messages_received_total{qos=\"1\"}"),
        4.0
    );
    assert_eq!(
        value(&text, "tidemq_messages_received_total{qos=\"2\"}"),
        1.0
    );
    assert_eq!(value(&text, "nanomq_messages_received"), 7.0);
    assert_eq!(
        value(
            &text,
            "tidemq_messages_dropped_total{reason=\"queue_full\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "tidemq_messages_dropped_total{reason=\"no_subscriber\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "nanomq_messages_dropped"), 2.0);
    assert_eq!(value(&text, "tidemq_queued_messages"), 2.0);
    assert_eq!(value(&text, "tidemq_sessions{state=\"offline\"}"), 1.0);
    assert_eq!(value(&text, "tidemq_sessions{state=\"connected\"}"), 2.0);
    assert_eq!(value(&text, "tidemq_retained_messages"), 1.0);
    assert_eq!(value(&text, "tidemq_retained_bytes"), 3.0);
    assert_eq!(
        value(&text, "tidemq_connections_refused_total{reason=\"rate\"}"),
        3.0
    );
    assert_eq!(
        value(&text, "tidemq_packets_received_total{type=\"connect\"}"),
        3.0
    );
    assert_eq!(
        value(&text, "tidemq_packets_received_total{type=\"subscribe\"}"),
        2.0
    );
    // The subscriber got the QoS 0, 1 and 2 messages and the three on t/q, at once.
    let sent: f64 = (0..3)
        .map(|q| value(&text, &format!("tidemq_messages_sent_total{{qos=\"{q}\"}}")))
        .sum();
    assert_eq!(sent, 6.0);
    assert_eq!(value(&text, "nanomq_messages_sent"), sent);
    assert_eq!(
        value(&text, "tidemq_publish_deliver_latency_seconds_count"),
        sent
    );
    assert_eq!(
        value(
            &text,
            "tidemq_publish_deliver_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        sent
    );
}

#[test]
fn delivery_latency_is_measured_on_the_broker_clock() {
    let mut h = Harness::new();
    let (late, _) = h.connect("late", V311, false, ConnectOpts::default());
    h.subscribe(late, "x", Q1);
    h.close(late);
    let p = h.client("pub", V5);
    h.publish(p, "x", "m", Q1, false);
    h.advance(40);
    let (back, _) = h.connect("late", V311, false, ConnectOpts::default());
    h.recv(back);
    let text = scrape(&mut h);
    let le = |b: &str| {
        value(
            &text,
            &format!("tidemq_publish_deliver_latency_seconds_bucket{{le=\"{b}\"}}"),
        )
    };
    assert_eq!(le("0.025"), 0.0);
    assert_eq!(le("0.05"), 1.0);
    assert_eq!(
        value(&text, "tidemq_publish_deliver_latency_seconds_sum"),
        0.04
    );
}

#[test]
fn store_figures_are_shown_as_a_histogram_in_seconds() {
    let mut h = Harness::new();
    let mut f = StoreFigures {
        commit_sum_us: 1_500_000,
        journal_bytes: 4096,
        disk_bytes: 8192,
        snapshots_written: 2,
        last_snapshot_us: 250_000,
        group_records: 9,
        ..StoreFigures::default()
    };
    // 40 µs and 2 ms commits, and one of 1.5 s above the last bound.
    f.commit_buckets[StoreFigures::bucket_of(40)] += 1;
    f.commit_buckets[StoreFigures::bucket_of(2_000)] += 1;
    f.commit_buckets[StoreFigures::bucket_of(1_500_000)] += 1;
    assert_eq!(StoreFigures::bucket_of(1_500_000), COMMIT_BOUNDS_US.len());
    h.input(Input::StoreFigures(f));
    let text = scrape(&mut h);
    let b = |le: &str| {
        value(
            &text,
            &format!("tidemq_store_commit_duration_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(b("0.00005"), 1.0);
    assert_eq!(b("0.001"), 1.0);
    assert_eq!(b("0.0025"), 2.0);
    assert_eq!(b("1"), 2.0);
    assert_eq!(b("+Inf"), 3.0);
    assert_eq!(
        value(&text, "tidemq_store_commit_duration_seconds_count"),
        3.0
    );
    assert_eq!(
        value(&text, "tidemq_store_commit_duration_seconds_sum"),
        1.5
    );
    assert_eq!(
        value(&text, "tidemq_store_journal_written_bytes_total"),
        4096.0
    );
    assert_eq!(value(&text, "tidemq_store_disk_bytes"), 8192.0);
    assert_eq!(
        value(&text, "tidemq_store_last_snapshot_duration_seconds"),
        0.25
    );
}
