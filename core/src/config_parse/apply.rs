//! One table of keys that gives entries their types and applies them to a [`Config`],
//! whatever format or source they came from.

use std::collections::BTreeMap;

use crate::acl::AclSettings;
use crate::config::{
    AnonymousMode, BridgeConfig, BridgeForward, BridgeSubscription, Config, HttpAuthType, SyncMode,
};

use super::entry::{ConfigIssue, Entry, Format, Raw};

/// Applies entries in order (later wins) to `config`. Returns warnings for keys that are
/// unknown (likely typos) or accepted for NanoMQ compatibility without effect. The first
/// bad value is an error and leaves `config` unspecified: callers apply to a copy.
pub fn apply(
    config: &mut Config,
    entries: &[Entry],
    format: Format,
) -> Result<Vec<ConfigIssue>, ConfigIssue> {
    let mut warnings = Vec::new();
    // Old-format users come in halves: `auth.1.login = alice`, `auth.1.password = secret`.
    let mut kv_users: BTreeMap<u32, (Option<String>, Option<String>, &Entry)> = BTreeMap::new();
    for entry in entries {
        if format == Format::KeyValue
            && let Some((n, field)) = entry
                .key
                .strip_prefix("auth.")
                .and_then(|rest| rest.split_once('.'))
            && let Ok(n) = n.parse::<u32>()
            && matches!(field, "login" | "password")
        {
            let value = string(&entry.value).map_err(|m| ConfigIssue::at(entry, m))?;
            let slot = kv_users.entry(n).or_insert((None, None, entry));
            if field == "login" {
                slot.0 = Some(value);
            } else {
                slot.1 = Some(value);
            }
            continue;
        }
        match apply_one(config, entry, format) {
            Ok(Applied::Set)
                if matches!(entry.key.as_str(), "qos_duration" | "mqtt.retry_interval") =>
            {
                warnings.push(ConfigIssue::at(
                    entry,
                    "accepted and shown by the admin API, but it has no effect: unacknowledged \
                     QoS 1/2 messages are resent when the client reconnects (MQTT 3.1.1 resends \
                     on reconnect; MQTT 5 forbids resending within a session)",
                ));
            }
            Ok(Applied::Set | Applied::Section) => {}
            Ok(Applied::NoEffect) => warnings.push(ConfigIssue::at(
                entry,
                "accepted for NanoMQ compatibility; it has no effect in TideMQ",
            )),
            Ok(Applied::Unknown) => warnings.push(ConfigIssue::at(entry, "unknown key, ignored")),
            Err(message) => return Err(ConfigIssue::at(entry, message)),
        }
    }
    if entries.iter().any(|e| is_acl_key(&e.key)) {
        config.acl = AclSettings::from_entries(entries)?;
    }
    for (n, (login, password, entry)) in kv_users {
        match (login, password) {
            (Some(login), Some(password)) => {
                config.users.insert(login, password);
            }
            _ => {
                return Err(ConfigIssue::at(
                    entry,
                    format!("auth.{n} needs both auth.{n}.login and auth.{n}.password"),
                ));
            }
        }
    }
    Ok(warnings)
}

/// Keys [`AclSettings::from_entries`] reads: with any of them in a source, it sets the ACL.
fn is_acl_key(key: &str) -> bool {
    matches!(
        key,
        "acl_enable" | "acl_nomatch" | "acl_deny_action" | "auth.no_match" | "auth.deny_action"
    ) || key == "auth.acl"
        || key.starts_with("auth.acl.")
        || key.starts_with("acl.rule.")
}

enum Applied {
    Set,
    /// A section header (HOCON object); its keys come as their own entries.
    Section,
    NoEffect,
    Unknown,
}

