//! I9, wills: published only for a connection that ended without DISCONNECT 0x00, at most
//! once, never before its delay, and (once the run is quiet) every will that came due while
//! the watcher listened was published.

use std::collections::{BTreeMap, BTreeSet};

use super::replay::Replay;
use crate::client::Role;
use crate::oracle::Violation;
use crate::suspend;
use crate::trace::{Delivery, Entry, Ev, Sent, Tag};

#[derive(Default)]
pub struct WillCheck {
    /// First deliveries to the watcher per will, and the broker life of the last one.
    seen: BTreeMap<Tag, (u32, u32)>,
    /// When the broker first sent each will to the watcher.
    sent_at: BTreeMap<Tag, u64>,
    /// QoS 0 wills sent to the watcher: when, and on which connection.
    sent_qos0_on: BTreeMap<Tag, (u64, u64)>,
    /// The watcher's connections: when something last reached it on each, and when each
    /// was lost.
    watcher_got_at: BTreeMap<u64, u64>,
    watcher_lost_at: BTreeMap<u64, u64>,
}

impl WillCheck {
    pub fn observe(&mut self, e: &Entry, replay: &Replay, out: &mut Vec<Violation>) {
        match &e.ev {
            Ev::BrokerSent {
                pkt: Sent::Publish(p),
                actor,
                conn,
            } => {
                if let Tag::Will { .. } = p.tag
                    && replay.role(*actor) == Some(Role::Watcher)
                {
                    self.sent_at.entry(p.tag).or_insert(e.at);
                    if p.qos == 0 {
                        self.sent_qos0_on.entry(p.tag).or_insert((e.at, *conn));
                    }
                }
            }
            Ev::Delivered(d) => {
                if replay.role(d.actor) == Some(Role::Watcher) {
                    self.watcher_got_at.insert(d.conn, e.at);
                }
                if matches!(d.publish.tag, Tag::Will { .. }) {
                    self.delivered(e.at, d, replay, out);
                }
            }
            Ev::ClientLost { actor, conn } if replay.role(*actor) == Some(Role::Watcher) => {
                self.watcher_lost_at.entry(*conn).or_insert(e.at);
            }
            _ => {}
        }
    }

    fn delivered(&mut self, at: u64, d: &Delivery, replay: &Replay, out: &mut Vec<Violation>) {
        let p = &d.publish;
        let actor = d.actor;
        let known = replay
            .wills
            .values()
            .any(|w| w.tag == p.tag && !w.normal && w.ended.is_some_and(|end| end <= at));
        if !known {
            out.push(Violation::new(
                "I9",
                at,
                format!("actor {actor}: will {:?} that should not exist", p.tag),
            ));
        }
        // At most once, never early. The first copy the watcher sees may be a resend (DUP):
        // the copy sent before died with a restarted broker, or with a watcher connection
        // that the broker had not yet seen die (a keep-alive cut after a suspension).
        if replay.role(actor) != Some(Role::Watcher)
            || (p.dup && self.seen.contains_key(&p.tag))
            || !d.first
        {
            return;
        }
        let incarnation = replay.incarnation;
        let (n, life_of) = self.seen.entry(p.tag).or_insert((0, incarnation));
        // A crash that lost acknowledged records may forget the will's delivery completed,
        // and send it again.
        if replay.lossy_across(&BTreeSet::from([*life_of, incarnation])) {
            *n = 0;
        }
        *life_of = incarnation;
        *n += 1;
        if *n > 1 {
            out.push(Violation::new(
                "I9",
                at,
                format!("will {:?} published twice", p.tag),
            ));
        }
        if let Some(w) = replay.wills.values().find(|w| w.tag == p.tag)
            && w.ended.is_some_and(|end| at < end + w.delay_ms)
        {
            out.push(Violation::new(
                "I9",
                at,
                format!("will {:?} before its delay", p.tag),
            ));
        }
    }

