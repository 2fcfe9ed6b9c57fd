//! Addresses in NanoMQ's URL form, for listeners and bridges alike: `nmq-tcp://host:port`,
//! `tls+mqtt-tcp://host:port`, `nmq-ws://host:port/mqtt`, their aliases, or a bare
//! `host:port` (TCP). The one parser; the runtime resolves what it returns.

/// How a connection speaks: MQTT straight over TCP, over TLS, over WebSocket, or over
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

const SCHEMES: &[(&str, Transport)] = &[
    ("nmq-tcp://", Transport::Tcp),
    ("broker+tcp://", Transport::Tcp),
    ("mqtt-tcp://", Transport::Tcp),
    ("tcp://", Transport::Tcp),
    ("tls+nmq-tcp://", Transport::Tls),
    ("tls+broker+tcp://", Transport::Tls),
    ("tls+mqtt-tcp://", Transport::Tls),
    ("mqtts://", Transport::Tls),
    ("nmq-ws://", Transport::Ws),
    ("nmq+ws://", Transport::Ws),
    ("ws://", Transport::Ws),
    ("nmq-wss://", Transport::Wss),
    ("nmq+wss://", Transport::Wss),
    ("wss://", Transport::Wss),
];

/// An address split into its parts; `host_port` is not resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    pub transport: Transport,
    pub host_port: &'a str,
    /// Everything from the first `/` after the host (a WebSocket path), or empty.
    pub path: &'a str,
}

/// Splits an address; an unknown `scheme://` is an error.
pub fn parse(text: &str) -> Result<Address<'_>, String> {
    let (transport, rest) = SCHEMES
        .iter()
        .find_map(|(scheme, t)| text.strip_prefix(scheme).map(|rest| (*t, rest)))
        .unwrap_or((Transport::Tcp, text));
    if rest.contains("://") {
        return Err(format!(
            "{text:?}: unsupported scheme (expected nmq-tcp://, tls+nmq-tcp://, nmq-ws://, \
             nmq-wss://, mqtt-tcp:// or tls+mqtt-tcp://)"
        ));
    }
    let (host_port, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    Ok(Address {
        transport,
        host_port,
        path,
    })
}

/// Whether an address asks for TLS (an unreadable one does not).
pub fn wants_tls(text: &str) -> bool {
    parse(text).is_ok_and(|a| a.transport.uses_tls())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_bare_addresses() {
        let a = parse("tls+mqtt-tcp://example.org:8883").unwrap();
        assert_eq!(a.transport, Transport::Tls);
        assert_eq!(a.host_port, "example.org:8883");
        assert_eq!(parse("127.0.0.1:1883").unwrap().transport, Transport::Tcp);
        let ws = parse("nmq-ws://0.0.0.0:8083/mqtt").unwrap();
        assert_eq!((ws.transport, ws.path), (Transport::Ws, "/mqtt"));
        assert!(wants_tls("mqtts://h:1"));
        assert!(!wants_tls("mqtt-tcp://h:1"));
        assert!(parse("http://h:1").is_err());
    }
}
