//! SUBSCRIBE/UNSUBSCRIBE, topic matching, and QoS 0/1/2 in both directions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Packet, Properties, QoS, SubscriptionOptions};

fn topics(h: &mut Harness, conn: tidemq_core::ConnId) -> Vec<String> {
    h.publishes(conn).into_iter().map(|p| p.topic).collect()
}

#[test]
fn suback_grants_the_requested_qos_per_filter() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let ack = h.subscribe_with(
        c,
        &[
            ("a", sub_opts(Q0)),
            ("b", sub_opts(Q1)),
            ("c", sub_opts(Q2)),
        ],
        Properties::default(),
    );
    assert_eq!(ack.reasons, [0, 1, 2]);
    assert_eq!(h.stats().subscriptions, 3);
}

#[test]
fn invalid_filter_gets_failure_reason_in_suback() {
    let mut h = Harness::new();
    let v3 = h.client("three", V311);
    let ack = h.subscribe_with(
        v3,
        &[("a/#/b", sub_opts(Q0)), ("ok", sub_opts(Q1))],
        Properties::default(),
    );
    assert_eq!(ack.reasons, [0x80, 1]);
    let v5 = h.client("five", V5);
    let ack = h.subscribe(v5, "a+", Q0);
    assert_eq!(ack.reasons, [0x8F]);
    assert!(!h.is_closed(v3) && !h.is_closed(v5));
}

#[test]
fn plus_matches_exactly_one_level() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    h.subscribe(c, "a/+/c", Q0);
    for t in ["a/b/c", "a/x/c", "a//c", "a/b", "a/b/c/d", "b/b/c"] {
        h.publish(c, t, "x", Q0, false);
    }
    assert_eq!(topics(&mut h, c), ["a/b/c", "a/x/c", "a//c"]);
}

#[test]
fn hash_matches_the_parent_and_every_descendant() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.subscribe(c, "a/#", Q0);
    for t in ["a", "a/b", "a/b/c", "ab", "b/a"] {
        h.publish(c, t, "x", Q0, false);
    }
    assert_eq!(topics(&mut h, c), ["a", "a/b", "a/b/c"]);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    let mut h = Harness::new();
    let all = h.client("all", V311);
    h.subscribe(all, "#", Q0);
    let plus = h.client("plus", V311);
    h.subscribe(plus, "+/x", Q0);
    let dollar = h.client("dollar", V311);
    h.subscribe(dollar, "$app/#", Q0);
    let publisher = h.client("p", V311);
    h.publish(publisher, "$app/x", "d", Q0, false);
    h.publish(publisher, "app/x", "n", Q0, false);
    assert_eq!(topics(&mut h, all), ["app/x"]);
    assert_eq!(topics(&mut h, plus), ["app/x"]);
    assert_eq!(topics(&mut h, dollar), ["$app/x"]);
}

#[test]
fn unsubscribe_stops_delivery() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    h.subscribe(c, "a/+", Q1);
    let ack = h.unsubscribe(c, &["a/+"]);
    assert!(ack.reasons.is_empty(), "3.1.1 UNSUBACK has no reasons");
    h.publish(c, "a/b", "x", Q0, false);
    assert!(h.recv(c).is_empty());
    assert_eq!(h.stats().subscriptions, 0);
}

#[test]
fn v5_unsubscribe_reports_missing_subscription_0x11() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.subscribe(c, "a", Q0);
    let ack = h.unsubscribe(c, &["a", "b", "bad/#/x"]);
    assert_eq!(ack.reasons, [0x00, 0x11, 0x8F]);
}

#[test]
fn resubscribing_replaces_the_options() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t", Q2);
    h.subscribe(c, "t", Q0);
    assert_eq!(h.stats().subscriptions, 1);
    h.publish(p, "t", "x", Q2, false);
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, Q0);
}

