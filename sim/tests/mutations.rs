//! Each checker catches a real fault. Faults are planted either in the client layer while
//! the simulation runs (the broker is untouched and the trace is honest about what the
//! application saw), or into a finished, passing trace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tidemq_sim::scenario::Family;
use tidemq_sim::trace::{Delivery, Ev, Got, Sent, Tag};
use tidemq_sim::{Mutation, Outcome, run_seed};

/// The first seeds of `family` (seeds are assigned to families round robin).
fn seeds_of(family: Family) -> impl Iterator<Item = u64> {
    (0..4000u64).filter(move |s| Family::of_seed(*s) == family)
}

fn flagged(out: &Outcome, inv: &str) -> bool {
    out.violations.iter().any(|v| v.invariant == inv)
}

/// A passing run of `family` where `pred` finds something to mutate.
fn passing_run(family: Family, pred: impl Fn(&Outcome) -> bool) -> Outcome {
    for seed in seeds_of(family).take(40) {
        let out = run_seed(seed, None);
        if out.violations.is_empty() && pred(&out) {
            return out;
        }
    }
    panic!("no passing {family:?} run to mutate");
}

/// Runs seeds of `family` with a client-side mutation until the checker flags `inv`.
fn caught_at_runtime(family: Family, m: Mutation, inv: &str) {
    for seed in seeds_of(family).take(24) {
        let clean = run_seed(seed, None);
        if !clean.violations.is_empty() {
            continue;
        }
        let out = run_seed(seed, Some(m));
        if flagged(&out, inv) {
            return;
        }
    }
    panic!("{m:?} was never reported as {inv}");
}

