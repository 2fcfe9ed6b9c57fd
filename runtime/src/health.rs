//! Liveness and readiness: a few flags the driver sets, and the unauthenticated endpoints
//! that report them (`/healthz`, `/readyz`, `/status`, `/api/v4/health`). They say nothing
//! beyond the status, need no credentials and never ask the core. Also the client side of
//! `tidemq healthcheck`: a plain HTTP/1.0 probe, for images without curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

/// The store's part in readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StoreState {
    /// Persistence is off: nothing to wait for.
    Disabled = 0,
    Recovering = 1,
    Recovered = 2,
    /// A write or fsync failed: the broker refuses what needs the store.
    Failed = 3,
}

impl StoreState {
    fn from_u8(v: u8) -> StoreState {
        match v {
            0 => StoreState::Disabled,
            1 => StoreState::Recovering,
            2 => StoreState::Recovered,
            _ => StoreState::Failed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            StoreState::Disabled => "disabled",
            StoreState::Recovering => "recovering",
            StoreState::Recovered => "recovered",
            StoreState::Failed => "failed",
        }
    }
}

/// What the driver has reached; shared with the admin HTTP server.
#[derive(Debug)]
pub struct Readiness {
    listeners: AtomicBool,
    store: AtomicU8,
    /// The core holds the recovered state: admin requests may reach it.
    core: AtomicBool,
    draining: AtomicBool,
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ready,
    Starting,
    Draining,
    StorageFailed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Starting => "starting",
            Status::Draining => "draining",
            Status::StorageFailed => "storage_failed",
        }
    }
}

impl Readiness {
    pub fn new(persistence: bool) -> Readiness {
        let store = if persistence {
            StoreState::Recovering
        } else {
            StoreState::Disabled
        };
        Readiness {
            listeners: AtomicBool::new(false),
            store: AtomicU8::new(store as u8),
            core: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn set_listeners_bound(&self) {
        self.listeners.store(true, Ordering::Release);
    }

    pub fn set_store(&self, state: StoreState) {
        // A failed store stays failed until the process restarts.
        let _ = self
            .store
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                (old != StoreState::Failed as u8).then_some(state as u8)
            });
    }

    pub fn set_core_restored(&self) {
        self.core.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn store(&self) -> StoreState {
        StoreState::from_u8(self.store.load(Ordering::Acquire))
    }

    pub fn listeners_bound(&self) -> bool {
        self.listeners.load(Ordering::Acquire)
    }

    /// Whether admin requests may go to the core.
    pub fn core_restored(&self) -> bool {
        self.core.load(Ordering::Acquire)
    }

    pub fn status(&self) -> Status {
        if self.draining.load(Ordering::Acquire) {
            return Status::Draining;
        }
        let store = self.store();
        if store == StoreState::Failed {
            return Status::StorageFailed;
        }
        let store_ok = matches!(store, StoreState::Disabled | StoreState::Recovered);
        if store_ok && self.listeners_bound() && self.core_restored() {
            Status::Ready
        } else {
            Status::Starting
        }
    }
}

/// A health endpoint's answer: status code, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct HealthReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// The health endpoints; `None` for any other path.
pub fn endpoint(path: &str, readiness: &Readiness, host: &str) -> Option<HealthReply> {
    match path {
        "/healthz" => Some(HealthReply {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: "ok".to_owned(),
        }),
        "/readyz" | "/api/v4/health" => Some(readyz(readiness)),
        "/status" => Some(status_text(readiness, host)),
        _ => None,
    }
}

fn readyz(readiness: &Readiness) -> HealthReply {
    let status = readiness.status();
    let body = if status == Status::Ready {
        serde_json::json!({"status": "ready"})
    } else {
        let listeners = if readiness.listeners_bound() {
            "bound"
        } else {
            "pending"
        };
        serde_json::json!({
            "status": status.name(),
            "checks": {"listeners": listeners, "store": readiness.store().name()},
        })
    };
    HealthReply {
        status: if status == Status::Ready { 200 } else { 503 },
        content_type: "application/json",
        body: body.to_string(),
    }
}

/// EMQX v4's `/status` text.
fn status_text(readiness: &Readiness, host: &str) -> HealthReply {
    let status = readiness.status();
    let (code, body) = match status {
        Status::Ready => (
            200,
            format!("Node tidemq@{host} is started\ntidemq is running"),
        ),
        other => (
            503,
            format!(
                "Node tidemq@{host} is {}\ntidemq is not_running",
                other.name()
            ),
        ),
    };
    HealthReply {
        status: code,
        content_type: "text/plain; charset=utf-8",
        body,
    }
}

/// This machine's host name, for `/status` (`localhost` when it cannot be read).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The readiness URL of an admin API at `ip_addr:port`: a wildcard address is asked on
/// loopback, where a listener on every address also answers.
pub fn readyz_url(ip_addr: &str, port: u16) -> String {
    let host = match ip_addr.trim() {
        "" | "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        ip if ip.contains(':') && !ip.starts_with('[') => format!("[{ip}]"),
        ip => ip.to_owned(),
    };
    format!("http://{host}:{port}/readyz")
}

/// `GET` on an `http://host:port[/path]` URL (path `/readyz` when none is given) with a
/// plain HTTP/1.0 request: the status code and the body. Every step is bounded by `timeout`.
pub fn probe(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/readyz"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url}: expected http://host:port/path"));
    }
    let mut stream = connect_within(authority, timeout)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: tidemq-healthcheck\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(PROBE_MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(|e| format!("{authority}: {e}"))?;
    parse_response(&response).ok_or_else(|| format!("{authority}: not an HTTP response"))
}

