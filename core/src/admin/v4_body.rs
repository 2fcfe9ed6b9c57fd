//! Request bodies of the v4 API: publish (NanoMQ's keys, every v5 property, base64
//! payloads), subscribe and unsubscribe on behalf of a connected client, and the bridge
//! switch and subscription bodies. Every list is bounded.

use base64::Engine;
use bytes::Bytes;
use serde_json::{Map, Value};

use super::v4::{V4Reply, not_json};
use crate::codec::{Properties, QoS};
use crate::config::BridgeSubscription;
use crate::topic;

/// Most items in one batch request, and most topics in one `topics` string.
pub const MAX_BATCH: usize = 1_000;
/// The publisher's client id when the request names none (NanoMQ's).
pub const DEFAULT_CLIENT_ID: &str = "NanoMQ-HTTP-Client";

/// Why an item was refused: the body code it gets.
pub type ItemError = u16;

/// What a publish body may contain, checked against the broker's limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_topic_levels: usize,
    pub max_user_properties: usize,
    pub max_packet_size: usize,
}

/// One `mqtt/publish` request: one message per topic.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRequest {
    pub topics: Vec<String>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub client_id: String,
    pub properties: Properties,
}

/// The JSON body: an object (or, for batches, an array), else 400 + 109.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, V4Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(not_json()),
    }
}

pub fn array(body: &[u8]) -> Result<Vec<Value>, V4Reply> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) if items.len() <= MAX_BATCH => Ok(items),
        Ok(Value::Array(_)) => Err(super::v4::bad_params()),
        _ => Err(not_json()),
    }
}

const BAD: ItemError = super::common::code::BAD_PARAMETER;

fn opt_str<'a>(o: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, ItemError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BAD),
    }
}

fn opt_u64(o: &Map<String, Value>, key: &str, max: u64) -> Result<Option<u64>, ItemError> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().filter(|n| *n <= max).map(Some).ok_or(BAD),
    }
}

fn qos(o: &Map<String, Value>) -> Result<QoS, ItemError> {
    let n = opt_u64(o, "qos", 2)?.unwrap_or(0);
    QoS::from_u8(n as u8).ok_or(BAD)
}

/// `topic` or `topics` ("a,b"): the names, each checked by `check`.
fn topic_list(
    o: &Map<String, Value>,
    check: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ItemError> {
    let list: Vec<String> = match (opt_str(o, "topic")?, opt_str(o, "topics")?) {
        (Some(t), None) => vec![t.to_owned()],
        (None, Some(ts)) => ts.split(',').map(|t| t.trim().to_owned()).collect(),
        _ => return Err(BAD),
    };
    if list.is_empty() || list.len() > MAX_BATCH || !list.iter().all(|t| check(t)) {
        return Err(BAD);
    }
    Ok(list)
}

/// The item's `topic` (or `topics`) as given, for a batch result.
pub fn item_topic(item: &Value) -> Value {
    item.get("topic")
        .or_else(|| item.get("topics"))
        .filter(|t| t.is_string())
        .cloned()
        .unwrap_or(Value::Null)
}

pub fn item_client_id(item: &Value) -> Value {
    item.get("clientid")
        .filter(|t| t.is_string())
        .cloned()
        .unwrap_or(Value::Null)
}

impl PublishRequest {
    pub fn parse(item: &Value, limits: Limits) -> Result<PublishRequest, ItemError> {
        let Value::Object(o) = item else {
            return Err(BAD);
        };
        let topics = topic_list(o, |t| {
            topic::validate_topic_name(t, limits.max_topic_levels).is_ok()
                && !crate::sys::is_reserved(t)
        })?;
        let text = opt_str(o, "payload")?.ok_or(BAD)?;
        let b64 = |k: &str| -> Result<bool, ItemError> {
            match opt_str(o, k)? {
                None | Some("plain") => Ok(false),
                Some("base64") => Ok(true),
                Some(_) => Err(BAD),
            }
        };
        // As NanoMQ's code: `decoding` base64 = the request carries base64; `encoding`
        // base64 = the broker encodes the text before publishing.
        let payload = match (b64("encoding")?, b64("decoding")?) {
            (true, true) => return Err(BAD),
            (false, true) => base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|_| BAD)?,
            (true, false) => base64::engine::general_purpose::STANDARD
                .encode(text.as_bytes())
                .into_bytes(),
            (false, false) => text.as_bytes().to_vec(),
        };
        if payload.len() > limits.max_packet_size {
            return Err(BAD);
        }
        let retain = match o.get("retain") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(BAD),
        };
        let client_id = opt_str(o, "clientid")?
            .unwrap_or(DEFAULT_CLIENT_ID)
            .to_owned();
        let properties = match o.get("properties") {
            None | Some(Value::Null) => Properties::default(),
            Some(Value::Object(p)) => properties(p, limits)?,
            Some(_) => return Err(BAD),
        };
        Ok(PublishRequest {
            topics,
            payload: Bytes::from(payload),
            qos: qos(o)?,
            retain,
            client_id,
            properties,
        })
    }
}

