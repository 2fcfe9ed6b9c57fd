//! Each checker catches a real fault. Faults are planted either in the client layer while
//! the simulation runs (the broker is untouched and the trace is honest about what the
//! application saw), or into a finished, passing trace.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tidemq_core::config::SyncMode;
use tidemq_sim::scenario::Family;
use tidemq_sim::trace::{AckKind, Delivery, Entry, Ev, Got, Sent, Tag};
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

/// Server-to-client topic aliases (S12) are in use: a client that does not resolve them
/// gets messages without a topic, and the delivery checker sees them.
#[test]
fn i6_catches_a_client_that_forgets_the_brokers_topic_aliases() {
    caught_at_runtime(Family::S12, Mutation::ForgetServerAliases, "I6");
}

/// Adversaries (S25) against a broker whose memory budget was taken away: what it holds
/// passes the bound the checks keep to the scenario's budget.
#[test]
fn i2_catches_a_broker_without_its_memory_budget() {
    caught_at_runtime(Family::S25, Mutation::NoMemoryBudget, "I2");
}

#[test]
fn i16_catches_a_prober_starved_of_its_messages() {
    caught_at_runtime(Family::S25, Mutation::StarveProber, "I16");
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

// ----- bridge worlds (S13-S15) and the admin plane (S20/S21) ------------------------------

/// Index of the first entry matching `pred`.
fn find(out: &Outcome, pred: impl Fn(&Ev) -> bool) -> Option<usize> {
    out.trace.entries.iter().position(|e| pred(&e.ev))
}

/// The remote subscriber's deliveries of forwarded local messages (S13: actor 3).
fn forwarded(out: &Outcome) -> Vec<(usize, Delivery)> {
    deliveries(out)
        .into_iter()
        .filter(|(_, d)| d.actor == 3 && d.publish.topic.starts_with("fwd/"))
        .collect()
}

#[test]
fn i11_catches_a_message_lost_on_the_uplink() {
    let mut out = passing_run(Family::S13, |o| !forwarded(o).is_empty());
    let tag = forwarded(&out)[0].1.publish.tag;
    out.trace
        .entries
        .retain(|e| !matches!(&e.ev, Ev::Delivered(d) if d.actor == 3 && d.publish.tag == tag));
    out.recheck();
    assert!(flagged(&out, "I11"), "{:?}", out.violations);
}

#[test]
fn i11_catches_a_reordered_drain() {
    let mut out = passing_run(Family::S13, |o| {
        let f = forwarded(o);
        f.iter()
            .any(|(_, a)| f.iter().any(|(_, b)| same_stream(a, b)))
    });
    let f = forwarded(&out);
    let (i, a) = f
        .iter()
        .find(|(_, a)| f.iter().any(|(_, b)| same_stream(a, b)))
        .cloned()
        .unwrap();
    // Every delivery of the earlier seq moves to just after the last of a later one.
    let (j, _) = f
        .iter()
        .rev()
        .find(|(_, b)| same_stream(&a, b))
        .cloned()
        .unwrap();
    let moved = out.trace.entries[i].clone();
    out.trace.entries.retain(
        |e| !matches!(&e.ev, Ev::Delivered(d) if d.actor == 3 && d.publish.tag == a.publish.tag),
    );
    let j = j.min(out.trace.entries.len() - 1);
    let mut moved = moved;
    moved.at = out.trace.entries[j].at;
    out.trace.entries.insert(j + 1, moved);
    out.recheck();
    assert!(flagged(&out, "I11"), "{:?}", out.violations);
}

#[test]
fn i12_catches_a_reconnect_before_its_backoff() {
    let mut out = passing_run(Family::S14, |o| {
        o.trace
            .entries
            .iter()
            .filter(|e| matches!(e.ev, Ev::BridgeConnect { broker: 0, .. }))
            .count()
            > 2
    });
    let i = out
        .trace
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.ev, Ev::BridgeConnect { broker: 0, .. }))
        .nth(2)
        .map(|(i, _)| i)
        .unwrap();
    out.trace.entries[i].at -= 300;
    out.recheck();
    assert!(flagged(&out, "I12"), "{:?}", out.violations);
}

