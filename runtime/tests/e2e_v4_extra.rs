#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The HTTP API v4 against the real binary, beyond `e2e_api_v4.rs`: every client filter with
//! a client that matches it (3.1, 3.1.1 and 5, persistent and offline sessions), paging and
//! its `meta` on clients, subscriptions and retained messages, every subscription filter,
//! the topic tree, kick with and without `keep_session` (v5 DISCONNECT 0x98 seen by
//! mosquitto_sub and rumqttc, `$SYS` and the will, a 3.1.1 client closed), publish with
//! every property read back by a rumqttc v5 subscriber, subscribe/unsubscribe on a client's
//! behalf with delivery checked, `POST /reload` applied live, bridge remote subscriptions
//! through a real remote, and the route table's codes (wrong method, no file reading).

mod common;
mod support;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Duration;

use common::Background;
use serde_json::{Value, json};
use support::api::{Api, Remote};
use support::{Dir, Running, free_port, run, start, tool, wait_for};

/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);

fn ids(v: &Value, key: &str) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {v}"))
        .iter()
        .map(|c| c[key].as_str().unwrap().to_owned())
        .collect()
}

/// A broker with the admin API and `extra` configuration; (broker, MQTT port, API).
fn broker(dir: &Dir, extra: &str) -> (Running, u16, Api) {
    let (mqtt, http) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{mqtt}\"\nhttp_server {{\n  port = {http}\n}}\n{extra}"
        ),
    )
    .unwrap();
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), mqtt);
    wait_for("the admin API", WAIT, || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    (running, mqtt, Api { port: http })
}

/// `mosquitto_sub -d -v` on `port` (line-buffered, 30 s limit), returned once its SUBACK
/// has arrived.
fn sub(port: u16, args: &[&str]) -> Background {
    let p = port.to_string();
    let mut all = vec![
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        &p,
        "-d",
        "-v",
        "-W",
        "30",
    ];
    all.extend_from_slice(args);
    let mut proc = Background::spawn("stdbuf", &all);
    proc.wait_for_line(WAIT, |l| {
        l.starts_with("Client ") && l.ends_with("received SUBACK")
    });
    proc
}

/// `mosquitto_pub` on `port`; its success.
fn publish(port: u16, args: &[&str]) -> bool {
    run(tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args))
    .status
    .success()
}

fn must_publish(port: u16, args: &[&str]) {
    assert!(publish(port, args), "mosquitto_pub {args:?} failed");
}

/// Waits for the line `topic payload` (as `-v` prints it).
fn expect_message(s: &mut Background, topic: &str, payload: &str) {
    let want = format!("{topic} {payload}");
    s.wait_for_line(WAIT, |l| l == want);
}

/// Whether a line satisfying `pred` comes within `limit`.
fn saw_within(s: &mut Background, limit: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match s.next_line(left) {
            Some(line) if pred(&line) => return true,
            Some(_) => {}
            None => return false,
        }
    }
}

/// Publishes a marker on `marker_topic` and waits for it: everything published before it
/// to this subscriber has arrived by then (one broker, in order). Returns what it printed.
fn drain_with_marker(mqtt: u16, s: &mut Background, marker_topic: &str) -> String {
    must_publish(mqtt, &["-t", marker_topic, "-m", "marker", "-q", "1"]);
    expect_message(s, marker_topic, "marker");
    s.transcript()
}

// ----- Clients, subscriptions, retained: every filter, paging, the topic tree ------------

