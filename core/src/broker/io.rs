//! Bytes in and out of client connections: accepting, decoding and dispatching packets,
//! encoding replies, flushing one Transmit per connection per input, back-pressure towards
//! slow readers, and closing.

use bytes::{Bytes, BytesMut};

use super::Broker;
use crate::api::{BrokerEvent, ConnId, Output};
use crate::codec::{
    self, ConnAck, DecodeError, Packet, Properties, ProtocolVersion, ReasonOnly, reason,
};
use crate::conn::{CloseReason, Conn, ConnState};
use crate::ids::SessionId;
use crate::memory::FAIR_BACKLOG;
use crate::timer::Timer;

impl Broker {
    pub(super) fn accept(&mut self, id: ConnId, peer: String) {
        if self.conns.contains_key(&id) {
            return;
        }
        self.counters.sockets += 1;
        let conn = Conn::new(peer, self.now, &self.config, &self.memory.ledger);
        self.conns.insert(id, Box::new(conn));
        self.arm_conn_timer(id);
    }

    /// The verified client certificate of a TLS connection, before its CONNECT.
    pub(super) fn peer_certificate(&mut self, id: ConnId, identity: String) {
        if let Some(c) = self.conns.get_mut(&id)
            && c.state == ConnState::AwaitingConnect
        {
            c.cert_identity = Some(identity);
        }
    }

