//! The retained messages a new subscription receives are walked out of the store as the
//! subscriber's window and writer take them: none is dropped for a subscriber that keeps
//! up however large the store is, a subscriber that does not read costs a cursor, and what
//! is routed after the subscription comes after the retained messages it follows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Properties, Publish, QoS};
use tidemq_core::{Config, ConnId};

fn config() -> Config {
    Config {
        max_inflight: 10,
        msq_len: 8,
        ..quiet_config()
    }
}

/// Every PUBLISH the subscriber gets, acknowledging as it goes, until the broker has
/// nothing more for it (timers that fall due on the way are fired).
fn read_all(h: &mut Harness, c: ConnId) -> Vec<Publish> {
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 3 {
        let got = h.publishes_acked(c);
        if got.is_empty() {
            idle += 1;
            h.advance(5);
        } else {
            idle = 0;
            out.extend(got);
        }
    }
    out
}

fn topic_order(topics: &[String]) -> Vec<String> {
    let mut sorted = topics.to_vec();
    sorted.sort_by(|a, b| a.split('/').cmp(b.split('/')));
    sorted
}

/// Three retained topics (`a`, `b`, `c`) published by `p`, then `c` subscribed to `#` with a
/// window of one: only `a` is out.
fn three_retained_and_a_window_of_one() -> (Harness, ConnId, ConnId) {
    let mut h = Harness::with_config(Config {
        max_inflight: 1,
        ..config()
    });
    let p = h.client("p", V311);
    for t in ["a", "b", "c"] {
        h.publish(p, t, "old", QoS::AtLeastOnce, true);
    }
    let c = h.client("c", V5);
    h.subscribe(c, "#", QoS::AtLeastOnce);
    (h, p, c)
}

#[test]
fn a_subscriber_that_keeps_up_gets_every_retained_message_of_a_large_store() {
    let mut h = Harness::with_config(config());
    let p = h.client("p", V311);
    for i in 0..3000 {
        h.publish(p, &format!("r/{i}"), "kept", QoS::AtLeastOnce, true);
    }
    let c = h.client("c", V5);
    h.subscribe(c, "#", QoS::AtLeastOnce);
    // The window (10) is what the SUBSCRIBE itself sends; the rest follows the PUBACKs.
    let first = h.publishes(c);
    assert_eq!(first.len(), 10, "the first window");
    for p in &first {
        h.puback(c, p.packet_id.unwrap());
    }
    let mut topics: Vec<String> = first.into_iter().map(|p| p.topic).collect();
    let rest = read_all(&mut h, c);
    assert!(rest.iter().all(|p| p.retain));
    topics.extend(rest.into_iter().map(|p| p.topic));
    assert_eq!(topics.len(), 3000, "none dropped");
    assert_eq!(topics, topic_order(&topics), "in topic order");
}

#[test]
fn a_message_routed_after_the_subscription_comes_after_the_retained_one_of_its_topic() {
    let (mut h, p, c) = three_retained_and_a_window_of_one();
    // Only "a" is out (window of 1); "c" changes now, and "b" is retained anew.
    h.publish(p, "c", "live", QoS::AtLeastOnce, false);
    h.publish(p, "b", "new", QoS::AtLeastOnce, true);
    let got: Vec<(String, String, bool)> = read_all(&mut h, c)
        .into_iter()
        .map(|p| {
            (
                p.topic,
                String::from_utf8_lossy(&p.payload).into_owned(),
                p.retain,
            )
        })
        .collect();
    let want = [
        ("a", "old", true),
        // "b" was retained anew after the subscription: routed to it, not replayed.
        ("c", "old", true),
        ("c", "live", false),
        ("b", "new", false),
    ];
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(t, p, r)| ((*t).to_owned(), (*p).to_owned(), *r))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_subscriber_that_does_not_read_gets_no_more_than_its_writer_takes() {
    let mut h = Harness::with_config(Config {
        max_write_buffer: 64 * 1024,
        ..config()
    });
    let p = h.client("p", V311);
    let body = "x".repeat(1000);
    for i in 0..2000 {
        h.publish(p, &format!("r/{i}"), &body, QoS::AtMostOnce, true);
    }
    let c = h.client("c", V5);
    h.withhold_written(c, true);
    let before = h.broker.memory_used();
    // Seven filters that match the whole store and a thousand that match one message each.
    let all = ["#", "r/#", "+/#", "r/+", "+/+", "r/+/#", "+/+/#"];
    let ones: Vec<String> = (0..1000).map(|i| format!("r/{i}")).collect();
    let filters: Vec<(&str, _)> = all
        .iter()
        .copied()
        .chain(ones.iter().map(String::as_str))
        .map(|f| (f, sub_opts(QoS::AtMostOnce)))
        .collect();
    h.subscribe_with(c, &filters, Properties::default());
    h.advance(50);
    let sent = h.publishes(c).len();
    assert!(
        (60..=70).contains(&sent),
        "the writer's 64 KiB, then nothing: {sent}"
    );
    let held = h.broker.memory_used() - before;
    assert!(
        held < 2 * 1024 * 1024,
        "subscriptions, cursors and the writer's bytes: {held}"
    );
    // Once it reads, everything comes: 7 × 2000 + 1000.
    h.release_written(c);
    let rest = read_all(&mut h, c).len();
    assert_eq!(sent + rest, 7 * 2000 + 1000);
}

#[test]
fn an_unsubscribe_ends_the_retained_messages_still_owed() {
    let (mut h, _, c) = three_retained_and_a_window_of_one();
    let first = h.publishes(c);
    assert_eq!(first.len(), 1, "the window of one");
    h.unsubscribe(c, &["#"]);
    h.puback(c, first[0].packet_id.unwrap());
    assert!(read_all(&mut h, c).is_empty(), "nothing after the UNSUBACK");
}
