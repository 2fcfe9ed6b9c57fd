//! Driving the bridges (`bridge.rs`): local messages matching a bridge's `forwards` go out
//! through it; its `subscription`s come back in as local messages. Messages for the remote
//! wait in a bounded outbox while the link is down, and QoS 1/2 messages leave the broker's
//! keeping only when the remote acknowledges them. The runtime only opens and closes the
//! socket when asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;

use super::Broker;
use crate::api::{BrokerEvent, ConnId, Instant, Output};
use crate::bridge::{BRIDGE_CONN_BASE, Bridge, Link, ORIGIN_PROPERTY, Outgoing, bridge_put, remap};
use crate::codec::{
    self, Ack, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonCode, ReasonOnly, reason,
};
use crate::config::{BridgeConfig, BridgeForward};
use crate::conn;
use crate::ids::BridgeId;
use crate::memory::{FAIR_BACKLOG, FAIR_QUEUE};
use crate::message::{Content, Message, Origin};
use crate::metrics::DropReason;
use crate::persist::{self, Record};
use crate::timer::Timer;
use crate::topic;
use crate::window::OutStage;

impl Broker {
    /// Starts, restarts or stops bridges to match the configuration. A bridge whose settings
    /// did not change keeps its link; a changed one reconnects with the new settings and
    /// keeps its outbox.
    pub(super) fn configure_bridges(&mut self) {
        // In a cluster every node runs its bridges (each forwards its own clients' messages):
        // each connects with its own client id, or the remote would take one over with the
        // other, again and again.
        let node = self.cluster.as_deref().map(|c| c.config.node_name.clone());
        let wanted: BTreeMap<String, BridgeConfig> = self
            .config
            .bridges
            .iter()
            .filter(|(_, b)| b.enable)
            .map(|(n, b)| {
                let mut b = b.clone();
                if let Some(node) = &node {
                    b.clientid = format!("{}-{node}", b.clientid);
                }
                (n.clone(), b)
            })
            .collect();
        for (name, id) in self.bridge_ids.clone() {
            let keep = wanted.get(&name) == self.bridges.get(&id).map(|b| &b.config);
            if keep {
                continue;
            }
            self.bridge_link_down(id, "bridge reconfigured", true);
            if let Some(config) = wanted.get(&name) {
                if let Some(b) = self.bridges.remove(&id) {
                    let mut b = b.reconfigured(config.clone(), self.now);
                    // The timer slot goes with the old state; what it armed is stale now.
                    b.timer_armed = None;
                    self.bridges.insert(id, b);
                }
                self.arm_bridge_timer(id);
            } else if let Some(mut b) = self.bridges.remove(&id) {
                self.bridge_ids.remove(&name);
                self.timers.arm(Timer::Bridge(id), &mut b.timer_armed, None);
                let lost = b.into_backlog();
                self.count_dropped(DropReason::OverLimit, lost.len() as u64);
                for m in lost {
                    self.bridge_forget(&name, m.entry);
                }
            }
        }
        for (name, config) in wanted {
            if !self.bridge_ids.contains_key(&name) {
                let id = BridgeId(self.next_bridge_id);
                self.next_bridge_id += 1;
                self.bridge_ids.insert(name.clone(), id);
                let b = Bridge::new(name, config, self.now, &self.memory.ledger);
                self.bridges.insert(id, b);
                self.arm_bridge_timer(id);
            }
        }
    }