#[test]
fn i12_catches_a_hostile_message_in_a_local_topic() {
    let mut out = passing_run(Family::S14, |o| {
        deliveries(o)
            .iter()
            .any(|(_, d)| matches!(d.publish.tag, Tag::Hostile { .. }))
    });
    let (i, mut d) = deliveries(&out)
        .into_iter()
        .find(|(_, d)| matches!(d.publish.tag, Tag::Hostile { .. }))
        .unwrap();
    d.publish.topic = "loc/evil".to_owned();
    out.trace.entries[i].ev = Ev::Delivered(d);
    out.recheck();
    assert!(flagged(&out, "I12"), "{:?}", out.violations);
}

#[test]
fn loop_guard_catches_a_circulating_message() {
    let mut out = passing_run(Family::S15, |o| {
        find(o, |e| matches!(e, Ev::LinkPublish { up: true, .. })).is_some()
    });
    let i = find(&out, |e| matches!(e, Ev::LinkPublish { up: true, .. })).unwrap();
    let again = out.trace.entries[i].clone();
    out.trace.entries.insert(i + 1, again);
    out.recheck();
    assert!(flagged(&out, "LOOP"), "{:?}", out.violations);
}

#[test]
fn loop_guard_catches_a_second_delivery() {
    let mut out = passing_run(Family::S15, |o| !deliveries(o).is_empty());
    let (i, _) = deliveries(&out).remove(0);
    let again = out.trace.entries[i].clone();
    out.trace.entries.insert(i + 1, again);
    out.recheck();
    assert!(flagged(&out, "LOOP"), "{:?}", out.violations);
}

fn admin_replies(out: &Outcome) -> Vec<usize> {
    out.trace
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.ev, Ev::AdminReply { .. }))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn i13_catches_an_unanswered_request() {
    let mut out = passing_run(Family::S21, |o| !admin_replies(o).is_empty());
    let i = admin_replies(&out)[0];
    out.trace.entries.remove(i);
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);
}

#[test]
fn i13_catches_a_malformed_reply() {
    for bad in [0, 1] {
        let mut out = passing_run(Family::S21, |o| !admin_replies(o).is_empty());
        let i = admin_replies(&out)[0];
        if let Ev::AdminReply { status, body, .. } = &mut out.trace.entries[i].ev {
            if bad == 0 {
                *status = 302;
            } else {
                body.truncate(body.len() - 1);
            }
        }
        out.recheck();
        assert!(flagged(&out, "I13"), "{:?}", out.violations);
    }
}

/// Rewrites the reply to admin request `req_id` as a 200 with `body`.
fn answer_ok(out: &mut Outcome, req_id: u64, body: &str) {
    for e in &mut out.trace.entries {
        if let Ev::AdminReply {
            req_id: r,
            status,
            body: b,
            ..
        } = &mut e.ev
            && *r == req_id
        {
            *status = 200;
            *b = body.to_owned();
        }
    }
}

#[test]
fn i13_catches_fail_open_and_invalid_config_taking_effect() {
    // A wrong password answered 200.
    let mut out = passing_run(Family::S21, |o| {
        find(o, |e| matches!(e, Ev::AdminReq { auth_ok: false, .. })).is_some()
    });
    let i = find(&out, |e| matches!(e, Ev::AdminReq { auth_ok: false, .. })).unwrap();
    let Ev::AdminReq { req_id, .. } = out.trace.entries[i].ev else {
        unreachable!()
    };
    answer_ok(&mut out, req_id, "{\"code\":0,\"seq\":0}");
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);

    // An invalid configuration applied.
    let mut out = passing_run(Family::S20, |o| {
        find(o, |e| matches!(e, Ev::ConfigSent { valid: false })).is_some()
    });
    let i = find(&out, |e| matches!(e, Ev::ConfigSent { valid: false })).unwrap();
    for e in out.trace.entries.iter_mut().skip(i) {
        if let Ev::ConfigEvent { applied } = &mut e.ev {
            *applied = true;
            break;
        }
    }
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);
}

#[test]
fn i13_catches_a_request_head_authorized_with_wrong_credentials() {
    let refused_head = |e: &Ev| matches!(e, Ev::AdminHead { auth_ok: false, .. });
    let mut out = passing_run(Family::S21, |o| find(o, refused_head).is_some());
    let i = find(&out, refused_head).unwrap();
    let Ev::AdminHead { req_id, .. } = out.trace.entries[i].ev else {
        unreachable!()
    };
    for e in &mut out.trace.entries {
        if matches!(&e.ev, Ev::AdminReply { req_id: r, .. } if *r == req_id) {
            e.ev = Ev::AdminAuthorized { req_id };
        }
    }
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);
}

