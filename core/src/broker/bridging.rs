//! MQTT bridges: the broker as a client of remote brokers. Local messages matching a bridge's
//! `forwards` go out through it; its `subscription`s come back in as local messages. Messages
//! for the remote wait in a bounded outbox while the link is down, and QoS 1/2 messages leave
//! the broker's keeping only when the remote acknowledges them. The runtime only opens and
//! closes the socket when asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Broker;
use crate::api::{BrokerEvent, ConnId, Instant, Output};
use crate::bridge::{
    BACKOFF_MIN_MS, BRIDGE_CONN_BASE, Bridge, CONNECT_TIMEOUT_MS, Link, ORIGIN_PROPERTY, Outgoing,
    Stage, bridge_key, bridge_put, remap, remove_inflight,
};
use crate::codec::{
    self, Ack, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS,
    ReasonOnly, Subscribe, SubscriptionOptions, reason,
};
use crate::config::{BridgeConfig, BridgeForward};
use crate::message::{Content, Message, Origin};
use crate::persist::{self, Record};
use crate::timer::Timer;
use crate::topic;

impl Broker {
    /// Starts, restarts or stops bridges to match the configuration. A bridge whose settings
    /// did not change keeps its link; a changed one reconnects with the new settings and
    /// keeps its outbox.
    pub(super) fn configure_bridges(&mut self) {
        let wanted: BTreeMap<String, BridgeConfig> = self
            .config
            .bridges
            .iter()
            .filter(|(_, b)| b.enable)
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect();
        let names: Vec<String> = self.bridges.keys().cloned().collect();
        for name in names {
            let keep = wanted.get(&name) == self.bridges.get(&name).map(|b| &b.config);
            if !keep {
                self.bridge_link_down(&name, "bridge reconfigured", true);
                if let Some(config) = wanted.get(&name) {
                    if let Some(b) = self.bridges.get_mut(&name) {
                        let outbox = std::mem::take(&mut b.outbox);
                        let next_entry = b.next_entry;
                        *b = Bridge::new(config.clone(), self.now);
                        b.outbox = outbox;
                        b.next_entry = next_entry;
                    }
                    self.arm_bridge_timer(&name);
                } else if let Some(b) = self.bridges.remove(&name) {
                    let mut armed = b.timer_armed;
                    self.timers
                        .arm(Timer::Bridge(bridge_key(&name)), &mut armed, None);
                    let lost = (b.outbox.len() + b.inflight.len()) as u64;
                    self.stats.messages_dropped += lost;
                    let entries: Vec<u64> = b
                        .outbox
                        .iter()
                        .chain(b.inflight.values().map(|(m, _)| m))
                        .map(|m| m.entry)
                        .collect();
                    for entry in entries {
                        self.bridge_forget(&name, entry);
                    }
                }
            }
        }
        for (name, config) in wanted {
            if !self.bridges.contains_key(&name) {
                self.bridges
                    .insert(name.clone(), Bridge::new(config, self.now));
                self.arm_bridge_timer(&name);
            }
        }
    }

    fn arm_bridge_timer(&mut self, name: &str) {
        let key = bridge_key(name);
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let at = b.next_deadline();
        self.timers.arm(Timer::Bridge(key), &mut b.timer_armed, at);
    }

    /// The bridge a connection belongs to.
    pub(super) fn bridge_of(&self, conn: ConnId) -> Option<String> {
        if conn.0 & BRIDGE_CONN_BASE == 0 {
            return None;
        }
        self.bridges
            .iter()
            .find(|(_, b)| b.conn == Some(conn))
            .map(|(n, _)| n.clone())
    }

