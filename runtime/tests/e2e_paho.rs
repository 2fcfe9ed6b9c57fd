//! End-to-end tests of the `tidemq` binary with Eclipse Paho's Python client (paho-mqtt 2.x):
//! each test starts a broker and runs `tests/clients/paho_check.py` against it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::time::Duration;

use common::{Broker, require_paho, run_with_timeout};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_check.py");

/// Runs the Python checks (`name:protocol`) against a fresh broker; every one must pass.
fn paho(checks: &[&str]) {
    require_paho();
    let broker = Broker::start();
    let port = broker.port.to_string();
    let mut args = vec!["-u", SCRIPT, port.as_str()];
    args.extend_from_slice(checks);
    let out = run_with_timeout("python3", &args, Duration::from_secs(90));
    assert!(
        out.success(),
        "paho_check.py {checks:?} failed (exit 1 = a check failed, 2 = usage, 3 = paho-mqtt \
         missing: install the PyPI package `paho-mqtt` >= 2):\n{out}"
    );
    for check in checks {
        assert!(
            out.stdout.lines().any(|l| l == format!("ok {check}")),
            "paho_check.py did not report {check} as passed:\n{out}"
        );
    }
}

#[test]
fn paho_mqttv5_qos_0_1_2_round_trips_with_properties() {
    paho(&["roundtrip:v5"]);
}

#[test]
fn paho_mqttv311_qos_0_1_2_round_trips() {
    paho(&["roundtrip:v311"]);
}

#[test]
fn paho_mqttv31_qos_0_1_2_round_trips() {
    paho(&["roundtrip:v31"]);
}

#[test]
fn paho_retained_messages_set_and_cleared() {
    paho(&["retained:v5", "retained:v311"]);
}

#[test]
fn paho_mqttv5_will_on_dropped_connection_and_none_after_disconnect() {
    paho(&["will:v5"]);
}

#[test]
fn paho_mqttv311_will_on_dropped_connection_and_none_after_disconnect() {
    paho(&["will:v311"]);
}

#[test]
fn paho_mqttv31_will_on_dropped_connection_and_none_after_disconnect() {
    paho(&["will:v31"]);
}

#[test]
fn paho_persistent_sessions_resume_with_queued_messages() {
    paho(&["persistent:v5", "persistent:v311"]);
}