#[test]
fn i13_catches_a_restart_reply_that_hides_what_did_not_apply() {
    let partial = |e: &Ev| matches!(e, Ev::AdminRestarted { ok: false, .. });
    let mut out = passing_run(Family::S21, |o| find(o, partial).is_some());
    let i = find(&out, partial).unwrap();
    let Ev::AdminRestarted { req_id, .. } = out.trace.entries[i].ev else {
        unreachable!()
    };
    answer_ok(&mut out, req_id, "{\"code\":0,\"seq\":1,\"rep\":10}");
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);
}

/// The index of a v4 kick that closed a connection, and that close.
fn v4_kick_close(out: &Outcome) -> Option<(usize, usize)> {
    let entries = &out.trace.entries;
    entries.iter().enumerate().find_map(|(i, e)| {
        if !matches!(
            &e.ev,
            Ev::AdminV4Req {
                kick: Some(_),
                auth_ok: true,
                ..
            }
        ) {
            return None;
        }
        let step = e.step;
        entries
            .iter()
            .enumerate()
            .skip(i + 1)
            .take_while(|(_, x)| x.step == step)
            .find(|(_, x)| {
                matches!(
                    x.ev,
                    Ev::BrokerClosed {
                        by_broker: true,
                        ..
                    }
                )
            })
            .map(|(j, _)| (i, j))
    })
}

#[test]
fn i13_catches_a_kick_that_closes_the_wrong_connection() {
    let mut out = passing_run(Family::S21, |o| v4_kick_close(o).is_some());
    let (_, j) = v4_kick_close(&out).unwrap();
    if let Ev::BrokerClosed { conn, .. } = &mut out.trace.entries[j].ev {
        *conn += 1_000_000;
    }
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);
    // And one that closes nothing.
    let mut out = passing_run(Family::S21, |o| v4_kick_close(o).is_some());
    let (_, j) = v4_kick_close(&out).unwrap();
    out.trace.entries.remove(j);
    out.recheck();
    assert!(flagged(&out, "I13"), "{:?}", out.violations);
}

#[test]
fn i13_catches_a_v4_reply_in_the_wrong_shape() {
    let v4_reply = |o: &Outcome| {
        let reqs: Vec<u64> = o
            .trace
            .entries
            .iter()
            .filter_map(|e| match &e.ev {
                Ev::AdminV4Req {
                    req_id,
                    read: true,
                    auth_ok: true,
                    target,
                    ..
                } if target.starts_with("/api/v4/clients") => Some(*req_id),
                _ => None,
            })
            .collect();
        o.trace
            .entries
            .iter()
            .position(|e| matches!(&e.ev, Ev::AdminReply { req_id, .. } if reqs.contains(req_id)))
    };
    for bad in 0..3 {
        let mut out = passing_run(Family::S21, |o| v4_reply(o).is_some());
        let i = v4_reply(&out).unwrap();
        if let Ev::AdminReply { status, body, .. } = &mut out.trace.entries[i].ev {
            match bad {
                // A read refused.
                0 => {
                    *status = 400;
                    *body = "{\"code\":108}".to_owned();
                }
                // An error with V1's extra keys.
                1 => {
                    *status = 404;
                    *body = "{\"code\":102,\"seq\":0}".to_owned();
                }
                // 200 with an error code.
                _ => *body = "{\"code\":108}".to_owned(),
            }
        }
        out.recheck();
        assert!(flagged(&out, "I13"), "{bad}: {:?}", out.violations);
    }
}

#[test]
fn i15_catches_a_counter_off_by_one() {
    let is_info = |e: &Ev| matches!(e, Ev::AdminReply { status: 200, body, .. } if body.contains("\"message_out\""));
    let mut out = passing_run(Family::S21, |o| find(o, is_info).is_some());
    let i = find(&out, is_info).unwrap();
    if let Ev::AdminReply { body, .. } = &mut out.trace.entries[i].ev {
        let at = body.find("\"message_out\":").unwrap() + "\"message_out\":".len();
        body.insert(at, '1');
    }
    out.recheck();
    assert!(flagged(&out, "I15"), "{:?}", out.violations);
}