#[test]
fn every_client_and_subscription_filter_and_paging_with_real_clients() {
    let dir = Dir::new("v4-extra-filters");
    let (_broker, mqtt, api) = broker(&dir, "");

    // Six sessions: 5, 3.1.1 and 3.1; an id with a '/', a user name with a space; two
    // persistent sessions (clean start false), one of them offline.
    let mut durable = sub(
        mqtt,
        &[
            "-V", "mqttv5", "-i", "durable", "-c", "-x", "600", "-u", "erin", "-t", "d/#", "-q",
            "1",
        ],
    );
    let _durable4 = sub(
        mqtt,
        &[
            "-V", "mqttv311", "-i", "durable4", "-c", "-u", "frank", "-t", "e/#",
        ],
    );
    let _p3 = sub(
        mqtt,
        &[
            "-V", "mqttv31", "-i", "p3", "-u", "carol", "-t", "c/#", "-q", "2",
        ],
    );
    let _p4 = sub(
        mqtt,
        &["-V", "mqttv311", "-i", "p4", "-u", "bob", "-t", "b/+"],
    );
    let _p5 = sub(
        mqtt,
        &[
            "-V", "mqttv5", "-i", "p5", "-u", "alice", "-t", "a/#", "-q", "1",
        ],
    );
    let _site = sub(
        mqtt,
        &[
            "-V",
            "mqttv5",
            "-i",
            "site/x",
            "-u",
            "dave smith",
            "-t",
            "$share/grp/jobs/#",
            "-q",
            "1",
        ],
    );
    // Gone without DISCONNECT: its session (expiry 600 s) stays, offline.
    durable.kill();
    wait_for("the offline session", WAIT, || {
        ids(
            &api.get("/api/v4/clients?conn_state=disconnected"),
            "client_id",
        ) == ["durable"]
    });

    let all = api.get("/api/v4/clients");
    assert!(all.get("meta").is_none(), "no meta without paging: {all}");
    assert_eq!(all["code"], 0);
    assert_eq!(
        ids(&all, "client_id"),
        ["durable", "durable4", "p3", "p4", "p5", "site/x"]
    );
    assert_eq!(
        all["data"][5],
        json!({"client_id": "site/x", "username": "dave smith", "keepalive": 60,
               "conn_state": "connected", "clean_start": true, "proto_name": "MQTT", "proto_ver": 5})
    );
    assert_eq!(
        all["data"][0],
        json!({"client_id": "durable", "username": "erin", "keepalive": 60,
               "conn_state": "disconnected", "clean_start": false, "proto_name": "MQTT", "proto_ver": 5})
    );
    assert_eq!(
        (
            all["data"][2]["proto_name"].clone(),
            all["data"][2]["proto_ver"].clone()
        ),
        (json!("MQIsdp"), json!(3))
    );

    // Every filter, each with at least one match, and combined.
    for (q, want) in [
        ("clientid=p5", vec!["p5"]),
        ("clientid=site%2Fx", vec!["site/x"]),
        ("client_id=durable4", vec!["durable4"]),
        ("client_id=nobody", vec![]),
        ("username=alice", vec!["p5"]),
        ("username=dave+smith", vec!["site/x"]),
        ("username=dave%20smith", vec!["site/x"]),
        (
            "conn_state=connected",
            vec!["durable4", "p3", "p4", "p5", "site/x"],
        ),
        ("conn_state=disconnected", vec!["durable"]),
        ("clean_start=false", vec!["durable", "durable4"]),
        ("clean_start=true", vec!["p3", "p4", "p5", "site/x"]),
        ("proto_name=MQIsdp", vec!["p3"]),
        (
            "proto_name=MQTT",
            vec!["durable", "durable4", "p4", "p5", "site/x"],
        ),
        ("proto_ver=3", vec!["p3"]),
        ("proto_ver=4", vec!["durable4", "p4"]),
        ("proto_ver=5", vec!["durable", "p5", "site/x"]),
        ("_like_clientid=durable", vec!["durable", "durable4"]),
        ("_like_clientid=%2F", vec!["site/x"]),
        ("_like_username=ar", vec!["p3"]),
        ("_like_username=o", vec!["p3", "p4"]),
        (
            "proto_ver=5&clean_start=false&conn_state=disconnected",
            vec!["durable"],
        ),
        ("username=bob&proto_ver=5", vec![]),
        ("_like_clientid=p&_like_username=li", vec!["p5"]),
    ] {
        let got = api.get(&format!("/api/v4/clients?{q}"));
        assert_eq!(ids(&got, "client_id"), want, "{q}");
    }
    // Unknown filters and bad values: 400 + 108.
    for q in [
        "bogus=1",
        "clientid=a&clientid=b",
        "clientid=a&client_id=a",
        "conn_state=Connected",
        "conn_state=",
        "clean_start=TRUE",
        "clean_start=1",
        "proto_ver=2",
        "proto_ver=6",
        "_page=0",
        "_page=-1",
        "_page=x",
        "_limit=0",
        "_limit=10001",
        "_limit=%2B5",
        "clientid=%G1",
        "_like_clientid=%FF",
    ] {
        api.expect("GET", &format!("/api/v4/clients?{q}"), None, 400, 108);
    }
    // One client (percent-decoded path), by user name, none.
    assert_eq!(
        ids(&api.get("/api/v4/clients/site%2Fx"), "client_id"),
        ["site/x"]
    );
    assert_eq!(
        ids(
            &api.get("/api/v4/clients/username/dave%20smith"),
            "client_id"
        ),
        ["site/x"]
    );
    assert_eq!(
        api.get("/api/v4/clients/ghost"),
        json!({"code": 0, "data": []})
    );

    // Paging: pages in order cover the list once, with EMQX's meta.
    let mut paged = Vec::new();
    for (page, want_len, hasnext) in [(1, 2, true), (2, 2, true), (3, 2, false), (4, 0, false)] {
        let p = api.get(&format!("/api/v4/clients?_page={page}&_limit=2"));
        assert_eq!(
            p["meta"],
            json!({"page": page, "limit": 2, "count": 6, "hasnext": hasnext}),
            "page {page}"
        );
        let got = ids(&p, "client_id");
        assert_eq!(got.len(), want_len, "page {page}");
        paged.extend(got);
    }
    assert_eq!(paged, ids(&all, "client_id"));
    let p = api.get("/api/v4/clients?_page=1");
    assert_eq!(
        p["meta"],
        json!({"page": 1, "limit": 100, "count": 6, "hasnext": false})
    );
    assert_eq!(ids(&p, "client_id").len(), 6);
    let p = api.get("/api/v4/clients?_limit=5");
    assert_eq!(
        p["meta"],
        json!({"page": 1, "limit": 5, "count": 6, "hasnext": true})
    );
    assert_eq!(
        ids(&p, "client_id"),
        ["durable", "durable4", "p3", "p4", "p5"]
    );
    let p = api.get("/api/v4/clients?proto_ver=5&_limit=2&_page=2");
    assert_eq!(ids(&p, "client_id"), ["site/x"]);
    assert_eq!(
        p["meta"],
        json!({"page": 2, "limit": 2, "count": 3, "hasnext": false}),
        "count is the filtered count"
    );
    assert_eq!(
        api.get("/api/v4/clients?_limit=10000")["meta"]["limit"],
        10000
    );

    // Subscriptions: the offline session's too; data first, as NanoMQ.
    let subs = api.call("GET", "/api/v4/subscriptions", None);
    assert!(subs.text.starts_with("{\"data\":"), "{}", subs.text);
    assert!(subs.json().get("meta").is_none());
    assert_eq!(
        subs.json()["data"],
        json!([
            {"clientid": "durable", "topic": "d/#", "qos": 1},
            {"clientid": "durable4", "topic": "e/#", "qos": 0},
            {"clientid": "p3", "topic": "c/#", "qos": 2},
            {"clientid": "p4", "topic": "b/+", "qos": 0},
            {"clientid": "p5", "topic": "a/#", "qos": 1},
            {"clientid": "site/x", "topic": "$share/grp/jobs/#", "qos": 1},
        ])
    );
    for (q, want) in [
        ("clientid=p5", vec!["p5"]),
        ("clientid=site%2Fx", vec!["site/x"]),
        ("clientid=ghost", vec![]),
        ("topic=a%2F%23", vec!["p5"]),
        ("topic=b/%2B", vec!["p4"]),
        ("topic=jobs%2F%23", vec!["site/x"]),
        ("topic=a", vec![]),
        ("qos=0", vec!["durable4", "p4"]),
        ("qos=1", vec!["durable", "p5", "site/x"]),
        ("qos=2", vec!["p3"]),
        ("share=grp", vec!["site/x"]),
        ("share=other", vec![]),
        ("share=grp&qos=1&topic=jobs%2F%23", vec!["site/x"]),
        ("topic=a%2F%23&qos=0", vec![]),
        ("clientid=p5&qos=1", vec!["p5"]),
    ] {
        let got = api.get(&format!("/api/v4/subscriptions?{q}"));
        assert_eq!(ids(&got, "clientid"), want, "{q}");
    }
    for q in [
        "qos=3",
        "qos=x",
        "bogus=1",
        "username=alice",
        "share=a&share=b",
        "_limit=0",
        "_page=0",
        "topic=%ZZ",
    ] {
        api.expect("GET", &format!("/api/v4/subscriptions?{q}"), None, 400, 108);
    }
    let p = api.get("/api/v4/subscriptions?_limit=4");
    assert_eq!(ids(&p, "clientid").len(), 4);
    assert_eq!(
        p["meta"],
        json!({"page": 1, "limit": 4, "count": 6, "hasnext": true})
    );
    let p = api.get("/api/v4/subscriptions?_page=2&_limit=4");
    assert_eq!(ids(&p, "clientid"), ["p5", "site/x"]);
    assert_eq!(
        p["meta"],
        json!({"page": 2, "limit": 4, "count": 6, "hasnext": false})
    );
    let p = api.get("/api/v4/subscriptions?qos=1&_page=2&_limit=2");
    assert_eq!(ids(&p, "clientid"), ["site/x"]);
    assert_eq!(
        p["meta"],
        json!({"page": 2, "limit": 2, "count": 3, "hasnext": false})
    );
    assert_eq!(
        api.get("/api/v4/subscriptions/site%2Fx")["data"],
        json!([{"clientid": "site/x", "topic": "$share/grp/jobs/#", "qos": 1}])
    );
    assert_eq!(api.get("/api/v4/subscriptions/ghost")["data"], json!([]));

    // The topic tree, level by level, with each filter's subscriber.
    let tree = api.get("/api/v4/topic-tree")["data"].clone();
    assert_eq!(
        tree[0],
        json!([{"topic": "", "cld_cnt": 6, "clientid": []}]),
        "{tree}"
    );
    let level1: Vec<&str> = tree[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["topic"].as_str().unwrap())
        .collect();
    assert_eq!(level1, ["a", "b", "c", "d", "e", "jobs"], "{tree}");
    assert!(
        tree[1]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["cld_cnt"] == 1 && n["clientid"] == json!([])),
        "{tree}"
    );
    assert_eq!(
        tree[2],
        json!([
            {"topic": "#", "cld_cnt": 0, "clientid": ["p5"]},
            {"topic": "+", "cld_cnt": 0, "clientid": ["p4"]},
            {"topic": "#", "cld_cnt": 0, "clientid": ["p3"]},
            {"topic": "#", "cld_cnt": 0, "clientid": ["durable"]},
            {"topic": "#", "cld_cnt": 0, "clientid": ["durable4"]},
            {"topic": "#", "cld_cnt": 0, "clientid": ["site/x"]},
        ]),
        "{tree}"
    );
    assert_eq!(tree.as_array().unwrap().len(), 3, "{tree}");

    // Retained messages: topic filter and paging.
    for (t, m) in [("r/1", "one"), ("r/2", "two"), ("r/3/x", "three")] {
        must_publish(mqtt, &["-t", t, "-m", m, "-q", "1", "-r"]);
    }
    wait_for("three retained", WAIT, || {
        api.get("/api/v4/retained")["data"]
            .as_array()
            .unwrap()
            .len()
            == 3
    });
    assert_eq!(
        api.get("/api/v4/retained?topic=r%2F%2B")["data"],
        json!([
            {"topic": "r/1", "qos": 1, "payload": "b25l", "payload_size": 3},
            {"topic": "r/2", "qos": 1, "payload": "dHdv", "payload_size": 3},
        ])
    );
    let p = api.get("/api/v4/retained?_limit=2");
    assert_eq!(ids(&p, "topic"), ["r/1", "r/2"]);
    assert_eq!(
        p["meta"],
        json!({"page": 1, "limit": 2, "count": 3, "hasnext": true})
    );
    let p = api.get("/api/v4/retained?topic=r%2F%23&_page=2&_limit=2");
    assert_eq!(ids(&p, "topic"), ["r/3/x"]);
    assert_eq!(
        p["meta"],
        json!({"page": 2, "limit": 2, "count": 3, "hasnext": false})
    );
    for q in ["topic=a/%23/b", "bogus=1", "_limit=0"] {
        api.expect("GET", &format!("/api/v4/retained?{q}"), None, 400, 108);
    }
}

