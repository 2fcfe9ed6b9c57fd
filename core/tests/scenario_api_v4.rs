//! The HTTP API v4 on the pure core: routing (every route, methods, percent-decoding),
//! filters and their bad values, paging, kick, publish and subscribe on a client's behalf,
//! configuration writes and restarts, bridges, metrics.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod harness;

use bytes::Bytes;
use harness::*;
use serde_json::{Value, json};
use tidemq_core::admin::v4::{ROUTES, route};
use tidemq_core::admin::{ControlAction, Credentials};
use tidemq_core::codec::{Packet, ProtocolVersion, QoS};
use tidemq_core::config::{BridgeConfig, BridgeForward};
use tidemq_core::{Config, Input, Output};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

fn creds() -> Credentials {
    Credentials {
        // admin:public
        authorization: Some("Basic YWRtaW46cHVibGlj".to_owned()),
        jwt: None,
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
    fn code(&self) -> u64 {
        self.json()["code"].as_u64().unwrap()
    }
}

struct Api {
    next: u64,
}

impl Api {
    fn new() -> Api {
        Api { next: 1000 }
    }

    /// Sends one request; returns its reply if it came in this input.
    fn try_call(
        &mut self,
        h: &mut Harness,
        method: &str,
        target: &str,
        body: &str,
    ) -> (u64, Option<Reply>) {
        self.next += 1;
        let req_id = self.next;
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let from = h.log.len();
        h.input(Input::AdminV4 {
            req_id,
            credentials: creds(),
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        });
        (req_id, reply_of(&h.log[from..], req_id))
    }

    fn call(&mut self, h: &mut Harness, method: &str, target: &str, body: &str) -> Reply {
        let (_, reply) = self.try_call(h, method, target, body);
        reply.unwrap_or_else(|| panic!("{method} {target}: no reply"))
    }

    fn get(&mut self, h: &mut Harness, target: &str) -> Reply {
        self.call(h, "GET", target, "")
    }
}

fn reply_of(log: &[Output], req_id: u64) -> Option<Reply> {
    let replies: Vec<Reply> = log
        .iter()
        .filter_map(|o| match o {
            Output::AdminReply {
                req_id: r,
                status,
                body,
                content_type,
                ..
            } if *r == req_id => Some(Reply {
                status: *status,
                content_type,
                text: String::from_utf8_lossy(body).into_owned(),
            }),
            _ => None,
        })
        .collect();
    assert!(replies.len() <= 1, "answered twice");
    replies.into_iter().next()
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[key].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_route_is_routed_and_others_are_404_or_405() {
    for r in ROUTES {
        let path = r
            .path
            .replace("{clientid}", "c%2F1")
            .replace("{username}", "u")
            .replace("{section}", "basic")
            .replace("{action}", "stop")
            .replace("{name}", "b");
        let routed =
            route(r.method, &path).unwrap_or_else(|e| panic!("{} {path}: {e:?}", r.method));
        assert_eq!(routed.op, r.op);
        if r.path.contains("{clientid}") {
            assert_eq!(routed.param(), "c/1");
        }
        // A trailing slash is the same route.
        assert_eq!(route(r.method, &format!("{path}/")).unwrap().op, r.op);
    }
    for (method, path, status) in [
        ("GET", "/api/v4/nope", 404),
        ("GET", "/api/v4x", 404),
        ("GET", "/api/v5/brokers", 404),
        ("POST", "/api/v4/brokers", 404),
        ("DELETE", "/api/v4/clients", 404),
        ("GET", "/api/v4/clients/a/b", 404),
        ("PATCH", "/api/v4/brokers", 405),
        ("HEAD", "/api/v4/brokers", 405),
        ("GET", "/api/v4/clients/%ZZ", 400),
        ("GET", "/api/v4/clients/%FF", 400),
    ] {
        let e = route(method, path).expect_err(path);
        assert_eq!(e.status, status, "{method} {path}");
    }
    // `/clients/username` is the client named "username".
    assert_eq!(
        route("GET", "/api/v4/clients/username").unwrap().param(),
        "username"
    );
}

#[test]
fn credentials_are_checked_before_routing() {
    let mut h = Harness::new();
    for (auth, code) in [(None, 104), (Some("Basic YWRtaW46eA=="), 103)] {
        h.input(Input::AdminV4 {
            req_id: 1,
            credentials: Credentials {
                authorization: auth.map(str::to_owned),
                jwt: None,
            },
            method: "PATCH".into(),
            path: "/api/v4/nowhere".into(),
            query: String::new(),
            body: Bytes::from_static(b"not json"),
        });
        let r = reply_of(&h.log, 1).unwrap();
        assert_eq!((r.status, r.json()), (401, json!({ "code": code })));
        h.log.clear();
    }
}

#[test]
fn broker_and_node_information() {
    let mut h = Harness::new();
    let mut api = Api::new();
    h.input(Input::WallClock {
        unix_ms: 1_777_888_944_000,
    });
    h.client("a", V5);
    h.advance_secs(3_725);
    let r = api.get(&mut h, "/api/v4/brokers");
    let b = &r.json()["data"][0];
    assert_eq!(b["uptime"], "1 Hours, 2 minutes, 5 seconds");
    assert_eq!(b["datetime"], "2026-05-04 11:04:29");
    assert_eq!(b["node_status"], "Running");
    assert_eq!(b["sysdescr"], "NanoMQ Broker");
    let n = api.get(&mut h, "/api/v4/nodes").json();
    assert_eq!(n["data"][0]["connections"], 1);
    let e = api.get(&mut h, "/api/v4").json();
    let list = e["data"].as_array().unwrap();
    assert_eq!(list.len(), ROUTES.len());
    assert!(list.contains(&json!({"path": "/clients/:clientid", "name": "lookup_client", "method": "GET", "descr": "Lookup a client in the cluster"})));
}

fn three_clients(h: &mut Harness) {
    h.connect(
        "sensor/1",
        V5,
        true,
        ConnectOpts::default().username("alice").keep_alive(30),
    );
    h.connect(
        "sensor/2",
        V311,
        true,
        ConnectOpts::default().will("w/t", "bye", QoS::AtMostOnce, false),
    );
    let (p, _) = h.connect(
        "worker",
        V5,
        true,
        ConnectOpts::default().session_expiry(600),
    );
    h.close(p);
}

#[test]
fn client_filters_and_paging() {
    let mut h = Harness::new();
    let mut api = Api::new();
    three_clients(&mut h);
    let all = api.get(&mut h, "/api/v4/clients").json();
    assert_eq!(ids(&all, "client_id"), ["sensor/1", "sensor/2", "worker"]);
    assert!(all.get("meta").is_none());
    let first = &all["data"][0];
    assert_eq!(
        first,
        &json!({"client_id": "sensor/1", "username": "alice", "keepalive": 30, "conn_state": "connected", "clean_start": true, "proto_name": "MQTT", "proto_ver": 5})
    );
    assert_eq!(all["data"][1]["will_topic"], "w/t");
    assert_eq!(all["data"][1]["will_msg"], "bye");
    assert_eq!(all["data"][2]["conn_state"], "disconnected");
    for (q, want) in [
        ("clientid=sensor%2F1", vec!["sensor/1"]),
        ("client_id=worker", vec!["worker"]),
        ("username=alice", vec!["sensor/1"]),
        ("username=", vec!["sensor/2", "worker"]),
        ("conn_state=connected", vec!["sensor/1", "sensor/2"]),
        ("conn_state=disconnected", vec!["worker"]),
        ("clean_start=true", vec!["sensor/1", "sensor/2", "worker"]),
        ("clean_start=false", vec![]),
        ("proto_name=MQTT", vec!["sensor/1", "sensor/2", "worker"]),
        ("proto_ver=4", vec!["sensor/2"]),
        ("proto_ver=5&conn_state=connected", vec!["sensor/1"]),
        ("_like_clientid=sensor", vec!["sensor/1", "sensor/2"]),
        ("_like_username=lic", vec!["sensor/1"]),
    ] {
        let r = api.get(&mut h, &format!("/api/v4/clients?{q}")).json();
        assert_eq!(ids(&r, "client_id"), want, "{q}");
    }
    for q in [
        "nope=1",
        "conn_state=maybe",
        "clean_start=yes",
        "proto_ver=6",
        "clientid=a&clientid=b",
        "clientid=a&client_id=a",
        "_page=0",
        "_limit=0",
        "_limit=10001",
        "_page=-1",
        "_page=x",
        "clientid=%G1",
    ] {
        let r = api.get(&mut h, &format!("/api/v4/clients?{q}"));
        assert_eq!((r.status, r.json()), (400, json!({"code": 108})), "{q}");
    }
    let p = api.get(&mut h, "/api/v4/clients?_page=1&_limit=2").json();
    assert_eq!(ids(&p, "client_id"), ["sensor/1", "sensor/2"]);
    assert_eq!(
        p["meta"],
        json!({"page": 1, "limit": 2, "count": 3, "hasnext": true})
    );
    let p = api.get(&mut h, "/api/v4/clients?_page=2&_limit=2").json();
    assert_eq!(ids(&p, "client_id"), ["worker"]);
    assert_eq!(
        p["meta"],
        json!({"page": 2, "limit": 2, "count": 3, "hasnext": false})
    );
    let p = api.get(&mut h, "/api/v4/clients?_page=9").json();
    assert_eq!(
        p["meta"],
        json!({"page": 9, "limit": 100, "count": 3, "hasnext": false})
    );
    // One client (by path, percent-decoded), by user name, none.
    let one = api.get(&mut h, "/api/v4/clients/sensor%2F1").json();
    assert_eq!(ids(&one, "client_id"), ["sensor/1"]);
    let by_user = api.get(&mut h, "/api/v4/clients/username/alice").json();
    assert_eq!(ids(&by_user, "client_id"), ["sensor/1"]);
    let none = api.get(&mut h, "/api/v4/clients/ghost");
    assert_eq!(
        (none.status, none.json()),
        (200, json!({"code": 0, "data": []}))
    );
}

#[test]
fn subscription_filters_and_shape() {
    let mut h = Harness::new();
    let mut api = Api::new();
    let a = h.client("a", V5);
    let b = h.client("b", V311);
    h.subscribe(a, "x/y", QoS::AtLeastOnce);
    h.subscribe(a, "$share/g1/jobs/#", QoS::ExactlyOnce);
    h.subscribe(b, "x/y", QoS::AtMostOnce);
    let all = api.get(&mut h, "/api/v4/subscriptions");
    assert!(
        all.text.starts_with("{\"data\":"),
        "data first, as NanoMQ: {}",
        all.text
    );
    assert_eq!(
        all.json()["data"],
        json!([
            {"clientid": "a", "topic": "$share/g1/jobs/#", "qos": 2},
            {"clientid": "a", "topic": "x/y", "qos": 1},
            {"clientid": "b", "topic": "x/y", "qos": 0},
        ])
    );
    let count = |api: &mut Api, h: &mut Harness, q: &str| {
        api.get(h, &format!("/api/v4/subscriptions?{q}")).json()["data"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(count(&mut api, &mut h, "clientid=a"), 2);
    assert_eq!(count(&mut api, &mut h, "topic=x%2Fy"), 2);
    assert_eq!(count(&mut api, &mut h, "topic=jobs/%23"), 1);
    assert_eq!(count(&mut api, &mut h, "qos=0"), 1);
    assert_eq!(count(&mut api, &mut h, "share=g1"), 1);
    assert_eq!(count(&mut api, &mut h, "share=g2"), 0);
    assert_eq!(count(&mut api, &mut h, "qos=1&clientid=b"), 0);
    for q in ["qos=3", "share=a&share=b", "client=a", "_limit=x"] {
        let r = api.get(&mut h, &format!("/api/v4/subscriptions?{q}"));
        assert_eq!((r.status, r.code()), (400, 108), "{q}");
    }
    let p = api
        .get(&mut h, "/api/v4/subscriptions?_limit=1&_page=3")
        .json();
    assert_eq!(
        p["meta"],
        json!({"page": 3, "limit": 1, "count": 3, "hasnext": false})
    );
    let one = api.get(&mut h, "/api/v4/subscriptions/b").json();
    assert_eq!(
        one["data"],
        json!([{"clientid": "b", "topic": "x/y", "qos": 0}])
    );
    let tree = api.get(&mut h, "/api/v4/topic-tree").json();
    assert_eq!(
        tree["data"][0],
        json!([{"topic": "", "cld_cnt": 2, "clientid": []}])
    );
}

#[test]
fn retained_messages_are_listed_by_filter() {
    let mut h = Harness::new();
    let mut api = Api::new();
    let p = h.client("p", V5);
    for (t, m) in [
        ("site/1/status", "on"),
        ("site/2/status", "off"),
        ("other", "x"),
    ] {
        let mut msg = publish_msg(t, m, QoS::AtLeastOnce);
        msg.retain = true;
        h.publish_with(p, msg);
    }
    let r = api
        .get(&mut h, "/api/v4/retained?topic=site/%2B/status")
        .json();
    assert_eq!(
        r["data"],
        json!([
            {"topic": "site/1/status", "qos": 1, "payload": "b24=", "payload_size": 2},
            {"topic": "site/2/status", "qos": 1, "payload": "b2Zm", "payload_size": 3},
        ])
    );
    let all = api.get(&mut h, "/api/v4/retained?_limit=2").json();
    assert_eq!(
        all["meta"],
        json!({"page": 1, "limit": 2, "count": 3, "hasnext": true})
    );
    let bad = api.get(&mut h, "/api/v4/retained?topic=a/%23/b");
    assert_eq!((bad.status, bad.code()), (400, 108));
}

#[test]
fn kick_disconnects_with_0x98_and_discards_or_keeps_the_session() {
    let mut h = Harness::new();
    let mut api = Api::new();
    let watcher = h.client("watcher", V5);
    h.subscribe(watcher, "$SYS/brokers/disconnected", QoS::AtMostOnce);
    h.subscribe(watcher, "will/#", QoS::AtMostOnce);
    let (a, _) = h.connect(
        "a/b",
        V5,
        true,
        ConnectOpts::default()
            .session_expiry(600)
            .will("will/a", "gone", QoS::AtMostOnce, false),
    );
    let other = h.client("other", V5);
    h.recv(watcher);
    let r = api.call(
        &mut h,
        "DELETE",
        "/api/v4/clients/a%2Fb?keep_session=true",
        "",
    );
    assert_eq!((r.status, r.json()), (200, json!({"code": 0})));
    assert_eq!(h.disconnect_reason(a), Some(0x98));
    assert!(h.is_closed(a));
    assert!(!h.is_closed(other));
    let seen = h.publishes(watcher);
    assert!(
        seen.iter().any(|p| p.topic == "will/a"),
        "the will is published"
    );
    let sys = seen
        .iter()
        .find(|p| p.topic.ends_with("/disconnected"))
        .expect("$SYS disconnected event");
    let body: Value = serde_json::from_slice(&sys.payload).unwrap();
    assert_eq!(
        (body["client_id"].clone(), body["reason_code"].clone()),
        (json!("a/b"), json!("98"))
    );
    // Kept: offline now.
    let c = api.get(&mut h, "/api/v4/clients/a%2Fb").json();
    assert_eq!(c["data"][0]["conn_state"], "disconnected");
    // Discard the offline session; then it is gone.
    let r = api.call(&mut h, "DELETE", "/api/v4/clients/a%2Fb", "");
    assert_eq!(r.code(), 0);
    assert_eq!(
        api.get(&mut h, "/api/v4/clients/a%2Fb").json()["data"],
        json!([])
    );
    let r = api.call(&mut h, "DELETE", "/api/v4/clients/a%2Fb", "");
    assert_eq!((r.status, r.json()), (404, json!({"code": 112})));
    let r = api.call(
        &mut h,
        "DELETE",
        "/api/v4/clients/other?keep_session=maybe",
        "",
    );
    assert_eq!((r.status, r.code()), (400, 108));
    // A 3.1.1 client is closed without a DISCONNECT.
    let old = h.client("old", V311);
    api.call(&mut h, "DELETE", "/api/v4/clients/old", "");
    assert!(h.is_closed(old));
    assert!(h.recv(old).is_empty());
}

#[test]
fn publish_with_properties_reaches_a_v5_subscriber() {
    let mut h = Harness::new();
    let mut api = Api::new();
    let s = h.client("s", V5);
    h.subscribe(s, "a/#", QoS::AtLeastOnce);
    let body = json!({
        "topic": "a/b", "payload": "aGVsbG8=", "decoding": "base64", "qos": 1, "retain": true,
        "clientid": "pub",
        "properties": {
            "payload_format_indicator": 1, "message_expiry_interval": 60,
            "response_topic": "r/t", "correlation_data": "c1", "subscription_identifier": 7,
            "content_type": "text/plain", "user_properties": {"k": "v", "n": 10}
        }
    });
    let r = api.call(&mut h, "POST", "/api/v4/mqtt/publish", &body.to_string());
    assert_eq!((r.status, r.json()), (200, json!({"code": 0})));
    let got = h.publishes(s);
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.qos),
        ("a/b", &b"hello"[..], QoS::AtLeastOnce)
    );
    assert_eq!(p.properties.payload_format_indicator, Some(1));
    assert_eq!(p.properties.message_expiry_interval, Some(60));
    assert_eq!(p.properties.response_topic.as_deref(), Some("r/t"));
    assert_eq!(p.properties.correlation_data.as_deref(), Some(&b"c1"[..]));
    assert_eq!(p.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        p.properties.user_properties,
        vec![
            ("k".to_owned(), "v".to_owned()),
            ("n".to_owned(), "10".to_owned())
        ]
    );
    // Retained, and counted as received.
    assert_eq!(h.stats().retained, 1);
    // `topics`, `encoding` base64 (the broker encodes), and bad parameters: 200 + 108.
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/publish",
        r#"{"topics":"a/1,a/2","payload":"hi","encoding":"base64"}"#,
    );
    assert_eq!(r.code(), 0);
    let got: Vec<_> = h
        .publishes(s)
        .into_iter()
        .map(|p| (p.topic, p.payload))
        .collect();
    assert_eq!(
        got,
        vec![
            ("a/1".to_owned(), Bytes::from_static(b"aGk=")),
            ("a/2".to_owned(), Bytes::from_static(b"aGk="))
        ]
    );
    for bad in [
        r#"{"payload":"x"}"#,
        r#"{"topic":"a","topics":"b","payload":"x"}"#,
        r#"{"topic":"a/+","payload":"x"}"#,
        r#"{"topic":"$SYS/x","payload":"x"}"#,
        r#"{"topic":"a"}"#,
        r#"{"topic":"a","payload":"x","qos":3}"#,
        r#"{"topic":"a","payload":"!!","decoding":"base64"}"#,
        r#"{"topic":"a","payload":"x","encoding":"base64","decoding":"base64"}"#,
        r#"{"topic":"a","payload":"x","properties":{"nope":1}}"#,
        r#"{"topic":"a","payload":"x","properties":{"subscription_identifier":0}}"#,
        r##"{"topic":"a","payload":"x","properties":{"response_topic":"#"}}"##,
        r#"{"topic":"a","payload":"x","retain":"yes"}"#,
    ] {
        let r = api.call(&mut h, "POST", "/api/v4/mqtt/publish", bad);
        assert_eq!((r.status, r.json()), (200, json!({"code": 108})), "{bad}");
    }
    for bad in ["nope", "[1]", ""] {
        let r = api.call(&mut h, "POST", "/api/v4/mqtt/publish", bad);
        assert_eq!((r.status, r.json()), (400, json!({"code": 109})), "{bad}");
    }
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/publish_batch",
        r#"[{"topic":"a/3","payload":"1"},{"topic":"a/+","payload":"2"}]"#,
    );
    assert_eq!(
        r.json(),
        json!({"data": [{"topic": "a/3", "code": 0}, {"topic": "a/+", "code": 108}], "code": 0})
    );
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/publish_batch",
        r#"{"topic":"a"}"#,
    );
    assert_eq!((r.status, r.code()), (400, 109));
}