fn apply_one(c: &mut Config, e: &Entry, format: Format) -> Result<Applied, String> {
    let v = &e.value;
    let key = e.key.as_str();
    // NanoMQ's old format gives packet sizes in KB.
    let kb = format == Format::KeyValue;
    match key {
        "url" => c.url = string(v)?,
        "tcp.enable" | "listeners.tcp.enable" | "enable" => c.tcp_enable = boolean(v)?,
        "listeners.tcp.bind" => c.url = format!("nmq-tcp://{}", string(v)?),
        "daemon" | "system.daemon" => c.daemon = boolean(v)?,
        "num_taskq_thread" | "system.num_taskq_thread" => c.num_taskq_thread = int(v)?,
        "max_taskq_thread" | "system.max_taskq_thread" => c.max_taskq_thread = int(v)?,
        "parallel" | "system.parallel" => c.parallel = int(v)?,
        "property_size" | "mqtt.property_size" => c.property_size = int(v)?,
        "max_packet_size" if kb => {
            c.max_packet_size = int::<u32>(v)?
                .checked_mul(1024)
                .ok_or("too large (the value is in KB)")?
        }
        "max_packet_size" | "mqtt.max_packet_size" => c.max_packet_size = size(v)?,
        "msq_len" | "mqtt.max_mqueue_len" => c.msq_len = int(v)?,
        "qos_duration" | "mqtt.retry_interval" => c.qos_duration = seconds(v)?,
        "allow_anonymous" | "auth.allow_anonymous" => c.allow_anonymous = boolean(v)?,
        "keepalive_backoff" => {
            c.keepalive_multiplier = float(v)? / 1000.0;
        }
        "keepalive_multiplier" | "mqtt.keepalive_multiplier" => c.keepalive_multiplier = float(v)?,
        "max_inflight" | "max_inflight_window" | "mqtt.max_inflight_window" => {
            c.max_inflight = int(v)?
        }
        "receive_maximum" | "mqtt.receive_maximum" | "mqtt.max_awaiting_rel" => {
            c.receive_maximum = int(v)?
        }
        "max_topic_alias" | "mqtt.max_topic_alias" => c.max_topic_alias = int(v)?,
        "max_topic_alias_out" | "mqtt.max_topic_alias_out" => c.max_topic_alias_out = int(v)?,
        "max_keepalive" | "mqtt.max_keepalive" => c.max_keepalive = seconds(v)?,
        "connect_timeout" | "mqtt.connect_timeout" => c.connect_timeout_ms = millis(v)?,
        "max_client_id_len" | "mqtt.max_client_id_len" => c.max_client_id_len = int(v)?,
        "max_subscriptions" | "mqtt.max_subscriptions" => c.max_subscriptions = int(v)?,
        "max_topic_levels" | "mqtt.max_topic_levels" => c.max_topic_levels = int(v)?,
        "max_write_buffer" | "mqtt.max_write_buffer" => c.max_write_buffer = size(v)?,
        "max_session_expiry" | "mqtt.max_session_expiry" => c.max_session_expiry = seconds(v)?,
        "anonymous_session_expiry" | "mqtt.anonymous_session_expiry" => {
            c.anonymous_session_expiry = seconds(v)?
        }
        "max_memory" | "mqtt.max_memory" => c.max_memory = size(v)?,
        "sys_events" | "mqtt.sys_events" => c.sys_events = boolean(v)?,
        "sys_interval" | "mqtt.sys_interval" => c.sys_interval = seconds(v)?,
        "metrics.listen" => c.metrics_listen = opt_string(v)?,

        "tls.enable" | "listeners.ssl.enable" => c.tls.enable = boolean(v)?,
        "tls.url" => c.tls.url = string(v)?,
        "listeners.ssl.bind" => c.tls.url = format!("tls+nmq-tcp://{}", string(v)?),
        "tls.keyfile" | "listeners.ssl.keyfile" => c.tls.keyfile = opt_string(v)?,
        "tls.certfile" | "listeners.ssl.certfile" => c.tls.certfile = opt_string(v)?,
        "tls.cacertfile" | "listeners.ssl.cacertfile" => c.tls.cacertfile = opt_string(v)?,
        "tls.key_password" | "listeners.ssl.key_password" => c.tls.key_password = opt_string(v)?,
        "tls.verify_peer" | "listeners.ssl.verify_peer" => c.tls.verify_peer = boolean(v)?,
        "tls.fail_if_no_peer_cert" | "listeners.ssl.fail_if_no_peer_cert" => {
            c.tls.fail_if_no_peer_cert = boolean(v)?
        }
        "tls.use_identity_as_username" | "listeners.ssl.use_identity_as_username" => {
            c.tls.use_identity_as_username = boolean(v)?
        }
        "websocket.enable" | "listeners.ws.enable" => c.websocket.enable = boolean(v)?,
        "websocket.url" => c.websocket.url = string(v)?,
        "listeners.ws.bind" => c.websocket.url = format!("nmq-ws://{}", string(v)?),
        "websocket.tls_url" => c.websocket.tls_url = string(v)?,
        "listeners.wss.bind" => c.websocket.tls_url = format!("nmq-wss://{}", string(v)?),
        "listeners" | "listeners.tcp" => return Ok(Applied::Section),
        "listeners.ssl" => {
            c.tls.enable = true;
            return Ok(Applied::Section);
        }
        "listeners.ws" => {
            c.websocket.enable = true;
            return Ok(Applied::Section);
        }
        "listeners.wss" => return Ok(Applied::Section),
        "metrics" => return Ok(Applied::Section),

        "http_server" => {
            c.http_server.enable = true;
            return Ok(Applied::Section);
        }
        "http_server.enable" => c.http_server.enable = boolean(v)?,
        "http_server.port" => c.http_server.port = int(v)?,
        "http_server.ip_addr" => c.http_server.ip_addr = string(v)?,
        "http_server.username" => c.http_server.username = string(v)?,
        "http_server.password" => c.http_server.password = string(v)?,
        "http_server.auth_type" => {
            c.http_server.auth_type = match string(v)?.as_str() {
                "basic" => HttpAuthType::Basic,
                "jwt" => HttpAuthType::Jwt,
                "no_auth" | "none" => HttpAuthType::NoAuth,
                other => return Err(format!("{other:?}: expected basic, jwt or no_auth")),
            }
        }
        "http_server.jwt.public.keyfile" => c.http_server.jwt_public_keyfile = opt_string(v)?,
        "http_server.max_body" => c.http_server.max_body = size(v)?,
        "http_server.limit_conn" => c.http_server.limit_conn = int(v)?,
        "http_server.jwt" | "http_server.jwt.public" | "http_server.jwt.private" => {
            return Ok(Applied::Section);
        }
        "http_server.parallel" | "http_server.jwt.private.keyfile" => {
            return Ok(Applied::NoEffect);
        }

        "log" | "log.rotation" => return Ok(Applied::Section),
        "log.to" => c.log.to = string_list(v)?,
        "log.level" => c.log.level = string(v)?.to_ascii_lowercase(),
        "log.format" => c.log.format = string(v)?.trim().to_ascii_lowercase(),
        "log.dir" => c.log.dir = string(v)?,
        "log.file" => c.log.file = string(v)?,
        "log.rotation.size" => c.log.rotation_size = size(v)?,
        "log.rotation.count" => c.log.rotation_count = int(v)?,

        "persistence" | "sqlite" => {
            c.persistence.enable = true;
            return Ok(Applied::Section);
        }
        "persistence.enable" => c.persistence.enable = boolean(v)?,
        "persistence.data_dir" | "sqlite.mounted_file_path" => c.persistence.data_dir = string(v)?,
        "persistence.sync" => {
            c.persistence.sync = match string(v)?.as_str() {
                "fsync" => SyncMode::Fsync,
                "os" => SyncMode::Os,
                "none" => SyncMode::None,
                other => return Err(format!("{other:?}: expected fsync, os or none")),
            }
        }
        "persistence.flush_interval" => c.persistence.flush_interval_ms = millis(v)?,
        "persistence.max_batch" | "sqlite.flush_mem_threshold" => c.persistence.max_batch = int(v)?,
        "persistence.segment_size" => c.persistence.segment_size = size(v)?,
        "persistence.snapshot_threshold" => c.persistence.snapshot_threshold = size(v)?,
        "persistence.on_corruption" => c.persistence.on_corruption = string(v)?,
        "persistence.fail_fast" => c.persistence.fail_fast = boolean(v)?,
        "persistence.max_disk" => c.persistence.max_disk = size(v)?,

        "cluster.enable" => c.cluster.enable = boolean(v)?,
        "cluster.nats_urls" => c.cluster.nats_urls = string_list(v)?,
        "cluster.node_name" => c.cluster.node_name = string(v)?,
        "cluster.subject_prefix" => c.cluster.subject_prefix = string(v)?,
        "cluster.replicas" => c.cluster.replicas = int(v)?,
        "cluster.max_subscriptions" => c.cluster.max_subscriptions = int(v)?,
        "cluster.max_subject_len" => c.cluster.max_subject_len = size(v)?,
        "cluster.retained_max_bytes" => c.cluster.retained_max_bytes = size(v)?,
        "cluster.sessions_max_bytes" => c.cluster.sessions_max_bytes = size(v)?,
        "cluster.publish_timeout" => c.cluster.publish_timeout_ms = millis(v)?,
        "cluster.record_interval" => c.cluster.record_interval_ms = millis(v)?,
        "cluster.node_ttl" => c.cluster.node_ttl_ms = millis(v)?,
        "cluster.durable_max_bytes" => c.cluster.durable_max_bytes = size(v)?,
        "cluster.durable_max_age" => c.cluster.durable_max_age_ms = millis(v)?,

        "system" | "mqtt" | "auth" | "auth.password" | "bridges" | "bridges.mqtt" | "cluster" => {
            return Ok(Applied::Section);
        }
        "client_max_packet_size"
        | "mqtt.client_max_packet_size"
        | "mqtt.await_rel_timeout"
        | "mqtt.batch_resend"
        | "enable_ipc_internal"
        | "system.enable_ipc_internal"
        | "system.hook_ipc_url"
        | "system.cmd_ipc_url"
        | "auth_enable" => return Ok(Applied::NoEffect),
        // Read together by `AclSettings::from_entries` once every entry is applied.
        "acl_enable" | "acl_nomatch" | "acl_deny_action" | "auth.no_match" | "auth.deny_action" => {
        }
        "auth.anonymous_mode" => {
            c.auth.anonymous_mode = match string(v)?.as_str() {
                "nanomq" => AnonymousMode::Nanomq,
                "strict" => AnonymousMode::Strict,
                other => return Err(format!("{other:?}: expected nanomq or strict")),
            }
        }
        "auth.password_file" => c.auth.password_file = opt_string(v)?,
        "auth.max_pending" => c.auth.max_pending = int(v)?,
        "auth.max_held_bytes" => c.auth.max_held_bytes = size(v)?,
        "auth.workers" => c.auth.workers = int(v)?,
        "auth.cache_ttl" => c.auth.cache_ttl_ms = millis(v)?,
        "auth.cache_max" => c.auth.cache_max = int(v)?,
        _ => return apply_prefixed(c, e, format),
    }
    Ok(Applied::Set)
}

