//! The broker: owns every connection and session, and turns inputs into outputs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use crate::api::{BrokerEvent, ConnId, Input, Instant, Output};
use crate::codec::{
    self, Ack, ConnAck, Connect, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion,
    Publish, PublishRef, QoS, ReasonOnly, SubAck, Subscribe, UnsubAck, Unsubscribe, Will, reason,
};
use crate::config::Config;
use crate::persist::Record;
use crate::rng::Rng;
use crate::session::{
    Delivery, Message, NEVER_EXPIRES, OutStage, Session, SessionId, Subscription,
};
use crate::sys;
use crate::topic::{self, RetainTrie, SubMatch, SubscriptionTrie, TopicError};

mod admin_api;
mod bridge;
mod durable;

/// Broker-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained: u64,
    /// PUBLISH packets accepted from clients, and wills.
    pub messages_received: u64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: u64,
    /// Messages that could not be delivered: queue full, slow reader, expired, too large.
    pub messages_dropped: u64,
    /// Client messages (and wills) that matched no subscription.
    pub messages_unrouted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    AwaitingConnect,
    Active(SessionId),
}

#[derive(Debug)]
struct Conn {
    peer: String,
    state: ConnState,
    version: Option<ProtocolVersion>,
    limits: DecodeLimits,
    rx: BytesMut,
    /// Output produced during the current input, flushed as one Transmit.
    tx: BytesMut,
    /// Bytes handed out in Transmits and not yet reported written.
    unwritten: usize,
    last_rx: Instant,
    /// Milliseconds of silence allowed; 0 = none. Before CONNECT: the connect timeout.
    idle_limit_ms: u64,
    timer_armed: Option<Instant>,
    /// Client's limits towards us (v5 CONNECT properties).
    client_receive_maximum: u16,
    client_max_packet_size: u32,
    /// Our limits as told in CONNACK; a later config change does not alter them.
    receive_maximum: u16,
    topic_alias_max: u16,
    topic_aliases: BTreeMap<u16, String>,
    /// QoS 2 ids received on this connection and not yet released: what counts against our
    /// Receive Maximum, which is not preserved across connections (v5 §4.9).
    rel_pending: BTreeSet<u16>,
    /// Session expiry given in CONNECT (v5: DISCONNECT may not raise it from 0).
    connect_expiry_secs: u32,
    username: Option<String>,
    keep_alive: u16,
    clean_start: bool,
    /// The verified client certificate's common name (TLS), if any.
    cert_identity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn(ConnId),
    Session(SessionId),
    /// A bridge, by [`bridge::bridge_key`].
    Bridge(u64),
}

/// Why a connection is being closed by the broker.
struct CloseReason {
    /// v5 reason code (also reported in events and `$SYS`).
    code: u8,
    /// Send a v5 DISCONNECT first (only after a successful CONNACK).
    notify: bool,
    /// Publish the will (anything but a normal DISCONNECT).
    will: bool,
    /// The driver reported the connection gone: nothing to send, no Close to ask for.
    peer_gone: bool,
    detail: String,
}

impl CloseReason {
    fn error(code: u8, detail: impl Into<String>) -> CloseReason {
        CloseReason {
            peer_gone: false,
            code,
            notify: true,
            will: true,
            detail: detail.into(),
        }
    }
}

/// The broker core. See the crate documentation for the calling discipline.
pub struct Broker {
    config: Config,
    rng: Rng,
    now: Instant,
    /// Wall clock at `wall_at`, for timestamps shown to users.
    wall_ms: u64,
    wall_at: Instant,
    // Boxed: map nodes stay small, each entry costs only its own size (memory per idle client).
    conns: BTreeMap<ConnId, Box<Conn>>,
    sessions: BTreeMap<SessionId, Box<Session>>,
    by_client_id: BTreeMap<String, SessionId>,
    next_session_id: SessionId,
    subscriptions: SubscriptionTrie<SessionId, Subscription>,
    retained: RetainTrie<Arc<Message>>,
    timers: BTreeSet<(Instant, Timer)>,
    outputs: VecDeque<Output>,
    /// Connections with bytes in `tx`, in the order they were first written this round.
    dirty: Vec<ConnId>,
    stats: Stats,
    /// Admin set-configurations waiting for their file write, in arrival order.
    pending_config: BTreeMap<u64, admin_api::PendingConfig>,
    /// Enabled bridges, by name.
    bridges: BTreeMap<String, bridge::Bridge>,
    next_bridge_conn: u64,
    /// This broker's mark on messages it bridges out (v5), to recognise them coming back.
    node_id: String,
    store: durable::Durability,
    /// The last QoS 0 PUBLISH encoded, so a fan-out encodes each message once per version.
    last_qos0: Option<EncodedQos0>,
}

/// Where the last QoS 0 PUBLISH was encoded; its bytes are copied out when a second
/// subscriber needs the same encoding (a single delivery never pays for the copy).
struct EncodedQos0 {
    msg_id: u64,
    version: ProtocolVersion,
    retain: bool,
    conn: ConnId,
    range: std::ops::Range<usize>,
    bytes: Option<Bytes>,
}

