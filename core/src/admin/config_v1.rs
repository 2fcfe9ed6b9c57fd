//! The configuration in V1's JSON shape (req 11), the checks of a set-configuration
//! (req 12), and the changes it makes to the configuration files.

use serde_json::{Value, json};

use super::common::MASK;
use crate::config::{Config, HttpAuthType};
use crate::config_parse::{self, Entry, Format, Raw};

/// A secret as the API shows it: masked when set.
pub(super) fn masked(secret: &Option<String>) -> Value {
    match secret {
        Some(_) => json!(MASK),
        None => Value::Null,
    }
}

/// The TLS settings as V1 and v4 show them, the key password masked.
pub(super) fn tls(c: &Config) -> Value {
    json!({
        "enable": c.tls.enable,
        "url": c.tls.url,
        "key_password": masked(&c.tls.key_password),
        "key": c.tls.keyfile,
        "cert": c.tls.certfile,
        "cacert": c.tls.cacertfile,
        "verify_peer": c.tls.verify_peer,
        "fail_if_no_peer_cert": c.tls.fail_if_no_peer_cert,
    })
}

/// The bridge that V1's single `bridge` object shows: `default`, else the first.
fn v1_bridge(config: &Config) -> Option<(&String, &crate::config::BridgeConfig)> {
    config
        .bridges
        .get_key_value("default")
        .or_else(|| config.bridges.iter().next())
}

/// req 11: the configuration in V1's shape, secrets masked, key files as paths.
pub fn config_to_v1(c: &Config) -> Value {
    let default_bridge = crate::config::BridgeConfig::default();
    let bridge = v1_bridge(c).map_or(&default_bridge, |(_, b)| b);
    json!({
        "url": c.url,
        "num_taskq_thread": c.num_taskq_thread,
        "max_taskq_thread": c.max_taskq_thread,
        "parallel": c.parallel,
        "property_size": c.property_size,
        "msq_len": c.msq_len,
        "qos_duration": c.qos_duration,
        "allow_anonymous": c.allow_anonymous,
        "daemon": c.daemon,
        "tls": tls(c),
        "websocket": {
            "enable": c.websocket.enable,
            "url": c.websocket.url,
            "tls_url": c.websocket.tls_url,
        },
        "http_server": {
            "enable": c.http_server.enable,
            "port": c.http_server.port,
            "username": c.http_server.username,
            "password": MASK,
            "auth_type": match c.http_server.auth_type {
                HttpAuthType::Basic => "basic",
                HttpAuthType::Jwt => "jwt",
                HttpAuthType::NoAuth => "no_auth",
            },
        },
        "bridge": {
            "bridge_mode": bridge.enable,
            "address": bridge.address,
            "proto_ver": bridge.proto_ver,
            "clientid": bridge.clientid,
            "clean_start": bridge.clean_start,
            "username": bridge.username,
            "password": masked(&bridge.password),
            "keepalive": bridge.keepalive,
            "parallel": bridge.parallel,
            "forwards": bridge.forwards.iter().map(|f| f.local_topic.clone()).collect::<Vec<_>>(),
            "subscription": bridge.subscription.iter().map(|s| json!({"topic": s.remote_topic, "qos": s.qos})).collect::<Vec<_>>(),
        },
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Int,
    Str,
    OptStr,
    StrList,
    SubList,
    /// A number (the keepalive multiplier).
    Float,
    /// A size in KiB, written to the files with its unit (v4 `max_packet_size`).
    Kib,
}

/// A JSON path, its type, and the configuration key it sets.
pub(crate) type Field = (&'static str, Kind, &'static str);

/// The V1 fields a set-configuration accepts: JSON path, type, configuration key.
pub(crate) const V1_FIELDS: &[Field] = &[
    ("url", Kind::Str, "url"),
    ("num_taskq_thread", Kind::Int, "num_taskq_thread"),
    ("max_taskq_thread", Kind::Int, "max_taskq_thread"),
    ("parallel", Kind::Int, "parallel"),
    ("property_size", Kind::Int, "property_size"),
    ("msq_len", Kind::Int, "msq_len"),
    ("qos_duration", Kind::Int, "qos_duration"),
    ("allow_anonymous", Kind::Bool, "allow_anonymous"),
    ("daemon", Kind::Bool, "daemon"),
    ("tls.enable", Kind::Bool, "tls.enable"),
    ("tls.url", Kind::Str, "tls.url"),
    ("tls.key_password", Kind::OptStr, "tls.key_password"),
    ("tls.keypass", Kind::OptStr, "tls.key_password"),
    ("tls.key", Kind::OptStr, "tls.keyfile"),
    ("tls.cert", Kind::OptStr, "tls.certfile"),
    ("tls.cacert", Kind::OptStr, "tls.cacertfile"),
    ("tls.verify_peer", Kind::Bool, "tls.verify_peer"),
    (
        "tls.fail_if_no_peer_cert",
        Kind::Bool,
        "tls.fail_if_no_peer_cert",
    ),
    ("websocket.enable", Kind::Bool, "websocket.enable"),
    ("websocket.url", Kind::Str, "websocket.url"),
    ("websocket.tls_url", Kind::Str, "websocket.tls_url"),
    ("http_server.enable", Kind::Bool, "http_server.enable"),
    ("http_server.port", Kind::Int, "http_server.port"),
    ("http_server.username", Kind::Str, "http_server.username"),
    ("http_server.password", Kind::Str, "http_server.password"),
    ("http_server.auth_type", Kind::Str, "http_server.auth_type"),
    ("bridge.bridge_mode", Kind::Bool, "bridge.mqtt.bridge_mode"),
    ("bridge.address", Kind::Str, "bridge.mqtt.address"),
    ("bridge.proto_ver", Kind::Int, "bridge.mqtt.proto_ver"),
    ("bridge.clientid", Kind::Str, "bridge.mqtt.clientid"),
    ("bridge.clean_start", Kind::Bool, "bridge.mqtt.clean_start"),
    ("bridge.username", Kind::OptStr, "bridge.mqtt.username"),
    ("bridge.password", Kind::OptStr, "bridge.mqtt.password"),
    ("bridge.keepalive", Kind::Int, "bridge.mqtt.keepalive"),
    ("bridge.parallel", Kind::Int, "bridge.mqtt.parallel"),
    ("bridge.forwards", Kind::StrList, "bridge.mqtt.forwards"),
    (
        "bridge.subscription",
        Kind::SubList,
        "bridge.mqtt.subscription",
    ),
];

/// The V1 fields that name files.
const PATH_FIELDS: &[&str] = &["tls.key", "tls.cert", "tls.cacert"];

/// The first control character (C0, DEL or C1) in any string inside `v`.
pub(crate) fn first_control_char(v: &Value) -> Option<char> {
    match v {
        Value::String(s) => s.chars().find(|c| c.is_control()),
        Value::Array(items) => items.iter().find_map(first_control_char),
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            k.chars()
                .find(|c| c.is_control())
                .or_else(|| first_control_char(v))
        }),
        _ => None,
    }
}

