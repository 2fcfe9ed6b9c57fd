//! Persistent sessions: resume, offline queueing, clean start, expiry, and flow control
//! towards slow readers.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Packet, Properties};
use tidemq_core::{BrokerEvent, Config, ConnId};

fn persistent(h: &mut Harness, id: &str) -> (ConnId, bool) {
    let (conn, ack) = h.connect(id, V311, false, ConnectOpts::default());
    assert_eq!(ack.code, 0);
    (conn, ack.session_present)
}

#[test]
fn session_resume_redelivers_unacked_with_dup() {
    let mut h = Harness::new();
    let (c, present) = persistent(&mut h, "sub");
    assert!(!present);
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V311);
    h.publish(p, "t", "m1", Q1, false);
    h.publish(p, "t", "m2", Q1, false);
    let first = h.publishes(c);
    assert_eq!(first.len(), 2);
    h.puback(c, first[0].packet_id.unwrap());
    h.close(c);

    let (c, present) = persistent(&mut h, "sub");
    assert!(present);
    let again = h.publishes(c);
    assert_eq!(again.len(), 1);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[1].packet_id);
    assert_eq!(&again[0].payload[..], b"m2");
    h.puback(c, again[0].packet_id.unwrap());
    h.close(c);
    let (c, _) = persistent(&mut h, "sub");
    assert!(h.recv(c).is_empty(), "acknowledged messages are not resent");
}

#[test]
fn v5_session_resume_redelivers_unacked_with_dup() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().session_expiry(300);
    let (c, _) = h.connect("sub", V5, true, opts.clone());
    h.subscribe(c, "t", Q2);
    let p = h.client("p", V5);
    h.publish(p, "t", "m", Q2, false);
    let first = h.publishes(c);
    h.close(c);
    let (c, ack) = h.connect("sub", V5, false, opts);
    assert!(ack.session_present);
    let again = h.publishes(c);
    assert_eq!(again.len(), 1);
    assert!(again[0].dup);
    assert_eq!(again[0].qos, Q2);
    assert_eq!(again[0].packet_id, first[0].packet_id);
}

#[test]
fn session_resume_resends_pubrel_for_released_qos2() {
    let mut h = Harness::new();
    let (c, _) = persistent(&mut h, "sub");
    h.subscribe(c, "t", Q2);
    let p = h.client("p", V311);
    h.publish(p, "t", "m", Q2, false);
    let pid = h.publishes(c)[0].packet_id.unwrap();
    h.pubrec(c, pid);
    assert!(matches!(h.recv_one(c), Packet::PubRel(a) if a.packet_id == pid));
    h.close(c);
    let (c, _) = persistent(&mut h, "sub");
    assert!(matches!(h.recv_one(c), Packet::PubRel(a) if a.packet_id == pid));
    h.pubcomp(c, pid);
    h.close(c);
    let (c, _) = persistent(&mut h, "sub");
    assert!(h.recv(c).is_empty());
}

#[test]
fn offline_qos1_messages_are_queued_and_delivered_on_resume() {
    let mut h = Harness::new();
    let (c, _) = persistent(&mut h, "sub");
    h.subscribe(c, "t", Q1);
    h.disconnect(c, 0);
    assert!(h.is_closed(c));
    let p = h.client("p", V311);
    for m in ["a", "b", "c"] {
        h.publish(p, "t", m, Q1, false);
    }
    let (c, present) = persistent(&mut h, "sub");
    assert!(present);
    let got = h.publishes(c);
    assert_eq!(
        got.iter().map(|p| &p.payload[..]).collect::<Vec<_>>(),
        [b"a", b"b", b"c"]
    );
    assert!(got.iter().all(|p| !p.dup && p.qos == Q1));
}

#[test]
fn offline_qos0_messages_are_not_queued() {
    let mut h = Harness::new();
    let (c, _) = persistent(&mut h, "sub");
    h.subscribe(c, "t", Q1);
    h.close(c);
    let p = h.client("p", V311);
    h.publish(p, "t", "zero", Q0, false);
    h.publish(p, "t", "one", Q1, false);
    let (c, _) = persistent(&mut h, "sub");
    assert_eq!(h.payloads(c), ["one"]);
}

#[test]
fn subscriptions_survive_a_resumed_session() {
    let mut h = Harness::new();
    let (c, _) = persistent(&mut h, "sub");
    h.subscribe(c, "t", Q0);
    h.close(c);
    let (c, _) = persistent(&mut h, "sub");
    let p = h.client("p", V311);
    h.publish(p, "t", "live", Q0, false);
    assert_eq!(h.payloads(c), ["live"]);
}

