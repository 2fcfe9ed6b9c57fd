//! CONNECT and CONNACK: protocol versions, client identifiers, authentication, keepalive,
//! the connect timeout, takeover, shutdown and configuration changes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use std::collections::BTreeMap;

use harness::*;
use tidemq_core::codec::Packet;
use tidemq_core::{BrokerEvent, Config, Input};

fn users_config(allow_anonymous: bool) -> Config {
    Config {
        allow_anonymous,
        users: BTreeMap::from([("alice".to_owned(), "secret".to_owned())]),
        ..Config::default()
    }
}

#[test]
fn connect_v31_is_accepted() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("c31", V31, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert!(!ack.session_present);
    assert!(ack.properties.is_empty());
    assert!(!h.is_closed(conn));
    assert!(h.events.iter().any(|e| matches!(e,
        BrokerEvent::ClientConnected { client_id, protocol: 3, .. } if client_id == "c31")));
}

#[test]
fn connect_v311_is_accepted() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("c311", V311, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert!(!ack.session_present);
    assert!(!h.is_closed(conn));
    assert_eq!(h.stats().connections, 1);
    assert_eq!(h.stats().sessions, 1);
}

#[test]
fn connect_v5_connack_advertises_server_limits() {
    let config = Config {
        max_packet_size: 4096,
        receive_maximum: 10,
        max_topic_alias: 7,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (_, ack) = h.connect("c5", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert_eq!(ack.properties.maximum_packet_size, Some(4096));
    assert_eq!(ack.properties.receive_maximum, Some(10));
    assert_eq!(ack.properties.topic_alias_maximum, Some(7));
    assert_eq!(ack.properties.assigned_client_identifier, None);
}

#[test]
fn v5_empty_client_id_gets_assigned_client_identifier() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id.is_empty());
    // The assigned id is a real session: another client can take it over.
    let (_, ack2) = h.connect(&id, V5, false, ConnectOpts::default());
    assert_eq!(ack2.code, 0);
    assert_eq!(h.disconnect_reason(conn), Some(0x8E));
}

#[test]
fn two_empty_client_ids_get_distinct_assigned_identifiers() {
    let mut h = Harness::new();
    let (a, ack_a) = h.connect("", V5, true, ConnectOpts::default());
    let (b, ack_b) = h.connect("", V5, true, ConnectOpts::default());
    let id_a = ack_a.properties.assigned_client_identifier.unwrap();
    let id_b = ack_b.properties.assigned_client_identifier.unwrap();
    assert_ne!(id_a, id_b);
    assert!(!h.is_closed(a) && !h.is_closed(b));
}

#[test]
fn v311_empty_client_id_with_clean_session_is_accepted() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("", V311, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert!(!h.is_closed(conn));
    // It works like any client.
    h.subscribe(conn, "t", Q0);
    h.publish(conn, "t", "hi", Q0, false);
    assert_eq!(h.payloads(conn), ["hi"]);
}

#[test]
fn v311_empty_client_id_with_persistent_session_is_refused_0x02_and_closed() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("", V311, false, ConnectOpts::default());
    assert_eq!(ack.code, 0x02);
    assert!(!ack.session_present);
    assert!(h.is_closed(conn));
    assert_eq!(h.stats().sessions, 0);
}

#[test]
fn v31_empty_client_id_is_refused_0x02() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("", V31, true, ConnectOpts::default());
    assert_eq!(ack.code, 0x02);
    assert!(h.is_closed(conn));
}

