//! NanoMQ's HTTP API V1 as data: request parsing and validation, authentication decisions,
//! the configuration's V1 JSON shape, and the file changes a set-configuration makes. No HTTP
//! here: the runtime carries bytes, the broker answers from its state.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{Engine, alphabet};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::config::{Config, HttpAuthType};
use crate::config_parse::{self, Entry, Format, Raw};

/// Shown instead of secrets; sending it back in a set-configuration keeps the secret.
pub const MASK: &str = "******";

/// V1 result codes.
pub mod code {
    pub const OK: u16 = 0;
    pub const WRONG_CREDENTIALS: u16 = 103;
    pub const MISSING_CREDENTIALS: u16 = 104;
    pub const MISSING_PARAMETER: u16 = 107;
    pub const BAD_PARAMETER: u16 = 108;
    pub const NOT_JSON: u16 = 109;
    pub const TOKEN_EXPIRED: u16 = 116;
    /// As NanoMQ's v4 API: the configuration file could not be written.
    pub const CONFIG_WRITE_FAILED: u16 = 118;
}

/// The outcome of verifying a `Bearer` token, done by the runtime (it holds the key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtVerdict {
    Valid,
    Expired,
    Invalid,
}

/// What the client presented.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// The `Authorization` header, verbatim.
    pub authorization: Option<String>,
    /// The runtime's verdict on a `Bearer` token, if there was one.
    pub jwt: Option<JwtVerdict>,
}

/// A parsed V1 request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    BrokerInfo,
    TopicInfo,
    ClientInfo,
    Control(ControlAction),
    GetConfig,
    SetConfig(Value),
    TopicTree,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlAction {
    Restart,
    Stop,
}

/// A complete answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// The `WWW-Authenticate` challenge for a 401.
    pub challenge: Option<&'static str>,
}

/// The request envelope: `seq` to echo, `req` if it was an integer.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub seq: Value,
    pub req: Option<i64>,
    pub object: Map<String, Value>,
}

/// Builds the JSON body with NanoMQ's key order: code, seq, rep, data.
pub fn body(code: u16, seq: &Value, rep: Option<i64>, data: Option<Value>) -> Value {
    let mut m = Map::new();
    m.insert("code".into(), json!(code));
    m.insert("seq".into(), seq.clone());
    if let Some(rep) = rep.filter(|r| *r > 0) {
        m.insert("rep".into(), json!(rep));
    }
    if let Some(data) = data {
        m.insert("data".into(), data);
    }
    Value::Object(m)
}

fn error(status: u16, code: u16, seq: &Value, rep: Option<i64>, message: &str) -> Reply {
    let mut b = body(code, seq, rep, None);
    if let Value::Object(m) = &mut b {
        m.insert("message".into(), json!(message));
    }
    Reply {
        status,
        body: b,
        challenge: None,
    }
}