#[test]
fn overlapping_subscriptions_deliver_once_with_the_highest_qos() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "a/#", Q0);
    h.subscribe(c, "a/+", Q1);
    h.subscribe(c, "a/b", Q0);
    h.publish(p, "a/b", "x", Q2, false);
    let got = h.publishes(c);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].qos, Q1);
}

#[test]
fn overlapping_subscriptions_carry_every_subscription_identifier() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    let p = h.client("p", V5);
    for (filter, id) in [("a/#", 1), ("a/+", 22), ("a/b", 333), ("x", 4)] {
        let props = Properties {
            subscription_identifiers: vec![id],
            ..Properties::default()
        };
        h.subscribe_with(c, &[(filter, sub_opts(Q1))], props);
    }
    h.subscribe(c, "a/b/#", Q0); // no identifier
    h.publish(p, "a/b", "x", Q1, false);
    h.recv(p);
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    let mut ids = got[0].properties.subscription_identifiers.clone();
    ids.sort_unstable();
    assert_eq!(ids, [1, 22, 333]);
}

#[test]
fn qos0_publish_is_delivered_at_qos0() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t", Q2);
    h.publish(p, "t", "hello", Q0, false);
    assert!(h.recv(p).is_empty(), "QoS 0 is not acknowledged");
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, Q0);
    assert_eq!(got[0].packet_id, None);
    assert_eq!(&got[0].payload[..], b"hello");
    assert!(!got[0].retain && !got[0].dup);
}

#[test]
fn qos1_publish_is_acknowledged_and_delivered() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t", Q1);
    let pid = h.publish(p, "t", "one", Q1, false).unwrap();
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == pid && a.reason == 0));
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, Q1);
    assert!(got[0].packet_id.is_some());
}

#[test]
fn delivered_qos_is_the_lower_of_publish_and_subscription() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    let p = h.client("p", V5);
    h.subscribe(c, "low", Q1);
    h.subscribe(c, "high", Q2);
    h.publish(p, "low", "x", Q2, false);
    h.publish(p, "high", "x", Q1, false);
    let got: Vec<(String, QoS)> = h
        .publishes(c)
        .into_iter()
        .map(|p| (p.topic, p.qos))
        .collect();
    assert_eq!(got, [("low".to_owned(), Q1), ("high".to_owned(), Q1)]);
}

#[test]
fn qos2_inbound_flow_delivers_on_publish_and_completes_on_pubrel() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t", Q2);
    let pid = h.publish(p, "t", "two", Q2, false).unwrap();
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == pid));
    assert_eq!(h.publishes(c).len(), 1);
    h.pubrel(p, pid);
    assert!(matches!(h.recv_one(p), Packet::PubComp(a) if a.packet_id == pid && a.reason == 0));
}

#[test]
fn qos2_exactly_once_with_duplicate_publish() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    let p = h.client("p", V5);
    h.subscribe(c, "t", Q2);
    let mut msg = publish_msg("t", "once", Q2);
    msg.packet_id = Some(7);
    h.publish_with(p, msg.clone());
    msg.dup = true;
    h.publish_with(p, msg.clone());
    h.publish_with(p, msg.clone());
    let acks = h.recv(p);
    assert_eq!(acks.len(), 3);
    assert!(
        acks.iter()
            .all(|a| matches!(a, Packet::PubRec(a) if a.packet_id == 7))
    );
    assert_eq!(h.payloads(c), ["once"]);
    // After PUBREL the id is free again: the same id is a new message.
    h.pubrel(p, 7);
    h.recv(p);
    msg.dup = false;
    msg.payload = "again".into();
    h.publish_with(p, msg);
    assert_eq!(h.payloads(c), ["again"]);
}

