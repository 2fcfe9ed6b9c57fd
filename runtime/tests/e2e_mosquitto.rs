//! End-to-end tests of the `tidemq` binary with Eclipse Mosquitto's command-line clients
//! (`mosquitto_sub`, `mosquitto_pub`; Debian package `mosquitto-clients`).
//!
//! Each test starts its own broker. `mosquitto_sub` runs with `-d`, so that we know when its
//! SUBACK has arrived and can see the flags of every PUBLISH it receives, and with `-W`, so
//! that it never outlives its test by much.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{
    Background, Broker, require_mosquitto_clients, require_program, run_with_timeout, unique,
};

/// Longest wait for anything that should happen.
const WAIT: Duration = Duration::from_secs(10);
/// `mosquitto_sub -W`: it exits by itself after this many seconds.
const SUB_LIFETIME: &str = "30";

/// A PUBLISH as `mosquitto_sub -d -v` shows it.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
    dup: bool,
}

/// A running `mosquitto_sub -d -v`, subscribed (its SUBACK seen) when returned.
struct Sub {
    proc: Background,
}

impl Sub {
    fn start(broker: &Broker, extra: &[&str]) -> Sub {
        let port = broker.port.to_string();
        // Line-buffered stdout (coreutils `stdbuf`, which execs, so the pid stays
        // mosquitto_sub's): its debug lines would otherwise wait in a pipe buffer.
        let mut args = vec![
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-d",
            "-v",
            "-W",
            SUB_LIFETIME,
        ];
        args.extend_from_slice(extra);
        let mut proc = Background::spawn("stdbuf", &args);
        proc.wait_for_line(WAIT, |l| {
            l.starts_with("Client ") && l.ends_with("received SUBACK")
        });
        Sub { proc }
    }

    /// The next message received (its debug line and its `topic payload` line).
    fn next(&mut self) -> Received {
        let debug = self.proc.wait_for_line(WAIT, |l| {
            l.starts_with("Client ") && l.contains(" received PUBLISH (")
        });
        let flags = parse_publish_debug(&debug);
        let line = self.proc.wait_for_line(WAIT, |l| !l.starts_with("Client "));
        let (topic, payload) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        assert_eq!(
            topic, flags.0,
            "debug line {debug:?} vs message line {line:?}"
        );
        Received {
            topic: topic.to_owned(),
            payload: payload.to_owned(),
            qos: flags.1,
            retain: flags.2,
            dup: flags.3,
        }
    }

    /// The next `n` messages.
    fn take(&mut self, n: usize) -> Vec<Received> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// `Client X received PUBLISH (d0, q2, r1, m1, 'a/x', ... (5 bytes))` -> (topic, qos, retain, dup).
fn parse_publish_debug(line: &str) -> (String, u8, bool, bool) {
    let inner = line
        .split_once("received PUBLISH (")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("not a PUBLISH debug line: {line:?}"));
    let fields: Vec<&str> = inner.splitn(5, ", ").collect();
    assert!(fields.len() == 5, "unexpected PUBLISH debug line: {line:?}");
    let flag = |f: &str, prefix: char| -> u8 {
        f.strip_prefix(prefix)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("bad {prefix} field {f:?} in {line:?}"))
    };
    let dup = flag(fields[0], 'd') == 1;
    let qos = flag(fields[1], 'q');
    let retain = flag(fields[2], 'r') == 1;
    let topic = fields[4]
        .strip_prefix('\'')
        .and_then(|t| t.split_once("', "))
        .map(|(t, _)| t.to_owned())
        .unwrap_or_else(|| panic!("no topic in {line:?}"));
    (topic, qos, retain, dup)
}

/// Runs `mosquitto_pub` and requires it to succeed.
fn publish(broker: &Broker, args: &[&str]) {
    let port = broker.port.to_string();
    let mut all = vec!["-h", "127.0.0.1", "-p", &port];
    all.extend_from_slice(args);
    let out = run_with_timeout("mosquitto_pub", &all, WAIT);
    assert!(out.success(), "mosquitto_pub {all:?} failed:\n{out}");
}