/// A setting changed by a set-configuration, for the runtime to persist.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigChange {
    /// Key in the configuration files' vocabulary (`msq_len`, `tls.enable`, ...).
    pub key: String,
    pub value: Value,
}

/// The result of checking a set-configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigUpdate {
    pub config: Config,
    pub changes: Vec<ConfigChange>,
    /// Keys that take effect only after req 10 restart.
    pub restart_required: Vec<&'static str>,
}

pub(crate) fn type_ok(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Bool => v.is_boolean(),
        Kind::Int => v.as_u64().is_some(),
        Kind::Str => v.is_string(),
        Kind::OptStr => v.is_string() || v.is_null(),
        Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        Kind::Float => v.is_number(),
        Kind::Kib => v.as_u64().is_some_and(|n| n <= u64::from(u32::MAX) / 1024),
        Kind::SubList => v.as_array().is_some_and(|a| {
            a.iter().all(|s| {
                s.as_object().is_some_and(|o| {
                    o.get("topic").is_some_and(Value::is_string)
                        && o.get("qos").is_none_or(|q| q.as_u64().is_some())
                        && o.keys().all(|k| k == "topic" || k == "qos")
                })
            })
        }),
    }
}

fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Bool => "a boolean",
        Kind::Int => "a non-negative integer",
        Kind::Str => "a string",
        Kind::OptStr => "a string or null",
        Kind::StrList => "an array of strings",
        Kind::SubList => "an array of {\"topic\": string, \"qos\": integer}",
        Kind::Float => "a number",
        Kind::Kib => "a size in KiB",
    }
}

pub(crate) fn to_raw(v: &Value) -> Raw {
    match v {
        Value::Null => Raw::Null,
        Value::Bool(b) => Raw::Bool(*b),
        Value::Number(n) => Raw::Num(n.to_string()),
        Value::String(s) => Raw::Str(s.clone()),
        Value::Array(items) => Raw::List(items.iter().map(to_raw).collect()),
        Value::Object(m) => Raw::Object(m.iter().map(|(k, v)| (k.clone(), to_raw(v))).collect()),
    }
}

