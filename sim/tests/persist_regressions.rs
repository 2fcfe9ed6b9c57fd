//! Persistence checks that once cried wolf at depth, and the faults they must still catch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tidemq_sim::run_seed;
use tidemq_sim::trace::{AckKind, Ev, Got, Sent};

/// After a store failure a durable session's SUBSCRIBE is refused (SUBACK 0x97): it adds no
/// durable subscriber, so a later QoS 1 publish on a matching topic needs no store and is
/// acknowledged (model fix: P3 counted the refused filter as a durable subscription).
#[test]
fn a_subscription_refused_after_a_store_failure_makes_no_durable_subscriber() {
    let seed = 1_005_383;
    let out = run_seed(seed, None);
    for v in &out.violations {
        println!(
            "SIM_SEED={seed}: {} at {} ms: {}",
            v.invariant, v.at, v.detail
        );
    }
    assert!(out.violations.is_empty());
    let refused =
        out.trace.entries.iter().any(
            |e| matches!(&e.ev, Ev::BrokerSent { pkt: Sent::SubAck(r), .. } if r.contains(&0x97)),
        );
    assert!(refused, "the seed no longer refuses a subscription");

    // The same trace, with the refused SUBACK granted instead: the QoS 1 PUBACK sent later
    // then needed the store, and P3 reports it.
    let mut out = out;
    for e in &mut out.trace.entries {
        if let Ev::BrokerSent {
            pkt: Sent::SubAck(r),
            ..
        } = &mut e.ev
        {
            for code in r.iter_mut().filter(|c| **c == 0x97) {
                *code = 2;
            }
        }
    }
    out.recheck();
    let acked_after = out.trace.entries.iter().any(|e| {
        matches!(
            &e.ev,
            Ev::BrokerSent {
                pkt: Sent::Ack(AckKind::PubAck, _, 0),
                ..
            }
        )
    }) && out.trace.entries.iter().any(|e| {
        matches!(
            &e.ev,
            Ev::BrokerGot {
                pkt: Got::Subscribe(_),
                ..
            }
        )
    });
    assert!(acked_after);
    assert!(
        out.violations.iter().any(|v| v.invariant == "P3"),
        "granting the refused subscription went unnoticed: {:?}",
        out.violations
    );
}
