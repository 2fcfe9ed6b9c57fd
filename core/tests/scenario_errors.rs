//! Protocol violations: what the broker answers (if anything) and that it closes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{ConnAck, Packet, Properties, SubAck};
use tidemq_core::{BrokerEvent, Input};

#[test]
fn packet_before_connect_closes_without_reply() {
    let mut h = Harness::new();
    for packet in [
        Packet::PingReq,
        Packet::Publish(publish_msg("t", "x", Q0)),
        Packet::Disconnect(Default::default()),
    ] {
        let c = h.accept();
        h.send(c, &packet);
        assert!(h.is_closed(c), "{packet:?}");
        assert!(h.recv(c).is_empty(), "{packet:?}");
    }
    assert_eq!(h.stats().sessions, 0);
}

#[test]
fn second_connect_closes_v5_with_disconnect_0x82() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    h.connect_on(c, "c", V5, true, ConnectOpts::default());
    assert!(h.is_closed(c));
    assert_eq!(h.disconnect_reason(c), Some(0x82));
}

#[test]
fn second_connect_closes_v311_without_reply() {
    let mut h = Harness::new();
    let c = h.client("c", V311);
    h.connect_on(c, "c", V311, true, ConnectOpts::default());
    assert!(h.is_closed(c));
    assert!(h.recv(c).is_empty());
}

#[test]
fn malformed_packet_closes_v5_with_disconnect_0x81() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    // PINGREQ with a reserved flag bit set.
    h.send_raw(c, &[0xC1, 0x00]);
    assert!(h.is_closed(c));
    assert_eq!(h.disconnect_reason(c), Some(0x81));
}

#[test]
fn malformed_packet_closes_v311_without_reply() {
    let mut h = Harness::new();
    let c = h.client("c", V311);
    h.send_raw(c, &[0x30, 0x01, 0x00]); // PUBLISH truncated inside its topic length
    assert!(h.is_closed(c));
    assert!(h.recv(c).is_empty());
}

#[test]
fn server_only_packets_from_a_client_are_a_protocol_error() {
    for packet in [
        Packet::ConnAck(ConnAck::default()),
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: Properties::default(),
            reasons: vec![tidemq_core::codec::ReasonCode(0)],
        }),
        Packet::PingResp,
    ] {
        let mut h = Harness::new();
        let c = h.client("c", V5);
        h.send(c, &packet);
        assert!(h.is_closed(c), "{packet:?}");
        assert_eq!(h.disconnect_reason(c), Some(0x82), "{packet:?}");
    }
}

#[test]
fn bytes_after_a_fatal_error_are_ignored() {
    let mut h = Harness::new();
    let c = h.client("c", V5);
    h.send_raw(c, &[0xC1, 0x00, 0xC0, 0x00]);
    assert!(h.is_closed(c));
    h.recv(c);
    h.input(Input::Received {
        conn: c,
        bytes: bytes::Bytes::from_static(&[0xC0, 0x00]),
    });
    assert!(h.recv(c).is_empty());
}

#[test]
fn packets_after_disconnect_in_the_same_read_are_ignored() {
    let mut h = Harness::new();
    let w = h.client("w", V311);
    h.subscribe(w, "t", Q0);
    let c = h.client("c", V311);
    h.send_all(
        c,
        &[
            Packet::Publish(publish_msg("t", "before", Q0)),
            Packet::Disconnect(Default::default()),
            Packet::Publish(publish_msg("t", "after", Q0)),
        ],
    );
    assert!(h.is_closed(c));
    assert_eq!(h.payloads(w), ["before"]);
}

#[test]
fn several_packets_in_one_read_are_all_handled() {
    let mut h = Harness::new();
    h.fragment = Fragment::Whole;
    let c = h.client("c", V311);
    h.send_all(c, &[Packet::PingReq, Packet::PingReq, Packet::PingReq]);
    assert_eq!(h.recv(c).len(), 3);
}

#[test]
fn closed_for_an_unknown_connection_is_ignored() {
    let mut h = Harness::new();
    h.input(Input::Closed {
        conn: tidemq_core::ConnId(999),
    });
    h.input(Input::Written {
        conn: tidemq_core::ConnId(999),
        bytes: 10,
    });
    assert!(h.log.is_empty());
}

#[test]
fn every_close_is_reported_as_an_event() {
    let mut h = Harness::new();
    let a = h.client("a", V5);
    let b = h.accept();
    h.close(a);
    h.send_raw(b, &[0xC0, 0x00]);
    let closes = h
        .events
        .iter()
        .filter(|e| matches!(e, BrokerEvent::ClientDisconnected { .. }))
        .count();
    assert_eq!(closes, 2);
    assert_eq!(h.stats().connections, 0);
}