/// Live QoS 2 exchange between `mosquitto_pub -r` and an existing `mosquitto_sub`, then the
/// retained copies for a later subscriber, all at protocol `version`.
fn exchange(version: &str) {
    require_mosquitto_clients();
    let broker = Broker::start();
    let sub_id = unique("sub").replace('-', "");
    // MQTT 3.1 allows client identifiers of at most 23 characters.
    let sub_id = &sub_id[sub_id.len().saturating_sub(20)..];
    let mut sub = Sub::start(
        &broker,
        &[
            "-V", version, "-q", "2", "-t", "a/#", "-C", "3", "-i", sub_id,
        ],
    );
    let messages = [
        ("a/1", "first message"),
        ("a/2", "second"),
        ("a/deep/er", "third, with spaces"),
    ];
    for (topic, payload) in messages {
        publish(
            &broker,
            &["-V", version, "-q", "2", "-r", "-t", topic, "-m", payload],
        );
    }
    let got = sub.take(messages.len());
    for ((topic, payload), r) in messages.iter().zip(&got) {
        assert_eq!(
            (r.topic.as_str(), r.payload.as_str()),
            (*topic, *payload),
            "{version}: all: {got:?}"
        );
        assert_eq!(r.qos, 2, "{version}: delivered QoS: {r:?}");
        assert!(
            !r.retain,
            "{version}: a live delivery to an existing subscription has RETAIN=0: {r:?}"
        );
        assert!(!r.dup, "{version}: first delivery has DUP=0: {r:?}");
    }
    let status = sub.proc.wait_exit(WAIT);
    assert!(
        status.is_some_and(|s| s.success()),
        "{version}: mosquitto_sub -C 3 should exit 0 after 3 messages: {status:?}\n{}",
        sub.proc.transcript()
    );

    // A new subscriber gets the three retained messages, flagged as retained.
    let mut late = Sub::start(&broker, &["-V", version, "-q", "1", "-t", "a/#", "-C", "3"]);
    let mut got = late.take(messages.len());
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    for ((topic, payload), r) in messages.iter().zip(&got) {
        assert_eq!(
            (r.topic.as_str(), r.payload.as_str()),
            (*topic, *payload),
            "{version}: retained: {got:?}"
        );
        assert!(r.retain, "{version}: retained delivery has RETAIN=1: {r:?}");
        assert_eq!(r.qos, 1, "{version}: min(published 2, subscribed 1): {r:?}");
    }
}

#[test]
fn mosquitto_mqttv5_qos2_exchange_and_retained_delivery() {
    exchange("mqttv5");
}

#[test]
fn mosquitto_mqttv311_qos2_exchange_and_retained_delivery() {
    exchange("mqttv311");
}

#[test]
fn mosquitto_mqttv31_qos2_exchange_and_retained_delivery() {
    exchange("mqttv31");
}

#[test]
fn mosquitto_mixed_versions_talk_to_each_other() {
    require_mosquitto_clients();
    let broker = Broker::start();
    let versions = ["mqttv5", "mqttv311", "mqttv31"];
    let mut subs: Vec<(&str, Sub)> = versions
        .iter()
        .map(|v| {
            (
                *v,
                Sub::start(&broker, &["-V", v, "-q", "1", "-t", "mix/#"]),
            )
        })
        .collect();
    for v in versions {
        publish(
            &broker,
            &[
                "-V",
                v,
                "-q",
                "1",
                "-t",
                &format!("mix/{v}"),
                "-m",
                &format!("from {v}"),
            ],
        );
    }
    for (sub_version, sub) in &mut subs {
        let mut got: Vec<(String, String)> = sub
            .take(versions.len())
            .into_iter()
            .map(|r| (r.topic, r.payload))
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = versions
            .iter()
            .map(|v| (format!("mix/{v}"), format!("from {v}")))
            .collect();
        want.sort();
        assert_eq!(got, want, "what the {sub_version} subscriber received");
    }
}

