//! CONNECT to CONNACK, and DISCONNECT: checks and authentication, client-id assignment,
//! takeover of a connection holding the same client id, opening or resuming the session.

use super::Broker;
use super::auth::Verdict;
use crate::acl::{Action, Decision};
use crate::api::{BrokerEvent, ConnId};
use crate::codec::{
    ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode, ReasonOnly, reason,
};
use crate::conn::{CloseReason, ConnState, decode_limits};
use crate::ids::SessionId;
use crate::session::{NEVER_EXPIRES, Session};
use crate::sys;
use crate::timer::Timer;
use crate::topic;

impl Broker {
    pub(super) fn handle_connect(&mut self, id: ConnId, mut connect: Connect) {
        let version = connect.version;
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
        if let Err((code, detail)) = self.check_connect(&connect) {
            return self.refuse_connect(id, &connect, code, detail);
        }
        if self.cluster.as_deref().is_some_and(|c| c.cut_off) {
            let detail = "the node is cut off from the cluster";
            return self.refuse_connect(id, &connect, reason::USE_ANOTHER_SERVER, detail);
        }
        match self.credentials_verdict(&connect, by_certificate) {
            Verdict::Accept => self.complete_connect(id, connect),
            Verdict::Refuse(code) => {
                self.refuse_connect(id, &connect, code, "authentication failed")
            }
            Verdict::Ask => self.ask_credentials(id, connect),
        }
    }

    /// The CONNECT accepted: session, takeover, CONNACK.
    pub(super) fn complete_connect(&mut self, id: ConnId, connect: Connect) {
        let version = connect.version;
        let v5 = version.is_v5();
        let assigned = connect.client_id.is_empty();
        let client_id = if assigned {
            self.assign_client_id()
        } else {
            connect.client_id.clone()
        };
        // Two nodes must be able to tell each other whose the client id is.
        if !assigned && !self.cluster_names(&client_id) {
            return self.refuse_connect(
                id,
                &connect,
                reason::CLIENT_ID_NOT_VALID,
                "client id too long for cluster.max_subject_len",
            );
        }
        let requested_expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            NEVER_EXPIRES
        };
        let expiry_secs = self.expiry_cap(requested_expiry, connect.username.is_some());
        // After a store failure nothing that creates, changes or ends a stored session can
        // be promised: refuse it (a CONNACK all the same, never silence).
        let stored = self
            .by_client_id
            .get(&client_id)
            .and_then(|sid| self.sessions.get(sid))
            .is_some_and(|s| s.durable);
        if (expiry_secs > 0 || stored) && self.store.refuses() {
            return self.refuse_connect(
                id,
                &connect,
                reason::QUOTA_EXCEEDED,
                "the store failed: persistent sessions are refused",
            );
        }
        // At the disk cap a new stored session is refused; a stored one resumes (its client
        // drains its queue, which frees space).
        if expiry_secs > 0 && !stored && self.store.full() {
            return self.refuse_connect(
                id,
                &connect,
                reason::QUOTA_EXCEEDED,
                "the store is at persistence.max_disk: new persistent sessions are refused",
            );
        }

        if let Some(will) = &connect.will
            && self.acl_decide(
                id,
                &client_id,
                connect.username.as_deref(),
                Action::Publish,
                &will.topic,
            ) == Decision::Deny
        {
            return self.refuse_connect(
                id,
                &connect,
                reason::NOT_AUTHORIZED,
                "will topic denied by the ACL",
            );
        }

        // A new session past the memory budget: offline sessions make room, or it is refused.
        let resumes = !connect.clean_start && self.by_client_id.contains_key(&client_id);
        if !resumes && !self.shed_offline_sessions() {
            return self.refuse_connect(
                id,
                &connect,
                reason::QUOTA_EXCEEDED,
                "memory budget: no room for a new session",
            );
        }

        // In a cluster a persistent session waits for its claim, which may bring its record.
        if !assigned && self.cluster_claims_first(id, &connect, expiry_secs) {
            return self.cluster_claim_first(id, connect);
        }

        self.take_over(&client_id);
        let (sid, session_present) = self.open_session(&client_id, version, connect.clean_start);

        let keep_alive = self.keep_alive_for(connect.keep_alive, v5);
        let limits = decode_limits(&self.config);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.state = ConnState::Active(sid);
        conn.idle_limit_ms = keep_alive.idle_limit_ms;
        conn.limits = limits;
        conn.receive_maximum = self.config.receive_maximum;
        conn.topic_alias_max = self.config.max_topic_alias;
        conn.client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        conn.client_max_packet_size = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
        conn.out_aliases = crate::alias::OutAliases::new(if v5 {
            self.config
                .max_topic_alias_out
                .min(connect.properties.topic_alias_maximum.unwrap_or(0))
        } else {
            0
        });
        conn.connect_expiry_secs = requested_expiry;
        conn.username = connect.username.clone();
        conn.keep_alive = keep_alive.secs;
        conn.clean_start = connect.clean_start;
        let peer = conn.peer.clone();
        self.arm_conn_timer(id);