// ----- Kick: keep_session, discard, 3.1.1, $SYS and the will -----------------------------

/// The `$SYS/brokers/disconnected` event for `client_id`, as the watcher printed it.
fn disconnected_event(watcher: &mut Background, client_id: &str) -> Value {
    let needle = format!("\"client_id\":\"{client_id}\"");
    let line = watcher.wait_for_line(WAIT, |l| {
        l.starts_with("$SYS/brokers/disconnected ") && l.contains(&needle)
    });
    let body = line.split_once(' ').unwrap().1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {line}"))
}

#[test]
fn kick_keeps_or_discards_the_session_and_sys_reports_it() {
    let dir = Dir::new("v4-extra-kick");
    let (_broker, mqtt, api) = broker(&dir, "");
    let mut watcher = sub(
        mqtt,
        &[
            "-V",
            "mqttv5",
            "-i",
            "watcher",
            "-t",
            "$SYS/brokers/disconnected",
            "-t",
            "will/#",
        ],
    );
    let keeper_args = [
        "-V",
        "mqttv5",
        "-i",
        "keeper",
        "-u",
        "kim",
        "-c",
        "-x",
        "600",
        "-q",
        "1",
        "-t",
        "keep/#",
        "--will-topic",
        "will/keeper",
        "--will-payload",
        "gone",
    ];
    let mut keeper = sub(mqtt, &keeper_args);
    let item = &api.get("/api/v4/clients/keeper")["data"][0];
    assert_eq!(
        (item["will_topic"].clone(), item["will_msg"].clone()),
        (json!("will/keeper"), json!("gone"))
    );

    // A bad flag or an unknown key is refused, and nobody is kicked.
    api.expect(
        "DELETE",
        "/api/v4/clients/keeper?keep_session=maybe",
        None,
        400,
        108,
    );
    api.expect("DELETE", "/api/v4/clients/keeper?bogus=1", None, 400, 108);
    assert_eq!(
        api.get("/api/v4/clients/keeper")["data"][0]["conn_state"],
        "connected"
    );

    // keep_session=true: DISCONNECT 0x98, $SYS says 98, the will goes out, the session
    // (and its subscription) stay, offline.
    api.expect(
        "DELETE",
        "/api/v4/clients/keeper?keep_session=true",
        None,
        200,
        0,
    );
    keeper.wait_for_line(WAIT, |l| l == "Received DISCONNECT (152)");
    let status = keeper
        .wait_exit(WAIT)
        .expect("mosquitto_sub exits once kicked");
    assert!(status.success(), "{status}");
    // The $SYS event and the will, in either order.
    let (mut event, mut will) = (None, false);
    while event.is_none() || !will {
        let line = watcher.wait_for_line(WAIT, |l| {
            l == "will/keeper gone"
                || (l.starts_with("$SYS/brokers/disconnected ") && l.contains("\"keeper\""))
        });
        if line == "will/keeper gone" {
            will = true;
        } else {
            event = serde_json::from_str::<Value>(line.split_once(' ').unwrap().1).ok();
        }
    }
    let event = event.unwrap();
    assert_eq!(event["client_id"], "keeper", "{event}");
    assert_eq!(event["reason_code"], "98", "{event}");
    assert_eq!(event["username"], "kim", "{event}");
    assert_eq!(event["IPv4"], "127.0.0.1", "{event}");
    let item = &api.get("/api/v4/clients/keeper")["data"][0];
    assert_eq!(
        (item["conn_state"].clone(), item["clean_start"].clone()),
        (json!("disconnected"), json!(false))
    );
    assert_eq!(
        api.get("/api/v4/subscriptions/keeper")["data"],
        json!([{"clientid": "keeper", "topic": "keep/#", "qos": 1}])
    );
    // A message for the kept session is queued and delivered when it comes back.
    assert_eq!(
        api.post(
            "/api/v4/mqtt/publish",
            &json!({"topic": "keep/1", "payload": "queued", "qos": 1})
        ),
        json!({"code": 0})
    );
    let out = common::run_with_timeout(
        "mosquitto_sub",
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt.to_string(),
            "-V",
            "mqttv5",
            "-i",
            "keeper",
            "-c",
            "-x",
            "600",
            "-q",
            "1",
            "-t",
            "keep/#",
            "-C",
            "1",
            "-v",
        ],
        WAIT,
    );
    assert_eq!(out.stdout.trim(), "keep/1 queued", "{out}");

    // Offline again (a normal DISCONNECT, expiry 600 s): the default discards it.
    wait_for("keeper offline", WAIT, || {
        api.get("/api/v4/clients/keeper")["data"][0]["conn_state"] == "disconnected"
    });
    api.expect("DELETE", "/api/v4/clients/keeper", None, 200, 0);
    assert_eq!(api.get("/api/v4/clients/keeper")["data"], json!([]));
    assert_eq!(api.get("/api/v4/subscriptions/keeper")["data"], json!([]));
    api.expect("DELETE", "/api/v4/clients/keeper", None, 404, 112);

    // Connected with a 600 s session, kicked without the flag: the session goes at once.
    let mut durable = sub(
        mqtt,
        &[
            "-V", "mqttv5", "-i", "dur/able", "-c", "-x", "600", "-t", "dur/#",
        ],
    );
    api.expect("DELETE", "/api/v4/clients/dur%2Fable", None, 200, 0);
    durable.wait_for_line(WAIT, |l| l == "Received DISCONNECT (152)");
    let event = disconnected_event(&mut watcher, "dur/able");
    assert_eq!(event["reason_code"], "98", "{event}");
    assert_eq!(api.get("/api/v4/clients/dur%2Fable")["data"], json!([]));
    assert_eq!(
        api.get("/api/v4/subscriptions/dur%2Fable")["data"],
        json!([])
    );

    // 3.1.1: no DISCONNECT to send, the connection is closed (mosquitto_sub reconnects:
    // its second CONNECT shows the close); $SYS reports the kick all the same.
    let mut old = sub(mqtt, &["-V", "mqttv311", "-i", "old", "-t", "o/#"]);
    api.expect("DELETE", "/api/v4/clients/old", None, 200, 0);
    let event = disconnected_event(&mut watcher, "old");
    assert_eq!(event["reason_code"], "98", "{event}");
    old.wait_for_line(WAIT, |l| l == "Client old sending CONNECT");
    assert!(
        !old.transcript().contains("DISCONNECT"),
        "a 3.1.1 client gets no DISCONNECT: {}",
        old.transcript()
    );
    api.expect("DELETE", "/api/v4/clients/nobody", None, 404, 112);
}

