#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The HTTP API v4 against the real binary with real MQTT clients (mosquitto_pub/sub, v5),
//! driven by curl: every route's shape and codes, filters, paging, kick (the client sees
//! DISCONNECT 0x98 and `$SYS` reports it), publish with v5 properties, and a bridge to a real
//! remote mosquitto switched off and on with its outbox kept.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::process::Child;
use std::time::Duration;

use serde_json::{Value, json};
use support::api::{Api, Remote};
use support::{Dir, Running, free_port, mosquitto_pub, mosquitto_sub, start, wait_for};

fn broker(dir: &Dir, remote: u16) -> (Running, u16, Api) {
    let (mqtt, http) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{mqtt}\"\nhttp_server {{\n  port = {http}\n}}\n\
             bridges.mqtt.cloud {{\n  server = \"mqtt-tcp://127.0.0.1:{remote}\"\n  clientid = \"bridge-{mqtt}\"\n  \
             proto_ver = 5\n  keepalive = 10s\n  backoff_max = 2s\n  forwards = [{{ local_topic = \"up/#\", qos = 1 }}]\n}}\n\
             bridges.mqtt.spare {{\n  enable = false\n  server = \"mqtt-tcp://127.0.0.1:1\"\n}}\n"
        ),
    )
    .unwrap();
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), mqtt);
    wait_for("the admin API", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    (running, mqtt, Api { port: http })
}

/// What a finished (or killed) client printed.
fn output_of(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut s = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut s);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut s);
    }
    s
}