fn is_integer(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

/// Step 1: the body must be a JSON object with integer `req` and `seq`.
pub fn parse_envelope(raw: &[u8]) -> Result<Envelope, Reply> {
    let zero = json!(0);
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(raw) else {
        return Err(error(
            400,
            code::NOT_JSON,
            &zero,
            None,
            "the body must be a JSON object",
        ));
    };
    let seq = object.get("seq").cloned();
    let req = object.get("req").cloned();
    let seq_echo = seq.clone().filter(is_integer).unwrap_or(json!(0));
    let req_echo = req.as_ref().and_then(Value::as_i64);
    match (&req, &seq) {
        (None, _) | (_, None) => Err(error(
            400,
            code::MISSING_PARAMETER,
            &seq_echo,
            req_echo,
            "req and seq are required",
        )),
        (Some(r), Some(s)) if !is_integer(r) || !is_integer(s) => Err(error(
            400,
            code::BAD_PARAMETER,
            &seq_echo,
            req_echo,
            "req and seq must be integers",
        )),
        _ => Ok(Envelope {
            seq: seq_echo,
            req: req_echo,
            object,
        }),
    }
}

/// Step 2: authentication against the configured scheme.
pub fn authenticate(
    config: &Config,
    credentials: &Credentials,
    env: &Envelope,
) -> Result<(), Reply> {
    let http = &config.http_server;
    let fail = |code: u16, challenge: &'static str, message: &str| {
        let mut reply = error(401, code, &env.seq, env.req, message);
        reply.challenge = Some(challenge);
        reply
    };
    match http.auth_type {
        HttpAuthType::NoAuth => Ok(()),
        HttpAuthType::Basic => {
            let challenge = "Basic realm=\"tidemq\"";
            let Some((user, pass)) = credentials
                .authorization
                .as_deref()
                .and_then(basic_credentials)
            else {
                return Err(fail(
                    code::MISSING_CREDENTIALS,
                    challenge,
                    "Basic credentials are required",
                ));
            };
            // Compare both halves fully either way: no early exit on the user name.
            let user_ok = constant_time_eq(user.as_bytes(), http.username.as_bytes());
            let pass_ok = constant_time_eq(pass.as_bytes(), http.password.as_bytes());
            if user_ok & pass_ok {
                Ok(())
            } else {
                Err(fail(
                    code::WRONG_CREDENTIALS,
                    challenge,
                    "wrong user name or password",
                ))
            }
        }
        HttpAuthType::Jwt => {
            let challenge = "Bearer realm=\"tidemq\"";
            let has_bearer = credentials
                .authorization
                .as_deref()
                .and_then(|h| scheme_token(h, "bearer"))
                .is_some();
            if !has_bearer {
                return Err(fail(
                    code::MISSING_CREDENTIALS,
                    challenge,
                    "a Bearer token is required",
                ));
            }
            match credentials.jwt {
                Some(JwtVerdict::Valid) => Ok(()),
                Some(JwtVerdict::Expired) => {
                    Err(fail(code::TOKEN_EXPIRED, challenge, "token expired"))
                }
                _ => Err(fail(code::WRONG_CREDENTIALS, challenge, "invalid token")),
            }
        }
    }
}

/// `Scheme token` with a case-insensitive scheme (RFC 9110 §11.1).
pub fn scheme_token<'a>(header: &'a str, scheme: &str) -> Option<&'a str> {
    let (s, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (s.eq_ignore_ascii_case(scheme) && !token.is_empty()).then_some(token)
}

/// The user name and password of a `Basic` header, if well formed.
pub fn basic_credentials(header: &str) -> Option<(String, String)> {
    let token = scheme_token(header, "basic")?;
    let decoded = base64_decode(token)?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_owned(), pass.to_owned()))
}

/// Standard base64 with padding (RFC 4648 §4); `None` for anything else. Bits past the last
/// byte are ignored, as they always were here.
pub fn base64_decode(input: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    if input.is_empty() {
        return None;
    }
    LENIENT.decode(input).ok()
}

/// Compares secrets in time that depends only on their lengths.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Step 3: which request it is. Unknown codes are 404 + 108, a bad req 10 action 400 + 108.
pub fn parse_request(env: &Envelope) -> Result<Request, Reply> {
    let unknown = || {
        error(
            404,
            code::BAD_PARAMETER,
            &env.seq,
            env.req,
            "unknown req code",
        )
    };
    Ok(match env.req.ok_or_else(unknown)? {
        2 => Request::BrokerInfo,
        4 => Request::TopicInfo,
        5 => Request::ClientInfo,
        10 => {
            let action = env.object.get("action").and_then(Value::as_str);
            match action.map(str::to_ascii_lowercase).as_deref() {
                Some("restart") => Request::Control(ControlAction::Restart),
                Some("stop") => Request::Control(ControlAction::Stop),
                _ => {
                    return Err(error(
                        400,
                        code::BAD_PARAMETER,
                        &env.seq,
                        env.req,
                        "action must be \"restart\" or \"stop\"",
                    ));
                }
            }
        }
        11 => Request::GetConfig,
        12 => match env.object.get("data") {
            Some(data @ Value::Object(_)) => Request::SetConfig(data.clone()),
            _ => {
                return Err(error(
                    400,
                    code::BAD_PARAMETER,
                    &env.seq,
                    env.req,
                    "data must be an object",
                ));
            }
        },
        13 => Request::TopicTree,
        _ => return Err(unknown()),
    })
}

/// A reply for a bad set-configuration.
pub fn bad_parameter(env: &Envelope, message: &str) -> Reply {
    error(400, code::BAD_PARAMETER, &env.seq, env.req, message)
}

/// A reply for a configuration that could not be written.
pub fn write_failed(seq: &Value, message: &str) -> Reply {
    error(500, code::CONFIG_WRITE_FAILED, seq, Some(12), message)
}

