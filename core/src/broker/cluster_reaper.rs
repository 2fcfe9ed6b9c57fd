//! Cluster mode: when a recorded session has expired (the rule a resume follows too), and
//! the reaper (`cluster/reaper.rs`). The node that scans deletes a sessions
//! bucket entry when its owner's start has ended (as far as this node knows: see
//! [`Broker::start_ended`]) and nobody would resume it: a claim without a record, or a record
//! whose session expired by the rule a returning client's resume follows
//! ([`Broker::session_expired`]). Never earlier than that resume would find it gone; an entry
//! whose owner is live, or whose end this node did not see, stays.

use bytes::Bytes;

use super::Broker;
use crate::api::Output;
use crate::cluster::{owner, record, subject};
use crate::persist::RecoveredSession;
use crate::session::NEVER_EXPIRES;

impl Broker {
    /// When `node`'s start `epoch` ended, if this node knows: its own earlier starts when this
    /// one began, another node's when this node saw it end ([`nodes::Nodes::ended_by`]).
    /// `None` for this start and for starts not seen to end.
    ///
    /// [`nodes::Nodes::ended_by`]: crate::cluster::nodes::Nodes::ended_by
    pub(super) fn start_ended(&self, node: &str, epoch: u64) -> Option<u64> {
        let c = self.cluster.as_deref()?;
        if node == c.config.node_name {
            (epoch != c.epoch).then(|| self.wall().of(self.started))
        } else {
            c.nodes.ended_by(node, epoch)
        }
    }

    /// Whether a recorded session has expired: its expiry counted from its disconnect, or,
    /// when its node's start ended with it connected (no disconnect time in its record),
    /// from `ended`, when that start ended. Otherwise it does not expire until resumed.
    pub(super) fn session_expired(&self, s: &RecoveredSession, ended: Option<u64>) -> bool {
        match s.disconnected_at_unix_ms.or(ended) {
            Some(at) if s.expiry_secs != NEVER_EXPIRES => {
                self.wall_now().saturating_sub(at) >= u64::from(s.expiry_secs) * 1000
            }
            _ => false,
        }
    }

    /// At each heartbeat: a scan of the sessions bucket when one is due and this node is the
    /// live one with the lowest name, connected to NATS for a whole ttl (it knows which
    /// nodes live).
    pub(super) fn reap_tick(&mut self) {
        let now = self.now;
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let own = c.config.node_name.as_str();
        let lowest = c.nodes.live().all(|k| k.heartbeat.node.as_str() > own);
        let knows = c.link_down_since.is_none() && now.since(c.link_up_at) >= c.config.node_ttl_ms;
        if let Some(token) = c.reaper.beat(lowest && knows) {
            self.outputs.push_back(Output::ClusterScan { token });
        }
    }

    /// Entries of the scan `token`: each one to reap is deleted over the revision read.
    pub(super) fn cluster_scanned(
        &mut self,
        token: u64,
        entries: Vec<(String, Bytes, u64)>,
        done: bool,
    ) {
        if self.cluster.as_deref().and_then(|c| c.reaper.scan) != Some(token) {
            return;
        }
        for (key, value, revision) in entries {
            if !self.reapable(&key, &value) {
                continue;
            }
            if let Some(c) = self.cluster.as_deref_mut() {
                c.reaper.reaped += 1;
            }
            self.outputs
                .push_back(Output::ClusterRelease { key, revision });
        }
        if done && let Some(c) = self.cluster.as_deref_mut() {
            c.reaper.scan = None;
        }
    }

    fn reapable(&self, key: &str, value: &Bytes) -> bool {
        let Some(c) = self.cluster.as_deref() else {
            return false;
        };
        let Ok(client_id) = subject::key_name(key) else {
            return false;
        };
        let (line, rec) = record::parse_value(value, &client_id);
        let Some((node, epoch)) = owner::parse_claim(line) else {
            return false;
        };
        // This start's own: it ends them itself.
        if (node, epoch) == (c.config.node_name.as_str(), c.epoch) {
            return false;
        }
        let ended = self.start_ended(node, epoch);
        match rec {
            // A claim alone: a session that keeps no record.
            None => ended.is_some(),
            Some(Ok(rec)) => {
                let s = &rec.session;
                self.session_expired(s, ended) || (ended.is_some() && s.expiry_secs == 0)
            }
            // Not this version's to judge.
            Some(Err(_)) => false,
        }
    }
}