/// Keys with a variable part: users, bridges, and sections we accept without effect.
fn apply_prefixed(c: &mut Config, e: &Entry, format: Format) -> Result<Applied, String> {
    let key = e.key.as_str();
    if let Some(user) = key.strip_prefix("auth.password.") {
        c.users
            .insert(user.trim_matches('"').to_owned(), string(&e.value)?);
        return Ok(Applied::Set);
    }
    if let Some(rest) = key.strip_prefix("bridges.mqtt.") {
        let (name, field) = rest.split_once('.').unwrap_or((rest, ""));
        return apply_bridge(c, name, field, &e.value, format);
    }
    if let Some(rest) = key.strip_prefix("bridge.mqtt.") {
        // `bridge.mqtt.<field>` is the single old-style bridge; `bridge.mqtt.<name>.<field>`
        // a named one.
        let first = rest.split('.').next().unwrap_or_default();
        if is_bridge_field(first) {
            return apply_bridge(c, "default", rest, &e.value, format);
        }
        let (name, field) = rest.split_once('.').unwrap_or((rest, ""));
        return apply_bridge(c, name, field, &e.value, format);
    }
    if key == "auth.acl" || key.starts_with("auth.acl.") || key.starts_with("acl.rule.") {
        return Ok(Applied::Set);
    }
    if let Some(rest) = key.strip_prefix("auth.http_auth") {
        return apply_http_auth(c, rest.strip_prefix('.').unwrap_or(rest), &e.value);
    }
    let no_effect_sections = [
        "auth.cache",
        "auth.http",
        "sqlite",
        "webhook",
        "web.hook",
        "rules",
        "rule",
        "preset",
        "exchange_client",
        "parquet",
        "plugin",
        "bridges.aws",
        "bridges.nng",
        "aws",
        "listeners.quic",
        "log.syslog",
    ];
    if no_effect_sections
        .iter()
        .any(|s| key == *s || key.starts_with(&format!("{s}.")))
    {
        return Ok(Applied::NoEffect);
    }
    Ok(Applied::Unknown)
}

