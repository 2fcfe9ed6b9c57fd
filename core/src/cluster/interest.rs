//! Which NATS subscriptions this node holds: one set per distinct filter (or share group and
//! filter) its local sessions have, made by the first session to subscribe and dropped with the
//! last, so interest is per node, never per session.

use std::collections::BTreeMap;

use super::subject::{self, Space};
use crate::api::Output;

/// A distinct subscription of this node: the filter, and the share group if any.
pub type Key = (String, Option<String>);

struct Held {
    /// Its number: later keys have higher ones (see `Subscription::cluster_key`).
    number: u64,
    /// Local subscriptions (session, filter) behind it.
    sessions: u32,
    /// The NATS subscription ids made for it (two for `f/#`).
    sids: Vec<u64>,
}

/// Why a subscription cannot be carried to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its subject, or subject and queue group, is longer than `max_subject_len`.
    TooLong,
    /// The node holds `max_subscriptions` NATS subscriptions already.
    Full,
}

#[derive(Default)]
pub struct Interest {
    held: BTreeMap<Key, Held>,
    /// Each NATS subscription's key and that key's number.
    by_sid: BTreeMap<u64, (Key, u64)>,
    /// NATS subscriptions held, over every key.
    subscriptions: usize,
    next_sid: u64,
    next_number: u64,
}

/// Filters of the broker's own `$SYS` topics stay on their node: each node's figures are its
/// own.
pub fn node_local(filter: &str) -> bool {
    filter.starts_with("$SYS")
}

impl Interest {
    /// The NATS subscriptions `key` needs, or why it cannot have them. Asked before a
    /// session is given the subscription; a key already held always passes.
    pub fn check(
        &self,
        prefix: &str,
        key: &Key,
        max_len: usize,
        max_subscriptions: usize,
    ) -> Result<(), Refusal> {
        if self.held.contains_key(key) || node_local(&key.0) {
            return Ok(());
        }
        let subs = nats_subscription(prefix, key, max_len)?;
        if self.subscriptions + subs.subjects.len() > max_subscriptions {
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// The number of `key`, if the node holds it.
    pub fn number(&self, key: &Key) -> Option<u64> {
        self.held.get(key).map(|h| h.number)
    }

    /// One more local subscription to `key`; the first asks the runtime to subscribe. The
    /// key's number (0: no NATS subscription, e.g. `$SYS`).
    pub fn add(&mut self, prefix: &str, key: Key, max_len: usize, out: &mut Vec<Output>) -> u64 {
        if node_local(&key.0) {
            return 0;
        }
        if let Some(held) = self.held.get_mut(&key) {
            held.sessions += 1;
            return held.number;
        }
        // `check` passed before; a key that cannot be mapped gets no NATS subscription.
        let Ok(subs) = nats_subscription(prefix, &key, max_len) else {
            return 0;
        };
        self.next_number += 1;
        let number = self.next_number;
        let mut sids = Vec::with_capacity(subs.subjects.len());
        for subject in subs.subjects {
            self.next_sid += 1;
            let sid = self.next_sid;
            sids.push(sid);
            self.by_sid.insert(sid, (key.clone(), number));
            out.push(Output::ClusterSubscribe {
                sid,
                subject,
                queue: subs.queue.clone(),
            });
        }
        self.subscriptions += sids.len();
        self.held.insert(
            key,
            Held {
                number,
                sessions: 1,
                sids,
            },
        );
        number
    }

    /// One local subscription to `key` fewer; the last asks the runtime to unsubscribe.
    pub fn remove(&mut self, key: &Key, out: &mut Vec<Output>) {
        let Some(held) = self.held.get_mut(key) else {
            return;
        };
        held.sessions = held.sessions.saturating_sub(1);
        if held.sessions > 0 {
            return;
        }
        if let Some(held) = self.held.remove(key) {
            self.subscriptions = self.subscriptions.saturating_sub(held.sids.len());
            for sid in held.sids {
                self.by_sid.remove(&sid);
                out.push(Output::ClusterUnsubscribe { sid });
            }
        }
    }

    /// The subscription a NATS subscription id was made for, and its number.
    pub fn key_of(&self, sid: u64) -> Option<&(Key, u64)> {
        self.by_sid.get(&sid)
    }

    /// NATS subscriptions held.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions
    }

    /// Distinct filters (and share groups) held.
    pub fn filters(&self) -> usize {
        self.held.len()
    }
}

fn nats_subscription(
    prefix: &str,
    key: &Key,
    max_len: usize,
) -> Result<subject::NatsSubscription, Refusal> {
    let raw = match &key.1 {
        Some(group) => format!("$share/{group}/{}", key.0),
        None => key.0.clone(),
    };
    // The filter was parsed already: only its length can fail here.
    subject::subscription(prefix, Space::Live, &raw, max_len).map_err(|_| Refusal::TooLong)
}
