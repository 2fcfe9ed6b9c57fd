//! I7, resend discipline and the inflight window as the client sees them: a DUP resend only
//! after a reconnect and under the message's own packet id, no packet id reused while in
//! flight, never more in flight than Receive Maximum.

use std::collections::{BTreeMap, BTreeSet};

use super::replay::Replay;
use crate::oracle::Violation;
use crate::trace::{AckKind, Delivery, Entry, Ev, Tag};

#[derive(Default)]
pub struct InflightCheck {
    /// Packet ids in flight per connection.
    conn_inflight: BTreeMap<u64, BTreeSet<u16>>,
    /// (connection, packet id, message) already sent on that connection.
    conn_seen: BTreeSet<(u64, u16, Tag)>,
    /// The last message sent under each packet id of a session (actor, generation), and
    /// its QoS.
    pid_tag: BTreeMap<(usize, u32, u16), (Tag, u8)>,
    /// Packet ids not yet acknowledged per session (actor, generation).
    unacked: BTreeMap<(usize, u32), BTreeSet<u16>>,
}

impl InflightCheck {
    pub fn observe(&mut self, e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
        match &e.ev {
            Ev::BrokerStart { incarnation } if replay.store => {
                self.forget_lazy_ids(*incarnation, replay);
            }
            Ev::Delivered(d) => self.delivered(e.at, d, replay, out),
            Ev::ClientAck {
                actor,
                conn,
                kind: AckKind::PubAck | AckKind::PubComp,
                pid,
            } => {
                if let Some(s) = self.conn_inflight.get_mut(conn) {
                    s.remove(pid);
                }
                let generation = replay.generation_of(*conn);
                if let Some(s) = self.unacked.get_mut(&(*actor, generation)) {
                    s.remove(pid);
                }
            }
            _ => {}
        }
    }

    /// A QoS 1 delivery's packet id and its completion are written lazily: a crash can
    /// forget either, and the restored broker may resend a message the subscriber already
    /// acknowledged (DUP, under its old id, which may have been reused since) or send an
    /// unfinished one under a new id. A crash that lost acknowledged records (an `os` power
    /// loss) may have forgotten QoS 2 ids as well: the client and the broker disagree.
    fn forget_lazy_ids(&mut self, incarnation: u32, replay: &Replay) {
        let lossy = incarnation > 0 && replay.durable.crash_of(replay.life).is_none_or(|c| c.lossy);
        let forgotten: Vec<(usize, u32, u16)> = self
            .pid_tag
            .iter()
            .filter(|(_, (_, q))| *q == 1 || lossy)
            .map(|(k, _)| *k)
            .collect();
        for (a, g, pid) in forgotten {
            self.pid_tag.remove(&(a, g, pid));
            if let Some(s) = self.unacked.get_mut(&(a, g)) {
                s.remove(&pid);
            }
        }
    }

    fn delivered(&mut self, at: u64, d: &Delivery, replay: &Replay, out: &mut Vec<Violation>) {
        let p = &d.publish;
        let actor = d.actor;
        if p.qos == 0 || replay.is_storm(actor) {
            return;
        }
        let generation = replay.generation_of(d.conn);
        let pid = p.pid.unwrap_or(0);
        let key = (actor, generation);
        if p.dup {
            if self.conn_seen.contains(&(d.conn, pid, p.tag)) {
                out.push(Violation::new(
                    "I7",
                    at,
                    format!(
                        "actor {actor} conn {}: DUP resend of pid {pid} without reconnect",
                        d.conn
                    ),
                ));
            }
            // With a store, a first transmission can die with the broker after the id's
            // earlier message completed: the resend is the first copy.
            let in_flight =
                !replay.store || self.unacked.get(&key).is_some_and(|s| s.contains(&pid));
            if let Some((t, _)) = self.pid_tag.get(&(actor, generation, pid))
                && in_flight
                && *t != p.tag
            {
                out.push(Violation::new(
                    "I7",
                    at,
                    format!(
                        "actor {actor}: DUP pid {pid} carries {:?}, was {t:?}",
                        p.tag
                    ),
                ));
            }
        } else if self.unacked.get(&key).is_some_and(|s| s.contains(&pid)) {
            out.push(Violation::new(
                "I7",
                at,
                format!(
                    "actor {actor}: pid {pid} reused while in flight ({:?})",
                    p.tag
                ),
            ));
        }
        self.pid_tag
            .insert((actor, generation, pid), (p.tag, p.qos));
        self.conn_seen.insert((d.conn, pid, p.tag));
        self.unacked.entry(key).or_default().insert(pid);
        let set = self.conn_inflight.entry(d.conn).or_default();
        set.insert(pid);
        let limit = replay
            .actors
            .get(actor)
            .and_then(|a| a.receive_max.filter(|_| a.v5))
            .unwrap_or(u16::MAX)
            .min(replay.config.max_inflight);
        if set.len() > usize::from(limit) {
            out.push(Violation::new(
                "I7",
                at,
                format!(
                    "actor {actor} conn {}: {} in flight, Receive Maximum {limit}",
                    d.conn,
                    set.len()
                ),
            ));
        }
    }
}