/// `auth.http_auth.<field>`; `field` is empty for the section itself, which turns it on.
fn apply_http_auth(c: &mut Config, field: &str, v: &Raw) -> Result<Applied, String> {
    let h = &mut c.auth.http_auth;
    match field {
        "" => {
            h.enable = true;
            return Ok(Applied::Section);
        }
        "enable" => h.enable = boolean(v)?,
        "timeout" => h.timeout_ms = millis(v)?,
        "connect_timeout" => h.connect_timeout_ms = millis(v)?,
        "pool_size" => h.pool_size = int(v)?,
        "cache_ttl" => h.cache_ttl_ms = millis(v)?,
        "on_error" => {
            h.allow_on_error = match string(v)?.as_str() {
                "deny" => false,
                "allow" => true,
                other => return Err(format!("{other:?}: expected deny or allow")),
            }
        }
        _ => {
            let (name, sub) = field.split_once('.').unwrap_or((field, ""));
            let req = match name {
                "auth_req" => &mut h.auth_req,
                "super_req" => &mut h.super_req,
                "acl_req" => &mut h.acl_req,
                _ => return Ok(Applied::Unknown),
            };
            let req = req.get_or_insert_with(Default::default);
            let (sub, item) = sub.split_once('.').unwrap_or((sub, ""));
            match (sub, item) {
                ("", _) => return Ok(Applied::Section),
                ("headers" | "params", "") if !matches!(v, Raw::Object(_)) => {
                    return Ok(Applied::Section);
                }
                ("url", _) => req.url = string(v)?,
                ("method", _) => req.method = string(v)?.to_ascii_uppercase(),
                ("headers", "") => {
                    for (k, v) in object(v)? {
                        req.headers.insert(k.clone(), string(v)?);
                    }
                }
                ("headers", name) => {
                    req.headers.insert(name.to_owned(), string(v)?);
                }
                ("params", "") => {
                    for (k, v) in object(v)? {
                        req.params.push((k.clone(), string(v)?));
                    }
                }
                ("params", name) => req.params.push((name.to_owned(), string(v)?)),
                _ => return Ok(Applied::Unknown),
            }
        }
    }
    Ok(Applied::Set)
}

