//! Shared subscriptions (`$share/{group}/{filter}`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::ConnId;
use tidemq_core::codec::{Properties, SubscriptionOptions};

fn group(h: &mut Harness, n: usize, filter: &str) -> Vec<ConnId> {
    (0..n)
        .map(|i| {
            let c = h.client(&format!("member{i}"), V5);
            let ack = h.subscribe(c, filter, Q1);
            assert_eq!(ack.reasons, [1]);
            c
        })
        .collect()
}

#[test]
fn shared_subscription_delivers_each_message_to_exactly_one_member() {
    let mut h = Harness::new();
    let members = group(&mut h, 3, "$share/g/jobs/+");
    let p = h.client("p", V5);
    for i in 0..30 {
        h.publish(p, "jobs/x", &format!("job{i}"), Q0, false);
    }
    let mut all: Vec<String> = Vec::new();
    for m in &members {
        all.extend(h.payloads(*m));
    }
    all.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("job{i}")).collect();
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn shared_subscription_round_robins_between_members() {
    let mut h = Harness::new();
    let members = group(&mut h, 3, "$share/g/t");
    let p = h.client("p", V5);
    for i in 0..9 {
        h.publish(p, "t", &i.to_string(), Q0, false);
    }
    for m in &members {
        assert_eq!(h.publishes(*m).len(), 3);
    }
}

#[test]
fn each_share_group_gets_its_own_copy() {
    let mut h = Harness::new();
    let a = h.client("a", V5);
    h.subscribe(a, "$share/one/t", Q0);
    let b = h.client("b", V5);
    h.subscribe(b, "$share/two/t", Q0);
    let plain = h.client("plain", V311);
    h.subscribe(plain, "t", Q0);
    let p = h.client("p", V5);
    h.publish(p, "t", "x", Q0, false);
    assert_eq!(h.payloads(a), ["x"]);
    assert_eq!(h.payloads(b), ["x"]);
    assert_eq!(h.payloads(plain), ["x"]);
}

#[test]
fn shared_subscription_prefers_connected_members() {
    let mut h = Harness::new();
    let (offline, _) = h.connect("off", V5, true, ConnectOpts::default().session_expiry(600));
    h.subscribe(offline, "$share/g/t", Q1);
    let online = h.client("on", V5);
    h.subscribe(online, "$share/g/t", Q1);
    h.close(offline);
    let p = h.client("p", V5);
    for i in 0..4 {
        h.publish(p, "t", &i.to_string(), Q1, false);
    }
    assert_eq!(h.publishes(online).len(), 4);
    let (back, _) = h.connect("off", V5, false, ConnectOpts::default().session_expiry(600));
    assert!(
        h.recv(back).is_empty(),
        "nothing was queued for the offline member"
    );
}

#[test]
fn shared_subscription_gets_no_retained_messages_on_subscribe() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish(p, "t", "kept", Q0, true);
    let c = h.client("c", V5);
    h.subscribe(c, "$share/g/t", Q0);
    assert!(h.recv(c).is_empty());
    h.publish(p, "t", "live", Q0, false);
    assert_eq!(h.payloads(c), ["live"]);
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    let opts = SubscriptionOptions {
        no_local: true,
        ..sub_opts(Q0)
    };
    h.send(
        c,
        &tidemq_core::codec::Packet::Subscribe(tidemq_core::codec::Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![("$share/g/t".to_owned(), opts)],
        }),
    );
    assert!(h.is_closed(c));
    assert_eq!(h.disconnect_reason(c), Some(0x82));
}

#[test]
fn invalid_share_names_are_refused_in_suback() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    let ack = h.subscribe_with(
        c,
        &[
            ("$share/g", sub_opts(Q0)),
            ("$share//t", sub_opts(Q0)),
            ("$share/a+b/t", sub_opts(Q0)),
        ],
        Properties::default(),
    );
    assert_eq!(ack.reasons, [0x8F, 0x8F, 0x8F]);
}

#[test]
fn unsubscribing_leaves_the_share_group() {
    let mut h = Harness::new();
    let members = group(&mut h, 2, "$share/g/t");
    let ack = h.unsubscribe(members[0], &["$share/g/t"]);
    assert_eq!(ack.reasons, [0]);
    let p = h.client("p", V5);
    for i in 0..4 {
        h.publish(p, "t", &i.to_string(), Q0, false);
    }
    assert!(h.recv(members[0]).is_empty());
    assert_eq!(h.publishes(members[1]).len(), 4);
}

#[test]
fn shared_and_plain_subscription_on_one_client_get_a_copy_each() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    let plain = Properties {
        subscription_identifiers: vec![1],
        ..Properties::default()
    };
    h.subscribe_with(c, &[("t", sub_opts(Q0))], plain);
    let shared = Properties {
        subscription_identifiers: vec![2],
        ..Properties::default()
    };
    h.subscribe_with(c, &[("$share/g/t", sub_opts(Q1))], shared);
    let p = h.client("p", V5);
    h.publish(p, "t", "x", Q1, false);
    let mut got: Vec<(Vec<u32>, tidemq_core::codec::QoS)> = h
        .publishes(c)
        .into_iter()
        .map(|p| (p.properties.subscription_identifiers, p.qos))
        .collect();
    got.sort();
    assert_eq!(got, [(vec![1], Q0), (vec![2], Q1)]);
}