/// `json.loads(payload)[key]`, re-serialised as JSON, computed by Python's json module; fails
/// the test if the payload is not a JSON object or lacks `key`.
fn json_field(payload: &str, key: &str) -> String {
    require_program("python3", "install Python 3 (Debian package `python3`)");
    let out = run_with_timeout(
        "python3",
        &[
            "-c",
            "import json, sys\n\
             d = json.loads(sys.argv[1])\n\
             assert isinstance(d, dict), 'not a JSON object'\n\
             print(json.dumps(d[sys.argv[2]]))",
            payload,
            key,
        ],
        WAIT,
    );
    assert!(
        out.success(),
        "payload {payload:?} is not a JSON object with {key:?}:\n{out}"
    );
    out.stdout.trim().to_owned()
}

#[test]
fn mosquitto_sees_sys_connected_and_disconnected_events_as_json() {
    require_mosquitto_clients();
    let broker = Broker::start();
    let mut sys = Sub::start(&broker, &["-V", "mqttv311", "-t", "$SYS/brokers/#"]);
    let id = unique("sys-client");
    publish(
        &broker,
        &["-V", "mqttv5", "-i", &id, "-t", "sys/x", "-m", "hi"],
    );

    let quoted_id = format!("\"{id}\"");
    let connected = loop {
        let r = sys.next();
        if r.topic == "$SYS/brokers/connected" && json_field(&r.payload, "client_id") == quoted_id {
            break r;
        }
    };
    assert_eq!(
        json_field(&connected.payload, "proto_ver"),
        "5",
        "{connected:?}"
    );
    assert_eq!(
        json_field(&connected.payload, "IPv4"),
        "\"127.0.0.1\"",
        "{connected:?}"
    );
    assert!(!connected.retain, "{connected:?}");

    let disconnected = loop {
        let r = sys.next();
        if r.topic == "$SYS/brokers/disconnected"
            && json_field(&r.payload, "client_id") == quoted_id
        {
            break r;
        }
    };
    assert_eq!(
        json_field(&disconnected.payload, "IPv4"),
        "\"127.0.0.1\"",
        "{disconnected:?}"
    );
}

fn will_on_kill(version: &str) {
    require_mosquitto_clients();
    let broker = Broker::start();
    let mut watcher = Sub::start(&broker, &["-V", version, "-q", "1", "-t", "will/#"]);
    let mut dying = Sub::start(
        &broker,
        &[
            "-V",
            version,
            "-t",
            "nothing/here",
            "--will-topic",
            "will/dying",
            "--will-payload",
            "it died",
            "--will-qos",
            "1",
        ],
    );
    // SIGKILL: the socket is closed by the kernel, no DISCONNECT is sent.
    dying.proc.kill();
    let will = watcher.next();
    assert_eq!(
        (
            will.topic.as_str(),
            will.payload.as_str(),
            will.qos,
            will.retain
        ),
        ("will/dying", "it died", 1, false),
        "{version}"
    );
}

#[test]
fn mosquitto_mqttv5_will_on_killed_client() {
    will_on_kill("mqttv5");
}

#[test]
fn mosquitto_mqttv311_will_on_killed_client() {
    will_on_kill("mqttv311");
}

#[test]
fn mosquitto_mqttv5_client_is_told_server_shutting_down_on_sigterm() {
    require_mosquitto_clients();
    let mut broker = Broker::start();
    let mut sub = Sub::start(&broker, &["-V", "mqttv5", "-t", "quiet"]);
    let status = broker
        .stop()
        .expect("the broker must exit within the stop timeout after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // 139 = 0x8B, Server shutting down.
    sub.proc
        .wait_for_line(WAIT, |l| l.contains("DISCONNECT (139)"));
}