fn object(v: &Raw) -> Result<&[(String, Raw)], String> {
    match v {
        Raw::Object(fields) => Ok(fields),
        _ => Err("expected an object".to_owned()),
    }
}

fn is_bridge_field(s: &str) -> bool {
    matches!(
        s,
        "bridge_mode"
            | "enable"
            | "address"
            | "server"
            | "proto_ver"
            | "clientid"
            | "keepalive"
            | "clean_start"
            | "parallel"
            | "username"
            | "password"
            | "forwards"
            | "subscription"
            | "max_send_queue_len"
            | "backoff_max"
            | "ssl"
    )
}

fn apply_bridge(
    c: &mut Config,
    name: &str,
    field: &str,
    v: &Raw,
    format: Format,
) -> Result<Applied, String> {
    if name.is_empty() {
        return Ok(Applied::Unknown);
    }
    let hocon = format == Format::Hocon;
    let b = c
        .bridges
        .entry(name.to_owned())
        .or_insert_with(|| BridgeConfig {
            // A HOCON bridge section is on unless it says otherwise; the old format has
            // `bridge_mode`.
            enable: hocon,
            ..BridgeConfig::default()
        });
    match field {
        "" => return Ok(Applied::Section),
        "bridge_mode" | "enable" => b.enable = boolean(v)?,
        "address" | "server" => {
            let addr = string(v)?;
            b.address = if addr.contains("://") {
                addr
            } else {
                format!("mqtt-tcp://{addr}")
            };
        }
        "proto_ver" => b.proto_ver = int(v)?,
        "clientid" => b.clientid = string(v)?,
        "keepalive" => b.keepalive = seconds(v)?,
        "clean_start" => b.clean_start = boolean(v)?,
        "parallel" | "max_parallel_processes" => b.parallel = int(v)?,
        "username" => b.username = opt_string(v)?,
        "password" => b.password = opt_string(v)?,
        "max_send_queue_len" => b.max_send_queue_len = int(v)?,
        "backoff_max" => b.backoff_max = seconds(v)?,
        "ssl" => return Ok(Applied::Section),
        "ssl.enable" => b.ssl.enable = boolean(v)?,
        "ssl.cacertfile" => b.ssl.cacertfile = opt_string(v)?,
        "ssl.certfile" => b.ssl.certfile = opt_string(v)?,
        "ssl.keyfile" => b.ssl.keyfile = opt_string(v)?,
        "forwards" => b.forwards = forwards(v)?,
        "subscription" => b.subscription = subscriptions(v)?,
        _ => {
            // Old format lists: `subscription.<n>.topic|qos|remote_topic|local_topic`,
            // `forwards.<n>.remote_topic|local_topic|qos|retain`.
            let mut parts = field.splitn(3, '.');
            let (list, n, sub) = (parts.next(), parts.next(), parts.next());
            if let (Some(list @ ("subscription" | "forwards")), Some(n), Some(sub)) = (list, n, sub)
            {
                let index: usize = n
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| n.checked_sub(1))
                    .ok_or_else(|| format!("{list} entries are numbered from 1"))?;
                if index > 4096 {
                    return Err(format!("{list} index {n} is too large"));
                }
                if list == "subscription" {
                    if b.subscription.len() <= index {
                        b.subscription
                            .resize(index + 1, BridgeSubscription::default());
                    }
                    let s = b.subscription.get_mut(index).ok_or("bad index")?;
                    match sub {
                        "topic" => {
                            s.remote_topic = string(v)?;
                        }
                        "remote_topic" => s.remote_topic = string(v)?,
                        "local_topic" => s.local_topic = string(v)?,
                        "qos" => s.qos = int(v)?,
                        "retain" | "retain_as_published" | "retain_handling" => {
                            return Ok(Applied::NoEffect);
                        }
                        _ => return Ok(Applied::Unknown),
                    }
                } else {
                    if b.forwards.len() <= index {
                        b.forwards.resize(index + 1, BridgeForward::default());
                    }
                    let f = b.forwards.get_mut(index).ok_or("bad index")?;
                    match sub {
                        "remote_topic" => f.remote_topic = string(v)?,
                        "local_topic" => f.local_topic = string(v)?,
                        "qos" => f.qos = Some(int(v)?),
                        "retain" => f.retain = Some(boolean(v)?),
                        _ => return Ok(Applied::Unknown),
                    }
                }
                return Ok(Applied::Set);
            }
            return Ok(Applied::NoEffect);
        }
    }
    Ok(Applied::Set)
}