/// I2: the broker keeps counting a connection that is gone (a leak), or more sessions
/// than client ids ever seen.
#[test]
fn leaked_connection_or_session_is_caught_by_i2() {
    let has_stats = |o: &Outcome| {
        o.trace
            .entries
            .iter()
            .any(|e| matches!(e.ev, Ev::Stats { .. }))
    };
    let mut out = passing_run(Family::S1, has_stats);
    for e in &mut out.trace.entries {
        if let Ev::Stats { connections, .. } = &mut e.ev {
            *connections += 1;
            break;
        }
    }
    out.recheck();
    assert!(flagged(&out, "I2"), "{:?}", out.violations);

    let mut out = passing_run(Family::S1, has_stats);
    for e in &mut out.trace.entries {
        if let Ev::Stats { sessions, .. } = &mut e.ev {
            *sessions += 1_000;
            break;
        }
    }
    out.recheck();
    assert!(flagged(&out, "I2"), "{:?}", out.violations);
}

// ----- persistence (S6/S7) ------------------------------------------------------------------

fn sync_of(out: &Outcome) -> Option<SyncMode> {
    out.config
        .persistence
        .enable
        .then_some(out.config.persistence.sync)
}

fn crashes(out: &Outcome) -> usize {
    out.trace
        .entries
        .iter()
        .filter(|e| matches!(e.ev, Ev::Crash { .. }))
        .count()
}

/// Whether step `step` handed the store a record an acknowledgement waits for.
fn gated(entries: &[Entry], step: u64) -> bool {
    entries.iter().any(|e| {
        e.step == step
            && matches!(&e.ev, Ev::Persist { recs, .. } if recs.iter().any(|r| r.gating()))
    })
}

#[test]
fn p4_catches_a_store_that_acknowledges_unsynced_records() {
    // `fsync` reported on write, and a crash keeps only what was synced: acknowledged
    // messages, subscriptions and sessions are lost.
    for seed in seeds_of(Family::S6).take(30) {
        let clean = run_seed(seed, None);
        if !clean.violations.is_empty() || sync_of(&clean) != Some(SyncMode::Fsync) {
            continue;
        }
        let out = run_seed(seed, Some(Mutation::StoreAcksUnsynced));
        if flagged(&out, "P4") {
            return;
        }
    }
    panic!("a store losing acknowledged records was never reported as P4");
}

#[test]
fn p1_catches_an_ack_released_before_the_store_reported() {
    // A PUBACK that waited for its records, moved back to the input it answers.
    let held_ack = |o: &Outcome| -> Option<(usize, usize)> {
        let es = &o.trace.entries;
        es.iter().enumerate().find_map(|(i, e)| {
            let Ev::BrokerSent {
                conn,
                pkt: Sent::Ack(AckKind::PubAck, pid, 0),
                ..
            } = &e.ev
            else {
                return None;
            };
            let j = es[..i].iter().rposition(|g| {
                matches!(&g.ev, Ev::BrokerGot { conn: c, pkt: Got::Publish(p), .. }
                    if c == conn && p.qos == 1 && p.pid == Some(*pid))
            })?;
            (es[j].step < e.step && gated(es, es[j].step)).then_some((i, j))
        })
    };
    let mut out = passing_run(Family::S6, |o| {
        sync_of(o) != Some(SyncMode::None) && held_ack(o).is_some()
    });
    let (i, j) = held_ack(&out).unwrap();
    let mut e = out.trace.entries.remove(i);
    e.step = out.trace.entries[j].step;
    e.at = out.trace.entries[j].at;
    out.trace.entries.insert(j + 1, e);
    out.recheck();
    assert!(flagged(&out, "P1"), "{:?}", out.violations);
}

#[test]
fn p3_catches_a_suback_after_the_store_failed() {
    // The store fails just before a persistent session subscribes: its SUBACK must not
    // grant anything.
    let durable_suback = |o: &Outcome| -> Option<u64> {
        let es = &o.trace.entries;
        let durable: std::collections::BTreeSet<u64> = es
            .iter()
            .filter_map(|e| match &e.ev {
                Ev::BrokerGot {
                    conn,
                    pkt: Got::Connect { expiry, .. },
                    ..
                } if *expiry > 0 => Some(*conn),
                _ => None,
            })
            .collect();
        es.iter().find_map(|e| match &e.ev {
            Ev::BrokerGot {
                conn,
                pkt: Got::Subscribe(_),
                ..
            } if durable.contains(conn)
                && e.step > 1
                && es.iter().any(|s| {
                    matches!(&s.ev, Ev::BrokerSent { conn: c, pkt: Sent::SubAck(r), .. }
                        if c == conn && s.step >= e.step && r.iter().any(|q| *q < 0x80))
                }) =>
            {
                Some(e.step)
            }
            _ => None,
        })
    };
    let mut out = passing_run(Family::S6, |o| durable_suback(o).is_some());
    let step = durable_suback(&out).unwrap();
    let i = out
        .trace
        .entries
        .iter()
        .position(|e| e.step == step)
        .unwrap();
    let at = out.trace.entries[i].at;
    out.trace.entries.insert(
        i,
        Entry {
            step: step - 1,
            at,
            ev: Ev::PersistFailed,
        },
    );
    out.recheck();
    assert!(flagged(&out, "P3"), "{:?}", out.violations);
}

