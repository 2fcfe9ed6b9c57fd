//! Operations: service manager notifications from the real binary, the health endpoints
//! (also during the recovery of a large journal), `tidemq healthcheck`, JSON logs, and the
//! shipped systemd unit checked by `systemd-analyze verify`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Dir, TIDEMQ, free_port, run, wait_for};
use tidemq_core::config::{PersistenceConfig, SyncMode};
use tidemq_core::persist::Record;
use tidemq_runtime::store::{FsDir, Journal};

/// The broker as a child process with its stderr in a file; killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// SIGTERM, then the exit status (bounded wait).
    fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "tidemq did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ---\n{}", self.log());
        }
    }
}

/// `tidemq start --conf conf` with only the given variables among the ones that matter here.
fn spawn(dir: &Dir, conf: &Path, env: &[(&str, &str)]) -> Proc {
    let log = dir.file("broker.log");
    let mut cmd = Command::new(TIDEMQ);
    cmd.args(["start", "--conf"])
        .arg(conf)
        .arg("--pid_file")
        .arg(dir.file("tidemq.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k == "RUST_LOG"
            || k.starts_with("NANOMQ_")
            || k.starts_with("TIDEMQ_")
            || k == "NOTIFY_SOCKET"
            || k.starts_with("WATCHDOG_")
        {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc {
        child: cmd.spawn().unwrap(),
        log,
    }
}

fn config(mqtt: u16, http: u16, data: Option<&Path>) -> String {
    let mut text = format!(
        "listeners.tcp.bind = \"127.0.0.1:{mqtt}\"\n\
         log.level = info\n\
         http_server {{\n  enable = true\n  port = {http}\n  ip_addr = \"127.0.0.1\"\n}}\n"
    );
    if let Some(data) = data {
        text.push_str(&format!(
            "persistence {{\n  data_dir = \"{}\"\n  sync = none\n}}\n",
            data.display()
        ));
    }
    text
}

/// One HTTP/1.0 request to 127.0.0.1:`port`: status and body, or the I/O error.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no head/body split: {response:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok((code, body.to_owned()))
}

/// The notifications the broker sends, received on a socket the test binds.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Dir) -> NotifySocket {
        let path = dir.file("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// The next message, or `None` after `wait`.
    fn recv(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("notify socket: {e}"),
        }
    }

    /// Messages until one satisfies `done` (included), skipping watchdog pings.
    fn until(&self, what: &str, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what}; got {seen:?}");
            let Some(msg) = self.recv(left) else { continue };
            let finished = done(&msg);
            if msg != "WATCHDOG=1" {
                seen.push(msg);
            }
            if finished {
                return seen;
            }
        }
    }
}

