//! A session without its connection: the will delay and the expiry clock start, and when
//! the session expires (or a clean start replaces it) it ends for good.

use super::Broker;
use crate::api::{BrokerEvent, Instant};
use crate::ids::SessionId;
use crate::persist::Record;
use crate::session::NEVER_EXPIRES;
use crate::timer::Timer;
use crate::topic;

impl Broker {
    /// A session lost its connection: start the will delay and the expiry clock.
    pub(super) fn session_disconnected(&mut self, sid: SessionId) {
        let now = self.now;
        let wall = self.wall_now();
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let expiry = session.expiry_secs;
        if let Some(will) = &session.will {
            let delay = will.properties.will_delay_interval.unwrap_or(0);
            if delay == 0 || expiry == 0 {
                self.publish_will(sid);
            } else {
                session.will_at = Some(now.plus_secs(u64::from(delay.min(expiry))));
            }
        }
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if expiry == 0 {
            self.end_session(sid);
            return;
        }
        if expiry != NEVER_EXPIRES {
            session.expires_at = Some(now.plus_secs(u64::from(expiry)));
        }
        self.offline_by_end.insert(sid, session);
        session.disconnected_at_unix_ms = Some(wall);
        self.store.session_put(session, false);
        self.arm_session_timer(sid);
        self.cluster_session_changed(sid);
    }

    pub(super) fn arm_session_timer(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let at = session.next_deadline();
        self.timers
            .arm(Timer::Session(sid), &mut session.timer_armed, at);
    }

    /// Removes a session for good, publishing a will still pending.
    pub(super) fn end_session(&mut self, sid: SessionId) {
        if self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.will_at.is_some() && s.will.is_some())
        {
            self.publish_will(sid);
        }
        let Some(mut session) = self.sessions.remove(&sid) else {
            return;
        };
        self.offline_by_end.remove(sid, &session);
        self.cluster_release(sid);
        if session.durable {
            self.store.persist(
                Record::SessionDel {
                    client_id: session.client_id.clone(),
                },
                true,
            );
        }
        self.timers
            .arm(Timer::Session(sid), &mut session.timer_armed, None);
        self.by_client_id.remove(&session.client_id);
        for raw in session.subscriptions.keys() {
            if let Ok(parsed) = topic::parse_subscription(raw, usize::MAX) {
                self.unindex_subscription(parsed.filter, parsed.share_group, sid);
            }
        }
        let lost = session.queue.len() + session.inflight.len();
        if lost > 0 {
            self.count_dropped(crate::metrics::DropReason::SessionEnded, lost as u64);
            self.count_drops(&session.client_id, "session ended", lost as u64);
        }
    }

    /// Past the memory budget, offline sessions are ended, those nearest their end first,
    /// until the count is back under it. Whether it is.
    pub(super) fn shed_offline_sessions(&mut self) -> bool {
        if !self.memory.over_budget(self.config.max_memory) {
            return true;
        }
        while let Some(sid) = self.offline_by_end.first() {
            let offline = self.sessions.get(&sid).filter(|s| s.conn.is_none());
            let Some(client_id) = offline.map(|s| s.client_id.clone()) else {
                // Not an offline session any more (kept in step elsewhere; never trusted).
                self.offline_by_end.pop_first();
                continue;
            };
            self.end_session(sid);
            self.event(BrokerEvent::SessionShed { client_id });
            if !self.memory.over_budget(self.config.max_memory) {
                return true;
            }
        }
        false
    }

    pub(super) fn session_timer(&mut self, sid: SessionId, at: Instant) {
        let now = self.now;
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.timer_armed != Some(at) {
            return;
        }
        session.timer_armed = None;
        if session.conn.is_some() {
            return;
        }
        if session.expires_at.is_some_and(|t| t <= now) {
            let client_id = session.client_id.clone();
            self.end_session(sid);
            self.event(BrokerEvent::SessionExpired { client_id });
            return;
        }
        if session.will_at.is_some_and(|t| t <= now) {
            self.publish_will(sid);
        }
        self.arm_session_timer(sid);
    }
}
