//! NanoMQ's HTTP API v4 (REST) as data: the route table, routing a method and a path to an
//! operation, and the replies (`{"code":N}` for every error). The broker answers each
//! operation from its state (`broker/admin_v4.rs`); query strings and bodies are read by
//! `v4_query.rs` and `v4_body.rs`.
//!
//! Paths are split on `/` before each segment is percent-decoded, so a client id with a `/`
//! is addressed as `%2F` (NanoMQ does not decode at all).

use bytes::Bytes;
use serde_json::{Value, json};

use super::common::{Reply, code};

/// Where the API lives.
pub const ROOT: &str = "/api/v4";

/// One operation of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    ListEndpoints,
    ListBrokers,
    ListNodes,
    GetMetrics,
    GetPrometheus,
    ListClients,
    GetClient,
    KickClient,
    ListClientsByUsername,
    ListSubscriptions,
    ListClientSubscriptions,
    GetTopicTree,
    ListRetained,
    GetReloadConfig,
    PostReload,
    GetConfiguration,
    SetConfiguration,
    GetConfigurationSection,
    CtrlBroker,
    MqttPublish,
    MqttPublishBatch,
    MqttSubscribe,
    MqttUnsubscribe,
    MqttSubscribeBatch,
    MqttUnsubscribeBatch,
    ListBridges,
    GetBridge,
    UpdateBridge,
    SwitchBridge,
    BridgeSubscribe,
    BridgeUnsubscribe,
}

/// One row of the route table.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    pub method: &'static str,
    /// The full path with `{name}` for a parameter, as the OpenAPI description writes it.
    pub path: &'static str,
    pub op: Op,
    /// The OpenAPI `operationId`.
    pub operation_id: &'static str,
    /// NanoMQ's endpoint name and description, for `GET /api/v4`.
    pub name: &'static str,
    pub descr: &'static str,
}

macro_rules! routes {
    ($(($m:literal, $p:literal, $op:ident, $id:literal, $name:literal, $descr:literal)),* $(,)?) => {
        &[$(RouteSpec { method: $m, path: $p, op: Op::$op, operation_id: $id, name: $name, descr: $descr }),*]
    };
}