    pub(super) fn bridge_timer(&mut self, key: u64, at: Instant) {
        let Some(name) = self.bridges.keys().find(|n| bridge_key(n) == key).cloned() else {
            return;
        };
        let now = self.now;
        let Some(b) = self.bridges.get_mut(&name) else {
            return;
        };
        if b.timer_armed != Some(at) {
            return;
        }
        b.timer_armed = None;
        match b.link {
            Link::Down if now >= b.retry_at => {
                self.next_bridge_conn += 1;
                let conn = ConnId(BRIDGE_CONN_BASE | self.next_bridge_conn);
                b.conn = Some(conn);
                b.link = Link::Connecting;
                b.deadline = Some(now.plus_ms(CONNECT_TIMEOUT_MS));
                b.rx.clear();
                let address = b.config.address.clone();
                self.outputs.push_back(Output::BridgeConnect {
                    conn,
                    bridge: name.clone(),
                    address,
                });
            }
            Link::Connecting | Link::AwaitingConnAck if b.deadline.is_some_and(|d| now >= d) => {
                self.bridge_link_down(&name, "connect timed out", true);
            }
            Link::Up => {
                if now.since(b.last_rx) >= b.keepalive_ms() * 3 / 2 {
                    // Silence past 1.5 keepalives: the link is dead even without a FIN.
                    self.bridge_link_down(&name, "remote keep alive timeout", true);
                } else if now.since(b.last_tx) >= b.keepalive_ms() {
                    self.bridge_send(&name, &Packet::PingReq);
                }
            }
            _ => {}
        }
        self.arm_bridge_timer(&name);
    }

    /// The runtime opened the socket: say CONNECT.
    pub(super) fn bridge_connected(&mut self, conn: ConnId) {
        let Some(name) = self.bridge_of(conn) else {
            return;
        };
        let Some(b) = self.bridges.get_mut(&name) else {
            return;
        };
        if b.link != Link::Connecting {
            return;
        }
        b.link = Link::AwaitingConnAck;
        b.last_rx = self.now;
        let mut properties = Properties::default();
        if b.version.is_v5() && !b.config.clean_start {
            // Keep the remote session across reconnects, so nothing in flight is lost.
            properties.session_expiry_interval = Some(u32::MAX);
        }
        let connect = Connect {
            version: b.version,
            clean_start: b.config.clean_start,
            keep_alive: b.config.keepalive,
            properties,
            client_id: b.config.clientid.clone(),
            will: None,
            username: b.config.username.clone(),
            password: b.config.password.as_ref().map(|p| Bytes::from(p.clone())),
        };
        self.bridge_send(&name, &Packet::Connect(Box::new(connect)));
    }

    pub(super) fn bridge_connect_failed(&mut self, conn: ConnId, error: &str) {
        if let Some(name) = self.bridge_of(conn) {
            let detail = format!("cannot connect: {error}");
            self.bridge_link_down(&name, &detail, false);
        }
    }

    /// The link is gone: in-flight messages go back to the front of the outbox (in order)
    /// and a reconnect is scheduled with exponential backoff and seeded jitter.
    pub(super) fn bridge_link_down(&mut self, name: &str, detail: &str, close: bool) {
        let now = self.now;
        let jitter = self.rng.next_u64();
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let conn = b.conn.take();
        if let Some(conn) = conn {
            self.store.drop_held(conn);
        }
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let was_up = b.link == Link::Up;
        b.link = Link::Down;
        b.deadline = None;
        b.subscribe_id = None;
        b.rx.clear();
        b.awaiting_rel.clear();
        let mut resend = Vec::new();
        while let Some(pid) = b.inflight_order.pop_back() {
            if let Some((msg, _)) = b.inflight.remove(&pid) {
                resend.push(msg);
            }
        }
        for msg in resend {
            b.outbox.push_front(msg);
        }
        if was_up {
            b.attempts = 0;
        }
        let max_ms = u64::from(b.config.backoff_max).max(1) * 1000;
        let base = BACKOFF_MIN_MS
            .saturating_mul(1 << b.attempts.min(16))
            .min(max_ms);
        // ±20% so that many bridges do not reconnect in step.
        let spread = base / 5;
        let delay = base - spread + jitter % (2 * spread + 1);
        b.attempts = b.attempts.saturating_add(1);
        b.retry_at = now.plus_ms(delay);
        let bridge = name.to_owned();
        if let Some(conn) = conn
            && close
        {
            self.outputs.push_back(Output::Close { conn });
        }
        self.event(BrokerEvent::BridgeDown {
            bridge,
            detail: detail.to_owned(),
            retry_in_ms: delay,
        });
        self.arm_bridge_timer(name);
    }

    fn bridge_send(&mut self, name: &str, packet: &Packet) {
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let Some(conn) = b.conn else {
            return;
        };
        let mut bytes = BytesMut::new();
        if codec::encode_packet(packet, b.version, &mut bytes).is_ok() {
            b.last_tx = self.now;
            self.transmit(conn, bytes.freeze());
        }
    }

