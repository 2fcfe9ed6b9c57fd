//! Delivery: I6 (nothing delivered that was not accepted, altered, past its expiry or
//! without a matching subscription at acceptance), I4 (QoS 2 exactly once) and, once the
//! run is quiet, I3 and I4's "none lost" (QoS 1/2 reach every surviving matching session).
//!
//! Across restarts with persistence, a message accepted in a step whose records a crash
//! kept must still reach its persistent subscribers, and QoS 2 stays exactly once unless a
//! crash lost acknowledged records.

use std::collections::{BTreeMap, BTreeSet};

use super::replay::{Accepted, Replay};
use crate::client::Role;
use crate::oracle::Violation;
use crate::trace::{Delivery, Entry, Ev, Pub, Sent, Tag};

#[derive(Default)]
pub struct DeliveryCheck {
    /// Deliveries by (client id, generation).
    got_by_session: BTreeSet<(String, u32, Tag)>,
    /// QoS 2 first deliveries per (actor, message): count, and the broker life of the last.
    q2_first: BTreeMap<(usize, Tag), (u32, u32)>,
    /// QoS 2 first deliveries to a share group.
    q2_group_first: BTreeMap<Tag, u32>,
}

impl DeliveryCheck {
    pub fn observe(&mut self, e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
        match &e.ev {
            Ev::BrokerSent {
                pkt: Sent::Publish(p),
                conn,
                ..
            } => sent_in_time(e.at, *conn, p, replay, out),
            Ev::Delivered(d) => {
                accepted_as_delivered(e.at, d, replay, out);
                let cid = replay.actors.get(d.actor).map(|a| a.client_id.clone());
                if let Some(cid) = cid {
                    let generation = replay.generation_of(d.conn);
                    self.got_by_session.insert((cid, generation, d.publish.tag));
                }
                self.exactly_once(e.at, d, replay, out);
            }
            _ => {}
        }
    }

    /// I4: no second first delivery of a QoS 2 message to one subscriber, or to one share
    /// group.
    fn exactly_once(&mut self, at: u64, d: &Delivery, replay: &Replay, out: &mut Vec<Violation>) {
        let p = &d.publish;
        let actor = d.actor;
        let storm_publisher =
            matches!(p.tag, Tag::Msg { publisher, .. } if replay.is_storm(publisher));
        if !(p.qos == 2
            && d.first
            && !p.retain
            && !replay.is_storm(actor)
            && !storm_publisher
            && replay.accepted.get(&p.tag).is_none_or(|a| {
                !replay.lossy_across(&a.incarnations) && a.publisher_gens.len() <= 1
            })
            && matches!(p.tag, Tag::Msg { .. }))
        {
            return;
        }
        let incarnation = replay.incarnation;
        // A crash that lost acknowledged records between two first deliveries may have
        // forgotten that the first one completed.
        let (n, life_of) = self
            .q2_first
            .entry((actor, p.tag))
            .or_insert((0, incarnation));
        if replay.lossy_across(&BTreeSet::from([*life_of, incarnation])) {
            *n = 0;
        }
        *life_of = incarnation;
        *n += 1;
        if *n > 1 {
            out.push(Violation::new(
                "I4",
                at,
                format!("actor {actor}: second first delivery of {:?}", p.tag),
            ));
        }
        if replay.role(actor) == Some(Role::SharedMember) {
            let n = self.q2_group_first.entry(p.tag).or_insert(0);
            *n += 1;
            if *n > 1 {
                out.push(Violation::new(
                    "I4",
                    at,
                    format!("group: {:?} delivered twice", p.tag),
                ));
            }
        }
    }

    /// After heal: I3 (and I4's "none lost"), QoS 1/2 reach every surviving matching
    /// session.
    pub fn finish(&self, replay: &Replay, out: &mut Vec<Violation>) {
        let sessions = &replay.sessions;
        let final_gen = |cid: &str| sessions.get(cid).map(|s| s.generation);
        let storm_ids: BTreeSet<String> = replay
            .actors
            .iter()
            // Nothing is promised to storm actors or adversaries.
            .filter(|a| matches!(a.role, Role::Storm | Role::Flood(_)))
            .map(|a| a.client_id.clone())
            .collect();
        let survives = |cid: &str, g: u32| {
            final_gen(cid) == Some(g)
                && !storm_ids.contains(cid)
                && sessions
                    .get(cid)
                    .is_some_and(|s| !s.dropped_gens.contains(&g))
        };
        for (tag, a) in &replay.accepted {
            if a.publish.qos == 0 || a.publish.retain || a.publish.expiry.is_some() {
                continue;
            }
            if !matches!(tag, Tag::Msg { .. }) {
                continue;
            }
            for (cid, g, q) in &a.targets {
                if *q == 0 || !survives(cid, *g) || !a.required.contains(&(cid.clone(), *g, *q)) {
                    continue;
                }
                if !self.got_by_session.contains(&(cid.clone(), *g, *tag)) {
                    let inv = if a.publish.qos == 2 && *q == 2 {
                        "I4"
                    } else {
                        "I3"
                    };
                    out.push(Violation::new(
                        inv,
                        a.at,
                        format!(
                            "{tag:?} (QoS {}, {}) never reached {cid} generation {g}",
                            a.publish.qos, a.publish.topic
                        ),
                    ));
                }
            }
            for (group, members, q) in &a.groups {
                if *q == 0 || !members.iter().all(|(c, g)| survives(c, *g)) {
                    continue;
                }
                if !members
                    .iter()
                    .any(|(c, g)| self.got_by_session.contains(&(c.clone(), *g, *tag)))
                {
                    out.push(Violation::new(
                        "I3",
                        a.at,
                        format!("{tag:?} never reached share group {group}"),
                    ));
                }
            }
        }
    }
}

