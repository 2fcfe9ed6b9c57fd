//! Wills and `$SYS` events. A will is taken from CONNECT (`connect.rs`), discarded by a
//! normal DISCONNECT or a new connection, and published here: at once when its connection
//! closes, or after its delay (`expiry.rs` arms the timer), or when its session ends first.

use bytes::Bytes;

use super::Broker;
use crate::codec::{Connect, Properties, QoS, ReasonCode};
use crate::ids::SessionId;
use crate::message::{Content, Origin};
use crate::sys;

impl Broker {
    pub(super) fn publish_will(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else {
            return;
        };
        session.will_at = None;
        let Some(will) = session.will.take() else {
            return;
        };
        let mut content = Content::from_will(*will);
        let expires_at = content.take_expiry(self.now);
        self.publish(content, Origin::Session(sid), expires_at);
    }

    pub(super) fn publish_sys_connected(
        &mut self,
        client_id: &str,
        connect: &Connect,
        keep_alive: u16,
        peer: &str,
    ) {
        if !self.config.sys_events {
            return;
        }
        let wanted = [sys::CONNECTED_TOPIC, sys::CLIENT_STATUS_TOPIC].map(|t| self.sys_wanted(t));
        if wanted == [false, false] {
            return;
        }
        let mut body = sys::Connected {
            status: None,
            username: connect.username.as_deref().unwrap_or(""),
            ts: self.wall_now(),
            proto_name: connect.version.name(),
            keepalive: keep_alive,
            return_code: "0".to_owned(),
            proto_ver: connect.version.level(),
            client_id,
            clean_start: u8::from(connect.clean_start),
            ip: sys::ip_of(peer),
        };
        if wanted[0] {
            self.publish_sys(sys::CONNECTED_TOPIC, serde_json::to_vec(&body));
        }
        if wanted[1] {
            body.status = Some("online");
            self.publish_sys(sys::CLIENT_STATUS_TOPIC, serde_json::to_vec(&body));
        }
    }

    pub(super) fn publish_sys_disconnected(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        peer: &str,
        code: ReasonCode,
    ) {
        if !self.config.sys_events {
            return;
        }
        let wanted =
            [sys::DISCONNECTED_TOPIC, sys::CLIENT_STATUS_TOPIC].map(|t| self.sys_wanted(t));
        if wanted == [false, false] {
            return;
        }
        let mut body = sys::Disconnected {
            status: None,
            username: username.unwrap_or(""),
            ts: self.wall_now(),
            reason_code: format!("{code:x}"),
            client_id,
            ip: sys::ip_of(peer),
        };
        if wanted[0] {
            self.publish_sys(sys::DISCONNECTED_TOPIC, serde_json::to_vec(&body));
        }
        if wanted[1] {
            body.status = Some("offline");
            self.publish_sys(sys::CLIENT_STATUS_TOPIC, serde_json::to_vec(&body));
        }
    }

    /// Whether an event on `topic` would reach anyone: a subscription or a bridge's forward
    /// rule. Events are not retained, so one nobody would get is not built (most connects
    /// and disconnects have no watcher; the JSON was a fifth of a connection's set-up).
    fn sys_wanted(&self, topic: &str) -> bool {
        let mut matched = Vec::new();
        self.subscriptions.matches(topic, &mut matched);
        !matched.is_empty()
            || self
                .bridges
                .values()
                .any(|b| b.config.forward_rule(topic).is_some())
    }

    fn publish_sys(&mut self, topic: &str, payload: Result<Vec<u8>, serde_json::Error>) {
        let Ok(payload) = payload else {
            return;
        };
        let content = Content {
            topic: topic.to_owned(),
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        };
        self.publish(content, Origin::Broker, None);
    }
}
