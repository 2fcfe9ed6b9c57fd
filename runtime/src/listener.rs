//! Listener addresses in NanoMQ's URL form.

use std::net::SocketAddr;

/// A TCP listener address taken from a NanoMQ-style URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerUrl {
    pub addr: SocketAddr,
}

/// Parses `nmq-tcp://host:port` (also `broker+tcp://`, `mqtt-tcp://`, `tcp://`, or a bare
/// `host:port`).
pub fn parse_listener_url(url: &str) -> Result<ListenerUrl, String> {
    let rest = ["nmq-tcp://", "broker+tcp://", "mqtt-tcp://", "tcp://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .unwrap_or(url);
    if rest.contains("://") {
        return Err(format!(
            "listener URL {url:?}: unsupported scheme (expected nmq-tcp://host:port)"
        ));
    }
    let addr = rest.parse::<SocketAddr>().map_err(|e| {
        format!(
            "listener URL {url:?}: {e} (expected nmq-tcp://host:port, e.g. nmq-tcp://0.0.0.0:1883)"
        )
    })?;
    Ok(ListenerUrl { addr })
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
            assert_eq!(
                parse_listener_url(url).unwrap().addr,
                "0.0.0.0:1883".parse().unwrap()
            );
        }
        assert!(parse_listener_url("nmq-ws://0.0.0.0:8083/mqtt").is_err());
        assert!(parse_listener_url("nmq-tcp://nowhere").is_err());
    }
}
