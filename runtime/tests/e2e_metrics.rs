//! Metrics against the real binary: `/metrics` and `/api/v4/prometheus` read by a real
//! Prometheus text parser (PyPI `prometheus-client`), counters that move under a scripted
//! workload (each QoS, a drop by queue limit, a bridge outage against a real mosquitto) and
//! agree with admin API V1 req 2 and req 5 and the `$SYS/broker` tree at rest, the scrape
//! listener without credentials, and the tree arriving every `sys_interval`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api::{Api, Remote};
use support::{Dir, Running, free_port, mosquitto_pub, run, start, tool, wait_for};

const WAIT: Duration = Duration::from_secs(20);

/// NanoMQ's names, as `/api/v4/prometheus` has them.
const NANOMQ: [&str; 15] = [
    "nanomq_connections_count",
    "nanomq_connections_max",
    "nanomq_sessions_count",
    "nanomq_sessions_max",
    "nanomq_topics_count",
    "nanomq_topics_max",
    "nanomq_subscribers_count",
    "nanomq_subscribers_max",
    "nanomq_messages_received",
    "nanomq_messages_sent",
    "nanomq_messages_dropped",
    "nanomq_memory_usage",
    "nanomq_memory_usage_max",
    "nanomq_cpu_usage",
    "nanomq_cpu_usage_max",
];

/// Samples by `name{label="v",...}` (labels sorted), as the Python parser read them.
type Samples = BTreeMap<String, f64>;

/// Parses exposition text with `prometheus_client.parser.text_string_to_metric_families`;
/// any parse error fails the test. Also returns the family names with their types.
fn parse(text: &str) -> (Samples, BTreeMap<String, String>) {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
samples, families = {}, {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = f.type
    for s in f.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        samples[s.name + ("{" + labels + "}" if labels else "")] = s.value
print(json.dumps({"samples": samples, "families": families}))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text (is prometheus-client installed? scripts/test \
         installs it): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let samples = v["samples"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
        .collect();
    let families = v["families"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    (samples, families)
}

fn get(s: &Samples, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key} among {:?}", s.keys()))
}

fn metrics(api: &Api) -> Samples {
    let a = api.call("GET", "/metrics", None);
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(
        a.headers
            .contains("content-type: text/plain; version=0.0.4")
    );
    parse(&a.text).0
}

fn v1(api: &Api, req: u64) -> Value {
    let body = json!({"req": req, "seq": 1}).to_string();
    let a = api.request("POST", "/api/v1", Some(&body), &["-u", "admin:public"]);
    assert_eq!(a.status, 200, "{}", a.text);
    a.json()["data"].clone()
}

struct Broker {
    _running: Running,
    mqtt: u16,
    api: Api,
    scrape: u16,
}

fn broker(dir: &Dir, extra: &str) -> Broker {
    let (mqtt, http, scrape) = (free_port(), free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{mqtt}\"\nhttp_server {{\n  port = {http}\n}}\n\
             metrics.listen = \"127.0.0.1:{scrape}\"\n{extra}"
        ),
    )
    .unwrap();
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), mqtt);
    wait_for("the admin API", WAIT, || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    Broker {
        _running: running,
        mqtt,
        api: Api { port: http },
        scrape,
    }
}

/// The retained `$SYS/broker/...` tree as a new subscriber receives it.
fn sys_tree(mqtt: u16) -> BTreeMap<String, String> {
    let out = run(tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &mqtt.to_string()])
        .args([
            "-t",
            "$SYS/broker/#",
            "-F",
            "%t|%p",
            "--retained-only",
            "-W",
            "2",
        ]));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            // Topics hold spaces (`retained messages/count`), and so do payloads.
            let (topic, payload) = l.strip_prefix("$SYS/broker/")?.split_once('|')?;
            Some((topic.to_owned(), payload.to_owned()))
        })
        .collect()
}

