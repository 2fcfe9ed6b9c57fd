//! The broker's side of the HTTP API v4: every request is one input, routed
//! (`admin/v4.rs`) and answered from the broker's state at that point in the input order.
//! Replies that vouch for something stored wait for the store, as MQTT acknowledgements do.
//! Messages and subscriptions on a client's behalf are in `admin_v4_mqtt.rs`, bridges in
//! `admin_v4_bridge.rs`, metrics in `metrics.rs`.

use base64::Engine;
use serde_json::{Map, Value, json};

use super::Broker;
use crate::admin::v4::{self, Op, Routed, V4Reply};
use crate::admin::v4_query::{ClientFilter, ClientView, RetainedQuery, SubscriptionFilter};
use crate::admin::{self, ControlAction, Credentials, PendingConfig, V4Write, code};
use crate::api::{BrokerEvent, Output};
use crate::cluster::nodes::ListKind;
use crate::codec::reason;
use crate::conn::CloseReason;
use crate::session::Session;

impl Broker {
    pub(super) fn handle_admin_v4(
        &mut self,
        req_id: u64,
        credentials: &Credentials,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) {
        // Credentials first, before routing and before the body is looked at.
        let reply = match admin::authorize_head(&self.config, credentials) {
            Err(refused) => Some(V4Reply::from_v1(&refused)),
            Ok(()) => match v4::route(method, path) {
                Err(reply) => Some(reply),
                Ok(routed) => match self.v4_dispatch(req_id, &routed, query, body) {
                    Ok(reply) => reply,
                    Err(reply) => Some(reply),
                },
            },
        };
        let Some(reply) = reply else {
            return;
        };
        match self.store.pending_barrier() {
            Some(barrier) => self.v4.held.push((barrier, req_id, reply)),
            None => self.v4_reply(req_id, reply),
        }
    }

    pub(super) fn v4_reply(&mut self, req_id: u64, reply: V4Reply) {
        self.counters.admin_reply(reply.status);
        self.outputs.push_back(Output::AdminReply {
            req_id,
            status: reply.status,
            body: reply.body,
            content_type: reply.content_type,
            challenge: reply.challenge,
        });
    }

