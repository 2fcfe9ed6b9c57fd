//! `$SYS/brokers/connected` and `$SYS/brokers/disconnected` events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::{Config, ConnId, Input};

const WALL: u64 = 1_700_000_000_000;

fn spy(h: &mut Harness) -> ConnId {
    let s = h.client("spy", V311);
    h.subscribe(s, "$SYS/brokers/+", Q0);
    h.recv(s);
    s
}

fn events(h: &mut Harness, spy: ConnId) -> Vec<(String, String)> {
    h.publishes(spy)
        .into_iter()
        .map(|p| (p.topic, String::from_utf8(p.payload.to_vec()).unwrap()))
        .collect()
}

#[test]
fn connected_event_has_nanomq_keys_in_order() {
    let mut h = Harness::new();
    h.input(Input::WallClock { unix_ms: WALL });
    let s = spy(&mut h);
    h.advance(123);
    let conn = h.accept_from("10.1.2.3:51000");
    let opts = ConnectOpts::default().keep_alive(30).user("alice", "pw");
    h.connect_on(conn, "dev-1", V5, true, opts).unwrap();
    let got = events(&mut h, s);
    assert_eq!(
        got,
        [(
            "$SYS/brokers/connected".to_owned(),
            format!(
                r#"{{"username":"alice","ts":{},"proto_name":"MQTT","keepalive":30,"return_code":"0","proto_ver":5,"client_id":"dev-1","clean_start":1,"IPv4":"10.1.2.3"}}"#,
                WALL + 123
            )
        )]
    );
}

#[test]
fn connected_event_for_v31_anonymous_persistent_client() {
    let mut h = Harness::new();
    let s = spy(&mut h);
    let conn = h.accept_from("192.168.0.9:1234");
    h.connect_on(conn, "old", V31, false, ConnectOpts::default())
        .unwrap();
    let got = events(&mut h, s);
    assert_eq!(
        got[0].1,
        r#"{"username":"","ts":0,"proto_name":"MQIsdp","keepalive":0,"return_code":"0","proto_ver":3,"client_id":"old","clean_start":0,"IPv4":"192.168.0.9"}"#
    );
}

#[test]
fn disconnected_event_has_nanomq_keys_in_order() {
    let mut h = Harness::new();
    h.input(Input::WallClock { unix_ms: WALL });
    let s = spy(&mut h);
    let conn = h.accept_from("[::1]:7000");
    h.connect_on(
        conn,
        "dev-2",
        V5,
        true,
        ConnectOpts::default().username("bob"),
    )
    .unwrap();
    h.recv(s);
    h.advance(5);
    h.disconnect(conn, 0);
    let got = events(&mut h, s);
    assert_eq!(
        got,
        [(
            "$SYS/brokers/disconnected".to_owned(),
            format!(
                r#"{{"username":"bob","ts":{},"reason_code":"0","client_id":"dev-2","IPv4":"::1"}}"#,
                WALL + 5
            )
        )]
    );
}

#[test]
fn disconnected_event_reports_the_reason_code() {
    let mut h = Harness::new();
    let s = spy(&mut h);
    let (c, _) = h.connect("k", V5, true, ConnectOpts::default().keep_alive(1));
    h.recv(s);
    h.advance(1_500);
    assert!(h.is_closed(c));
    let got = events(&mut h, s);
    assert_eq!(got.len(), 1);
    assert!(got[0].1.contains(r#""reason_code":"8d""#), "{}", got[0].1);
}

#[test]
fn sys_events_are_not_matched_by_hash() {
    let mut h = Harness::new();
    let all = h.client("all", V5);
    h.subscribe(all, "#", Q0);
    h.subscribe(all, "+/brokers/+", Q0);
    let c = h.client("c", V5);
    h.disconnect(c, 0);
    assert!(h.recv(all).is_empty());
}

#[test]
fn sys_events_can_be_turned_off() {
    let config = Config {
        sys_events: false,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let s = spy(&mut h);
    let c = h.client("c", V5);
    h.close(c);
    assert!(h.recv(s).is_empty());
}

#[test]
fn no_disconnected_event_for_a_connection_that_never_connected() {
    let mut h = Harness::new();
    let s = spy(&mut h);
    let c = h.accept();
    h.close(c);
    let (r, ack) = h.connect(
        "refused",
        V311,
        false,
        ConnectOpts::default().will("$SYS/x", "", Q0, false),
    );
    assert_ne!(ack.code, 0);
    assert!(h.is_closed(r));
    assert!(h.recv(s).is_empty());
}

#[test]
fn takeover_reports_disconnect_then_connect() {
    let mut h = Harness::new();
    let s = spy(&mut h);
    h.client("c", V5);
    h.recv(s);
    h.client("c", V5);
    let topics: Vec<String> = events(&mut h, s).into_iter().map(|e| e.0).collect();
    assert_eq!(
        topics,
        ["$SYS/brokers/disconnected", "$SYS/brokers/connected"]
    );
}