    pub(super) fn arm_bridge_timer(&mut self, id: BridgeId) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let at = b.next_deadline();
        self.timers.arm(Timer::Bridge(id), &mut b.timer_armed, at);
    }

    /// The bridge a connection belongs to.
    pub(super) fn bridge_of(&self, conn: ConnId) -> Option<BridgeId> {
        if conn.0 & BRIDGE_CONN_BASE == 0 {
            return None;
        }
        self.bridge_conns.get(&conn).copied()
    }

    pub(super) fn bridge_timer(&mut self, id: BridgeId, at: Instant) {
        let now = self.now;
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        if b.timer_armed != Some(at) {
            return;
        }
        b.timer_armed = None;
        match b.link {
            Link::Down if now >= b.retry_at && !b.switched_off => {
                b.counters.connects += 1;
                self.next_bridge_conn += 1;
                let conn = ConnId(BRIDGE_CONN_BASE | self.next_bridge_conn);
                b.connecting(conn, now);
                self.bridge_conns.insert(conn, id);
                self.outputs.push_back(Output::BridgeConnect {
                    conn,
                    bridge: b.name.clone(),
                    address: b.config.address.clone(),
                });
            }
            Link::Connecting | Link::AwaitingConnAck if b.deadline.is_some_and(|d| now >= d) => {
                self.bridge_link_down(id, "connect timed out", true);
            }
            Link::Up => {
                if now.since(b.last_rx) >= b.keepalive_ms() * 3 / 2 {
                    // Silence past 1.5 keepalives: the link is dead even without a FIN.
                    self.bridge_link_down(id, "remote keep alive timeout", true);
                } else if now.since(b.last_tx) >= b.keepalive_ms() {
                    self.bridge_send(id, &Packet::PingReq);
                }
            }
            _ => {}
        }
        self.arm_bridge_timer(id);
    }

    /// The runtime opened the socket: say CONNECT.
    pub(super) fn bridge_connected(&mut self, conn: ConnId) {
        let Some(id) = self.bridge_of(conn) else {
            return;
        };
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        if b.link != Link::Connecting {
            return;
        }
        let connect = b.connect_packet(
            self.now,
            self.config.receive_maximum,
            self.config.max_packet_size,
        );
        self.bridge_send(id, &connect);
    }

    pub(super) fn bridge_connect_failed(&mut self, conn: ConnId, error: &str) {
        if let Some(id) = self.bridge_of(conn) {
            let detail = format!("cannot connect: {error}");
            self.bridge_link_down(id, &detail, false);
        }
    }

    /// The link is gone: a reconnect is scheduled with exponential backoff and seeded
    /// jitter.
    pub(super) fn bridge_link_down(&mut self, id: BridgeId, detail: &str, close: bool) {
        let now = self.now;
        let jitter = self.rng.next_u64();
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let (conn, delay) = b.link_down(now, jitter);
        let bridge = b.name.clone();
        if let Some(conn) = conn {
            self.bridge_conns.remove(&conn);
            self.store.drop_held(conn);
            if close {
                self.outputs.push_back(Output::Close { conn });
            }
        }
        self.event(BrokerEvent::BridgeDown {
            bridge,
            detail: detail.to_owned(),
            retry_in_ms: delay,
        });
        self.arm_bridge_timer(id);
    }

    pub(super) fn bridge_send(&mut self, id: BridgeId, packet: &Packet) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let Some(conn) = b.conn else {
            return;
        };
        let mut bytes = BytesMut::new();
        if codec::encode_packet(packet, b.version, &mut bytes).is_ok() {
            b.last_tx = self.now;
            b.counters.tx_bytes += bytes.len() as u64;
            self.transmit(conn, bytes.freeze());
        }
        // Messages wait while the remote is slow, but acknowledgements cannot: a remote that
        // keeps sending without reading is cut off before our output to it grows without
        // bound (as a client is, `flush_dirty`).
        let hard_limit = 2 * self.config.max_write_buffer as usize;
        if self
            .bridges
            .get(&id)
            .is_some_and(|b| b.unwritten > hard_limit)
        {
            self.bridge_link_down(
                id,
                "remote not reading: write backlog over twice max_write_buffer",
                true,
            );
        }
    }

    /// The link's writer put `bytes` on the wire: what waits for the remote moves on.
    pub(super) fn bridge_written(&mut self, id: BridgeId, bytes: usize) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        b.unwritten = b.unwritten.saturating_sub(bytes);
        b.recount();
        self.bridge_pump(id);
    }

    /// Whether the link's writer can take another message: what it holds and what waits for
    /// the store stay under `max_write_buffer` (past the budget's high mark, under
    /// [`FAIR_BACKLOG`], as for a client).
    fn bridge_can_write(&self, id: BridgeId) -> bool {
        let Some(b) = self.bridges.get(&id) else {
            return false;
        };
        let held = b.conn.map_or(0, |c| self.store.held_bytes(c));
        let limit = if self.memory.under_pressure(self.config.max_memory) {
            FAIR_BACKLOG.min(self.config.max_write_buffer as usize)
        } else {
            self.config.max_write_buffer as usize
        };
        b.unwritten + held < limit
    }

    /// Bytes from the remote broker.
    pub(super) fn bridge_receive(&mut self, id: BridgeId, bytes: &[u8]) {
        let limits = DecodeLimits {
            max_packet_size: self.config.max_packet_size as usize,
            max_user_properties: self.config.property_size as usize,
        };
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        // Bounded as a client's: a packet over the limit is refused at its header.
        conn::buffer_input(&mut b.rx, bytes, limits.max_packet_size);
        b.counters.rx_bytes += bytes.len() as u64;
        self.bridge_decode(id, &limits);
        if let Some(b) = self.bridges.get_mut(&id) {
            b.recount();
        }
    }

    /// Every whole packet in the link's receive buffer, in order.
    fn bridge_decode(&mut self, id: BridgeId, limits: &DecodeLimits) {
        loop {
            let Some(b) = self.bridges.get_mut(&id) else {
                return;
            };
            if b.conn.is_none() || b.rx.is_empty() {
                return;
            }
            let version = b.version;
            match codec::decode_packet(&mut b.rx, Some(version), limits) {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    b.last_rx = self.now;
                    self.bridge_packet(id, packet);
                }
                Err(e) => {
                    let detail = format!("remote sent a bad packet: {e}");
                    if let DecodeError::TooLarge { .. } = e {
                        // Over the maximum packet size told in CONNECT ([MQTT-3.1.2-24]).
                        self.count_dropped(DropReason::OverLimit, 1);
                        return self.bridge_cut(id, e.reason_code(), &detail);
                    }
                    return self.bridge_link_down(id, &detail, true);
                }
            }
        }
    }

    fn bridge_packet(&mut self, id: BridgeId, packet: Packet) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let link = b.link;
        match (link, packet) {
            (Link::AwaitingConnAck, Packet::ConnAck(ack)) => {
                if ack.code != reason::SUCCESS {
                    let detail = format!("remote refused the connection ({:#04x})", ack.code);
                    return self.bridge_link_down(id, &detail, true);
                }
                let subscribe = b.connected(&ack);
                let bridge = b.name.clone();
                self.event(BrokerEvent::BridgeUp { bridge });
                if let Some(subscribe) = subscribe {
                    self.bridge_send(id, &subscribe);
                }
                self.bridge_pump(id);
                // The link is up: keepalive pings are due from now, not at the connect
                // deadline still armed.
                self.arm_bridge_timer(id);
            }
            (Link::Up, Packet::SubAck(ack)) => {
                let expected = b.subscribe_len;
                if Some(ack.packet_id) != b.subscribe_id || ack.reasons.len() != expected {
                    return self.bridge_link_down(
                        id,
                        "remote SUBACK does not match the SUBSCRIBE",
                        true,
                    );
                }
                b.subscribe_id = None;
                if ack.reasons.iter().any(|r| r.is_error()) {
                    let bridge = b.name.clone();
                    self.event(BrokerEvent::BridgeDown {
                        bridge,
                        detail: format!(
                            "remote refused some subscriptions: {:?}",
                            ack.reasons.iter().map(|r| r.0).collect::<Vec<u8>>()
                        ),
                        retry_in_ms: 0,
                    });
                }
            }
            (Link::Up, Packet::Publish(p)) => self.bridge_incoming(id, p),
            // The answer to an UNSUBSCRIBE the admin API asked for (`admin_v4_bridge.rs`).
            (Link::Up, Packet::UnsubAck(a)) => {
                if b.subscribe_id == Some(a.packet_id) {
                    b.subscribe_id = None;
                }
            }
            (Link::Up, Packet::PubRel(a)) => {
                let known = b.qos2_in.release(a.packet_id);
                let code = if known || !b.version.is_v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.bridge_send(id, &Packet::PubComp(Ack::new(a.packet_id, code)));
            }
            (Link::Up, Packet::PubAck(a)) => {
                if b.inflight
                    .get(a.packet_id)
                    .is_some_and(|f| f.item.qos == QoS::AtLeastOnce)
                {
                    self.bridge_acked(id, a.packet_id);
                }
            }
            (Link::Up, Packet::PubRec(a)) => match b.inflight.get(a.packet_id) {
                Some(f) if f.item.qos == QoS::ExactlyOnce => {
                    if a.reason.is_error() {
                        self.count_dropped(DropReason::OverLimit, 1);
                        self.bridge_acked(id, a.packet_id);
                    } else {
                        b.inflight.release(a.packet_id);
                        self.bridge_send(
                            id,
                            &Packet::PubRel(Ack::new(a.packet_id, reason::SUCCESS)),
                        );
                    }
                }
                _ => self.bridge_send(
                    id,
                    &Packet::PubRel(Ack::new(a.packet_id, reason::PACKET_ID_NOT_FOUND)),
                ),
            },
            (Link::Up, Packet::PubComp(a)) => {
                if b.inflight
                    .get(a.packet_id)
                    .is_some_and(|f| f.stage == OutStage::Released)
                {
                    self.bridge_acked(id, a.packet_id);
                }
            }
            (Link::Up, Packet::PingResp) => {}
            (_, Packet::Disconnect(d)) => {
                let detail = format!("remote disconnected ({:#04x})", d.reason);
                self.bridge_link_down(id, &detail, true);
            }
            (_, other) => {
                let detail = format!("unexpected {} from the remote", other.kind());
                self.bridge_link_down(id, &detail, true);
            }
        }
    }

    /// A message in flight at the remote is done (acknowledged or refused): it leaves the
    /// broker's keeping, and the outbox moves on.
    fn bridge_acked(&mut self, id: BridgeId, packet_id: u16) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let entry = b.inflight.remove(packet_id).map_or(0, |f| f.item.entry);
        let name = b.name.clone();
        self.bridge_forget(&name, entry);
        self.bridge_pump(id);
    }

    /// Closes the link for a limit the remote passed, telling a v5 remote why first.
    fn bridge_cut(&mut self, id: BridgeId, code: ReasonCode, detail: &str) {
        if self.bridges.get(&id).is_some_and(|b| b.version.is_v5()) {
            let packet = Packet::Disconnect(ReasonOnly {
                reason: code,
                properties: Properties::default(),
            });
            self.bridge_send(id, &packet);
        }
        // Sending may itself have cut a remote that does not read.
        if self.bridges.get(&id).is_some_and(|b| b.conn.is_some()) {
            self.bridge_link_down(id, detail, true);
        }
    }

    /// A message from the remote: remapped onto the local topic and published here.
    fn bridge_incoming(&mut self, id: BridgeId, p: Publish) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && b.qos2_in.contains(pid) {
            b.qos2_in.seen_again(pid);
            return self.bridge_send(id, &Packet::PubRec(Ack::new(pid, reason::SUCCESS)));
        }
        // Ids left unreleased by an earlier link do not count (v5 §4.9), as for a client.
        if p.qos == QoS::ExactlyOnce
            && b.qos2_in.this_connection() >= usize::from(b.receive_maximum)
        {
            self.count_dropped(DropReason::OverLimit, 1);
            return self.bridge_cut(
                id,
                reason::RECEIVE_MAXIMUM_EXCEEDED,
                "remote sent more unreleased QoS 2 messages than our receive maximum",
            );
        }
        // Past the memory budget's high mark nothing more is taken from the remote: QoS 0 is
        // dropped, QoS 1/2 refused (v5 0x97, as a client's would be; 3.1.1 has no refusal, so
        // the link closes and the remote keeps the message for the next one).
        if self.memory.under_pressure(self.config.max_memory) {
            let name = b.name.clone();
            let v5 = b.version.is_v5();
            b.counters.recv_drop += 1;
            self.count_dropped(DropReason::MemoryBudget, 1);
            self.count_drops(
                &format!("bridge:{name}"),
                super::deliver::drop_text(DropReason::MemoryBudget),
                1,
            );
            return match p.qos {
                QoS::AtMostOnce => {}
                _ if !v5 => self.bridge_link_down(id, "memory budget: message refused", true),
                QoS::AtLeastOnce => {
                    self.bridge_send(id, &Packet::PubAck(Ack::new(pid, reason::QUOTA_EXCEEDED)))
                }
                QoS::ExactlyOnce => {
                    self.bridge_send(id, &Packet::PubRec(Ack::new(pid, reason::QUOTA_EXCEEDED)))
                }
            };
        }
        // Only what a subscription rule asked for comes in: a remote that sends anything else
        // must not write into arbitrary local topics.
        let local = b.config.subscription.iter().find_map(|s| {
            let filter = topic::parse_subscription(&s.remote_topic, usize::MAX)
                .map_or(s.remote_topic.as_str(), |f| f.filter);
            topic::matches(filter, &p.topic).then(|| remap(&p.topic, filter, &s.local_topic))
        });
        if p.qos == QoS::ExactlyOnce {
            b.qos2_in.accept(pid);
        }
        let acceptable = local.as_deref().is_some_and(|local| {
            topic::validate_topic_name(local, self.config.max_topic_levels as usize).is_ok()
                && !crate::sys::is_reserved(local)
        }) && !self.is_own_origin(&p.properties);
        if let (true, Some(local)) = (acceptable, local) {
            let mut properties = p.properties;
            properties.topic_alias = None;
            properties.subscription_identifiers.clear();
            let mut content = Content {
                topic: local,
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties,
            };
            if let Some(b) = self.bridges.get_mut(&id) {
                b.counters.rx_msgs += 1;
            }
            let expires_at = content.take_expiry(self.now);
            self.publish(content, Origin::Bridge(id), expires_at);
        } else {
            if let Some(b) = self.bridges.get_mut(&id) {
                b.counters.recv_drop += 1;
            }
            self.count_dropped(DropReason::OverLimit, 1);
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.bridge_send(id, &Packet::PubAck(Ack::new(pid, reason::SUCCESS)))
            }
            QoS::ExactlyOnce => {
                self.bridge_send(id, &Packet::PubRec(Ack::new(pid, reason::SUCCESS)))
            }
        }
    }

    /// True for a message carrying this broker's own origin mark: it went out through a
    /// bridge and came back, and must not loop.
    pub(super) fn is_own_origin(&self, properties: &Properties) -> bool {
        properties
            .user_properties
            .iter()
            .any(|(k, v)| k == ORIGIN_PROPERTY && *v == self.node_id)
    }

    /// Offers a routed message to every bridge that forwards its topic, in name order.
    pub(super) fn bridge_forward(&mut self, msg: &Arc<Message>) {
        if self.bridges.is_empty() {
            return;
        }
        let ids: Vec<BridgeId> = self.bridge_ids.values().copied().collect();
        for id in ids {
            if msg.bridge() == Some(id) {
                continue;
            }
            let Some(b) = self.bridges.get(&id) else {
                continue;
            };
            let Some(rule) = b.config.forward_rule(&msg.topic) else {
                continue;
            };
            let out = self.outgoing(b.version, rule, msg);
            self.bridge_enqueue(id, out);
        }
    }

    fn outgoing(&self, version: ProtocolVersion, rule: &BridgeForward, msg: &Message) -> Outgoing {
        let mut properties = msg.properties.clone();
        if version.is_v5() {
            if let Some(at) = msg.expires_at {
                properties.message_expiry_interval = Some(at.since(self.now).div_ceil(1000) as u32);
            }
            if !properties
                .user_properties
                .iter()
                .any(|(k, _)| k == ORIGIN_PROPERTY)
            {
                properties
                    .user_properties
                    .push((ORIGIN_PROPERTY.to_owned(), self.node_id.clone()));
            }
        }
        Outgoing::new(
            remap(&msg.topic, &rule.local_topic, &rule.remote_topic),
            msg.payload.clone(),
            rule.qos.and_then(QoS::from_u8).unwrap_or(msg.qos),
            rule.retain.unwrap_or(msg.retain),
            properties,
            &self.memory.ledger,
        )
    }

    fn bridge_enqueue(&mut self, id: BridgeId, out: Outgoing) {
        let Some(b) = self.bridges.get_mut(&id) else {
            return;
        };
        let up = b.link == Link::Up;
        // Past the memory budget's high mark the outbox stops growing, as a session's queue
        // does: a short one is still kept.
        let pressed =
            b.outbox.len() >= FAIR_QUEUE && self.memory.under_pressure(self.config.max_memory);
        if (!up && out.qos == QoS::AtMostOnce)
            || b.outbox.len() >= b.config.max_send_queue_len as usize
            || pressed
        {
            let client_id = format!("bridge:{}", b.name);
            b.counters.send_drop += 1;
            let (reason, why) = if pressed {
                let reason = DropReason::MemoryBudget;
                (reason, super::deliver::drop_text(reason))
            } else if up {
                (DropReason::OverLimit, "bridge queue full")
            } else {
                (DropReason::OverLimit, "bridge down")
            };
            self.count_dropped(reason, 1);
            self.count_drops(&client_id, why, 1);
            return;
        }
        let mut out = out;
        if self.store.on() && out.qos != QoS::AtMostOnce {
            out.entry = b.next_entry;
            b.next_entry += 1;
            out.msg_id = self.store.next_message_id();
            for record in bridge_put(&b.name, &out) {
                self.store.persist(record, true);
            }
        }
        b.outbox.push_back(out);
        if up {
            self.bridge_pump(id);
        }
    }

    /// Whether some bridge would keep a forward of this topic in its outbox (QoS 1/2).
    pub(super) fn bridge_would_keep(&self, topic: &str, qos: QoS) -> bool {
        self.bridges.values().any(|b| {
            b.config.forward_rule(topic).is_some_and(|rule| {
                rule.qos.and_then(QoS::from_u8).unwrap_or(qos) != QoS::AtMostOnce
            })
        })
    }

    fn bridge_forget(&mut self, name: &str, entry: u64) {
        if entry != 0 {
            self.store.persist(
                Record::BridgeDel {
                    bridge: name.to_owned(),
                    entry,
                },
                false,
            );
        }
    }

    /// Every stored outbox entry, bridges in name order, for a snapshot.
    pub(super) fn bridge_records(&self) -> Vec<Record> {
        self.bridge_ids
            .values()
            .filter_map(|id| self.bridges.get(id))
            .flat_map(Bridge::stored_records)
            .collect()
    }

    /// Puts recovered outbox entries back, oldest first; those of bridges no longer
    /// configured are dropped and forgotten.
    pub(super) fn restore_bridges(
        &mut self,
        entries: BTreeMap<String, BTreeMap<u64, persist::BridgeEntry>>,
        messages: &BTreeMap<u64, Arc<Message>>,
    ) {
        for (name, list) in entries {
            let Some(b) = self
                .bridge_ids
                .get(&name)
                .and_then(|id| self.bridges.get_mut(id))
            else {
                self.count_dropped(DropReason::OverLimit, list.len() as u64);
                for entry in list.keys() {
                    self.bridge_forget(&name, *entry);
                }
                continue;
            };
            for (entry, e) in list {
                let Some(m) = messages.get(&e.msg_id) else {
                    continue;
                };
                b.next_entry = b.next_entry.max(entry + 1);
                let mut out = Outgoing::new(
                    m.topic.clone(),
                    m.payload.clone(),
                    e.qos,
                    e.retain,
                    m.properties.clone(),
                    &self.memory.ledger,
                );
                out.entry = entry;
                out.msg_id = e.msg_id;
                b.outbox.push_back(out);
            }
        }
    }

    /// Sends what the bridge has for the remote while its window allows.
    pub(super) fn bridge_pump(&mut self, id: BridgeId) {
        let max_inflight = self.config.max_inflight;
        while self.bridge_can_write(id)
            && let Some(packet) = self
                .bridges
                .get_mut(&id)
                .and_then(|b| b.next_to_send(max_inflight))
        {
            if let Packet::Publish(p) = &packet {
                self.counters.publish_out(p.qos, p.payload.len(), None);
                self.stats.messages_sent += 1;
                if let Some(b) = self.bridges.get_mut(&id) {
                    b.counters.tx_msgs += 1;
                }
            }
            self.bridge_send(id, &packet);
        }
    }

    /// Tells every remote goodbye (shutdown).
    pub(super) fn close_bridges(&mut self) {
        let ids: Vec<BridgeId> = self.bridge_ids.values().copied().collect();
        for id in ids {
            if self.bridges.get(&id).is_some_and(|b| b.link == Link::Up) {
                self.bridge_send(id, &Packet::Disconnect(ReasonOnly::default()));
            }
            if let Some(conn) = self.bridges.get_mut(&id).and_then(|b| b.conn.take()) {
                self.bridge_conns.remove(&conn);
                self.outputs.push_back(Output::Close { conn });
            }
        }
    }

    /// Messages waiting in bridge outboxes and in flight, for the admin API and tests.
    pub fn bridge_backlog(&self) -> BTreeMap<String, (usize, usize)> {
        self.bridges
            .values()
            .map(|b| (b.name.clone(), b.backlog()))
            .collect()
    }
}