#[test]
fn qos2_outbound_flow_holds_the_slot_until_pubcomp() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().receive_maximum(1));
    let p = h.client("p", V5);
    h.subscribe(c, "t", Q2);
    h.publish(p, "t", "a", Q2, false);
    h.publish(p, "t", "b", Q2, false);
    let first = h.publishes(c);
    assert_eq!(first.len(), 1);
    let pid = first[0].packet_id.unwrap();
    h.pubrec(c, pid);
    assert!(matches!(h.recv_one(c), Packet::PubRel(a) if a.packet_id == pid));
    h.pubcomp(c, pid);
    assert_eq!(h.payloads(c), ["b"]);
}

#[test]
fn v5_pubrel_for_unknown_packet_id_gets_pubcomp_0x92() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.pubrel(c, 42);
    assert!(matches!(h.recv_one(c), Packet::PubComp(a) if a.packet_id == 42 && a.reason == 0x92));
    assert!(!h.is_closed(c));
}

#[test]
fn v311_pubrel_for_unknown_packet_id_gets_plain_pubcomp() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    h.pubrel(c, 42);
    assert!(matches!(h.recv_one(c), Packet::PubComp(a) if a.packet_id == 42 && a.reason == 0));
}

#[test]
fn v5_pubrec_for_unknown_packet_id_gets_pubrel_0x92() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.pubrec(c, 9);
    assert!(matches!(h.recv_one(c), Packet::PubRel(a) if a.packet_id == 9 && a.reason == 0x92));
}

#[test]
fn inflight_window_respects_client_receive_maximum_and_drains_on_puback() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().receive_maximum(2));
    let p = h.client("p", V5);
    h.subscribe(c, "t", Q1);
    for i in 0..5 {
        h.publish(p, "t", &i.to_string(), Q1, false);
    }
    let first = h.publishes(c);
    assert_eq!(
        first.iter().map(|p| &p.payload[..]).collect::<Vec<_>>(),
        [b"0", b"1"]
    );
    h.puback(c, first[0].packet_id.unwrap());
    let second = h.publishes(c);
    assert_eq!(&second[0].payload[..], b"2");
    // A QoS 0 message is not held back by the window, but keeps its place in line.
    h.publish(p, "t", "q0", Q0, false);
    assert!(h.recv(c).is_empty());
    h.puback(c, first[1].packet_id.unwrap());
    let third = h.publishes(c);
    assert_eq!(&third[0].payload[..], b"3");
    h.puback(c, second[0].packet_id.unwrap());
    assert_eq!(h.payloads(c), ["4", "q0"]);
}

#[test]
fn inflight_window_respects_configured_max_inflight() {
    let config = tidemq_core::Config {
        max_inflight: 3,
        ..tidemq_core::Config::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t", Q1);
    for i in 0..10 {
        h.publish(p, "t", &i.to_string(), Q1, false);
    }
    let got = h.publishes(c);
    assert_eq!(got.len(), 3);
    for m in &got {
        h.puback(c, m.packet_id.unwrap());
    }
    assert_eq!(h.payloads(c), ["3", "4", "5"]);
}

#[test]
fn messages_keep_their_publish_order() {
    let mut h = Harness::new();
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t/#", Q1);
    let sent: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        let qos = [Q0, Q1, Q2][i % 3];
        h.publish(p, "t/x", m, qos, false);
    }
    let got = h.publishes(c);
    for m in &got {
        if let Some(pid) = m.packet_id {
            h.puback(c, pid);
        }
    }
    let got: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(got, sent);
}

#[test]
fn no_local_suppresses_own_messages() {
    let mut h = Harness::new();
    let c = h.client("self", V5);
    let other = h.client("other", V5);
    let opts = SubscriptionOptions {
        no_local: true,
        ..sub_opts(Q0)
    };
    h.subscribe_with(c, &[("t", opts)], Properties::default());
    h.subscribe(other, "t", Q0);
    h.publish(c, "t", "mine", Q0, false);
    assert!(h.recv(c).is_empty());
    assert_eq!(h.payloads(other), ["mine"]);
    h.publish(other, "t", "theirs", Q0, false);
    assert_eq!(h.payloads(c), ["theirs"]);
}