#[test]
fn counters_move_with_the_workload_and_agree_everywhere() {
    let dir = Dir::new("e2e-metrics");
    let remote_port = free_port();
    let remote_dir = Dir::new("e2e-metrics-remote");
    let remote = Remote::start_on(&remote_dir, remote_port);
    let b = broker(
        &dir,
        &format!(
            "sys_interval = 1s\nmqtt.max_mqueue_len = 2\n\
             bridges.mqtt.cloud {{\n  server = \"mqtt-tcp://127.0.0.1:{remote_port}\"\n  \
             clientid = \"metrics-bridge\"\n  keepalive = 10s\n  backoff_max = 1s\n  \
             forwards = [{{ local_topic = \"up/#\", qos = 1 }}]\n}}\n"
        ),
    );
    let api = &b.api;
    wait_for("the bridge to connect", WAIT, || {
        api.bridge_metrics("cloud")["state"] == "connected"
    });

    // Both texts parse; NanoMQ's 15 come first, in NanoMQ's order, in both.
    for path in ["/metrics", "/api/v4/prometheus"] {
        let a = api.call("GET", path, None);
        assert_eq!(a.status, 200, "{path}");
        let (_, families) = parse(&a.text);
        for name in NANOMQ {
            assert!(families.contains_key(name), "{path}: no {name}");
        }
        let order: Vec<&str> = a
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .take(15)
            .collect();
        assert_eq!(order, NANOMQ, "{path}");
        assert_eq!(families["tidemq_messages_dropped"], "counter");
        assert_eq!(
            families["tidemq_publish_deliver_latency_seconds"],
            "histogram"
        );
    }
    // Auth follows the admin API's; the scrape listener asks for none and serves only /metrics.
    assert_eq!(api.request("GET", "/metrics", None, &[]).status, 401);
    let scrape = Api { port: b.scrape };
    let open = scrape.request("GET", "/metrics", None, &[]);
    assert_eq!(open.status, 200);
    parse(&open.text);
    assert_eq!(
        scrape.request("GET", "/api/v4/clients", None, &[]).status,
        404
    );

    let before = metrics(api);
    // A persistent session goes offline with a subscription: its queue holds two.
    let out = run(tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.mqtt.to_string()])
        .args(["-i", "offline", "-c", "-q", "1", "-t", "q/x", "-E"]));
    assert!(out.status.success(), "{out:?}");
    // A live subscriber for one message at each QoS.
    let live = tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.mqtt.to_string()])
        .args(["-i", "live", "-q", "2", "-t", "t/#", "-C", "3", "-W", "20"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the live subscription", WAIT, || {
        v1(api, 4)
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["client_id"] == "live")
    });
    for qos in ["0", "1", "2"] {
        mosquitto_pub(
            b.mqtt,
            &["-t", &format!("t/{qos}"), "-m", "hello", "-q", qos],
        );
    }
    assert!(live.wait_with_output().unwrap().status.success());
    for _ in 0..3 {
        mosquitto_pub(b.mqtt, &["-t", "q/x", "-m", "queued", "-q", "1"]);
    }
    let m = metrics(api);
    let delta = |k: &str| get(&m, k) - before.get(k).copied().unwrap_or(0.0);
    assert_eq!(delta("tidemq_messages_received_total{qos=\"0\"}"), 1.0);
    assert_eq!(delta("tidemq_messages_received_total{qos=\"1\"}"), 4.0);
    assert_eq!(delta("tidemq_messages_received_total{qos=\"2\"}"), 1.0);
    assert_eq!(delta("tidemq_messages_sent_total{qos=\"0\"}"), 1.0);
    assert_eq!(delta("tidemq_messages_sent_total{qos=\"1\"}"), 1.0);
    assert_eq!(delta("tidemq_messages_sent_total{qos=\"2\"}"), 1.0);
    assert_eq!(
        delta("tidemq_messages_dropped_total{reason=\"queue_full\"}"),
        1.0
    );
    assert_eq!(get(&m, "tidemq_queued_messages"), 2.0);
    assert_eq!(get(&m, "tidemq_sessions{state=\"offline\"}"), 1.0);
    assert!(delta("tidemq_packets_received_total{type=\"publish\"}") >= 6.0);
    assert!(delta("tidemq_publish_deliver_latency_seconds_count") >= 3.0);
    assert_eq!(get(&m, "tidemq_bridge_up{bridge=\"cloud\"}"), 1.0);

    // The remote goes away: the bridge is down and its outbox holds what was forwarded.
    drop(remote);
    wait_for("the bridge to notice", WAIT, || {
        get(&metrics(api), "tidemq_bridge_up{bridge=\"cloud\"}") == 0.0
    });
    mosquitto_pub(b.mqtt, &["-t", "up/1", "-m", "to the cloud", "-q", "1"]);
    let down = metrics(api);
    assert_eq!(
        get(&down, "tidemq_bridge_outbox_messages{bridge=\"cloud\"}"),
        1.0
    );
    // It comes back on the same port: the outbox drains and a reconnect is counted.
    let _remote = Remote::start_on(&remote_dir, remote_port);
    wait_for("the bridge to reconnect and drain", WAIT, || {
        let m = metrics(api);
        get(&m, "tidemq_bridge_up{bridge=\"cloud\"}") == 1.0
            && get(&m, "tidemq_bridge_outbox_messages{bridge=\"cloud\"}") == 0.0
    });
    let m = metrics(api);
    assert!(get(&m, "tidemq_bridge_reconnects_total{bridge=\"cloud\"}") >= 1.0);
    assert!(
        get(
            &m,
            "tidemq_bridge_messages_total{bridge=\"cloud\",direction=\"forward\"}"
        ) >= 1.0
    );

    // At rest: /metrics, req 2, req 5 and the $SYS tree (refreshed every second) agree.
    std::thread::sleep(Duration::from_millis(2500));
    let m = metrics(api);
    let info = v1(api, 2);
    let clients = v1(api, 5);
    let tree = sys_tree(b.mqtt);
    // The parser gives counters their `_total` sample name, NanoMQ's too.
    let received = get(&m, "nanomq_messages_received_total");
    let sent = get(&m, "nanomq_messages_sent_total");
    let dropped = get(&m, "nanomq_messages_dropped_total");
    assert_eq!(info["message_in"].as_f64(), Some(received));
    assert_eq!(info["message_out"].as_f64(), Some(sent));
    assert_eq!(info["message_drop"].as_f64(), Some(dropped));
    let by_qos = |name: &str| -> f64 {
        (0..3)
            .map(|q| get(&m, &format!("{name}{{qos=\"{q}\"}}")))
            .sum()
    };
    assert_eq!(by_qos("tidemq_messages_received_total"), received);
    assert_eq!(by_qos("tidemq_messages_sent_total"), sent);
    let drops: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("tidemq_messages_dropped_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(drops, dropped);
    let connected = clients
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["connect_status"] == 1)
        .count() as f64;
    assert_eq!(connected, get(&m, "tidemq_connections"));
    assert_eq!(
        clients.as_array().unwrap().len() as f64,
        get(&m, "nanomq_sessions_count")
    );
    let tree_num = |t: &str| -> f64 {
        tree.get(t)
            .unwrap_or_else(|| panic!("no $SYS/broker/{t} in {tree:?}"))
            .parse()
            .unwrap()
    };
    assert_eq!(tree_num("publish/messages/received"), received);
    assert_eq!(tree_num("publish/messages/sent"), sent);
    assert_eq!(tree_num("publish/messages/dropped"), dropped);
    assert_eq!(
        tree_num("clients/disconnected"),
        get(&m, "tidemq_sessions{state=\"offline\"}")
    );
    assert_eq!(
        tree_num("retained messages/count"),
        get(&m, "tidemq_retained_messages")
    );
    assert_eq!(tree_num("connection/cloud/state"), 1.0);
    for t in [
        "version",
        "uptime",
        "load/publish/received/1min",
        "load/connections/5min",
        "load/bytes/sent/15min",
    ] {
        assert!(tree.contains_key(t), "no $SYS/broker/{t} in {tree:?}");
    }
}

