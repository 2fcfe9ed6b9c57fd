#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`, driven over
//! WebDriver by `support/browser.rs`) against the real broker with MQTT clients connected:
//! sign in, see the client list, filter it, kick a client (two clicks: the first arms the
//! button), publish a message that a subscriber receives. Screenshots go to the target
//! directory, or with `TIDEMQ_SCREENSHOTS=1` to `docs/screenshots/` (the README shows them).

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::Duration;

use support::browser::Browser;
use support::{Dir, Running, free_port, start, tool, wait_for};

fn broker(dir: &Dir) -> (Running, u16, u16) {
    let (mqtt, http) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{mqtt}\"\nhttp_server {{\n  port = {http}\n}}\n\
             bridges.mqtt.cloud {{\n  server = \"mqtt-tcp://127.0.0.1:{}\"\n  proto_ver = 5\n  \
             backoff_max = 5s\n  forwards = [{{ local_topic = \"plant/#\" }}]\n  subscription = [{{ remote_topic = \"cmd/#\", qos = 1 }}]\n}}\n",
            free_port()
        ),
    )
    .unwrap();
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), mqtt);
    wait_for("the admin API", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    (running, mqtt, http)
}

/// A `mosquitto_sub` that outlives the test's steps (120 s at most).
fn mosquitto_sub(port: u16, args: &[&str]) -> Child {
    tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-W", "120"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

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

#[test]
fn dashboard_in_headless_chromium() {
    let dir = Dir::new("dashboard");
    let (broker, mqtt, http) = broker(&dir);
    let subscriber = mosquitto_sub(
        mqtt,
        &[
            "-V",
            "mqttv5",
            "-i",
            "plant-monitor",
            "-u",
            "ops",
            "-t",
            "plant/#",
            "-q",
            "1",
            "-v",
        ],
    );
    let sensors: Vec<Child> = ["sensor/boiler-1", "sensor/boiler-2", "sensor/pump-7"]
        .iter()
        .map(|id| {
            mosquitto_sub(
                mqtt,
                &["-V", "mqttv311", "-i", id, "-t", &format!("{id}/cmd")],
            )
        })
        .collect();
    let victim = mosquitto_sub(
        mqtt,
        &["-V", "mqttv5", "-i", "legacy-gateway", "-t", "gw/#", "-d"],
    );
    wait_for("the clients", Duration::from_secs(10), || {
        let log = broker.log();
        [
            "plant-monitor",
            "sensor/boiler-1",
            "sensor/boiler-2",
            "sensor/pump-7",
            "legacy-gateway",
        ]
        .iter()
        .all(|id| log.contains(&format!("client_id=\"{id}\"")))
    });
    for (topic, payload) in [
        ("plant/boiler-1/temp", "81.5"),
        ("plant/pump-7/state", "running"),
    ] {
        support::mosquitto_pub(mqtt, &["-t", topic, "-m", payload, "-r", "-q", "1"]);
    }

    let browser = Browser::start();
    let base = format!("http://127.0.0.1:{http}");
    browser.go(&format!("{base}/dashboard"));
    browser.until(
        "the sign-in form",
        "return !document.getElementById('login-view').hidden",
    );
    browser.screenshot("login.png");
    // Wrong password first: refused without a browser dialog, the page says why.
    browser.type_into("#login-username", "admin");
    browser.type_into("#login-password", "wrong");
    browser.click("#login-submit");
    browser.until(
        "the refusal",
        "return !document.getElementById('login-error').hidden && /103/.test(document.getElementById('login-error').textContent)",
    );
    browser.type_into("#login-password", "public");
    browser.click("#login-submit");
    browser.until(
        "the application",
        "return !document.getElementById('app-view').hidden",
    );
    browser.until(
        "overview counters",
        "return document.getElementById('ov-connections').textContent === '5'",
    );
    // Let the rate chart gather a few points.
    support::mosquitto_pub(mqtt, &["-t", "plant/boiler-1/temp", "-m", "82.0"]);
    std::thread::sleep(Duration::from_secs(7));
    support::mosquitto_pub(mqtt, &["-t", "plant/boiler-2/temp", "-m", "79.1"]);
    browser.until(
        "the chart",
        "return document.querySelectorAll('#chart polyline').length === 3",
    );
    browser.screenshot("overview.png");

    // Clients: all five, then filtered, then one kicked.
    browser.click("#nav-clients");
    browser.until(
        "the client list",
        "return document.querySelectorAll('[data-testid=client-row]').length === 5",
    );
    browser.screenshot("clients.png");
    browser.type_into("#client-filter", "boiler");
    browser.until(
        "the filtered list",
        "return Array.from(document.querySelectorAll('[data-testid=client-row]')).map(r => r.dataset.clientId).join() === 'sensor/boiler-1,sensor/boiler-2'",
    );
    browser.screenshot("clients-filtered.png");
    browser.type_into("#client-filter", "gateway");
    browser.until(
        "the gateway row",
        "return document.querySelectorAll('[data-testid=client-row]').length === 1",
    );
    let kick = "[data-testid=kick-button][data-client-id='legacy-gateway']";
    browser.click(kick);
    browser.until(
        "the armed button",
        &format!("return document.querySelector(\"{kick}\").dataset.confirm === '1'"),
    );
    browser.screenshot("kick-armed.png");
    browser.click(kick);
    browser.until(
        "the kick's result",
        "const s = document.getElementById('status'); return s.dataset.action === 'kick' && s.dataset.ok === 'true' && s.dataset.code === '0'",
    );
    browser.until(
        "the kicked client gone",
        "return document.querySelectorAll('[data-testid=client-row]').length === 0",
    );
    let kicked = output_of(victim);
    assert!(
        kicked.contains("DISCONNECT"),
        "the client saw its DISCONNECT: {kicked}"
    );

    // Publish from the page; the subscriber gets it.
    browser.click("#nav-publish");
    browser.type_into("#pub-topic", "plant/boiler-1/setpoint");
    browser.type_into("#pub-payload", "75 from the dashboard");
    browser.click("#pub-qos");
    browser.js("document.getElementById('pub-qos').value = '1'; document.getElementById('pub-v5').open = true;");
    browser.type_into("#pub-content-type", "text/plain");
    browser.type_into("#pub-user-props", "source=dashboard");
    browser.click("#pub-submit");
    browser.until(
        "the publish result",
        "const s = document.getElementById('status'); return s.dataset.action === 'publish' && s.dataset.ok === 'true'",
    );
    browser.screenshot("publish.png");
    std::thread::sleep(Duration::from_millis(500));
    let got = output_of(subscriber);
    assert!(
        got.contains("plant/boiler-1/setpoint 75 from the dashboard"),
        "subscriber got: {got}"
    );

    // The other views load: subscriptions, topic tree, retained, bridges, configuration.
    browser.click("#nav-subscriptions");
    browser.until(
        "subscriptions",
        "return document.querySelectorAll('[data-testid=sub-row]').length >= 3",
    );
    browser.click("#nav-topics");
    browser.until(
        "the topic tree",
        "return /nodes/.test(document.getElementById('tree-summary').textContent)",
    );
    browser.screenshot("topic-tree.png");
    browser.click("#nav-retained");
    browser.until(
        "retained messages",
        "return document.querySelectorAll('[data-testid=retained-row]').length >= 2",
    );
    browser.screenshot("retained.png");
    browser.click("#nav-bridges");
    browser.until(
        "the bridge card",
        "return document.querySelectorAll('[data-testid=bridge-card]').length === 1",
    );
    browser.screenshot("bridges.png");
    browser.click("#nav-config");
    browser.until(
        "the configuration",
        "return /\\*\\*\\*\\*\\*\\*/.test(document.getElementById('config-json').textContent)",
    );
    browser.screenshot("config.png");
    drop(sensors.into_iter().map(output_of).collect::<Vec<_>>());
}
