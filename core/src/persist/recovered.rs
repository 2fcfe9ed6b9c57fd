//! Replay: records applied in order rebuild the state a restarted broker resumes from.

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::QoS;

use super::record::{Record, StoredMessage};

/// A delivery owed to a session after replay.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedDelivery {
    pub msg_id: u64,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Packet id and whether PUBREL went out, for a QoS 2 delivery under way.
    pub out_state: Option<(u16, bool)>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecoveredSession {
    pub version: u8,
    pub expiry_secs: u32,
    pub disconnected_at_unix_ms: Option<u64>,
    /// Raw filter -> (options byte, subscription id).
    pub subscriptions: BTreeMap<String, (u8, Option<u32>)>,
    pub queue: BTreeMap<u64, QueuedDelivery>,
    pub awaiting_rel: BTreeSet<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BridgeEntry {
    pub msg_id: u64,
    pub qos: QoS,
    pub retain: bool,
}

/// Durable state rebuilt from a snapshot and the records after it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recovered {
    pub sessions: BTreeMap<String, RecoveredSession>,
    pub messages: BTreeMap<u64, StoredMessage>,
    pub retained: BTreeMap<String, u64>,
    pub bridges: BTreeMap<String, BTreeMap<u64, BridgeEntry>>,
    /// The sequence number of the last record applied.
    pub last_seq: u64,
}

impl Recovered {
    /// Applies one record. Records that refer to something absent change nothing.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::SessionPut {
                client_id,
                version,
                expiry_secs,
                disconnected_at_unix_ms,
            } => {
                let s = self.sessions.entry(client_id).or_default();
                s.version = version;
                s.expiry_secs = expiry_secs;
                s.disconnected_at_unix_ms = disconnected_at_unix_ms;
            }
            Record::SessionDel { client_id } => {
                self.sessions.remove(&client_id);
            }
            Record::SubPut {
                client_id,
                filter,
                options,
                subscription_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.subscriptions.insert(filter, (options, subscription_id));
                }
            }
            Record::SubDel { client_id, filter } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.subscriptions.remove(&filter);
                }
            }
            Record::MsgPut(m) => {
                self.messages.insert(m.id, *m);
            }
            Record::QueuePut {
                client_id,
                entry,
                msg_id,
                qos,
                retain,
                subscription_ids,
                sent,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.queue.insert(
                        entry,
                        QueuedDelivery {
                            msg_id,
                            qos,
                            retain,
                            subscription_ids,
                            out_state: sent.map(|pid| (pid, false)),
                        },
                    );
                }
            }
            Record::OutState {
                client_id,
                entry,
                packet_id,
                released,
            } => {
                if let Some(d) = self
                    .sessions
                    .get_mut(&client_id)
                    .and_then(|s| s.queue.get_mut(&entry))
                {
                    d.out_state = Some((packet_id, released));
                }
            }
            Record::QueueDel { client_id, entry } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.queue.remove(&entry);
                }
            }
            Record::InQos2Put {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.awaiting_rel.insert(packet_id);
                }
            }
            Record::InQos2Del {
                client_id,
                packet_id,
            } => {
                if let Some(s) = self.sessions.get_mut(&client_id) {
                    s.awaiting_rel.remove(&packet_id);
                }
            }
            Record::RetainPut { topic, msg_id } => {
                self.retained.insert(topic, msg_id);
            }
            Record::RetainDel { topic } => {
                self.retained.remove(&topic);
            }
            Record::BridgePut {
                bridge,
                entry,
                msg_id,
                qos,
                retain,
            } => {
                self.bridges.entry(bridge).or_default().insert(
                    entry,
                    BridgeEntry {
                        msg_id,
                        qos,
                        retain,
                    },
                );
            }
            Record::BridgeDel { bridge, entry } => {
                if let Some(b) = self.bridges.get_mut(&bridge) {
                    b.remove(&entry);
                }
            }
        }
    }

    /// Drops what nothing refers to any more: messages no delivery, retained topic or bridge
    /// entry uses, and deliveries or retained topics whose message is missing.
    pub fn prune(&mut self) {
        let messages = &self.messages;
        for s in self.sessions.values_mut() {
            s.queue.retain(|_, d| messages.contains_key(&d.msg_id));
        }
        self.retained.retain(|_, id| messages.contains_key(id));
        for b in self.bridges.values_mut() {
            b.retain(|_, e| messages.contains_key(&e.msg_id));
        }
        self.bridges.retain(|_, b| !b.is_empty());
        let mut used = BTreeSet::new();
        for s in self.sessions.values() {
            used.extend(s.queue.values().map(|d| d.msg_id));
        }
        used.extend(self.retained.values().copied());
        for b in self.bridges.values() {
            used.extend(b.values().map(|e| e.msg_id));
        }
        self.messages.retain(|id, _| used.contains(id));
    }

    /// Counts for the start-up log line.
    pub fn summary(&self) -> String {
        let queued: usize = self.sessions.values().map(|s| s.queue.len()).sum();
        let subs: usize = self.sessions.values().map(|s| s.subscriptions.len()).sum();
        let bridged: usize = self.bridges.values().map(BTreeMap::len).sum();
        format!(
            "{} sessions, {} subscriptions, {} queued or in-flight messages, {} retained, {} \
             bridge messages, {} message bodies",
            self.sessions.len(),
            subs,
            queued,
            self.retained.len(),
            bridged,
            self.messages.len()
        )
    }
}
