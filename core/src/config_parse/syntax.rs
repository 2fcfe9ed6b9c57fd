//! The two syntaxes, HOCON and `key=value`, and environment variables, flattened into
//! [`Entry`]s with their line numbers.

use std::collections::BTreeMap;

use super::entry::{ConfigIssue, Entry, Raw};

/// An `include "path"` directive (also `include required("path")` / `include file("path")`)
/// found in HOCON text: its byte range and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub start: usize,
    pub end: usize,
    pub path: String,
    pub required: bool,
}

/// Every include directive outside strings and comments, in order. Includes read files, so
/// the runtime expands them ([`Include`] ranges replaced by the files' text) before the core
/// parses; the core refuses text that still has any.
pub fn find_includes(text: &str) -> Vec<Include> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' if bytes.get(i..i + 3) == Some(b"\"\"\"") => {
                i = text
                    .get(i + 3..)
                    .and_then(|rest| rest.find("\"\"\""))
                    .map_or(bytes.len(), |end| i + 3 + end + 3);
            }
            b'"' => {
                i += 1;
                while let Some(&c) = bytes.get(i) {
                    i += if c == b'\\' { 2 } else { 1 };
                    if c == b'"' {
                        break;
                    }
                }
            }
            b'#' => i = skip_line(text, i),
            b'/' if bytes.get(i + 1) == Some(&b'/') => i = skip_line(text, i),
            b'i' if text.get(i..).is_some_and(|t| t.starts_with("include"))
                && (i == 0
                    || bytes.get(i - 1).is_some_and(|c| {
                        !c.is_ascii_alphanumeric() && *c != b'_' && *c != b'.'
                    })) =>
            {
                match parse_include(text, i) {
                    Some(inc) => {
                        i = inc.end;
                        found.push(inc);
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    found
}

fn skip_line(text: &str, i: usize) -> usize {
    text.get(i..)
        .and_then(|rest| rest.find('\n'))
        .map_or(text.len(), |n| i + n + 1)
}

fn parse_include(text: &str, start: usize) -> Option<Include> {
    let rest = text.get(start + "include".len()..)?;
    let trimmed = rest.trim_start_matches([' ', '\t']);
    if trimmed.len() == rest.len() {
        return None;
    }
    let mut pos = start + "include".len() + (rest.len() - trimmed.len());
    let mut required = false;
    let mut parens = 0;
    loop {
        let t = text.get(pos..)?;
        if let Some(after) = t.strip_prefix("required(") {
            required = true;
            parens += 1;
            pos = text.len() - after.len();
        } else if let Some(after) = t.strip_prefix("file(") {
            parens += 1;
            pos = text.len() - after.len();
        } else {
            break;
        }
    }
    let t = text.get(pos..)?.strip_prefix('"')?;
    let close = t.find('"')?;
    let path = t.get(..close)?.to_owned();
    pos += 1 + close + 1;
    for _ in 0..parens {
        pos += text.get(pos..)?.strip_prefix(')').map(|_| 1)?;
    }
    Some(Include {
        start,
        end: pos,
        path,
        required,
    })
}

/// Reads a HOCON document into entries. `env` resolves `${VAR}` substitutions; include
/// directives must have been expanded by the caller (see [`find_includes`]).
pub fn parse_hocon(text: &str, env: &BTreeMap<String, String>) -> Result<Vec<Entry>, ConfigIssue> {
    if let Some(include) = find_includes(text).first() {
        return Err(ConfigIssue {
            source: None,
            line: Some(
                text.get(..include.start)
                    .map_or(0, |t| t.matches('\n').count())
                    + 1,
            ),
            key: None,
            message: format!(
                "include \"{}\" was not expanded (includes are read by the broker, not the parser)",
                include.path
            ),
        });
    }
    // The parser takes its own (unordered) map type; it only looks keys up, so no order
    // can show through.
    let opts = hocon::ParseOptions::defaults()
        .with_env(env.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let parsed = hocon::parse_string_with_options(text, opts).map_err(|e| ConfigIssue {
        source: None,
        line: hocon_error_line(&e),
        key: None,
        message: format!("not valid HOCON: {e}"),
    })?;
    let mut entries = Vec::new();
    for key in parsed.keys() {
        if let Some(value) = parsed.get(key) {
            flatten(text, key, value, &mut entries);
        }
    }
    Ok(entries)
}

fn hocon_error_line(e: &hocon::HoconError) -> Option<usize> {
    // The error's text carries "at LINE:COL"; keep it rather than depend on variants.
    let text = e.to_string();
    let at = text.find(" at ")?;
    let digits: String = text
        .get(at + 4..)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn to_raw(value: &hocon::HoconValue) -> Raw {
    match value {
        hocon::HoconValue::Object(map) => {
            Raw::Object(map.iter().map(|(k, v)| (k.clone(), to_raw(v))).collect())
        }
        hocon::HoconValue::Array(items) => Raw::List(items.iter().map(to_raw).collect()),
        hocon::HoconValue::Scalar(s) => match s.value_type {
            hocon::ScalarType::String => Raw::Str(s.raw.clone()),
            hocon::ScalarType::Number => Raw::Num(s.raw.clone()),
            hocon::ScalarType::Boolean => Raw::Bool(s.raw == "true"),
            hocon::ScalarType::Null => Raw::Null,
            _ => Raw::Str(s.raw.clone()),
        },
        _ => Raw::Null,
    }
}

/// Objects become dotted keys; lists stay whole (forwards, subscriptions, log.to).
fn flatten(text: &str, path: &str, value: &hocon::HoconValue, out: &mut Vec<Entry>) {
    match value {
        hocon::HoconValue::Object(map) => {
            // An empty section still means "present" (NanoMQ: a section turns its feature on).
            out.push(Entry {
                key: path.to_owned(),
                value: Raw::Object(Vec::new()),
                line: find_line(text, path),
            });
            for (k, v) in map {
                flatten(text, &format!("{path}.{k}"), v, out);
            }
        }
        other => out.push(Entry {
            key: path.to_owned(),
            value: to_raw(other),
            line: find_line(text, path),
        }),
    }
}

/// The line where a dotted key is written: the last segment as a key, searched after the
/// line of its parent so that `port` finds the right section's `port`.
fn find_line(text: &str, path: &str) -> Option<usize> {
    let mut from = 0usize;
    let mut found = None;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, seg) in segments.iter().enumerate() {
        // A dotted key written in one piece (`a.b.c = 1`).
        let rest = segments.get(i..).map(|s| s.join(".")).unwrap_or_default();
        if let Some(line) = key_line(text, &rest, from) {
            return Some(line);
        }
        match key_line(text, seg, from) {
            Some(line) => {
                found = Some(line);
                from = line;
            }
            None => return found,
        }
    }
    found
}

fn key_line(text: &str, key: &str, after_line: usize) -> Option<usize> {
    for (i, line) in text.lines().enumerate().skip(after_line.saturating_sub(1)) {
        let trimmed = line.trim_start();
        let unquoted = trimmed
            .strip_prefix('"')
            .and_then(|t| t.strip_prefix(key))
            .and_then(|t| t.strip_prefix('"'));
        let rest = unquoted.or_else(|| trimmed.strip_prefix(key));
        if let Some(rest) = rest
            && rest.trim_start().starts_with(['=', ':', '{', '['])
        {
            return Some(i + 1);
        }
    }
    None
}

/// Reads NanoMQ's `key=value` format: one setting per line, `#` starts a comment line,
/// spaces around `=` allowed.
pub fn parse_key_value(text: &str) -> Result<Vec<Entry>, ConfigIssue> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            return Err(ConfigIssue {
                source: None,
                line: Some(i + 1),
                key: None,
                message: format!("expected key=value, found {trimmed:?}"),
            });
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigIssue {
                source: None,
                line: Some(i + 1),
                key: None,
                message: "empty key before '='".to_owned(),
            });
        }
        entries.push(Entry {
            key: key.to_owned(),
            value: Raw::Str(value.trim().to_owned()),
            line: Some(i + 1),
        });
    }
    Ok(entries)
}