/// Every route, in the order `GET /api/v4` lists them.
pub const ROUTES: &[RouteSpec] = routes![
    (
        "GET",
        "/api/v4",
        ListEndpoints,
        "listEndpoints",
        "list_endpoints",
        "List the endpoints of the API"
    ),
    (
        "GET",
        "/api/v4/brokers",
        ListBrokers,
        "listBrokers",
        "list_brokers",
        "A list of brokers in the cluster"
    ),
    (
        "GET",
        "/api/v4/nodes",
        ListNodes,
        "listNodes",
        "list_nodes",
        "A list of nodes in the cluster"
    ),
    (
        "GET",
        "/api/v4/metrics",
        GetMetrics,
        "getMetrics",
        "get_metrics",
        "Process and bridge metrics"
    ),
    (
        "GET",
        "/api/v4/prometheus",
        GetPrometheus,
        "getPrometheus",
        "get_prometheus",
        "Metrics in the Prometheus text format"
    ),
    (
        "GET",
        "/api/v4/clients",
        ListClients,
        "listClients",
        "list_clients",
        "A list of clients on the node"
    ),
    (
        "GET",
        "/api/v4/clients/{clientid}",
        GetClient,
        "getClient",
        "lookup_client",
        "Lookup a client in the cluster"
    ),
    (
        "DELETE",
        "/api/v4/clients/{clientid}",
        KickClient,
        "kickClient",
        "kick_client",
        "Kick a client"
    ),
    (
        "GET",
        "/api/v4/clients/username/{username}",
        ListClientsByUsername,
        "listClientsByUsername",
        "lookup_client_via_username",
        "Lookup clients by user name"
    ),
    (
        "GET",
        "/api/v4/subscriptions",
        ListSubscriptions,
        "listSubscriptions",
        "list_subscriptions",
        "A list of subscriptions"
    ),
    (
        "GET",
        "/api/v4/subscriptions/{clientid}",
        ListClientSubscriptions,
        "listClientSubscriptions",
        "lookup_client_subscriptions",
        "A list of subscriptions of a client"
    ),
    (
        "GET",
        "/api/v4/topic-tree",
        GetTopicTree,
        "getTopicTree",
        "list_topic-tree",
        "A list of topic-tree in the cluster"
    ),
    (
        "GET",
        "/api/v4/retained",
        ListRetained,
        "listRetained",
        "list_retained",
        "A list of retained messages"
    ),
    (
        "GET",
        "/api/v4/reload",
        GetReloadConfig,
        "getReloadConfig",
        "get_broker_configuration",
        "Hot-updatable settings"
    ),
    (
        "POST",
        "/api/v4/reload",
        PostReload,
        "postReload",
        "reload_broker_configuration",
        "Apply hot-updatable settings"
    ),
    (
        "GET",
        "/api/v4/configuration",
        GetConfiguration,
        "getConfiguration",
        "get_broker_configuration",
        "Show the configuration of the broker"
    ),
    (
        "POST",
        "/api/v4/configuration",
        SetConfiguration,
        "setConfiguration",
        "set_broker_configuration",
        "Change the configuration of the broker"
    ),
    (
        "GET",
        "/api/v4/configuration/{section}",
        GetConfigurationSection,
        "getConfigurationSection",
        "get_broker_configuration_section",
        "Show one section of the configuration"
    ),
    (
        "POST",
        "/api/v4/ctrl/{action}",
        CtrlBroker,
        "ctrlBroker",
        "ctrl_broker",
        "Stop or restart the broker"
    ),
    (
        "POST",
        "/api/v4/mqtt/publish",
        MqttPublish,
        "mqttPublish",
        "mqtt_publish",
        "Publish a MQTT message"
    ),
    (
        "POST",
        "/api/v4/mqtt/publish_batch",
        MqttPublishBatch,
        "mqttPublishBatch",
        "mqtt_publish_batch",
        "Publish MQTT messages in batch"
    ),
    (
        "POST",
        "/api/v4/mqtt/subscribe",
        MqttSubscribe,
        "mqttSubscribe",
        "mqtt_subscribe",
        "Subscribe a connected client"
    ),
    (
        "POST",
        "/api/v4/mqtt/unsubscribe",
        MqttUnsubscribe,
        "mqttUnsubscribe",
        "mqtt_unsubscribe",
        "Unsubscribe a connected client"
    ),
    (
        "POST",
        "/api/v4/mqtt/subscribe_batch",
        MqttSubscribeBatch,
        "mqttSubscribeBatch",
        "mqtt_subscribe_batch",
        "Subscribe in batch"
    ),
    (
        "POST",
        "/api/v4/mqtt/unsubscribe_batch",
        MqttUnsubscribeBatch,
        "mqttUnsubscribeBatch",
        "mqtt_unsubscribe_batch",
        "Unsubscribe in batch"
    ),
    (
        "GET",
        "/api/v4/bridges",
        ListBridges,
        "listBridges",
        "get_bridges",
        "Show the bridges"
    ),
    (
        "GET",
        "/api/v4/bridges/{name}",
        GetBridge,
        "getBridge",
        "get_bridge",
        "Show one bridge"
    ),
    (
        "PUT",
        "/api/v4/bridges/{name}",
        UpdateBridge,
        "updateBridge",
        "set_bridge",
        "Change one bridge and restart it"
    ),
    (
        "POST",
        "/api/v4/bridges/switch/{name}",
        SwitchBridge,
        "switchBridge",
        "switch_bridge",
        "Turn a bridge on or off"
    ),
    (
        "POST",
        "/api/v4/bridges/sub/{name}",
        BridgeSubscribe,
        "bridgeSubscribe",
        "bridge_subscribe",
        "Add remote subscriptions to a bridge"
    ),
    (
        "POST",
        "/api/v4/bridges/unsub/{name}",
        BridgeUnsubscribe,
        "bridgeUnsubscribe",
        "bridge_unsubscribe",
        "Remove remote subscriptions from a bridge"
    ),
];

/// What the broker keeps of v4 requests between inputs.
#[derive(Debug, Default)]
pub struct V4Pending {
    /// Replies waiting for the store: (sequence number, request, reply), in order.
    pub held: Vec<(u64, u64, V4Reply)>,
    /// Restarts and reloads waiting for the runtime's outcome, by request.
    pub control: std::collections::BTreeSet<u64>,
}

/// A request routed: its operation and its decoded path parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub op: Op,
    pub params: Vec<String>,
}

impl Routed {
    /// The first path parameter (every operation that has one has exactly one).
    pub fn param(&self) -> &str {
        self.params.first().map_or("", String::as_str)
    }
}

/// A v4 answer: status, body and its content type.
#[derive(Debug, Clone, PartialEq)]
pub struct V4Reply {
    pub status: u16,
    pub body: Bytes,
    pub content_type: &'static str,
    /// `WWW-Authenticate` for a 401.
    pub challenge: Option<&'static str>,
}

pub const JSON: &str = "application/json";
/// Prometheus text exposition format 0.0.4.
pub const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";

