//! I8, the retained store: once the run is quiet, what the auditor reads (and the broker's
//! retained count) is the last retained publish per topic that the broker accepted.

use std::collections::BTreeSet;

use super::replay::Replay;
use crate::client::Role;
use crate::oracle::Violation;
use crate::trace::{Entry, Ev, Got, Tag};

#[derive(Default)]
pub struct RetainedCheck {
    /// Retained messages the auditor received: (topic, message).
    audited: BTreeSet<(String, Tag)>,
    /// The broker's last retained count.
    last_stats: Option<u64>,
}

impl RetainedCheck {
    pub fn observe(&mut self, e: &Entry, replay: &Replay) {
        match &e.ev {
            Ev::Stats { retained, .. } => self.last_stats = Some(*retained),
            Ev::Delivered(d) if d.publish.retain && replay.role(d.actor) == Some(Role::Auditor) => {
                self.audited
                    .insert((d.publish.topic.clone(), d.publish.tag));
            }
            _ => {}
        }
    }

    /// After heal, if the auditor read the store.
    pub fn finish(&self, entries: &[Entry], replay: &Replay, out: &mut Vec<Violation>) {
        let auditor_read = entries.iter().any(|e| {
            matches!(&e.ev, Ev::BrokerGot { actor, pkt: Got::Subscribe(_), .. }
                if replay.role(*actor) == Some(Role::Auditor))
        });
        if !auditor_read {
            return;
        }
        let model: BTreeSet<(String, Tag)> = replay
            .retained
            .iter()
            .map(|(t, g)| (t.clone(), *g))
            .collect();
        // The auditor reads `r/#`; the count covers the whole store (adversaries' too).
        let under_r: BTreeSet<(String, Tag)> = model
            .iter()
            .filter(|(t, _)| t.starts_with("r/"))
            .cloned()
            .collect();
        if under_r != self.audited {
            out.push(Violation::new(
                "I8",
                replay.end_at,
                format!("retained store {:?}, expected {under_r:?}", self.audited),
            ));
        }
        if let Some(n) = self.last_stats
            && n != model.len() as u64
        {
            out.push(Violation::new(
                "I8",
                replay.end_at,
                format!("stats count {n} retained, expected {}", model.len()),
            ));
        }
    }
}