    /// The store made more durable: replies waiting for it go out, in order.
    pub(super) fn release_v4_replies(&mut self) {
        if self.v4.held.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.v4.held);
        let mut waiting = Vec::new();
        for (seq, req_id, reply) in held {
            if waiting.is_empty() && self.store.is_durable(seq) {
                self.v4_reply(req_id, reply);
            } else {
                waiting.push((seq, req_id, reply));
            }
        }
        self.v4.held = waiting;
    }

    /// The store failed: what waited for it is answered 102 (nothing was vouched for).
    pub(super) fn fail_v4_replies(&mut self) {
        for (_, req_id, _) in std::mem::take(&mut self.v4.held) {
            self.v4_reply(req_id, V4Reply::code(200, code::UNKNOWN));
        }
    }

    /// `Ok(None)`: answered later (a configuration write, a restart).
    fn v4_dispatch(
        &mut self,
        req_id: u64,
        routed: &Routed,
        query: &str,
        body: &[u8],
    ) -> Result<Option<V4Reply>, V4Reply> {
        let param = routed.param();
        Ok(Some(match routed.op {
            Op::ListEndpoints => V4Reply::data(v4::endpoints()),
            Op::ListBrokers => V4Reply::data(json!([{
                "datetime": datetime(self.wall_now()),
                "node_status": "Running",
                "sysdescr": "NanoMQ Broker",
                "uptime": self.uptime(),
                "version": env!("CARGO_PKG_VERSION"),
            }])),
            Op::ListNodes => V4Reply::data(self.cluster_nodes().unwrap_or_else(|| {
                json!([{
                    "connections": self.connected_clients(),
                    "node_status": "Running",
                    "uptime": self.uptime(),
                    "version": env!("CARGO_PKG_VERSION"),
                }])
            })),
            Op::GetMetrics => V4Reply::json(200, &self.metrics_json()),
            Op::GetPrometheus => V4Reply::text(self.prometheus_text()),
            Op::ListClients if self.cluster.is_some() => {
                return self.cluster_list(req_id, ListKind::Clients, query);
            }
            Op::GetClient if self.cluster.is_some() => {
                return self.cluster_list(req_id, ListKind::Client, param);
            }
            Op::ListClientsByUsername if self.cluster.is_some() => {
                return self.cluster_list(req_id, ListKind::Username, param);
            }
            Op::ListSubscriptions if self.cluster.is_some() => {
                return self.cluster_list(req_id, ListKind::Subscriptions, query);
            }
            Op::ListClientSubscriptions if self.cluster.is_some() => {
                return self.cluster_list(req_id, ListKind::ClientSubscriptions, param);
            }
            Op::ListClients => self.v4_clients(&ClientFilter::parse(query)?),
            Op::GetClient => self.v4_clients(&ClientFilter {
                client_id: Some(param.to_owned()),
                ..ClientFilter::default()
            }),
            Op::ListClientsByUsername => self.v4_clients(&ClientFilter {
                username: Some(param.to_owned()),
                ..ClientFilter::default()
            }),
            Op::KickClient => {
                let keep = admin::v4_query::keep_session(query)?;
                match self.v4_kick(param, keep) {
                    Some(reply) => reply,
                    None => return Ok(self.cluster_kick_elsewhere(req_id, param, keep)),
                }
            }
            Op::ListSubscriptions => self.v4_subscriptions(&SubscriptionFilter::parse(query)?),
            Op::ListClientSubscriptions => self.v4_subscriptions(&SubscriptionFilter {
                client_id: Some(param.to_owned()),
                ..SubscriptionFilter::default()
            }),
            Op::GetTopicTree => V4Reply::data(self.v4_topic_tree()),
            Op::ListRetained => {
                let q = RetainedQuery::parse(query, self.config.max_topic_levels as usize)?;
                self.v4_retained(&q)
            }
            Op::GetReloadConfig => V4Reply::data(admin::reload_values(&self.config)),
            Op::PostReload => {
                let o = admin::v4_body::object(body)?;
                match o.get("data") {
                    None => {
                        self.v4_control(req_id, ControlAction::Restart);
                        return Ok(None);
                    }
                    Some(data) => return self.v4_write(req_id, V4Write::Reload, data.clone()),
                }
            }
            Op::GetConfiguration => {
                let bridges = self.v4_bridge_nodes(None);
                V4Reply::data(admin::configuration(&self.config, &bridges))
            }
            Op::GetConfigurationSection => {
                let bridges = self.v4_bridge_nodes(None);
                match admin::section(&self.config, param, &bridges) {
                    Some(s) => {
                        let mut m = Map::new();
                        m.insert(param.to_owned(), s);
                        V4Reply::data(Value::Object(m))
                    }
                    None => V4Reply::code(404, code::RPC_ERROR),
                }
            }
            Op::SetConfiguration => {
                let o = admin::v4_body::object(body)?;
                let data = o.get("data").cloned().ok_or_else(v4::bad_params)?;
                return self.v4_write(req_id, V4Write::Configuration, data);
            }
            Op::CtrlBroker => match param {
                "stop" => {
                    self.outputs.push_back(Output::Control {
                        req_id,
                        action: ControlAction::Stop,
                    });
                    V4Reply::ok()
                }
                "restart" => {
                    self.v4_control(req_id, ControlAction::Restart);
                    return Ok(None);
                }
                _ => V4Reply::code(404, code::RPC_ERROR),
            },
            Op::MqttPublish => self.v4_publish(body)?,
            Op::MqttPublishBatch => self.v4_publish_batch(body)?,
            Op::MqttSubscribe => self.v4_subscribe(body, true)?,
            Op::MqttUnsubscribe => self.v4_subscribe(body, false)?,
            Op::MqttSubscribeBatch => self.v4_subscribe_batch(body, true)?,
            Op::MqttUnsubscribeBatch => self.v4_subscribe_batch(body, false)?,
            Op::ListBridges => V4Reply::data(json!({
                "bridge": { "nodes": self.v4_bridge_nodes(None) }
            })),
            Op::GetBridge => V4Reply::data(json!({
                "bridge": { "nodes": self.v4_bridge_nodes(Some(param)) }
            })),
            Op::UpdateBridge => return self.v4_update_bridge(req_id, param, body),
            Op::SwitchBridge => self.v4_switch_bridge(param, body)?,
            Op::BridgeSubscribe => self.v4_bridge_subscribe(param, body)?,
            Op::BridgeUnsubscribe => self.v4_bridge_unsubscribe(param, body)?,
        }))
    }

    fn uptime(&self) -> String {
        uptime_text(self.now.since(self.started) / 1000)
    }

    /// Every session, in client id order.
    pub(super) fn sessions_in_order(&self) -> impl Iterator<Item = &Session> {
        self.by_client_id
            .values()
            .filter_map(|sid| self.sessions.get(sid).map(|s| &**s))
    }

    /// The sessions `filter` matches, in client id order.
    pub(super) fn matching_clients<'a>(
        &'a self,
        filter: &'a ClientFilter,
    ) -> impl Iterator<Item = &'a Session> + 'a {
        self.sessions_in_order().filter(|s| {
            filter.matches(&ClientView {
                client_id: &s.client_id,
                username: s.username.as_deref().unwrap_or(""),
                connected: s.conn.is_some(),
                clean_start: s.clean_start,
                proto_name: s.version.name(),
                proto_ver: s.version.level(),
            })
        })
    }

    fn v4_clients(&self, filter: &ClientFilter) -> V4Reply {
        let items: Vec<Value> = self.matching_clients(filter).map(client_item).collect();
        paged(items, filter.paging, false)
    }

    /// The subscriptions `filter` matches, by client id, each client's in filter order.
    pub(super) fn subscription_items<'a>(
        &'a self,
        filter: &'a SubscriptionFilter,
    ) -> impl Iterator<Item = Value> + 'a {
        self.sessions_in_order().flat_map(move |s| {
            s.subscriptions.iter().filter_map(move |(raw, sub)| {
                let qos = sub.options.qos as u8;
                filter
                    .matches(&s.client_id, raw, qos)
                    .then(|| json!({ "clientid": s.client_id, "topic": raw, "qos": qos }))
            })
        })
    }

    fn v4_subscriptions(&self, filter: &SubscriptionFilter) -> V4Reply {
        paged(
            self.subscription_items(filter).collect(),
            filter.paging,
            true,
        )
    }

    /// The subscription tree level by level, NanoMQ's v4 keys (`clientid`, always present).
    fn v4_topic_tree(&self) -> Value {
        self.topic_tree_with(
            |level, children, ids| json!({ "topic": level, "cld_cnt": children, "clientid": ids }),
        )
    }

    fn v4_retained(&self, q: &RetainedQuery) -> V4Reply {
        let mut found: Vec<(String, Value)> = self
            .retained
            .matching(&q.filter)
            .into_iter()
            .filter(|(_, m)| !m.expired(self.now))
            .map(|(topic, m)| {
                let item = json!({
                    "topic": topic,
                    "qos": m.qos as u8,
                    "payload": base64::engine::general_purpose::STANDARD.encode(&m.payload),
                    "payload_size": m.payload.len(),
                });
                (topic, item)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        paged(found.into_iter().map(|(_, v)| v).collect(), q.paging, false)
    }

    /// `DELETE /clients/{id}`: the connection is closed as an administrative action (v5:
    /// DISCONNECT 0x98; the will is published, `$SYS` hears of it), and the session is
    /// discarded unless `keep_session`. `None` when no session here has the id (in a cluster
    /// another node may hold it).
    fn v4_kick(&mut self, client_id: &str, keep_session: bool) -> Option<V4Reply> {
        let &sid = self.by_client_id.get(client_id)?;
        if let Some(conn) = self.sessions.get(&sid).and_then(|s| s.conn) {
            self.drop_conn(
                conn,
                CloseReason::error(
                    reason::ADMINISTRATIVE_ACTION,
                    "kicked through the admin API",
                ),
            );
        }
        if !keep_session && self.sessions.contains_key(&sid) {
            self.end_session(sid);
        }
        Some(V4Reply::ok())
    }

    /// A restart (re-read the configuration files and apply them, as SIGHUP does), answered
    /// when the runtime reports the outcome.
    fn v4_control(&mut self, req_id: u64, action: ControlAction) {
        self.v4.control.insert(req_id);
        self.outputs.push_back(Output::Control { req_id, action });
    }

    /// [`crate::Input::ControlDone`] for a v4 request; false when it is not one.
    pub(super) fn v4_control_done(&mut self, req_id: u64, result: &Result<(), String>) -> bool {
        if !self.v4.control.remove(&req_id) {
            return false;
        }
        let reply = match result {
            Ok(()) => V4Reply::ok(),
            Err(_) => V4Reply::code(500, code::UNKNOWN),
        };
        self.v4_reply(req_id, reply);
        true
    }

    /// A change to save before it takes effect, through V1 req 12's check-and-write path.
    pub(super) fn v4_write(
        &mut self,
        req_id: u64,
        write: V4Write,
        data: Value,
    ) -> Result<Option<V4Reply>, V4Reply> {
        // Stack on changes still being written, so none is lost.
        let base = self
            .pending_config
            .values()
            .next_back()
            .map_or(&self.config, |p| &p.update.config);
        let update = match write.check(base, &data) {
            Ok(update) => update,
            Err(_) if matches!(write, V4Write::Bridge(_)) => return Err(V4Reply::code(403, 108)),
            Err(_) => return Err(v4::bad_params()),
        };
        self.outputs.push_back(Output::WriteConfig {
            req_id,
            changes: update.changes.clone(),
        });
        self.pending_config.insert(
            req_id,
            PendingConfig {
                seq: Value::Null,
                update,
                data,
                v4: Some(write),
            },
        );
        Ok(None)
    }

    /// The runtime wrote (or failed to write) a v4 change: apply it and answer.
    pub(super) fn v4_config_written(
        &mut self,
        req_id: u64,
        write: V4Write,
        data: &Value,
        result: Result<(), String>,
    ) {
        if result.is_err() {
            return self.v4_reply(req_id, V4Reply::code(500, code::CONFIG_WRITE_FAILED));
        }
        // Checked again on the configuration in force now (see `config_written`).
        let update = match write.check(&self.config, data) {
            Ok(update) => update,
            Err(_) => return self.v4_reply(req_id, v4::bad_params()),
        };
        match write {
            V4Write::Configuration => {
                self.config = update.config;
                self.event(BrokerEvent::ConfigApplied);
                let reply =
                    json!({ "code": 0, "data": { "restart_required": update.restart_required } });
                self.v4_reply(req_id, V4Reply::json(200, &reply));
            }
            // Saved: now through the same path as SIGHUP, which reads it back.
            V4Write::Reload => self.v4_control(req_id, ControlAction::Restart),
            V4Write::Bridge(_) => {
                self.config = update.config;
                self.configure_bridges();
                self.event(BrokerEvent::ConfigApplied);
                self.v4_reply(req_id, V4Reply::ok());
            }
        }
    }
}

/// One session in NanoMQ's v4 item shape.
pub(super) fn client_item(s: &Session) -> Value {
    let mut m = Map::new();
    m.insert("client_id".into(), json!(s.client_id));
    m.insert(
        "username".into(),
        json!(s.username.as_deref().unwrap_or("")),
    );
    m.insert("keepalive".into(), json!(s.keep_alive));
    let state = if s.conn.is_some() {
        "connected"
    } else {
        "disconnected"
    };
    m.insert("conn_state".into(), json!(state));
    m.insert("clean_start".into(), json!(s.clean_start));
    m.insert("proto_name".into(), json!(s.version.name()));
    m.insert("proto_ver".into(), json!(s.version.level()));
    if let Some(will) = &s.will {
        m.insert("will_topic".into(), json!(will.topic));
        m.insert(
            "will_msg".into(),
            json!(String::from_utf8_lossy(&will.payload)),
        );
    }
    Value::Object(m)
}

/// `{"code":0,"data":[…]}` (or `data` first, as NanoMQ's subscriptions), with `meta` when
/// paging was asked for.
fn paged(items: Vec<Value>, paging: Option<admin::v4_query::Paging>, data_first: bool) -> V4Reply {
    let (items, meta) = match paging {
        Some(p) => {
            let (page, meta) = p.apply(items);
            (page, Some(meta))
        }
        None => (items, None),
    };
    let mut m = Map::new();
    if data_first {
        m.insert("data".into(), Value::Array(items));
        m.insert("code".into(), json!(0));
    } else {
        m.insert("code".into(), json!(0));
        m.insert("data".into(), Value::Array(items));
    }
    if let Some(meta) = meta {
        m.insert("meta".into(), meta);
    }
    V4Reply::json(200, &Value::Object(m))
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for a Unix time in milliseconds.
pub(crate) fn datetime(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (proleptic Gregorian), after Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// NanoMQ's uptime text.
pub(super) fn uptime_text(secs: u64) -> String {
    format!(
        "{} Hours, {} minutes, {} seconds",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::datetime;

    #[test]
    fn datetime_is_utc_civil_time() {
        assert_eq!(datetime(0), "1970-01-01 00:00:00");
        assert_eq!(datetime(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(datetime(1_777_888_944_000), "2026-05-04 10:02:24");
    }
}