#[test]
fn the_sys_tree_arrives_every_interval_and_clients_cannot_write_it() {
    let dir = Dir::new("e2e-metrics-sys");
    let b = broker(&dir, "sys_interval = 1s\n");
    // Four uptimes: the retained one, then one each second.
    let started = Instant::now();
    let out = run(tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.mqtt.to_string()])
        .args(["-t", "$SYS/broker/uptime", "-C", "4", "-W", "15"]));
    let elapsed = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    let uptimes: Vec<u64> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.strip_suffix(" seconds").unwrap().parse().unwrap())
        .collect();
    assert_eq!(uptimes.len(), 4);
    assert!(uptimes.windows(2).all(|w| w[1] > w[0]), "{uptimes:?}");
    assert!(
        elapsed >= Duration::from_millis(2000) && elapsed < Duration::from_secs(8),
        "{elapsed:?}"
    );
    // A client's publish into $SYS is not taken.
    mosquitto_pub(b.mqtt, &["-t", "$SYS/broker/version", "-m", "forged", "-r"]);
    let tree = sys_tree(b.mqtt);
    assert!(
        tree["version"].starts_with("tidemq version"),
        "{:?}",
        tree.get("version")
    );
}

/// A 3.1.1 client that connects (keep alive 60) and subscribes at QoS 1, by hand: unlike
/// mosquitto_sub it never reconnects after a kick.
fn raw_client(port: u16, id: &str, filters: &[&str]) -> TcpStream {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut p = vec![kind, body.len() as u8];
        p.extend_from_slice(body);
        p
    }
    let mut connect = Vec::new();
    string(&mut connect, "MQTT");
    connect.extend_from_slice(&[4, 0x02, 0, 60]);
    string(&mut connect, id);
    let mut subscribe = vec![0, 1];
    for f in filters {
        string(&mut subscribe, f);
        subscribe.push(1);
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(&packet(0x10, &connect)).unwrap();
    s.write_all(&packet(0x82, &subscribe)).unwrap();
    s
}

