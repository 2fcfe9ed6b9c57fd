//! The retained messages a new subscription receives. They are walked out of the retained
//! store in steps of bounded work, as fast as the subscriber's window and writer take them,
//! and ahead of anything routed to it after the subscription: a SUBSCRIBE to many filters
//! over a large store costs no more per input than any other packet, and a subscriber that
//! does not read holds a cursor, not copies of the store.

use super::Broker;
use crate::codec::QoS;
use crate::ids::SessionId;
use crate::metrics::DropReason;
use crate::persist::Record;
use crate::session::{Delivery, Replay, Subscription};
use crate::timer::Timer;

/// Retained-store nodes one step of one session's replays may visit.
const STEP_VISITS: usize = 1024;
/// A replay that used up its step goes on this much later, after other inputs.
const STEP_PAUSE_MS: u64 = 1;
/// Bytes a delivery adds to a PUBLISH beyond its topic and payload (header, packet id,
/// properties): what the writer's room is reckoned with.
const PUBLISH_OVERHEAD: usize = 16;

impl Broker {
    /// Owes `sid` the retained messages under `filter` (sent from [`Broker::pump`]).
    pub(super) fn start_replay(&mut self, sid: SessionId, filter: String, sub: Subscription) {
        let last_msg_id = self.store.last_message_id();
        if let Some(session) = self.sessions.get_mut(&sid) {
            let replay = Replay {
                filter,
                sub,
                from: Vec::new(),
                last_msg_id,
            };
            session.replays.push(replay, &self.memory.ledger);
        }
    }

    /// Sends retained messages owed to `sid` while its window and writer have room, within
    /// one step's work. True when nothing is owed any more.
    pub(super) fn replay_step(&mut self, sid: SessionId) -> bool {
        let mut visits = STEP_VISITS;
        loop {
            let Some(session) = self.sessions.get(&sid) else {
                return true;
            };
            let Some(replay) = session.replays.front() else {
                return true;
            };
            let Some(conn) = session.conn else {
                return false;
            };
            let mut bytes_room = self.write_room(conn);
            let mut window_room = self
                .inflight_limit(conn)
                .saturating_sub(session.inflight.len());
            if bytes_room == 0 {
                return false;
            }
            let (filter, sub, last_msg_id) =
                (replay.filter.clone(), replay.sub, replay.last_msg_id);
            let now = self.now;
            let mut out = Vec::new();
            let mut expired = Vec::new();
            let mut full = false;
            let stopped =
                self.retained
                    .walk_matching(&filter, &replay.from, &mut visits, |topic, msg| {
                        if msg.id > last_msg_id {
                            return true;
                        }
                        if msg.expired(now) {
                            expired.push(topic.to_owned());
                            return true;
                        }
                        let qos = sub.options.qos.min(msg.qos);
                        if bytes_room == 0 || (qos != QoS::AtMostOnce && window_room == 0) {
                            full = true;
                            return false;
                        }
                        bytes_room = bytes_room
                            .saturating_sub(msg.topic.len() + msg.payload.len() + PUBLISH_OVERHEAD);
                        if qos != QoS::AtMostOnce {
                            window_room -= 1;
                        }
                        out.push(Delivery::new(
                            msg.clone(),
                            qos,
                            true,
                            sub.id.into_iter().collect(),
                            0,
                        ));
                        true
                    });
            // Expired retained messages are never delivered again: forget them.
            for topic in expired {
                self.retained.remove(&topic);
                self.store.persist(Record::RetainDel { topic }, false);
            }
            for mut d in out {
                if !self.keep_delivery(sid, &mut d) {
                    self.drop_message(sid, DropReason::StoreFailed);
                    continue;
                }
                self.send_now(sid, conn, d);
            }
            let Some(session) = self.sessions.get_mut(&sid) else {
                return true;
            };
            match stopped {
                None => session.replays.pop_front(),
                Some(from) => {
                    session.replays.advance_front(from);
                    if !full {
                        // Out of work for this step, not out of room: go on soon.
                        self.replay_due(sid);
                    }
                    return false;
                }
            }
        }
    }

    fn replay_due(&mut self, sid: SessionId) {
        self.replay_due.sessions.insert(sid);
        if self.replay_due.armed.is_none() {
            let at = self.now.plus_ms(STEP_PAUSE_MS);
            self.timers
                .arm(Timer::Replay, &mut self.replay_due.armed, Some(at));
        }
    }

    pub(super) fn replay_timer(&mut self) {
        self.replay_due.armed = None;
        for sid in std::mem::take(&mut self.replay_due.sessions) {
            self.pump(sid);
        }
    }
}
