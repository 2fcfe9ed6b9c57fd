//! The broker's side of the HTTP API V1: every answer is computed from the broker's state at
//! the point the request arrives in the input order.

use bytes::Bytes;
use serde_json::{Value, json};

use super::Broker;
use crate::admin::{self, ControlAction, Credentials, PendingConfig, Reply, Request};
use crate::api::{BrokerEvent, Output};

impl Broker {
    pub(super) fn handle_admin_authorize(&mut self, req_id: u64, credentials: &Credentials) {
        match admin::authorize_head(&self.config, credentials) {
            Ok(()) => self.outputs.push_back(Output::AdminAuthorized { req_id }),
            Err(reply) => self.admin_reply(req_id, reply),
        }
    }

    pub(super) fn handle_admin(&mut self, req_id: u64, credentials: &Credentials, body: &[u8]) {
        let reply = (|| {
            let envelope = admin::parse_envelope(body)?;
            admin::authenticate(&self.config, credentials, &envelope)?;
            let request = admin::parse_request(&envelope)?;
            let seq = &envelope.seq;
            Ok(match request {
                Request::BrokerInfo => admin::ok(seq, 2, Some(self.broker_info())),
                Request::TopicInfo => admin::ok(seq, 4, Some(self.topic_info())),
                Request::ClientInfo => admin::ok(seq, 5, Some(self.client_info())),
                Request::GetConfig => admin::ok(seq, 11, Some(admin::config_to_v1(&self.config))),
                Request::TopicTree => admin::ok(seq, 13, Some(self.topic_tree())),
                Request::Control(action) => {
                    self.outputs.push_back(Output::Control { req_id, action });
                    if action == ControlAction::Restart {
                        // Answered once the runtime says what took effect.
                        self.pending_restart.insert(req_id, seq.clone());
                        return Err(None);
                    }
                    admin::ok(seq, 10, None)
                }
                Request::SetConfig(data) => {
                    // Stack on changes still being written, so none is lost.
                    let base = self
                        .pending_config
                        .values()
                        .next_back()
                        .map_or(&self.config, |p| &p.update.config);
                    match admin::check_set_config(base, &data) {
                        Ok(update) => {
                            self.outputs.push_back(Output::WriteConfig {
                                req_id,
                                changes: update.changes.clone(),
                            });
                            self.pending_config.insert(
                                req_id,
                                PendingConfig {
                                    seq: seq.clone(),
                                    update,
                                    data,
                                    v4: None,
                                },
                            );
                            return Err(None);
                        }
                        Err(message) => admin::bad_parameter(&envelope, &message),
                    }
                }
            })
        })();
        match reply {
            Ok(reply) | Err(Some(reply)) => self.admin_reply(req_id, reply),
            // Answered when the configuration is written.
            Err(None) => {}
        }
    }

    /// The runtime re-read and applied the configuration files for a req 10 restart.
    pub(super) fn control_done(&mut self, req_id: u64, result: Result<(), String>) {
        if self.v4_control_done(req_id, &result) {
            return;
        }
        let Some(seq) = self.pending_restart.remove(&req_id) else {
            return;
        };
        let reply = match result {
            Ok(()) => admin::ok(&seq, 10, None),
            Err(why) => admin::restart_incomplete(&seq, &why),
        };
        self.admin_reply(req_id, reply);
    }

    fn admin_reply(&mut self, req_id: u64, reply: Reply) {
        let body = serde_json::to_vec(&reply.body).unwrap_or_default();
        self.counters.admin_reply(reply.status);
        self.outputs.push_back(Output::AdminReply {
            req_id,
            status: reply.status,
            body: Bytes::from(body),
            content_type: admin::v4::JSON,
            challenge: reply.challenge,
        });
    }