/// `tidemq ctl` with the broker's own configuration file (address and credentials).
fn ctl(dir: &Dir, args: &[&str]) -> (bool, String, String) {
    let out = run(Command::new(support::TIDEMQ)
        .args(["ctl", "--conf"])
        .arg(dir.file("nanomq.conf"))
        .args(args));
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn ctl_lists_clients_and_subscriptions_and_kicks() {
    let dir = Dir::new("e2e-metrics-ctl");
    let b = broker(&dir, "");
    let mut held = raw_client(b.mqtt, "dev/1 x", &["a/#", "b"]);
    wait_for("the subscriptions", WAIT, || {
        ctl(&dir, &["subscriptions"]).1.lines().count() == 3
    });
    let (ok, clients, err) = ctl(&dir, &["clients"]);
    assert!(ok, "{err}");
    assert_eq!(
        clients.trim_end(),
        "CLIENT ID\tUSERNAME\tSTATE\tPROTOCOL\tKEEPALIVE\ndev/1 x\t\tconnected\t4\t60"
    );
    let (ok, subs, _) = ctl(&dir, &["subscriptions", "dev/1 x"]);
    assert!(ok);
    assert_eq!(
        subs.trim_end(),
        "CLIENT ID\tTOPIC\tQOS\ndev/1 x\ta/#\t1\ndev/1 x\tb\t1"
    );
    let (ok, json, _) = ctl(&dir, &["clients", "--json"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["data"][0]["client_id"], "dev/1 x");
    let (ok, text, _) = ctl(&dir, &["metrics"]);
    assert!(ok);
    assert!(text.starts_with("# TYPE nanomq_connections_count gauge"));
    parse(&text);

    let (ok, out, err) = ctl(&dir, &["kick", "dev/1 x"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim_end(), "kicked dev/1 x");
    // The broker closed the connection (3.1.1 has no DISCONNECT from the server).
    held.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut held, &mut rest);
    wait_for("the session to go", WAIT, || {
        ctl(&dir, &["clients"]).1.lines().count() == 1
    });
    // Errors say why and exit 1.
    let (ok, _, err) = ctl(&dir, &["kick", "nobody"]);
    assert!(!ok);
    assert!(err.contains("no such client"), "{err}");
    let (ok, _, err) = ctl(&dir, &["--password", "wrong", "clients"]);
    assert!(!ok);
    assert!(err.contains("not authorized"), "{err}");
}

/// The metric names a PromQL expression reads: identifiers of ours, with a histogram's
/// `_bucket`, `_sum` and `_count` samples named as written.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            if word.starts_with("tidemq_") || word.starts_with("nanomq_") {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
        }
    }
    names
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/tidemq.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 10);
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for topic in [
        "Connections",
        "Messages",
        "Drops",
        "latency",
        "Store",
        "Bridges",
    ] {
        assert!(titles.iter().any(|t| t.contains(topic)), "no {topic} panel");
    }
    // Every name it reads is a sample the broker exposes (with a bridge, so those exist too).
    let dir = Dir::new("e2e-metrics-grafana");
    let b = broker(
        &dir,
        "bridges.mqtt.b {\n  server = \"mqtt-tcp://127.0.0.1:1\"\n  forwards = [{ local_topic = \"x/#\", qos = 1 }]\n}\n",
    );
    let text = b.api.call("GET", "/metrics", None).text;
    // Samples, and families declared by TYPE (a labelled family may have no sample yet,
    // as `tidemq_admin_requests_total` before the first answered request).
    let exposed: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(family) => family.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    let mut read = 0;
    for expr in exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(name.as_str()),
                "{name} in `{expr}` is not in /metrics"
            );
            read += 1;
        }
    }
    assert!(read >= 20);
    assert_eq!(
        metric_names("rate(tidemq_a_bucket[5m]) / nanomq_b + up"),
        ["tidemq_a_bucket", "nanomq_b"]
    );
}