#[test]
fn publish_reply_waits_for_the_store() {
    let mut config = Config::default();
    config.persistence.enable = true;
    let mut h = Harness::with_config(config);
    let mut api = Api::new();
    let (req, reply) = api.try_call(
        &mut h,
        "POST",
        "/api/v4/mqtt/publish",
        r#"{"topic":"keep","payload":"v","retain":true,"qos":1}"#,
    );
    assert!(
        reply.is_none(),
        "answered before the retained message was stored"
    );
    let upto = h.persisted.last().unwrap().0;
    let from = h.log.len();
    h.input(Input::PersistDone { upto });
    assert_eq!(reply_of(&h.log[from..], req).unwrap().code(), 0);
}

#[test]
fn subscribe_and_unsubscribe_on_behalf_of_a_connected_client() {
    let mut h = Harness::new();
    let mut api = Api::new();
    let p = h.client("p", V5);
    let mut m = publish_msg("r/1", "kept", QoS::AtMostOnce);
    m.retain = true;
    h.publish_with(p, m);
    let c = h.client("c", V5);
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/subscribe",
        r#"{"clientid":"c","topics":"r/#,s","qos":1}"#,
    );
    assert_eq!(r.json(), json!({"code": 0}));
    // No SUBACK, the retained message.
    let got = h.recv(c);
    assert!(
        got.iter().all(|p| matches!(p, Packet::Publish(_))),
        "{got:?}"
    );
    assert_eq!(got.len(), 1);
    h.publish(p, "s", "live", QoS::AtMostOnce, false);
    assert_eq!(h.payloads(c), ["live"]);
    let subs = api.get(&mut h, "/api/v4/subscriptions/c").json();
    assert_eq!(subs["data"].as_array().unwrap().len(), 2);
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/unsubscribe",
        r#"{"clientid":"c","topic":"s"}"#,
    );
    assert_eq!(r.code(), 0);
    h.publish(p, "s", "gone", QoS::AtMostOnce, false);
    assert!(h.payloads(c).is_empty());
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/subscribe",
        r#"{"clientid":"ghost","topic":"x"}"#,
    );
    assert_eq!(r.json(), json!({"code": 112}));
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/subscribe",
        r#"{"clientid":"c","topic":"a/#/b"}"#,
    );
    assert_eq!(r.json(), json!({"code": 108}));
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/subscribe_batch",
        r#"[{"clientid":"c","topic":"t1"},{"clientid":"nobody","topic":"t2"}]"#,
    );
    assert_eq!(
        r.json(),
        json!({"code": 0, "data": [{"clientid": "c", "topic": "t1", "code": 0}, {"clientid": "nobody", "topic": "t2", "code": 112}]})
    );
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/mqtt/unsubscribe_batch",
        r#"[{"clientid":"c","topic":"t1"}]"#,
    );
    assert_eq!(r.json()["data"][0]["code"], 0);
}

