//! Delivery to a session: send now or queue (QoS 0 to a slow reader is dropped), the
//! outbound window of packet ids in flight, PUBLISH encoding (once per fan-out for QoS 0),
//! resending after a reconnect, and the acknowledgements that end each flow (PUBACK; PUBREC,
//! PUBREL, PUBCOMP).

use bytes::Bytes;

use super::Broker;
use super::cluster_qos2::Qos2Wait;
use crate::api::ConnId;
use crate::codec::{Ack, Packet, ProtocolVersion, PublishRef, QoS, reason};
use crate::conn::ConnState;
use crate::ids::SessionId;
use crate::memory::FAIR_QUEUE;
use crate::message::EncodedQos0;
use crate::metrics::DropReason;
use crate::session::Delivery;
use crate::sys;
use crate::window::OutStage;

impl Broker {
    /// Sends now if the window and the writer allow, else queues (QoS 1/2, or QoS 0 behind
    /// them for a connected client) within `msq_len`. QoS 0 to a stalled writer is dropped.
    pub(super) fn deliver(&mut self, sid: SessionId, d: Delivery) {
        let mut d = d;
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if d.msg.expired(self.now) {
            return self.drop_message(sid, DropReason::Expired);
        }
        match session.conn {
            None if d.qos == QoS::AtMostOnce => {}
            Some(conn) if d.qos == QoS::AtMostOnce && !self.can_write(conn) => {
                self.drop_message(sid, DropReason::SlowReader);
            }
            Some(conn)
                if session.queue.is_empty()
                    && session.replays.is_empty()
                    && session.inflight.all_sent()
                    && self.can_write(conn)
                    && (d.qos == QoS::AtMostOnce
                        || (session.inflight.len() < self.inflight_limit(conn)
                            && self.qos2_has_room(sid, &d))) =>
            {
                if !self.keep_delivery(sid, &mut d) {
                    return self.drop_message(sid, DropReason::StoreFailed);
                }
                self.send_now(sid, conn, d);
            }
            _ => {
                if session.queue.len() >= self.config.msq_len as usize {
                    return self.drop_message(sid, DropReason::QueueFull);
                }
                // Past the memory budget's high mark queues stop growing; a short one (a
                // client that keeps up, between two acknowledgements) still takes a message.
                if session.queue.len() >= FAIR_QUEUE
                    && self.memory.under_pressure(self.config.max_memory)
                {
                    return self.drop_message(sid, DropReason::MemoryBudget);
                }
                if !self.keep_delivery(sid, &mut d) {
                    return self.drop_message(sid, DropReason::StoreFailed);
                }
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.queue.push_back(d);
                }
            }
        }
    }

    /// A durable session's QoS 1/2 delivery is numbered and stored; false if it cannot be.
    pub(super) fn keep_delivery(&mut self, sid: SessionId, d: &mut Delivery) -> bool {
        // Only a QoS 1/2 delivery not yet numbered is the store's business.
        if d.qos == QoS::AtMostOnce || d.entry != 0 {
            return true;
        }
        let wall = self.wall();
        match self.sessions.get_mut(&sid) {
            Some(session) => self.store.keep_delivery(session, d, wall),
            None => true,
        }
    }

    /// A stored delivery finished or was dropped.
    fn forget_delivery(&mut self, sid: SessionId, entry: u64) {
        if entry == 0 {
            return;
        }
        if let Some(session) = self.sessions.get(&sid) {
            self.store.forget_delivery(session, entry);
        }
    }

    pub(super) fn inflight_limit(&self, conn: ConnId) -> usize {
        let client = self
            .conns
            .get(&conn)
            .map_or(u16::MAX, |c| c.client_receive_maximum);
        usize::from(client.min(self.config.max_inflight))
    }

    pub(super) fn drop_message(&mut self, sid: SessionId, reason: DropReason) {
        let why = drop_text(reason);
        self.count_dropped(reason, 1);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.messages_dropped += 1;
            match self.drops.get_mut(s.client_id.as_str()) {
                Some(by_why) => *by_why.entry(why).or_insert(0) += 1,
                None => {
                    let client_id = s.client_id.clone();
                    self.count_drops(&client_id, why, 1);
                }
            }
        }
    }

    /// Writes a delivery, taking a packet id and an inflight slot for QoS 1/2.
    pub(super) fn send_now(&mut self, sid: SessionId, conn: ConnId, d: Delivery) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let version = session.version;
        if d.qos == QoS::AtMostOnce {
            self.write_publish(conn, version, &d, None, false);
            return;
        }
        let Some(pid) = session.inflight.allocate_packet_id(None) else {
            self.forget_delivery(sid, d.entry);
            return self.drop_message(sid, DropReason::OverLimit);
        };
        // After a restart the same packet id carries on [MQTT-4.4.0-1]. For QoS 2 the record
        // must be durable before the PUBLISH leaves (else a new id could mean a second
        // delivery); for QoS 1 a lost record only costs a resend under a new id.
        self.store.out_state(session, d.entry, pid, d.qos, false);
        // Likewise in a cluster, for the session's record in the sessions bucket.
        if self.cluster.is_some() && self.qos2_recorded_first(sid, &d) {
            if let Some(session) = self.sessions.get_mut(&sid) {
                session.inflight.push(pid, d);
            }
            return self.qos2_owe(sid, pid);
        }
        if !self.write_publish(conn, version, &d, Some(pid), false) {
            self.forget_delivery(sid, d.entry);
        } else if let Some(session) = self.sessions.get_mut(&sid) {
            session.inflight.push(pid, d);
        }
    }

    /// Encodes one PUBLISH to a connection. False when it was dropped instead (expired, or
    /// larger than the client accepts: the spec says to act as if it was sent).
    fn write_publish(
        &mut self,
        conn: ConnId,
        version: ProtocolVersion,
        d: &Delivery,
        pid: Option<u16>,
        dup: bool,
    ) -> bool {
        let now = self.now;
        let msg = &d.msg;
        // A QoS 2 delivery never leaves before the records that accepted the message are
        // durable: after a crash the publisher would resend it, and it would be new again.
        if d.qos == QoS::ExactlyOnce {
            self.store.wait_for(self.store.needs(msg));
        }
        // Expiry stops a delivery that has not started; a resend finishes what was started
        // (v5 §3.3.2.3.3), so its packet id is never freed while the client may hold it.
        if msg.expired(now) && !dup {
            self.count_dropped(DropReason::Expired, 1);
            return false;
        }
        let alias_table = version.is_v5()
            && self
                .conns
                .get(&conn)
                .is_some_and(|c| c.out_aliases.is_some());
        let extra = version.is_v5()
            && (!d.subscription_ids.is_empty() || msg.expires_at.is_some() || alias_table);
        let cacheable = pid.is_none() && !extra && !dup;
        if cacheable && let Some(bytes) = self.cached_qos0(msg.id, version, d.retain) {
            return self.write_encoded(conn, &bytes, d);
        }
        let mut properties = std::borrow::Cow::Borrowed(&msg.properties);
        if extra {
            let p = properties.to_mut();
            p.subscription_identifiers = d.subscription_ids.clone();
            if let Some(at) = msg.expires_at {
                p.message_expiry_interval = Some((at.since(now).div_ceil(1000) as u32).max(1));
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let longest = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: &msg.topic,
            packet_id: pid,
            properties: &properties,
            payload: &msg.payload,
        }
        .encoded_len(version);
        // The limit is checked on the longest form (topic and alias), before the alias table
        // is touched: a client never learns of an alias the broker did not send.
        let alias_property = if alias_table { 3 } else { 0 };
        if longest + alias_property > c.client_max_packet_size as usize {
            self.count_dropped(DropReason::OverLimit, 1);
            return false;
        }
        let mut topic: &str = &msg.topic;
        if let Some((alias, with_topic)) =
            c.out_aliases.as_mut().and_then(|t| t.alias_for(&msg.topic))
        {
            properties.to_mut().topic_alias = Some(alias);
            if !with_topic {
                // The client knows the alias: it stands for the topic.
                topic = "";
            }
        }
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic,
            packet_id: pid,
            properties: &properties,
            payload: &msg.payload,
        };
        if c.tx.is_empty() {
            self.dirty.push(conn);
        }
        let start = c.tx.len();
        if publish.encode(version, &mut c.tx).is_err() {
            // The client may not have learnt an alias the table now holds: stop using them.
            c.out_aliases = None;
            self.count_dropped(DropReason::OverLimit, 1);
            return false;
        }
        if cacheable {
            self.last_qos0 = Some(EncodedQos0 {
                msg_id: msg.id,
                version,
                retain: d.retain,
                conn,
                range: start..c.tx.len(),
                bytes: None,
            });
        }
        self.count_sent(conn, d, dup);
        true
    }

    /// A PUBLISH written: `$SYS` deliveries are counted apart from the messages.
    fn count_sent(&mut self, conn: ConnId, d: &Delivery, dup: bool) {
        if sys::is_reserved(&d.msg.topic) {
            self.counters.sys_out();
            return;
        }
        let latency = (!dup).then(|| self.now.since(d.msg.received_at));
        self.counters
            .publish_out(d.qos, d.msg.payload.len(), latency);
        self.stats.messages_sent += 1;
        if let Some(c) = self.conns.get(&conn)
            && let ConnState::Active(sid) = c.state
            && let Some(s) = self.sessions.get_mut(&sid)
        {
            s.messages_sent += 1;
        }
    }

    /// The encoded QoS 0 PUBLISH of message `msg_id`, if it was the last one encoded.
    fn cached_qos0(
        &mut self,
        msg_id: u64,
        version: ProtocolVersion,
        retain: bool,
    ) -> Option<Bytes> {
        let cache = self.last_qos0.as_mut()?;
        if cache.msg_id != msg_id || cache.version != version || cache.retain != retain {
            return None;
        }
        if cache.bytes.is_none() {
            let c = self.conns.get(&cache.conn)?;
            let encoded = c.tx.get(cache.range.clone())?;
            cache.bytes = Some(Bytes::copy_from_slice(encoded));
        }
        cache.bytes.clone()
    }

    /// Appends an already encoded PUBLISH.
    fn write_encoded(&mut self, conn: ConnId, bytes: &[u8], d: &Delivery) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if bytes.len() > c.client_max_packet_size as usize {
            self.count_dropped(DropReason::OverLimit, 1);
            return false;
        }
        if c.tx.is_empty() {
            self.dirty.push(conn);
        }
        c.tx.extend_from_slice(bytes);
        self.count_sent(conn, d, false);
        true
    }

    /// Resends what is in flight from an earlier connection, then moves queued messages
    /// out, while the connection, window and writer allow.
    pub(super) fn pump(&mut self, sid: SessionId) {
        loop {
            let Some(session) = self.sessions.get(&sid) else {
                return;
            };
            let Some(conn) = session.conn else {
                return;
            };
            if !self.can_write(conn) {
                return;
            }
            let limit = self.inflight_limit(conn);
            if let Some(pid) = session.inflight.next_resend() {
                if session.inflight.sent_count() >= limit {
                    return;
                }
                match self.cluster.as_ref().and_then(|_| self.qos2_wait(sid, pid)) {
                    // Sent once its record is written.
                    Some(Qos2Wait::Record) => {
                        if let Some(s) = self.sessions.get_mut(&sid) {
                            s.inflight.mark_sent(pid);
                        }
                    }
                    // Nothing after it goes before it.
                    Some(Qos2Wait::Message) => return,
                    None => self.resend(sid, conn, pid),
                }
                continue;
            }
            // Retained messages owed to a new subscription go before what came after it.
            if !session.replays.is_empty() {
                if self.replay_step(sid) {
                    continue;
                }
                return;
            }
            let Some(front) = session.queue.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && session.inflight.len() >= limit {
                return;
            }
            if self.cluster.is_some() && !self.qos2_has_room(sid, front) {
                return;
            }
            let Some(d) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.queue.pop_front())
            else {
                return;
            };
            if d.msg.expired(self.now) {
                self.forget_delivery(sid, d.entry);
                self.drop_message(sid, DropReason::Expired);
                continue;
            }
            self.send_now(sid, conn, d);
        }
    }

    /// Resends a message in flight before a reconnect: PUBLISH with DUP, or PUBREL.
    fn resend(&mut self, sid: SessionId, conn: ConnId, pid: u16) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.inflight.mark_sent(pid);
        }
        // Everything in flight went out once: resends carry DUP and finish even if the
        // message has expired since.
        self.send_in_flight(sid, conn, pid, true);
    }

    /// Writes the packet a message in flight is at: its PUBLISH (`dup`: not the first
    /// time), or its PUBREL.
    pub(super) fn send_in_flight(&mut self, sid: SessionId, conn: ConnId, pid: u16, dup: bool) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let version = session.version;
        let Some(f) = session.inflight.get(pid) else {
            return;
        };
        match f.stage {
            OutStage::Published => {
                let delivery = f.item.clone();
                if !self.write_publish(conn, version, &delivery, Some(pid), dup) {
                    // Larger than the client now accepts: forget it.
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.inflight.remove(pid);
                    }
                    self.forget_delivery(sid, delivery.entry);
                    self.qos2_finished(sid, &delivery);
                }
            }
            OutStage::Released => self.send(
                conn,
                version,
                &Packet::PubRel(Ack::new(pid, reason::SUCCESS)),
            ),
        }
    }

    /// PUBACK: a QoS 1 delivery is done.
    pub(super) fn handle_puback(&mut self, sid: SessionId, pid: u16) {
        let session = self.sessions.get_mut(&sid);
        if let Some(session) = session
            && session
                .inflight
                .get(pid)
                .is_some_and(|f| f.item.qos == QoS::AtLeastOnce)
        {
            let entry = session.inflight.remove(pid).map_or(0, |f| f.item.entry);
            self.forget_delivery(sid, entry);
            self.pump(sid);
        }
    }

    /// PUBREC: a QoS 2 delivery was received; PUBREL follows (v5: a refusal ends the flow).
    pub(super) fn handle_pubrec(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        a: Ack,
    ) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        match session.inflight.get(a.packet_id) {
            Some(f) if f.item.qos == QoS::ExactlyOnce => {
                if a.reason.is_error() {
                    // The receiver refused it: the flow ends here.
                    if let Some(f) = session.inflight.remove(a.packet_id) {
                        self.forget_delivery(sid, f.item.entry);
                        self.qos2_finished(sid, &f.item);
                    }
                    self.pump(sid);
                    return;
                }
                let entry = f.item.entry;
                session.inflight.release(a.packet_id);
                self.store
                    .out_state(session, entry, a.packet_id, QoS::ExactlyOnce, true);
                if self.cluster.is_some() && self.qos2_owe_release(sid, a.packet_id) {
                    return;
                }
                self.send(
                    id,
                    version,
                    &Packet::PubRel(Ack::new(a.packet_id, reason::SUCCESS)),
                );
            }
            _ => {
                let code = if version.is_v5() {
                    reason::PACKET_ID_NOT_FOUND
                } else {
                    reason::SUCCESS
                };
                self.send(id, version, &Packet::PubRel(Ack::new(a.packet_id, code)));
            }
        }
    }

    /// PUBCOMP: a QoS 2 delivery is done.
    pub(super) fn handle_pubcomp(&mut self, sid: SessionId, pid: u16) {
        let session = self.sessions.get_mut(&sid);
        if let Some(session) = session
            && session
                .inflight
                .get(pid)
                .is_some_and(|f| f.stage == OutStage::Released)
        {
            if let Some(f) = session.inflight.remove(pid) {
                self.forget_delivery(sid, f.item.entry);
                self.qos2_finished(sid, &f.item);
            }
            self.pump(sid);
        }
    }
}

/// The words the `MessagesDropped` event (and the log) uses for a reason.
pub(super) fn drop_text(reason: DropReason) -> &'static str {
    match reason {
        DropReason::QueueFull => "queue full",
        DropReason::SlowReader => "slow reader",
        DropReason::Expired => "message expired",
        DropReason::NoSubscriber => "no subscriber",
        // The one over-limit drop that is reported per client.
        DropReason::OverLimit => "no packet identifier free",
        DropReason::StoreFailed => "the store failed",
        DropReason::SessionEnded => "session ended",
        DropReason::MemoryBudget => "memory budget",
    }
}