    pub(super) fn receive(&mut self, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        self.counters.bytes_in(bytes.len());
        conn.buffer_input(bytes);
        loop {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            if conn.state == ConnState::Authenticating {
                // Held, not decoded, until the credentials are answered.
                if self.holds_too_much(id) {
                    self.abandon_auth(
                        id,
                        reason::QUOTA_EXCEEDED,
                        "sent too much while its credentials were checked",
                    );
                }
                return;
            }
            let next = conn.rx.first().copied();
            if conn.acl_wait.is_some() || self.cluster.as_ref().is_some_and(|c| c.holds(id, next)) {
                // Likewise until the ACL service answers about the packet before, or
                // JetStream has the message before.
                if self.holds_too_much(id) {
                    self.drop_conn(
                        id,
                        CloseReason::error(
                            reason::QUOTA_EXCEEDED,
                            "sent too much while a packet before it waited",
                        ),
                    );
                }
                return;
            }
            if conn.rx.is_empty() {
                // An idle connection holds no receive buffer (the next read allocates one).
                if conn.rx.capacity() > 0 {
                    conn.rx = BytesMut::new();
                    conn.recount();
                }
                return;
            }
            let version = conn.version;
            let limits = conn.limits;
            // Read before decoding consumes it: a bad CONNECT is answered in its version.
            let connect_level = version
                .is_none()
                .then(|| codec::connect_protocol_level(&conn.rx))
                .flatten();
            match codec::decode_packet(&mut conn.rx, version, &limits) {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    // Keepalive counts whole control packets.
                    conn.last_rx = self.now;
                    self.handle_packet(id, packet);
                }
                Err(e) => {
                    self.decode_failed(id, e, connect_level);
                    return;
                }
            }
        }
    }

    fn decode_failed(&mut self, id: ConnId, e: DecodeError, connect_level: Option<u8>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if conn.state == ConnState::AwaitingConnect {
            // A bad CONNECT: answered only when we know how the client speaks. A v5 client
            // is told why (0x81, 0x82, 0x95: [MQTT-4.13.1], a CONNACK before the close);
            // 3.1.1 has codes for neither.
            let answer = match (&e, connect_level) {
                (DecodeError::UnsupportedVersion(_), _) => Some((
                    ProtocolVersion::V311,
                    reason::v3::UNACCEPTABLE_PROTOCOL_VERSION,
                )),
                (
                    DecodeError::Malformed(_)
                    | DecodeError::Protocol(_)
                    | DecodeError::TooLarge { .. },
                    Some(5),
                ) => Some((ProtocolVersion::V5, e.reason_code())),
                _ => None,
            };
            if let Some((version, code)) = answer {
                self.send(
                    id,
                    version,
                    &Packet::ConnAck(ConnAck {
                        session_present: false,
                        code,
                        properties: Properties::default(),
                    }),
                );
            }
            self.drop_conn(id, CloseReason::silent(e.reason_code(), e.to_string()));
            return;
        }
        self.drop_conn(id, CloseReason::error(e.reason_code(), e.to_string()));
    }

    /// One whole packet from a client, to the flow it belongs to.
    pub(super) fn handle_packet(&mut self, id: ConnId, packet: Packet) {
        self.counters.packet_in(packet.type_number());
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
        let Some(packet) = self.acl_hold(id, sid, packet) else {
            return;
        };
        match packet {
            Packet::Publish(p) => self.handle_publish(id, sid, version, p),
            Packet::PubAck(a) => self.handle_puback(sid, a.packet_id),
            Packet::PubRec(a) => self.handle_pubrec(id, sid, version, a),
            Packet::PubRel(a) => self.handle_pubrel(id, sid, version, a.packet_id),
            Packet::PubComp(a) => self.handle_pubcomp(sid, a.packet_id),
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

    pub(super) fn written(&mut self, id: ConnId, bytes: usize) {
        if let Some(bridge) = self.bridge_of(id) {
            return self.bridge_written(bridge, bytes);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.unwritten = conn.unwritten.saturating_sub(bytes);
        conn.recount();
        if let ConnState::Active(sid) = conn.state {
            self.pump(sid);
        }
    }

    /// Encodes `packet` into the connection's pending output.
    pub(super) fn send(&mut self, id: ConnId, version: ProtocolVersion, packet: &Packet) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.tx.is_empty() {
            self.dirty.push(id);
        }
        self.counters.packet_out(packet.type_number());
        // Packets the broker builds itself always fit the MQTT limits.
        let _ = codec::encode_packet(packet, version, &mut conn.tx);
    }

    /// Whether a connection's writer can take more: what it holds, what this input built and
    /// what waits for the store stay under `max_write_buffer`.
    pub(super) fn can_write(&self, conn: ConnId) -> bool {
        self.write_room(conn) > 0
    }

    /// How many more bytes a connection's writer takes before [`Broker::can_write`] says no.
    pub(super) fn write_room(&self, conn: ConnId) -> usize {
        let held = self.store.held_bytes(conn);
        // Past the memory budget's high mark a connection that is not keeping up takes no
        // more: output piles up no more than queues or retained messages do.
        let limit = if self.memory.under_pressure(self.config.max_memory) {
            FAIR_BACKLOG.min(self.config.max_write_buffer as usize)
        } else {
            self.config.max_write_buffer as usize
        };
        self.conns
            .get(&conn)
            .map_or(0, |c| limit.saturating_sub(c.backlog(held)))
    }

    fn flush_conn(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(&id)
            && !conn.tx.is_empty()
        {
            // The whole buffer goes: nothing of it stays behind with an idle connection.
            let bytes = std::mem::take(&mut conn.tx).freeze();
            self.transmit(id, bytes);
        }
    }

    /// Bytes for `conn`: out now, or held behind the store.
    pub(super) fn transmit(&mut self, conn: ConnId, bytes: Bytes) {
        if let Some(bytes) = self.store.hold(conn, bytes) {
            self.emit(conn, bytes);
        }
    }

    fn emit(&mut self, conn: ConnId, bytes: Bytes) {
        // A bridge's bytes are its own counters' (tx_bytes), as they are coming in.
        if let Some(c) = self.conns.get_mut(&conn) {
            c.unwritten += bytes.len();
            c.recount();
            self.counters.bytes_out(bytes.len());
        } else if let Some(b) = self
            .bridge_of(conn)
            .and_then(|id| self.bridges.get_mut(&id))
        {
            b.unwritten += bytes.len();
            b.recount();
        }
        self.outputs.push_back(Output::Transmit { conn, bytes });
    }

    /// What waited for the store and is durable now goes out.
    pub(super) fn release_held(&mut self) {
        for (conn, bytes) in self.store.release() {
            self.emit(conn, bytes);
        }
    }

    /// End of an input: records to the store, then one Transmit per connection written to.
    pub(super) fn flush_all(&mut self) {
        // The cached range points into a buffer that is about to be handed out.
        self.last_qos0 = None;
        self.flush_records();
        self.flush_dirty();
        self.release_held();
        // After a store failure, whatever this input left waiting for the store (a PUBCOMP
        // after a stored session's PUBREL, say) waits for nothing that will come.
        if self.store.failed() {
            self.cut_held_connections();
            self.flush_dirty();
        }
        self.flush_records();
    }

    /// One Transmit per connection written to. Closing a connection here (a peer that does
    /// not read) can write to others (its will): they are flushed too.
    fn flush_dirty(&mut self) {
        // Messages wait while a reader is slow, but acknowledgements cannot: a peer that
        // keeps sending without reading is cut off before its backlog grows without bound.
        let hard_limit = 2 * self.config.max_write_buffer as usize;
        // Each round closes at least one connection or ends: bounded by the connections.
        while !self.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.dirty);
            for id in &dirty {
                self.flush_conn(*id);
            }
            for id in &dirty {
                if self.conns.get(id).is_some_and(|c| c.unwritten > hard_limit) {
                    self.drop_conn(
                        *id,
                        CloseReason {
                            peer_gone: false,
                            code: reason::QUOTA_EXCEEDED,
                            notify: false,
                            will: true,
                            detail: "not reading: write backlog over twice max_write_buffer"
                                .to_owned(),
                        },
                    );
                }
            }
            // Keep the allocation for the next input.
            if self.dirty.is_empty() {
                self.dirty = dirty;
                self.dirty.clear();
            }
        }
    }

    pub(super) fn flush_records(&mut self) {
        if let Some(out) = self.store.flush() {
            if let Output::Persist { records, .. } = &out {
                self.counters.store_records += records.len() as u64;
            }
            self.outputs.push_back(out);
        }
    }

    /// After a store failure, output held for the store can never be sent: each connection
    /// that has some is cut (v5: DISCONNECT 0x97), so its client reconnects and retries
    /// instead of waiting forever, and nothing more is accepted behind acknowledgements that
    /// will never come.
    pub(super) fn cut_held_connections(&mut self) {
        for id in self.store.held_conns() {
            if self.conns.contains_key(&id) {
                self.drop_conn(
                    id,
                    CloseReason::error(
                        reason::QUOTA_EXCEEDED,
                        "the store failed: acknowledgements waiting for it cannot be sent",
                    ),
                );
            } else if let Some(bridge) = self.bridge_of(id) {
                self.bridge_link_down(bridge, "the store failed", true);
            } else {
                self.store.drop_held(id);
            }
        }
    }

    /// Closes a connection: optional v5 DISCONNECT, will, session bookkeeping, `$SYS`.
    pub(super) fn drop_conn(&mut self, id: ConnId, why: CloseReason) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let version = conn.version;
        let state = conn.state;
        if !why.peer_gone {
            self.flush_conn(id);
        }
        // Output still waiting for the store goes with the connection: what it acknowledges
        // is not durable, and the client sends it again after reconnecting.
        self.store.drop_held(id);
        if why.notify
            && !why.peer_gone
            && version == Some(ProtocolVersion::V5)
            && matches!(state, ConnState::Active(_))
        {
            // The reason vouches for nothing stored: it goes out at once, never behind the
            // store (a takeover's 0x8E must reach the old connection).
            let mut bytes = bytes::BytesMut::new();
            let packet = Packet::Disconnect(ReasonOnly {
                reason: why.code,
                properties: Properties::default(),
            });
            if codec::encode_packet(&packet, ProtocolVersion::V5, &mut bytes).is_ok() {
                self.emit(id, bytes.freeze());
            }
        }
        self.authenticating.remove(&id);
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        self.timers
            .arm(Timer::Conn(id), &mut conn.timer_armed, None);
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
        self.session_lost_conn(sid, id, &conn, why);
    }

    /// The session side of a closed connection: it is told, the will is kept or discarded,
    /// and `$SYS` hears of it.
    fn session_lost_conn(&mut self, sid: SessionId, id: ConnId, conn: &Conn, why: CloseReason) {
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
}