#[test]
fn v5_publish_reaches_v3_subscribers_without_properties() {
    let mut h = Harness::new();
    let v3 = h.client("three", V311);
    let v31 = h.client("old", V31);
    let p = h.client("p", V5);
    h.subscribe(v3, "t", Q1);
    h.subscribe(v31, "t", Q1);
    let mut msg = publish_msg("t", "cross", Q1);
    msg.properties.user_properties = vec![("k".into(), "v".into())];
    msg.properties.message_expiry_interval = Some(60);
    h.publish_with(p, msg);
    assert_eq!(h.payloads(v3), ["cross"]);
    assert_eq!(h.payloads(v31), ["cross"]);
}

#[test]
fn v5_publish_to_sys_is_denied_with_0x87() {
    let mut h = Harness::new();
    let watcher = h.client("w", V311);
    h.subscribe(watcher, "$SYS/#", Q1);
    let p = h.client("p", V5);
    h.recv(watcher);
    let pid = h
        .publish(p, "$SYS/brokers/connected", "{}", Q1, true)
        .unwrap();
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == pid && a.reason == 0x87));
    let pid = h.publish(p, "$SYS/x", "{}", Q2, false).unwrap();
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == pid && a.reason == 0x87));
    assert!(h.recv(watcher).is_empty());
    assert_eq!(h.stats().retained, 0);
}

#[test]
fn v311_publish_to_sys_is_silently_dropped() {
    let mut h = Harness::new();
    let watcher = h.client("w", V311);
    h.subscribe(watcher, "$SYS/#", Q1);
    let p = h.client("p", V311);
    h.recv(watcher);
    let pid = h
        .publish(p, "$SYS/brokers/connected", "{}", Q1, false)
        .unwrap();
    assert!(matches!(h.recv_one(p), Packet::PubAck(a) if a.packet_id == pid));
    h.publish(p, "$SYS/x", "{}", Q0, false);
    assert!(h.recv(watcher).is_empty());
    assert!(!h.is_closed(p));
}

#[test]
fn publish_with_wildcard_topic_is_a_protocol_violation() {
    let mut h = Harness::new();
    let c = h.client("p", V5);
    h.publish(c, "a/+", "x", Q0, false);
    assert!(h.is_closed(c));
    assert_eq!(h.disconnect_reason(c), Some(0x90));
}

#[test]
fn messages_are_counted() {
    let mut h = Harness::with_config(quiet_config());
    let c = h.client("s", V311);
    let p = h.client("p", V311);
    h.subscribe(c, "t", Q0);
    h.publish(p, "t", "a", Q0, false);
    h.publish(p, "nobody", "b", Q0, false);
    let s = h.stats();
    assert_eq!(s.messages_received, 2);
    assert_eq!(s.messages_sent, 1);
    assert_eq!(s.messages_dropped, 0);
}

#[test]
fn subscriptions_beyond_the_quota_are_refused() {
    let config = tidemq_core::Config {
        max_subscriptions: 2,
        ..tidemq_core::Config::default()
    };
    let mut h = Harness::with_config(config);
    let v5 = h.client("five", V5);
    let ack = h.subscribe_with(
        v5,
        &[
            ("a", sub_opts(Q0)),
            ("b", sub_opts(Q0)),
            ("c", sub_opts(Q0)),
        ],
        Properties::default(),
    );
    assert_eq!(ack.reasons, [0, 0, 0x97]);
    // Replacing an existing subscription is not a new one.
    assert_eq!(h.subscribe(v5, "a", Q1).reasons, [1]);
    let v3 = h.client("three", V311);
    h.subscribe(v3, "a", Q0);
    h.subscribe(v3, "b", Q0);
    assert_eq!(h.subscribe(v3, "c", Q0).reasons, [0x80]);
}