fn properties(p: &Map<String, Value>, limits: Limits) -> Result<Properties, ItemError> {
    const KNOWN: &[&str] = &[
        "payload_format_indicator",
        "message_expiry_interval",
        "response_topic",
        "correlation_data",
        "subscription_identifier",
        "content_type",
        "user_properties",
    ];
    if p.keys().any(|k| !KNOWN.contains(&k.as_str())) {
        return Err(BAD);
    }
    let mut out = Properties {
        payload_format_indicator: opt_u64(p, "payload_format_indicator", 1)?.map(|v| v as u8),
        message_expiry_interval: opt_u64(p, "message_expiry_interval", u64::from(u32::MAX))?
            .map(|v| v as u32),
        content_type: opt_str(p, "content_type")?.map(str::to_owned),
        correlation_data: opt_str(p, "correlation_data")?
            .map(|s| Bytes::copy_from_slice(s.as_bytes())),
        ..Properties::default()
    };
    if let Some(rt) = opt_str(p, "response_topic")? {
        topic::validate_topic_name(rt, limits.max_topic_levels).map_err(|_| BAD)?;
        out.response_topic = Some(rt.to_owned());
    }
    // Checked, not sent: subscription identifiers belong to each subscriber's subscription.
    if let Some(id) = opt_u64(p, "subscription_identifier", 268_435_455)?
        && id == 0
    {
        return Err(BAD);
    }
    match p.get("user_properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(up)) => {
            if up.len() > limits.max_user_properties {
                return Err(BAD);
            }
            for (k, v) in up {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(BAD),
                };
                out.user_properties.push((k.clone(), v));
            }
        }
        Some(_) => return Err(BAD),
    }
    Ok(out)
}

/// `mqtt/subscribe`: filters for a connected client.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub client_id: String,
    pub filters: Vec<String>,
    pub qos: QoS,
}

impl SubscribeRequest {
    pub fn parse(item: &Value, max_levels: usize) -> Result<SubscribeRequest, ItemError> {
        let Value::Object(o) = item else {
            return Err(BAD);
        };
        let client_id = opt_str(o, "clientid")?.ok_or(BAD)?.to_owned();
        let filters = topic_list(o, |f| {
            topic::parse_subscription(f, max_levels).is_ok() && !f.is_empty()
        })?;
        Ok(SubscribeRequest {
            client_id,
            filters,
            qos: qos(o)?,
        })
    }

    /// `mqtt/unsubscribe`: the same keys, without `qos`.
    pub fn parse_unsubscribe(item: &Value) -> Result<SubscribeRequest, ItemError> {
        let Value::Object(o) = item else {
            return Err(BAD);
        };
        let client_id = opt_str(o, "clientid")?.ok_or(BAD)?.to_owned();
        let filters = topic_list(o, |f| !f.is_empty())?;
        Ok(SubscribeRequest {
            client_id,
            filters,
            qos: QoS::AtMostOnce,
        })
    }
}

fn data(body: &[u8]) -> Result<Map<String, Value>, V4Reply> {
    let o = object(body)?;
    match o.get("data") {
        Some(Value::Object(d)) => Ok(d.clone()),
        _ => Err(super::v4::bad_params()),
    }
}

/// `bridges/switch/{name}`: `{"data":{"bridge_switch":bool}}`.
pub fn bridge_switch(body: &[u8]) -> Result<bool, V4Reply> {
    data(body)?
        .get("bridge_switch")
        .and_then(Value::as_bool)
        .ok_or_else(super::v4::bad_params)
}

/// `bridges/sub/{name}`: the subscriptions to add.
pub fn bridge_subscriptions(
    body: &[u8],
    max_levels: usize,
) -> Result<Vec<BridgeSubscription>, V4Reply> {
    let d = data(body)?;
    let Some(Value::Array(items)) = d.get("subscription") else {
        return Err(super::v4::bad_params());
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(super::v4::bad_params());
    }
    let mut out = Vec::new();
    for item in items {
        let Value::Object(o) = item else {
            return Err(super::v4::bad_params());
        };
        let remote = opt_str(o, "remote_topic")
            .ok()
            .flatten()
            .or_else(|| opt_str(o, "topic").ok().flatten())
            .ok_or_else(super::v4::bad_params)?;
        let local = opt_str(o, "local_topic")
            .map_err(|_| super::v4::bad_params())?
            .unwrap_or("");
        let q = opt_u64(o, "qos", 2).map_err(|_| super::v4::bad_params())?;
        if topic::validate_filter(remote, max_levels).is_err()
            || (!local.is_empty() && topic::validate_filter(local, max_levels).is_err())
        {
            return Err(super::v4::bad_params());
        }
        out.push(BridgeSubscription {
            remote_topic: remote.to_owned(),
            local_topic: local.to_owned(),
            qos: q.unwrap_or(0) as u8,
        });
    }
    Ok(out)
}

/// `bridges/unsub/{name}`: the remote filters to drop.
pub fn bridge_unsubscriptions(body: &[u8]) -> Result<Vec<String>, V4Reply> {
    let d = data(body)?;
    let Some(Value::Array(items)) = d.get("unsubscription") else {
        return Err(super::v4::bad_params());
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(super::v4::bad_params());
    }
    items
        .iter()
        .map(|i| {
            i.get("topic")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .ok_or_else(super::v4::bad_params)
        })
        .collect()
}
