#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Authentication and the ACL against the real binary, with mosquitto's tools (including
//! Debian's `mosquitto_passwd`) and paho-mqtt (`tests/clients/paho_auth.py`).

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Dir, TIDEMQ, free_port, run, start, tool, wait_for};

const PAHO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_auth.py");

// Vectors from independent tools (see runtime/src/auth/hash.rs): passlib's PBKDF2-SHA512 and
// mosquitto_passwd 1.x's salted SHA-512.
const PBKDF2_PHC: &str = "$pbkdf2-sha512$2500$yMnKy8zNzs/Q0dLT1NXW1w$00ObAxIBR63SFXtENZp9119ydlpxOeq/GJVdzBVXh3gFELerUnQp./qCymuO.7qoOK3NAxZ7OhzdPusSTKDVfQ";
const MOSQ_6: &str = "$6$viK7oio9kIv3NQxU$XiJL2JA3uftr9yslOv7yDbEbXvCwAByqAwMyTyK7LG6acghYI+yj0djaU+8Nkb430E9oUC7tuW/c4ig7K4aGsg==";

fn config(port: u16, auth: &str) -> String {
    format!("listeners.tcp.bind = \"127.0.0.1:{port}\"\nlog.level = debug\nauth {{\n{auth}\n}}\n")
}

/// `mosquitto_pub` of one QoS 1 message; whether the broker took it.
fn pub_ok(port: u16, creds: Option<(&str, &str)>) -> bool {
    pub_to(port, creds, "t")
}

fn pub_to(port: u16, creds: Option<(&str, &str)>, topic: &str) -> bool {
    let mut cmd = tool("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", topic, "-m", "x", "-q", "1"]);
    if let Some((u, p)) = creds {
        cmd.args(["-u", u, "-P", p]);
    }
    run(&mut cmd).status.success()
}

