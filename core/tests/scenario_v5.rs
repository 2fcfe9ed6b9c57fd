//! MQTT 5 features: topic aliases, maximum packet size, message expiry, and properties that
//! travel with a message.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use bytes::Bytes;
use harness::*;
use tidemq_core::Config;
use tidemq_core::codec::{Packet, Properties, ReasonCode, ReasonOnly};

fn aliased(topic: &str, alias: u16, payload: &str) -> tidemq_core::codec::Publish {
    let mut p = publish_msg(topic, payload, Q0);
    p.properties.topic_alias = Some(alias);
    p
}

#[test]
fn topic_alias_is_set_then_used_with_an_empty_topic() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.subscribe(c, "long/topic/name", Q0);
    let p = h.client("p", V5);
    h.publish_with(p, aliased("long/topic/name", 3, "first"));
    h.publish_with(p, aliased("", 3, "second"));
    let got = h.publishes(c);
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.topic == "long/topic/name"));
    assert!(
        got.iter().all(|m| m.properties.topic_alias.is_none()),
        "aliases are per connection and never forwarded"
    );
    assert!(!h.is_closed(p));
}

#[test]
fn topic_alias_can_be_remapped() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.subscribe(c, "#", Q0);
    let p = h.client("p", V5);
    h.publish_with(p, aliased("a", 1, "1"));
    h.publish_with(p, aliased("b", 1, "2"));
    h.publish_with(p, aliased("", 1, "3"));
    let topics: Vec<String> = h.publishes(c).into_iter().map(|m| m.topic).collect();
    assert_eq!(topics, ["a", "b", "b"]);
}

#[test]
fn topic_aliases_are_per_connection() {
    let mut h = Harness::new();
    let p1 = h.client("p1", V5);
    h.publish_with(p1, aliased("a", 1, "x"));
    let p2 = h.client("p2", V5);
    h.publish_with(p2, aliased("", 1, "y"));
    assert!(h.is_closed(p2));
    assert_eq!(h.disconnect_reason(p2), Some(0x82));
    assert!(!h.is_closed(p1));
}

#[test]
fn topic_alias_zero_is_disconnected_with_0x94() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish_with(p, aliased("a", 0, "x"));
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x94));
}

#[test]
fn topic_alias_above_maximum_is_disconnected_with_0x94() {
    let config = Config {
        max_topic_alias: 4,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let p = h.client("p", V5);
    h.publish_with(p, aliased("a", 4, "ok"));
    assert!(!h.is_closed(p));
    h.publish_with(p, aliased("a", 5, "x"));
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x94));
}

#[test]
fn topic_alias_when_none_allowed_is_disconnected_with_0x94() {
    let config = Config {
        max_topic_alias: 0,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (p, ack) = h.connect("p", V5, true, ConnectOpts::default());
    assert_eq!(ack.properties.topic_alias_maximum, None);
    h.publish_with(p, aliased("a", 1, "x"));
    assert_eq!(h.disconnect_reason(p), Some(0x94));
}

#[test]
fn unknown_topic_alias_with_empty_topic_is_disconnected_with_0x82() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish_with(p, aliased("", 9, "x"));
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x82));
}

#[test]
fn empty_topic_without_alias_is_disconnected_with_0x82() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    h.publish(p, "", "x", Q0, false);
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x82));
}

#[test]
fn messages_larger_than_the_client_maximum_are_dropped_not_sent() {
    let mut h = Harness::with_config(quiet_config());
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().max_packet_size(100));
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V5);
    h.publish(p, "t", &"x".repeat(200), Q1, false);
    h.publish(p, "t", "small", Q1, false);
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].payload[..], b"small");
    assert_eq!(h.stats().messages_dropped, 1);
    assert!(h.client_state(c).transmitted.len() < 200);
    // The dropped QoS 1 message holds no inflight slot: the window is free.
    h.puback(c, got[0].packet_id.unwrap());
    h.close(c);
    let (c, _) = h.connect("s", V5, false, ConnectOpts::default().max_packet_size(100));
    assert!(h.recv(c).is_empty());
}

#[test]
fn oversized_inbound_packet_is_disconnected_with_0x95() {
    let config = Config {
        max_packet_size: 256,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let p = h.client("p", V5);
    h.publish(p, "t", &"x".repeat(300), Q0, false);
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x95));
}

#[test]
fn oversized_packet_is_refused_from_its_header_alone() {
    let config = Config {
        max_packet_size: 256,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let p = h.client("p", V5);
    // PUBLISH announcing 100,000 bytes: refused before any body arrives.
    h.send_raw(p, &[0x30, 0xA0, 0x8D, 0x06]);
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x95));
}