#[test]
fn notifications_follow_start_up_reload_and_shutdown() {
    let dir = Dir::new("ops-notify");
    let (mqtt, admin) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    let data = dir.file("data");
    std::fs::write(&conf, config(mqtt, admin, Some(&data))).unwrap();
    let notify = NotifySocket::bind(&dir);
    // 300 ms: a ping every 150 ms.
    let mut broker = spawn(
        &dir,
        &conf,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let mut sequence: Vec<String> = Vec::new();

    // Start-up: everything before READY=1, then READY=1 itself.
    let mut ready_checked = false;
    let before_ready = notify.until("READY=1", |msg| {
        if !msg.contains("READY=1") {
            return false;
        }
        // At the moment READY=1 arrives, both listeners accept and report ready.
        TcpStream::connect(("127.0.0.1", mqtt)).expect("MQTT port accepts at READY=1");
        TcpStream::connect(("127.0.0.1", admin)).expect("admin port accepts at READY=1");
        let (code, body) = http(admin, "GET", "/readyz").unwrap();
        assert_eq!((code, body.as_str()), (200, r#"{"status":"ready"}"#));
        ready_checked = true;
        true
    });
    assert!(ready_checked);
    assert_eq!(
        before_ready,
        [
            "STATUS=recovering store\nEXTEND_TIMEOUT_USEC=20000000",
            "READY=1\nSTATUS=running",
        ],
        "recovery is reported before READY=1, and READY=1 comes once"
    );
    sequence.extend(before_ready);

    // Watchdog pings keep coming while the broker idles.
    let started = Instant::now();
    let mut pings = 0;
    while pings < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "only {pings} watchdog pings"
        );
        match notify.recv(Duration::from_secs(2)) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            Some(m) => panic!("unexpected notification {m:?}"),
            None => {}
        }
    }
    sequence.push(format!("WATCHDOG=1 (x{pings}, every ~150 ms)"));

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 saying it applied.
    broker.signal("HUP");
    let reload = notify.until("READY=1 after the reload", |m| m.starts_with("READY=1"));
    assert_eq!(reload.len(), 2, "{reload:?}");
    let lines: Vec<&str> = reload[0].lines().collect();
    assert_eq!(
        lines[..2],
        ["RELOADING=1", "STATUS=reloading the configuration"]
    );
    let usec: u64 = lines[2]
        .strip_prefix("MONOTONIC_USEC=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {:?}", reload[0]));
    assert!(usec > 0);
    assert_eq!(reload[1], "READY=1\nSTATUS=running; configuration reloaded");
    sequence.extend(reload);

    // A broken file: the reload is refused and the status says so.
    std::fs::write(&conf, "auth {\n  allow_anonymous = perhaps\n}\n").unwrap();
    broker.signal("HUP");
    let failed = notify.until("READY=1 after the failed reload", |m| {
        m.starts_with("READY=1")
    });
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed[0].starts_with("RELOADING=1\n"));
    assert!(
        failed[1]
            .starts_with("READY=1\nSTATUS=running; reload failed, previous configuration kept: ")
            && failed[1].contains("auth.allow_anonymous"),
        "{:?}",
        failed[1]
    );
    sequence.extend(failed);

    // SIGTERM: STOPPING=1, then a clean exit.
    broker.signal("TERM");
    let stopping = notify.until("STOPPING=1", |m| m.starts_with("STOPPING=1"));
    assert_eq!(stopping, ["STOPPING=1\nSTATUS=shutting down"]);
    sequence.extend(stopping);
    let status = broker.stop();
    assert!(status.success(), "{status:?}");
    eprintln!("notification sequence:");
    for m in &sequence {
        eprintln!("  {m:?}");
    }
}

#[test]
fn no_notifications_or_watchdog_without_the_variables() {
    // The same binary without NOTIFY_SOCKET: nothing is sent, nothing breaks.
    let dir = Dir::new("ops-nonotify");
    let (mqtt, admin) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(&conf, config(mqtt, admin, None)).unwrap();
    let notify = NotifySocket::bind(&dir);
    let mut broker = spawn(&dir, &conf, &[("WATCHDOG_USEC", "100000")]);
    wait_for("readiness", Duration::from_secs(10), || {
        http(admin, "GET", "/readyz").is_ok_and(|(c, _)| c == 200)
    });
    assert_eq!(notify.recv(Duration::from_millis(300)), None);
    assert!(broker.stop().success());
}

