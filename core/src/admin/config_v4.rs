//! The configuration in v4's shapes: `GET /configuration[/section]` (NanoMQ's sections,
//! secrets masked), `GET /reload` (the hot-updatable values), and the checks of
//! `POST /configuration`, `POST /reload` and `PUT /bridges/{name}`, which reuse V1 req 12's
//! check-and-write path (`config_v1::check_fields`).

use serde_json::{Map, Value, json};

use super::common::MASK;
use super::config_v1::{ConfigUpdate, Field, Kind, V1_FIELDS, check_fields, masked, tls};
use crate::config::{BridgeConfig, Config, HttpAuthType};

/// NanoMQ's sections of `GET /configuration/{section}`.
pub const SECTIONS: &[&str] = &[
    "basic",
    "tls",
    "auth",
    "auth_http",
    "websocket",
    "http_server",
    "sqlite",
    "bridge",
];

fn kib(bytes: u32) -> u32 {
    bytes / 1024
}

/// One bridge in NanoMQ's v4 shape; `enable` as given (the switch is the broker's).
pub fn bridge_node(name: &str, b: &BridgeConfig, enable: bool) -> Value {
    json!({
        "name": name,
        "enable": enable,
        "parallel": b.parallel,
        "connector": {
            "server": b.address,
            "proto_ver": b.proto_ver,
            "clientid": b.clientid,
            "clean_start": b.clean_start,
            "username": b.username,
            "password": masked(&b.password),
            "keepalive": b.keepalive,
        },
        "forwards": b.forwards.iter().map(|f| json!({
            "remote_topic": f.remote_topic,
            "local_topic": f.local_topic,
            "qos": f.qos,
        })).collect::<Vec<_>>(),
        "subscription": b.subscription.iter().map(|s| json!({
            "remote_topic": s.remote_topic,
            "local_topic": s.local_topic,
            "qos": s.qos,
        })).collect::<Vec<_>>(),
        "tls": {
            "enable": b.ssl.enable,
            "key": b.ssl.keyfile,
            "cert": b.ssl.certfile,
            "cacert": b.ssl.cacertfile,
        },
        "max_send_queue_len": b.max_send_queue_len,
        "backoff_max": b.backoff_max,
    })
}

/// One section, or `None` for an unknown one.
pub fn section(c: &Config, name: &str, bridges: &[Value]) -> Option<Value> {
    Some(match name {
        "basic" => json!({
            "url": c.url,
            "num_taskq_thread": c.num_taskq_thread,
            "max_taskq_thread": c.max_taskq_thread,
            "parallel": c.parallel,
            "property_size": c.property_size,
            "daemon": c.daemon,
            "max_packet_size": kib(c.max_packet_size),
            "client_max_packet_size": kib(c.max_packet_size),
            "msq_len": c.msq_len,
            "qos_duration": c.qos_duration,
            "keepalive_backoff": c.keepalive_multiplier,
            "allow_anonymous": c.allow_anonymous,
            "ipc_internal": false,
        }),
        "tls" => tls(c),
        "auth" => Value::Array(
            c.users
                .keys()
                .map(|u| json!({ "login": u, "password": MASK }))
                .collect(),
        ),
        "auth_http" => {
            let h = &c.auth.http_auth;
            // Header values are masked: they often carry the service's key.
            let req = |r: &Option<crate::config::HttpAuthRequest>| {
                r.as_ref().map_or(Value::Null, |r| {
                    json!({
                        "url": r.url,
                        "method": if r.method.is_empty() { "POST" } else { r.method.as_str() },
                        "headers": r.headers.keys().map(|k| json!({ k.as_str(): MASK })).collect::<Vec<_>>(),
                        "params": r.params.iter().map(|(k, v)| json!({ k.as_str(): v })).collect::<Vec<_>>(),
                    })
                })
            };
            json!({
                "enable": h.enable,
                "timeout": h.timeout_ms / 1000,
                "connect_timeout": h.connect_timeout_ms / 1000,
                "pool_size": h.pool_size,
                "auth_req": req(&h.auth_req),
                "super_req": req(&h.super_req),
                "acl_req": req(&h.acl_req),
            })
        }
        "websocket" => json!({
            "enable": c.websocket.enable,
            "tls_enable": c.websocket.enable && c.tls.enable,
            "url": c.websocket.url,
            "tls_url": c.websocket.tls_url,
        }),
        "http_server" => json!({
            "enable": c.http_server.enable,
            "port": c.http_server.port,
            "addr": c.http_server.ip_addr,
            "username": c.http_server.username,
            "password": MASK,
            "auth_type": match c.http_server.auth_type {
                HttpAuthType::Basic => "basic",
                HttpAuthType::Jwt => "jwt",
                HttpAuthType::NoAuth => "no_auth",
            },
        }),
        "sqlite" => json!({
            "enable": c.persistence.enable,
            "mounted_file_path": c.persistence.data_dir,
        }),
        "bridge" => json!({ "nodes": bridges }),
        _ => return None,
    })
}

