//! Mosquitto's `$SYS/broker/...` statistics tree: topic names and payloads as Mosquitto
//! publishes them (`src/sys_tree.c`), including the space in `retained messages/count` and
//! the 1/5/15-minute load averages (exponentially damped events per minute, `%.2f`). Each
//! topic is published only when its payload changed since the last time. Pure: the broker
//! hands in its figures and the time of the tick.

use std::collections::BTreeMap;

use crate::api::Instant;

/// What the tree shows, read from the broker at one tick.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub uptime_secs: u64,
    pub clients_connected: u64,
    pub clients_disconnected: u64,
    pub clients_expired: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub stored_messages: u64,
    pub stored_bytes: u64,
    pub publish_received: u64,
    pub publish_sent: u64,
    pub publish_dropped: u64,
    pub publish_bytes_received: u64,
    pub publish_bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub subscriptions: u64,
    pub shared_subscriptions: u64,
    pub retained: u64,
    /// Connections accepted (Mosquitto's `sockets`).
    pub sockets: u64,
    /// CONNECT packets (Mosquitto's `connections`).
    pub connects: u64,
    /// Bridges by name and whether their link is up.
    pub bridges: Vec<(String, bool)>,
}

/// The counters that get load averages, with their topic part.
const LOADS: [&str; 9] = [
    "messages/received",
    "messages/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
    "bytes/received",
    "bytes/sent",
    "sockets",
    "connections",
];

/// Windows of the load averages, in seconds, with their topic suffix.
const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

#[derive(Debug, Default)]
pub(crate) struct SysTree {
    /// Each topic's last published payload.
    published: BTreeMap<String, String>,
    /// Load averages per counter and window, and the counters at the last tick.
    loads: [[f64; 3]; LOADS.len()],
    previous: Option<(Instant, [u64; LOADS.len()])>,
    clients_max: u64,
    /// The armed tick (the timer slot).
    pub armed: Option<Instant>,
}

impl SysTree {
    /// The topics whose payload changed, with the new payloads, in topic order.
    pub fn update(&mut self, f: &Figures, now: Instant) -> Vec<(String, String)> {
        let total = f.clients_connected + f.clients_disconnected;
        self.clients_max = self.clients_max.max(total);
        let mut values: Vec<(String, String)> = vec![
            (
                "version".into(),
                format!("tidemq version {}", env!("CARGO_PKG_VERSION")),
            ),
            ("uptime".into(), format!("{} seconds", f.uptime_secs)),
            ("clients/total".into(), total.to_string()),
            ("clients/maximum".into(), self.clients_max.to_string()),
            ("clients/connected".into(), f.clients_connected.to_string()),
            ("clients/active".into(), f.clients_connected.to_string()),
            (
                "clients/disconnected".into(),
                f.clients_disconnected.to_string(),
            ),
            (
                "clients/inactive".into(),
                f.clients_disconnected.to_string(),
            ),
            ("clients/expired".into(), f.clients_expired.to_string()),
            ("messages/received".into(), f.packets_received.to_string()),
            ("messages/sent".into(), f.packets_sent.to_string()),
            ("messages/stored".into(), f.stored_messages.to_string()),
            ("store/messages/count".into(), f.stored_messages.to_string()),
            ("store/messages/bytes".into(), f.stored_bytes.to_string()),
            (
                "publish/messages/received".into(),
                f.publish_received.to_string(),
            ),
            ("publish/messages/sent".into(), f.publish_sent.to_string()),
            (
                "publish/messages/dropped".into(),
                f.publish_dropped.to_string(),
            ),
            (
                "publish/bytes/received".into(),
                f.publish_bytes_received.to_string(),
            ),
            (
                "publish/bytes/sent".into(),
                f.publish_bytes_sent.to_string(),
            ),
            ("bytes/received".into(), f.bytes_received.to_string()),
            ("bytes/sent".into(), f.bytes_sent.to_string()),
            ("subscriptions/count".into(), f.subscriptions.to_string()),
            (
                "shared_subscriptions/count".into(),
                f.shared_subscriptions.to_string(),
            ),
            ("retained messages/count".into(), f.retained.to_string()),
        ];
        for (name, up) in &f.bridges {
            values.push((
                format!("connection/{name}/state"),
                u8::from(*up).to_string(),
            ));
        }
        let counts = [
            f.packets_received,
            f.packets_sent,
            f.publish_received,
            f.publish_sent,
            f.publish_dropped,
            f.bytes_received,
            f.bytes_sent,
            f.sockets,
            f.connects,
        ];
        self.update_loads(now, counts);
        for (name, per_window) in LOADS.iter().zip(self.loads.iter()) {
            for ((_, suffix), load) in WINDOWS.iter().zip(per_window.iter()) {
                values.push((format!("load/{name}/{suffix}"), format!("{load:.2}")));
            }
        }
        let mut changed = Vec::new();
        for (name, payload) in values {
            let topic = format!("$SYS/broker/{name}");
            if self.published.get(&topic) != Some(&payload) {
                self.published.insert(topic.clone(), payload.clone());
                changed.push((topic, payload));
            }
        }
        changed.sort();
        changed
    }