fn control_of(log: &[Output]) -> Option<(u64, ControlAction)> {
    log.iter().find_map(|o| match o {
        Output::Control { req_id, action } => Some((*req_id, *action)),
        _ => None,
    })
}

fn write_of(log: &[Output]) -> Option<u64> {
    log.iter().find_map(|o| match o {
        Output::WriteConfig { req_id, .. } => Some(*req_id),
        _ => None,
    })
}

#[test]
fn configuration_reload_and_control() {
    let mut h = Harness::new();
    let mut api = Api::new();
    let cfg = api.get(&mut h, "/api/v4/configuration").json();
    assert_eq!(cfg["data"]["http_server"]["password"], "******");
    assert_eq!(cfg["data"]["basic"]["msq_len"], Config::default().msq_len);
    let sec = api.get(&mut h, "/api/v4/configuration/basic").json();
    assert_eq!(
        sec["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["basic"]
    );
    let r = api.get(&mut h, "/api/v4/configuration/nope");
    assert_eq!((r.status, r.json()), (404, json!({"code": 101})));
    let reload = api.get(&mut h, "/api/v4/reload").json();
    assert_eq!(reload["data"]["enable_mqtt_stream"], false);
    // A configuration change: checked, written, then applied and answered.
    let from = h.log.len();
    let (req, reply) = api.try_call(
        &mut h,
        "POST",
        "/api/v4/configuration",
        r#"{"data":{"basic":{"msq_len":77,"max_packet_size":64}}}"#,
    );
    assert!(reply.is_none());
    assert_eq!(write_of(&h.log[from..]), Some(req));
    let from = h.log.len();
    h.input(Input::AdminConfigWritten {
        req_id: req,
        result: Ok(()),
    });
    let r = reply_of(&h.log[from..], req).unwrap();
    assert_eq!(
        r.json(),
        json!({"code": 0, "data": {"restart_required": []}})
    );
    assert_eq!(h.broker.config().msq_len, 77);
    assert_eq!(h.broker.config().max_packet_size, 64 * 1024);
    // Refused whole: unknown field, read-only value, wrong type.
    for bad in [
        r#"{"data":{"basic":{"nope":1}}}"#,
        r#"{"data":{"basic":{"msq_len":"x"}}}"#,
        r#"{"data":{"bridge":{"nodes":[]}}}"#,
        r#"{"data":3}"#,
        r#"{}"#,
    ] {
        let r = api.call(&mut h, "POST", "/api/v4/configuration", bad);
        assert_eq!((r.status, r.code()), (400, 108), "{bad}");
    }
    // A write that fails: 500 + 118, nothing changes.
    let (req, _) = api.try_call(
        &mut h,
        "POST",
        "/api/v4/configuration",
        r#"{"data":{"basic":{"msq_len":5}}}"#,
    );
    let from = h.log.len();
    h.input(Input::AdminConfigWritten {
        req_id: req,
        result: Err("disk".into()),
    });
    let r = reply_of(&h.log[from..], req).unwrap();
    assert_eq!((r.status, r.json()), (500, json!({"code": 118})));
    assert_eq!(h.broker.config().msq_len, 77);
    // POST /reload with data: written, then a restart through the runtime.
    let (req, _) = api.try_call(
        &mut h,
        "POST",
        "/api/v4/reload",
        r#"{"data":{"allow_anonymous":false}}"#,
    );
    h.input(Input::AdminConfigWritten {
        req_id: req,
        result: Ok(()),
    });
    assert_eq!(control_of(&h.log), Some((req, ControlAction::Restart)));
    let from = h.log.len();
    h.input(Input::ControlDone {
        req_id: req,
        result: Ok(()),
    });
    assert_eq!(reply_of(&h.log[from..], req).unwrap().code(), 0);
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/reload",
        r#"{"data":{"enable_mqtt_stream":true}}"#,
    );
    assert_eq!((r.status, r.code()), (400, 108));
    let r = api.call(&mut h, "POST", "/api/v4/reload", "[]");
    assert_eq!((r.status, r.code()), (400, 109));
    // ctrl: restart answered after the reload; stop at once; anything else 404 + 101.
    h.log.clear();
    let (req, reply) = api.try_call(&mut h, "POST", "/api/v4/ctrl/restart", "");
    assert!(reply.is_none());
    assert_eq!(control_of(&h.log), Some((req, ControlAction::Restart)));
    let from = h.log.len();
    h.input(Input::ControlDone {
        req_id: req,
        result: Err("tls".into()),
    });
    let r = reply_of(&h.log[from..], req).unwrap();
    assert_eq!((r.status, r.json()), (500, json!({"code": 102})));
    h.log.clear();
    let r = api.call(&mut h, "POST", "/api/v4/ctrl/stop", "");
    assert_eq!(r.code(), 0);
    assert!(matches!(control_of(&h.log), Some((_, ControlAction::Stop))));
    let r = api.call(&mut h, "POST", "/api/v4/ctrl/pause", "");
    assert_eq!((r.status, r.json()), (404, json!({"code": 101})));
}