/// Writes a journal of `sessions` persistent sessions with `subs` subscriptions each,
/// through the store's own writer; returns its size in bytes.
fn write_journal(data: &Path, sessions: usize, subs: usize) -> u64 {
    let config = PersistenceConfig {
        enable: true,
        data_dir: data.display().to_string(),
        sync: SyncMode::None,
        snapshot_threshold: u64::MAX,
        ..PersistenceConfig::default()
    };
    let dir = FsDir::open(data).unwrap();
    let (mut journal, _, _) = Journal::open(Box::new(dir), &config).unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut upto = 0u64;
    for s in 0..sessions {
        let client_id = format!("ops-recovery-client-{s:08}");
        let mut records = vec![Record::SessionPut {
            client_id: client_id.clone(),
            version: 5,
            expiry_secs: 86_400,
            disconnected_at_unix_ms: Some(now_ms),
        }];
        for f in 0..subs {
            records.push(Record::SubPut {
                client_id: client_id.clone(),
                filter: format!("site/{s}/sensor/{f}/#"),
                options: 1,
                subscription_id: None,
            });
        }
        upto += records.len() as u64;
        journal.append(upto, &records).unwrap();
    }
    journal.commit().unwrap();
    drop(journal);
    std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn readyz_is_503_while_a_large_journal_is_recovered() {
    let dir = Dir::new("ops-recovery");
    let (mqtt, admin) = (free_port(), free_port());
    let data = dir.file("data");
    let written = Instant::now();
    let bytes = write_journal(&data, 60_000, 10);
    eprintln!(
        "journal: {bytes} bytes, 660000 records, written in {:?}",
        written.elapsed()
    );
    let conf = dir.file("nanomq.conf");
    std::fs::write(&conf, config(mqtt, admin, Some(&data))).unwrap();

    let mut broker = spawn(&dir, &conf, &[]);
    let spawned = Instant::now();
    let (mut starting, mut replaying, mut restoring) = (0u32, 0u32, 0u32);
    let mut first_answer = None;
    let mut checked_during_recovery = false;
    let ready_body = loop {
        assert!(
            spawned.elapsed() < Duration::from_secs(120),
            "not ready within 120 s"
        );
        if let Some(status) = broker.child.try_wait().unwrap() {
            panic!("tidemq exited during recovery: {status:?}");
        }
        let Ok((code, body)) = http(admin, "GET", "/readyz") else {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        };
        first_answer.get_or_insert_with(Instant::now);
        if code == 200 {
            break body;
        }
        assert_eq!(code, 503, "{body}");
        // Replaying the journal, then restoring the core from it; listeners come after.
        match body.as_str() {
            r#"{"status":"starting","checks":{"listeners":"pending","store":"recovering"}}"# => {
                replaying += 1
            }
            r#"{"status":"starting","checks":{"listeners":"pending","store":"recovered"}}"# => {
                restoring += 1
            }
            other => panic!("unexpected answer during recovery: {other}"),
        }
        starting += 1;
        if !checked_during_recovery {
            checked_during_recovery = true;
            // Alive, not running, and the admin API is not handed to a core without its state.
            assert_eq!(
                http(admin, "GET", "/healthz").unwrap(),
                (200, "ok".to_owned())
            );
            let (code, body) = http(admin, "GET", "/status").unwrap();
            assert_eq!(code, 503);
            assert!(
                body.ends_with("is starting\ntidemq is not_running"),
                "{body}"
            );
            let (code, body) = http(admin, "POST", "/api/v1").unwrap();
            assert_eq!(code, 503, "{body}");
            assert!(body.contains("starting"), "{body}");
        }
    };
    let ready_after = spawned.elapsed();
    let first_answer = first_answer.unwrap().duration_since(spawned);
    assert_eq!(ready_body, r#"{"status":"ready"}"#);
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains("store recovered"))
        .unwrap_or_else(|| panic!("no 'store recovered' line in\n{log}"));
    let recovery_ms: u64 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no ms= in {line}"));
    eprintln!(
        "recovery: {recovery_ms} ms (store recovered line); first /readyz answer after \
         {first_answer:?}, 200 after {ready_after:?}; {starting} answers 503 starting \
         ({replaying} with the store recovering, {restoring} while the core is restored)"
    );
    assert!(line.contains("records=660000"), "{line}");
    // How long the replay takes is the machine's; what is checked is what /readyz said
    // meanwhile.
    assert!(
        replaying >= 10,
        "only {replaying} 503 answers during {recovery_ms} ms of journal replay"
    );
    assert!(broker.stop().success());
}