    /// Mosquitto's damping: the per-minute rate over the last interval pulls each average
    /// towards it by `1 - e^(-interval/window)`.
    fn update_loads(&mut self, now: Instant, counts: [u64; LOADS.len()]) {
        if let Some((at, before)) = self.previous {
            let secs = now.since(at) as f64 / 1000.0;
            if secs > 0.0 {
                for ((load, count), before) in self.loads.iter_mut().zip(counts).zip(before) {
                    let rate = count.saturating_sub(before) as f64 * 60.0 / secs;
                    for ((window, _), value) in WINDOWS.iter().zip(load.iter_mut()) {
                        let exponent = (-secs / window).exp();
                        *value = rate + exponent * (*value - rate);
                    }
                }
            }
        }
        self.previous = Some((now, counts));
    }

    /// Forgets what was published: after `sys_interval` turned it back on, everything is
    /// published again.
    pub fn reset(&mut self) {
        self.published.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload<'a>(changed: &'a [(String, String)], topic: &str) -> Option<&'a str> {
        changed
            .iter()
            .find(|(t, _)| t == topic)
            .map(|(_, p)| p.as_str())
    }

    #[test]
    fn names_and_payloads_follow_mosquitto() {
        let mut tree = SysTree::default();
        let f = Figures {
            uptime_secs: 10,
            clients_connected: 2,
            clients_disconnected: 1,
            retained: 4,
            bridges: vec![("up".into(), true)],
            ..Figures::default()
        };
        let first = tree.update(&f, Instant(10_000));
        assert_eq!(payload(&first, "$SYS/broker/uptime"), Some("10 seconds"));
        assert_eq!(payload(&first, "$SYS/broker/clients/total"), Some("3"));
        assert_eq!(payload(&first, "$SYS/broker/clients/inactive"), Some("1"));
        assert_eq!(
            payload(&first, "$SYS/broker/retained messages/count"),
            Some("4")
        );
        assert_eq!(
            payload(&first, "$SYS/broker/connection/up/state"),
            Some("1")
        );
        assert_eq!(
            payload(&first, "$SYS/broker/load/connections/15min"),
            Some("0.00")
        );
        // Only what changed comes again.
        let f2 = Figures {
            uptime_secs: 20,
            ..f.clone()
        };
        let second = tree.update(&f2, Instant(20_000));
        assert_eq!(
            second,
            vec![("$SYS/broker/uptime".into(), "20 seconds".into())]
        );
    }

    #[test]
    fn load_averages_damp_towards_the_rate() {
        let mut tree = SysTree::default();
        let mut f = Figures::default();
        tree.update(&f, Instant(0));
        // 60 CONNECTs in 60 s: 60 per minute; the 1-minute average moves 1 - 1/e of the way.
        f.connects = 60;
        let changed = tree.update(&f, Instant(60_000));
        assert_eq!(
            payload(&changed, "$SYS/broker/load/connections/1min"),
            Some("37.93")
        );
        assert_eq!(
            payload(&changed, "$SYS/broker/load/connections/5min"),
            Some("10.88")
        );
        assert_eq!(
            payload(&changed, "$SYS/broker/load/connections/15min"),
            Some("3.87")
        );
    }
}
