//! Listener addresses in NanoMQ's URL form.

use std::net::SocketAddr;

/// How a listener speaks: MQTT straight over TCP, over TLS, over WebSocket, or over
/// WebSocket on TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    pub fn uses_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    pub fn uses_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

/// A listener address taken from a NanoMQ-style URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUrl {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The WebSocket path (`/mqtt`); empty for TCP and TLS.
    pub path: String,
}

const SCHEMES: &[(&str, Transport)] = &[
    ("nmq-tcp://", Transport::Tcp),
    ("broker+tcp://", Transport::Tcp),
    ("mqtt-tcp://", Transport::Tcp),
    ("tcp://", Transport::Tcp),
    ("tls+nmq-tcp://", Transport::Tls),
    ("tls+broker+tcp://", Transport::Tls),
    ("tls+mqtt-tcp://", Transport::Tls),
    ("nmq-ws://", Transport::Ws),
    ("nmq+ws://", Transport::Ws),
    ("ws://", Transport::Ws),
    ("nmq-wss://", Transport::Wss),
    ("nmq+wss://", Transport::Wss),
    ("wss://", Transport::Wss),
];

/// Parses `nmq-tcp://host:port`, `tls+nmq-tcp://host:port`, `nmq-ws://host:port/path`,
/// `nmq-wss://host:port/path` (and NanoMQ's aliases), or a bare `host:port` (TCP).
pub fn parse_listener_url(url: &str) -> Result<ListenerUrl, String> {
    let (transport, rest) = SCHEMES
        .iter()
        .find_map(|(scheme, t)| url.strip_prefix(scheme).map(|rest| (*t, rest)))
        .unwrap_or((Transport::Tcp, url));
    if rest.contains("://") {
        return Err(format!(
            "listener URL {url:?}: unsupported scheme (expected nmq-tcp://, tls+nmq-tcp://, nmq-ws:// or nmq-wss://)"
        ));
    }
    let (host_port, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !transport.uses_websocket() && !path.is_empty() {
        return Err(format!(
            "listener URL {url:?}: a path is only for WebSocket listeners"
        ));
    }
    let addr = host_port.parse::<SocketAddr>().map_err(|e| {
        format!(
            "listener URL {url:?}: {e} (expected scheme://host:port, e.g. nmq-tcp://0.0.0.0:1883)"
        )
    })?;
    let path = if transport.uses_websocket() && path.is_empty() {
        "/mqtt".to_owned()
    } else {
        path.to_owned()
    };
    Ok(ListenerUrl {
        transport,
        addr,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanomq_url_forms_parse() {
        for url in [
            "nmq-tcp://0.0.0.0:1883",
            "broker+tcp://0.0.0.0:1883",
            "tcp://0.0.0.0:1883",
            "0.0.0.0:1883",
        ] {
            let l = parse_listener_url(url).unwrap();
            assert_eq!(l.addr, "0.0.0.0:1883".parse().unwrap());
            assert_eq!(l.transport, Transport::Tcp);
        }
        let tls = parse_listener_url("tls+nmq-tcp://0.0.0.0:8883").unwrap();
        assert_eq!(tls.transport, Transport::Tls);
        let ws = parse_listener_url("nmq-ws://0.0.0.0:8083/mqtt").unwrap();
        assert_eq!((ws.transport, ws.path.as_str()), (Transport::Ws, "/mqtt"));
        let wss = parse_listener_url("nmq-wss://127.0.0.1:8084").unwrap();
        assert_eq!(
            (wss.transport, wss.path.as_str()),
            (Transport::Wss, "/mqtt")
        );
        assert!(parse_listener_url("nmq-tcp://nowhere").is_err());
        assert!(parse_listener_url("nmq-tcp://0.0.0.0:1883/mqtt").is_err());
        assert!(parse_listener_url("http://0.0.0.0:1883").is_err());
    }
}
