//! Listener addresses in NanoMQ's URL form.

use std::net::SocketAddr;

use tidemq_core::address;
pub use tidemq_core::address::Transport;

/// A listener address taken from a NanoMQ-style URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUrl {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The WebSocket path (`/mqtt`); empty for TCP and TLS.
    pub path: String,
}

/// Parses `nmq-tcp://host:port`, `tls+nmq-tcp://host:port`, `nmq-ws://host:port/path`,
/// `nmq-wss://host:port/path` (and NanoMQ's aliases), or a bare `host:port` (TCP), with the
/// core's address parser.
pub fn parse_listener_url(url: &str) -> Result<ListenerUrl, String> {
    let parsed = address::parse(url).map_err(|e| format!("listener URL {e}"))?;
    let transport = parsed.transport;
    if !transport.uses_websocket() && !parsed.path.is_empty() {
        return Err(format!(
            "listener URL {url:?}: a path is only for WebSocket listeners"
        ));
    }
    let addr = parsed.host_port.parse::<SocketAddr>().map_err(|e| {
        format!(
            "listener URL {url:?}: {e} (expected scheme://host:port, e.g. nmq-tcp://0.0.0.0:1883)"
        )
    })?;
    let path = if transport.uses_websocket() && parsed.path.is_empty() {
        "/mqtt".to_owned()
    } else {
        parsed.path.to_owned()
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