#[test]
fn health_endpoints_need_no_credentials_and_healthcheck_exit_codes() {
    let dir = Dir::new("ops-health");
    let (mqtt, admin) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(&conf, config(mqtt, admin, None)).unwrap();
    let mut broker = spawn(&dir, &conf, &[]);
    wait_for("readiness", Duration::from_secs(10), || {
        http(admin, "GET", "/readyz").is_ok_and(|(c, _)| c == 200)
    });

    assert_eq!(http(admin, "GET", "/healthz").unwrap(), (200, "ok".into()));
    let ready = (200, r#"{"status":"ready"}"#.to_owned());
    assert_eq!(http(admin, "GET", "/readyz").unwrap(), ready);
    assert_eq!(http(admin, "GET", "/api/v4/health").unwrap(), ready);
    let (code, body) = http(admin, "GET", "/status").unwrap();
    assert_eq!(code, 200);
    let (node, running) = body.split_once('\n').unwrap();
    assert!(
        node.starts_with("Node tidemq@") && node.ends_with(" is started"),
        "{body}"
    );
    assert_eq!(running, "tidemq is running");
    assert_eq!(http(admin, "POST", "/healthz").unwrap().0, 405);
    // The admin API itself still wants credentials.
    assert_eq!(http(admin, "POST", "/api/v1").unwrap().0, 401);

    let healthcheck = |args: &[&str]| {
        let out = run(Command::new(TIDEMQ)
            .arg("healthcheck")
            .args(args)
            .env_remove("TIDEMQ_CONF_PATH")
            .env_remove("NANOMQ_CONF_PATH"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // The address from the configuration file.
    let (code, out) = healthcheck(&["--conf", conf.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{admin}/readyz: 200")),
        "{out}"
    );
    // A URL without a path asks /readyz.
    let (code, out) = healthcheck(&["--url", &format!("http://127.0.0.1:{admin}")]);
    assert_eq!(code, Some(0), "{out}");
    // Nothing listening.
    let closed = free_port();
    let (code, out) = healthcheck(&["--url", &format!("http://127.0.0.1:{closed}/readyz")]);
    assert_eq!(code, Some(1), "{out}");
    // The admin API off in the configuration.
    let off = dir.file("off.conf");
    std::fs::write(&off, "http_server.enable = false\n").unwrap();
    let (code, out) = healthcheck(&["--conf", off.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("http_server.enable = false"), "{out}");

    // Not ready: a server that answers 503 (and shows the request a probe sends).
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_port = fake.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = fake.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "request cut short");
            request.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"status":"draining"}"#;
        write!(
            stream,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8(request).unwrap()
    });
    let (code, out) = healthcheck(&["--url", &format!("http://127.0.0.1:{fake_port}/readyz")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("503"), "{out}");
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /readyz HTTP/1.0\r\n"),
        "{request:?}"
    );

    assert!(broker.stop().success());
}

#[test]
fn json_logs_are_one_object_per_line() {
    // Chosen by the environment over the configuration's `text`.
    json_logs("ops-json", "text", &[("TIDEMQ_LOG_FORMAT", "json")]);
}

#[test]
fn log_format_json_in_the_configuration() {
    json_logs("ops-json-conf", "json", &[]);
    // An unknown format in the file is refused at start, naming the key.
    let dir = Dir::new("ops-json-bad");
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "{}log.format = xml\n",
            config(free_port(), free_port(), None)
        ),
    )
    .unwrap();
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--conf"])
        .arg(&conf)
        .arg("--pid_file")
        .arg(dir.file("pid")));
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("log.format"), "{stderr}");
}

fn json_logs(name: &str, configured: &str, env: &[(&str, &str)]) {
    let dir = Dir::new(name);
    let (mqtt, admin) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!("{}log.format = {configured}\n", config(mqtt, admin, None)),
    )
    .unwrap();
    let mut broker = spawn(&dir, &conf, env);
    wait_for("the listeners", Duration::from_secs(10), || {
        broker.log().contains("admin API listening")
    });
    assert!(broker.stop().success());
    let log = broker.log();
    let mut messages = Vec::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let level = value["level"].as_str().unwrap_or_else(|| panic!("{line}"));
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{line}"
        );
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["target"].is_string(), "{line}");
        messages.push(
            value["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no message: {line}"))
                .to_owned(),
        );
    }
    assert!(
        messages.iter().any(|m| m == "shutting down"),
        "{messages:?}"
    );
    // Fields stay structured.
    let listening = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["message"] == "listening")
        .unwrap();
    assert_eq!(listening["listener"], "tcp");
    assert_eq!(listening["addr"], format!("127.0.0.1:{mqtt}"));

    // An unknown format is refused at start.
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--conf"])
        .arg(&conf)
        .arg("--pid_file")
        .arg(dir.file("other.pid"))
        .env("TIDEMQ_LOG_FORMAT", "xml"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("TIDEMQ_LOG_FORMAT"), "{stderr}");
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = std::fs::read_to_string(root.join("packaging/systemd/tidemq.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tidemq start"));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let unit = unit.replace("/usr/bin/tidemq", TIDEMQ);
    let dir = Dir::new("ops-systemd");
    let path = dir.file("tidemq.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze: {e}: install the Debian package systemd (scripts/test does)")
        });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // Unknown or misplaced directives are only warned about: any output is a failure.
    assert_eq!(text.trim(), "", "systemd-analyze verify complained");
}