/// The most of an answer a probe reads.
const PROBE_MAX_RESPONSE: u64 = 64 * 1024;

pub(crate) fn parse_response(bytes: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// A connection to `host:port` (each address tried in turn), with `timeout` on connecting,
/// reading and writing; the error names the address.
pub(crate) fn connect_within(authority: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .collect();
    let mut last = format!("{authority}: no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    let stream = stream.ok_or(last)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn ready_only_with_store_listeners_and_core_and_not_draining() {
        let r = Readiness::new(true);
        assert_eq!(r.status(), Status::Starting);
        let reply = endpoint("/readyz", &r, "h").unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            r#"{"status":"starting","checks":{"listeners":"pending","store":"recovering"}}"#
        );
        r.set_store(StoreState::Recovered);
        r.set_core_restored();
        assert_eq!(r.status(), Status::Starting);
        r.set_listeners_bound();
        assert_eq!(r.status(), Status::Ready);
        let reply = endpoint("/api/v4/health", &r, "h").unwrap();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, r#"{"status":"ready"}"#)
        );
        r.set_store(StoreState::Failed);
        r.set_store(StoreState::Recovered);
        assert_eq!(r.status(), Status::StorageFailed, "a failure sticks");
        r.set_draining();
        let reply = endpoint("/readyz", &r, "h").unwrap();
        assert_eq!(reply.status, 503);
        assert!(reply.body.starts_with(r#"{"status":"draining""#));
    }

    #[test]
    fn without_persistence_the_store_does_not_hold_readiness_back() {
        let r = Readiness::new(false);
        r.set_core_restored();
        r.set_listeners_bound();
        assert_eq!(r.status(), Status::Ready);
    }

    #[test]
    fn status_and_healthz_texts() {
        let r = Readiness::new(false);
        let reply = endpoint("/status", &r, "box").unwrap();
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            "Node tidemq@box is starting\ntidemq is not_running"
        );
        r.set_core_restored();
        r.set_listeners_bound();
        let reply = endpoint("/status", &r, "box").unwrap();
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "Node tidemq@box is started\ntidemq is running");
        assert_eq!(endpoint("/healthz", &r, "box").unwrap().body, "ok");
        assert!(endpoint("/api/v1", &r, "box").is_none());
        assert!(!host_name().is_empty());
    }

    #[test]
    fn probe_urls_and_responses() {
        assert_eq!(readyz_url("0.0.0.0", 8081), "http://127.0.0.1:8081/readyz");
        assert_eq!(readyz_url("::", 8081), "http://[::1]:8081/readyz");
        assert_eq!(readyz_url("fe80::1", 1), "http://[fe80::1]:1/readyz");
        assert_eq!(readyz_url("10.0.0.1", 2), "http://10.0.0.1:2/readyz");
        assert_eq!(
            parse_response(b"HTTP/1.0 503 Service Unavailable\r\nA: b\r\n\r\n{}"),
            Some((503, "{}".to_owned()))
        );
        assert_eq!(parse_response(b"SSH-2.0-x\r\n"), None);
        assert!(probe("https://127.0.0.1:1/readyz", Duration::from_secs(1)).is_err());
        assert!(probe("http://user@127.0.0.1:1/readyz", Duration::from_secs(1)).is_err());
    }
}