/// Runs `paho_auth.py` and returns its lines.
fn paho(port: u16, version: &str, id: &str, args: &[&str]) -> Vec<String> {
    let out = run(Command::new("python3")
        .arg(PAHO)
        .args([&port.to_string(), version, id])
        .args(args));
    assert!(out.status.success(), "paho_auth.py failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn has(lines: &[String], line: &str) -> bool {
    lines.iter().any(|l| l == line)
}

fn argon2_hash(dir: &Dir, user: &str, password: &str) -> String {
    let file = dir.file("argon.passwd");
    let out = run(Command::new(TIDEMQ)
        .args(["passwd", "-c", "-b"])
        .arg(&file)
        .args([user, password]));
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    let (_, hash) = text.trim().split_once(':').unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash.to_owned()
}

#[test]
fn hashed_users_of_every_format_and_wrong_passwords() {
    let dir = Dir::new("auth-hashes");
    let port = free_port();
    // A file made by Debian's mosquitto_passwd.
    let mosq = dir.file("mosquitto.passwd");
    let out = run(tool("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&mosq)
        .args(["mosq", "mosq-pw"]));
    assert!(out.status.success(), "{out:?}");
    let argon = argon2_hash(&dir, "argon", "argon-pw");
    let auth = format!(
        "allow_anonymous = false\npassword_file = \"{}\"\npassword {{\n  argon = \"{argon}\"\n  \
         pbkdf2 = \"{PBKDF2_PHC}\"\n  sha = \"{MOSQ_6}\"\n  plain = \"plain-pw\"\n  \
         odd = \"$5$unknown$scheme\"\n}}",
        mosq.display()
    );
    let conf = dir.file("nanomq.conf");
    std::fs::write(&conf, config(port, &auth)).unwrap();
    let broker = start(
        &conf,
        &dir.file("tidemq.pid"),
        &dir.file("broker.log"),
        port,
    );

    for (user, good) in [
        ("mosq", "mosq-pw"),
        ("argon", "argon-pw"),
        ("pbkdf2", "passlib"),
        ("sha", "hunter2"),
        ("plain", "plain-pw"),
    ] {
        assert!(pub_ok(port, Some((user, good))), "{user} refused");
        assert!(
            !pub_ok(port, Some((user, "wrong"))),
            "{user}: wrong password taken"
        );
    }
    // The entry with an unknown scheme is refused, whatever the password.
    assert!(!pub_ok(port, Some(("odd", "$5$unknown$scheme"))));
    assert!(!pub_ok(port, Some(("nobody", "x"))));
    assert!(!pub_ok(port, None));
    let log = broker.log();
    assert!(log.contains("auth.password.odd: refused"), "{log}");
    assert!(log.contains("plaintext passwords"), "{log}");

    // v5 and 3.1.1 reason codes for a wrong password and for no credentials.
    let v5 = paho(port, "5", "p5", &["--user", "argon", "--pw", "bad"]);
    assert!(has(&v5, "connack 134"), "{v5:?}");
    // 3.1.1 return codes as mosquitto_pub names them: 4 and 5.
    let v3 = |creds: &[&str]| {
        let out = run(tool("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311"])
            .args(["-t", "t", "-m", "x"])
            .args(creds));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let wrong = v3(&["-u", "argon", "-P", "bad"]);
    assert!(wrong.contains("bad user name or password"), "{wrong}");
    let none = v3(&[]);
    assert!(none.contains("not authorised"), "{none}");
    let anon = paho(port, "5", "p0", &[]);
    assert!(has(&anon, "connack 135"), "{anon:?}");
}

#[test]
fn anonymous_modes() {
    let dir = Dir::new("auth-anon");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    let pid = dir.file("tidemq.pid");
    let users = "password {\n  alice = \"secret\"\n}";
    std::fs::write(
        &conf,
        config(port, &format!("allow_anonymous = true\n{users}")),
    )
    .unwrap();
    let broker = start(&conf, &pid, &dir.file("broker.log"), port);
    // strict (the default): anonymous clients in, given credentials checked.
    assert!(pub_ok(port, None));
    assert!(pub_ok(port, Some(("alice", "secret"))));
    assert!(!pub_ok(port, Some(("alice", "wrong"))));

    // nanomq: allow_anonymous = true looks at no credentials.
    std::fs::write(
        &conf,
        config(
            port,
            &format!("allow_anonymous = true\nanonymous_mode = nanomq\n{users}"),
        ),
    )
    .unwrap();
    reload(&pid, &broker, 1);
    assert!(pub_ok(port, Some(("alice", "wrong"))));

    // nanomq without anonymous: missing credentials refused (v5 0x86), others checked.
    std::fs::write(
        &conf,
        config(
            port,
            &format!("allow_anonymous = false\nanonymous_mode = nanomq\n{users}"),
        ),
    )
    .unwrap();
    reload(&pid, &broker, 2);
    assert!(!pub_ok(port, None));
    let v5 = paho(port, "5", "n5", &[]);
    assert!(has(&v5, "connack 134"), "{v5:?}");
    assert!(!pub_ok(port, Some(("alice", "wrong"))));
    assert!(pub_ok(port, Some(("alice", "secret"))));
}

/// Asks for a reload and waits until the log shows the `n`th.
fn reload(pid: &std::path::Path, broker: &support::Running, n: usize) {
    let out = run(Command::new(TIDEMQ).args(["reload", "--pid_file"]).arg(pid));
    assert!(out.status.success(), "{out:?}");
    wait_for("the reload", Duration::from_secs(10), || {
        broker.log().matches("configuration reloaded").count() >= n
    });
}

const ACL: &str = r#"allow_anonymous = true
no_match = deny
acl = {
  rules = [
    { permit = allow, username = "admin" }
    { permit = deny, action = publish, topics = ["secret/#"] }
    { permit = allow, action = subscribe, topics = ["news/+", "dev/${clientid}/#"] }
    { permit = allow, topics = ["user/${username}/#"] }
    { permit = allow, action = publish, topics = ["news/#", "dev/+/+"] }
  ]
}"#;

#[test]
fn acl_allows_and_denies_publish_and_subscribe_with_the_codes_of_each_version() {
    let dir = Dir::new("auth-acl");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    // The rules from an included acl.conf, as NanoMQ ships them.
    let (head, rules) = ACL.split_once("acl = ").unwrap();
    std::fs::write(
        dir.file("acl.conf"),
        format!(
            "rules = {}",
            &rules[rules.find('[').unwrap()..rules.rfind(']').unwrap() + 1]
        ),
    )
    .unwrap();
    let auth = format!("{head}acl = {{include \"acl.conf\"}}");
    std::fs::write(&conf, config(port, &auth)).unwrap();
    let _broker = start(
        &conf,
        &dir.file("tidemq.pid"),
        &dir.file("broker.log"),
        port,
    );

    // Subscriptions: filter-in-filter, placeholders.
    let s5 = paho(
        port,
        "5",
        "dev1",
        &[
            "--user",
            "bob",
            "--pw",
            "x",
            "--sub",
            "news/+",
            "--sub",
            "news/#",
            "--sub",
            "dev/dev1/#",
            "--sub",
            "dev/dev2/x",
            "--sub",
            "user/bob/#",
            "--sub",
            "user/+/#",
        ],
    );
    for (filter, code) in [
        ("news/+", 1),
        ("news/#", 135),
        ("dev/dev1/#", 1),
        ("dev/dev2/x", 135),
        ("user/bob/#", 1),
        ("user/+/#", 135),
    ] {
        assert!(
            has(&s5, &format!("suback {filter} {code}")),
            "{filter}: {s5:?}"
        );
    }
    let s3 = paho(port, "3", "dev3", &["--sub", "news/#", "--sub", "news/a"]);
    assert!(has(&s3, "suback news/# 128"), "{s3:?}");
    assert!(has(&s3, "suback news/a 1"), "{s3:?}");

    // An admin watching everything sees only what was allowed.
    let mut watcher = Command::new("python3")
        .arg(PAHO)
        .args([
            &port.to_string(),
            "5",
            "watch",
            "--user",
            "admin",
            "--pw",
            "x",
        ])
        .args(["--sub", "#", "--listen", "6"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let p5 = paho(
        port,
        "5",
        "pub5",
        &[
            "--pub",
            "secret/a=no",
            "--pub",
            "elsewhere=no",
            "--pub",
            "news/a=yes5",
        ],
    );
    assert!(has(&p5, "puback secret/a 135"), "{p5:?}");
    assert!(has(&p5, "puback elsewhere 135"), "{p5:?}");
    assert!(has(&p5, "puback news/a 0"), "{p5:?}");
    // 3.1.1: acknowledged, dropped.
    let p3 = paho(
        port,
        "3",
        "pub3",
        &[
            "--user",
            "carol",
            "--pw",
            "x",
            "--pub",
            "secret/b=no",
            "--pub",
            "user/carol/x=yes3",
        ],
    );
    assert!(has(&p3, "puback secret/b 0"), "{p3:?}");
    assert!(!has(&p3, "closed"), "{p3:?}");
    let out = wait_output(&mut watcher, Duration::from_secs(20));
    assert!(out.contains("msg news/a yes5"), "{out}");
    assert!(out.contains("msg user/carol/x yes3"), "{out}");
    assert!(
        !out.contains(" no"),
        "a denied publish was delivered: {out}"
    );
}

fn wait_output(child: &mut Child, limit: Duration) -> String {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < limit, "client did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn deny_action_disconnect_closes_the_client() {
    let dir = Dir::new("auth-acl-disc");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        config(port, &format!("deny_action = disconnect\n{ACL}")),
    )
    .unwrap();
    let _broker = start(
        &conf,
        &dir.file("tidemq.pid"),
        &dir.file("broker.log"),
        port,
    );
    let p5 = paho(port, "5", "d5", &["--pub", "secret/a=no", "--listen", "1"]);
    assert!(has(&p5, "closed"), "{p5:?}");
    assert!(!p5.iter().any(|l| l.starts_with("puback")), "{p5:?}");
}

#[test]
fn an_acl_reload_revokes_a_stored_subscription() {
    let dir = Dir::new("auth-acl-reload");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    let pid = dir.file("tidemq.pid");
    let open = "allow_anonymous = true\nacl = { rules = [ { permit = allow } ] }";
    std::fs::write(&conf, config(port, open)).unwrap();
    let broker = start(&conf, &pid, &dir.file("broker.log"), port);

    let sub = paho(port, "5", "keeper", &["--persistent", "--sub", "feed/#"]);
    assert!(has(&sub, "suback feed/# 1"), "{sub:?}");
    // While it is away, a message is kept for it.
    assert!(pub_to(port, None, "feed/1"));
    let back = paho(port, "5", "keeper", &["--persistent", "--listen", "1"]);
    assert!(has(&back, "msg feed/1 x"), "{back:?}");

    let closed = "allow_anonymous = true\nacl = { rules = [\n  { permit = deny, action = subscribe, topics = [\"feed/#\"] }\n  { permit = allow }\n] }";
    std::fs::write(&conf, config(port, closed)).unwrap();
    reload(&pid, &broker, 1);
    assert!(pub_to(port, None, "feed/2"));
    let after = paho(port, "5", "keeper", &["--persistent", "--listen", "1"]);
    assert!(has(&after, "connack 0"), "{after:?}");
    assert!(
        !after.iter().any(|l| l.starts_with("msg")),
        "revoked subscription delivered: {after:?}"
    );
}

#[test]
fn an_argon2id_connect_flood_does_not_stall_other_clients() {
    let dir = Dir::new("auth-flood");
    let port = free_port();
    let argon = argon2_hash(&dir, "flood", "flood-pw");
    let conf = dir.file("nanomq.conf");
    let auth = format!("allow_anonymous = true\npassword {{\n  flood = \"{argon}\"\n}}");
    std::fs::write(&conf, config(port, &auth)).unwrap();
    let _broker = start(
        &conf,
        &dir.file("tidemq.pid"),
        &dir.file("broker.log"),
        port,
    );

    // An anonymous subscriber, connected before the flood.
    let mut sub = support::mosquitto_sub(port, &["-t", "ping", "-q", "1", "-C", "10"]);
    std::thread::sleep(Duration::from_millis(500));
    // 64 clients connecting at once with argon2id passwords (each verify costs ~17 ms of a
    // core), half of them wrong.
    let flood: Vec<Child> = (0..64)
        .map(|i| {
            let pw = if i % 2 == 0 { "flood-pw" } else { "wrong" };
            tool("mosquitto_pub")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-i",
                    &format!("f{i}"),
                ])
                .args(["-u", "flood", "-P", pw, "-t", "flood", "-m", "x", "-q", "1"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Meanwhile anonymous traffic goes through, each publish well within a liveness bound.
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        assert!(
            pub_to(port, None, "ping"),
            "publish {i} refused during the flood"
        );
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(3),
        "a publish took {slowest:?} during the flood"
    );
    let got = wait_output(&mut sub, Duration::from_secs(30));
    assert_eq!(got.lines().count(), 10, "{got}");
    let mut accepted = 0;
    for mut c in flood {
        if c.wait().unwrap().success() {
            accepted += 1;
        }
    }
    assert!(
        accepted > 0 && accepted <= 32,
        "{accepted} of the flood accepted"
    );
}

/// The test's HTTP authentication service (`tests/clients/http_auth_server.py`).
struct AuthServer {
    child: Child,
    port: u16,
    lines: std::sync::mpsc::Receiver<String>,
}

impl AuthServer {
    fn start() -> AuthServer {
        use std::io::BufRead;
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/clients/http_auth_server.py"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let first = lines.recv_timeout(Duration::from_secs(10)).unwrap();
        let port = first.strip_prefix("port ").unwrap().parse().unwrap();
        AuthServer { child, port, lines }
    }

    /// Requests seen so far.
    fn requests(&self) -> Vec<String> {
        self.lines.try_iter().collect()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_auth(port: u16, path: &str, extra: &str) -> String {
    format!(
        r#"allow_anonymous = false
password {{ local = "local-pw" }}
acl = {{ rules = [ {{ permit = deny, action = publish, topics = ["secret/#"] }}, {{ permit = allow }} ] }}
http_auth {{
  timeout = 1s
  connect_timeout = 1s
  {extra}
  auth_req {{
    url = "http://127.0.0.1:{port}{path}"
    method = post
    headers.content-type = "application/x-www-form-urlencoded"
    params = {{ clientid = "%c", username = "%u", password = "%P", ip = "%a", proto = "%r" }}
  }}
  super_req {{
    url = "http://127.0.0.1:{port}/super"
    method = get
    params = {{ username = "%u" }}
  }}
}}"#
    )
}

#[test]
fn http_auth_allows_denies_and_names_superusers() {
    let server = AuthServer::start();
    let dir = Dir::new("auth-http");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    std::fs::write(&conf, config(port, &http_auth(server.port, "/auth", ""))).unwrap();
    let _broker = start(
        &conf,
        &dir.file("tidemq.pid"),
        &dir.file("broker.log"),
        port,
    );

    assert!(pub_ok(port, Some(("web", "web-pw"))));
    assert!(!pub_ok(port, Some(("web", "wrong"))));
    assert!(!pub_ok(port, Some(("stranger", "x"))));
    // The password table first: its users never reach the service.
    assert!(pub_ok(port, Some(("local", "local-pw"))));
    let seen = server.requests();
    assert!(
        seen.iter().any(|r| r.starts_with("req POST /auth ")
            && r.contains("clientid=")
            && r.contains("username=web")
            && r.contains("password=web-pw")
            && r.contains("ip=127.0.0.1")
            && r.contains("proto=mqtt")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| r == "req GET /super username=web"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|r| r.contains("username=local")),
        "{seen:?}"
    );

    // A superuser is not subject to the ACL; others are.
    let boss = paho(
        port,
        "5",
        "b",
        &["--user", "boss", "--pw", "boss-pw", "--pub", "secret/x=1"],
    );
    assert!(has(&boss, "puback secret/x 0"), "{boss:?}");
    let web = paho(
        port,
        "5",
        "w",
        &["--user", "web", "--pw", "web-pw", "--pub", "secret/x=1"],
    );
    assert!(has(&web, "puback secret/x 135"), "{web:?}");
}

#[test]
fn http_auth_denies_when_the_service_is_slow_or_down_unless_told_otherwise() {
    let server = AuthServer::start();
    let dir = Dir::new("auth-http-down");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    let pid = dir.file("tidemq.pid");
    std::fs::write(&conf, config(port, &http_auth(server.port, "/slow", ""))).unwrap();
    let broker = start(&conf, &pid, &dir.file("broker.log"), port);

    // Past the 1 s timeout: denied, and answered within the connect timeout.
    let t = Instant::now();
    let v5 = paho(port, "5", "s", &["--user", "web", "--pw", "web-pw"]);
    assert!(has(&v5, "connack 134"), "{v5:?}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());

    // Down (nothing listens there): denied.
    let down = free_port();
    std::fs::write(&conf, config(port, &http_auth(down, "/auth", ""))).unwrap();
    reload(&pid, &broker, 1);
    assert!(!pub_ok(port, Some(("web", "web-pw"))));
    // on_error = allow lets clients in while the service is down.
    std::fs::write(
        &conf,
        config(port, &http_auth(down, "/auth", "on_error = allow")),
    )
    .unwrap();
    reload(&pid, &broker, 2);
    assert!(pub_ok(port, Some(("web", "anything"))));
}

#[test]
fn http_acl_is_asked_after_the_acl_file_and_decides_what_it_left_open() {
    let server = AuthServer::start();
    let dir = Dir::new("auth-http-acl");
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    let auth = format!(
        r#"allow_anonymous = true
acl = {{ rules = [ {{ permit = deny, action = publish, topics = ["secret/#"] }} ] }}
http_auth {{
  acl_req {{
    url = "http://127.0.0.1:{}/acl"
    params = {{ access = "%A", topic = "%t", clientid = "%c" }}
  }}
}}"#,
        server.port
    );
    std::fs::write(&conf, config(port, &auth)).unwrap();
    let _broker = start(
        &conf,
        &dir.file("tidemq.pid"),
        &dir.file("broker.log"),
        port,
    );

    let out = paho(
        port,
        "5",
        "c1",
        &[
            "--sub",
            "ok/#",
            "--sub",
            "no/#",
            "--pub",
            "ok/1=a",
            "--pub",
            "no/1=b",
            "--pub",
            "secret/1=c",
            "--listen",
            "1",
        ],
    );
    for line in [
        "suback ok/# 1",
        "suback no/# 135",
        "puback ok/1 0",
        "puback no/1 135",
        "puback secret/1 135",
        "msg ok/1 a",
    ] {
        assert!(has(&out, line), "{line}: {out:?}");
    }
    assert!(!out.iter().any(|l| l.starts_with("msg no/")), "{out:?}");
    let seen = server.requests();
    assert!(
        seen.iter()
            .any(|r| r == "req POST /acl access=1&topic=ok%2F%23&clientid=c1"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|r| r == "req POST /acl access=2&topic=ok%2F1&clientid=c1"),
        "{seen:?}"
    );
    // The file decided `secret/1`: the service never heard of it.
    assert!(!seen.iter().any(|r| r.contains("secret")), "{seen:?}");
}