impl Broker {
    /// A broker with no connections. `seed` is the only randomness it will ever use.
    pub fn new(config: Config, seed: u64, now: Instant) -> Broker {
        let mut broker = Broker {
            config,
            rng: Rng::new(seed),
            now,
            wall_ms: 0,
            wall_at: now,
            conns: BTreeMap::new(),
            sessions: BTreeMap::new(),
            by_client_id: BTreeMap::new(),
            next_session_id: 1,
            subscriptions: SubscriptionTrie::default(),
            retained: RetainTrie::default(),
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            dirty: Vec::new(),
            stats: Stats::default(),
            pending_config: BTreeMap::new(),
            bridges: BTreeMap::new(),
            next_bridge_conn: 0,
            node_id: String::new(),
            store: durable::Durability::default(),
            last_qos0: None,
        };
        if broker.config.persistence.enable {
            broker.store.mode = Some(broker.config.persistence.sync);
        }
        broker.node_id = format!("{:016x}", broker.rng.next_u64());
        broker.configure_bridges();
        broker
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len() as u64,
            sessions: self.sessions.len() as u64,
            subscriptions: self.subscriptions.len() as u64,
            retained: self.retained.len() as u64,
            ..self.stats
        }
    }

    /// Applies one input at `now`. `now` never goes backwards; an earlier value is treated
    /// as the last one seen.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.now = self.now.max(now);
        self.store.barrier = 0;
        match input {
            Input::Accepted { conn, peer } => self.accept(conn, peer),
            Input::Received { conn, bytes } => match self.bridge_of(conn) {
                Some(bridge) => self.bridge_receive(&bridge, &bytes),
                None => self.receive(conn, &bytes),
            },
            Input::BridgeConnected { conn } => self.bridge_connected(conn),
            Input::BridgeConnectFailed { conn, error } => self.bridge_connect_failed(conn, &error),
            Input::Written { conn, bytes } => self.written(conn, bytes),
            Input::PeerCertificate { conn, identity } => {
                if let Some(c) = self.conns.get_mut(&conn)
                    && c.state == ConnState::AwaitingConnect
                {
                    c.cert_identity = Some(identity);
                }
            }
            Input::Closed { conn } => {
                if let Some(bridge) = self.bridge_of(conn) {
                    self.bridge_link_down(&bridge, "connection lost", false);
                } else if self.conns.contains_key(&conn) {
                    self.drop_conn(
                        conn,
                        CloseReason {
                            peer_gone: true,
                            code: reason::UNSPECIFIED_ERROR,
                            notify: false,
                            will: true,
                            detail: "connection lost".to_owned(),
                        },
                    );
                }
            }
            Input::Timeout => self.fire_timers(),
            Input::WallClock { unix_ms } => {
                self.wall_ms = unix_ms;
                self.wall_at = self.now;
            }
            Input::ConfigChange(config) => match config.validate() {
                Ok(()) => {
                    self.config = *config;
                    self.configure_bridges();
                    self.event(BrokerEvent::ConfigApplied);
                }
                Err(error) => self.event(BrokerEvent::ConfigRejected { error }),
            },
            Input::Admin {
                req_id,
                credentials,
                body,
            } => self.handle_admin(req_id, &credentials, &body),
            Input::AdminConfigWritten { req_id, result } => self.config_written(req_id, result),
            Input::PersistDone { upto } => self.persist_done(upto),
            Input::PersistFailed { error } => self.persist_failed(error),
            Input::SnapshotRequest => self.snapshot(),
            Input::Shutdown => {
                self.close_bridges();
                let conns: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in conns {
                    self.drop_conn(
                        conn,
                        CloseReason {
                            peer_gone: false,
                            code: reason::SERVER_SHUTTING_DOWN,
                            notify: true,
                            will: false,
                            detail: "server shutting down".to_owned(),
                        },
                    );
                }
            }
        }
        self.flush_all();
    }

    /// The next output, if any. Drain until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When the broker next needs [`Input::Timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    fn event(&mut self, e: BrokerEvent) {
        self.outputs.push_back(Output::Event(e));
    }

    fn wall_now(&self) -> u64 {
        self.wall_ms.saturating_add(self.now.since(self.wall_at))
    }

    // ----- connections -------------------------------------------------------------------

    fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_packet_size: self.config.max_packet_size as usize,
            max_user_properties: self.config.property_size as usize,
        }
    }

    fn accept(&mut self, id: ConnId, peer: String) {
        if self.conns.contains_key(&id) {
            return;
        }
        let conn = Conn {
            peer,
            state: ConnState::AwaitingConnect,
            version: None,
            limits: self.decode_limits(),
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            unwritten: 0,
            last_rx: self.now,
            idle_limit_ms: self.config.connect_timeout_ms,
            timer_armed: None,
            client_receive_maximum: u16::MAX,
            client_max_packet_size: u32::MAX,
            receive_maximum: self.config.receive_maximum,
            topic_alias_max: self.config.max_topic_alias,
            topic_aliases: BTreeMap::new(),
            rel_pending: BTreeSet::new(),
            connect_expiry_secs: 0,
            username: None,
            keep_alive: 0,
            clean_start: true,
            cert_identity: None,
        };
        self.conns.insert(id, Box::new(conn));
        self.arm_conn_timer(id);
    }

    fn arm_conn_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(old) = conn.timer_armed.take() {
            self.timers.remove(&(old, Timer::Conn(id)));
        }
        if conn.idle_limit_ms > 0 {
            let at = conn.last_rx.plus_ms(conn.idle_limit_ms);
            conn.timer_armed = Some(at);
            self.timers.insert((at, Timer::Conn(id)));
        }
    }

    fn receive(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        buffer_input(&mut conn.rx, bytes, conn.limits.max_packet_size);
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.rx.is_empty() {
                return;
            }
            let version = conn.version;
            let limits = conn.limits;
            match codec::decode_packet(&mut conn.rx, version, &limits) {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    // Keepalive counts whole control packets.
                    conn.last_rx = self.now;
                    self.handle_packet(id, packet);
                }
                Err(e) => {
                    self.decode_failed(id, e);
                    return;
                }
            }
        }
    }

    fn decode_failed(&mut self, id: ConnId, e: DecodeError) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.state == ConnState::AwaitingConnect {
            // A bad CONNECT: answer only when we know how the client speaks.
            if let DecodeError::UnsupportedVersion(_) = e {
                self.send(
                    id,
                    ProtocolVersion::V311,
                    &Packet::ConnAck(ConnAck {
                        session_present: false,
                        code: reason::v3::UNACCEPTABLE_PROTOCOL_VERSION,
                        properties: Properties::default(),
                    }),
                );
            }
            self.drop_conn(
                id,
                CloseReason {
                    peer_gone: false,
                    code: e.reason_code(),
                    notify: false,
                    will: false,
                    detail: e.to_string(),
                },
            );
            return;
        }
        self.drop_conn(id, CloseReason::error(e.reason_code(), e.to_string()));
    }

    fn written(&mut self, id: ConnId, bytes: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.unwritten = conn.unwritten.saturating_sub(bytes);
        if let ConnState::Active(sid) = conn.state {
            self.pump(sid);
        }
    }

    /// Encodes `packet` into the connection's pending output.
    fn send(&mut self, id: ConnId, version: ProtocolVersion, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.tx.is_empty() {
            self.dirty.push(id);
        }
        // Packets the broker builds itself always fit the MQTT limits.
        let _ = codec::encode_packet(packet, version, &mut conn.tx);
    }

    fn flush_conn(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id)
            && !conn.tx.is_empty()
        {
            let bytes = conn.tx.split().freeze();
            self.transmit(id, bytes);
        }
    }

    fn flush_all(&mut self) {
        // The cached range points into a buffer that is about to be handed out.
        self.last_qos0 = None;
        self.flush_records();
        let dirty = std::mem::take(&mut self.dirty);
        for id in &dirty {
            self.flush_conn(*id);
        }
        // Messages wait while a reader is slow, but acknowledgements cannot: a peer that
        // keeps sending without reading is cut off before its backlog grows without bound.
        let hard_limit = 2 * self.config.max_write_buffer as usize;
        for id in &dirty {
            if self.conns.get(id).is_some_and(|c| c.unwritten > hard_limit) {
                self.drop_conn(
                    *id,
                    CloseReason {
                        peer_gone: false,
                        code: reason::QUOTA_EXCEEDED,
                        notify: false,
                        will: true,
                        detail: "not reading: write backlog over twice max_write_buffer".to_owned(),
                    },
                );
            }
        }
        self.dirty = dirty;
        self.dirty.clear();
        self.release_held();
        self.flush_records();
    }

    /// Closes a connection: optional v5 DISCONNECT, will, session bookkeeping, `$SYS`.
    fn drop_conn(&mut self, id: ConnId, why: CloseReason) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let version = conn.version;
        let state = conn.state;
        if why.notify
            && version == Some(ProtocolVersion::V5)
            && matches!(state, ConnState::Active(_))
        {
            self.send(
                id,
                ProtocolVersion::V5,
                &Packet::Disconnect(ReasonOnly {
                    reason: why.code,
                    properties: Properties::default(),
                }),
            );
        }
        if !why.peer_gone {
            self.flush_conn(id);
        }
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if let Some(at) = conn.timer_armed {
            self.timers.remove(&(at, Timer::Conn(id)));
        }
        // Output still waiting for the store goes with the connection.
        self.store.held.remove(&id);
        if !why.peer_gone {
            self.outputs.push_back(Output::Close { conn: id });
        }
        let ConnState::Active(sid) = state else {
            self.event(BrokerEvent::ClientDisconnected {
                conn: id,
                client_id: None,
                reason_code: why.code,
                detail: why.detail,
            });
            return;
        };
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if session.conn != Some(id) {
            return;
        }
        session.conn = None;
        let client_id = session.client_id.clone();
        if !why.will {
            session.will = None;
        }
        self.event(BrokerEvent::ClientDisconnected {
            conn: id,
            client_id: Some(client_id.clone()),
            reason_code: why.code,
            detail: why.detail,
        });
        self.publish_sys_disconnected(&client_id, conn.username.as_deref(), &conn.peer, why.code);
        self.session_disconnected(sid);
    }

    /// A session lost its connection: start the will delay and the expiry clock.
    fn session_disconnected(&mut self, sid: SessionId) {
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
        session.disconnected_at_unix_ms = Some(wall);
        self.persist_session(sid, false);
        self.arm_session_timer(sid);
    }

    fn arm_session_timer(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(old) = session.timer_armed.take() {
            self.timers.remove(&(old, Timer::Session(sid)));
        }
        if let Some(at) = session.next_deadline() {
            session.timer_armed = Some(at);
            self.timers.insert((at, Timer::Session(sid)));
        }
    }

    /// Removes a session for good, publishing a will still pending.
    fn end_session(&mut self, sid: SessionId) {
        if self
            .sessions
            .get(&sid)
            .is_some_and(|s| s.will_at.is_some() && s.will.is_some())
        {
            self.publish_will(sid);
        }
        let Some(session) = self.sessions.remove(&sid) else {
            return;
        };
        if session.durable {
            self.persist(
                Record::SessionDel {
                    client_id: session.client_id.clone(),
                },
                true,
            );
        }
        if let Some(at) = session.timer_armed {
            self.timers.remove(&(at, Timer::Session(sid)));
        }
        self.by_client_id.remove(&session.client_id);
        for raw in session.subscriptions.keys() {
            if let Ok(parsed) = topic::parse_subscription(raw, usize::MAX) {
                self.subscriptions
                    .remove(parsed.filter, parsed.share_group, &sid);
            }
        }
        let lost = session.queue.len() + session.inflight.len();
        if lost > 0 {
            self.stats.messages_dropped += lost as u64;
            self.event(BrokerEvent::MessagesDropped {
                client_id: session.client_id,
                count: lost as u64,
                why: "session ended",
            });
        }
    }

    fn fire_timers(&mut self) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > self.now {
                break;
            }
            self.timers.remove(&(at, timer));
            match timer {
                Timer::Conn(id) => self.conn_timer(id, at),
                Timer::Session(sid) => self.session_timer(sid, at),
                Timer::Bridge(key) => self.bridge_timer(key, at),
            }
        }
    }

    fn conn_timer(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.timer_armed != Some(at) {
            return;
        }
        conn.timer_armed = None;
        let due = conn.last_rx.plus_ms(conn.idle_limit_ms);
        if conn.idle_limit_ms == 0 {
            return;
        }
        if due > self.now {
            self.arm_conn_timer(id);
            return;
        }
        let (code, detail) = match conn.state {
            ConnState::AwaitingConnect => (reason::MALFORMED_PACKET, "no CONNECT in time"),
            ConnState::Active(_) => (reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout"),
        };
        self.drop_conn(id, CloseReason::error(code, detail));
    }

    fn session_timer(&mut self, sid: SessionId, at: Instant) {
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

    // ----- packets -----------------------------------------------------------------------

    fn handle_packet(&mut self, id: ConnId, packet: Packet) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let ConnState::Active(sid) = conn.state else {
            if let Packet::Connect(connect) = packet {
                self.handle_connect(id, *connect);
            }
            return;
        };
        let version = conn.version.unwrap_or(ProtocolVersion::V311);
        match packet {
            Packet::Publish(p) => self.handle_publish(id, sid, version, p),
            Packet::PubAck(a) => {
                let session = self.sessions.get_mut(&sid);
                if let Some(session) = session
                    && session
                        .inflight
                        .get(&a.packet_id)
                        .is_some_and(|f| f.delivery.qos == QoS::AtLeastOnce)
                {
                    let entry = session
                        .remove_inflight(a.packet_id)
                        .map_or(0, |f| f.delivery.entry);
                    self.forget_delivery(sid, entry);
                    self.pump(sid);
                }
            }
            Packet::PubRec(a) => self.handle_pubrec(id, sid, version, a),
            Packet::PubRel(a) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.rel_pending.remove(&a.packet_id);
                }
                let known = self
                    .sessions
                    .get_mut(&sid)
                    .is_some_and(|s| s.awaiting_rel.remove(&a.packet_id));
                if known {
                    self.persist_in_qos2(sid, a.packet_id, false);
                }
                let reason = if known || !version.is_v5() {
                    reason::SUCCESS
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.send(id, version, &Packet::PubComp(ack(a.packet_id, reason)));
            }
            Packet::PubComp(a) => {
                let session = self.sessions.get_mut(&sid);
                if let Some(session) = session
                    && session
                        .inflight
                        .get(&a.packet_id)
                        .is_some_and(|f| f.stage == OutStage::Released)
                {
                    let entry = session
                        .remove_inflight(a.packet_id)
                        .map_or(0, |f| f.delivery.entry);
                    self.forget_delivery(sid, entry);
                    self.pump(sid);
                }
            }
            Packet::Subscribe(s) => self.handle_subscribe(id, sid, version, s),
            Packet::Unsubscribe(u) => self.handle_unsubscribe(id, sid, version, u),
            Packet::PingReq => self.send(id, version, &Packet::PingResp),
            Packet::Disconnect(d) => self.handle_disconnect(id, sid, d),
            Packet::Auth(_) => self.drop_conn(
                id,
                CloseReason::error(
                    reason::PROTOCOL_ERROR,
                    "AUTH without enhanced authentication",
                ),
            ),
            Packet::Connect(_) => self.drop_conn(
                id,
                CloseReason::error(reason::PROTOCOL_ERROR, "second CONNECT"),
            ),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                let kind = packet.kind();
                self.drop_conn(
                    id,
                    CloseReason::error(
                        reason::PROTOCOL_ERROR,
                        format!("{kind} may only be sent by a server"),
                    ),
                )
            }
        }
    }

    fn refuse_connect(&mut self, id: ConnId, connect: &Connect, code: u8, detail: &str) {
        let version = connect.version;
        let code_on_wire = if version.is_v5() {
            code
        } else {
            reason::connack_code_for_v3(code)
        };
        self.send(
            id,
            version,
            &Packet::ConnAck(ConnAck {
                session_present: false,
                code: code_on_wire,
                properties: Properties::default(),
            }),
        );
        self.event(BrokerEvent::ConnectRefused {
            conn: id,
            client_id: connect.client_id.clone(),
            reason_code: code,
        });
        self.drop_conn(
            id,
            CloseReason {
                peer_gone: false,
                code,
                notify: false,
                will: false,
                detail: detail.to_owned(),
            },
        );
    }

    /// Checks the credentials against the configured users and `allow_anonymous`.
    fn authenticate(&self, connect: &Connect) -> Result<(), u8> {
        match &connect.username {
            Some(user) => match self.config.users.get(user) {
                Some(expected) => {
                    let given = connect.password.as_deref().unwrap_or_default();
                    if crate::admin::constant_time_eq(expected.as_bytes(), given) {
                        Ok(())
                    } else {
                        Err(reason::BAD_USERNAME_OR_PASSWORD)
                    }
                }
                None if self.config.users.is_empty() && self.config.allow_anonymous => Ok(()),
                None if self.config.users.is_empty() => Err(reason::NOT_AUTHORIZED),
                None => Err(reason::BAD_USERNAME_OR_PASSWORD),
            },
            None if self.config.allow_anonymous => Ok(()),
            None => Err(reason::NOT_AUTHORIZED),
        }
    }

    fn assign_client_id(&mut self) -> String {
        loop {
            let id = format!("tidemq-{:016x}", self.rng.next_u64());
            if !self.by_client_id.contains_key(&id) {
                return id;
            }
        }
    }

    fn handle_connect(&mut self, id: ConnId, mut connect: Connect) {
        let version = connect.version;
        let v5 = version.is_v5();
        let mut identity = None;
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.version = Some(version);
            identity = conn.cert_identity.clone();
        }
        // The certificate, verified by TLS, stands for user name and password.
        let by_certificate = self.config.tls.use_identity_as_username && identity.is_some();
        if by_certificate {
            connect.username = identity;
            connect.password = None;
        }
        if v5 && connect.properties.authentication_method.is_some() {
            return self.refuse_connect(
                id,
                &connect,
                reason::BAD_AUTH_METHOD,
                "enhanced authentication is not supported",
            );
        }
        if connect.client_id.len() > self.config.max_client_id_len as usize {
            return self.refuse_connect(
                id,
                &connect,
                reason::CLIENT_ID_NOT_VALID,
                "client identifier too long",
            );
        }
        if connect.client_id.is_empty()
            && (version == ProtocolVersion::V31 || (!v5 && !connect.clean_start))
        {
            return self.refuse_connect(
                id,
                &connect,
                reason::CLIENT_ID_NOT_VALID,
                "empty client identifier needs a clean session",
            );
        }
        if let Some(will) = &connect.will
            && topic::validate_topic_name(&will.topic, self.config.max_topic_levels as usize)
                .is_err()
        {
            return self.refuse_connect(
                id,
                &connect,
                reason::TOPIC_NAME_INVALID,
                "invalid will topic",
            );
        }
        if connect
            .will
            .as_ref()
            .is_some_and(|w| sys::is_reserved(&w.topic))
        {
            return self.refuse_connect(
                id,
                &connect,
                reason::NOT_AUTHORIZED,
                "will to a $SYS topic",
            );
        }
        if let Err(code) = self
            .authenticate(&connect)
            .or_else(|e| by_certificate.then_some(()).ok_or(e))
        {
            return self.refuse_connect(id, &connect, code, "authentication failed");
        }

        let assigned = connect.client_id.is_empty();
        let client_id = if assigned {
            self.assign_client_id()
        } else {
            connect.client_id.clone()
        };
        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            NEVER_EXPIRES
        };
        let expiry_secs = requested_expiry.min(self.config.max_session_expiry);
        // After a store failure nothing that creates, changes or ends a stored session can
        // be promised: refuse it (a CONNACK all the same, never silence).
        let stored = self
            .by_client_id
            .get(&client_id)
            .and_then(|sid| self.sessions.get(sid))
            .is_some_and(|s| s.durable);
        if (expiry_secs > 0 || stored) && self.store_refuses() {
            return self.refuse_connect(
                id,
                &connect,
                reason::QUOTA_EXCEEDED,
                "the store failed: persistent sessions are refused",
            );
        }

        // Take over a connection that holds this client id.
        if let Some(&old_sid) = self.by_client_id.get(&client_id)
            && let Some(old_conn) = self.sessions.get(&old_sid).and_then(|s| s.conn)
        {
            self.drop_conn(
                old_conn,
                CloseReason::error(reason::SESSION_TAKEN_OVER, "session taken over"),
            );
        }

        let existing = self.by_client_id.get(&client_id).copied();
        // A new connection cancels a will still in its delay, whether or not it keeps the
        // session [MQTT-3.1.3-9].
        if let Some(s) = existing.and_then(|sid| self.sessions.get_mut(&sid)) {
            s.will = None;
            s.will_at = None;
        }
        let (sid, session_present) = match existing {
            Some(sid) if !connect.clean_start => (sid, true),
            _ => {
                if let Some(old) = existing {
                    self.end_session(old);
                }
                let sid = self.next_session_id;
                self.next_session_id += 1;
                self.sessions
                    .insert(sid, Box::new(Session::new(client_id.clone(), version)));
                self.by_client_id.insert(client_id.clone(), sid);
                (sid, false)
            }
        };

        // Above the cap (0 is "never"), every client is held to the cap; only v5 can be told.
        let max_keepalive = self.config.max_keepalive;
        let capped = (max_keepalive > 0
            && (connect.keep_alive == 0 || connect.keep_alive > max_keepalive))
            .then_some(max_keepalive);
        let keep_alive = capped.unwrap_or(connect.keep_alive);
        let server_keep_alive = capped.filter(|_| v5);
        let idle_limit_ms =
            (f64::from(keep_alive) * 1000.0 * self.config.keepalive_multiplier) as u64;
        let limits = self.decode_limits();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.state = ConnState::Active(sid);
        conn.idle_limit_ms = idle_limit_ms;
        conn.limits = limits;
        conn.receive_maximum = self.config.receive_maximum;
        conn.topic_alias_max = self.config.max_topic_alias;
        conn.client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        conn.client_max_packet_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        conn.connect_expiry_secs = requested_expiry;
        conn.username = connect.username.clone();
        conn.keep_alive = keep_alive;
        conn.clean_start = connect.clean_start;
        let peer = conn.peer.clone();
        self.arm_conn_timer(id);

        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(old) = session.timer_armed.take() {
            self.timers.remove(&(old, Timer::Session(sid)));
        }
        session.conn = Some(id);
        session.version = version;
        session.username = connect.username.clone();
        session.keep_alive = keep_alive;
        session.expiry_secs = expiry_secs;
        session.expires_at = None;
        session.will = connect.will.clone();
        self.persist_connect(sid);

        let mut properties = Properties::default();
        if v5 {
            if assigned {
                properties.assigned_client_identifier = Some(client_id.clone());
            }
            if expiry_secs != requested_expiry {
                properties.session_expiry_interval = Some(expiry_secs);
            }
            if self.config.receive_maximum != u16::MAX {
                properties.receive_maximum = Some(self.config.receive_maximum);
            }
            properties.maximum_packet_size = Some(self.config.max_packet_size);
            properties.topic_alias_maximum =
                (self.config.max_topic_alias > 0).then_some(self.config.max_topic_alias);
            properties.server_keep_alive = server_keep_alive;
        }
        self.send(
            id,
            version,
            &Packet::ConnAck(ConnAck {
                session_present,
                code: reason::SUCCESS,
                properties,
            }),
        );
        self.event(BrokerEvent::ClientConnected {
            conn: id,
            client_id: client_id.clone(),
            protocol: version.level(),
            session_present,
        });
        self.publish_sys_connected(&client_id, &connect, keep_alive, &peer);
        self.resume(sid);
    }

    /// A reconnected session: what was in flight is resent (within the new connection's
    /// window), then the queue drains.
    fn resume(&mut self, sid: SessionId) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.mark_all_unsent();
        }
        self.pump(sid);
    }

    /// Resends a message in flight before a reconnect: PUBLISH with DUP, or PUBREL.
    fn resend(&mut self, sid: SessionId, conn: ConnId, pid: u16) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let version = session.version;
        // Everything in flight went out once: resends carry DUP and finish even if the
        // message has expired since.
        session.mark_sent(pid);
        let Some(f) = session.inflight.get(&pid) else {
            return;
        };
        match f.stage {
            OutStage::Published => {
                let delivery = f.delivery.clone();
                if !self.write_publish(conn, version, &delivery, Some(pid), true) {
                    // Larger than the client now accepts: forget it.
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.remove_inflight(pid);
                    }
                    self.forget_delivery(sid, delivery.entry);
                }
            }
            OutStage::Released => {
                self.send(conn, version, &Packet::PubRel(ack(pid, reason::SUCCESS)))
            }
        }
    }

    fn handle_disconnect(&mut self, id: ConnId, sid: SessionId, d: ReasonOnly) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let Some(expiry) = d.properties.session_expiry_interval {
            if conn.connect_expiry_secs == 0 && expiry != 0 {
                return self.drop_conn(
                    id,
                    CloseReason::error(
                        reason::PROTOCOL_ERROR,
                        "session expiry set on DISCONNECT after 0 in CONNECT",
                    ),
                );
            }
            let capped = expiry.min(self.config.max_session_expiry);
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.expiry_secs = capped;
            }
        }
        // Only a normal disconnection discards the will [MQTT-3.1.2-10].
        self.drop_conn(
            id,
            CloseReason {
                peer_gone: false,
                code: d.reason,
                notify: false,
                will: d.reason != reason::SUCCESS,
                detail: "client disconnected".to_owned(),
            },
        );
    }

    fn handle_publish(&mut self, id: ConnId, sid: SessionId, version: ProtocolVersion, p: Publish) {
        let v5 = version.is_v5();
        let mut p = p;
        if !p.properties.subscription_identifiers.is_empty() {
            return self.drop_conn(
                id,
                CloseReason::error(
                    reason::PROTOCOL_ERROR,
                    "subscription identifier in a client PUBLISH",
                ),
            );
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let receive_maximum = conn.receive_maximum;
        if let Some(alias) = p.properties.topic_alias.take() {
            if alias == 0 || alias > conn.topic_alias_max {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::TOPIC_ALIAS_INVALID, "topic alias out of range"),
                );
            }
            if p.topic.is_empty() {
                match conn.topic_aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return self.drop_conn(
                            id,
                            CloseReason::error(reason::PROTOCOL_ERROR, "unknown topic alias"),
                        );
                    }
                }
            } else {
                conn.topic_aliases.insert(alias, p.topic.clone());
            }
        }
        match topic::validate_topic_name(&p.topic, self.config.max_topic_levels as usize) {
            Ok(()) => {}
            Err(TopicError::Empty) => {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::PROTOCOL_ERROR, "empty topic name"),
                );
            }
            Err(_) => {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::TOPIC_NAME_INVALID, "invalid topic name"),
                );
            }
        }
        let pid = p.packet_id.unwrap_or(0);
        if p.qos == QoS::ExactlyOnce {
            let Some(session) = self.sessions.get(&sid) else {
                return;
            };
            let resend = session.awaiting_rel.contains(&pid);
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if resend {
                // A resend of a message already accepted: acknowledge, never deliver twice.
                conn.rel_pending.insert(pid);
                return self.send(id, version, &Packet::PubRec(ack(pid, reason::SUCCESS)));
            }
            // Ids left unreleased by an earlier connection do not count (v5 §4.9).
            if conn.rel_pending.len() >= usize::from(receive_maximum) {
                return self.drop_conn(
                    id,
                    CloseReason::error(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "too many unreleased QoS 2 messages",
                    ),
                );
            }
        }
        let denied = sys::is_reserved(&p.topic);
        let qos = p.qos;
        // With the store gone, a message that would need it is not accepted at all.
        let refused = !denied && self.store_refuses() && self.needs_store(sid, &p);
        if refused && (!v5 || qos == QoS::AtMostOnce) {
            return self.drop_conn(
                id,
                CloseReason::error(reason::QUOTA_EXCEEDED, "the store failed"),
            );
        }
        let code = if refused {
            reason::QUOTA_EXCEEDED
        } else if denied && v5 {
            reason::NOT_AUTHORIZED
        } else {
            reason::SUCCESS
        };
        // The QoS 2 id is recorded before the message is routed, so that the message knows
        // every record its acceptance depends on (see `Message::needs_seq`).
        if qos == QoS::ExactlyOnce
            && code == reason::SUCCESS
            && let Some(session) = self.sessions.get_mut(&sid)
        {
            session.awaiting_rel.insert(pid);
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.rel_pending.insert(pid);
            }
            self.persist_in_qos2(sid, pid, true);
        }
        if !denied && !refused {
            self.accept_publish(sid, into_message(p));
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.send(id, version, &Packet::PubAck(ack(pid, code))),
            QoS::ExactlyOnce => self.send(id, version, &Packet::PubRec(ack(pid, code))),
        }
    }

    /// Stores (if retained) and routes a message published by a client.
    fn accept_publish(&mut self, sid: SessionId, mut msg: Message) {
        if self.is_own_origin(&msg.properties) {
            // Our own message, back through a loop of bridges: it was delivered here already.
            return;
        }
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.messages_received += 1;
        }
        msg.publisher = Some(sid);
        if let Some(secs) = msg.properties.message_expiry_interval.take() {
            msg.expires_at = Some(self.now.plus_secs(u64::from(secs)));
        }
        self.publish(msg);
    }

    /// Retains and routes a message from any source. Client messages and wills count as
    /// received; the broker's own `$SYS` events do not.
    fn publish(&mut self, msg: Message) {
        if msg.publisher.is_some() || msg.from_bridge.is_some() {
            self.stats.messages_received += 1;
        }
        let mut msg = msg;
        msg.id = self.next_message_id();
        let msg = Arc::new(msg);
        if msg.retain {
            // The broker's own events are never kept across a restart. After a store failure
            // only what a client is refused for needs it (see `needs_store`).
            let keep = self.durable_on() && !self.store.failed && !sys::is_reserved(&msg.topic);
            if msg.payload.is_empty() {
                if self.retained.remove(&msg.topic).is_some() && keep {
                    let topic = msg.topic.clone();
                    self.persist(Record::RetainDel { topic }, true);
                }
            } else {
                self.retained.insert(&msg.topic, msg.clone());
                if keep {
                    self.persist_message(&msg);
                    let (topic, msg_id) = (msg.topic.clone(), msg.id);
                    self.persist(Record::RetainPut { topic, msg_id }, true);
                }
            }
        }
        self.route(&msg);
        self.bridge_forward(&msg);
        // Deliveries of it in later inputs (from a queue) wait for what accepted it.
        if self.store.barrier > self.store.durable {
            msg.needs_seq.store(self.store.barrier, Ordering::Relaxed);
        }
    }

    /// Delivers `msg` to every matching subscription: once per session for its non-shared
    /// subscriptions, with the highest QoS and every subscription identifier that matched,
    /// plus one copy per share group that picked it (v5 §4.8.2).
    fn route(&mut self, msg: &Arc<Message>) {
        // Targets with the same key merge: (session, 0) for non-shared, (session, n) for the
        // n-th share group.
        type Key = (SessionId, usize);
        let mut targets: Vec<(Key, QoS, bool, Option<u32>)> = Vec::new();
        {
            let mut matched = Vec::new();
            self.subscriptions.matches(&msg.topic, &mut matched);
            let mut groups = 0;
            for m in matched {
                match m {
                    SubMatch::Single(sid, sub) => {
                        if sub.options.no_local && msg.publisher == Some(*sid) {
                            continue;
                        }
                        targets.push((
                            (*sid, 0),
                            sub.options.qos,
                            sub.options.retain_as_published,
                            sub.id,
                        ));
                    }
                    SubMatch::Shared(group) => {
                        groups += 1;
                        if let Some((sid, sub)) = pick_member(group, &self.sessions) {
                            targets.push(((sid, groups), sub.options.qos, false, sub.id));
                        }
                    }
                }
            }
        }
        if targets.is_empty() && (msg.publisher.is_some() || msg.from_bridge.is_some()) {
            self.stats.messages_unrouted += 1;
        }
        targets.sort_by_key(|t| t.0);
        let mut i = 0;
        while let Some(&(key, mut qos, mut rap, id)) = targets.get(i) {
            let mut ids: Vec<u32> = id.into_iter().collect();
            i += 1;
            while let Some(&(next, q, r, id)) = targets.get(i) {
                if next != key {
                    break;
                }
                qos = qos.max(q);
                rap |= r;
                ids.extend(id);
                i += 1;
            }
            let delivery = Delivery {
                msg: msg.clone(),
                qos: qos.min(msg.qos),
                retain: rap && msg.retain,
                subscription_ids: ids,
                entry: 0,
            };
            self.deliver(key.0, delivery);
        }
    }

    fn can_write(&self, conn: ConnId) -> bool {
        let held = self.held_bytes(conn);
        self.conns.get(&conn).is_some_and(|c| {
            c.unwritten + c.tx.len() + held < self.config.max_write_buffer as usize
        })
    }

    fn inflight_limit(&self, conn: ConnId) -> usize {
        let client = self
            .conns
            .get(&conn)
            .map_or(u16::MAX, |c| c.client_receive_maximum);
        usize::from(client.min(self.config.max_inflight))
    }

    fn drop_message(&mut self, sid: SessionId, why: &'static str) {
        self.stats.messages_dropped += 1;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.messages_dropped += 1;
            let client_id = s.client_id.clone();
            self.event(BrokerEvent::MessagesDropped {
                client_id,
                count: 1,
                why,
            });
        }
    }

    /// Sends now if the window and the writer allow, else queues (QoS 1/2, or QoS 0 behind
    /// them for a connected client) within `msq_len`. QoS 0 to a stalled writer is dropped.
    fn deliver(&mut self, sid: SessionId, d: Delivery) {
        let mut d = d;
        let Some(session) = self.sessions.get(&sid) else {
            return;
        };
        if d.msg.expired(self.now) {
            return self.drop_message(sid, "message expired");
        }
        match session.conn {
            None if d.qos == QoS::AtMostOnce => {}
            Some(conn) if d.qos == QoS::AtMostOnce && !self.can_write(conn) => {
                self.drop_message(sid, "slow reader");
            }
            Some(conn)
                if session.queue.is_empty()
                    && self.can_write(conn)
                    && (d.qos == QoS::AtMostOnce
                        || session.inflight.len() < self.inflight_limit(conn)) =>
            {
                if !self.persist_delivery(sid, &mut d) {
                    return self.drop_message(sid, "the store failed");
                }
                self.send_now(sid, conn, d);
            }
            _ => {
                if session.queue.len() >= self.config.msq_len as usize {
                    return self.drop_message(sid, "queue full");
                }
                if !self.persist_delivery(sid, &mut d) {
                    return self.drop_message(sid, "the store failed");
                }
                if let Some(session) = self.sessions.get_mut(&sid) {
                    session.queue.push_back(d);
                }
            }
        }
    }

    /// Writes a delivery, taking a packet id and an inflight slot for QoS 1/2.
    fn send_now(&mut self, sid: SessionId, conn: ConnId, d: Delivery) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        let version = session.version;
        if d.qos == QoS::AtMostOnce {
            self.write_publish(conn, version, &d, None, false);
            return;
        }
        let Some(pid) = session.allocate_packet_id() else {
            self.forget_delivery(sid, d.entry);
            return self.drop_message(sid, "no packet identifier free");
        };
        // After a restart the same packet id carries on [MQTT-4.4.0-1]. For QoS 2 the record
        // must be durable before the PUBLISH leaves (else a new id could mean a second
        // delivery); for QoS 1 a lost record only costs a resend under a new id.
        self.persist_out_state(sid, d.entry, pid, d.qos, false);
        if !self.write_publish(conn, version, &d, Some(pid), false) {
            self.forget_delivery(sid, d.entry);
        } else if let Some(session) = self.sessions.get_mut(&sid) {
            session.push_inflight(pid, d);
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
        let needs = msg.needs_seq.load(Ordering::Relaxed);
        if d.qos == QoS::ExactlyOnce && needs > self.store.durable {
            self.store.barrier = self.store.barrier.max(needs);
        }
        // Expiry stops a delivery that has not started; a resend finishes what was started
        // (v5 §3.3.2.3.3), so its packet id is never freed while the client may hold it.
        if msg.expired(now) && !dup {
            self.stats.messages_dropped += 1;
            return false;
        }
        let extra = version.is_v5() && (!d.subscription_ids.is_empty() || msg.expires_at.is_some());
        let cacheable = pid.is_none() && !extra && !dup;
        if cacheable && let Some(bytes) = self.cached_qos0(msg.id, version, d.retain) {
            return self.write_encoded(conn, &bytes);
        }
        let owned;
        let properties = if extra {
            let mut p = msg.properties.clone();
            p.subscription_identifiers = d.subscription_ids.clone();
            if let Some(at) = msg.expires_at {
                p.message_expiry_interval = Some((at.since(now).div_ceil(1000) as u32).max(1));
            }
            owned = p;
            &owned
        } else {
            &msg.properties
        };
        let publish = PublishRef {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: &msg.topic,
            packet_id: pid,
            properties,
            payload: &msg.payload,
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if publish.encoded_len(version) > c.client_max_packet_size as usize {
            self.stats.messages_dropped += 1;
            return false;
        }
        if c.tx.is_empty() {
            self.dirty.push(conn);
        }
        let start = c.tx.len();
        if publish.encode(version, &mut c.tx).is_err() {
            self.stats.messages_dropped += 1;
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
        self.count_sent(conn);
        true
    }

    fn count_sent(&mut self, conn: ConnId) {
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
    fn write_encoded(&mut self, conn: ConnId, bytes: &[u8]) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if bytes.len() > c.client_max_packet_size as usize {
            self.stats.messages_dropped += 1;
            return false;
        }
        if c.tx.is_empty() {
            self.dirty.push(conn);
        }
        c.tx.extend_from_slice(bytes);
        self.count_sent(conn);
        true
    }

    /// Resends what is in flight from an earlier connection, then moves queued messages
    /// out, while the connection, window and writer allow.
    fn pump(&mut self, sid: SessionId) {
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
            if let Some(pid) = session.next_resend() {
                if session.inflight_sent() >= limit {
                    return;
                }
                self.resend(sid, conn, pid);
                continue;
            }
            let Some(front) = session.queue.front() else {
                return;
            };
            if front.qos != QoS::AtMostOnce && session.inflight.len() >= limit {
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
                self.drop_message(sid, "message expired");
                continue;
            }
            self.send_now(sid, conn, d);
        }
    }

    fn handle_pubrec(&mut self, id: ConnId, sid: SessionId, version: ProtocolVersion, a: Ack) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        match session.inflight.get_mut(&a.packet_id) {
            Some(f) if f.delivery.qos == QoS::ExactlyOnce => {
                if a.reason >= 0x80 {
                    // The receiver refused it: the flow ends here.
                    let entry = session
                        .remove_inflight(a.packet_id)
                        .map_or(0, |f| f.delivery.entry);
                    self.forget_delivery(sid, entry);
                    self.pump(sid);
                    return;
                }
                f.stage = OutStage::Released;
                let entry = f.delivery.entry;
                session.mark_sent(a.packet_id);
                self.persist_out_state(sid, entry, a.packet_id, QoS::ExactlyOnce, true);
                self.send(
                    id,
                    version,
                    &Packet::PubRel(ack(a.packet_id, reason::SUCCESS)),
                );
            }
            _ => {
                let code = if version.is_v5() {
                    reason::PACKET_ID_NOT_FOUND
                } else {
                    reason::SUCCESS
                };
                self.send(id, version, &Packet::PubRel(ack(a.packet_id, code)));
            }
        }
    }

    fn handle_subscribe(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        s: Subscribe,
    ) {
        let v5 = version.is_v5();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let max_levels = self.config.max_topic_levels as usize;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained_for: Vec<(String, Subscription)> = Vec::new();
        for (raw, options) in &s.filters {
            let parsed = match topic::parse_subscription(raw, max_levels) {
                Ok(p) => p,
                Err(_) => {
                    reasons.push(if v5 {
                        reason::TOPIC_FILTER_INVALID
                    } else {
                        reason::UNSPECIFIED_ERROR
                    });
                    continue;
                }
            };
            if parsed.share_group.is_some() && options.no_local {
                return self.drop_conn(
                    id,
                    CloseReason::error(reason::PROTOCOL_ERROR, "no local on a shared subscription"),
                );
            }
            let Some(session) = self.sessions.get_mut(&sid) else {
                return;
            };
            let existed = session.subscriptions.contains_key(raw);
            if session.durable && self.store.failed {
                reasons.push(if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::UNSPECIFIED_ERROR
                });
                continue;
            }
            if !existed && session.subscriptions.len() >= self.config.max_subscriptions as usize {
                reasons.push(if v5 {
                    reason::QUOTA_EXCEEDED
                } else {
                    reason::UNSPECIFIED_ERROR
                });
                continue;
            }
            let sub = Subscription {
                options: *options,
                id: sub_id,
            };
            session.subscriptions.insert(raw.clone(), sub);
            let durable = session.durable.then(|| session.client_id.clone());
            self.subscriptions
                .insert(parsed.filter, parsed.share_group, sid, sub);
            if let Some(client_id) = durable {
                let record = Record::SubPut {
                    client_id,
                    filter: raw.clone(),
                    options: durable::options_byte(options),
                    subscription_id: sub_id,
                };
                self.persist(record, true);
            }
            reasons.push(options.qos as u8);
            let wants_retained = match options.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            if parsed.share_group.is_none() && wants_retained {
                retained_for.push((parsed.filter.to_owned(), sub));
            }
        }
        self.send(
            id,
            version,
            &Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
        for (filter, sub) in retained_for {
            let (expired, msgs): (Vec<_>, Vec<_>) = self
                .retained
                .matching(&filter)
                .into_iter()
                .map(|(t, m)| (t, m.clone()))
                .partition(|(_, m)| m.expired(self.now));
            // Expired retained messages are never delivered again: forget them.
            for (topic, _) in expired {
                self.retained.remove(&topic);
                self.persist(Record::RetainDel { topic }, false);
            }
            for (_, msg) in msgs {
                let delivery = Delivery {
                    qos: sub.options.qos.min(msg.qos),
                    retain: true,
                    subscription_ids: sub.id.into_iter().collect(),
                    msg,
                    entry: 0,
                };
                self.deliver(sid, delivery);
            }
        }
    }

    fn handle_unsubscribe(
        &mut self,
        id: ConnId,
        sid: SessionId,
        version: ProtocolVersion,
        u: Unsubscribe,
    ) {
        let mut reasons = Vec::new();
        for raw in &u.filters {
            let removed = self
                .sessions
                .get_mut(&sid)
                .is_some_and(|s| s.subscriptions.remove(raw).is_some());
            let code = match topic::parse_subscription(raw, usize::MAX) {
                Ok(parsed) => {
                    if removed {
                        self.subscriptions
                            .remove(parsed.filter, parsed.share_group, &sid);
                        if let Some(client_id) = self
                            .sessions
                            .get(&sid)
                            .filter(|s| s.durable)
                            .map(|s| s.client_id.clone())
                        {
                            let filter = raw.clone();
                            self.persist(Record::SubDel { client_id, filter }, true);
                        }
                        reason::SUCCESS
                    } else {
                        reason::NO_SUBSCRIPTION_EXISTED
                    }
                }
                Err(_) => reason::TOPIC_FILTER_INVALID,
            };
            reasons.push(code);
        }
        if !version.is_v5() {
            reasons.clear();
        }
        self.send(
            id,
            version,
            &Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                reasons,
            }),
        );
    }

    // ----- wills and $SYS ----------------------------------------------------------------

    fn publish_will(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.will_at = None;
        let Some(will) = session.will.take() else {
            return;
        };
        let msg = will_message(will, Some(sid), self.now);
        self.publish(msg);
    }

    fn publish_sys_connected(
        &mut self,
        client_id: &str,
        connect: &Connect,
        keep_alive: u16,
        peer: &str,
    ) {
        if !self.config.sys_events {
            return;
        }
        let body = sys::Connected {
            username: connect.username.as_deref().unwrap_or(""),
            ts: self.wall_now(),
            proto_name: connect.version.name(),
            keepalive: keep_alive,
            return_code: "0".to_owned(),
            proto_ver: connect.version.level(),
            client_id,
            clean_start: u8::from(connect.clean_start),
            ip: sys::ip_of(peer),
        };
        self.publish_sys(sys::CONNECTED_TOPIC, serde_json::to_vec(&body));
    }

    fn publish_sys_disconnected(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        peer: &str,
        code: u8,
    ) {
        if !self.config.sys_events {
            return;
        }
        let body = sys::Disconnected {
            username: username.unwrap_or(""),
            ts: self.wall_now(),
            reason_code: format!("{code:x}"),
            client_id,
            ip: sys::ip_of(peer),
        };
        self.publish_sys(sys::DISCONNECTED_TOPIC, serde_json::to_vec(&body));
    }

    fn publish_sys(&mut self, topic: &str, payload: Result<Vec<u8>, serde_json::Error>) {
        let Ok(payload) = payload else {
            return;
        };
        self.publish(Message {
            topic: topic.to_owned(),
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
            expires_at: None,
            publisher: None,
            from_bridge: None,
            id: 0,
            stored: AtomicBool::new(false),
            needs_seq: AtomicU64::new(0),
        });
    }
}

