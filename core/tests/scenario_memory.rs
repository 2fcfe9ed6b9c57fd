//! The memory budget (`max_memory`): what the broker holds for peers is counted from the moment
//! it is taken until it is let go, and past the budget nothing more is kept — retained messages
//! and queues stop growing, new sessions make room by ending offline ones or are refused, new
//! subscriptions are refused — while a client that keeps up still gets its messages.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Packet, QoS, ReasonCode};
use tidemq_core::{BrokerEvent, Config};

const MIB: u64 = 1024 * 1024;

fn budget_config(max_memory: u64) -> Config {
    Config {
        max_memory,
        ..quiet_config()
    }
}

fn payload(n: usize) -> String {
    "x".repeat(n)
}

#[test]
fn everything_counted_is_given_back_when_it_is_gone() {
    let mut h = Harness::with_config(budget_config(64 * MIB));
    let idle = h.broker.memory_used();
    let p = h.client("p", V5);
    let s = h.client("s", V5);
    h.subscribe(s, "t/#", QoS::AtLeastOnce);
    h.withhold_written(s, true);
    for i in 0..50 {
        h.publish(p, &format!("t/{i}"), &payload(1000), QoS::AtLeastOnce, true);
    }
    let busy = h.broker.memory_used();
    assert!(
        busy > idle + 50 * 1000,
        "50 retained messages and their deliveries are counted: {idle} -> {busy}"
    );
    // Retained messages cleared, every connection and session gone: back to where it began.
    for i in 0..50 {
        h.publish(p, &format!("t/{i}"), "", QoS::AtMostOnce, true);
    }
    h.close(s);
    h.close(p);
    assert_eq!(h.stats().sessions, 0);
    assert_eq!(h.broker.memory_used(), idle, "nothing left counted");
}

#[test]
fn retained_messages_past_the_high_mark_are_refused_with_0x97() {
    let mut h = Harness::with_config(budget_config(MIB));
    let p = h.client("p", V5);
    let mut refused = 0;
    for i in 0..400 {
        let pid = h
            .publish(p, &format!("r/{i}"), &payload(4096), QoS::AtLeastOnce, true)
            .unwrap();
        match h.recv_one(p) {
            Packet::PubAck(a) if a.packet_id == pid && a.reason == ReasonCode(0) => {}
            Packet::PubAck(a) if a.packet_id == pid && a.reason == ReasonCode(0x97) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused > 200, "most of 1.6 MB of retained messages refused");
    let used = h.broker.memory_used() as u64;
    assert!(used <= MIB, "retained store held under the budget: {used}");
    // Routing still works for a client that keeps up: an ordinary message gets through.
    let s = h.client("s", V5);
    assert_eq!(
        h.subscribe(s, "live", QoS::AtLeastOnce).reasons,
        [ReasonCode(1)]
    );
    h.publish(p, "live", "hello", QoS::AtLeastOnce, false);
    assert_eq!(h.payloads(s), ["hello"]);
}

#[test]
fn a_3_1_1_retained_publish_past_the_high_mark_closes_the_connection() {
    let mut h = Harness::with_config(budget_config(MIB));
    let p = h.client("p", V311);
    for i in 0..400 {
        h.publish(p, &format!("r/{i}"), &payload(4096), QoS::AtLeastOnce, true);
        if h.is_closed(p) {
            return;
        }
    }
    panic!("a 3.1.1 client has no way to be told 0x97: it is disconnected");
}

#[test]
fn queues_stop_growing_past_the_high_mark_and_drops_are_one_event() {
    let mut h = Harness::with_config(budget_config(MIB));
    let p = h.client("p", V5);
    // An offline persistent subscriber piles up a queue.
    let (s, _) = h.connect(
        "parked",
        V5,
        true,
        ConnectOpts::default().session_expiry(3600),
    );
    h.subscribe(s, "q/#", QoS::AtLeastOnce);
    h.close(s);
    h.take_events();
    for i in 0..600 {
        h.publish(
            p,
            &format!("q/{i}"),
            &payload(2048),
            QoS::AtLeastOnce,
            false,
        );
    }
    let used = h.broker.memory_used() as u64;
    assert!(used <= MIB, "queue held under the budget: {used}");
    let dropped: u64 = h
        .take_events()
        .iter()
        .filter_map(|e| match e {
            BrokerEvent::MessagesDropped {
                client_id,
                why,
                count,
            } if client_id == "parked" && *why == "memory budget" => Some(*count),
            _ => None,
        })
        .sum();
    assert!(dropped > 100, "drops counted: {dropped}");
}

#[test]
fn a_new_session_past_the_budget_ends_offline_sessions_nearest_their_end_first() {
    let mut h = Harness::with_config(budget_config(MIB));
    // Offline sessions that each hold a queue, expiring at different times.
    for (i, expiry) in [(0, 7200), (1, 60), (2, 3600)] {
        let (c, _) = h.connect(
            &format!("off{i}"),
            V5,
            true,
            ConnectOpts::default().session_expiry(expiry),
        );
        h.subscribe(c, "q/#", QoS::AtLeastOnce);
        h.close(c);
    }
    let p = h.client("p", V5);
    // Queues grow to the high mark...
    for i in 0..200 {
        h.publish(
            p,
            &format!("q/{i}"),
            &payload(2048),
            QoS::AtLeastOnce,
            false,
        );
    }
    // ...and a connected subscriber that does not read takes output past the budget.
    let s = h.client("s", V5);
    h.subscribe(s, "big", QoS::AtMostOnce);
    h.withhold_written(s, true);
    for _ in 0..20 {
        h.publish(p, "big", &payload(64 * 1024), QoS::AtMostOnce, false);
    }
    // Sessions are taken while there is room; the last one takes the count past the budget.
    let mut n = 0;
    while (h.broker.memory_used() as u64) < MIB {
        let (c, ack) = h.connect(
            &format!("filler{n}"),
            V5,
            true,
            ConnectOpts::default().session_expiry(9000),
        );
        assert_eq!(ack.code, 0);
        h.close(c);
        n += 1;
        assert!(n < 10_000);
    }
    let fresh = h.client("fresh", V5);
    assert!(!h.is_closed(fresh));
    let shed: Vec<String> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            BrokerEvent::SessionShed { client_id } => Some(client_id),
            _ => None,
        })
        .collect();
    assert!(!shed.is_empty(), "room was made");
    assert_eq!(shed[0], "off1", "the one nearest its end goes first");
    assert!((h.broker.memory_used() as u64) < MIB + 64 * 1024);
}