// ----- rumqttc v5: the kick's reason code and publish properties, read as packets -------

mod rq {
    use super::*;
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::{
        DisconnectReasonCode, LastWill, LastWillProperties, Packet, Publish, SubscribeProperties,
    };
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
    use tokio::sync::mpsc;

    pub struct Conn {
        pub client: AsyncClient,
        pub events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    }

    pub async fn connect(port: u16, id: &str, tweak: impl FnOnce(&mut MqttOptions)) -> Conn {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        tweak(&mut options);
        let (client, mut event_loop) = AsyncClient::new(options, 64);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let result = event_loop.poll().await;
                let last = result.is_err();
                if tx.send(result).is_err() || last {
                    break;
                }
            }
        });
        let mut conn = Conn { client, events };
        conn.expect("CONNACK", |e| {
            matches!(e, Event::Incoming(Packet::ConnAck(_))).then_some(())
        })
        .await;
        conn
    }

    impl Conn {
        pub async fn expect<T>(&mut self, what: &str, f: impl Fn(&Event) -> Option<T>) -> T {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(e))) => {
                        if let Some(t) = f(&e) {
                            return t;
                        }
                    }
                    Ok(Some(Err(e))) => panic!("connection error waiting for {what}: {e}"),
                    Ok(None) => panic!("event loop ended waiting for {what}"),
                    Err(_) => panic!("no {what} within {WAIT:?}"),
                }
            }
        }

        pub async fn publish(&mut self) -> Publish {
            self.expect("PUBLISH", |e| match e {
                Event::Incoming(Packet::Publish(p)) => Some(p.clone()),
                _ => None,
            })
            .await
        }

        pub async fn error(&mut self) -> ConnectionError {
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return e,
                    Ok(None) => panic!("event loop ended without an error"),
                    Err(_) => panic!("no connection error within {WAIT:?}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_and_kick_reason_as_rumqttc_v5_sees_them() {
    use rq::{QoS, SubscribeProperties};
    let dir = Dir::new("v4-extra-rumqttc");
    let (_broker, mqtt, api) = broker(&dir, "");
    let mut s = rq::connect(mqtt, "rq/sub", |_| {}).await;
    s.client
        .subscribe_with_properties(
            "props/#",
            QoS::AtLeastOnce,
            SubscribeProperties {
                id: Some(9),
                user_properties: vec![],
            },
        )
        .await
        .unwrap();
    s.expect("SUBACK", |e| {
        matches!(e, rq::Event::Incoming(rq::Packet::SubAck(_))).then_some(())
    })
    .await;

    let body = json!({
        "topic": "props/x", "payload": "aGVsbG8gdjU=", "decoding": "base64", "qos": 1,
        "clientid": "api-publisher",
        "properties": {
            "payload_format_indicator": 1, "message_expiry_interval": 300,
            "response_topic": "reply/here", "correlation_data": "corr-1",
            "subscription_identifier": 7, "content_type": "text/plain",
            "user_properties": {"who": "api", "n": 10}
        }
    });
    let reply = tokio::task::block_in_place(|| api.post("/api/v4/mqtt/publish", &body));
    assert_eq!(reply, json!({"code": 0}));
    let p = s.publish().await;
    assert_eq!(&p.topic[..], b"props/x");
    assert_eq!(&p.payload[..], b"hello v5");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert!(!p.retain);
    let props = p.properties.expect("v5 properties");
    assert_eq!(props.payload_format_indicator, Some(1));
    let expiry = props.message_expiry_interval.expect("expiry");
    assert!((290..=300).contains(&expiry), "{expiry}");
    assert_eq!(props.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    let mut user = props.user_properties.clone();
    user.sort();
    assert_eq!(
        user,
        [
            ("n".to_owned(), "10".to_owned()),
            ("who".to_owned(), "api".to_owned())
        ]
    );
    assert_eq!(
        props.subscription_identifiers,
        [9],
        "the subscriber's own identifier, not the request's"
    );

    // `topics` (one message each) and `encoding: base64` (the broker encodes the text).
    let body = json!({"topics": "props/a,props/b", "payload": "hi", "encoding": "base64"});
    let reply = tokio::task::block_in_place(|| api.post("/api/v4/mqtt/publish", &body));
    assert_eq!(reply, json!({"code": 0}));
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let p = s.publish().await;
        assert_eq!(&p.payload[..], b"aGk=");
        assert_eq!(p.qos, QoS::AtMostOnce);
        got.insert(String::from_utf8(p.topic.to_vec()).unwrap());
    }
    assert_eq!(got, BTreeSet::from(["props/a".into(), "props/b".into()]));
    // Bad properties: the body code says so, nothing is sent.
    for bad in [
        json!({"topic": "props/y", "payload": "p", "properties": {"nope": 1}}),
        json!({"topic": "props/y", "payload": "p", "properties": {"payload_format_indicator": 2}}),
        json!({"topic": "props/y", "payload": "p", "properties": {"response_topic": "r/#"}}),
        json!({"topic": "props/y", "payload": "p", "properties": {"subscription_identifier": 0}}),
        json!({"topic": "props/y", "payload": "%%", "decoding": "base64"}),
        json!({"topic": "props/y", "payload": "p", "qos": 3}),
        json!({"topic": "$SYS/x", "payload": "p"}),
    ] {
        let reply = tokio::task::block_in_place(|| api.post("/api/v4/mqtt/publish", &bad));
        assert_eq!(reply, json!({"code": 108}), "{bad}");
    }

    // A kept session keeps its delayed will pending; discarding the session publishes it.
    let mut w = rq::connect(mqtt, "rq/will", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(600));
        o.set_last_will(rq::LastWill::new(
            "props/will",
            "bye",
            QoS::AtLeastOnce,
            false,
            Some(rq::LastWillProperties {
                delay_interval: Some(30),
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![],
            }),
        ));
    })
    .await;
    let a = tokio::task::block_in_place(|| {
        api.call(
            "DELETE",
            "/api/v4/clients/rq%2Fwill?keep_session=true",
            None,
        )
    });
    assert_eq!((a.status, a.json()), (200, json!({"code": 0})));
    match w.error().await {
        rq::ConnectionError::MqttState(rq::StateError::ServerDisconnect {
            reason_code, ..
        }) => {
            assert_eq!(reason_code, rq::DisconnectReasonCode::AdministrativeAction);
        }
        other => panic!("expected DISCONNECT 0x98, got {other}"),
    }
    drop(w);
    let early = tokio::time::timeout(Duration::from_secs(1), s.publish()).await;
    assert!(early.is_err(), "the will waits for its delay: {early:?}");
    let item = tokio::task::block_in_place(|| api.get("/api/v4/clients/rq%2Fwill"));
    assert_eq!(item["data"][0]["conn_state"], "disconnected", "{item}");
    let a = tokio::task::block_in_place(|| api.call("DELETE", "/api/v4/clients/rq%2Fwill", None));
    assert_eq!((a.status, a.json()), (200, json!({"code": 0})));
    let will = s.publish().await;
    assert_eq!(
        (&will.topic[..], &will.payload[..]),
        (&b"props/will"[..], &b"bye"[..]),
        "the will at the session's end, before its 30 s delay"
    );

    // Kicked: rumqttc reads DISCONNECT with reason 0x98.
    let a = tokio::task::block_in_place(|| api.call("DELETE", "/api/v4/clients/rq%2Fsub", None));
    assert_eq!((a.status, a.json()), (200, json!({"code": 0})));
    match s.error().await {
        rq::ConnectionError::MqttState(rq::StateError::ServerDisconnect {
            reason_code, ..
        }) => {
            assert_eq!(reason_code, rq::DisconnectReasonCode::AdministrativeAction);
        }
        other => panic!("expected DISCONNECT 0x98, got {other}"),
    }
}