    /// Bytes from the remote broker.
    pub(super) fn bridge_receive(&mut self, name: &str, bytes: &[u8]) {
        let limits = DecodeLimits {
            max_packet_size: self.config.max_packet_size as usize,
            max_user_properties: self.config.property_size as usize,
        };
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        b.rx.extend_from_slice(bytes);
        loop {
            let Some(b) = self.bridges.get_mut(name) else {
                return;
            };
            if b.conn.is_none() || b.rx.is_empty() {
                return;
            }
            let version = b.version;
            match codec::decode_packet(&mut b.rx, Some(version), &limits) {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    b.last_rx = self.now;
                    self.bridge_packet(name, packet);
                }
                Err(e) => {
                    let detail = format!("remote sent a bad packet: {e}");
                    return self.bridge_link_down(name, &detail, true);
                }
            }
        }
    }

    fn bridge_packet(&mut self, name: &str, packet: Packet) {
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let link = b.link;
        match (link, packet) {
            (Link::AwaitingConnAck, Packet::ConnAck(ack)) => {
                if ack.code != reason::SUCCESS {
                    let detail = format!("remote refused the connection ({:#04x})", ack.code);
                    return self.bridge_link_down(name, &detail, true);
                }
                b.link = Link::Up;
                b.attempts = 0;
                b.deadline = None;
                b.remote_receive_maximum = ack.properties.receive_maximum.unwrap_or(u16::MAX);
                let filters: Vec<(String, SubscriptionOptions)> = b
                    .config
                    .subscription
                    .iter()
                    .map(|s| {
                        (
                            s.remote_topic.clone(),
                            SubscriptionOptions {
                                qos: QoS::from_u8(s.qos).unwrap_or_default(),
                                // v5: never get back what this bridge published there.
                                no_local: true,
                                retain_as_published: true,
                                retain_handling: 0,
                            },
                        )
                    })
                    .collect();
                let subscribe = if filters.is_empty() {
                    None
                } else {
                    let id = b.allocate_packet_id();
                    b.subscribe_id = id;
                    id.map(|packet_id| {
                        Packet::Subscribe(Subscribe {
                            packet_id,
                            properties: Properties::default(),
                            filters,
                        })
                    })
                };
                self.event(BrokerEvent::BridgeUp {
                    bridge: name.to_owned(),
                });
                if let Some(subscribe) = subscribe {
                    self.bridge_send(name, &subscribe);
                }
                self.bridge_pump(name);
                // The link is up: keepalive pings are due from now, not at the connect
                // deadline still armed.
                self.arm_bridge_timer(name);
            }
            (Link::Up, Packet::SubAck(ack)) => {
                let expected = b.config.subscription.len();
                if Some(ack.packet_id) != b.subscribe_id || ack.reasons.len() != expected {
                    return self.bridge_link_down(
                        name,
                        "remote SUBACK does not match the SUBSCRIBE",
                        true,
                    );
                }
                b.subscribe_id = None;
                if ack.reasons.iter().any(|r| r.is_error()) {
                    self.event(BrokerEvent::BridgeDown {
                        bridge: name.to_owned(),
                        detail: format!(
                            "remote refused some subscriptions: {:?}",
                            ack.reasons.iter().map(|r| r.0).collect::<Vec<u8>>()
                        ),
                        retry_in_ms: 0,
                    });
                }
            }
            (Link::Up, Packet::Publish(p)) => self.bridge_incoming(name, p),
            (Link::Up, Packet::PubRel(a)) => {
                let known = b.awaiting_rel.remove(&a.packet_id);
                let code = if known || !b.version.is_v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.bridge_send(name, &Packet::PubComp(Ack::new(a.packet_id, code)));
            }
            (Link::Up, Packet::PubAck(a)) => {
                if b.inflight
                    .get(&a.packet_id)
                    .is_some_and(|(m, _)| m.qos == QoS::AtLeastOnce)
                {
                    let entry = remove_inflight(b, a.packet_id);
                    self.bridge_forget(name, entry);
                    self.bridge_pump(name);
                }
            }
            (Link::Up, Packet::PubRec(a)) => match b.inflight.get_mut(&a.packet_id) {
                Some((m, stage)) if m.qos == QoS::ExactlyOnce => {
                    if a.reason.is_error() {
                        let entry = remove_inflight(b, a.packet_id);
                        self.bridge_forget(name, entry);
                        self.stats.messages_dropped += 1;
                        self.bridge_pump(name);
                    } else {
                        *stage = Stage::Released;
                        self.bridge_send(
                            name,
                            &Packet::PubRel(Ack::new(a.packet_id, reason::SUCCESS)),
                        );
                    }
                }
                _ => self.bridge_send(
                    name,
                    &Packet::PubRel(Ack::new(a.packet_id, reason::PACKET_ID_NOT_FOUND)),
                ),
            },
            (Link::Up, Packet::PubComp(a)) => {
                if b.inflight
                    .get(&a.packet_id)
                    .is_some_and(|(_, s)| *s == Stage::Released)
                {
                    let entry = remove_inflight(b, a.packet_id);
                    self.bridge_forget(name, entry);
                    self.bridge_pump(name);
                }
            }
            (Link::Up, Packet::PingResp) => {}
            (_, Packet::Disconnect(d)) => {
                let detail = format!("remote disconnected ({:#04x})", d.reason);
                self.bridge_link_down(name, &detail, true);
            }
            (_, other) => {
                let detail = format!("unexpected {} from the remote", other.kind());
                self.bridge_link_down(name, &detail, true);
            }
        }
    }

    /// A message from the remote: remapped onto the local topic and published here.
    fn bridge_incoming(&mut self, name: &str, p: Publish) {
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce && b.awaiting_rel.contains(&pid) {
            return self.bridge_send(name, &Packet::PubRec(Ack::new(pid, reason::SUCCESS)));
        }
        // Only what a subscription rule asked for comes in: a remote that sends anything else
        // must not write into arbitrary local topics.
        let local = b.config.subscription.iter().find_map(|s| {
            let filter = topic::parse_subscription(&s.remote_topic, usize::MAX)
                .map_or(s.remote_topic.as_str(), |f| f.filter);
            topic::matches(filter, &p.topic).then(|| remap(&p.topic, filter, &s.local_topic))
        });
        let bridge_key = bridge_key(name);
        let acceptable = local.as_deref().is_some_and(|local| {
            topic::validate_topic_name(local, self.config.max_topic_levels as usize).is_ok()
                && !crate::sys::is_reserved(local)
        }) && !self.is_own_origin(&p.properties);
        if p.qos == QoS::ExactlyOnce
            && let Some(b) = self.bridges.get_mut(name)
        {
            b.awaiting_rel.insert(pid);
        }
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
            let expires_at = content.take_expiry(self.now);
            self.publish(content, Origin::Bridge(bridge_key), expires_at);
        } else {
            self.stats.messages_dropped += 1;
        }
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.bridge_send(name, &Packet::PubAck(Ack::new(pid, reason::SUCCESS)))
            }
            QoS::ExactlyOnce => {
                self.bridge_send(name, &Packet::PubRec(Ack::new(pid, reason::SUCCESS)))
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

    /// Offers a routed message to every bridge that forwards its topic.
    pub(super) fn bridge_forward(&mut self, msg: &Arc<Message>) {
        if self.bridges.is_empty() {
            return;
        }
        let names: Vec<String> = self.bridges.keys().cloned().collect();
        for name in names {
            if msg.bridge() == Some(bridge_key(&name)) {
                continue;
            }
            let Some(b) = self.bridges.get(&name) else {
                continue;
            };
            let Some(rule) = b
                .config
                .forwards
                .iter()
                .find(|f| topic::matches(&f.local_topic, &msg.topic))
            else {
                continue;
            };
            let out = self.outgoing(b.version, rule, msg);
            self.bridge_enqueue(&name, out);
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
        Outgoing {
            topic: remap(&msg.topic, &rule.local_topic, &rule.remote_topic),
            payload: msg.payload.clone(),
            qos: rule.qos.and_then(QoS::from_u8).unwrap_or(msg.qos),
            retain: rule.retain.unwrap_or(msg.retain),
            properties,
            entry: 0,
            msg_id: 0,
        }
    }

    fn bridge_enqueue(&mut self, name: &str, out: Outgoing) {
        let Some(b) = self.bridges.get_mut(name) else {
            return;
        };
        let up = b.link == Link::Up;
        if (!up && out.qos == QoS::AtMostOnce)
            || b.outbox.len() >= b.config.max_send_queue_len as usize
        {
            self.stats.messages_dropped += 1;
            self.event(BrokerEvent::MessagesDropped {
                client_id: format!("bridge:{name}"),
                count: 1,
                why: if up {
                    "bridge queue full"
                } else {
                    "bridge down"
                },
            });
            return;
        }
        let mut out = out;
        if self.store.on() && out.qos != QoS::AtMostOnce {
            out.entry = b.next_entry;
            b.next_entry += 1;
            out.msg_id = self.store.next_message_id();
            for record in bridge_put(name, &out) {
                self.store.persist(record, true);
            }
        }
        if let Some(b) = self.bridges.get_mut(name) {
            b.outbox.push_back(out);
        }
        if up {
            self.bridge_pump(name);
        }
    }

    /// Whether some bridge would keep a forward of this topic in its outbox (QoS 1/2).
    pub(super) fn bridge_would_keep(&self, topic: &str, qos: QoS) -> bool {
        self.bridges.values().any(|b| {
            b.config
                .forwards
                .iter()
                .find(|f| topic::matches(&f.local_topic, topic))
                .is_some_and(|rule| {
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

    /// Puts recovered outbox entries back, oldest first; those of bridges no longer
    /// configured are dropped and forgotten.
    pub(super) fn restore_bridges(
        &mut self,
        entries: BTreeMap<String, BTreeMap<u64, persist::BridgeEntry>>,
        messages: &BTreeMap<u64, Arc<Message>>,
    ) {
        for (name, list) in entries {
            if !self.bridges.contains_key(&name) {
                self.stats.messages_dropped += list.len() as u64;
                for entry in list.keys() {
                    self.bridge_forget(&name, *entry);
                }
                continue;
            }
            for (entry, e) in list {
                let Some(m) = messages.get(&e.msg_id) else {
                    continue;
                };
                if let Some(b) = self.bridges.get_mut(&name) {
                    b.next_entry = b.next_entry.max(entry + 1);
                    b.outbox.push_back(Outgoing {
                        topic: m.topic.clone(),
                        payload: m.payload.clone(),
                        qos: e.qos,
                        retain: e.retain,
                        properties: m.properties.clone(),
                        entry,
                        msg_id: e.msg_id,
                    });
                }
            }
        }
    }

    /// Sends from the outbox while the remote's window allows.
    fn bridge_pump(&mut self, name: &str) {
        loop {
            let Some(b) = self.bridges.get_mut(name) else {
                return;
            };
            if b.link != Link::Up {
                return;
            }
            let window = usize::from(b.remote_receive_maximum);
            let Some(front) = b.outbox.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && b.inflight.len() >= window {
                return;
            }
            let Some(msg) = b.outbox.pop_front() else {
                return;
            };
            let packet_id = if msg.qos == QoS::AtMostOnce {
                None
            } else {
                let Some(id) = b.allocate_packet_id() else {
                    b.outbox.push_front(msg);
                    return;
                };
                b.inflight.insert(id, (msg.clone(), Stage::Published));
                b.inflight_order.push_back(id);
                Some(id)
            };
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: msg.qos,
                retain: msg.retain,
                topic: msg.topic,
                packet_id,
                properties: msg.properties,
                payload: msg.payload,
            });
            self.stats.messages_sent += 1;
            self.bridge_send(name, &publish);
        }
    }

    /// Tells every remote goodbye (shutdown).
    pub(super) fn close_bridges(&mut self) {
        let names: Vec<String> = self.bridges.keys().cloned().collect();
        for name in names {
            if self.bridges.get(&name).is_some_and(|b| b.link == Link::Up) {
                self.bridge_send(&name, &Packet::Disconnect(ReasonOnly::default()));
            }
            if let Some(conn) = self.bridges.get_mut(&name).and_then(|b| b.conn.take()) {
                self.outputs.push_back(Output::Close { conn });
            }
        }
    }

    /// Messages waiting in bridge outboxes and in flight, for the admin API and tests.
    pub fn bridge_backlog(&self) -> BTreeMap<String, (usize, usize)> {
        self.bridges
            .iter()
            .map(|(n, b)| (n.clone(), (b.outbox.len(), b.inflight.len())))
            .collect()
    }
}