/// A success reply.
pub fn ok(env_seq: &Value, rep: i64, data: Option<Value>) -> Reply {
    Reply {
        status: 200,
        body: body(code::OK, env_seq, Some(rep), data),
        challenge: None,
    }
}

fn masked(secret: &Option<String>) -> Value {
    match secret {
        Some(_) => json!(MASK),
        None => Value::Null,
    }
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
        "tls": {
            "enable": c.tls.enable,
            "url": c.tls.url,
            "key_password": masked(&c.tls.key_password),
            "key": c.tls.keyfile,
            "cert": c.tls.certfile,
            "cacert": c.tls.cacertfile,
            "verify_peer": c.tls.verify_peer,
            "fail_if_no_peer_cert": c.tls.fail_if_no_peer_cert,
        },
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
enum Kind {
    Bool,
    Int,
    Str,
    OptStr,
    StrList,
    SubList,
}

/// The V1 fields a set-configuration accepts: JSON path, type, configuration key.
const V1_FIELDS: &[(&str, Kind, &str)] = &[
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

fn type_ok(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Bool => v.is_boolean(),
        Kind::Int => v.as_u64().is_some(),
        Kind::Str => v.is_string(),
        Kind::OptStr => v.is_string() || v.is_null(),
        Kind::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
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
    }
}

fn to_raw(v: &Value) -> Raw {
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
    let mut entries = Vec::new();
    let mut changes = Vec::new();
    for (path, value) in &fields {
        let Some(&(_, kind, key)) = V1_FIELDS.iter().find(|(p, _, _)| p == path) else {
            return Err(format!("unknown field {path}"));
        };
        if !type_ok(kind, value) {
            return Err(format!("{path} must be {}", type_name(kind)));
        }
        // A masked secret sent back unchanged keeps the secret.
        if value.as_str() == Some(MASK) {
            continue;
        }
        // V1 subscriptions are {topic, qos}; the config calls the topic remote_topic.
        let raw = to_raw(value);
        entries.push(Entry {
            key: key.to_owned(),
            value: raw,
            line: None,
        });
        changes.push(ConfigChange {
            key: key.to_owned(),
            value: (*value).clone(),
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

/// A set-configuration waiting for its file write.
pub(crate) struct PendingConfig {
    pub seq: Value,
    pub update: ConfigUpdate,
    /// The request's `data`, re-applied to the configuration in force once written.
    pub data: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: &str) -> Result<Envelope, Reply> {
        parse_envelope(body.as_bytes())
    }

    #[test]
    fn base64_decodes_rfc4648_vectors_and_rejects_garbage() {
        for (enc, dec) in [
            ("Zg==", "f"),
            ("Zm8=", "fo"),
            ("Zm9v", "foo"),
            ("Zm9vYg==", "foob"),
            ("YWRtaW46cHVibGlj", "admin:public"),
            // Bits past the last byte are ignored.
            ("Zh==", "f"),
        ] {
            assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes());
        }
        for bad in ["", "Zg=", "Z===", "Zg==Zg==", "Zm9v!", "====", "Zm 9"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn envelope_errors_follow_the_documented_order() {
        assert_eq!(
            env("not json").unwrap_err().body,
            json!({"code":109,"seq":0,"message":"the body must be a JSON object"})
        );
        assert_eq!(env("[1]").unwrap_err().status, 400);
        let e = env(r#"{"req":2}"#).unwrap_err();
        assert_eq!((e.status, e.body["code"].clone()), (400, json!(107)));
        let e = env(r#"{"req":"2","seq":5}"#).unwrap_err();
        assert_eq!(
            (e.status, e.body["code"].clone(), e.body["seq"].clone()),
            (400, json!(108), json!(5))
        );
        let e = env(r#"{"req":2.5,"seq":5}"#).unwrap_err();
        assert_eq!(e.body["code"], 108);
        let ok = env(r#"{"req":2,"seq":18446744073709551615}"#).unwrap();
        assert_eq!(ok.seq, json!(u64::MAX));
    }

    #[test]
    fn unknown_req_is_404_with_rep() {
        let e = env(r#"{"req":3,"seq":9}"#).unwrap();
        let r = parse_request(&e).unwrap_err();
        assert_eq!(r.status, 404);
        assert_eq!(r.body["code"], 108);
        assert_eq!(r.body["rep"], 3);
        let e = env(r#"{"req":-1,"seq":9}"#).unwrap();
        assert!(parse_request(&e).unwrap_err().body.get("rep").is_none());
    }

    #[test]
    fn basic_auth_outcomes() {
        let config = Config::default();
        let e = env(r#"{"req":2,"seq":1}"#).unwrap();
        let creds = |h: Option<&str>| Credentials {
            authorization: h.map(str::to_owned),
            jwt: None,
        };
        assert!(authenticate(&config, &creds(Some("Basic YWRtaW46cHVibGlj")), &e).is_ok());
        assert!(authenticate(&config, &creds(Some("basic YWRtaW46cHVibGlj")), &e).is_ok());
        let wrong = authenticate(&config, &creds(Some("Basic YWRtaW46eA==")), &e).unwrap_err();
        assert_eq!(
            (wrong.status, wrong.body["code"].clone()),
            (401, json!(103))
        );
        assert!(wrong.challenge.unwrap().starts_with("Basic"));
        for bad in [
            None,
            Some("Basic"),
            Some("Basic !!!"),
            Some("Bearer x"),
            Some("Basic Zm9v"),
        ] {
            let r = authenticate(&config, &creds(bad), &e).unwrap_err();
            assert_eq!(r.body["code"], 104, "{bad:?}");
        }
    }

    #[test]
    fn jwt_outcomes_map_to_codes() {
        let mut config = Config::default();
        config.http_server.auth_type = HttpAuthType::Jwt;
        let e = env(r#"{"req":2,"seq":1}"#).unwrap();
        let creds = |v| Credentials {
            authorization: Some("Bearer abc".to_owned()),
            jwt: v,
        };
        assert!(authenticate(&config, &creds(Some(JwtVerdict::Valid)), &e).is_ok());
        let code = |v| authenticate(&config, &creds(v), &e).unwrap_err().body["code"].clone();
        assert_eq!(code(Some(JwtVerdict::Expired)), 116);
        assert_eq!(code(Some(JwtVerdict::Invalid)), 103);
        assert_eq!(code(None), 103);
        let none = Credentials::default();
        assert_eq!(
            authenticate(&config, &none, &e).unwrap_err().body["code"],
            104
        );
    }

    #[test]
    fn get_config_masks_secrets_and_round_trips_through_set() {
        let mut base = Config::default();
        base.http_server.password = "topsecret".to_owned();
        let shown = config_to_v1(&base);
        assert_eq!(shown["http_server"]["password"], MASK);
        assert_eq!(shown["qos_duration"], 10);
        let update = check_set_config(&base, &shown).unwrap();
        assert_eq!(update.config.http_server.password, "topsecret");
        assert_eq!(update.config, base);
        assert!(update.restart_required.is_empty());
    }

    #[test]
    fn set_config_checks_everything_before_applying() {
        let base = Config::default();
        let err =
            check_set_config(&base, &json!({"msq_len": 5, "allow_anonymous": "yes"})).unwrap_err();
        assert!(err.contains("allow_anonymous must be a boolean"), "{err}");
        let err = check_set_config(&base, &json!({"msq_lenn": 5})).unwrap_err();
        assert!(err.contains("unknown field msq_lenn"), "{err}");
        let err = check_set_config(&base, &json!({"msq_len": 0})).unwrap_err();
        assert!(err.contains("msq_len"), "{err}");
        let update = check_set_config(
            &base,
            &json!({"msq_len": 5, "allow_anonymous": false, "http_server": {"port": 9000},
                    "bridge": {"bridge_mode": true, "forwards": ["a/#"], "subscription": [{"topic": "b/#", "qos": 1}]}}),
        )
        .unwrap();
        assert_eq!(update.config.msq_len, 5);
        assert!(!update.config.allow_anonymous);
        assert_eq!(update.restart_required, vec!["http_server", "bridges"]);
        let kv: Vec<(String, String)> = update.changes.iter().flat_map(key_value_lines).collect();
        assert!(kv.contains(&("allow_anonymous".to_owned(), "false".to_owned())));
        assert!(kv.contains(&(
            "bridge.mqtt.subscription.1.topic".to_owned(),
            "b/#".to_owned()
        )));
        assert!(kv.contains(&("bridge.mqtt.forwards".to_owned(), "a/#".to_owned())));
    }
}
