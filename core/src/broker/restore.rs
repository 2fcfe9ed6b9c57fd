//! Restoring the broker from what the store recovered: sessions with their subscriptions,
//! queues, messages in flight and inbound QoS 2 ids, retained messages, bridge outboxes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Broker;
use crate::api::{BrokerEvent, Instant};
use crate::codec::QoS;
use crate::config::Config;
use crate::durable::version_from_level;
use crate::message::{Content, Message, Origin};
use crate::persist::{Record, Recovered};
use crate::session::{Delivery, NEVER_EXPIRES, Session};
use crate::topic;
use crate::window::InboundQos2;

impl Broker {
    /// A broker that resumes what its store recovered: sessions, subscriptions, queues and
    /// messages in flight, retained messages, bridge outboxes. `unix_ms` is the wall clock
    /// at `now`. Its records (sessions found expired, restarted expiry clocks) are the first
    /// output.
    pub fn from_recovered(
        config: Config,
        seed: u64,
        now: Instant,
        state: Recovered,
        unix_ms: u64,
    ) -> Broker {
        let mut broker = Broker::new(config, seed, now);
        broker.restore(state, unix_ms);
        broker
    }

    fn restore(&mut self, state: Recovered, unix_ms: u64) {
        let mut state = state;
        state.prune();
        self.wall_ms = unix_ms;
        self.wall_at = self.now;
        self.store.recovered(state.last_seq);
        let now = self.now;
        let instant_of = |unix: u64| -> Instant {
            if unix >= unix_ms {
                now.plus_ms(unix - unix_ms)
            } else {
                now
            }
        };
        let mut messages: BTreeMap<u64, Arc<Message>> = BTreeMap::new();
        for (id, m) in std::mem::take(&mut state.messages) {
            let content = Content {
                topic: m.topic,
                payload: m.payload,
                qos: m.qos,
                retain: m.retain,
                properties: m.properties,
            };
            let expires_at = m.expires_at_unix_ms.map(instant_of);
            let ledger = &self.memory.ledger;
            let msg = Arc::new(Message::new(
                id,
                content,
                Origin::Broker,
                expires_at,
                self.now,
                ledger,
            ));
            // Its body is in the store already.
            self.store.recovered_message(&msg);
            messages.insert(id, msg);
        }
        for (topic, id) in &state.retained {
            if let Some(m) = messages.get(id)
                && topic::validate_topic_name(topic, usize::MAX).is_ok()
            {
                self.retained.insert(topic, m.clone());
            }
        }
        for (client_id, rs) in std::mem::take(&mut state.sessions) {
            let elapsed_ms = rs
                .disconnected_at_unix_ms
                .map_or(0, |at| unix_ms.saturating_sub(at));
            let expired = rs.expiry_secs != NEVER_EXPIRES
                && elapsed_ms >= u64::from(rs.expiry_secs).saturating_mul(1000);
            if expired || rs.expiry_secs == 0 || self.by_client_id.contains_key(&client_id) {
                self.store.persist(
                    Record::SessionDel {
                        client_id: client_id.clone(),
                    },
                    false,
                );
                self.event(BrokerEvent::SessionExpired { client_id });
                continue;
            }
            let sid = self.next_session_id;
            self.next_session_id += 1;
            let version = version_from_level(rs.version);
            let mut s = Session::new(client_id.clone(), version, &self.memory.ledger);
            s.durable = true;
            s.expiry_secs = rs.expiry_secs;
            s.disconnected_at_unix_ms = Some(rs.disconnected_at_unix_ms.unwrap_or(unix_ms));
            // Connected when the broker stopped: its expiry runs from this start, and the store
            // must say so, or every later restart would start the clock again.
            let restarted_clock =
                rs.disconnected_at_unix_ms
                    .is_none()
                    .then(|| Record::SessionPut {
                        client_id: client_id.clone(),
                        version: rs.version,
                        expiry_secs: rs.expiry_secs,
                        disconnected_at_unix_ms: Some(unix_ms),
                    });
            if rs.expiry_secs != NEVER_EXPIRES {
                let left = u64::from(rs.expiry_secs) * 1000 - elapsed_ms;
                s.expires_at = Some(now.plus_ms(left));
            }
            self.restore_subscriptions(sid, &mut s, rs.subscriptions);
            for (entry, q) in rs.queue {
                let Some(msg) = messages.get(&q.msg_id) else {
                    continue;
                };
                s.next_entry = s.next_entry.max(entry + 1);
                let delivery =
                    Delivery::new(msg.clone(), q.qos, q.retain, q.subscription_ids, entry);
                match q.out_state {
                    Some((pid, released))
                        if pid != 0 && q.qos != QoS::AtMostOnce && !s.inflight.contains(pid) =>
                    {
                        s.inflight.push(pid, delivery);
                        if released && q.qos == QoS::ExactlyOnce {
                            s.inflight.release(pid);
                        }
                    }
                    _ => s.queue.push_back(delivery),
                }
            }
            s.inflight.mark_all_unsent();
            s.qos2_in = InboundQos2::restored(rs.awaiting_rel);
            if let Some(record) = restarted_clock {
                self.store.persist(record, false);
            }
            self.offline_by_end.insert(sid, &s);
            self.sessions.insert(sid, Box::new(s));
            self.by_client_id.insert(client_id, sid);
            self.arm_session_timer(sid);
        }
        let bridges = std::mem::take(&mut state.bridges);
        self.restore_bridges(bridges, &messages);
        self.flush_records();
    }
}
