//! Strictness and interoperability details of MQTT 5: what a CONNACK states, Response Topics,
//! bad CONNECTs answered in v5, and subscription identifiers said once.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Properties, QoS, SubscriptionOptions};

fn transmitted(h: &Harness, conn: tidemq_core::ConnId) -> Vec<u8> {
    h.clients[&conn].transmitted.clone()
}

#[test]
fn connack_states_what_the_broker_supports() {
    let mut h = Harness::new();
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default());
    let p = &ack.properties;
    assert_eq!(p.retain_available, Some(1));
    assert_eq!(p.wildcard_subscription_available, Some(1));
    assert_eq!(p.subscription_identifier_available, Some(1));
    assert_eq!(p.shared_subscription_available, Some(1));
    // QoS 2 is supported: Maximum QoS is absent.
    assert_eq!(p.maximum_qos, None);
    // 3.1.1 has no properties at all.
    let (c311, _) = h.connect("d", V311, true, ConnectOpts::default());
    assert_eq!(transmitted(&h, c311), [0x20, 0x02, 0x00, 0x00]);
}

#[test]
fn a_publish_with_a_wildcard_response_topic_is_a_protocol_error() {
    let mut h = Harness::new();
    let sub = h.client("s", V5);
    h.subscribe(sub, "req/#", QoS::AtMostOnce);
    let p = h.client("p", V5);
    let before = transmitted(&h, p).len();
    for bad in ["reply/+", "reply/#"] {
        let mut msg = publish_msg("req/a", "x", QoS::AtMostOnce);
        msg.properties.response_topic = Some(bad.to_owned());
        let p = h.client(&format!("p-{}", bad.len()), V5);
        let mark = transmitted(&h, p).len();
        h.publish_with(p, msg);
        assert_eq!(
            transmitted(&h, p)[mark..],
            [0xe0, 0x02, 0x82, 0x00],
            "{bad}"
        );
        assert!(h.is_closed(p));
    }
    assert!(h.publishes(sub).is_empty(), "forwarded all the same");
    // A plain Response Topic is fine.
    let mut msg = publish_msg("req/a", "ok", QoS::AtMostOnce);
    msg.properties.response_topic = Some("reply/p".to_owned());
    h.publish_with(p, msg);
    assert_eq!(h.payloads(sub), vec!["ok"]);
    assert_eq!(transmitted(&h, p).len(), before);
}

#[test]
fn a_will_with_a_wildcard_response_topic_is_refused_with_connack_0x82() {
    let mut h = Harness::new();
    let mut opts = ConnectOpts::default().will("w/t", "gone", QoS::AtMostOnce, false);
    if let Some(w) = &mut opts.will {
        w.properties.response_topic = Some("r/#".to_owned());
    }
    let (conn, ack) = h.connect("c", V5, true, opts);
    assert_eq!(ack.code, 0x82);
    assert!(h.is_closed(conn));
}

/// A v5 CONNECT with Receive Maximum 0 (a protocol error) gets CONNACK 0x82 before the close.
#[test]
fn a_bad_v5_connect_is_answered_with_its_reason_before_the_close() {
    let mut h = Harness::new();
    let conn = h.accept();
    h.clients.get_mut(&conn).unwrap().version = V5;
    // CONNECT v5, clean start, keep alive 60, properties: Receive Maximum (0x21) = 0.
    let mut pkt = vec![0x10, 0];
    pkt.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60]);
    pkt.extend_from_slice(&[3, 0x21, 0, 0]);
    pkt.extend_from_slice(&[0, 1, b'c']);
    pkt[1] = (pkt.len() - 2) as u8;
    h.send_raw(conn, &pkt);
    assert_eq!(transmitted(&h, conn), [0x20, 0x03, 0x00, 0x82, 0x00]);
    assert!(h.is_closed(conn));
    // The same mistake in a 3.1.1 CONNECT (a property it cannot have) is not answered.
    let conn = h.accept();
    h.send_raw(
        conn,
        &[
            0x10, 0x0e, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 1, b'c', 0xff,
        ],
    );
    assert!(transmitted(&h, conn).is_empty());
    assert!(h.is_closed(conn));
}

#[test]
fn a_subscription_identifier_shared_by_two_matching_subscriptions_is_said_once() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    let opts = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        ..SubscriptionOptions::default()
    };
    let props = Properties {
        subscription_identifiers: vec![7],
        ..Properties::default()
    };
    h.subscribe_with(c, &[("a/+", opts), ("a/#", opts)], props);
    let props = Properties {
        subscription_identifiers: vec![9],
        ..Properties::default()
    };
    h.subscribe_with(c, &[("+/b", opts)], props);
    let p = h.client("p", V5);
    h.publish_with(p, publish_msg("a/b", "x", QoS::AtMostOnce));
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.subscription_identifiers, vec![7, 9]);
}

fn aliasing_harness(out: u16) -> Harness {
    let mut c = quiet_config();
    c.max_topic_alias_out = out;
    Harness::with_config(c)
}

fn topic_alias_maximum(max: u16) -> ConnectOpts {
    let mut o = ConnectOpts::default();
    o.properties.topic_alias_maximum = Some(max);
    o
}

#[test]
fn server_topic_aliases_send_a_long_topic_once_per_alias() {
    let mut h = aliasing_harness(2);
    let (s, _) = h.connect("s", V5, true, topic_alias_maximum(8));
    h.subscribe(s, "#", QoS::AtMostOnce);
    let p = h.client("p", V5);
    let long_a = format!("plant/{}/a", "x".repeat(200));
    let long_b = format!("plant/{}/b", "y".repeat(200));
    for t in [&long_a, &long_a, &long_b, &long_a, "c", &long_b] {
        h.publish_with(p, publish_msg(t, "v", QoS::AtMostOnce));
    }
    let got: Vec<(String, Option<u16>)> = h
        .publishes(s)
        .into_iter()
        .map(|m| (m.topic, m.properties.topic_alias))
        .collect();
    // Two aliases (the lower of ours and the client's); a new topic takes the number of the
    // least recently used one.
    assert_eq!(
        got,
        vec![
            (long_a.clone(), Some(1)),
            (String::new(), Some(1)),
            (long_b.clone(), Some(2)),
            (String::new(), Some(1)),
            ("c".to_owned(), Some(2)),
            // "a" was used before "c": its alias is mapped to "b" again.
            (long_b.clone(), Some(1)),
        ]
    );
}

#[test]
fn no_server_topic_aliases_unless_both_sides_allow_them() {
    // The client did not say it takes aliases.
    let mut h = aliasing_harness(16);
    let s = h.client("s", V5);
    h.subscribe(s, "#", QoS::AtMostOnce);
    let p = h.client("p", V5);
    h.publish_with(p, publish_msg("a/b", "1", QoS::AtMostOnce));
    h.publish_with(p, publish_msg("a/b", "2", QoS::AtMostOnce));
    assert!(
        h.publishes(s)
            .iter()
            .all(|m| m.properties.topic_alias.is_none())
    );
    // Off in the configuration (the default).
    let mut h = aliasing_harness(0);
    let (s, _) = h.connect("s", V5, true, topic_alias_maximum(8));
    h.subscribe(s, "#", QoS::AtMostOnce);
    let p = h.client("p", V5);
    h.publish_with(p, publish_msg("a/b", "1", QoS::AtMostOnce));
    h.publish_with(p, publish_msg("a/b", "2", QoS::AtMostOnce));
    let got = h.publishes(s);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|m| m.topic == "a/b" && m.properties.topic_alias.is_none())
    );
}