/// The settings NanoMQ reads from its environment, by variable name suffix (after `NANOMQ_`
/// or `TIDEMQ_`), and the key each sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("BROKER_URL", "url"),
    ("DAEMON", "daemon"),
    ("NUM_TASKQ_THREAD", "num_taskq_thread"),
    ("MAX_TASKQ_THREAD", "max_taskq_thread"),
    ("PARALLEL", "parallel"),
    ("PROPERTY_SIZE", "property_size"),
    ("MAX_PACKET_SIZE", "max_packet_size"),
    ("MSQ_LEN", "msq_len"),
    ("QOS_DURATION", "qos_duration"),
    ("ALLOW_ANONYMOUS", "allow_anonymous"),
    ("TCP_ENABLE", "tcp.enable"),
    ("WEBSOCKET_ENABLE", "websocket.enable"),
    ("WEBSOCKET_URL", "websocket.url"),
    ("WEBSOCKET_TLS_URL", "websocket.tls_url"),
    ("HTTP_SERVER_ENABLE", "http_server.enable"),
    ("HTTP_SERVER_PORT", "http_server.port"),
    ("HTTP_SERVER_USERNAME", "http_server.username"),
    ("HTTP_SERVER_PASSWORD", "http_server.password"),
    ("HTTP_SERVER_AUTH_TYPE", "http_server.auth_type"),
    (
        "HTTP_SERVER_JWT_PUBLIC_KEYFILE",
        "http_server.jwt.public.keyfile",
    ),
    ("TLS_ENABLE", "tls.enable"),
    ("TLS_URL", "tls.url"),
    ("TLS_CA_CERT_PATH", "tls.cacertfile"),
    ("TLS_CERT_PATH", "tls.certfile"),
    ("TLS_KEY_PATH", "tls.keyfile"),
    ("TLS_KEY_PASSWORD", "tls.key_password"),
    ("TLS_VERIFY_PEER", "tls.verify_peer"),
    ("TLS_FAIL_IF_NO_PEER_CERT", "tls.fail_if_no_peer_cert"),
    ("LOG_LEVEL", "log.level"),
    ("LOG_TO", "log.to"),
    ("LOG_DIR", "log.dir"),
    ("LOG_FILE", "log.file"),
];

/// Entries for the NanoMQ / TideMQ environment variables present in `env`. A `TIDEMQ_`
/// variable wins over the `NANOMQ_` one of the same name.
pub fn env_entries(env: &BTreeMap<String, String>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (suffix, key) in ENV_KEYS {
        for prefix in ["NANOMQ_", "TIDEMQ_"] {
            if let Some(v) = env.get(&format!("{prefix}{suffix}")) {
                out.push(Entry {
                    key: (*key).to_owned(),
                    value: Raw::Str(v.clone()),
                    line: None,
                });
            }
        }
    }
    out
}