#[test]
fn p4_catches_a_restart_that_loses_a_subscription() {
    let mut out = passing_run(Family::S6, |o| {
        crashes(o) > 0
            && o.trace.entries.iter().any(
                |e| matches!(&e.ev, Ev::Restored { sessions, .. } if sessions.iter().any(|s| !s.subs.is_empty())),
            )
    });
    // Drop one restored subscription at a time until the checker notices one.
    let candidates: Vec<(usize, usize)> = out
        .trace
        .entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| match &e.ev {
            Ev::Restored { sessions, .. } => Some(
                sessions
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !s.subs.is_empty())
                    .map(move |(k, _)| (i, k)),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    for (i, k) in candidates {
        let saved = out.trace.entries[i].clone();
        if let Ev::Restored { sessions, .. } = &mut out.trace.entries[i].ev {
            sessions[k].subs.remove(0);
        }
        out.recheck();
        if flagged(&out, "P4") {
            return;
        }
        out.trace.entries[i] = saved;
    }
    panic!("a lost subscription was never reported as P4");
}

#[test]
fn p4_catches_a_stale_retained_message_after_a_restart() {
    let mut out = passing_run(Family::S6, |o| {
        o.trace
            .entries
            .iter()
            .any(|e| matches!(&e.ev, Ev::Restored { retained, .. } if !retained.is_empty()))
    });
    let mut found = false;
    for e in &mut out.trace.entries {
        if let Ev::Restored { retained, .. } = &mut e.ev
            && let Some(r) = retained.first_mut()
        {
            r.1 = Tag::Retained {
                publisher: 99,
                seq: 1,
            };
            found = true;
        }
    }
    assert!(found);
    out.recheck();
    assert!(flagged(&out, "P4"), "{:?}", out.violations);
}

#[test]
fn p2_catches_a_restore_that_drops_state() {
    let mut out = passing_run(Family::S6, |o| crashes(o) > 0);
    for e in &mut out.trace.entries {
        if let Ev::RestoreStats { sessions, .. } = &mut e.ev {
            *sessions += 1;
            break;
        }
    }
    out.recheck();
    assert!(flagged(&out, "P2"), "{:?}", out.violations);
}

#[test]
fn i4_catches_a_duplicated_qos2_delivery_across_restarts() {
    caught_at_runtime(Family::S6, Mutation::DuplicateQos2, "I4");
}

#[test]
fn a2_catches_a_credential_checker_that_makes_everyone_a_superuser() {
    caught_at_runtime(Family::Auth, Mutation::AuthGrantsSuperuser, "A2");
}

#[test]
fn a1_catches_a_reply_sent_before_the_credentials_were_answered() {
    // An allowing answer and the CONNACK that followed it: (answer, CONNACK) positions.
    fn answered_connack(out: &Outcome) -> Option<(usize, usize)> {
        let entries = &out.trace.entries;
        entries.iter().enumerate().find_map(|(i, e)| {
            let Ev::AuthAnswered { conn, outcome: 0 } = e.ev else {
                return None;
            };
            let j = entries[i..].iter().position(|e| {
                matches!(&e.ev, Ev::BrokerSent { conn: c, pkt: Sent::ConnAck { .. }, .. } if *c == conn)
            })?;
            Some((i, i + j))
        })
    }
    let mut out = passing_run(Family::Auth, |o| answered_connack(o).is_some());
    let (i, j) = answered_connack(&out).unwrap();
    // The answer recorded after the CONNACK it allowed: the CONNACK then came first.
    let answer = out.trace.entries.remove(i);
    out.trace.entries.insert(j, answer);
    out.recheck();
    assert!(flagged(&out, "A1"), "{:?}", out.violations);
}
