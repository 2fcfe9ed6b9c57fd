//! Work per input bounded by what the input means, not by how it repeats itself: identical
//! filters in one SUBSCRIBE are one subscription (one record, one replay of the retained
//! messages), and drops during one input are one event per client and reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use harness::*;
use tidemq_core::codec::{Packet, Properties, QoS, ReasonCode, SubscriptionOptions};
use tidemq_core::persist::Record;
use tidemq_core::{BrokerEvent, Config};

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

#[test]
fn identical_filters_in_one_subscribe_replay_the_retained_messages_once() {
    let mut h = Harness::with_config(quiet_config());
    let p = h.client("p", V311);
    for i in 0..20 {
        h.publish(p, &format!("r/{i}"), "kept", QoS::AtMostOnce, true);
    }
    let c = h.client("c", V5);
    let mut filters = vec![("#", opts(QoS::AtMostOnce)); 1000];
    // The last copy's options are the subscription's.
    filters.push(("#", opts(QoS::AtLeastOnce)));
    let ack = h.subscribe_with(c, &filters, Properties::default());
    assert_eq!(ack.reasons.len(), 1001, "one code per filter as sent");
    assert!(
        ack.reasons.iter().all(|r| *r == ReasonCode(1)),
        "{:?}",
        ack.reasons
    );
    assert_eq!(h.publishes(c).len(), 20, "each retained message once");
    assert_eq!(h.stats().subscriptions, 1);
    // Distinct filters keep their own codes and replays, in order.
    let ack = h.subscribe_with(
        c,
        &[
            ("r/1", opts(QoS::AtMostOnce)),
            ("bad/#/x", opts(QoS::AtMostOnce)),
            ("r/1", opts(QoS::AtMostOnce)),
            ("r/2", opts(QoS::AtLeastOnce)),
        ],
        Properties::default(),
    );
    assert_eq!(
        ack.reasons,
        [
            ReasonCode(0),
            ReasonCode(0x8F),
            ReasonCode(0),
            ReasonCode(1)
        ]
    );
    let topics: Vec<String> = h.publishes(c).into_iter().map(|p| p.topic).collect();
    assert_eq!(topics, ["r/1", "r/2"]);
}

#[test]
fn an_earlier_shared_copy_with_no_local_is_still_a_protocol_error() {
    let mut h = Harness::with_config(quiet_config());
    let c = h.client("c", V5);
    let bad = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtMostOnce)
    };
    h.send(
        c,
        &Packet::Subscribe(tidemq_core::codec::Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![
                ("$share/g/t".to_owned(), bad),
                ("$share/g/t".to_owned(), opts(QoS::AtMostOnce)),
            ],
        }),
    );
    assert_eq!(h.disconnect_reason(c), Some(0x82));
    assert!(h.is_closed(c));
}

#[test]
fn identical_filters_of_a_stored_session_are_one_record() {
    let mut config = quiet_config();
    config.persistence.enable = true;
    let mut h = Harness::with_config(config);
    h.auto_persist = true;
    let (c, _) = h.connect("c", V311, false, ConnectOpts::default());
    let filters = vec![("a/#", opts(QoS::AtLeastOnce)); 5000];
    let before = h.persisted.len();
    h.subscribe_with(c, &filters, Properties::default());
    let puts = h.persisted[before..]
        .iter()
        .flat_map(|(_, records)| records)
        .filter(|r| matches!(r, Record::SubPut { .. }))
        .count();
    assert_eq!(puts, 1);
}

#[test]
fn drops_in_one_input_are_one_event_per_client_and_reason() {
    let config = Config {
        msq_len: 3,
        ..quiet_config()
    };
    let mut h = Harness::with_config(config);
    let (c, _) = h.connect("sub", V311, false, ConnectOpts::default());
    h.subscribe(c, "t", QoS::AtLeastOnce);
    h.close(c);
    let p = h.client("p", V311);
    h.take_events();
    h.fragment = Fragment::Whole;
    let publishes: Vec<Packet> = (1..=200)
        .map(|id| {
            let mut m = publish_msg("t", "x", QoS::AtLeastOnce);
            m.packet_id = Some(id);
            Packet::Publish(m)
        })
        .collect();
    h.send_all(p, &publishes);
    let drops: Vec<(String, u64, &str)> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            BrokerEvent::MessagesDropped {
                client_id,
                count,
                why,
            } => Some((client_id, count, why)),
            _ => None,
        })
        .collect();
    assert_eq!(drops, [("sub".to_owned(), 197, "queue full")]);
    assert_eq!(h.stats().messages_dropped, 197);
}
