//! Inbound flow control: our Receive Maximum counts QoS 2 messages unreleased on the current
//! connection only (v5 §4.9: the send quota is not part of the session state).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::Config;
use tidemq_core::codec::Packet;

fn config(receive_maximum: u16) -> Config {
    Config {
        receive_maximum,
        ..quiet_config()
    }
}

/// Publishes QoS 2 messages that stay unreleased, drops the connection, then publishes
/// `receive_maximum` new QoS 2 messages on a resumed session: none may be refused.
fn unreleased_ids_do_not_count_after_reconnect(version: tidemq_core::codec::ProtocolVersion) {
    let mut h = Harness::with_config(config(2));
    let sub = h.client("sub", V311);
    h.subscribe(sub, "t", Q2);
    let opts = ConnectOpts::default().session_expiry(300);
    let (c, _) = h.connect("pub", version, false, opts.clone());
    for pid in [1, 2] {
        let mut p = publish_msg("t", &format!("old{pid}"), Q2);
        p.packet_id = Some(pid);
        h.publish_with(c, p);
    }
    assert_eq!(h.recv(c).len(), 2, "two PUBRECs");
    h.close(c);

    let (c, ack) = h.connect("pub", version, false, opts);
    assert!(ack.session_present);
    for pid in [3, 4] {
        let mut p = publish_msg("t", &format!("new{pid}"), Q2);
        p.packet_id = Some(pid);
        h.publish_with(c, p);
    }
    let got = h.recv(c);
    assert!(
        !h.is_closed(c),
        "connection refused the new messages: {got:?}"
    );
    assert!(
        got.iter()
            .all(|p| matches!(p, Packet::PubRec(a) if a.reason == 0)),
        "{got:?}"
    );
    assert_eq!(got.len(), 2);
    let payloads = h.payloads(sub);
    assert_eq!(payloads, ["old1", "old2", "new3", "new4"]);

    // The old ids release fine, and a third new one is over the quota again.
    h.pubrel(c, 1);
    h.pubrel(c, 2);
    assert_eq!(h.recv(c).len(), 2, "two PUBCOMPs");
    h.publish(c, "t", "over", Q2, false);
    let reason = h.disconnect_reason(c);
    assert!(
        h.is_closed(c),
        "a third unreleased message on one connection is refused"
    );
    if version == V5 {
        assert_eq!(reason, Some(0x93));
    }
}

#[test]
fn v5_receive_maximum_is_per_connection() {
    unreleased_ids_do_not_count_after_reconnect(V5);
}

#[test]
fn v311_receive_maximum_is_per_connection() {
    unreleased_ids_do_not_count_after_reconnect(V311);
}
