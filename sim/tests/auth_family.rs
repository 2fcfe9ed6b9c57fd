//! The `Auth` family does what it is for: checks asked and answered out of order, refusals,
//! denied publishes, and no violation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tidemq_sim::run_seed;
use tidemq_sim::scenario::Family;
use tidemq_sim::trace::{AckKind, Ev, Sent};

#[test]
fn auth_seeds_ask_answer_out_of_order_deny_and_pass() {
    let seeds: Vec<u64> = (0..2000u64)
        .filter(|s| Family::of_seed(*s) == Family::Auth)
        .take(12)
        .collect();
    let (mut asked, mut reordered, mut refused, mut denied_pubs) = (0, 0, 0, 0);
    for seed in seeds {
        let out = run_seed(seed, None);
        assert!(
            out.violations.is_empty(),
            "SIM_SEED={seed}: {:?}",
            out.violations
        );
        let mut order = Vec::new();
        let mut answered = Vec::new();
        for e in &out.trace.entries {
            match &e.ev {
                Ev::AuthAsked { conn } => {
                    asked += 1;
                    order.push(*conn);
                }
                Ev::AuthAnswered { conn, .. } => answered.push(*conn),
                Ev::BrokerSent {
                    pkt: Sent::ConnAck { code, .. },
                    ..
                } if *code != 0 => refused += 1,
                Ev::BrokerSent {
                    pkt: Sent::Ack(AckKind::PubAck | AckKind::PubRec, _, 0x87),
                    ..
                } => denied_pubs += 1,
                _ => {}
            }
        }
        let asked_order: Vec<u64> = order
            .iter()
            .copied()
            .filter(|c| answered.contains(c))
            .collect();
        if asked_order != answered {
            reordered += 1;
        }
    }
    assert!(asked > 50, "only {asked} checks asked");
    assert!(reordered > 0, "answers never came back out of order");
    assert!(refused > 0, "no CONNECT was refused");
    assert!(denied_pubs > 0, "no publish was denied");
}