#[test]
fn clean_start_discards_the_session() {
    let mut h = Harness::new();
    let (c, _) = persistent(&mut h, "sub");
    h.subscribe(c, "t", Q1);
    h.close(c);
    let p = h.client("p", V311);
    h.publish(p, "t", "queued", Q1, false);
    let c = h.client("sub", V311);
    assert!(h.recv(c).is_empty());
    h.publish(p, "t", "after", Q1, false);
    assert!(
        h.recv(c).is_empty(),
        "the subscription went with the session"
    );
    assert_eq!(h.stats().subscriptions, 0);
    // A clean 3.1.1 session ends with its connection.
    h.close(c);
    assert_eq!(h.stats().sessions, 1, "only the publisher's");
}

#[test]
fn msq_len_bounds_the_offline_queue_and_counts_drops() {
    let config = Config {
        msq_len: 3,
        sys_events: false,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (c, _) = persistent(&mut h, "sub");
    h.subscribe(c, "t", Q1);
    h.close(c);
    let p = h.client("p", V311);
    for i in 0..5 {
        h.publish(p, "t", &i.to_string(), Q1, false);
    }
    assert_eq!(h.stats().messages_dropped, 2);
    assert!(h.events.iter().any(|e| matches!(e,
        BrokerEvent::MessagesDropped { client_id, why: "queue full", .. } if client_id == "sub")));
    let (c, _) = persistent(&mut h, "sub");
    assert_eq!(h.payloads(c), ["0", "1", "2"]);
}

#[test]
fn v5_session_is_kept_before_expiry() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().session_expiry(10);
    let (c, _) = h.connect("s", V5, true, opts.clone());
    h.subscribe(c, "t", Q1);
    h.close(c);
    h.advance(9_999);
    assert_eq!(h.stats().sessions, 1);
    let (c, ack) = h.connect("s", V5, false, opts);
    assert!(ack.session_present);
    // Reconnecting stops the expiry clock for good.
    h.advance(60_000);
    let p = h.client("p", V5);
    h.publish(p, "t", "x", Q0, false);
    assert_eq!(h.payloads(c), ["x"]);
}

#[test]
fn v5_session_is_gone_after_expiry() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().session_expiry(10);
    let (c, _) = h.connect("s", V5, true, opts.clone());
    h.subscribe(c, "t", Q1);
    h.close(c);
    h.advance(10_000);
    assert_eq!(h.stats().sessions, 0);
    assert_eq!(h.stats().subscriptions, 0);
    assert!(h.events.iter().any(|e| matches!(e,
        BrokerEvent::SessionExpired { client_id } if client_id == "s")));
    let (_, ack) = h.connect("s", V5, false, opts);
    assert!(!ack.session_present);
}

#[test]
fn v5_session_expiry_zero_ends_the_session_with_the_connection() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, false, ConnectOpts::default());
    h.subscribe(c, "t", Q1);
    h.close(c);
    assert_eq!(h.stats().sessions, 0);
    let (_, ack) = h.connect("s", V5, false, ConnectOpts::default());
    assert!(!ack.session_present);
}

#[test]
fn v5_session_expiry_is_capped_and_the_cap_is_told() {
    let config = Config {
        max_session_expiry: 60,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let (c, ack) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(3600));
    assert_eq!(ack.properties.session_expiry_interval, Some(60));
    h.close(c);
    h.advance(60_000);
    assert_eq!(h.stats().sessions, 0);
}

#[test]
fn v5_disconnect_can_shorten_the_session_expiry() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default().session_expiry(3600));
    let props = Properties {
        session_expiry_interval: Some(5),
        ..Properties::default()
    };
    h.disconnect_with(c, 0, props);
    assert!(h.is_closed(c));
    h.advance(5_000);
    assert_eq!(h.stats().sessions, 0);
}

#[test]
fn v5_disconnect_setting_expiry_after_zero_is_a_protocol_error() {
    let mut h = Harness::new();
    let (c, _) = h.connect("s", V5, true, ConnectOpts::default());
    let props = Properties {
        session_expiry_interval: Some(5),
        ..Properties::default()
    };
    h.disconnect_with(c, 0, props);
    assert!(h.is_closed(c));
    assert_eq!(h.disconnect_reason(c), Some(0x82));
}