#[test]
fn past_the_budget_with_nothing_to_shed_a_new_session_and_a_new_filter_are_refused() {
    let mut h = Harness::with_config(budget_config(MIB));
    let s = h.client("s", V5);
    h.subscribe(s, "a", QoS::AtMostOnce);
    // Connected, non-reading subscribers' output is what the budget holds; fill it with
    // bytes the writer has not taken yet.
    h.withhold_written(s, true);
    let p = h.client("p", V311);
    h.subscribe(s, "big", QoS::AtLeastOnce);
    for _ in 0..20 {
        h.publish(p, "big", &payload(64 * 1024), QoS::AtLeastOnce, false);
    }
    assert!(h.broker.memory_used() as u64 >= MIB, "over the budget");
    let (c, ack) = h.connect("late", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0x97, "CONNACK Quota exceeded");
    assert!(h.is_closed(c));
    let (c3, ack) = h.connect("late3", V311, true, ConnectOpts::default());
    assert_eq!(ack.code, 3, "3.1.1: server unavailable");
    assert!(h.is_closed(c3));
    assert_eq!(
        h.subscribe(p, "new/filter", QoS::AtMostOnce).reasons,
        [ReasonCode(0x80)]
    );
}

#[test]
fn anonymous_sessions_get_the_bounded_expiry_named_ones_what_they_ask() {
    let mut h = Harness::with_config(Config {
        anonymous_session_expiry: 600,
        ..quiet_config()
    });
    let (_, ack) = h.connect(
        "anon",
        V5,
        true,
        ConnectOpts::default().session_expiry(u32::MAX),
    );
    assert_eq!(ack.properties.session_expiry_interval, Some(600));
    let (_, ack) = h.connect(
        "named",
        V5,
        true,
        ConnectOpts::default()
            .username("alice")
            .session_expiry(u32::MAX),
    );
    assert_eq!(ack.properties.session_expiry_interval, None);
}