/// Appends received bytes to a connection's buffer. It grows only to what is needed, or at
/// once to the size of the packet being assembled when its header is in and within the limit,
/// never by doubling: a connection holds at most one maximum-size packet plus one read.
fn buffer_input(rx: &mut BytesMut, bytes: &[u8], max_packet_size: usize) {
    let needed = rx.len() + bytes.len();
    if needed > rx.capacity() {
        let packet = match codec::peek_fixed_header(rx) {
            Ok(Some((_, remaining, header))) if header + remaining <= max_packet_size => {
                header + remaining
            }
            _ => 0,
        };
        let mut grown = BytesMut::with_capacity(needed.max(packet));
        grown.extend_from_slice(rx);
        *rx = grown;
    }
    rx.extend_from_slice(bytes);
}

/// Chooses the share-group member for the next message: round robin over connected members,
/// or over all members when none is connected (the message waits in its queue).
fn pick_member(
    group: &topic::SharedGroup<SessionId, Subscription>,
    sessions: &BTreeMap<SessionId, Box<Session>>,
) -> Option<(SessionId, Subscription)> {
    let n = group.members.len();
    if n == 0 {
        return None;
    }
    let start = (group.advance() % n as u64) as usize;
    let connected = |sid: &SessionId| sessions.get(sid).is_some_and(|s| s.conn.is_some());
    let rotated = group
        .members
        .iter()
        .skip(start)
        .chain(group.members.iter().take(start));
    let mut first = None;
    for (sid, sub) in rotated {
        if connected(sid) {
            return Some((*sid, *sub));
        }
        first.get_or_insert((*sid, *sub));
    }
    first
}

fn ack(packet_id: u16, reason: u8) -> Ack {
    Ack {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

fn will_message(will: Will, publisher: Option<SessionId>, now: Instant) -> Message {
    let mut properties = will.properties;
    properties.will_delay_interval = None;
    let expires_at = properties
        .message_expiry_interval
        .take()
        .map(|secs| now.plus_secs(u64::from(secs)));
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties,
        expires_at,
        publisher,
        from_bridge: None,
        id: 0,
        stored: AtomicBool::new(false),
        needs_seq: AtomicU64::new(0),
    }
}

/// The routed form of a client PUBLISH: topic alias and subscription ids never travel on.
fn into_message(p: Publish) -> Message {
    let mut properties = p.properties;
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    Message {
        topic: p.topic,
        payload: p.payload,
        qos: p.qos,
        retain: p.retain,
        properties,
        expires_at: None,
        publisher: None,
        from_bridge: None,
        id: 0,
        stored: AtomicBool::new(false),
        needs_seq: AtomicU64::new(0),
    }
}