#[test]
fn store_figures_move_with_durable_work() {
    let dir = Dir::new("e2e-metrics-store");
    let data = dir.file("data");
    let b = broker(
        &dir,
        &format!(
            "persistence {{\n  data_dir = \"{}\"\n  sync = fsync\n  flush_interval = 2ms\n  \
             segment_size = 64KB\n  snapshot_threshold = 64KB\n}}\n",
            data.display()
        ),
    );
    let before = metrics(&b.api);
    assert_eq!(get(&before, "tidemq_store_snapshots_written_total"), 0.0);
    // Retained messages are journaled; enough of them cross the snapshot threshold.
    for i in 0..40 {
        mosquitto_pub(
            b.mqtt,
            &[
                "-t",
                &format!("keep/{i}"),
                "-m",
                &"x".repeat(2000),
                "-q",
                "1",
                "-r",
            ],
        );
    }
    wait_for("a snapshot", WAIT, || {
        get(&metrics(&b.api), "tidemq_store_snapshots_written_total") >= 1.0
    });
    let m = metrics(&b.api);
    let commits = get(&m, "tidemq_store_commit_duration_seconds_count");
    assert!(commits >= 1.0, "{commits}");
    assert_eq!(
        get(
            &m,
            "tidemq_store_commit_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        commits
    );
    assert!(get(&m, "tidemq_store_commit_duration_seconds_sum") > 0.0);
    assert!(get(&m, "tidemq_store_group_records_total") >= 40.0);
    assert!(get(&m, "tidemq_store_journal_written_bytes_total") >= 40.0 * 2000.0);
    assert!(get(&m, "tidemq_store_last_snapshot_duration_seconds") > 0.0);
    assert!(get(&m, "tidemq_store_commits_total") >= 1.0);
}
