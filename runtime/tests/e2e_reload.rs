#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Configuration files, SIGHUP reload and the stop/check verbs against the real binary.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{Dir, TIDEMQ, free_port, run, start, tool, wait_for};

fn publish(port: u16, creds: Option<(&str, &str)>, topic: &str, msg: &str) -> Output {
    let mut cmd = tool("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-m",
        msg,
        "-q",
        "1",
    ]);
    if let Some((user, pass)) = creds {
        cmd.args(["-u", user, "-P", pass]);
    }
    run(&mut cmd)
}

fn config(port: u16, auth: &str) -> String {
    format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\nlog.level = info\nauth {{\n{auth}\n}}\n")
}

#[test]
fn sighup_applies_new_users_to_new_connections_and_keeps_existing_ones() {
    let dir = Dir::new("reload");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    let pid = dir.file("tidemq.pid");
    std::fs::write(&conf, config(port, "allow_anonymous = true")).unwrap();
    let broker = start(&conf, &pid, &dir.file("broker.log"), port);

    // An anonymous subscriber connected under the old rules.
    let keeper = tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "reload/t",
            "-q",
            "1",
        ])
        .args(["-C", "2", "-W", "20", "-i", "keeper"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the subscriber", Duration::from_secs(10), || {
        broker.log().contains("client_id=\"keeper\"")
    });
    assert!(publish(port, None, "other/t", "anon ok").status.success());

    std::fs::write(
        &conf,
        config(
            port,
            "allow_anonymous = false\npassword {\n  alice = \"secret\"\n}",
        ),
    )
    .unwrap();
    let out = run(Command::new(TIDEMQ)
        .args(["reload", "--pid_file"])
        .arg(&pid));
    assert!(out.status.success(), "{out:?}");
    wait_for("the reload", Duration::from_secs(10), || {
        broker.log().contains("configuration reloaded")
    });

    let anon = publish(port, None, "reload/t", "refused");
    assert!(!anon.status.success(), "anonymous client still accepted");
    let wrong = publish(port, Some(("alice", "nope")), "reload/t", "refused");
    assert!(!wrong.status.success(), "wrong password accepted");
    let first = publish(port, Some(("alice", "secret")), "reload/t", "one");
    assert!(first.status.success(), "{first:?}");

    // A broken file is refused as a whole; the running rules stay.
    std::fs::write(&conf, "auth {\n  allow_anonymous = perhaps\n}\n").unwrap();
    let out = run(Command::new(TIDEMQ)
        .args(["reload", "--pid_file"])
        .arg(&pid));
    assert!(out.status.success());
    wait_for("the failed reload", Duration::from_secs(10), || {
        broker.log().contains("reload failed")
    });
    assert!(
        broker.log().contains("nanomq.conf:2: auth.allow_anonymous"),
        "the error names file, line and key"
    );
    assert!(
        !publish(port, None, "reload/t", "still refused")
            .status
            .success()
    );
    let second = publish(port, Some(("alice", "secret")), "reload/t", "two");
    assert!(second.status.success(), "{second:?}");

    // The subscriber from before the change got both messages.
    let kept = keeper.wait_with_output().unwrap();
    assert!(kept.status.success(), "{kept:?}");
    assert_eq!(String::from_utf8_lossy(&kept.stdout), "one\ntwo\n");

    let out = run(Command::new(TIDEMQ).args(["stop", "--pid_file"]).arg(&pid));
    assert!(out.status.success(), "{out:?}");
    assert!(!pid.exists(), "pid file removed on exit");
}

#[test]
fn second_start_with_the_same_pid_file_is_refused() {
    let dir = Dir::new("pidfile");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    let pid = dir.file("tidemq.pid");
    std::fs::write(&conf, config(port, "allow_anonymous = true")).unwrap();
    let _broker = start(&conf, &pid, &dir.file("broker.log"), port);
    let out = run(Command::new(TIDEMQ)
        .args([
            "start",
            "--url",
            &format!("nmq-tcp://127.0.0.1:{}", free_port()),
        ])
        .arg("--pid_file")
        .arg(&pid));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already running"), "{err}");
}

/// A pid directory someone else could write to (here: world-writable, as a local user would
/// plant it) is refused before anything is written there; a symlink as the pid file too.
#[test]
fn a_shared_pid_directory_or_a_planted_symlink_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("piddir");
    let shared = dir.file("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let url = format!("nmq-tcp://127.0.0.1:{}", free_port());
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--url", &url, "--pid_file"])
        .arg(shared.join("tidemq.pid")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writable by group or others"), "{err}");
    assert!(!shared.join("tidemq.pid").exists());

    let private = dir.file("private");
    std::fs::create_dir(&private).unwrap();
    let victim = dir.file("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, private.join("tidemq.pid")).unwrap();
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--url", &url, "--pid_file"])
        .arg(private.join("tidemq.pid")));
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}

#[test]
fn check_reports_the_line_of_a_broken_file_and_fails() {
    let dir = Dir::new("check");
    let conf = dir.file("broken.conf");
    std::fs::write(
        &conf,
        "mqtt {\n  property_size = 32\n  max_packet_size = huge\n}\n",
    )
    .unwrap();
    let out = run(Command::new(TIDEMQ).args(["check", "--conf"]).arg(&conf));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.conf:3"), "{err}");
    assert!(err.contains("mqtt.max_packet_size"), "{err}");

    let old = dir.file("old.conf");
    std::fs::write(&old, "url=nmq-tcp://0.0.0.0:1883\nmsq_len=oops\n").unwrap();
    let out = run(Command::new(TIDEMQ).args(["check", "--old_conf"]).arg(&old));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("old.conf:2: msq_len"));
}

