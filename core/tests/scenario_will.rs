//! Will messages: when they are published, when not, and the v5 will delay.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::ConnId;
use tidemq_core::codec::{ProtocolVersion, Publish};

fn watcher(h: &mut Harness) -> ConnId {
    let w = h.client("watcher", V5);
    h.subscribe(w, "will/#", Q2);
    w
}

fn with_will(
    h: &mut Harness,
    id: &str,
    version: ProtocolVersion,
    opts: ConnectOpts,
) -> (ConnId, ConnId) {
    let w = watcher(h);
    let (conn, ack) = h.connect(id, version, true, opts);
    assert_eq!(ack.code, 0);
    (w, conn)
}

fn wills(h: &mut Harness, w: ConnId) -> Vec<Publish> {
    h.publishes(w)
}

#[test]
fn will_is_published_on_abrupt_close() {
    for version in [V31, V311, V5] {
        let mut h = Harness::new();
        let opts = ConnectOpts::default().will("will/c", "bye", Q1, false);
        let (w, c) = with_will(&mut h, "c", version, opts);
        h.close(c);
        let got = wills(&mut h, w);
        assert_eq!(got.len(), 1, "{version:?}");
        assert_eq!(got[0].topic, "will/c");
        assert_eq!(&got[0].payload[..], b"bye");
        assert_eq!(got[0].qos, Q1);
    }
}

#[test]
fn will_is_published_on_keepalive_timeout() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .keep_alive(2)
        .will("will/c", "timeout", Q0, false);
    let (w, c) = with_will(&mut h, "c", V311, opts);
    h.advance(2_999);
    assert!(wills(&mut h, w).is_empty());
    h.advance(1);
    assert!(h.is_closed(c));
    assert_eq!(h.payloads(w), ["timeout"]);
}

#[test]
fn will_is_published_on_protocol_error() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().will("will/c", "broken", Q0, false);
    let (w, c) = with_will(&mut h, "c", V311, opts);
    h.send_raw(c, &[0x00, 0x00]); // reserved packet type 0
    assert!(h.is_closed(c));
    assert_eq!(h.payloads(w), ["broken"]);
}

#[test]
fn will_is_not_published_after_normal_disconnect() {
    for version in [V311, V5] {
        let mut h = Harness::new();
        let opts = ConnectOpts::default().will("will/c", "bye", Q0, false);
        let (w, c) = with_will(&mut h, "c", version, opts);
        h.disconnect(c, 0);
        assert!(h.is_closed(c));
        assert!(wills(&mut h, w).is_empty(), "{version:?}");
    }
}

#[test]
fn will_is_published_after_disconnect_with_will_0x04() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().will("will/c", "on purpose", Q0, false);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.disconnect(c, 0x04);
    assert!(h.is_closed(c));
    assert_eq!(h.payloads(w), ["on purpose"]);
}

#[test]
fn will_is_published_after_disconnect_with_an_error_reason() {
    // Only a normal disconnection (0x00) discards the will [MQTT-3.1.2-10].
    let mut h = Harness::new();
    let opts = ConnectOpts::default().will("will/c", "failed", Q0, false);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.disconnect(c, 0x80);
    assert!(h.is_closed(c));
    assert_eq!(h.payloads(w), ["failed"]);
}

#[test]
fn will_is_published_when_the_session_is_taken_over() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().will("will/c", "taken", Q0, false);
    let (w, old) = with_will(&mut h, "c", V5, opts);
    let _new = h.client("c", V5);
    assert!(h.is_closed(old));
    assert_eq!(h.payloads(w), ["taken"]);
}

#[test]
fn will_retain_flag_stores_the_will_as_retained() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().will("will/r", "last", Q1, true);
    let (_, c) = with_will(&mut h, "c", V311, opts);
    h.close(c);
    assert_eq!(h.stats().retained, 1);
    let late = h.client("late", V5);
    h.subscribe(late, "will/r", Q1);
    let got = h.publishes(late);
    assert_eq!(got.len(), 1);
    assert!(got[0].retain);
    assert_eq!(&got[0].payload[..], b"last");
}