fn client_ids(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn api_v4_end_to_end() {
    let dir = Dir::new("api-v4");
    let remote = Remote::start(&dir);
    let (broker, mqtt, api) = broker(&dir, remote.port);
    wait_for("the bridge to connect", Duration::from_secs(15), || {
        api.bridge_metrics("cloud")["state"] == "connected"
    });

    // Clients: a v5 subscriber with properties shown, a 3.1.1 one, a v5 one with a '/' in
    // its id (to be kicked), and a watcher of $SYS.
    let props = mosquitto_sub(
        mqtt,
        &[
            "-V",
            "mqttv5",
            "-i",
            "props",
            "-u",
            "alice",
            "-t",
            "a/#",
            "-q",
            "1",
            "-F",
            "%t|%p|%C|%R|%D|%F|%E|%P",
            "-C",
            "1",
        ],
    );
    let old = mosquitto_sub(
        mqtt,
        &[
            "-V",
            "mqttv311",
            "-i",
            "old",
            "-t",
            "x/+",
            "-t",
            "$share/g/jobs/#",
        ],
    );
    let kicked = mosquitto_sub(mqtt, &["-V", "mqttv5", "-i", "site/kick", "-t", "k", "-d"]);
    let sys = mosquitto_sub(
        mqtt,
        &[
            "-V",
            "mqttv5",
            "-i",
            "watcher",
            "-t",
            "$SYS/brokers/disconnected",
            "-v",
        ],
    );
    wait_for("four clients", Duration::from_secs(10), || {
        api.get("/api/v4/clients?conn_state=connected")["data"]
            .as_array()
            .unwrap()
            .len()
            == 4
    });
    wait_for("their subscriptions", Duration::from_secs(10), || {
        api.get("/api/v4/subscriptions")["data"]
            .as_array()
            .unwrap()
            .len()
            == 5
    });

    // Authentication first: before routing, and v4's error shape.
    let a = api.request("GET", "/api/v4/nowhere", None, &[]);
    assert_eq!((a.status, a.json()), (401, json!({"code": 104})));
    assert!(a.headers.contains("www-authenticate: basic"));
    let a = api.request(
        "GET",
        "/api/v4/brokers",
        None,
        &[
            "-u",
            "admin:wrong",
            "-H",
            "X-Requested-With: XMLHttpRequest",
        ],
    );
    assert_eq!((a.status, a.json()), (401, json!({"code": 103})));
    assert!(
        !a.headers.contains("www-authenticate"),
        "no browser dialog for the page"
    );
    let a = api.request(
        "GET",
        "/api/v4/brokers",
        None,
        &["-u", "admin:public", "-H", "Origin: http://evil.example"],
    );
    assert_eq!((a.status, a.json()), (403, json!({"code": 102})));
    api.expect("GET", "/api/v4/nowhere", None, 404, 102);
    api.expect("PATCH", "/api/v4/brokers", None, 405, 102);
    api.expect("DELETE", "/api/v4/brokers", None, 404, 102);

    // Broker information.
    let endpoints = api.get("/api/v4");
    assert!(endpoints["data"].as_array().unwrap().len() >= 30);
    let b = &api.get("/api/v4/brokers/")["data"][0];
    assert_eq!(
        (b["node_status"].clone(), b["sysdescr"].clone()),
        (json!("Running"), json!("NanoMQ Broker"))
    );
    assert!(b["uptime"].as_str().unwrap().contains(" Hours, "));
    assert_eq!(b["datetime"].as_str().unwrap().len(), 19);
    assert_eq!(api.get("/api/v4/nodes")["data"][0]["connections"], 4);

    // Clients: shape, filters, paging, percent-decoded path.
    let all = api.get("/api/v4/clients");
    assert_eq!(client_ids(&all), ["old", "props", "site/kick", "watcher"]);
    let props_item = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client_id"] == "props")
        .unwrap()
        .clone();
    assert_eq!(props_item["username"], "alice");
    assert_eq!(props_item["conn_state"], "connected");
    assert_eq!(
        (
            props_item["proto_name"].clone(),
            props_item["proto_ver"].clone()
        ),
        (json!("MQTT"), json!(5))
    );
    assert_eq!(props_item["clean_start"], true);
    for (q, want) in [
        ("clientid=props", vec!["props"]),
        ("client_id=old", vec!["old"]),
        ("username=alice", vec!["props"]),
        ("proto_ver=4", vec!["old"]),
        (
            "proto_name=MQTT&proto_ver=5&conn_state=connected",
            vec!["props", "site/kick", "watcher"],
        ),
        ("clean_start=false", vec![]),
        ("conn_state=disconnected", vec![]),
        ("_like_clientid=t", vec!["site/kick", "watcher"]),
    ] {
        assert_eq!(
            client_ids(&api.get(&format!("/api/v4/clients?{q}"))),
            want,
            "{q}"
        );
    }
    for q in [
        "bogus=1",
        "proto_ver=9",
        "conn_state=x",
        "clean_start=1",
        "_limit=0",
    ] {
        api.expect("GET", &format!("/api/v4/clients?{q}"), None, 400, 108);
    }
    let page = api.get("/api/v4/clients?_page=2&_limit=3");
    assert_eq!(client_ids(&page), ["watcher"]);
    assert_eq!(
        page["meta"],
        json!({"page": 2, "limit": 3, "count": 4, "hasnext": false})
    );
    assert_eq!(
        client_ids(&api.get("/api/v4/clients/site%2Fkick")),
        ["site/kick"]
    );
    assert_eq!(
        client_ids(&api.get("/api/v4/clients/username/alice")),
        ["props"]
    );

    // Subscriptions and the topic tree.
    let subs = api.call("GET", "/api/v4/subscriptions?clientid=old", None);
    assert!(subs.text.starts_with("{\"data\":"));
    assert_eq!(
        subs.json()["data"],
        json!([{"clientid": "old", "topic": "$share/g/jobs/#", "qos": 0}, {"clientid": "old", "topic": "x/+", "qos": 0}])
    );
    assert_eq!(
        api.get("/api/v4/subscriptions?share=g")["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.get("/api/v4/subscriptions?topic=a%2F%23&qos=1")["data"][0]["clientid"],
        "props"
    );
    assert_eq!(
        api.get("/api/v4/subscriptions/watcher")["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    api.expect("GET", "/api/v4/subscriptions?qos=5", None, 400, 108);
    let tree = api.get("/api/v4/topic-tree");
    assert_eq!(tree["data"][0][0]["topic"], "");

    // Publish with every v5 property, base64 payload, retained: the v5 subscriber sees them.
    let body = json!({
        "topic": "a/b", "payload": "aGVsbG8gdjU=", "decoding": "base64", "qos": 1, "retain": true,
        "properties": {
            "payload_format_indicator": 1, "message_expiry_interval": 300, "response_topic": "reply/here",
            "correlation_data": "corr-1", "content_type": "text/plain", "user_properties": {"who": "api"}
        }
    });
    let a = api.call("POST", "/api/v4/mqtt/publish", Some(&body.to_string()));
    assert_eq!((a.status, a.json()), (200, json!({"code": 0})));
    let seen = output_of_when_done(props);
    let line = seen.lines().next().unwrap_or_default();
    let fields: Vec<&str> = line.split('|').collect();
    assert_eq!(fields.first(), Some(&"a/b"), "{seen}");
    assert_eq!(fields[1], "hello v5");
    assert_eq!(fields[2], "text/plain");
    assert_eq!(fields[3], "reply/here");
    assert_eq!(fields[4], "corr-1");
    assert_eq!(fields[5], "1");
    let expiry: u32 = fields[6].parse().unwrap();
    assert!((290..=300).contains(&expiry), "{line}");
    assert!(
        fields[7].contains("who") && fields[7].contains("api"),
        "{line}"
    );
    let retained = api.get("/api/v4/retained?topic=a/%23");
    assert_eq!(
        retained["data"],
        json!([{"topic": "a/b", "qos": 1, "payload": "aGVsbG8gdjU=", "payload_size": 8}])
    );
    let batch = api.call(
        "POST",
        "/api/v4/mqtt/publish_batch",
        Some(r##"[{"topic":"x/1","payload":"p"},{"topic":"#","payload":"p"}]"##),
    );
    assert_eq!(
        batch.json(),
        json!({"data": [{"topic": "x/1", "code": 0}, {"topic": "#", "code": 108}], "code": 0})
    );
    api.expect(
        "POST",
        "/api/v4/mqtt/publish",
        Some(r#"{"payload":"no topic"}"#),
        200,
        108,
    );
    api.expect("POST", "/api/v4/mqtt/publish", Some("not json"), 400, 109);
    api.expect("POST", "/api/v4/mqtt/publish_batch", Some("{}"), 400, 109);

    // Subscribe a connected client; it gets what is published there.
    api.expect(
        "POST",
        "/api/v4/mqtt/subscribe",
        Some(r#"{"clientid":"old","topic":"extra/t","qos":1}"#),
        200,
        0,
    );
    api.expect(
        "POST",
        "/api/v4/mqtt/subscribe",
        Some(r#"{"clientid":"nobody","topic":"t"}"#),
        200,
        112,
    );
    assert_eq!(
        api.get("/api/v4/subscriptions?clientid=old&topic=extra%2Ft")["data"][0]["qos"],
        1
    );
    api.expect(
        "POST",
        "/api/v4/mqtt/unsubscribe",
        Some(r#"{"clientid":"old","topic":"extra/t"}"#),
        200,
        0,
    );
    let b = api.call(
        "POST",
        "/api/v4/mqtt/subscribe_batch",
        Some(r#"[{"clientid":"old","topic":"s/1"}]"#),
    );
    assert_eq!(b.json()["data"][0]["code"], 0);
    let b = api.call(
        "POST",
        "/api/v4/mqtt/unsubscribe_batch",
        Some(r#"[{"clientid":"old","topic":"s/1"}]"#),
    );
    assert_eq!(b.json()["data"][0]["code"], 0);

    // Kick: the v5 client gets DISCONNECT 0x98, $SYS reports it, the session is gone.
    api.expect("DELETE", "/api/v4/clients/site%2Fkick", None, 200, 0);
    let kicked_out = output_of_when_done(kicked);
    assert!(kicked_out.contains("DISCONNECT"), "{kicked_out}");
    assert!(
        kicked_out.contains("152") || kicked_out.contains("0x98"),
        "{kicked_out}"
    );
    wait_for("the kick's $SYS event", Duration::from_secs(10), || {
        broker.log().contains("site/kick")
    });
    std::thread::sleep(Duration::from_millis(300));
    let sys_out = output_of(sys);
    let event = sys_out
        .lines()
        .find(|l| l.contains("\"site/kick\""))
        .unwrap_or_else(|| panic!("no $SYS event: {sys_out}"));
    assert!(event.contains("\"reason_code\":\"98\""), "{event}");
    assert_eq!(api.get("/api/v4/clients/site%2Fkick")["data"], json!([]));
    api.expect("DELETE", "/api/v4/clients/site%2Fkick", None, 404, 112);

    // Configuration and reload values.
    let conf = api.get("/api/v4/configuration");
    assert_eq!(conf["data"]["http_server"]["password"], "******");
    assert_eq!(conf["data"]["bridge"]["nodes"].as_array().unwrap().len(), 2);
    assert!(api.get("/api/v4/configuration/basic")["data"]["basic"]["msq_len"].is_number());
    api.expect("GET", "/api/v4/configuration/nope", None, 404, 101);
    assert_eq!(api.get("/api/v4/reload")["data"]["bridge_mode"], true);
    let set = api.call(
        "POST",
        "/api/v4/configuration",
        Some(r#"{"data":{"basic":{"msq_len":4096}}}"#),
    );
    assert_eq!(
        set.json(),
        json!({"code": 0, "data": {"restart_required": []}})
    );
    assert_eq!(api.get("/api/v4/reload")["data"]["msq_len"], 4096);
    let saved = std::fs::read_to_string(dir.file("nanomq.override.conf")).unwrap();
    assert!(saved.contains("msq_len = 4096"), "{saved}");
    api.expect(
        "POST",
        "/api/v4/configuration",
        Some(r#"{"data":{"basic":{"nope":1}}}"#),
        400,
        108,
    );
    api.expect(
        "POST",
        "/api/v4/reload",
        Some(r#"{"data":{"allow_anonymous":true}}"#),
        200,
        0,
    );
    api.expect("POST", "/api/v4/reload", Some("{}"), 200, 0);
    api.expect("POST", "/api/v4/ctrl/restart", None, 200, 0);
    api.expect("POST", "/api/v4/ctrl/pause", None, 404, 101);

    // Bridges: shape, switch off (outbox kept), on (drained to the remote).
    let bridges = api.get("/api/v4/bridges");
    let nodes = bridges["data"]["bridge"]["nodes"].as_array().unwrap();
    let cloud = nodes.iter().find(|n| n["name"] == "cloud").unwrap();
    assert_eq!(cloud["enable"], true);
    assert_eq!(cloud["connector"]["proto_ver"], 5);
    assert_eq!(
        api.get("/api/v4/bridges/spare")["data"]["bridge"]["nodes"][0]["enable"],
        false
    );
    assert_eq!(api.bridge_metrics("spare")["state"], "disabled");
    let remote_sub = mosquitto_sub(remote.port, &["-t", "up/#", "-q", "1", "-v"]);
    std::thread::sleep(Duration::from_millis(300));
    api.expect(
        "POST",
        "/api/v4/bridges/switch/cloud",
        Some(r#"{"data":{"bridge_switch":false}}"#),
        200,
        0,
    );
    wait_for("the bridge to be off", Duration::from_secs(10), || {
        api.bridge_metrics("cloud")["state"] == "disabled"
    });
    for i in 1..=3 {
        mosquitto_pub(
            mqtt,
            &["-t", &format!("up/{i}"), "-m", &format!("m{i}"), "-q", "1"],
        );
    }
    wait_for(
        "three messages in the outbox",
        Duration::from_secs(10),
        || api.bridge_metrics("cloud")["outbox"] == 3,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        api.bridge_metrics("cloud")["outbox"],
        3,
        "no reconnect while off"
    );
    assert_eq!(
        api.get("/api/v4/bridges/cloud")["data"]["bridge"]["nodes"][0]["enable"],
        false
    );
    api.expect(
        "POST",
        "/api/v4/bridges/switch/cloud",
        Some(r#"{"data":{"bridge_switch":true}}"#),
        200,
        0,
    );
    wait_for("the outbox to drain", Duration::from_secs(15), || {
        let m = api.bridge_metrics("cloud");
        m["state"] == "connected" && m["outbox"] == 0
    });
    std::thread::sleep(Duration::from_millis(500));
    let got = output_of(remote_sub);
    for i in 1..=3 {
        assert!(got.contains(&format!("up/{i} m{i}")), "remote got: {got}");
    }
    let m = api.bridge_metrics("cloud");
    assert!(
        m["tx_msgs"].as_u64().unwrap() >= 3 && m["reconnects"].as_u64().unwrap() >= 1,
        "{m}"
    );
    api.expect(
        "POST",
        "/api/v4/bridges/switch/nope",
        Some(r#"{"data":{"bridge_switch":true}}"#),
        404,
        115,
    );
    api.expect(
        "POST",
        "/api/v4/bridges/switch/cloud",
        Some(r#"{"data":{}}"#),
        400,
        108,
    );
    api.expect(
        "POST",
        "/api/v4/bridges/sub/cloud",
        Some(r#"{"data":{"subscription":[{"remote_topic":"down/#","qos":1}]}}"#),
        200,
        0,
    );
    api.expect(
        "POST",
        "/api/v4/bridges/unsub/cloud",
        Some(r#"{"data":{"unsubscription":[{"topic":"down/#"}]}}"#),
        200,
        0,
    );
    api.expect(
        "PUT",
        "/api/v4/bridges/cloud",
        Some(r#"{"other":{}}"#),
        400,
        108,
    );
    api.expect(
        "PUT",
        "/api/v4/bridges/cloud",
        Some(r#"{"cloud":{"keepalive":20}}"#),
        200,
        0,
    );
    assert_eq!(api.bridge_metrics("cloud")["name"], "cloud");

    // Prometheus: NanoMQ's 15 metrics, text/plain.
    let prom = api.call("GET", "/api/v4/prometheus", None);
    assert_eq!(prom.status, 200);
    assert!(prom.headers.contains("content-type: text/plain"));
    assert!(prom.text.starts_with("# TYPE nanomq_connections_count gauge\n# HELP nanomq_connections_count\nnanomq_connections_count "));
    for name in [
        "connections_max",
        "sessions_count",
        "sessions_max",
        "topics_count",
        "topics_max",
        "subscribers_count",
        "subscribers_max",
        "messages_received",
        "messages_sent",
        "messages_dropped",
        "memory_usage",
        "memory_usage_max",
        "cpu_usage",
        "cpu_usage_max",
    ] {
        assert!(prom.text.contains(&format!("\nnanomq_{name} ")), "{name}");
    }
    let memory: u64 = prom
        .text
        .lines()
        .find_map(|l| l.strip_prefix("nanomq_memory_usage "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(memory > 1_000_000, "resident memory reported: {memory}");

    // The dashboard's files, with their policy.
    let page = api.request("GET", "/", None, &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .contains("content-security-policy: default-src 'none'")
    );
    assert!(page.text.contains("TideMQ"));
    let js = api.request("GET", "/dashboard/app.js", None, &[]);
    assert!(js.headers.contains("content-type: text/javascript"));
    let redirect = api.request("GET", "/dashboard", None, &[]);
    assert_eq!(redirect.status, 301);
    assert!(redirect.headers.contains("location: /dashboard/"));

    // Stop last.
    api.expect("POST", "/api/v4/ctrl/stop", None, 200, 0);
    let _ = output_of(old);
    let mut broker = broker;
    let stopped = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        matches!(broker.child.try_wait(), Ok(Some(_)))
    });
    assert!(stopped, "the broker stopped");
}

/// A client expected to finish on its own (`-C 1`, or kicked); killed after 10 s.
fn output_of_when_done(mut child: Child) -> String {
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    output_of(child)
}