/// Checks a whole set-configuration `data` object against `base`: every field known and of
/// the right type, the result valid. Nothing is applied here.
pub fn check_set_config(base: &Config, data: &Value) -> Result<ConfigUpdate, String> {
    let Value::Object(top) = data else {
        return Err("data must be an object".to_owned());
    };
    // Flatten one level of sections into dotted paths and reject unknown fields.
    let mut fields: Vec<(String, &Value)> = Vec::new();
    for (k, v) in top {
        match (k.as_str(), v) {
            ("tls" | "websocket" | "http_server" | "bridge", Value::Object(inner)) => {
                for (ik, iv) in inner {
                    fields.push((format!("{k}.{ik}"), iv));
                }
            }
            ("tls" | "websocket" | "http_server" | "bridge", _) => {
                return Err(format!("{k} must be an object"));
            }
            _ => fields.push((k.clone(), v)),
        }
    }
    check_fields(base, &fields, &[V1_FIELDS])
}

/// Checks flattened fields (`section.field` paths) against the tables: every field known and
/// of the right type, no control characters, absolute file paths, the result valid.
pub(crate) fn check_fields(
    base: &Config,
    fields: &[(String, &Value)],
    tables: &[&[Field]],
) -> Result<ConfigUpdate, String> {
    let mut entries = Vec::new();
    let mut changes = Vec::new();
    for (path, value) in fields {
        let Some(&(_, kind, key)) = tables
            .iter()
            .flat_map(|t| t.iter())
            .find(|(p, _, _)| p == path)
        else {
            return Err(format!("unknown field {path}"));
        };
        if !type_ok(kind, value) {
            return Err(format!("{path} must be {}", type_name(kind)));
        }
        // Values are written into configuration files: a control character (a newline above
        // all) could add keys of its own.
        if let Some(bad) = first_control_char(value) {
            return Err(format!(
                "{path} must not contain control characters (found U+{:04X})",
                u32::from(bad)
            ));
        }
        if PATH_FIELDS.contains(&path.as_str())
            && let Some(p) = value.as_str()
            && !p.is_empty()
            && (!p.starts_with('/') || p.split('/').any(|part| part == ".."))
        {
            return Err(format!(
                "{path} must be an absolute file path without \"..\""
            ));
        }
        // A masked secret sent back unchanged keeps the secret.
        if value.as_str() == Some(MASK) {
            continue;
        }
        // A size in KiB is written with its unit, which every format reads the same way.
        let value = match (kind, value.as_u64()) {
            (Kind::Kib, Some(n)) => json!(format!("{n}KB")),
            _ => (*value).clone(),
        };
        // V1 subscriptions are {topic, qos}; the config calls the topic remote_topic.
        let raw = to_raw(&value);
        entries.push(Entry {
            key: key.to_owned(),
            value: raw,
            line: None,
        });
        changes.push(ConfigChange {
            key: key.to_owned(),
            value,
        });
    }
    let mut config = base.clone();
    config_parse::apply(&mut config, &entries, Format::Hocon).map_err(|e| e.to_string())?;
    // req 11 always shows a bridge; sending that default back must not create one.
    if !base.bridges.contains_key("default")
        && config.bridges.get("default") == Some(&crate::config::BridgeConfig::default())
    {
        config.bridges.remove("default");
    }
    config.validate().map_err(|e| e.to_string())?;
    let restart_required = base.restart_required(&config);
    Ok(ConfigUpdate {
        config,
        changes,
        restart_required,
    })
}

/// `key=value` lines for NanoMQ's old format (lists expanded as NanoMQ numbers them).
pub fn key_value_lines(change: &ConfigChange) -> Vec<(String, String)> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    match (change.key.as_str(), &change.value) {
        ("bridge.mqtt.forwards", Value::Array(items)) => vec![(
            change.key.clone(),
            items.iter().map(scalar).collect::<Vec<_>>().join(","),
        )],
        ("bridge.mqtt.subscription", Value::Array(items)) => items
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                let n = i + 1;
                vec![
                    (
                        format!("bridge.mqtt.subscription.{n}.topic"),
                        s.get("topic").map(scalar).unwrap_or_default(),
                    ),
                    (
                        format!("bridge.mqtt.subscription.{n}.qos"),
                        s.get("qos").map(scalar).unwrap_or_else(|| "0".to_owned()),
                    ),
                ]
            })
            .collect(),
        (key, v) => vec![(key.to_owned(), scalar(v))],
    }
}

/// One HOCON line (`key = value`) for the override file; JSON values are valid HOCON.
pub fn hocon_line(change: &ConfigChange) -> String {
    let value = match (change.key.as_str(), &change.value) {
        // Subscriptions use the configuration's field name for the topic.
        ("bridge.mqtt.subscription", Value::Array(items)) => Value::Array(
            items
                .iter()
                .map(|s| {
                    json!({
                        "remote_topic": s.get("topic").cloned().unwrap_or(Value::Null),
                        "qos": s.get("qos").cloned().unwrap_or(json!(0)),
                    })
                })
                .collect(),
        ),
        (_, v) => v.clone(),
    };
    format!("{} = {}", change.key, value)
}