#[test]
fn will_properties_are_passed_on() {
    let mut h = Harness::new();
    let mut opts = ConnectOpts::default().will("will/p", "x", Q0, false);
    if let Some(will) = &mut opts.will {
        will.properties.user_properties = vec![("k".into(), "v".into())];
        will.properties.content_type = Some("text/plain".into());
        will.properties.response_topic = Some("reply/here".into());
        will.properties.message_expiry_interval = Some(30);
    }
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.close(c);
    let got = wills(&mut h, w);
    assert_eq!(got.len(), 1);
    let p = &got[0].properties;
    assert_eq!(p.user_properties, [("k".to_owned(), "v".to_owned())]);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(p.message_expiry_interval, Some(30));
    assert_eq!(p.will_delay_interval, None);
}

#[test]
fn will_delay_publishes_after_the_delay() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .session_expiry(60)
        .will("will/d", "late", Q0, false)
        .will_delay(5);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.close(c);
    h.advance(4_999);
    assert!(wills(&mut h, w).is_empty());
    h.advance(1);
    assert_eq!(h.payloads(w), ["late"]);
    assert_eq!(h.stats().sessions, 2, "the session outlives its will");
    h.advance(120_000);
    assert!(wills(&mut h, w).is_empty(), "published once");
}

#[test]
fn will_delay_is_cut_short_when_the_session_expires_first() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .session_expiry(3)
        .will("will/d", "expired", Q0, false)
        .will_delay(60);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.close(c);
    h.advance(2_999);
    assert!(wills(&mut h, w).is_empty());
    h.advance(1);
    assert_eq!(h.payloads(w), ["expired"]);
}

#[test]
fn will_delay_is_cancelled_by_reconnect_before_the_delay() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .session_expiry(60)
        .will("will/d", "never", Q0, false)
        .will_delay(5);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.close(c);
    h.advance(2_000);
    let (_, ack) = h.connect("c", V5, false, ConnectOpts::default().session_expiry(60));
    assert!(ack.session_present);
    h.advance(60_000);
    assert!(wills(&mut h, w).is_empty());
}

#[test]
fn will_delay_is_cancelled_by_clean_start_reconnect_before_the_delay() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .session_expiry(60)
        .will("will/d", "never", Q0, false)
        .will_delay(5);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.close(c);
    h.advance(2_000);
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default());
    assert!(!ack.session_present);
    h.advance(60_000);
    assert!(wills(&mut h, w).is_empty());
}

#[test]
fn will_delay_is_cancelled_by_takeover_before_the_delay() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .session_expiry(60)
        .will("will/d", "never", Q0, false)
        .will_delay(5);
    let (w, old) = with_will(&mut h, "c", V5, opts);
    let (_, ack) = h.connect("c", V5, true, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    assert!(h.is_closed(old));
    h.advance(60_000);
    assert!(wills(&mut h, w).is_empty());
}

#[test]
fn new_connection_will_replaces_the_old_one() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default()
        .session_expiry(60)
        .will("will/old", "old", Q0, false)
        .will_delay(5);
    let (w, c) = with_will(&mut h, "c", V5, opts);
    h.close(c);
    let opts = ConnectOpts::default()
        .session_expiry(60)
        .will("will/new", "new", Q0, false);
    let (c, _) = h.connect("c", V5, false, opts);
    h.close(c);
    h.advance(60_000);
    assert_eq!(h.payloads(w), ["new"]);
}

#[test]
fn will_to_a_sys_topic_is_refused() {
    for (version, code) in [(V311, 0x05), (V5, 0x87)] {
        let mut h = Harness::new();
        let spy = h.client("spy", V311);
        h.subscribe(spy, "$SYS/#", Q0);
        let opts = ConnectOpts::default().will("$SYS/brokers/connected", "{}", Q0, true);
        let (c, ack) = h.connect("forger", version, true, opts);
        assert_eq!(ack.code, code, "{version:?}");
        assert!(h.is_closed(c));
        assert!(h.recv(spy).is_empty());
        assert_eq!(h.stats().retained, 0);
    }
}

#[test]
fn will_with_invalid_topic_is_refused() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().will("will/+", "x", Q0, false);
    let (c, ack) = h.connect("c", V5, true, opts);
    assert_eq!(ack.code, 0x90);
    assert!(h.is_closed(c));
}
