//! Cluster mode: when a recorded session has expired (the rule a resume follows too), and
//! the reaper (`cluster/reaper.rs`). The node that scans deletes a sessions bucket entry
//! when its owner's start surely ended ([`Broker::surely_ended`]) and nobody would resume it:
//! a claim without a record, or a record whose session expired by the resume's rule
//! ([`Broker::session_expired`]). An entry whose owner is live, only silent for a while, or
//! not seen to end by this node, stays.

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
    /// live one with the lowest name, connected to NATS for a whole ttl (it has heard every
    /// live node by then; the heartbeats between scans cover a new start too).
    pub(super) fn reap_tick(&mut self) {
        let now = self.now;
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let own = c.config.node_name.as_str();
        let lowest = c.nodes.live().all(|k| k.heartbeat.node.as_str() > own);
        if let Some(token) = c.reaper.beat(lowest && c.heard_all_along(now)) {
            self.outputs.push_back(Output::ClusterScan { token });
        }
    }

    /// Entries of the scan `token`: each one to reap is deleted over the revision read, at
    /// most [`MAX_REAPS_PER_SCAN`] per scan (the rest at the next).
    ///
    /// [`MAX_REAPS_PER_SCAN`]: crate::cluster::reaper::MAX_REAPS_PER_SCAN
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
            let Some(c) = self.cluster.as_deref_mut() else {
                return;
            };
            if !c.reaper.may_reap() {
                break;
            }
            self.outputs
                .push_back(Output::ClusterRelease { key, revision });
        }
        if done && let Some(c) = self.cluster.as_deref_mut() {
            c.reaper.scan = None;
        }
    }

    /// Whether nobody would resume the entry: its owner's start surely ended, and it is a
    /// claim alone (a session that keeps no record) or a record whose session expired,
    /// counted from its disconnect time or else from that end. An owner that is live, or only
    /// silent for less than the grace, keeps its entries whatever their times say.
    fn reapable(&self, key: &str, value: &Bytes) -> bool {
        let Some(c) = self.cluster.as_deref() else {
            return false;
        };
        let Some((node, epoch)) = owner::parse_claim(record::owner_line(value)) else {
            return false;
        };
        if (node, epoch) == (c.config.node_name.as_str(), c.epoch) {
            return false;
        }
        let Some(ended_by) = self
            .start_ended(node, epoch)
            .filter(|&by| self.surely_ended(node, epoch, by))
        else {
            return false;
        };
        let Ok(client_id) = subject::key_name(key) else {
            return false;
        };
        match record::parse_value(value, &client_id).1 {
            None => true,
            Some(Ok(rec)) => {
                let s = &rec.session;
                s.expiry_secs == 0 || self.session_expired(s, Some(ended_by))
            }
            // Not this version's to judge.
            Some(Err(_)) => false,
        }
    }

    /// Whether a start seen to end by `ended_by` surely did, to delete what it left: it is
    /// this node's own earlier start, another start of its node is live now, or it has been
    /// silent for [`silence_grace_ms`] past that. A silence alone can be a live node whose
    /// heartbeats do not arrive for a while (a resume may count from it: the client is
    /// there; a delete cannot be taken back).
    fn surely_ended(&self, node: &str, epoch: u64, ended_by: u64) -> bool {
        let Some(c) = self.cluster.as_deref() else {
            return false;
        };
        let now = self.wall_now();
        if ended_by > now {
            return false;
        }
        let restarted = c
            .nodes
            .start_of(node)
            .is_some_and(|(live, _)| u64::from_str_radix(live, 16).is_ok_and(|e| e != epoch));
        node == c.config.node_name
            || restarted
            || now.saturating_sub(ended_by) >= silence_grace_ms(c.config.node_ttl_ms)
    }
}

/// How long a silent node's entries wait before they may go: 30 `node_ttl`s, at least five
/// minutes (longer than the NATS client takes to find a dead connection, after which a node
/// cut off sends its clients away within a ttl).
fn silence_grace_ms(node_ttl_ms: u64) -> u64 {
    (30 * node_ttl_ms).max(300_000)
}