#[test]
fn inbound_qos2_state_survives_a_resumed_session() {
    let mut h = Harness::new();
    let watcher = h.client("w", V311);
    h.subscribe(watcher, "t", Q0);
    let (p, _) = persistent(&mut h, "pub");
    let mut msg = publish_msg("t", "once", Q2);
    msg.packet_id = Some(5);
    h.publish_with(p, msg.clone());
    h.close(p);
    // The client did not see PUBREC: it resends with DUP on the new connection.
    let (p, _) = persistent(&mut h, "pub");
    msg.dup = true;
    h.publish_with(p, msg);
    assert!(matches!(h.recv_one(p), Packet::PubRec(a) if a.packet_id == 5));
    h.pubrel(p, 5);
    assert!(matches!(h.recv_one(p), Packet::PubComp(a) if a.packet_id == 5 && a.reason == 0));
    assert_eq!(h.payloads(watcher), ["once"]);
}

#[test]
fn slow_reader_qos0_is_dropped_and_counted() {
    let config = Config {
        max_write_buffer: 1024,
        sys_events: false,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.client("slow", V311);
    h.subscribe(c, "t", Q0);
    let p = h.client("p", V311);
    h.withhold_written(c, true);
    let payload = "x".repeat(300);
    for _ in 0..10 {
        h.publish(p, "t", &payload, Q0, false);
    }
    let delivered = h.publishes(c).len();
    assert!((1..10).contains(&delivered), "{delivered}");
    assert_eq!(h.stats().messages_dropped, 10 - delivered as u64);
    // Nothing was held back for later.
    h.release_written(c);
    assert!(h.recv(c).is_empty());
    // Once the writer catches up, QoS 0 flows again.
    h.publish(p, "t", "after", Q0, false);
    assert_eq!(h.payloads(c), ["after"]);
}

#[test]
fn slow_reader_qos1_is_queued_then_sent_after_written() {
    let config = Config {
        max_write_buffer: 1024,
        sys_events: false,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.client("slow", V311);
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V311);
    h.withhold_written(c, true);
    let payload = "y".repeat(300);
    for _ in 0..10 {
        h.publish(p, "t", &payload, Q1, false);
    }
    let before = h.publishes(c).len();
    assert!(before < 10, "{before}");
    h.release_written(c);
    let after = h.publishes(c).len();
    assert_eq!(before + after, 10);
    assert_eq!(h.stats().messages_dropped, 0);
}

#[test]
fn online_queue_behind_a_full_window_is_bounded_by_msq_len() {
    let config = Config {
        msq_len: 2,
        max_inflight: 1,
        sys_events: false,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.client("s", V311);
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V311);
    for i in 0..5 {
        h.publish(p, "t", &i.to_string(), Q1, false);
    }
    // One in flight, two queued, two dropped.
    assert_eq!(h.stats().messages_dropped, 2);
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = h.publishes(c);
        assert_eq!(m.len(), 1);
        got.push(String::from_utf8_lossy(&m[0].payload).into_owned());
        h.puback(c, m[0].packet_id.unwrap());
    }
    assert_eq!(got, ["0", "1", "2"]);
}

#[test]
fn session_resume_resends_within_the_new_receive_maximum() {
    let mut h = Harness::new();
    let opts = ConnectOpts::default().session_expiry(60);
    let (c, _) = h.connect("s", V5, true, opts.clone().receive_maximum(5));
    h.subscribe(c, "t", Q1);
    let p = h.client("p", V5);
    for i in 0..6 {
        h.publish(p, "t", &i.to_string(), Q1, false);
    }
    assert_eq!(h.publishes(c).len(), 5);
    h.close(c);
    // The client comes back allowing only two unacknowledged messages.
    let (c, _) = h.connect("s", V5, false, opts.receive_maximum(2));
    let mut got = Vec::new();
    loop {
        let batch = h.publishes(c);
        if batch.is_empty() {
            break;
        }
        assert!(batch.len() <= 2, "window exceeded: {}", batch.len());
        for m in &batch {
            got.push((String::from_utf8_lossy(&m.payload).into_owned(), m.dup));
        }
        for m in &batch {
            h.puback(c, m.packet_id.unwrap());
        }
    }
    let want: Vec<(String, bool)> = (0..6).map(|i| (i.to_string(), i < 5)).collect();
    assert_eq!(got, want);
}

#[test]
fn client_that_sends_without_reading_is_cut_off_at_twice_the_write_buffer() {
    let config = Config {
        max_write_buffer: 1024,
        sys_events: false,
        ..Config::default()
    };
    let mut h = Harness::with_config(config);
    let c = h.client("flooder", V311);
    let bystander = h.client("bystander", V311);
    h.withhold_written(c, true);
    // Each PINGREQ earns a 2-byte PINGRESP that the client never reads.
    for _ in 0..4096 {
        h.send(c, &Packet::PingReq);
        if h.is_closed(c) {
            break;
        }
    }
    assert!(h.is_closed(c), "the backlog kept growing");
    assert!(h.client_state(c).unwritten <= 2 * 1024 + 2);
    assert!(!h.is_closed(bystander));
}