// ----- Subscribe on a client's behalf, reload applied live --------------------------------

#[test]
fn subscribe_on_behalf_delivers_and_reload_applies_live() {
    let dir = Dir::new("v4-extra-subscribe");
    let (_broker, mqtt, api) = broker(&dir, "");
    must_publish(mqtt, &["-t", "r/1", "-m", "kept", "-r", "-q", "1"]);
    let mut target = sub(
        mqtt,
        &["-V", "mqttv5", "-i", "target", "-t", "base", "-q", "1"],
    );

    let sub_body = json!({"clientid": "target", "topic": "extra/t", "qos": 1});
    assert_eq!(
        api.post("/api/v4/mqtt/subscribe", &sub_body),
        json!({"code": 0})
    );
    assert_eq!(
        api.get("/api/v4/subscriptions?clientid=target&topic=extra%2Ft")["data"],
        json!([{"clientid": "target", "topic": "extra/t", "qos": 1}])
    );
    must_publish(mqtt, &["-t", "extra/t", "-m", "hello", "-q", "1"]);
    let debug = target.wait_for_line(WAIT, |l| {
        l.contains("received PUBLISH") && l.contains("'extra/t'")
    });
    assert!(debug.contains(", q1, "), "granted QoS 1: {debug}");
    expect_message(&mut target, "extra/t", "hello");
    // Retained messages come with an API subscription too.
    assert_eq!(
        api.post(
            "/api/v4/mqtt/subscribe",
            &json!({"clientid": "target", "topic": "r/#"})
        ),
        json!({"code": 0})
    );
    expect_message(&mut target, "r/1", "kept");

    // Unsubscribed: nothing more on that filter.
    assert_eq!(
        api.post(
            "/api/v4/mqtt/unsubscribe",
            &json!({"clientid": "target", "topic": "extra/t"})
        ),
        json!({"code": 0})
    );
    assert_eq!(
        api.get("/api/v4/subscriptions?clientid=target&topic=extra%2Ft")["data"],
        json!([])
    );
    must_publish(mqtt, &["-t", "extra/t", "-m", "after", "-q", "1"]);
    let seen = drain_with_marker(mqtt, &mut target, "base");
    assert!(!seen.contains("extra/t after"), "{seen}");

    // Batches: per-item codes; `topics` subscribes to each.
    let b = api.post(
        "/api/v4/mqtt/subscribe_batch",
        &json!([
            {"clientid": "target", "topics": "s/1,s/2"},
            {"clientid": "ghost", "topic": "x"},
            {"clientid": "target", "topic": "a/#/b"},
        ]),
    );
    assert_eq!(
        b,
        json!({"code": 0, "data": [
            {"clientid": "target", "topic": "s/1,s/2", "code": 0},
            {"clientid": "ghost", "topic": "x", "code": 112},
            {"clientid": "target", "topic": "a/#/b", "code": 108},
        ]})
    );
    must_publish(mqtt, &["-t", "s/2", "-m", "two"]);
    expect_message(&mut target, "s/2", "two");
    let b = api.post(
        "/api/v4/mqtt/unsubscribe_batch",
        &json!([{"clientid": "target", "topics": "s/1,s/2"}]),
    );
    assert_eq!(b["data"][0]["code"], 0, "{b}");
    assert_eq!(
        ids(&api.get("/api/v4/subscriptions/target"), "topic"),
        ["base", "r/#"]
    );
    must_publish(mqtt, &["-t", "s/1", "-m", "late"]);
    let seen = drain_with_marker(mqtt, &mut target, "base");
    assert!(!seen.contains("s/1 late"), "{seen}");
    // Refusals.
    for (body, code) in [
        (json!({"topic": "x"}), 108),
        (json!({"clientid": "target"}), 108),
        (json!({"clientid": "target", "topic": "x", "qos": 3}), 108),
        (json!({"clientid": "nobody", "topic": "x"}), 112),
    ] {
        assert_eq!(
            api.post("/api/v4/mqtt/subscribe", &body),
            json!({"code": code}),
            "{body}"
        );
    }
    api.expect("POST", "/api/v4/mqtt/subscribe", Some("[1]"), 400, 109);
    api.expect("POST", "/api/v4/mqtt/subscribe_batch", Some("{}"), 400, 109);
    api.expect("POST", "/api/v4/mqtt/unsubscribe", Some("nope"), 400, 109);

    // POST /reload: saved, then applied through the reload path, live.
    assert_eq!(api.get("/api/v4/reload")["data"]["allow_anonymous"], true);
    api.expect(
        "POST",
        "/api/v4/reload",
        Some(r#"{"data":{"allow_anonymous":false}}"#),
        200,
        0,
    );
    assert_eq!(api.get("/api/v4/reload")["data"]["allow_anonymous"], false);
    assert!(
        !publish(mqtt, &["-t", "base", "-m", "anonymous"]),
        "anonymous refused once the reload applied it"
    );
    let saved = std::fs::read_to_string(dir.file("nanomq.override.conf")).unwrap();
    assert!(saved.contains("allow_anonymous = false"), "{saved}");
    api.expect(
        "POST",
        "/api/v4/reload",
        Some(r#"{"data":{"allow_anonymous":true,"msq_len":2048}}"#),
        200,
        0,
    );
    let values = api.get("/api/v4/reload")["data"].clone();
    assert_eq!(
        (values["allow_anonymous"].clone(), values["msq_len"].clone()),
        (json!(true), json!(2048))
    );
    must_publish(mqtt, &["-t", "base", "-m", "anonymous again"]);
    expect_message(&mut target, "base", "anonymous again");
    for (body, status, code) in [
        (r#"{"data":{"nope":1}}"#, 400, 108),
        (r#"{"data":{"bridge_mode":true}}"#, 400, 108),
        (r#"{"data":{"msq_len":"x"}}"#, 400, 108),
        ("[]", 400, 109),
        ("not json", 400, 109),
    ] {
        api.expect("POST", "/api/v4/reload", Some(body), status, code);
    }
}

// ----- Bridges: remote subscriptions through a real remote; PUT keeps the outbox ----------

/// A mosquitto broker as the bridge's remote, on 127.0.0.1.
#[test]
fn bridge_remote_subscriptions_and_put_keep_the_outbox() {
    let dir = Dir::new("v4-extra-bridge");
    let remote = Remote::start(&dir);
    let (_broker, mqtt, api) = broker(
        &dir,
        &format!(
            "bridges.mqtt.cloud {{\n  server = \"mqtt-tcp://127.0.0.1:{0}\"\n  clientid = \"bridge-x-{0}\"\n  \
             proto_ver = 5\n  keepalive = 10s\n  backoff_max = 2s\n  forwards = [{{ local_topic = \"up/#\", qos = 1 }}]\n}}\n\
             bridges.mqtt.spare {{\n  enable = false\n  server = \"mqtt-tcp://127.0.0.1:1\"\n}}\n",
            remote.port
        ),
    );
    wait_for("the bridge to connect", Duration::from_secs(15), || {
        api.bridge_metrics("cloud")["state"] == "connected"
    });
    let mut local = sub(
        mqtt,
        &["-V", "mqttv5", "-i", "local", "-t", "local/#", "-t", "mark"],
    );

    // A remote subscription added while the bridge runs: remote down/# arrives as local/#.
    api.expect(
        "POST",
        "/api/v4/bridges/sub/cloud",
        Some(r#"{"data":{"subscription":[{"remote_topic":"down/#","local_topic":"local/#","qos":1}]}}"#),
        200,
        0,
    );
    assert_eq!(
        api.get("/api/v4/bridges/cloud")["data"]["bridge"]["nodes"][0]["subscription"],
        json!([{"remote_topic": "down/#", "local_topic": "local/#", "qos": 1}])
    );
    // The SUBSCRIBE reaches the remote shortly: publish there until one arrives.
    let arrived = (0..20).any(|i| {
        must_publish(
            remote.port,
            &["-t", "down/1", "-m", &format!("m{i}"), "-q", "1"],
        );
        saw_within(&mut local, Duration::from_millis(500), |l| {
            l.starts_with("local/1 m")
        })
    });
    assert!(arrived, "nothing from the remote: {}", local.transcript());
    assert!(api.bridge_metrics("cloud")["rx_msgs"].as_u64().unwrap() >= 1);

    // Removed: the remote's messages stop.
    api.expect(
        "POST",
        "/api/v4/bridges/unsub/cloud",
        Some(r#"{"data":{"unsubscription":[{"topic":"down/#"}]}}"#),
        200,
        0,
    );
    assert_eq!(
        api.get("/api/v4/bridges/cloud")["data"]["bridge"]["nodes"][0]["subscription"],
        json!([])
    );
    std::thread::sleep(Duration::from_secs(1));
    must_publish(remote.port, &["-t", "down/2", "-m", "late", "-q", "1"]);
    std::thread::sleep(Duration::from_millis(500));
    let seen = drain_with_marker(mqtt, &mut local, "mark");
    assert!(!seen.contains("local/2 late"), "{seen}");

    // Refusals: unknown bridge, bridge off in the configuration, bad bodies.
    for (path, body, status, code) in [
        (
            "/api/v4/bridges/sub/nope",
            r#"{"data":{"subscription":[{"remote_topic":"x"}]}}"#,
            404,
            115,
        ),
        (
            "/api/v4/bridges/sub/spare",
            r#"{"data":{"subscription":[{"remote_topic":"x"}]}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/sub/cloud",
            r#"{"data":{"subscription":[]}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/sub/cloud",
            r#"{"data":{"subscription":[{"remote_topic":"a/#/b"}]}}"#,
            400,
            108,
        ),
        ("/api/v4/bridges/sub/cloud", "nope", 400, 109),
        (
            "/api/v4/bridges/unsub/nope",
            r#"{"data":{"unsubscription":[{"topic":"x"}]}}"#,
            404,
            115,
        ),
        (
            "/api/v4/bridges/unsub/cloud",
            r#"{"data":{"unsubscription":[{"topic":""}]}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/switch/spare",
            r#"{"data":{"bridge_switch":true}}"#,
            400,
            108,
        ),
        (
            "/api/v4/bridges/switch/cloud",
            r#"{"data":{"bridge_switch":"yes"}}"#,
            400,
            108,
        ),
    ] {
        api.expect("POST", path, Some(body), status, code);
    }
    for (body, status, code) in [
        (r#"{"nope":{"keepalive":20}}"#, 404, 115),
        (r#"{"cloud":{"keepalive":20}}"#, 400, 108),
        ("nope", 400, 109),
    ] {
        api.expect("PUT", "/api/v4/bridges/nope", Some(body), status, code);
    }
    for (body, status, code) in [
        (r#"{"other":{"keepalive":20}}"#, 400, 108),
        (r#"{"cloud":{},"other":{}}"#, 400, 108),
        (r#"{"cloud":{"keepalive":"soon"}}"#, 403, 108),
        (r#"{"cloud":{"nope":1}}"#, 403, 108),
    ] {
        api.expect("PUT", "/api/v4/bridges/cloud", Some(body), status, code);
    }
    // An unknown bridge is an empty list, as NanoMQ (documented in the OpenAPI file).
    assert_eq!(
        api.get("/api/v4/bridges/nope"),
        json!({"code": 0, "data": {"bridge": {"nodes": []}}})
    );

    // Off, three messages kept in the outbox; a new setting restarts the bridge, which
    // connects and delivers them.
    let mut remote_sub = Background::spawn(
        "stdbuf",
        &[
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &remote.port.to_string(),
            "-t",
            "up/#",
            "-q",
            "1",
            "-v",
            "-W",
            "30",
            "-d",
        ],
    );
    remote_sub.wait_for_line(WAIT, |l| l.ends_with("received SUBACK"));
    api.expect(
        "POST",
        "/api/v4/bridges/switch/cloud",
        Some(r#"{"data":{"bridge_switch":false}}"#),
        200,
        0,
    );
    wait_for("the bridge off", WAIT, || {
        api.bridge_metrics("cloud")["state"] == "disabled"
    });
    for i in 1..=3 {
        must_publish(
            mqtt,
            &["-t", &format!("up/{i}"), "-m", &format!("m{i}"), "-q", "1"],
        );
    }
    wait_for("three in the outbox", WAIT, || {
        api.bridge_metrics("cloud")["outbox"] == 3
    });
    api.expect(
        "PUT",
        "/api/v4/bridges/cloud",
        Some(r#"{"cloud":{"keepalive":20}}"#),
        200,
        0,
    );
    wait_for("the outbox to drain", Duration::from_secs(15), || {
        let m = api.bridge_metrics("cloud");
        m["state"] == "connected" && m["outbox"] == 0
    });
    for i in 1..=3 {
        expect_message(&mut remote_sub, &format!("up/{i}"), &format!("m{i}"));
    }
    let node = &api.get("/api/v4/bridges/cloud")["data"]["bridge"]["nodes"][0];
    assert_eq!(
        (
            node["enable"].clone(),
            node["connector"]["keepalive"].clone()
        ),
        (json!(true), json!(20))
    );
}

// ----- The route table: codes for every route with a wrong method; nothing reads files ---

#[test]
fn route_table_methods_metrics_sections_and_no_file_reading() {
    let dir = Dir::new("v4-extra-routes");
    let (_broker, mqtt, api) = broker(&dir, "");
    let _one = sub(mqtt, &["-V", "mqttv5", "-i", "one", "-t", "x"]);

    // GET /api/v4 lists exactly the routes.
    let listed: BTreeSet<(String, String)> = api.get("/api/v4")["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let routes = [
        ("GET", "/"),
        ("GET", "/brokers"),
        ("GET", "/nodes"),
        ("GET", "/metrics"),
        ("GET", "/prometheus"),
        ("GET", "/clients"),
        ("GET", "/clients/:clientid"),
        ("DELETE", "/clients/:clientid"),
        ("GET", "/clients/username/:username"),
        ("GET", "/subscriptions"),
        ("GET", "/subscriptions/:clientid"),
        ("GET", "/topic-tree"),
        ("GET", "/retained"),
        ("GET", "/reload"),
        ("POST", "/reload"),
        ("GET", "/configuration"),
        ("POST", "/configuration"),
        ("GET", "/configuration/:section"),
        ("POST", "/ctrl/:action"),
        ("POST", "/mqtt/publish"),
        ("POST", "/mqtt/publish_batch"),
        ("POST", "/mqtt/subscribe"),
        ("POST", "/mqtt/unsubscribe"),
        ("POST", "/mqtt/subscribe_batch"),
        ("POST", "/mqtt/unsubscribe_batch"),
        ("GET", "/bridges"),
        ("GET", "/bridges/:name"),
        ("PUT", "/bridges/:name"),
        ("POST", "/bridges/switch/:name"),
        ("POST", "/bridges/sub/:name"),
        ("POST", "/bridges/unsub/:name"),
    ];
    let want: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(listed, want);

    // Every route's path with a method it does not take: 404 + 102 (NanoMQ routes on both);
    // methods the API never takes: 405 + 102.
    for (_, path) in routes {
        let concrete = format!(
            "/api/v4{}",
            path.replace(":clientid", "one")
                .replace(":username", "u")
                .replace(":section", "basic")
                .replace(":action", "stop")
                .replace(":name", "nope")
        )
        .trim_end_matches('/')
        .to_owned();
        for other in ["GET", "POST", "PUT", "DELETE"] {
            if routes.iter().any(|(m, p)| *m == other && *p == path) {
                continue;
            }
            api.expect(other, &concrete, Some("{}"), 404, 102);
        }
        for other in ["PATCH", "OPTIONS", "TRACE"] {
            api.expect(other, &concrete, None, 405, 102);
        }
    }
    let head = api.request(
        "HEAD",
        "/api/v4/brokers",
        None,
        &["-u", "admin:public", "-I"],
    );
    assert_eq!(head.status, 405);

    // Path segments are percent-decoded after the split; query values too ('+' is a space
    // there, not in a path).
    let _odd: Vec<Background> = ["a&b", "100%", "a+b", "caf\u{e9}", "q?x#y"]
        .iter()
        .map(|id| sub(mqtt, &["-V", "mqttv5", "-i", id, "-t", "x"]))
        .collect();
    for (path, id) in [
        ("/api/v4/clients/a%26b", "a&b"),
        ("/api/v4/clients?clientid=a%26b", "a&b"),
        ("/api/v4/clients/100%25", "100%"),
        ("/api/v4/clients/a+b", "a+b"),
        ("/api/v4/clients?clientid=a%2Bb", "a+b"),
        ("/api/v4/clients/caf%C3%A9", "caf\u{e9}"),
        ("/api/v4/clients/q%3Fx%23y", "q?x#y"),
    ] {
        assert_eq!(ids(&api.get(path), "client_id"), [id], "{path}");
    }
    assert_eq!(
        ids(&api.get("/api/v4/subscriptions/q%3Fx%23y"), "clientid"),
        ["q?x#y"]
    );
    api.expect("GET", "/api/v4/clients/%E9", None, 400, 108);
    api.expect("DELETE", "/api/v4/clients/q%3Fx%23y", None, 200, 0);

    // The client with a trailing slash is the same route.
    assert_eq!(ids(&api.get("/api/v4/clients/one/"), "client_id"), ["one"]);

    // No file is read through the API or the dashboard, however the path is written.
    for path in [
        "/api/v4/get_file?path=/etc/passwd",
        "/api/v4/config_update",
        "/api/v4/rules",
        "/api/v4/../../etc/passwd",
        "/api/v4/configuration/..%2F..%2Fetc%2Fpasswd",
        "/dashboard/../../etc/passwd",
        "/dashboard/..%2F..%2Fetc%2Fpasswd",
        "/../../etc/passwd",
    ] {
        let a = api.request("GET", path, None, &["-u", "admin:public", "--path-as-is"]);
        assert_eq!(a.status, 404, "{path}: {}", a.text);
        assert!(!a.text.contains("root:"), "{path}: {}", a.text);
    }

    // Every configuration section NanoMQ names that TideMQ has, under its own key.
    for section in [
        "basic",
        "tls",
        "auth",
        "auth_http",
        "websocket",
        "http_server",
        "sqlite",
        "bridge",
    ] {
        let v = api.get(&format!("/api/v4/configuration/{section}"));
        assert!(v["data"].get(section).is_some(), "{section}: {v}");
        assert_eq!(
            v["data"][section],
            api.get("/api/v4/configuration")["data"][section],
            "{section}"
        );
    }
    api.expect("GET", "/api/v4/configuration/nope", None, 404, 101);
    api.expect(
        "POST",
        "/api/v4/configuration",
        Some(r#"{"nodata":{}}"#),
        400,
        108,
    );
    api.expect("POST", "/api/v4/configuration", Some("[]"), 400, 109);

    // /metrics: NanoMQ's process keys beside the bridges.
    let m = api.get("/api/v4/metrics");
    assert_eq!(m["metrics"], json!([]), "{m}");
    let cpu = m["cpuinfo"].as_str().unwrap();
    let digits = cpu.strip_suffix('%').unwrap_or_else(|| panic!("{cpu}"));
    assert!(
        digits.parse::<f64>().is_ok() && digits.split('.').nth(1).map(str::len) == Some(2),
        "{cpu}"
    );
    let memory: u64 = m["memory"].as_str().unwrap().parse().unwrap();
    assert!(memory > 1_000_000, "{memory}");
    // "one" and the four odd ids still connected.
    assert_eq!(m["connections"], 5, "{m}");
    assert_eq!(api.get("/api/v4/nodes")["data"][0]["connections"], 5);
    let b = &api.get("/api/v4/brokers")["data"][0];
    assert_eq!(b["version"], api.get("/api/v4/nodes")["data"][0]["version"]);
    assert!(!b["version"].as_str().unwrap().is_empty());
}
