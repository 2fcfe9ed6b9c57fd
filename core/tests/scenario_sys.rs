//! `$SYS/brokers/connected`, `$SYS/brokers/disconnected` and `$SYS/brokers/client_status`
//! events, and the `$SYS/broker/...` statistics tree.

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
    let body = format!(
        r#""username":"alice","ts":{},"proto_name":"MQTT","keepalive":30,"return_code":"0","proto_ver":5,"client_id":"dev-1","clean_start":1,"IPv4":"10.1.2.3"}}"#,
        WALL + 123
    );
    // The older topic without `status`, then NanoMQ 0.24's with `status` first.
    assert_eq!(
        got,
        [
            ("$SYS/brokers/connected".to_owned(), format!("{{{body}")),
            (
                "$SYS/brokers/client_status".to_owned(),
                format!(r#"{{"status":"online",{body}"#)
            ),
        ]
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
    let body = format!(
        r#""username":"bob","ts":{},"reason_code":"0","client_id":"dev-2","IPv4":"::1"}}"#,
        WALL + 5
    );
    assert_eq!(
        got,
        [
            ("$SYS/brokers/disconnected".to_owned(), format!("{{{body}")),
            (
                "$SYS/brokers/client_status".to_owned(),
                format!(r#"{{"status":"offline",{body}"#)
            ),
        ]
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
    assert_eq!(got.len(), 2);
    for (_, payload) in &got {
        assert!(payload.contains(r#""reason_code":"8d""#), "{payload}");
    }
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
        [
            "$SYS/brokers/disconnected",
            "$SYS/brokers/client_status",
            "$SYS/brokers/connected",
            "$SYS/brokers/client_status"
        ]
    );
}

fn tree_spy(h: &mut Harness) -> ConnId {
    let s = h.client("tree", V311);
    h.subscribe(s, "$SYS/broker/#", Q0);
    h.recv(s);
    s
}

#[test]
fn the_tree_is_published_every_interval_with_mosquittos_names() {
    let mut h = Harness::with_config(Config {
        sys_interval: 10,
        ..Config::default()
    });
    let s = tree_spy(&mut h);
    h.client("other", V5);
    h.recv(s);
    h.advance_secs(10);
    let first = events(&mut h, s);
    let get = |got: &[(String, String)], t: &str| {
        got.iter()
            .find(|(topic, _)| topic == t)
            .map(|(_, p)| p.clone())
    };
    assert_eq!(
        get(&first, "$SYS/broker/uptime").as_deref(),
        Some("10 seconds")
    );
    assert_eq!(
        get(&first, "$SYS/broker/clients/connected").as_deref(),
        Some("2")
    );
    assert_eq!(
        get(&first, "$SYS/broker/subscriptions/count").as_deref(),
        Some("1")
    );
    assert!(get(&first, "$SYS/broker/retained messages/count").is_some());
    assert!(get(&first, "$SYS/broker/load/publish/received/5min").is_some());
    assert!(get(&first, "$SYS/broker/version").is_some());
    // Ten seconds on, only what changed: the uptime at least; never the version again.
    h.advance_secs(10);
    let second = events(&mut h, s);
    assert_eq!(
        get(&second, "$SYS/broker/uptime").as_deref(),
        Some("20 seconds")
    );
    assert!(get(&second, "$SYS/broker/version").is_none());
    assert!(second.len() < first.len());
    // Retained: a late subscriber gets the tree at once.
    let late = h.client("late", V5);
    h.subscribe(late, "$SYS/broker/clients/#", Q0);
    assert!(!h.recv(late).is_empty());
}

#[test]
fn the_tree_is_off_at_interval_zero_and_clients_cannot_write_it() {
    let mut h = Harness::new();
    assert_eq!(h.broker.poll_timeout(), None);
    let s = tree_spy(&mut h);
    let c = h.client("c", V5);
    h.publish(c, "$SYS/broker/uptime", "0 seconds", Q0, true);
    h.advance_secs(60);
    assert!(events(&mut h, s).is_empty());
}