/// `GET /configuration`: every section.
pub fn configuration(c: &Config, bridges: &[Value]) -> Value {
    let mut m = Map::new();
    for name in SECTIONS {
        if let Some(v) = section(c, name, bridges) {
            m.insert((*name).to_owned(), v);
        }
    }
    Value::Object(m)
}

/// `GET /reload`: NanoMQ's hot-updatable values (sizes in KiB).
pub fn reload_values(c: &Config) -> Value {
    json!({
        "property_size": c.property_size,
        "max_packet_size": kib(c.max_packet_size),
        "client_max_packet_size": kib(c.max_packet_size),
        "msq_len": c.msq_len,
        "qos_duration": c.qos_duration,
        "keepalive_backoff": c.keepalive_multiplier,
        "allow_anonymous": c.allow_anonymous,
        "enable_mqtt_stream": false,
        "bridge_mode": c.bridges.values().any(|b| b.enable),
    })
}

/// The `basic` fields v4 adds to V1's top-level ones.
const V4_BASIC: &[Field] = &[
    ("max_packet_size", Kind::Kib, "mqtt.max_packet_size"),
    ("keepalive_backoff", Kind::Float, "keepalive_multiplier"),
];

/// Which write a pending v4 change is.
#[derive(Debug, Clone, PartialEq)]
pub enum V4Write {
    /// `POST /configuration`: `data` in the sections' shape.
    Configuration,
    /// `POST /reload`: `data` in `GET /reload`'s shape; applied through a reload.
    Reload,
    /// `PUT /bridges/{name}`: that bridge's fields.
    Bridge(String),
}

impl V4Write {
    /// Checks `data` against `base`; nothing is applied here.
    pub fn check(&self, base: &Config, data: &Value) -> Result<ConfigUpdate, String> {
        match self {
            V4Write::Configuration => check_configuration(base, data),
            V4Write::Reload => check_reload(base, data),
            V4Write::Bridge(name) => check_bridge(base, name, data),
        }
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what} must be an object"))
}

/// Values that cannot change: sending the current one is fine, another is refused.
fn read_only(key: &str, given: &Value, current: &Value) -> Result<(), String> {
    if given == current {
        Ok(())
    } else {
        Err(format!("{key} cannot be changed"))
    }
}

/// `POST /configuration`: `basic`, `tls`, `websocket` and `http_server` as V1 req 12 takes
/// them (plus `max_packet_size` in KiB and `keepalive_backoff`); other sections are refused.
pub fn check_configuration(base: &Config, data: &Value) -> Result<ConfigUpdate, String> {
    let top = object(data, "data")?;
    let current = configuration(base, &[]);
    let mut fields: Vec<(String, &Value)> = Vec::new();
    for (section, v) in top {
        let inner = object(v, section)?;
        for (k, v) in inner {
            let now = current.get(section).and_then(|s| s.get(k));
            match (section.as_str(), k.as_str()) {
                ("basic", "client_max_packet_size" | "ipc_internal")
                | ("websocket", "tls_enable")
                | ("http_server", "addr") => read_only(k, v, now.unwrap_or(&Value::Null))?,
                ("basic", _) => fields.push((k.clone(), v)),
                ("tls" | "websocket" | "http_server", _) => {
                    fields.push((format!("{section}.{k}"), v))
                }
                _ => {
                    return Err(format!(
                        "{section}.{k} cannot be changed here (bridges: PUT /api/v4/bridges/{{name}})"
                    ));
                }
            }
        }
    }
    check_fields(base, &fields, &[V1_FIELDS, V4_BASIC])
}

/// `POST /reload` with `data`: the keys of `GET /reload`.
pub fn check_reload(base: &Config, data: &Value) -> Result<ConfigUpdate, String> {
    let top = object(data, "data")?;
    let current = reload_values(base);
    let mut fields: Vec<(String, &Value)> = Vec::new();
    for (k, v) in top {
        match k.as_str() {
            "property_size" | "msq_len" | "qos_duration" | "allow_anonymous"
            | "max_packet_size" | "keepalive_backoff" => fields.push((k.clone(), v)),
            "client_max_packet_size" | "enable_mqtt_stream" | "bridge_mode" => {
                read_only(k, v, current.get(k).unwrap_or(&Value::Null))?
            }
            _ => return Err(format!("unknown field {k}")),
        }
    }
    check_fields(base, &fields, &[V1_FIELDS, V4_BASIC])
}