    /// The runtime wrote (or failed to write) a set-configuration: apply it and answer.
    pub(super) fn config_written(&mut self, req_id: u64, result: Result<(), String>) {
        let Some(pending) = self.pending_config.remove(&req_id) else {
            return;
        };
        if let Some(write) = pending.v4 {
            return self.v4_config_written(req_id, write, &pending.data, result);
        }
        let reply = match result {
            // Apply this request's changes to the configuration in force now: a reload or
            // another set-configuration that took effect meanwhile must not be reverted, and
            // the changes of a write that failed must not ride along.
            Ok(()) => match admin::check_set_config(&self.config, &pending.data) {
                Ok(update) => {
                    self.config = update.config;
                    self.event(BrokerEvent::ConfigApplied);
                    admin::ok(
                        &pending.seq,
                        12,
                        Some(json!({ "restart_required": update.restart_required })),
                    )
                }
                Err(message) => admin::bad_parameter(
                    &admin::Envelope {
                        seq: pending.seq,
                        req: Some(12),
                        object: serde_json::Map::new(),
                    },
                    &message,
                ),
            },
            Err(message) => admin::write_failed(&pending.seq, &message),
        };
        self.admin_reply(req_id, reply);
    }

    /// req 2. `client_size` counts connected clients (NanoMQ counts clients with a
    /// subscription); `message_drop` counts undeliverable messages, including those that
    /// matched no subscription (all NanoMQ counts).
    fn broker_info(&self) -> Value {
        let connected = self.connected_clients();
        json!({
            "client_size": connected,
            "message_in": self.stats.messages_received,
            "message_out": self.stats.messages_sent,
            "message_drop": self.stats.messages_dropped + self.stats.messages_unrouted,
        })
    }

    /// req 4: every session with subscriptions, offline persistent ones included.
    fn topic_info(&self) -> Value {
        let mut sessions: Vec<_> = self
            .sessions
            .values()
            .filter(|s| !s.subscriptions.is_empty())
            .collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Value::Array(
            sessions
                .into_iter()
                .map(|s| {
                    json!({
                        "client_id": s.client_id,
                        "subscriptions": s.subscriptions.iter().map(|(topic, sub)| json!({
                            "topic": topic,
                            "qos": sub.options.qos as u8,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    /// req 5: every session; `connect_status` 1 when connected, 0 for a persistent session
    /// waiting offline; `message_receive` counts messages delivered to the client.
    fn client_info(&self) -> Value {
        let mut sessions: Vec<_> = self.sessions.values().collect();
        sessions.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Value::Array(
            sessions
                .into_iter()
                .map(|s| {
                    json!({
                        "client_id": s.client_id,
                        "username": s.username.as_deref().unwrap_or(""),
                        "keepalive": s.keep_alive,
                        "protocol": s.version.level(),
                        "connect_status": u8::from(s.conn.is_some()),
                        "message_receive": s.messages_sent,
                    })
                })
                .collect(),
        )
    }

    /// req 13: the subscription tree level by level, as NanoMQ shows it.
    fn topic_tree(&self) -> Value {
        self.topic_tree_with(|level, children, ids| {
            let mut o = serde_json::Map::new();
            o.insert("topic".into(), json!(level));
            o.insert("cld_cnt".into(), json!(children));
            if !ids.is_empty() {
                o.insert("client_id".into(), json!(ids));
            }
            Value::Object(o)
        })
    }

    /// The subscription tree level by level, each node shaped by `node` from its level, its
    /// number of children and its subscribers' client ids (V1 and v4 name the keys apart).
    pub(super) fn topic_tree_with(
        &self,
        node: impl Fn(&str, usize, Vec<String>) -> Value,
    ) -> Value {
        let client_id = |sid: &u64| {
            self.sessions
                .get(sid)
                .map(|s| s.client_id.clone())
                .unwrap_or_default()
        };
        Value::Array(
            self.subscriptions
                .levels()
                .into_iter()
                .map(|level| {
                    Value::Array(
                        level
                            .into_iter()
                            .map(|n| {
                                let ids = n.subscribers.into_iter().map(client_id).collect();
                                node(n.level, n.children, ids)
                            })
                            .collect(),
                    )
                })
                .collect(),
        )
    }
}
