//! I16: while adversaries attack (S25), an honest client's QoS 1 messages keep arriving. Each
//! prober publishes to its own topic and is subscribed to it; every message the broker read
//! from it after its subscription was granted must reach it within [`BOUND_MS`].

use std::collections::{BTreeMap, BTreeSet};

use crate::client::Role;
use crate::oracle::Violation;
use crate::trace::{Entry, Ev, Got, Sent, Tag};
use crate::world::ActorInfo;

/// Milliseconds of simulated time a prober's message may take to come back to it.
pub const BOUND_MS: u64 = 5_000;

pub fn check(entries: &[Entry], actors: &[ActorInfo]) -> Vec<Violation> {
    let probers: BTreeSet<usize> = actors
        .iter()
        .enumerate()
        .filter(|(_, a)| a.role == Role::Prober)
        .map(|(i, _)| i)
        .collect();
    if probers.is_empty() {
        return Vec::new();
    }
    let mut armed: BTreeSet<usize> = BTreeSet::new();
    // Messages read by the broker and not yet back, with when they were read.
    let mut waiting: BTreeMap<Tag, u64> = BTreeMap::new();
    let mut out = Vec::new();
    let late = |tag: &Tag, since: u64, at: u64, out: &mut Vec<Violation>| {
        out.push(Violation::new(
            "I16",
            at,
            format!("{tag:?}, read at {since} ms, not back at its prober within {BOUND_MS} ms"),
        ));
    };
    for e in entries {
        match &e.ev {
            Ev::BrokerSent {
                actor,
                pkt: Sent::SubAck(codes),
                ..
            } if probers.contains(actor) && codes.iter().all(|c| *c < 0x80) => {
                armed.insert(*actor);
            }
            Ev::BrokerGot {
                actor,
                pkt: Got::Publish(p),
                ..
            } if armed.contains(actor) && p.qos == 1 => {
                if let Tag::Msg { publisher, .. } = p.tag
                    && publisher == *actor
                {
                    waiting.entry(p.tag).or_insert(e.at);
                }
            }
            Ev::Delivered(d) if probers.contains(&d.actor) => {
                if let Some(since) = waiting.remove(&d.publish.tag)
                    && e.at > since + BOUND_MS
                {
                    late(&d.publish.tag, since, e.at, &mut out);
                }
            }
            _ => {}
        }
        let overdue: Vec<Tag> = waiting
            .iter()
            .filter(|(_, since)| e.at > *since + BOUND_MS)
            .map(|(t, _)| *t)
            .collect();
        for tag in overdue {
            if let Some(since) = waiting.remove(&tag) {
                late(&tag, since, e.at, &mut out);
            }
        }
    }
    out
}