/// The fields of NanoMQ's flat bridge PUT shape, as `bridges.mqtt.<name>.<key>` settings.
const BRIDGE_FIELDS: &[(&str, Kind, &str)] = &[
    ("enable", Kind::Bool, "enable"),
    ("server", Kind::Str, "server"),
    ("proto_ver", Kind::Int, "proto_ver"),
    ("clientid", Kind::Str, "clientid"),
    ("clean_start", Kind::Bool, "clean_start"),
    ("keepalive", Kind::Int, "keepalive"),
    ("parallel", Kind::Int, "parallel"),
    ("username", Kind::OptStr, "username"),
    ("password", Kind::OptStr, "password"),
    ("max_send_queue_len", Kind::Int, "max_send_queue_len"),
    ("backoff_max", Kind::Int, "backoff_max"),
    ("ssl.enable", Kind::Bool, "ssl.enable"),
    ("ssl.keyfile", Kind::OptStr, "ssl.keyfile"),
    ("ssl.certfile", Kind::OptStr, "ssl.certfile"),
    ("ssl.cacertfile", Kind::OptStr, "ssl.cacertfile"),
];

/// A bridge name that can be written into a configuration key as it is.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `PUT /bridges/{name}`: `data` is the bridge's object (the body's `{"<name>": {…}}` value).
pub fn check_bridge(base: &Config, name: &str, data: &Value) -> Result<ConfigUpdate, String> {
    if !plain_name(name) {
        return Err("bridge names here are letters, digits, _ and -".to_owned());
    }
    let o = object(data, name)?;
    // The keys carry the bridge's name.
    let mut table: Vec<(String, Kind, String)> = Vec::new();
    for (path, kind, key) in BRIDGE_FIELDS {
        table.push((
            (*path).to_owned(),
            *kind,
            format!("bridges.mqtt.{name}.{key}"),
        ));
    }
    let mut entries: Vec<(String, Value)> = Vec::new();
    for (k, v) in o {
        match (k.as_str(), v) {
            ("name", Value::String(n)) if n == name => {}
            ("name", _) => return Err("name must be the bridge's name".to_owned()),
            ("ssl", Value::Object(inner)) => {
                for (ik, iv) in inner {
                    entries.push((format!("ssl.{ik}"), iv.clone()));
                }
            }
            ("forwards", Value::Array(items)) => {
                entries.push(("forwards".to_owned(), Value::Array(items.clone())))
            }
            ("subscription", Value::Array(items)) => {
                entries.push(("subscription".to_owned(), Value::Array(items.clone())))
            }
            _ => entries.push((k.clone(), v.clone())),
        }
    }
    bridge_changes(base, name, &table, &entries)
}

fn bridge_changes(
    base: &Config,
    name: &str,
    table: &[(String, Kind, String)],
    entries: &[(String, Value)],
) -> Result<ConfigUpdate, String> {
    use crate::config_parse::{self, Entry, Format};
    let mut changes = Vec::new();
    let mut parsed = Vec::new();
    for (path, value) in entries {
        let key = match path.as_str() {
            "forwards" | "subscription" => {
                list_ok(path, value)?;
                format!("bridges.mqtt.{name}.{path}")
            }
            _ => {
                let Some((_, kind, key)) = table.iter().find(|(p, _, _)| p == path) else {
                    return Err(format!("unknown field {path}"));
                };
                if !super::config_v1::type_ok(*kind, value) {
                    return Err(format!("{path} has the wrong type"));
                }
                key.clone()
            }
        };
        if super::config_v1::first_control_char(value).is_some() {
            return Err(format!("{path} must not contain control characters"));
        }
        if value.as_str() == Some(MASK) {
            continue;
        }
        parsed.push(Entry {
            key: key.clone(),
            value: super::config_v1::to_raw(value),
            line: None,
        });
        changes.push(super::config_v1::ConfigChange {
            key,
            value: value.clone(),
        });
    }
    let mut config = base.clone();
    config_parse::apply(&mut config, &parsed, Format::Hocon).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    let restart_required = Vec::new();
    Ok(ConfigUpdate {
        config,
        changes,
        restart_required,
    })
}

/// `forwards` / `subscription` items: objects of strings and small integers only.
fn list_ok(path: &str, v: &Value) -> Result<(), String> {
    let Value::Array(items) = v else {
        return Err(format!("{path} must be an array"));
    };
    let fields: &[&str] = if path == "forwards" {
        &[
            "remote_topic",
            "local_topic",
            "qos",
            "retain",
            "prefix",
            "suffix",
        ]
    } else {
        &["remote_topic", "local_topic", "qos", "prefix", "suffix"]
    };
    for item in items {
        let Value::Object(o) = item else {
            return Err(format!("{path} items must be objects"));
        };
        for (k, v) in o {
            let ok = fields.contains(&k.as_str())
                && match k.as_str() {
                    "qos" => v.as_u64().is_some_and(|q| q <= 2),
                    "retain" => v.is_boolean(),
                    "prefix" | "suffix" => v.as_str().is_some_and(str::is_empty),
                    _ => v.is_string() || v.is_null(),
                };
            if !ok {
                return Err(format!("{path}.{k} is not supported or has the wrong type"));
            }
        }
    }
    Ok(())
}
