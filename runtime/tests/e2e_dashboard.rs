#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`, driven over
//! WebDriver by a small client here) against the real broker with MQTT clients connected:
//! sign in, see the client list, filter it, kick a client (two clicks: the first arms the
//! button), publish a message that a subscriber receives. Screenshots go to the target
//! directory, or with `TIDEMQ_SCREENSHOTS=1` to `docs/screenshots/` (the README shows them).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::{Dir, Running, free_port, start, tool, wait_for};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One HTTP/1.1 exchange with chromedriver (`Connection: close`, so the body ends with the
/// stream).
fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    // chromedriver keeps the connection open: read the head, then Content-Length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "chromedriver closed the connection early");
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned();
    let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(status < 400, "{method} {path}: {status} {body}");
    value["value"].clone()
}

struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: Dir,
}

impl Browser {
    fn start() -> Browser {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install the Debian packages chromium and chromium-driver (scripts/test does)"
            );
        }
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("chromedriver", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let profile = Dir::new("dashboard-chromium");
        let caps = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking",
                            "--disable-component-update", "--disable-sync",
                            "--disable-dev-shm-usage", "--window-size=1360,900",
                            format!("--user-data-dir={}", profile.0.display()),
                        ]
                    }
                }
            }
        });
        let created = http(port, "POST", "/session", Some(&caps));
        let session = created["sessionId"].as_str().unwrap().to_owned();
        Browser {
            driver,
            port,
            session,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        http(self.port, method, &path, body.as_ref())
    }

    fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
    }

    fn find(&self, css: &str) -> String {
        let found = self.cmd(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// Waits until `script` returns `true`.
    fn until(&self, what: &str, script: &str) {
        let start = Instant::now();
        loop {
            if self.js(script) == json!(true) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}; page text: {}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, name: &str) {
        let png = self.cmd("GET", "/screenshot", None);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
        // The README's pictures are refreshed on request; a test run leaves the tree clean.
        let dir = match std::env::var_os("TIDEMQ_SCREENSHOTS") {
            Some(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots"),
            None => PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http_quiet(self.port, &format!("/session/{}", self.session));
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn http_quiet(port: u16, path: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "DELETE {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut sink = [0u8; 4096];
    s.read(&mut sink).map(|_| ())
}

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
