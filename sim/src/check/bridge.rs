//! Checkers for the bridge worlds: I11 (store-and-forward), I12 (hostile remote, backoff),
//! and the S15 loop guard (`LOOP`).

use std::collections::{BTreeMap, BTreeSet};

use crate::bridge::{Meta, MiniRole};
use crate::oracle::Violation;
use crate::scenario::Family;
use crate::trace::{Entry, Ev, Got, Tag};

/// Accepted messages of one side: tag -> (publisher, topic, time).
type Accepted = BTreeMap<Tag, (usize, String, u64)>;

pub fn check_bridge(entries: &[Entry], meta: &Meta) -> Vec<Violation> {
    let mut v = Vec::new();
    let mut push = |inv: &'static str, at: u64, detail: String| {
        v.push(Violation {
            invariant: inv,
            at,
            detail,
        })
    };
    let broker_of = |a: usize| meta.actors.get(a).map(|x| x.0);
    let subs: Vec<usize> = (0..meta.actors.len())
        .filter(|a| meta.actors.get(*a).is_some_and(|x| x.1 == MiniRole::Sub))
        .collect();
    let sub_on = |b: u8| subs.iter().copied().find(|a| broker_of(*a) == Some(b));

    let mut accepted: [Accepted; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut read_step: BTreeMap<Tag, u64> = BTreeMap::new();
    let mut published: BTreeSet<Tag> = BTreeSet::new();
    let mut bridge_drops: BTreeMap<u64, u64> = BTreeMap::new();
    let mut remote_session_drops = 0u64;
    // Per subscriber: deliveries in order (time, topic, tag).
    let mut got: BTreeMap<usize, Vec<(u64, String, Tag)>> = BTreeMap::new();
    let mut first_suback: Option<u64> = None;
    let mut link_pubs: BTreeMap<(Tag, u8), u32> = BTreeMap::new();
    let mut quiesced = false;
    let mut end_at = 0;

    // Backoff state per broker: failures since the last BridgeUp, when the next connect is
    // due, whether an attempt is in progress.
    #[derive(Default, Clone)]
    struct Backoff {
        failures: u32,
        due: Option<u64>,
        connecting: bool,
        seen: bool,
    }
    let mut backoff: [Backoff; 2] = [Backoff::default(), Backoff::default()];
    let cap_ms = u64::from(meta.backoff_max.max(1)) * 1000;

    for e in entries {
        let at = e.at;
        end_at = at;
        match &e.ev {
            Ev::Panic(m) => push("I1", at, format!("a core panicked: {m}")),
            Ev::Stuck(m) => push("I1", at, format!("no progress: {m}")),
            Ev::Quiesced => quiesced = true,
            Ev::ClientLost { actor, conn } => push(
                if meta.family == Family::S14 {
                    "I12"
                } else {
                    "I1"
                },
                at,
                format!("client {actor} lost its connection {conn}, no fault was aimed at it"),
            ),
            Ev::BrokerGot {
                pkt: Got::Publish(p),
                ..
            } => {
                read_step.entry(p.tag).or_insert(e.step);
                published.insert(p.tag);
            }
            Ev::PubAcked {
                actor,
                broker,
                topic,
                tag,
            } => {
                if let Some(acc) = accepted.get_mut(usize::from(*broker)) {
                    acc.entry(*tag).or_insert((*actor, topic.clone(), at));
                }
            }
            Ev::BridgeDropped {
                broker,
                client_id,
                count,
                ..
            } => {
                if *broker == 0 && client_id.starts_with("bridge:") {
                    *bridge_drops.entry(e.step).or_default() += count;
                } else if *broker == 1 && client_id == "bridge-a" {
                    remote_session_drops += count;
                }
            }
            Ev::Delivered(d) => {
                got.entry(d.actor)
                    .or_default()
                    .push((at, d.publish.topic.clone(), d.publish.tag))
            }
            Ev::LinkSubAck { owner: 0, reasons }
                if first_suback.is_none() && reasons.iter().all(|r| *r < 0x80) =>
            {
                first_suback = Some(at);
            }
            Ev::LinkPublish {
                owner,
                up: true,
                tag,
                ..
            } => *link_pubs.entry((*tag, *owner)).or_default() += 1,
            Ev::BridgeConnect { broker, conn } => {
                let Some(b) = backoff.get_mut(usize::from(*broker)) else {
                    continue;
                };
                if b.connecting {
                    push(
                        "I12",
                        at,
                        format!("broker {broker}: bridge connect {conn} while an attempt is open"),
                    );
                }
                match b.due {
                    Some(due) if at < due => push(
                        "I12",
                        at,
                        format!(
                            "broker {broker}: bridge reconnect {} ms before its backoff",
                            due - at
                        ),
                    ),
                    Some(due) if at > due + 2 => push(
                        "I12",
                        at,
                        format!("broker {broker}: bridge reconnect {} ms late", at - due),
                    ),
                    None if b.seen => push(
                        "I12",
                        at,
                        format!("broker {broker}: bridge connect without a link down before it"),
                    ),
                    _ => {}
                }
                b.seen = true;
                b.due = None;
                b.connecting = true;
            }
            Ev::BridgeUp { broker } => {
                if let Some(b) = backoff.get_mut(usize::from(*broker)) {
                    b.failures = 0;
                }
            }
            Ev::BridgeDown {
                broker,
                detail,
                retry_in_ms,
            } => {
                if *retry_in_ms == 0 && detail.starts_with("remote refused some") {
                    continue;
                }
                if meta.family == Family::S15 {
                    // No fault is injected there: a healthy link must stay up (keepalive).
                    push(
                        "I12",
                        at,
                        format!("broker {broker}: bridge link dropped with no fault ({detail})"),
                    );
                }
                let Some(b) = backoff.get_mut(usize::from(*broker)) else {
                    continue;
                };
                let base = 1000u64.saturating_mul(1 << b.failures.min(16)).min(cap_ms);
                let (lo, hi) = (base - base / 5, base + base / 5);
                if !(lo..=hi).contains(retry_in_ms) {
                    push(
                        "I12",
                        at,
                        format!(
                            "broker {broker}: retry in {retry_in_ms} ms after {} failures, \
                             expected {lo}..={hi} ({detail})",
                            b.failures
                        ),
                    );
                }
                b.failures = b.failures.saturating_add(1);
                b.due = Some(at + retry_in_ms);
                b.connecting = false;
            }
            _ => {}
        }
    }
    for (i, b) in backoff.iter().enumerate() {
        if let Some(due) = b.due
            && due + 5 < end_at
        {
            push(
                "I12",
                due,
                format!("broker {i}: the bridge never reconnected after its backoff"),
            );
        }
    }

    // At least once, in per-publisher order, from `acc` to subscriber `sub`, with the topic
    // mapped by `map`, for messages accepted at or after `since` (`None`: no completeness
    // check). `budget` says whether a missing tag is explained by a reported drop.
    let at_least_once = |inv: &'static str,
                         acc: &Accepted,
                         sub: Option<usize>,
                         map: &dyn Fn(&str) -> Option<String>,
                         since: Option<u64>,
                         budget: &mut dyn FnMut(&Tag) -> bool,
                         push: &mut dyn FnMut(&'static str, u64, String)| {
        let Some(sub) = sub else {
            return;
        };
        let seen: BTreeMap<Tag, &String> = got
            .get(&sub)
            .map(|g| g.iter().map(|(_, t, tag)| (*tag, t)).collect())
            .unwrap_or_default();
        for (tag, (_, topic, at)) in acc {
            let Some(want) = map(topic) else {
                continue;
            };
            if since.is_none_or(|s| *at < s) {
                continue;
            }
            match seen.get(tag) {
                Some(t) if **t != want => push(
                    inv,
                    *at,
                    format!("{tag:?} reached subscriber {sub} on {t}, expected {want}"),
                ),
                Some(_) => {}
                None if quiesced && !budget(tag) => push(
                    inv,
                    *at,
                    format!("{tag:?} accepted on {topic} never reached subscriber {sub} as {want}"),
                ),
                None => {}
            }
        }
        // Order: a publisher's first deliveries have increasing seqs.
        let mut first: BTreeSet<Tag> = BTreeSet::new();
        let mut last: BTreeMap<usize, u64> = BTreeMap::new();
        for (at, _, tag) in got.get(&sub).into_iter().flatten() {
            let Tag::Msg { publisher, seq } = *tag else {
                continue;
            };
            if !first.insert(*tag) || acc.get(tag).is_none_or(|(_, t, _)| map(t).is_none()) {
                continue;
            }
            if let Some(prev) = last.get(&publisher)
                && *prev > seq
            {
                push(
                    inv,
                    *at,
                    format!(
                        "subscriber {sub}: seq {seq} of publisher {publisher} first seen after {prev}"
                    ),
                );
            }
            let l = last.entry(publisher).or_insert(seq);
            *l = (*l).max(seq);
        }
    };
    let mut pushv = |inv: &'static str, at: u64, d: String| {
        v.push(Violation {
            invariant: inv,
            at,
            detail: d,
        })
    };
    let local = accepted.first().cloned().unwrap_or_default();
    let remote = accepted.get(1).cloned().unwrap_or_default();
    let identity = |t: &str| Some(t.to_owned());
    match meta.family {
        Family::S13 => {
            // Local to remote through the uplink; drops are explained only in their step.
            let mut used: BTreeMap<u64, u64> = BTreeMap::new();
            let mut budget = |tag: &Tag| {
                let Some(step) = read_step.get(tag) else {
                    return false;
                };
                let have = bridge_drops.get(step).copied().unwrap_or(0);
                let u = used.entry(*step).or_default();
                if *u < have {
                    *u += 1;
                    true
                } else {
                    false
                }
            };
            let fwd = |t: &str| t.strip_prefix("t/").map(|r| format!("fwd/{r}"));
            at_least_once(
                "I11",
                &local,
                sub_on(1),
                &fwd,
                Some(0),
                &mut budget,
                &mut pushv,
            );
            // The local copy is untouched by the bridge.
            let local_t = |t: &str| t.starts_with("t/").then(|| t.to_owned());
            at_least_once(
                "I11",
                &local,
                sub_on(0),
                &local_t,
                Some(0),
                &mut |_| false,
                &mut pushv,
            );
            // Remote to local through the bridge subscription: complete only when the remote
            // keeps the bridge's session, from its first subscription on.
            let mut left = remote_session_drops;
            let mut remote_budget = |_: &Tag| {
                if left > 0 {
                    left -= 1;
                    true
                } else {
                    false
                }
            };
            let back = |t: &str| t.strip_prefix("in/").map(|r| format!("from_remote/{r}"));
            let since = if meta.clean_start { None } else { first_suback };
            at_least_once(
                "I11",
                &remote,
                sub_on(0),
                &back,
                since,
                &mut remote_budget,
                &mut pushv,
            );
        }
        Family::S14 => {
            at_least_once(
                "I12",
                &local,
                sub_on(0),
                &identity,
                Some(0),
                &mut |_| false,
                &mut pushv,
            );
        }
        _ => {}
    }

    // Phantoms and hostile leaks.
    for (sub, list) in &got {
        for (at, topic, tag) in list {
            if topic.contains(['+', '#']) || topic.is_empty() {
                pushv(
                    "I12",
                    *at,
                    format!("subscriber {sub} got an invalid topic {topic:?}"),
                );
            }
            match tag {
                Tag::Hostile { .. } if !topic.starts_with("from_remote/") => pushv(
                    "I12",
                    *at,
                    format!("a hostile remote's message leaked into local topic {topic}"),
                ),
                Tag::Msg { .. } if !published.contains(tag) => pushv(
                    if meta.family == Family::S15 {
                        "LOOP"
                    } else {
                        "I11"
                    },
                    *at,
                    format!("subscriber {sub} got {tag:?} that nobody published"),
                ),
                _ => {}
            }
        }
    }

    if meta.family == Family::S15 {
        for acc in [&local, &remote] {
            for tag in acc.keys() {
                for sub in &subs {
                    let n = got
                        .get(sub)
                        .map_or(0, |g| g.iter().filter(|(_, _, t)| t == tag).count());
                    if n != 1 {
                        pushv(
                            "LOOP",
                            end_at,
                            format!("subscriber {sub} got {tag:?} {n} times, expected once"),
                        );
                    }
                }
            }
        }
        for ((tag, owner), n) in &link_pubs {
            if *n > 1 {
                pushv(
                    "LOOP",
                    end_at,
                    format!("the bridge of broker {owner} sent {tag:?} {n} times"),
                );
            }
        }
    }
    if !quiesced && !v.iter().any(|x| x.invariant == "I1") {
        v.push(Violation {
            invariant: "I1",
            at: end_at,
            detail: "the run never quiesced".to_owned(),
        });
    }
    v
}