#[test]
fn client_id_longer_than_allowed_is_refused() {
    let config = Config {
        max_client_id_len: 8,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (conn, ack) = h.connect("123456789", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0x85);
    assert!(h.is_closed(conn));
}

#[test]
fn unsupported_protocol_level_gets_connack_0x01_and_close() {
    let mut h = Harness::new();
    let conn = h.accept();
    // CONNECT "MQTT" level 6, clean start, keepalive 0, client id "x".
    h.send_raw(
        conn,
        &[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 0, 0, 1, b'x',
        ],
    );
    let packets = h.recv(conn);
    assert!(
        matches!(packets.as_slice(), [Packet::ConnAck(a)] if a.code == 0x01),
        "{packets:?}"
    );
    assert!(h.is_closed(conn));
}

#[test]
fn unknown_protocol_name_is_closed_without_reply() {
    let mut h = Harness::new();
    let conn = h.accept();
    h.send_raw(
        conn,
        &[
            0x10, 13, 0, 4, b'M', b'Q', b'T', b'X', 4, 0x02, 0, 0, 0, 1, b'x',
        ],
    );
    assert!(h.recv(conn).is_empty());
    assert!(h.is_closed(conn));
}

#[test]
fn v311_wrong_password_is_refused_0x04_and_closed() {
    let mut h = Harness::with_config(users_config(true));
    let opts = ConnectOpts::default().user("alice", "wrong");
    let (conn, ack) = h.connect("c", V311, true, opts);
    assert_eq!(ack.code, 0x04);
    assert!(h.is_closed(conn));
    assert!(h.events.iter().any(|e| matches!(
        e,
        BrokerEvent::ConnectRefused {
            reason_code: tidemq_core::codec::ReasonCode(0x86),
            ..
        }
    )));
}

#[test]
fn v5_wrong_password_is_refused_0x86_and_closed() {
    let mut h = Harness::with_config(users_config(true));
    let opts = ConnectOpts::default().user("alice", "wrong");
    let (conn, ack) = h.connect("c", V5, true, opts);
    assert_eq!(ack.code, 0x86);
    assert!(h.is_closed(conn));
    assert_eq!(h.stats().sessions, 0);
}

#[test]
fn v5_unknown_user_is_refused_0x86() {
    let mut h = Harness::with_config(users_config(true));
    let (conn, ack) = h.connect("c", V5, true, ConnectOpts::default().user("bob", "x"));
    assert_eq!(ack.code, 0x86);
    assert!(h.is_closed(conn));
}

#[test]
fn right_password_is_accepted() {
    let mut h = Harness::with_config(users_config(false));
    for version in [V31, V311, V5] {
        let opts = ConnectOpts::default().user("alice", "secret");
        let (conn, ack) = h.connect("c", version, true, opts);
        assert_eq!(ack.code, 0, "{version:?}");
        assert!(!h.is_closed(conn));
    }
}

#[test]
fn password_prefix_is_not_accepted() {
    let mut h = Harness::with_config(users_config(true));
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default().user("alice", "secre"));
    assert_eq!(ack.code, 0x86);
    let (_, ack) = h.connect(
        "c",
        V5,
        true,
        ConnectOpts::default().user("alice", "secrets"),
    );
    assert_eq!(ack.code, 0x86);
}

#[test]
fn v311_anonymous_is_refused_0x05_when_not_allowed() {
    let mut h = Harness::with_config(users_config(false));
    let (conn, ack) = h.connect("c", V311, true, ConnectOpts::default());
    assert_eq!(ack.code, 0x05);
    assert!(h.is_closed(conn));
}

#[test]
fn v5_anonymous_is_refused_0x87_when_not_allowed() {
    let mut h = Harness::with_config(users_config(false));
    let (conn, ack) = h.connect("c", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0x87);
    assert!(h.is_closed(conn));
}