fn forwards(v: &Raw) -> Result<Vec<BridgeForward>, String> {
    match v {
        // Old format: `forwards=topic1/#,topic2/#`.
        Raw::Str(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| BridgeForward {
                local_topic: t.to_owned(),
                ..BridgeForward::default()
            })
            .collect()),
        Raw::List(items) => items
            .iter()
            .map(|item| match item {
                Raw::Str(t) => Ok(BridgeForward {
                    local_topic: t.clone(),
                    ..BridgeForward::default()
                }),
                Raw::Object(fields) => {
                    let mut f = BridgeForward::default();
                    for (k, v) in fields {
                        match k.as_str() {
                            "local_topic" => f.local_topic = string(v)?,
                            "remote_topic" => f.remote_topic = string(v)?,
                            "qos" => f.qos = Some(int(v)?),
                            "retain" => f.retain = Some(boolean(v)?),
                            "prefix" | "suffix" => {}
                            other => return Err(format!("unknown forwards field {other:?}")),
                        }
                    }
                    if f.local_topic.is_empty() {
                        f.local_topic = f.remote_topic.clone();
                    }
                    Ok(f)
                }
                _ => Err("forwards entries must be topics or objects".to_owned()),
            })
            .collect(),
        _ => Err("expected a list of forwards".to_owned()),
    }
}