    /// After heal: every will due before the end was published (once the watcher
    /// listened), and none after DISCONNECT 0x00.
    pub fn finish(&self, entries: &[Entry], replay: &Replay, out: &mut Vec<Violation>) {
        let quiesced_at = entries
            .iter()
            .find(|e| e.ev == Ev::Quiesced)
            .map_or(replay.end_at, |e| e.at);
        let watcher_dropped = replay
            .sessions
            .get("watcher")
            .is_some_and(|s| !s.dropped_gens.is_empty());
        let suspensions = suspend::suspensions(entries);
        let durable = replay.durable;
        let watcher = &replay.watcher;
        for (conn, w) in &replay.wills {
            let Some(end) = w.ended else {
                continue;
            };
            // A will delay that ran out while the broker was suspended takes effect when it
            // resumes, after the keep-alive cuts that came due before it.
            let due = suspend::broker_runs_at(&suspensions, end + w.delay_ms);
            if w.normal {
                if self.seen.contains_key(&w.tag) {
                    out.push(Violation::new(
                        "I9",
                        end,
                        format!("conn {conn}: will after DISCONNECT 0x00"),
                    ));
                }
                continue;
            }
            // A restart without persistence also loses a will already sent but not yet
            // received.
            let sent = self.sent_at.get(&w.tag);
            let restarted = replay
                .restarts
                .iter()
                .any(|r| *r >= end && (*r <= due || sent.is_some_and(|s| s <= r)))
                // With a store, a will published just before a crash may still have been
                // held behind the store (with the records its publication produced, or
                // behind other output to the watcher), and it dies with the broker.
                || durable.lives.iter().filter_map(|l| l.crash.as_ref()).any(|c| {
                    c.at >= due
                        && sent.is_none_or(|s| *s > c.at)
                        && c.may_lose_will(durable.will_records.get(&w.tag).copied())
                });
            // A QoS 0 will is lost while the watcher is away: only judge when it listened.
            let watcher_away = watcher.down.iter().any(|(a, b)| due >= *a && due <= *b)
                || watcher.down_since.is_some_and(|a| due >= a);
            if w.cancelled
                || restarted
                || watcher_away
                || self.lost_in_flight(&w.tag)
                // Only a will never stored for the watcher (QoS 0) can die with held output.
                || (!durable.will_records.contains_key(&w.tag)
                    && watcher_output_died_held(entries, replay, due))
                || !w.watcher_ready
                || watcher_dropped
                || due > quiesced_at
            {
                continue;
            }
            if !self.seen.contains_key(&w.tag) {
                out.push(Violation::new(
                    "I9",
                    due,
                    format!(
                        "conn {conn} ({}): will {:?} never published",
                        w.client_id, w.tag
                    ),
                ));
            }
        }
    }
    /// A QoS 0 will sent on a watcher connection that was lost before anything sent after it
    /// arrived (a keep-alive cut after a suspension, say) died on the way.
    fn lost_in_flight(&self, tag: &Tag) -> bool {
        self.sent_qos0_on.get(tag).is_some_and(|(sent, conn)| {
            self.watcher_lost_at
                .get(conn)
                .is_some_and(|lost| lost >= sent)
                && self.watcher_got_at.get(conn).is_none_or(|got| got < sent)
        })
    }
}

/// With a store, output to the watcher waits behind its own records (a SUBACK, say), and a
/// QoS 0 will queued behind them dies with the watcher's connection if that closes first:
/// the connection the watcher had open at `due` closed later without the broker sending it
/// anything from `due` on.
fn watcher_output_died_held(entries: &[Entry], replay: &Replay, due: u64) -> bool {
    if !replay.store {
        return false;
    }
    let mut open: Option<u64> = None;
    let mut closed_at: Option<u64> = None;
    for e in entries {
        match &e.ev {
            Ev::ConnOpened { conn, actor }
                if e.at <= due && replay.role(*actor) == Some(Role::Watcher) =>
            {
                open = Some(*conn);
                closed_at = None;
            }
            Ev::BrokerClosed { conn, .. } | Ev::ClientLost { conn, .. }
                if Some(*conn) == open && closed_at.is_none() =>
            {
                closed_at = Some(e.at);
            }
            _ => {}
        }
    }
    let (Some(conn), Some(closed)) = (open, closed_at) else {
        return false;
    };
    closed >= due
        && !entries.iter().any(|e| {
            e.at >= due
                && e.at <= closed
                && matches!(&e.ev, Ev::BrokerSent { conn: c, .. } if *c == conn)
        })
}
