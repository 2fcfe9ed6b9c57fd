//! Retained messages: storage, delivery on subscribe, deletion, retain handling and
//! retain-as-published.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Properties, SubscriptionOptions};

#[test]
fn retained_message_is_delivered_on_subscribe_with_retain_flag() {
    let mut h = Harness::new();
    let p = h.client("p", V311);
    h.publish(p, "r/a", "kept", Q1, true);
    assert_eq!(h.stats().retained, 1);
    let c = h.client("s", V311);
    h.subscribe(c, "r/a", Q1);
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(got[0].qos, Q1);
    assert_eq!(&got[0].payload[..], b"kept");
}

#[test]
fn retained_messages_match_wildcard_filters() {
    let mut h = Harness::new();
    let p = h.client("p", V311);
    for t in ["r/a", "r/b/c", "x/a", "$app/a"] {
        h.publish(p, t, t, Q0, true);
    }
    let c = h.client("s", V311);
    h.subscribe(c, "r/#", Q0);
    let mut got = h.payloads(c);
    got.sort();
    assert_eq!(got, ["r/a", "r/b/c"]);
    h.subscribe(c, "+/a", Q0);
    let mut got = h.payloads(c);
    got.sort();
    assert_eq!(got, ["r/a", "x/a"]);
    h.subscribe(c, "#", Q0);
    assert_eq!(h.publishes(c).len(), 3, "$app/a is not matched by #");
}

#[test]
fn retained_delivery_uses_the_lower_qos() {
    let mut h = Harness::new();
    let p = h.client("p", V311);
    h.publish(p, "r", "x", Q2, true);
    let c = h.client("s", V311);
    h.subscribe(c, "r", Q1);
    assert_eq!(h.publishes(c)[0].qos, Q1);
}

#[test]
fn newer_retained_message_replaces_the_older() {
    let mut h = Harness::new();
    let p = h.client("p", V311);
    h.publish(p, "r", "old", Q0, true);
    h.publish(p, "r", "new", Q0, true);
    assert_eq!(h.stats().retained, 1);
    let c = h.client("s", V311);
    h.subscribe(c, "r", Q0);
    assert_eq!(h.payloads(c), ["new"]);
}

#[test]
fn empty_retained_payload_deletes_the_retained_message() {
    let mut h = Harness::new();
    let p = h.client("p", V311);
    h.publish(p, "r", "x", Q0, true);
    let live = h.client("live", V311);
    h.subscribe(live, "r", Q0);
    h.recv(live);
    h.publish(p, "r", "", Q0, true);
    assert_eq!(h.stats().retained, 0);
    // The deletion itself is still delivered to current subscribers.
    let got = h.publishes(live);
    assert_eq!(got.len(), 1);
    assert!(got[0].payload.is_empty());
    let c = h.client("s", V311);
    h.subscribe(c, "r", Q0);
    assert!(h.recv(c).is_empty());
}

#[test]
fn live_messages_are_sent_without_retain_flag_by_default() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    h.subscribe(c, "r", Q0);
    let p = h.client("p", V311);
    h.publish(p, "r", "x", Q0, true);
    let got = h.publishes(c);
    assert!(!got[0].retain);
}

#[test]
fn retain_as_published_keeps_the_retain_flag_on_live_messages() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    let opts = SubscriptionOptions {
        retain_as_published: true,
        ..sub_opts(Q0)
    };
    h.subscribe_with(c, &[("r", opts)], Properties::default());
    let p = h.client("p", V5);
    h.publish(p, "r", "retained", Q0, true);
    h.publish(p, "r", "plain", Q0, false);
    let flags: Vec<bool> = h.publishes(c).iter().map(|p| p.retain).collect();
    assert_eq!(flags, [true, false]);
}

#[test]
fn retain_handling_0_sends_retained_on_every_subscribe() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish(p, "r", "x", Q0, true);
    let c = h.client("s", V5);
    let opts = SubscriptionOptions {
        retain_handling: 0,
        ..sub_opts(Q0)
    };
    h.subscribe_with(c, &[("r", opts)], Properties::default());
    h.subscribe_with(c, &[("r", opts)], Properties::default());
    assert_eq!(h.publishes(c).len(), 2);
}

#[test]
fn retain_handling_1_sends_retained_only_for_a_new_subscription() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish(p, "r", "x", Q0, true);
    let c = h.client("s", V5);
    let opts = SubscriptionOptions {
        retain_handling: 1,
        ..sub_opts(Q0)
    };
    h.subscribe_with(c, &[("r", opts)], Properties::default());
    assert_eq!(h.publishes(c).len(), 1);
    h.subscribe_with(c, &[("r", opts)], Properties::default());
    assert!(h.recv(c).is_empty());
}

#[test]
fn retain_handling_2_never_sends_retained() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish(p, "r", "x", Q0, true);
    let c = h.client("s", V5);
    let opts = SubscriptionOptions {
        retain_handling: 2,
        ..sub_opts(Q0)
    };
    h.subscribe_with(c, &[("r", opts)], Properties::default());
    assert!(h.recv(c).is_empty());
    // Live messages still flow.
    h.publish(p, "r", "live", Q0, false);
    assert_eq!(h.payloads(c), ["live"]);
}

#[test]
fn retained_message_carries_the_subscription_identifier() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish(p, "r", "x", Q0, true);
    let c = h.client("s", V5);
    let props = Properties {
        subscription_identifiers: vec![9],
        ..Properties::default()
    };
    h.subscribe_with(c, &[("r", sub_opts(Q0))], props);
    assert_eq!(h.publishes(c)[0].properties.subscription_identifiers, [9]);
}

#[test]
fn expired_retained_message_is_not_delivered() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    let mut msg = publish_msg("r", "short", Q0);
    msg.retain = true;
    msg.properties.message_expiry_interval = Some(2);
    h.publish_with(p, msg);
    h.advance(1_000);
    let early = h.client("early", V5);
    h.subscribe(early, "r", Q0);
    let got = h.publishes(early);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.message_expiry_interval, Some(1));
    h.advance(1_000);
    let late = h.client("late", V5);
    let dropped = h.stats().messages_dropped;
    h.subscribe(late, "r", Q0);
    assert!(h.recv(late).is_empty());
    // An expired retained message is gone from the store, not "dropped" per subscriber.
    assert_eq!(h.stats().retained, 0);
    assert_eq!(h.stats().messages_dropped, dropped);
}

#[test]
fn retained_messages_survive_the_publisher() {
    let mut h = Harness::new();
    let p = h.client("p", V311);
    h.publish(p, "r", "x", Q1, true);
    h.disconnect(p, 0);
    let c = h.client("s", V311);
    h.subscribe(c, "r", Q1);
    assert_eq!(h.payloads(c), ["x"]);
}