#[test]
fn anonymous_is_accepted_when_allowed() {
    let mut h = Harness::with_config(users_config(true));
    let (conn, ack) = h.connect("c", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert!(!h.is_closed(conn));
}

#[test]
fn refused_connect_publishes_no_will() {
    let mut h = Harness::with_config(users_config(true));
    let watcher = h.client("watcher", V311);
    h.subscribe(watcher, "will/#", Q0);
    let opts = ConnectOpts::default()
        .user("alice", "wrong")
        .will("will/x", "gone", Q0, false);
    let (conn, ack) = h.connect("c", V311, true, opts);
    assert_eq!(ack.code, 0x04);
    assert!(h.is_closed(conn));
    assert!(h.recv(watcher).is_empty());
}

#[test]
fn keepalive_closes_after_one_and_a_half_times_silence_not_before() {
    let mut h = Harness::new();
    let (conn, _) = h.connect("k", V311, true, ConnectOpts::default().keep_alive(10));
    h.advance(14_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
    assert!(h.recv(conn).is_empty(), "v3 gets no DISCONNECT");
}

#[test]
fn pingreq_keeps_the_connection_alive() {
    let mut h = Harness::new();
    let (conn, _) = h.connect("k", V311, true, ConnectOpts::default().keep_alive(10));
    for _ in 0..10 {
        h.advance(9_000);
        h.ping(conn);
        assert!(matches!(h.recv_one(conn), Packet::PingResp));
    }
    assert!(!h.is_closed(conn));
    h.advance(15_000);
    assert!(h.is_closed(conn));
}

#[test]
fn any_packet_counts_as_keepalive_activity() {
    let mut h = Harness::new();
    let (conn, _) = h.connect("k", V5, true, ConnectOpts::default().keep_alive(2));
    for _ in 0..5 {
        h.advance(2_900);
        h.publish(conn, "t", "x", Q0, false);
    }
    assert!(!h.is_closed(conn));
}

#[test]
fn v5_keepalive_timeout_sends_disconnect_0x8d() {
    let mut h = Harness::new();
    let (conn, _) = h.connect("k", V5, true, ConnectOpts::default().keep_alive(4));
    h.advance(6_000);
    assert!(h.is_closed(conn));
    assert_eq!(h.disconnect_reason(conn), Some(0x8D));
}

#[test]
fn keepalive_zero_never_times_out() {
    let mut h = Harness::new();
    let (conn, _) = h.connect("k", V5, true, ConnectOpts::default());
    h.advance(100_000_000);
    assert!(!h.is_closed(conn));
    assert_eq!(h.broker.poll_timeout(), None);
}

#[test]
fn v5_keepalive_above_max_gets_server_keep_alive() {
    let config = Config {
        max_keepalive: 30,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (conn, ack) = h.connect("k", V5, true, ConnectOpts::default().keep_alive(600));
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    h.advance(45_000);
    assert!(h.is_closed(conn));
}

#[test]
fn v311_keepalive_above_max_is_held_to_max() {
    let config = Config {
        max_keepalive: 30,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (conn, _) = h.connect("k", V311, true, ConnectOpts::default().keep_alive(600));
    h.advance(44_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}

#[test]
fn v311_keepalive_zero_is_held_to_max() {
    let config = Config {
        max_keepalive: 30,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (conn, _) = h.connect("k", V311, true, ConnectOpts::default());
    h.advance(45_000);
    assert!(h.is_closed(conn));
}

#[test]
fn keepalive_below_max_is_kept() {
    let config = Config {
        max_keepalive: 30,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (conn, ack) = h.connect("k", V5, true, ConnectOpts::default().keep_alive(10));
    assert_eq!(ack.properties.server_keep_alive, None);
    h.advance(14_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
}

#[test]
fn connect_timeout_closes_a_silent_connection() {
    let config = Config {
        connect_timeout_ms: 5_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let conn = h.accept();
    h.advance(4_999);
    assert!(!h.is_closed(conn));
    h.advance(1);
    assert!(h.is_closed(conn));
    assert!(h.recv(conn).is_empty());
}

#[test]
fn connect_timeout_is_not_reset_by_a_partial_connect() {
    let config = Config {
        connect_timeout_ms: 5_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let conn = h.accept();
    h.advance(4_000);
    h.send_raw(conn, &[0x10, 13, 0, 4, b'M']);
    h.advance(1_000);
    assert!(h.is_closed(conn));
}

#[test]
fn connect_in_time_stops_the_connect_timeout() {
    let config = Config {
        connect_timeout_ms: 5_000,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let conn = h.accept();
    h.advance(4_000);
    let ack = h.connect_on(conn, "c", V311, true, ConnectOpts::default());
    assert_eq!(ack.unwrap().code, 0);
    h.advance(60_000);
    assert!(!h.is_closed(conn));
}

#[test]
fn takeover_disconnects_old_v5_connection_with_0x8e_and_new_one_works() {
    let mut h = Harness::new();
    let (old, _) = h.connect("dup", V5, false, ConnectOpts::default().session_expiry(60));
    h.subscribe(old, "t", Q1);
    let (new, ack) = h.connect("dup", V5, false, ConnectOpts::default().session_expiry(60));
    assert_eq!(ack.code, 0);
    assert!(ack.session_present);
    assert!(h.is_closed(old));
    assert_eq!(h.disconnect_reason(old), Some(0x8E));
    assert!(!h.is_closed(new));
    h.publish(new, "t", "m", Q0, false);
    assert_eq!(h.payloads(new), ["m"]);
    assert_eq!(h.stats().connections, 1);
    assert_eq!(h.stats().sessions, 1);
}

#[test]
fn takeover_closes_old_v311_connection_without_disconnect() {
    let mut h = Harness::new();
    let old = h.client("dup", V311);
    let new = h.client("dup", V311);
    assert!(h.is_closed(old));
    assert!(h.recv(old).is_empty());
    assert!(!h.is_closed(new));
}

#[test]
fn shutdown_sends_v5_disconnect_0x8b_and_closes_everyone() {
    let mut h = Harness::new();
    let v5 = h.client("five", V5);
    let v3 = h.client("three", V311);
    let waiting = h.accept();
    h.input(Input::Shutdown);
    assert_eq!(h.disconnect_reason(v5), Some(0x8B));
    assert!(h.recv(v3).is_empty());
    assert!(h.recv(waiting).is_empty());
    assert!(h.is_closed(v5) && h.is_closed(v3) && h.is_closed(waiting));
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn shutdown_publishes_no_wills() {
    let mut h = Harness::new();
    let (_, _) = h.connect(
        "w",
        V311,
        true,
        ConnectOpts::default().will("will/w", "x", Q0, true),
    );
    h.input(Input::Shutdown);
    assert_eq!(h.stats().retained, 0);
}

#[test]
fn invalid_config_change_is_rejected_and_old_config_kept() {
    let mut h = Harness::new();
    let bad = Config {
        msq_len: 0,
        ..Config::default()
    };
    h.input(Input::ConfigChange(Box::new(bad)));
    assert!(h.events.iter().any(|e| matches!(e,
        BrokerEvent::ConfigRejected { error } if error.key == "msq_len")));
    assert_eq!(h.broker.config(), &Config::default());
}

#[test]
fn valid_config_change_applies_to_new_connections() {
    let mut h = Harness::new();
    let new = Config {
        allow_anonymous: false,
        ..Config::default()
    };
    let before = h.client("before", V5);
    h.input(Input::ConfigChange(Box::new(new.clone())));
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, BrokerEvent::ConfigApplied))
    );
    assert_eq!(h.broker.config(), &new);
    let (_, ack) = h.connect("after", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0x87);
    assert!(!h.is_closed(before));
}

#[test]
fn config_change_keeps_limits_advertised_to_connected_clients() {
    let mut h = Harness::new();
    let (conn, ack) = h.connect("c", V5, true, ConnectOpts::default());
    assert_eq!(ack.properties.topic_alias_maximum, Some(1024));
    assert_eq!(ack.properties.receive_maximum, Some(1024));
    h.subscribe(conn, "t/#", Q0);
    let smaller = Config {
        max_topic_alias: 2,
        receive_maximum: 1,
        max_packet_size: 64,
        ..Config::default()
    };
    h.input(Input::ConfigChange(Box::new(smaller)));
    // Topic alias 100 was allowed when this client connected.
    let mut p = publish_msg("t/a", "aliased", Q0);
    p.properties.topic_alias = Some(100);
    h.publish_with(conn, p);
    // Two unreleased QoS 2 messages were allowed too.
    h.publish(conn, "t/b", "q2-1", Q2, false);
    h.publish(conn, "t/b", "q2-2", Q2, false);
    // And packets bigger than the new maximum.
    h.publish(conn, "t/c", &"x".repeat(100), Q0, false);
    assert!(!h.is_closed(conn));
    let got: Vec<String> = h
        .recv(conn)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p.topic),
            _ => None,
        })
        .collect();
    assert_eq!(got, ["t/a", "t/b", "t/b", "t/c"]);
    // A new connection gets the new limits.
    let (_, ack) = h.connect("d", V5, true, ConnectOpts::default());
    assert_eq!(ack.properties.topic_alias_maximum, Some(2));
}
