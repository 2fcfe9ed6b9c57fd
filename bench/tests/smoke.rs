//! CI smoke test: every scenario, for a fraction of a second with tiny counts, against a
//! TideMQ broker started in-process; asserts the delivered counts (never timings).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use tidemq_bench::{Opts, Scenario};
use tidemq_core::Config;
use tidemq_core::codec::QoS;
use tidemq_runtime::{Server, ServerHandle};

async fn broker() -> ServerHandle {
    broker_with(Config::default()).await
}

async fn broker_with(config: Config) -> ServerHandle {
    let config = Config {
        url: "nmq-tcp://127.0.0.1:0".to_owned(),
        ..config
    };
    Server::bind(config, 1).await.unwrap().spawn().unwrap()
}

fn opts(handle: &ServerHandle) -> Opts {
    Opts {
        addr: handle.local_addr,
        broker_pid: Some(std::process::id()),
        label: "tidemq-in-process".to_owned(),
        seconds: 0.3,
        drain: 5.0,
        messages: 300,
        publishers: 3,
        subscribers: 3,
        pairs: 3,
        rate: 200.0,
        connections: 20,
        concurrency: 8,
        hold: 0.0,
        churn: 5,
        churn_every: 0.2,
        sample_every: 0.05,
        window: 64,
        batch: 8,
        inflight: 16,
        topics: 3,
        topic_len: 120,
        ..Opts::default()
    }
}

async fn check(scenario: Scenario, qos: QoS, payload: usize) {
    let handle = broker().await;
    let mut o = opts(&handle);
    o.qos = qos;
    o.payload = payload;
    let outcome = tidemq_bench::run(scenario, &o).await.unwrap();
    println!("{}\n{}", outcome.to_json(), outcome.human());
    assert!(outcome.ok, "{}", outcome.human());
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert!(outcome.delivered > 0);
    assert_eq!(outcome.delivered, outcome.expected, "{}", outcome.human());
    assert_eq!(outcome.missing, 0);
    assert_eq!(outcome.out_of_order, 0);
    assert!(outcome.cpu.tool_pct.is_some());
    let json = outcome.to_json();
    assert_eq!(json["delivered"], outcome.delivered);
    match scenario {
        Scenario::Connections => {
            assert_eq!(outcome.delivered, 20);
            assert!(outcome.connections.is_some());
        }
        Scenario::FanOut => assert_eq!(outcome.expected, outcome.sent * 3),
        Scenario::Soak => {
            assert_eq!(outcome.expected, outcome.sent);
            assert!(!outcome.rss_samples.is_empty());
            assert!(json["rss_max_kib"].is_number(), "{json}");
            assert!(json["latency_curve"].is_array(), "{json}");
        }
        Scenario::Aliases => {
            // Aliases are off by default: every message carries its topic.
            let wire = outcome.wire.unwrap();
            assert_eq!(wire.by_alias, 0);
            assert_eq!(wire.with_topic, outcome.delivered);
            assert!(wire.bytes_per_msg.unwrap() > 120.0, "{wire:?}");
            assert_eq!(outcome.expected, outcome.sent);
        }
        Scenario::Latency => {
            let latency = outcome.latency.unwrap();
            assert_eq!(latency.samples as u64, outcome.delivered);
            assert!(latency.p50_us <= latency.max_us);
            assert_eq!(outcome.expected, outcome.sent);
        }
        _ => assert_eq!(outcome.expected, outcome.sent),
    }
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_qos0() {
    check(Scenario::FanIn, QoS::AtMostOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_in_qos1_1kib() {
    check(Scenario::FanIn, QoS::AtLeastOnce, 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_qos0() {
    check(Scenario::FanOut, QoS::AtMostOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_qos1() {
    check(Scenario::FanOut, QoS::AtLeastOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_to_point_qos1() {
    check(Scenario::PointToPoint, QoS::AtLeastOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_qos0() {
    check(Scenario::Latency, QoS::AtMostOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_qos1() {
    check(Scenario::Soak, QoS::AtLeastOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections() {
    check(Scenario::Connections, QoS::AtMostOnce, 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_off_qos1() {
    check(Scenario::Aliases, QoS::AtLeastOnce, 16).await;
}

/// With `max_topic_alias_out` the broker names each topic once, then by alias alone; the
/// subscriber resolves every alias and finds every message on its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_on_save_the_topic_bytes() {
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut per_msg = Vec::new();
        for (alias_out, alias_max) in [(16, 16), (0, 16), (16, 0), (2, 16)] {
            let handle = broker_with(Config {
                max_topic_alias_out: alias_out,
                ..Config::default()
            })
            .await;
            let mut o = opts(&handle);
            o.qos = qos;
            o.alias_max = alias_max;
            let outcome = tidemq_bench::run(Scenario::Aliases, &o).await.unwrap();
            println!("{}", outcome.human());
            assert!(outcome.ok, "{}", outcome.human());
            assert_eq!(outcome.delivered, outcome.sent);
            assert_eq!(outcome.sent, 300);
            let wire = outcome.wire.unwrap();
            assert_eq!(wire.by_alias + wire.with_topic, outcome.delivered);
            if (alias_out, alias_max) == (16, 16) {
                // 3 topics, 16 aliases: each topic goes once with its name.
                assert_eq!(wire.with_topic, 3);
            } else {
                // No aliases; or 3 topics round-robin over 2 (the broker's limit): the least
                // recently used alias is always the one needed next, so every message
                // carries its topic.
                assert_eq!(wire.by_alias, 0);
            }
            per_msg.push(wire.bytes_per_msg.unwrap());
            handle.shutdown().await.unwrap();
        }
        // The topic (120 B) is gone from all but the first message per topic.
        assert!(per_msg[0] + 100.0 < per_msg[1], "{per_msg:?}");
        assert!(per_msg[1] <= per_msg[2] + 0.01, "{per_msg:?}");
    }
}

#[test]
fn the_report_reads_what_the_scenarios_write() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let lines = rt.block_on(async {
        let mut lines = String::new();
        for label in ["tidemq", "mosquitto"] {
            let handle = broker().await;
            let mut o = opts(&handle);
            o.label = label.to_owned();
            let outcome = tidemq_bench::run(Scenario::FanIn, &o).await.unwrap();
            lines.push_str(&outcome.to_json().to_string());
            lines.push('\n');
            handle.shutdown().await.unwrap();
        }
        lines
    });
    let md = tidemq_bench::report::markdown(&lines, "tidemq", &["mosquitto".to_owned()]).unwrap();
    assert!(md.contains("| fan-in 3→1 qos0 16B | msg/s |"), "{md}");
    assert!(md.contains("| tidemq | mosquitto |"), "{md}");
}