        let wall = self.wall();
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        self.timers
            .arm(Timer::Session(sid), &mut session.timer_armed, None);
        self.offline_by_end.remove(sid, session);
        session.conn = Some(id);
        session.version = version;
        session.username = connect.username.clone();
        session.keep_alive = keep_alive.secs;
        session.clean_start = connect.clean_start;
        session.expiry_secs = expiry_secs;
        session.expires_at = None;
        session.will = connect.will.clone().map(Box::new);
        self.store.connected(session, wall);

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
            properties.server_keep_alive = keep_alive.server_keep_alive;
            // Said explicitly, though 1 is what their absence means: clients that read only
            // what is present see what the broker supports. Maximum QoS is 2, so it is absent.
            properties.retain_available = Some(1);
            properties.wildcard_subscription_available = Some(1);
            properties.subscription_identifier_available = Some(1);
            properties.shared_subscription_available = Some(1);
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
        self.publish_sys_connected(&client_id, &connect, keep_alive.secs, &peer);
        if session_present {
            // Now that the client is known again (user name, address).
            self.revoke_for(sid);
        }
        self.resume(sid);
        // An assigned id is this node's own: nobody else can hold it.
        if !assigned {
            // A session that holds its claim already writes its record again (connected).
            self.cluster_session_changed(sid);
            self.cluster_claim(sid);
        }
    }

    /// What a CONNECT may not ask for, checked in the order the spec lists it.
    fn check_connect(&self, connect: &Connect) -> Result<(), (ReasonCode, &'static str)> {
        let version = connect.version;
        let v5 = version.is_v5();
        if v5 && connect.properties.authentication_method.is_some() {
            return Err((
                reason::BAD_AUTH_METHOD,
                "enhanced authentication is not supported",
            ));
        }
        if connect.client_id.len() > self.config.max_client_id_len as usize {
            return Err((reason::CLIENT_ID_NOT_VALID, "client identifier too long"));
        }
        if connect.client_id.is_empty()
            && (version == ProtocolVersion::V31 || (!v5 && !connect.clean_start))
        {
            return Err((
                reason::CLIENT_ID_NOT_VALID,
                "empty client identifier needs a clean session",
            ));
        }
        if let Some(will) = &connect.will
            && topic::validate_topic_name(&will.topic, self.config.max_topic_levels as usize)
                .is_err()
        {
            return Err((reason::TOPIC_NAME_INVALID, "invalid will topic"));
        }
        if connect
            .will
            .as_ref()
            .is_some_and(|w| sys::is_reserved(&w.topic))
        {
            return Err((reason::NOT_AUTHORIZED, "will to a $SYS topic"));
        }
        // [MQTT-3.1.3-11] with [MQTT-3.3.2-14]: a will's Response Topic is a topic name.
        if connect.will.as_ref().is_some_and(|w| {
            w.properties
                .response_topic
                .as_deref()
                .is_some_and(|t| t.contains(['+', '#']))
        }) {
            return Err((
                reason::PROTOCOL_ERROR,
                "wildcard in the will's Response Topic",
            ));
        }
        Ok(())
    }

    pub(super) fn refuse_connect(
        &mut self,
        id: ConnId,
        connect: &Connect,
        code: ReasonCode,
        detail: &str,
    ) {
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
        self.drop_conn(id, CloseReason::silent(code, detail));
    }

    /// The session expiry granted: within `max_session_expiry`, and for a client without a
    /// user name within `anonymous_session_expiry` (strangers cannot park sessions forever).
    fn expiry_cap(&self, requested: u32, named: bool) -> u32 {
        let cap = if named {
            self.config.max_session_expiry
        } else {
            self.config
                .max_session_expiry
                .min(self.config.anonymous_session_expiry)
        };
        requested.min(cap)
    }

    fn assign_client_id(&mut self) -> String {
        loop {
            let id = format!("tidemq-{:016x}", self.rng.next_u64());
            if !self.by_client_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Takes over a connection that holds this client id (v5: DISCONNECT 0x8E).
    fn take_over(&mut self, client_id: &str) {
        if let Some(&old_sid) = self.by_client_id.get(client_id)
            && let Some(old_conn) = self.sessions.get(&old_sid).and_then(|s| s.conn)
        {
            self.drop_conn(
                old_conn,
                CloseReason::error(reason::SESSION_TAKEN_OVER, "session taken over"),
            );
        }
    }

    /// The session for a new connection: the existing one unless it asks for a clean start.
    /// Returns it and whether it was present.
    fn open_session(
        &mut self,
        client_id: &str,
        version: ProtocolVersion,
        clean_start: bool,
    ) -> (SessionId, bool) {
        let existing = self.by_client_id.get(client_id).copied();
        // A new connection cancels a will still in its delay, whether or not it keeps the
        // session [MQTT-3.1.3-9].
        if let Some(s) = existing.and_then(|sid| self.sessions.get_mut(&sid)) {
            s.will = None;
            s.will_at = None;
        }
        match existing {
            Some(sid) if !clean_start => (sid, true),
            _ => {
                if let Some(old) = existing {
                    self.end_session(old);
                }
                let sid = self.next_session_id;
                self.next_session_id += 1;
                self.sessions.insert(
                    sid,
                    Box::new(Session::new(
                        client_id.to_owned(),
                        version,
                        &self.memory.ledger,
                    )),
                );
                self.by_client_id.insert(client_id.to_owned(), sid);
                (sid, false)
            }
        }
    }

    /// A reconnected session: what was in flight is resent (within the new connection's
    /// window), then the queue drains.
    fn resume(&mut self, sid: SessionId) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.inflight.mark_all_unsent();
            session.qos2_in.new_connection();
        }
        self.pump(sid);
    }

    pub(super) fn handle_disconnect(&mut self, id: ConnId, sid: SessionId, d: ReasonOnly) {
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
            let capped = self.expiry_cap(expiry, conn.username.is_some());
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
}
