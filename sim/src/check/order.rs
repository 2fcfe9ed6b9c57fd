//! I5, order: for each (subscriber, topic, QoS, publisher), first deliveries come in the
//! publisher's order.

use std::collections::{BTreeMap, BTreeSet};

use super::replay::Replay;
use crate::oracle::Violation;
use crate::trace::{Entry, Ev, Tag};

#[derive(Default)]
pub struct OrderCheck {
    /// Messages each actor has received.
    seen: BTreeSet<(usize, Tag)>,
    /// The highest seq first delivered per (actor, topic, QoS published, publisher).
    last_seq: BTreeMap<(usize, String, u8, usize), u64>,
}

impl OrderCheck {
    pub fn observe(&mut self, e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
        let Ev::Delivered(d) = &e.ev else {
            return;
        };
        let p = &d.publish;
        let actor = d.actor;
        let fresh = d.first && !(p.dup && self.seen.contains(&(actor, p.tag)));
        // A message routed twice (publisher resend) may legitimately overtake: its first
        // copy can have been dropped (QoS 0 to a slow or absent reader).
        let rerouted = replay.accepted.get(&p.tag).is_some_and(|a| a.routed > 1)
            || replay.absorbed.contains(&p.tag);
        if let Tag::Msg { publisher, seq } = p.tag
            && !p.retain
            && fresh
            && !rerouted
            && !self.seen.contains(&(actor, p.tag))
        {
            let pq = replay.accepted.get(&p.tag).map_or(p.qos, |a| a.publish.qos);
            let key = (actor, p.topic.clone(), pq, publisher);
            if let Some(last) = self.last_seq.get(&key)
                && *last > seq
            {
                out.push(Violation::new(
                    "I5",
                    e.at,
                    format!(
                        "actor {actor} on {}: seq {seq} of publisher {publisher} after {last}",
                        p.topic
                    ),
                ));
            }
            let last = self.last_seq.entry(key).or_insert(seq);
            *last = (*last).max(seq);
        }
        self.seen.insert((actor, p.tag));
    }
}