impl V4Reply {
    pub fn json(status: u16, body: &Value) -> V4Reply {
        V4Reply {
            status,
            body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
            content_type: JSON,
            challenge: None,
        }
    }

    /// An error, or a bare success: `{"code":N}` and nothing else.
    pub fn code(status: u16, code: u16) -> V4Reply {
        V4Reply::json(status, &json!({ "code": code }))
    }

    pub fn ok() -> V4Reply {
        V4Reply::code(200, code::OK)
    }

    /// 200 with `{"code":0,"data":…}`.
    pub fn data(data: Value) -> V4Reply {
        V4Reply::json(200, &json!({ "code": code::OK, "data": data }))
    }

    pub fn text(body: String) -> V4Reply {
        V4Reply {
            status: 200,
            body: Bytes::from(body),
            content_type: PROMETHEUS,
            challenge: None,
        }
    }

    /// A V1-shaped refusal (`{code, seq, message}`) in v4's shape: only the code.
    pub fn from_v1(reply: &Reply) -> V4Reply {
        let code = reply
            .body
            .get("code")
            .and_then(Value::as_u64)
            .unwrap_or(u64::from(code::UNKNOWN));
        V4Reply {
            challenge: reply.challenge,
            ..V4Reply::json(reply.status, &json!({ "code": code }))
        }
    }
}

/// Reshapes the JSON body of an admin refusal (the head check's 401, V1-shaped) into v4's
/// `{"code":N}`; bodies without a code become 102.
pub fn reshape_error(body: &[u8]) -> Bytes {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("code").and_then(Value::as_u64))
        .unwrap_or(u64::from(code::UNKNOWN));
    Bytes::from(json!({ "code": code }).to_string())
}

pub fn bad_params() -> V4Reply {
    V4Reply::code(400, code::BAD_PARAMETER)
}

pub fn not_json() -> V4Reply {
    V4Reply::code(400, code::NOT_JSON)
}

pub fn not_found() -> V4Reply {
    V4Reply::code(404, code::UNKNOWN)
}

/// Percent-decodes one path segment or query component; `plus` turns `+` into a space.
/// `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16))?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The pattern's segments below the root: `None` for a parameter.
fn pattern_segments(path: &'static str) -> impl Iterator<Item = Option<&'static str>> {
    path.strip_prefix(ROOT)
        .unwrap_or(path)
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| (!s.starts_with('{')).then_some(s))
}

/// Routes a request: 405 + 102 for a method other than GET, POST, PUT and DELETE; 404 + 102
/// for an unknown path, or a known one with another method; 400 + 108 for a segment that does
/// not decode.
pub fn route(method: &str, path: &str) -> Result<Routed, V4Reply> {
    if !matches!(method, "GET" | "POST" | "PUT" | "DELETE") {
        return Err(V4Reply::code(405, code::UNKNOWN));
    }
    let Some(rest) = path.strip_prefix(ROOT) else {
        return Err(not_found());
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(not_found());
    }
    // One trailing slash is ignored.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let raw: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.get(1..).unwrap_or("").split('/').collect()
    };
    for spec in ROUTES {
        let pattern: Vec<Option<&str>> = pattern_segments(spec.path).collect();
        if pattern.len() != raw.len() {
            continue;
        }
        // Literal segments must match as written (they are plain ASCII); parameters decode.
        let literal_match = pattern
            .iter()
            .zip(&raw)
            .all(|(p, r)| p.is_none_or(|lit| lit == *r));
        if !literal_match {
            continue;
        }
        // `/clients/username/x` is by user name, while `/clients/x` is a client id (even
        // `username`). A known path with another method is 404 too, as NanoMQ routes on both.
        if spec.method != method {
            continue;
        }
        let mut params = Vec::new();
        for (p, r) in pattern.iter().zip(&raw) {
            if p.is_none() {
                let decoded = percent_decode(r, false).ok_or_else(bad_params)?;
                params.push(decoded);
            }
        }
        return Ok(Routed {
            op: spec.op,
            params,
        });
    }
    Err(not_found())
}

/// `GET /api/v4`: the endpoints, NanoMQ's shape, `:name` for parameters.
pub fn endpoints() -> Value {
    Value::Array(
        ROUTES
            .iter()
            .map(|r| {
                let rel: Vec<String> = r
                    .path
                    .strip_prefix(ROOT)
                    .unwrap_or(r.path)
                    .split('/')
                    .map(
                        |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                            Some(name) => format!(":{name}"),
                            None => s.to_owned(),
                        },
                    )
                    .collect();
                let mut path = rel.join("/");
                if path.is_empty() {
                    path.push('/');
                }
                json!({ "path": path, "name": r.name, "method": r.method, "descr": r.descr })
            })
            .collect(),
    )
}
