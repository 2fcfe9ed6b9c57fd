//! Client lifecycle events: `$SYS/brokers/client_status` (NanoMQ 0.24.1 on, with `status`
//! first) and the older `$SYS/brokers/connected` and `$SYS/brokers/disconnected` (the same
//! payloads without `status`), with NanoMQ's keys in NanoMQ's order, but real JSON escaping
//! and no truncation.

use serde::Serialize;

pub(crate) const CONNECTED_TOPIC: &str = "$SYS/brokers/connected";
pub(crate) const DISCONNECTED_TOPIC: &str = "$SYS/brokers/disconnected";
pub(crate) const CLIENT_STATUS_TOPIC: &str = "$SYS/brokers/client_status";

#[derive(Serialize)]
pub(crate) struct Connected<'a> {
    /// `online` on `client_status`; absent on the older topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    pub username: &'a str,
    pub ts: u64,
    pub proto_name: &'a str,
    pub keepalive: u16,
    pub return_code: String,
    pub proto_ver: u8,
    pub client_id: &'a str,
    pub clean_start: u8,
    #[serde(rename = "IPv4")]
    pub ip: &'a str,
}

#[derive(Serialize)]
pub(crate) struct Disconnected<'a> {
    /// `offline` on `client_status`; absent on the older topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    pub username: &'a str,
    pub ts: u64,
    pub reason_code: String,
    pub client_id: &'a str,
    #[serde(rename = "IPv4")]
    pub ip: &'a str,
}

/// Topics only the broker publishes to: clients may not, not even through a will.
pub(crate) fn is_reserved(topic: &str) -> bool {
    topic.starts_with("$SYS")
}

/// The address part of `ip:port` (also for `[v6]:port`).
pub(crate) fn ip_of(peer: &str) -> &str {
    match peer.rsplit_once(':') {
        Some((ip, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            ip.trim_start_matches('[').trim_end_matches(']')
        }
        _ => peer,
    }
}