fn bridged() -> Harness {
    let mut config = quiet_config();
    config.bridges.insert(
        "up".into(),
        BridgeConfig {
            enable: true,
            address: "mqtt-tcp://127.0.0.1:1".into(),
            forwards: vec![BridgeForward {
                local_topic: "f/#".into(),
                ..BridgeForward::default()
            }],
            ..BridgeConfig::default()
        },
    );
    config.bridges.insert(
        "off".into(),
        BridgeConfig {
            enable: false,
            ..BridgeConfig::default()
        },
    );
    Harness::with_config(config)
}

#[test]
fn bridges_are_listed_switched_and_measured() {
    let mut h = bridged();
    let mut api = Api::new();
    let list = api.get(&mut h, "/api/v4/bridges").json();
    let nodes = list["data"]["bridge"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(
        (nodes[0]["name"].clone(), nodes[0]["enable"].clone()),
        (json!("off"), json!(false))
    );
    assert_eq!(nodes[1]["connector"]["server"], "mqtt-tcp://127.0.0.1:1");
    let one = api.get(&mut h, "/api/v4/bridges/up").json();
    assert_eq!(one["data"]["bridge"]["nodes"].as_array().unwrap().len(), 1);
    let m = api.get(&mut h, "/api/v4/metrics").json();
    assert!(m.get("code").is_none());
    assert_eq!(m["metrics"][0]["state"], "disabled");
    assert_eq!(m["metrics"][1]["name"], "up");
    // Switch off: QoS 1 messages keep going to the outbox.
    let r = api.call(
        &mut h,
        "POST",
        "/api/v4/bridges/switch/up",
        r#"{"data":{"bridge_switch":false}}"#,
    );
    assert_eq!(r.json(), json!({"code": 0}));
    let p = h.client("p", V5);
    h.publish(p, "f/1", "x", QoS::AtLeastOnce, false);
    let m = api.get(&mut h, "/api/v4/metrics").json();
    assert_eq!(
        (
            m["metrics"][1]["state"].clone(),
            m["metrics"][1]["outbox"].clone()
        ),
        (json!("disabled"), json!(1))
    );
    assert_eq!(
        api.get(&mut h, "/api/v4/bridges/up").json()["data"]["bridge"]["nodes"][0]["enable"],
        false
    );
    // No reconnect while off.
    h.log.clear();
    h.advance_secs(120);
    assert!(
        !h.log
            .iter()
            .any(|o| matches!(o, Output::BridgeConnect { .. }))
    );
    // On: it connects at once, the outbox kept.
    api.call(
        &mut h,
        "POST",
        "/api/v4/bridges/switch/up",
        r#"{"data":{"bridge_switch":true}}"#,
    );
    h.advance(1);
    let conn = h
        .log
        .iter()
        .find_map(|o| match o {
            Output::BridgeConnect { conn, .. } => Some(*conn),
            _ => None,
        })
        .expect("it connects at once");
    assert_eq!(h.broker.bridge_backlog().get("up"), Some(&(1, 0)));
    // This harness plays no remote: the attempt fails, the outbox stays.
    h.input(Input::BridgeConnectFailed {
        conn,
        error: "refused".into(),
    });
    for (path, body, status, code) in [
        (
            "/api/v4/bridges/switch/nope",
            r#"{"data":{"bridge_switch":true}}"#,
            404,
            115,
        ),
        (
            "/api/v4/bridges/switch/up",
            r#"{"data":{"bridge_switch":1}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/switch/up",
            r#"{"bridge_switch":true}"#,
            400,
            108,
        ),
        ("/api/v4/bridges/switch/up", "x", 400, 109),
        (
            "/api/v4/bridges/switch/off",
            r#"{"data":{"bridge_switch":true}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/sub/up",
            r#"{"data":{"subscription":[{"remote_topic":"c/#","qos":1}]}}"#,
            200,
            0,
        ),
        (
            "/api/v4/bridges/sub/up",
            r#"{"data":{"subscription":[{"remote_topic":"c/#/x"}]}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/unsub/up",
            r#"{"data":{"unsubscription":[{"topic":"c/#"}]}}"#,
            200,
            0,
        ),
        (
            "/api/v4/bridges/unsub/nope",
            r#"{"data":{"unsubscription":[{"topic":"c/#"}]}}"#,
            404,
            115,
        ),
    ] {
        let r = api.call(&mut h, "POST", path, body);
        assert_eq!((r.status, r.code()), (status, code), "{path} {body}");
    }
    // PUT: name must match, unknown bridge 404 + 115, then a write.
    let r = api.call(&mut h, "PUT", "/api/v4/bridges/up", r#"{"other":{}}"#);
    assert_eq!((r.status, r.code()), (400, 108));
    let r = api.call(&mut h, "PUT", "/api/v4/bridges/nope", r#"{"nope":{}}"#);
    assert_eq!((r.status, r.code()), (404, 115));
    let r = api.call(
        &mut h,
        "PUT",
        "/api/v4/bridges/up",
        r#"{"up":{"proto_ver":"x"}}"#,
    );
    assert_eq!((r.status, r.code()), (403, 108));
    let from = h.log.len();
    let (req, _) = api.try_call(
        &mut h,
        "PUT",
        "/api/v4/bridges/up",
        r#"{"up":{"name":"up","keepalive":30,"proto_ver":5}}"#,
    );
    assert_eq!(write_of(&h.log[from..]), Some(req));
    let from = h.log.len();
    h.input(Input::AdminConfigWritten {
        req_id: req,
        result: Ok(()),
    });
    assert_eq!(reply_of(&h.log[from..], req).unwrap().code(), 0);
    assert_eq!(h.broker.config().bridges["up"].proto_ver, 5);
    // The outbox survived the restart of the bridge.
    assert_eq!(h.broker.bridge_backlog().get("up"), Some(&(1, 0)));
}

#[test]
fn prometheus_text_has_nanomq_metrics_in_order() {
    let mut h = Harness::new();
    let mut api = Api::new();
    h.input(Input::ProcessStats {
        rss_bytes: 4096,
        cpu_percent: 1.5,
    });
    h.input(Input::ProcessStats {
        rss_bytes: 2048,
        cpu_percent: 0.25,
    });
    let a = h.client("a", V5);
    h.subscribe(a, "x", QoS::AtMostOnce);
    let r = api.get(&mut h, "/api/v4/prometheus");
    assert!(r.content_type.starts_with("text/plain"));
    let expected_head = "# TYPE nanomq_connections_count gauge\n# HELP nanomq_connections_count\nnanomq_connections_count 1\n\
# TYPE nanomq_connections_max gauge\n# HELP nanomq_connections_max\nnanomq_connections_max 1\n";
    assert!(r.text.starts_with(expected_head), "{}", r.text);
    assert!(r.text.contains("# TYPE nanomq_memory_usage gauge\n# HELP nanomq_memory_usage (b)\nnanomq_memory_usage 2048\n"));
    assert!(r.text.contains("nanomq_memory_usage_max 4096\n"));
    assert!(
        r.text
            .contains("# HELP nanomq_cpu_usage (%)\nnanomq_cpu_usage 0.25\n")
    );
    assert!(r.text.contains("nanomq_cpu_usage_max 1.50\n"));
    assert!(r.text.contains("# TYPE nanomq_messages_received counter\n"));
    assert!(
        r.text
            .contains("tidemq_acl_decisions_total{decision=\"deny\"} 0\n")
    );
    assert!(
        r.text
            .contains("tidemq_acl_revoked_subscriptions_total 0\n")
    );
    assert!(
        r.text
            .contains("tidemq_auth_checks_total{outcome=\"busy\"} 0\n")
    );
    let names: Vec<&str> = r
        .text
        .lines()
        .filter(|l| l.starts_with("# TYPE nanomq_"))
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(names.len(), 15);
    let m = api.get(&mut h, "/api/v4/metrics").json();
    assert_eq!(
        (m["cpuinfo"].clone(), m["memory"].clone()),
        (json!("0.25%"), json!("2048"))
    );
}

#[test]
fn auth_http_configuration_is_shown_with_header_values_masked() {
    let mut config = Config::default();
    let h = &mut config.auth.http_auth;
    h.enable = true;
    h.auth_req = Some(tidemq_core::config::HttpAuthRequest {
        url: "http://127.0.0.1:1/auth".to_owned(),
        method: "GET".to_owned(),
        headers: [("x-key".to_owned(), "hunter2".to_owned())].into(),
        params: vec![("u".to_owned(), "%u".to_owned())],
    });
    let mut h = Harness::with_config(config);
    let mut api = Api::new();
    let v = api.get(&mut h, "/api/v4/configuration/auth_http").json();
    let a = &v["data"]["auth_http"];
    assert_eq!(a["enable"], json!(true));
    assert_eq!(a["auth_req"]["url"], json!("http://127.0.0.1:1/auth"));
    assert_eq!(a["auth_req"]["params"], json!([{ "u": "%u" }]));
    assert_eq!(a["auth_req"]["headers"], json!([{ "x-key": "******" }]));
    assert_eq!(a["acl_req"], Value::Null);
    assert!(!v.to_string().contains("hunter2"));
}