#[test]
fn check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = Dir::new("check-ok");
    let conf = dir.file("ok.conf");
    std::fs::write(
        &conf,
        "auth { password { alice = \"hunter2\" } }\nmqtt { max_mqueue_len = 77 }\n",
    )
    .unwrap();
    let out = run(Command::new(TIDEMQ)
        .args(["check", "--conf"])
        .arg(&conf)
        .env("NANOMQ_PROPERTY_SIZE", "9"));
    assert!(out.status.success(), "{out:?}");
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["msq_len"], 77);
    assert_eq!(
        shown["property_size"], 9,
        "environment applies over the file"
    );
    assert_eq!(shown["users"]["alice"], "******");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

#[test]
fn shipped_config_starts_the_broker_from_the_repo_root() {
    let out = run(Command::new(TIDEMQ)
        .arg("check")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/..")));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("etc/nanomq.conf: ok"));
}

#[test]
fn daemon_mode_runs_in_the_background_logs_to_a_file_and_stops() {
    let dir = Dir::new("daemon");
    let port = free_port();
    let pid = dir.file("tidemq.pid");
    let log = dir.file("logs/tidemq.log");
    let out = run(Command::new(TIDEMQ)
        .args([
            "start",
            "-d",
            "--url",
            &format!("nmq-tcp://127.0.0.1:{port}"),
        ])
        .arg("--pid_file")
        .arg(&pid)
        .arg("--log_file")
        .arg(&log)
        .env_remove("RUST_LOG"));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("started in the background"));
    wait_for("the background broker", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && pid.exists()
    });
    assert!(publish(port, None, "d/t", "hello").status.success());
    let out = run(Command::new(TIDEMQ).args(["stop", "--pid_file"]).arg(&pid));
    assert!(out.status.success(), "{out:?}");
    assert!(!pid.exists());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("client connected") && text.contains("shutting down"),
        "{text}"
    );
}

#[test]
fn a_listener_that_cannot_bind_stops_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = Dir::new("bind-fail");
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--url", &format!("nmq-tcp://127.0.0.1:{port}")])
        .arg("--pid_file")
        .arg(dir.file("pid")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (tcp listener, url = nmq-tcp://127.0.0.1:{port})"
        )),
        "{err}"
    );
}

fn admin(port: u16, user_pass: &str, body: &str) -> (u16, String) {
    let out = run(tool("curl").args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--max-time",
        "10",
        "-u",
        user_pass,
        "-X",
        "POST",
        &format!("http://127.0.0.1:{port}/api/v1"),
        "--data-binary",
        body,
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A reload that changes the admin credentials (and settings such as `limit_conn`) on the same
/// address applies them without a rebind; a req 10 restart whose configuration does not wholly
/// take effect says so in its reply.
#[test]
fn reload_changes_admin_credentials_on_the_same_port_and_restart_reports_what_failed() {
    let dir = Dir::new("reload-admin");
    let (port, http) = (free_port(), free_port());
    let conf = dir.file("nanomq.conf");
    let pid = dir.file("tidemq.pid");
    let write = |user: &str, pass: &str, extra: &str| {
        std::fs::write(
            &conf,
            format!(
                "listeners.tcp.bind = \"127.0.0.1:{port}\"\nhttp_server {{\n  port = {http}\n  username = {user}\n  password = {pass}\n  limit_conn = {}\n}}\n{extra}",
                if user == "admin" { 32 } else { 8 }
            ),
        )
        .unwrap();
    };
    write("admin", "public", "");
    let broker = start(&conf, &pid, &dir.file("broker.log"), port);
    let info = r#"{"req": 2, "seq": 1}"#;
    assert_eq!(admin(http, "admin:public", info).0, 200);

    write("root", "n3w", "");
    let out = run(Command::new(TIDEMQ)
        .args(["reload", "--pid_file"])
        .arg(&pid));
    assert!(out.status.success(), "{out:?}");
    wait_for("the reload", Duration::from_secs(10), || {
        broker.log().contains("configuration reloaded")
    });
    assert_eq!(admin(http, "admin:public", info).0, 401);
    assert_eq!(admin(http, "root:n3w", info).0, 200);

    // TLS with a certificate that does not exist: the rest applies, the reply says what not.
    write(
        "root",
        "n3w",
        &format!(
            "listeners.ssl {{\n  bind = \"127.0.0.1:{}\"\n  keyfile = \"/nonexistent/key.pem\"\n  certfile = \"/nonexistent/cert.pem\"\n}}\nmqtt.max_mqueue_len = 77\n",
            free_port()
        ),
    );
    let (status, body) = admin(
        http,
        "root:n3w",
        r#"{"req": 10, "seq": 9, "action": "restart"}"#,
    );
    assert_eq!(status, 500, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["code"], 102, "{body}");
    assert_eq!(reply["seq"], 9);
    assert!(reply["message"].as_str().unwrap().contains("tls"), "{body}");
    assert!(broker.log().contains("configuration reloaded in part"));
    let (_, shown) = admin(http, "root:n3w", r#"{"req": 11, "seq": 2}"#);
    assert!(shown.contains("\"msq_len\":77"), "{shown}");
}
