//! The core is a deterministic function of its inputs and seed, and how the bytes are cut
//! into reads does not matter.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use std::collections::BTreeMap;

use harness::*;
use tidemq_core::codec::{Properties, SubscriptionOptions};
use tidemq_core::{BrokerEvent, Config, ConnId, Input, Output, Stats};

/// A busy run touching most of the broker: assigned ids, wills with delay, retained
/// messages, QoS 1/2 both ways, shared subscriptions, takeover, keepalive and expiry.
fn busy(h: &mut Harness) {
    h.input(Input::WallClock {
        unix_ms: 1_600_000_000_000,
    });
    let spy = h.client("spy", V311);
    h.subscribe(spy, "$SYS/#", Q0);
    let (anon, _) = h.connect("", V5, true, ConnectOpts::default().keep_alive(5));
    let (_anon2, _) = h.connect("", V311, true, ConnectOpts::default());
    let opts = ConnectOpts::default()
        .session_expiry(30)
        .receive_maximum(2)
        .will("will/a", "gone", Q1, true)
        .will_delay(3);
    let (a, _) = h.connect("a", V5, false, opts);
    let props = Properties {
        subscription_identifiers: vec![5],
        ..Properties::default()
    };
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..sub_opts(Q2)
    };
    h.subscribe_with(a, &[("t/#", rap), ("will/#", sub_opts(Q1))], props);
    let b = h.client("b", V311);
    h.subscribe(b, "$share/g/t/+", Q1);
    let c = h.client("c", V5);
    h.subscribe(c, "$share/g/t/+", Q2);
    for i in 0..12 {
        let qos = [Q0, Q1, Q2][i % 3];
        let pid = h.publish(
            anon,
            &format!("t/{}", i % 4),
            &format!("m{i}"),
            qos,
            i % 5 == 0,
        );
        if qos == Q2 {
            h.pubrel(anon, pid.unwrap());
        }
        h.advance(250);
    }
    let delivered: usize = [a, b, c]
        .map(|conn| h.publishes_acked(conn).len())
        .iter()
        .sum();
    assert!(delivered >= 12, "{delivered}");
    h.close(a);
    h.advance(3_500);
    let (a2, _) = h.connect("a", V5, false, ConnectOpts::default().session_expiry(30));
    h.publishes_acked(a2);
    h.client("b", V5); // takeover
    h.advance(10_000); // keepalive of anon
    h.input(Input::Shutdown);
}

struct Run {
    log: Vec<Output>,
    per_client: BTreeMap<ConnId, Vec<u8>>,
    events: Vec<BrokerEvent>,
    stats: Stats,
}

fn run(seed: u64, fragment: Fragment, fragment_seed: u64) -> Run {
    let mut h = Harness::with_seed(Config::default(), seed);
    h.fragment = fragment;
    h.fragment_seed(fragment_seed);
    busy(&mut h);
    Run {
        log: h.log.clone(),
        per_client: h
            .clients
            .iter()
            .map(|(id, c)| (*id, c.transmitted.clone()))
            .collect(),
        events: h.events.clone(),
        stats: h.stats(),
    }
}

#[test]
fn same_inputs_and_seed_give_identical_outputs() {
    let first = run(7, Fragment::Random, 1);
    let second = run(7, Fragment::Random, 1);
    assert!(first.log.len() > 50, "the scenario does something");
    assert_eq!(first.log, second.log);
    assert_eq!(first.stats, second.stats);
}

#[test]
fn the_seed_only_changes_assigned_identifiers() {
    let a = run(1, Fragment::Whole, 0);
    let b = run(2, Fragment::Whole, 0);
    let assigned = |r: &Run| -> Vec<String> {
        r.events
            .iter()
            .filter_map(|e| match e {
                BrokerEvent::ClientConnected { client_id, .. }
                    if client_id.starts_with("tidemq-") =>
                {
                    Some(client_id.clone())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(assigned(&a).len(), 2);
    assert_ne!(assigned(&a), assigned(&b));
    assert_eq!(a.stats, b.stats);
}

#[test]
fn fragmentation_does_not_change_what_clients_receive() {
    let whole = run(3, Fragment::Whole, 0);
    for (mode, fseed) in [
        (Fragment::Bytewise, 0),
        (Fragment::Random, 1),
        (Fragment::Random, 2),
        (Fragment::Random, 99),
    ] {
        let cut = run(3, mode, fseed);
        assert_eq!(cut.per_client, whole.per_client, "{mode:?} {fseed}");
        assert_eq!(cut.events, whole.events, "{mode:?} {fseed}");
        assert_eq!(cut.stats, whole.stats, "{mode:?} {fseed}");
    }
}
