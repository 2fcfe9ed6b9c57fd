//! `tidemq ctl`: the common admin queries for someone on the box, over the local admin HTTP
//! API v4 (plain HTTP/1.0, like `tidemq healthcheck`, so it needs no curl): clients,
//! subscriptions, kick, and the metrics text.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// What to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Clients,
    /// Every subscription, or one client's.
    Subscriptions(Option<String>),
    Kick {
        client_id: String,
        keep_session: bool,
    },
    Metrics,
}

/// Where and as whom.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` of the admin API.
    pub authority: String,
    pub username: String,
    pub password: String,
    pub timeout: Duration,
}

/// The most of an answer read.
const MAX_RESPONSE: u64 = 64 * 1024 * 1024;

/// Runs `query`; the text to print, or why it failed.
pub fn run(target: &Target, query: &Query, json: bool) -> Result<String, String> {
    let (method, path) = match query {
        Query::Clients => ("GET", "/api/v4/clients".to_owned()),
        Query::Subscriptions(None) => ("GET", "/api/v4/subscriptions".to_owned()),
        Query::Subscriptions(Some(id)) => ("GET", format!("/api/v4/subscriptions/{}", encode(id))),
        Query::Kick {
            client_id,
            keep_session,
        } => (
            "DELETE",
            format!(
                "/api/v4/clients/{}{}",
                encode(client_id),
                if *keep_session {
                    "?keep_session=true"
                } else {
                    ""
                }
            ),
        ),
        Query::Metrics => ("GET", "/metrics".to_owned()),
    };
    let (status, body) = request(target, method, &path)?;
    if *query == Query::Metrics {
        return match status {
            200 => Ok(body),
            _ => Err(format!("{method} {path}: {status} {}", body.trim())),
        };
    }
    let reply: Value = serde_json::from_str(&body)
        .map_err(|_| format!("{method} {path}: {status} {}", body.trim()))?;
    let code = reply.get("code").and_then(Value::as_i64);
    if status != 200 || code != Some(0) {
        let what = match (status, code) {
            (401, _) => "not authorized: check http_server.username / password or --user".into(),
            (404, _) => "no such client (or not connected)".into(),
            _ => format!("{status} {}", body.trim()),
        };
        return Err(format!("{method} {path}: {what}"));
    }
    if json {
        return Ok(serde_json::to_string_pretty(&reply).unwrap_or_default());
    }
    let rows = reply
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(match query {
        Query::Clients => table(
            &["CLIENT ID", "USERNAME", "STATE", "PROTOCOL", "KEEPALIVE"],
            &rows,
            &[
                "client_id",
                "username",
                "conn_state",
                "proto_ver",
                "keepalive",
            ],
        ),
        Query::Subscriptions(_) => table(
            &["CLIENT ID", "TOPIC", "QOS"],
            &rows,
            &["clientid", "topic", "qos"],
        ),
        Query::Kick { client_id, .. } => format!("kicked {client_id}"),
        Query::Metrics => String::new(),
    })
}

/// Tab-separated columns under a header, one row per item.
fn table(header: &[&str], rows: &[Value], keys: &[&str]) -> String {
    let mut out = header.join("\t");
    for row in rows {
        out.push('\n');
        let cells: Vec<String> = keys
            .iter()
            .map(|k| match row.get(*k) {
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            })
            .collect();
        out.push_str(&cells.join("\t"));
    }
    out
}

/// A path segment, percent-encoded except for unreserved characters.
fn encode(segment: &str) -> String {
    let mut out = String::new();
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.0 request with Basic credentials: status and body.
fn request(target: &Target, method: &str, path: &str) -> Result<(u16, String), String> {
    let authority = &target.authority;
    let mut stream = crate::health::connect_within(authority, target.timeout)
        .map_err(|e| format!("{e} (is the broker running with http_server on?)"))?;
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", target.username, target.password));
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: tidemq-ctl\r\n\
         Authorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| format!("{authority}: {e}"))?;
    crate::health::parse_response(&response)
        .ok_or_else(|| format!("{authority}: not an HTTP response"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_are_percent_encoded_and_tables_keep_column_order() {
        assert_eq!(encode("a/b c%"), "a%2Fb%20c%25");
        assert_eq!(encode("dev-1.x_~"), "dev-1.x_~");
        let rows = [json!({"clientid": "c", "topic": "t/#", "qos": 1})];
        assert_eq!(
            table(
                &["ID", "TOPIC", "QOS"],
                &rows,
                &["clientid", "topic", "qos"]
            ),
            "ID\tTOPIC\tQOS\nc\tt/#\t1"
        );
    }
}
