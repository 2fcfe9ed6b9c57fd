//! The v4 API's MQTT side: `mqtt/publish[_batch]` through the broker's own routing (retained
//! store, subscriptions, bridges; the reply waits for the store like a PUBACK would), and
//! `mqtt/subscribe|unsubscribe[_batch]` for a connected client through the same path as its
//! own SUBSCRIBE (retained messages included; no SUBACK is sent to it).

use serde_json::{Value, json};

use super::Broker;
use super::subscribe::Added;
use crate::admin::code;
use crate::admin::v4::V4Reply;
use crate::admin::v4_body::{self, Limits, PublishRequest, SubscribeRequest};
use crate::codec::{QoS, SubscriptionOptions, reason};
use crate::message::{Content, Origin};

impl Broker {
    fn v4_limits(&self) -> Limits {
        Limits {
            max_topic_levels: self.config.max_topic_levels as usize,
            max_user_properties: self.config.property_size as usize,
            max_packet_size: self.config.max_packet_size as usize,
        }
    }

    /// One publish request; its body code.
    fn v4_publish_one(&mut self, item: &Value) -> u16 {
        let req = match PublishRequest::parse(item, self.v4_limits()) {
            Ok(req) => req,
            Err(code) => return code,
        };
        // With the store gone or full, what would need it is not accepted (as for a client).
        if self.store.refuses_new() && (req.retain || req.qos != QoS::AtMostOnce) {
            return code::UNKNOWN;
        }
        // The publisher's session, if it has one, for no-local.
        let origin = self
            .by_client_id
            .get(&req.client_id)
            .copied()
            .map_or(Origin::Admin, Origin::Session);
        for topic in &req.topics {
            let mut content = Content {
                topic: topic.clone(),
                payload: req.payload.clone(),
                qos: req.qos,
                retain: req.retain,
                properties: req.properties.clone(),
            };
            let expires_at = content.take_expiry(self.now);
            self.publish(content, origin, expires_at);
        }
        code::OK
    }

    /// `mqtt/publish`: HTTP 200 with the body code, whatever the outcome (NanoMQ).
    pub(super) fn v4_publish(&mut self, body: &[u8]) -> Result<V4Reply, V4Reply> {
        let o = v4_body::object(body)?;
        let code = self.v4_publish_one(&Value::Object(o));
        Ok(V4Reply::code(200, code))
    }

    pub(super) fn v4_publish_batch(&mut self, body: &[u8]) -> Result<V4Reply, V4Reply> {
        let items = v4_body::array(body)?;
        let results: Vec<Value> = items
            .iter()
            .map(|item| {
                let code = self.v4_publish_one(item);
                json!({ "topic": v4_body::item_topic(item), "code": code })
            })
            .collect();
        Ok(V4Reply::json(200, &json!({ "data": results, "code": 0 })))
    }

    /// One subscribe (or unsubscribe) request for a connected client; its body code.
    fn v4_subscribe_one(&mut self, item: &Value, subscribe: bool) -> u16 {
        let max_levels = self.config.max_topic_levels as usize;
        let parsed = if subscribe {
            SubscribeRequest::parse(item, max_levels)
        } else {
            SubscribeRequest::parse_unsubscribe(item)
        };
        let req = match parsed {
            Ok(req) => req,
            Err(code) => return code,
        };
        let Some(&sid) = self.by_client_id.get(&req.client_id) else {
            return code::CLIENT_OFFLINE;
        };
        let Some(session) = self.sessions.get(&sid).filter(|s| s.conn.is_some()) else {
            return code::CLIENT_OFFLINE;
        };
        let v5 = session.version.is_v5();
        let mut result = code::OK;
        for filter in &req.filters {
            if subscribe {
                let options = SubscriptionOptions {
                    qos: req.qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                };
                match self.add_subscription(sid, filter, options, None, v5) {
                    Added::Granted(_, retained) => {
                        if let Some((filter, sub)) = retained {
                            self.start_replay(sid, filter, sub);
                            self.pump(sid);
                        }
                    }
                    Added::Refused(_) | Added::SharedNoLocal => result = code::BAD_PARAMETER,
                    Added::NoSession => return code::CLIENT_OFFLINE,
                }
            } else if self.remove_subscription(sid, filter) == reason::TOPIC_FILTER_INVALID {
                result = code::BAD_PARAMETER;
            }
        }
        result
    }

    pub(super) fn v4_subscribe(
        &mut self,
        body: &[u8],
        subscribe: bool,
    ) -> Result<V4Reply, V4Reply> {
        let o = v4_body::object(body)?;
        let code = self.v4_subscribe_one(&Value::Object(o), subscribe);
        Ok(V4Reply::code(200, code))
    }

    pub(super) fn v4_subscribe_batch(
        &mut self,
        body: &[u8],
        subscribe: bool,
    ) -> Result<V4Reply, V4Reply> {
        let items = v4_body::array(body)?;
        let results: Vec<Value> = items
            .iter()
            .map(|item| {
                let code = self.v4_subscribe_one(item, subscribe);
                json!({
                    "clientid": v4_body::item_client_id(item),
                    "topic": v4_body::item_topic(item),
                    "code": code,
                })
            })
            .collect();
        Ok(V4Reply::json(200, &json!({ "code": 0, "data": results })))
    }
}