#[test]
fn message_expiry_remaining_interval_is_forwarded() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(600));
    h.subscribe(c, "t", Q1);
    h.close(c);
    let p = h.client("p", V5);
    let mut msg = publish_msg("t", "x", Q1);
    msg.properties.message_expiry_interval = Some(60);
    h.publish_with(p, msg.clone());
    h.advance(20_000);
    let (c, _) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(600));
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].properties.message_expiry_interval, Some(40));
    // A live message keeps its full interval.
    h.publish_with(p, msg);
    assert_eq!(
        h.publishes(c)[0].properties.message_expiry_interval,
        Some(60)
    );
}

#[test]
fn expired_queued_messages_are_dropped() {
    let mut h = Harness::with_config(quiet_config());
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(600));
    h.subscribe(c, "t", Q1);
    h.close(c);
    let p = h.client("p", V5);
    let mut short = publish_msg("t", "short", Q1);
    short.properties.message_expiry_interval = Some(5);
    h.publish_with(p, short);
    h.publish(p, "t", "forever", Q1, false);
    h.advance(5_000);
    let (c, _) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(600));
    assert_eq!(h.payloads(c), ["forever"]);
    assert_eq!(h.stats().messages_dropped, 1);
}

/// v5 §3.3.2.3.3: expiry deletes a copy whose onward delivery has not started. One already
/// in flight is finished: its packet id may still be held by the client.
#[test]
fn expired_inflight_message_is_still_resent_once_delivery_started() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(600));
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V5);
    let mut short = publish_msg("t", "short", Q1);
    short.properties.message_expiry_interval = Some(5);
    h.publish_with(p, short);
    assert_eq!(h.publishes(c).len(), 1);
    h.close(c);
    h.advance(6_000);
    let (c, ack) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(600));
    assert!(ack.session_present);
    let resent = h.publishes(c);
    assert_eq!(resent.len(), 1);
    assert!(resent[0].dup);
    assert_eq!(resent[0].properties.message_expiry_interval, Some(1));
}

#[test]
fn expired_queued_message_is_not_sent() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(600));
    h.subscribe(c, "t", Q1);
    h.close(c);
    let p = h.client("p", V5);
    let mut short = publish_msg("t", "short", Q1);
    short.properties.message_expiry_interval = Some(5);
    h.publish_with(p, short);
    h.advance(6_000);
    let (c, ack) = h.connect("s", V5, false, ConnectOpts::default().session_expiry(600));
    assert!(ack.session_present);
    assert!(h.recv(c).is_empty());
}

#[test]
fn user_properties_and_request_response_properties_pass_through() {
    let mut h = Harness::new();
    let c = h.client("s", V5);
    h.subscribe(c, "req", Q1);
    let p = h.client("p", V5);
    let mut msg = publish_msg("req", "{}", Q1);
    msg.properties.user_properties = vec![
        ("a".into(), "1".into()),
        ("a".into(), "2".into()),
        ("b".into(), "3".into()),
    ];
    msg.properties.response_topic = Some("resp/p".into());
    msg.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01corr"));
    msg.properties.content_type = Some("application/json".into());
    msg.properties.payload_format_indicator = Some(1);
    h.publish_with(p, msg.clone());
    let got = h.publishes(c);
    assert_eq!(got.len(), 1);
    let props = &got[0].properties;
    assert_eq!(props.user_properties, msg.properties.user_properties);
    assert_eq!(props.response_topic, msg.properties.response_topic);
    assert_eq!(props.correlation_data, msg.properties.correlation_data);
    assert_eq!(props.content_type, msg.properties.content_type);
    assert_eq!(props.payload_format_indicator, Some(1));
}

#[test]
fn subscription_identifier_in_a_client_publish_is_a_protocol_error() {
    let mut h = Harness::new();
    let p = h.client("p", V5);
    let mut msg = publish_msg("t", "x", Q0);
    msg.properties.subscription_identifiers = vec![1];
    h.publish_with(p, msg);
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x82));
}

#[test]
fn too_many_unreleased_qos2_messages_is_disconnected_with_0x93() {
    let config = Config {
        receive_maximum: 2,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let p = h.client("p", V5);
    h.publish(p, "t", "1", Q2, false);
    h.publish(p, "t", "2", Q2, false);
    assert!(!h.is_closed(p));
    h.publish(p, "t", "3", Q2, false);
    assert!(h.is_closed(p));
    assert_eq!(h.disconnect_reason(p), Some(0x93));
}

#[test]
fn enhanced_authentication_is_refused_with_0x8c() {
    let mut h = Harness::new();
    let mut opts = ConnectOpts::default();
    opts.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (c, ack) = h.connect("c", V5, true, opts);
    assert_eq!(ack.code, 0x8C);
    assert!(h.is_closed(c));
}

#[test]
fn auth_packet_without_enhanced_authentication_is_a_protocol_error() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    h.send(
        c,
        &Packet::Auth(ReasonOnly {
            reason: ReasonCode(0x18),
            properties: Properties::default(),
        }),
    );
    assert!(h.is_closed(c));
    assert_eq!(h.disconnect_reason(c), Some(0x82));
}
