//! The v4 API's bridges: their settings (`GET /bridges`), a new setting for one
//! (`PUT /bridges/{name}`, saved, then that bridge alone restarts keeping its outbox), the
//! switch (off: the link is closed and not retried, messages keep going to the outbox; on:
//! it connects at once and the outbox drains), and remote subscriptions added or removed
//! while it runs.

use serde_json::Value;

use super::Broker;
use crate::admin::v4::{V4Reply, bad_params};
use crate::admin::{self, V4Write, code, v4_body};
use crate::bridge::Link;
use crate::codec::{Packet, Properties, ReasonOnly, Subscribe, SubscriptionOptions, Unsubscribe};
use crate::ids::BridgeId;

impl Broker {
    fn running_bridge(&self, name: &str) -> Option<BridgeId> {
        self.bridge_ids.get(name).copied()
    }

    /// Configured bridges (all, or the one named) in v4's shape; a running bridge shows its
    /// live settings, `enable` says whether it is on (configuration and switch).
    pub(super) fn v4_bridge_nodes(&self, only: Option<&str>) -> Vec<Value> {
        self.config
            .bridges
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, configured)| {
                let running = self
                    .running_bridge(name)
                    .and_then(|id| self.bridges.get(&id));
                let (settings, enable) = match running {
                    Some(b) => (&b.config, !b.switched_off),
                    None => (configured, false),
                };
                admin::bridge_node(name, settings, enable)
            })
            .collect()
    }

    /// A configured bridge's running id, or the reply saying why there is none: 404 + 115
    /// for an unknown name, 400 + 108 for one disabled in the configuration.
    fn switchable(&self, name: &str) -> Result<BridgeId, V4Reply> {
        if !self.config.bridges.contains_key(name) {
            return Err(V4Reply::code(404, code::ILLEGAL_SUBJECT));
        }
        self.running_bridge(name).ok_or_else(bad_params)
    }

    pub(super) fn v4_update_bridge(
        &mut self,
        req_id: u64,
        name: &str,
        body: &[u8],
    ) -> Result<Option<V4Reply>, V4Reply> {
        let o = v4_body::object(body)?;
        let (Some(data), 1) = (o.get(name), o.len()) else {
            return Err(bad_params());
        };
        if !self.config.bridges.contains_key(name) {
            return Err(V4Reply::code(404, code::ILLEGAL_SUBJECT));
        }
        let data = data.clone();
        self.v4_write(req_id, V4Write::Bridge(name.to_owned()), data)
    }

    pub(super) fn v4_switch_bridge(&mut self, name: &str, body: &[u8]) -> Result<V4Reply, V4Reply> {
        if !self.config.bridges.contains_key(name) {
            return Err(V4Reply::code(404, code::ILLEGAL_SUBJECT));
        }
        let on = v4_body::bridge_switch(body)?;
        let id = self.switchable(name)?;
        let now = self.now;
        let Some(b) = self.bridges.get_mut(&id) else {
            return Err(bad_params());
        };
        if on {
            if b.switched_off {
                b.switched_off = false;
                if b.link == Link::Down {
                    b.attempts = 0;
                    b.retry_at = now;
                }
            }
        } else if !b.switched_off {
            b.switched_off = true;
            let link = b.link;
            if link == Link::Up {
                self.bridge_send(id, &Packet::Disconnect(ReasonOnly::default()));
            }
            if link != Link::Down {
                self.bridge_link_down(id, "switched off through the admin API", true);
            }
        }
        self.arm_bridge_timer(id);
        Ok(V4Reply::ok())
    }

    pub(super) fn v4_bridge_subscribe(
        &mut self,
        name: &str,
        body: &[u8],
    ) -> Result<V4Reply, V4Reply> {
        if !self.config.bridges.contains_key(name) {
            return Err(V4Reply::code(404, code::ILLEGAL_SUBJECT));
        }
        let subs = v4_body::bridge_subscriptions(body, self.config.max_topic_levels as usize)?;
        let id = self.switchable(name)?;
        let Some(b) = self.bridges.get_mut(&id) else {
            return Err(bad_params());
        };
        let mut fresh = Vec::new();
        for s in subs {
            b.config
                .subscription
                .retain(|old| old.remote_topic != s.remote_topic);
            fresh.push(s.clone());
            b.config.subscription.push(s);
        }
        // Subscribed now when the link is up and no other (un)subscribe is outstanding;
        // otherwise at the next connect, which subscribes to them all.
        if b.link == Link::Up && b.subscribe_id.is_none() {
            let filters: Vec<(String, SubscriptionOptions)> =
                fresh.iter().map(crate::bridge::remote_filter).collect();
            if let Some(packet_id) = b.inflight.allocate_packet_id(None) {
                b.subscribe_id = Some(packet_id);
                b.subscribe_len = filters.len();
                let packet = Packet::Subscribe(Subscribe {
                    packet_id,
                    properties: Properties::default(),
                    filters,
                });
                self.bridge_send(id, &packet);
            }
        }
        Ok(V4Reply::ok())
    }

    pub(super) fn v4_bridge_unsubscribe(
        &mut self,
        name: &str,
        body: &[u8],
    ) -> Result<V4Reply, V4Reply> {
        if !self.config.bridges.contains_key(name) {
            return Err(V4Reply::code(404, code::ILLEGAL_SUBJECT));
        }
        let topics = v4_body::bridge_unsubscriptions(body)?;
        let id = self.switchable(name)?;
        let Some(b) = self.bridges.get_mut(&id) else {
            return Err(bad_params());
        };
        b.config
            .subscription
            .retain(|s| !topics.contains(&s.remote_topic));
        if b.link == Link::Up
            && b.subscribe_id.is_none()
            && let Some(packet_id) = b.inflight.allocate_packet_id(None)
        {
            // Reserved until the UNSUBACK (see `bridging.rs`), so no PUBLISH takes it.
            b.subscribe_id = Some(packet_id);
            let packet = Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties: Properties::default(),
                filters: topics,
            });
            self.bridge_send(id, &packet);
        }
        Ok(V4Reply::ok())
    }
}