fn deliveries(out: &Outcome) -> Vec<(usize, Delivery)> {
    out.trace
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.ev {
            Ev::Delivered(d) => Some((i, d.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn i3_catches_a_lost_qos1_delivery() {
    caught_at_runtime(Family::S1, Mutation::LoseQos1, "I3");
}

#[test]
fn i4_catches_a_duplicated_qos2_delivery() {
    caught_at_runtime(Family::S2, Mutation::DuplicateQos2, "I4");
}

#[test]
fn i9_catches_a_swallowed_will() {
    caught_at_runtime(Family::S4, Mutation::SwallowWill, "I9");
}

#[test]
fn i5_catches_reordered_deliveries() {
    // Two first deliveries in order, both accepted by the broker before the first of them.
    let swappable = |o: &Outcome| -> Option<(usize, usize)> {
        let accepted_at = |tag: Tag| {
            o.trace.entries.iter().position(
                |e| matches!(&e.ev, Ev::BrokerGot { pkt: Got::Publish(p), .. } if p.tag == tag),
            )
        };
        deliveries(o)
            .windows(2)
            .find(|w| {
                same_stream(&w[0].1, &w[1].1)
                    && accepted_at(w[1].1.publish.tag).is_some_and(|k| k < w[0].0)
            })
            .map(|w| (w[0].0, w[1].0))
    };
    let mut out = passing_run(Family::S1, |o| swappable(o).is_some());
    let (i, j) = swappable(&out).unwrap();
    let a = out.trace.entries[i].ev.clone();
    out.trace.entries[i].ev = out.trace.entries[j].ev.clone();
    out.trace.entries[j].ev = a;
    out.recheck();
    assert!(flagged(&out, "I5"), "{:?}", out.violations);
}

/// Two first deliveries to one actor, one topic, one publisher, increasing seqs.
fn same_stream(a: &Delivery, b: &Delivery) -> bool {
    match (a.publish.tag, b.publish.tag) {
        (
            Tag::Msg {
                publisher: p,
                seq: s,
            },
            Tag::Msg {
                publisher: q,
                seq: t,
            },
        ) => {
            a.actor == b.actor
                && p == q
                && s < t
                && a.publish.topic == b.publish.topic
                && a.publish.qos == b.publish.qos
                && !a.publish.dup
                && !b.publish.dup
                && !a.publish.retain
        }
        _ => false,
    }
}

#[test]
fn i6_catches_a_phantom_delivery() {
    let mut out = passing_run(Family::S8, |o| !deliveries(o).is_empty());
    let (i, mut d) = deliveries(&out).remove(0);
    d.publish.tag = Tag::Msg {
        publisher: 99,
        seq: 1,
    };
    out.trace.entries[i].ev = Ev::Delivered(d);
    out.recheck();
    assert!(flagged(&out, "I6"), "{:?}", out.violations);
}

#[test]
fn i6_catches_delivery_to_a_non_subscriber() {
    // Deliver a real message to an actor that never subscribed (the watcher).
    let mut out = passing_run(Family::S8, |o| {
        deliveries(o)
            .iter()
            .any(|(_, d)| matches!(d.publish.tag, Tag::Msg { .. }))
    });
    let watcher = out
        .actors
        .iter()
        .position(|a| a.client_id == "watcher")
        .unwrap();
    let wconn = out
        .trace
        .entries
        .iter()
        .find_map(|e| match &e.ev {
            Ev::Delivered(d) if d.actor == watcher => Some(d.conn),
            Ev::BrokerGot { conn, actor, .. } if *actor == watcher => Some(*conn),
            _ => None,
        })
        .unwrap();
    let (i, mut d) = deliveries(&out)
        .into_iter()
        .find(|(_, d)| matches!(d.publish.tag, Tag::Msg { .. }) && !d.publish.retain)
        .unwrap();
    d.actor = watcher;
    d.conn = wconn;
    out.trace.entries.insert(i + 1, {
        let mut e = out.trace.entries[i].clone();
        e.ev = Ev::Delivered(d);
        e
    });
    out.recheck();
    assert!(flagged(&out, "I6"), "{:?}", out.violations);
}

#[test]
fn i7_catches_too_many_in_flight() {
    // Replay one QoS 1 delivery under fresh packet ids, never acked: beyond any window.
    let mut out = passing_run(Family::S3, |o| {
        deliveries(o).iter().any(|(_, d)| d.publish.qos == 1)
    });
    let (i, d) = deliveries(&out)
        .into_iter()
        .find(|(_, d)| d.publish.qos == 1)
        .unwrap();
    for k in 0..70u16 {
        let mut extra = d.clone();
        extra.publish.pid = Some(60_000 + k);
        let mut e = out.trace.entries[i].clone();
        e.ev = Ev::Delivered(extra);
        out.trace.entries.insert(i + 1, e);
    }
    out.config.max_inflight = out.config.max_inflight.min(64);
    out.recheck();
    assert!(flagged(&out, "I7"), "{:?}", out.violations);
}

#[test]
fn i7_catches_a_resend_without_reconnect() {
    let mut out = passing_run(Family::S1, |o| {
        deliveries(o).iter().any(|(_, d)| d.publish.qos == 1)
    });
    let (i, mut d) = deliveries(&out)
        .into_iter()
        .find(|(_, d)| d.publish.qos == 1)
        .unwrap();
    d.publish.dup = true;
    let mut e = out.trace.entries[i].clone();
    e.ev = Ev::Delivered(d);
    out.trace.entries.insert(i + 1, e);
    out.recheck();
    assert!(flagged(&out, "I7"), "{:?}", out.violations);
}

#[test]
fn i8_catches_a_stale_retained_message() {
    let mut out = passing_run(Family::S8, |o| {
        o.trace.entries.iter().any(|e| {
            matches!(&e.ev, Ev::Delivered(d) if d.publish.retain
                && o.actors[d.actor].client_id == "auditor")
        })
    });
    let i = out
        .trace
        .entries
        .iter()
        .position(|e| {
            matches!(&e.ev, Ev::Delivered(d) if d.publish.retain
                && out.actors[d.actor].client_id == "auditor")
        })
        .unwrap();
    // The auditor misses it: the store lost a retained message.
    out.trace.entries.remove(i);
    out.recheck();
    assert!(flagged(&out, "I8"), "{:?}", out.violations);
}

#[test]
fn i10_catches_a_wrong_session_present() {
    let mut out = passing_run(Family::S1, |_| true);
    let i = out
        .trace
        .entries
        .iter()
        .position(|e| {
            matches!(
                &e.ev,
                Ev::BrokerSent {
                    pkt: Sent::ConnAck { code: 0, .. },
                    ..
                }
            )
        })
        .unwrap();
    if let Ev::BrokerSent {
        pkt: Sent::ConnAck {
            session_present, ..
        },
        ..
    } = &mut out.trace.entries[i].ev
    {
        *session_present = !*session_present;
    }
    out.recheck();
    assert!(flagged(&out, "I10"), "{:?}", out.violations);
}

#[test]
fn i1_catches_a_connection_left_open_after_garbage() {
    let mut out = passing_run(Family::S16, |o| {
        o.trace
            .entries
            .iter()
            .any(|e| matches!(e.ev, Ev::GarbageFed { .. }))
    });
    let conn = out
        .trace
        .entries
        .iter()
        .find_map(|e| match e.ev {
            Ev::GarbageFed { conn, .. } => Some(conn),
            _ => None,
        })
        .unwrap();
    out.trace
        .entries
        .retain(|e| !matches!(e.ev, Ev::BrokerClosed { conn: c, .. } if c == conn));
    out.recheck();
    assert!(flagged(&out, "I1"), "{:?}", out.violations);
}

#[test]
fn i9_catches_a_will_after_normal_disconnect() {
    let mut out = passing_run(Family::S4, |o| {
        o.trace.entries.iter().any(|e| {
            matches!(&e.ev, Ev::Delivered(d) if matches!(d.publish.tag, Tag::Will { .. })
                && o.actors[d.actor].client_id == "watcher")
        })
    });
    // Pretend the will's connection ended with DISCONNECT 0x00.
    let tag = out
        .trace
        .entries
        .iter()
        .find_map(|e| match &e.ev {
            Ev::Delivered(d) if matches!(d.publish.tag, Tag::Will { .. }) => Some(d.publish.tag),
            _ => None,
        })
        .unwrap();
    let Tag::Will { conn, actor } = tag else {
        unreachable!()
    };
    let i = out
        .trace
        .entries
        .iter()
        .position(|e| matches!(e.ev, Ev::BrokerClosed { conn: c, .. } if c == conn))
        .unwrap();
    let mut e = out.trace.entries[i].clone();
    e.ev = Ev::BrokerGot {
        conn,
        actor,
        pkt: Got::Disconnect { reason: 0 },
    };
    out.trace.entries.insert(i, e);
    out.recheck();
    assert!(flagged(&out, "I9"), "{:?}", out.violations);
}

#[test]
fn i14_catches_a_nondeterministic_trace() {
    let a = run_seed(3, None);
    let mut b = run_seed(3, None);
    assert_eq!(a.hash(), b.hash());
    let last = b.trace.entries.len() - 1;
    b.trace.entries[last].at += 1;
    assert_ne!(a.hash(), b.hash());
}