/// I6: nothing sent after its expiry, except a resend (DUP) that finishes a delivery
/// already started (v5 §3.3.2.3.3), and a remaining expiry within the original.
fn sent_in_time(at: u64, conn: u64, p: &Pub, replay: &Replay, out: &mut Vec<Violation>) {
    let Some(a) = replay.accepted.get(&p.tag) else {
        return;
    };
    let Some(secs) = a.publish.expiry else {
        return;
    };
    if at >= a.last_at + u64::from(secs) * 1000 && !p.dup {
        out.push(Violation::new(
            "I6",
            at,
            format!("conn {conn}: {:?} sent after its expiry", p.tag),
        ));
    }
    if p.expiry.is_some_and(|left| left == 0 || left > secs) {
        out.push(Violation::new(
            "I6",
            at,
            format!("conn {conn}: {:?} expiry {:?} of {secs}", p.tag, p.expiry),
        ));
    }
}

/// I6: only accepted messages, unaltered, only to subscriptions that matched at acceptance.
/// (Wills are I9's.)
fn accepted_as_delivered(at: u64, d: &Delivery, replay: &Replay, out: &mut Vec<Violation>) {
    let p = &d.publish;
    let actor = d.actor;
    match p.tag {
        Tag::Msg { .. } | Tag::Retained { .. } => match replay.accepted.get(&p.tag) {
            None => out.push(Violation::new(
                "I6",
                at,
                format!("actor {actor}: {:?} delivered, never accepted", p.tag),
            )),
            Some(a) => {
                if a.publish.topic != p.topic || p.qos > a.publish.qos {
                    out.push(Violation::new(
                        "I6",
                        at,
                        format!("actor {actor}: {:?} altered in transit", p.tag),
                    ));
                }
                if p.retain && matches!(p.tag, Tag::Msg { .. }) {
                    out.push(Violation::new(
                        "I6",
                        at,
                        format!("actor {actor}: {:?} carries RETAIN", p.tag),
                    ));
                }
                if !p.retain {
                    subscribed_at_acceptance(at, d, a, replay, out);
                }
            }
        },
        Tag::Will { .. } => {}
        Tag::Empty | Tag::Other | Tag::Hostile { .. } => {
            if !replay.other_topics.contains(&p.topic) {
                out.push(Violation::new(
                    "I6",
                    at,
                    format!("actor {actor}: unexpected message on {}", p.topic),
                ));
            }
        }
    }
}

/// I6: a live delivery goes to a session (this generation) that was a target when the
/// message was accepted, at the QoS it was granted, or to a member of a share group.
fn subscribed_at_acceptance(
    at: u64,
    d: &Delivery,
    a: &Accepted,
    replay: &Replay,
    out: &mut Vec<Violation>,
) {
    let p = &d.publish;
    let actor = d.actor;
    let cid = replay
        .actors
        .get(actor)
        .map(|a| a.client_id.clone())
        .unwrap_or_default();
    let generation = replay.generation_of(d.conn);
    let mine = |(c, g, _): &&(String, u32, u8)| *c == cid && *g == generation;
    let direct = a
        .targets
        .iter()
        .filter(mine)
        .map(|t| t.2)
        .find(|q| p.qos == (*q).min(a.publish.qos))
        .or_else(|| a.targets.iter().find(mine).map(|t| t.2));
    let shared = a
        .groups
        .iter()
        .any(|(_, m, _)| m.iter().any(|(c, g)| *c == cid && *g == generation));
    match direct {
        Some(q) if p.qos != q.min(a.publish.qos) && !shared => out.push(Violation::new(
            "I6",
            at,
            format!("actor {actor}: {:?} at QoS {} (granted {q})", p.tag, p.qos),
        )),
        None if !shared => out.push(Violation::new(
            "I6",
            at,
            format!(
                "actor {actor} generation {generation}: {:?} on {} without a matching subscription at acceptance",
                p.tag, p.topic
            ),
        )),
        _ => {}
    }
}