fn subscriptions(v: &Raw) -> Result<Vec<BridgeSubscription>, String> {
    let Raw::List(items) = v else {
        return Err("expected a list of subscriptions".to_owned());
    };
    items
        .iter()
        .map(|item| {
            let Raw::Object(fields) = item else {
                return Err("subscription entries must be objects".to_owned());
            };
            let mut s = BridgeSubscription::default();
            for (k, v) in fields {
                match k.as_str() {
                    "topic" | "remote_topic" => s.remote_topic = string(v)?,
                    "local_topic" => s.local_topic = string(v)?,
                    "qos" => s.qos = int(v)?,
                    "retain" | "retain_as_published" | "retain_handling" | "prefix" | "suffix" => {}
                    other => return Err(format!("unknown subscription field {other:?}")),
                }
            }
            Ok(s)
        })
        .collect()
}

// ----- typed readers ----------------------------------------------------------------------

fn string(v: &Raw) -> Result<String, String> {
    match v {
        Raw::Str(s) | Raw::Num(s) => Ok(s.clone()),
        Raw::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a string".to_owned()),
    }
}

fn opt_string(v: &Raw) -> Result<Option<String>, String> {
    match v {
        Raw::Null => Ok(None),
        Raw::Str(s) if s.is_empty() => Ok(None),
        other => string(other).map(Some),
    }
}

fn string_list(v: &Raw) -> Result<Vec<String>, String> {
    match v {
        Raw::List(items) => items.iter().map(string).collect(),
        Raw::Str(s) => Ok(s
            .split(',')
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()),
        _ => Err("expected a list".to_owned()),
    }
}

fn boolean(v: &Raw) -> Result<bool, String> {
    match v {
        Raw::Bool(b) => Ok(*b),
        Raw::Str(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("{s:?} is not a boolean (true or false)")),
        },
        _ => Err("expected true or false".to_owned()),
    }
}

fn int<T: TryFrom<u64>>(v: &Raw) -> Result<T, String> {
    let text = match v {
        Raw::Num(s) | Raw::Str(s) => s.trim(),
        _ => return Err("expected a whole number".to_owned()),
    };
    let n: u64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number"))?;
    T::try_from(n).map_err(|_| format!("{n} is out of range"))
}

fn float(v: &Raw) -> Result<f64, String> {
    let text = match v {
        Raw::Num(s) | Raw::Str(s) => s.trim(),
        _ => return Err("expected a number".to_owned()),
    };
    text.parse()
        .map_err(|_| format!("{text:?} is not a number"))
}

/// A size as NanoMQ reads it: a number and an optional unit, `B`, `K`/`KB` = 1024,
/// `M`/`MB` = 1024², `G`/`GB` = 1024³ (case-insensitive); a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 1024, 10KB, 256MB)"))?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1024,
        "M" | "MB" => 1024 * 1024,
        "G" | "GB" => 1024 * 1024 * 1024,
        _ => return Err(format!("{text:?}: unknown size unit (B, KB, MB, GB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A duration in milliseconds: a number of seconds, or a number with `ms`, `s`, `m`, `h`, `d`.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 30, 30s, 500ms, 1m)"))?;
    let factor: u64 = match unit.trim() {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: unknown duration unit (ms, s, m, h, d)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

fn size<T: TryFrom<u64>>(v: &Raw) -> Result<T, String> {
    let n = match v {
        Raw::Num(s) | Raw::Str(s) => parse_size(s)?,
        _ => return Err("expected a size (e.g. 1024, 10KB, 256MB)".to_owned()),
    };
    T::try_from(n).map_err(|_| format!("{n} bytes is out of range"))
}

fn millis<T: TryFrom<u64>>(v: &Raw) -> Result<T, String> {
    let n = match v {
        Raw::Num(s) | Raw::Str(s) => parse_duration_ms(s)?,
        _ => return Err("expected a duration (e.g. 30s)".to_owned()),
    };
    T::try_from(n).map_err(|_| format!("{n} ms is out of range"))
}

fn seconds<T: TryFrom<u64>>(v: &Raw) -> Result<T, String> {
    let ms: u64 = millis(v)?;
    T::try_from(ms / 1000).map_err(|_| format!("{} s is out of range", ms / 1000))
}
