#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! The HTTP API V1 against the real binary, driven by curl, with real MQTT clients connected.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{
    Dir, Running, TIDEMQ, free_port, mosquitto_pub, mosquitto_sub, run, start, tool, wait_for,
};

struct Api {
    port: u16,
}

struct Answer {
    status: u16,
    headers: String,
    json: Value,
}

impl Api {
    /// POST /api/v1 with curl; `auth` are extra curl arguments (e.g. `-u admin:public`).
    fn call(&self, auth: &[&str], body: &str) -> Answer {
        self.request("POST", "/api/v1", auth, body)
    }

    fn request(&self, method: &str, path: &str, auth: &[&str], body: &str) -> Answer {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let out = run(tool("curl")
            .args([
                "-s",
                "-i",
                "-X",
                method,
                &url,
                "--max-time",
                "10",
                "--data-binary",
                body,
            ])
            .args(auth));
        assert!(out.status.success(), "curl failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        Answer {
            status,
            headers: head.to_ascii_lowercase(),
            json: serde_json::from_str(body).unwrap_or(Value::Null),
        }
    }

    fn ok(&self, body: Value) -> Value {
        let a = self.call(&["-u", "admin:public"], &body.to_string());
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["code"], 0);
        assert!(a.headers.contains("content-type: application/json"));
        a.json
    }
}

fn write_conf(dir: &Dir, mqtt: u16, http: u16, extra: &str) -> std::path::PathBuf {
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{mqtt}\"\nhttp_server {{\n  port = {http}\n{extra}\n}}\n"
        ),
    )
    .unwrap();
    conf
}

fn broker(name: &str, extra: &str) -> (Dir, Running, u16, Api) {
    let dir = Dir::new(name);
    let (mqtt, http) = (free_port(), free_port());
    let conf = write_conf(&dir, mqtt, http, extra);
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), mqtt);
    wait_for("the admin API", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    (dir, running, mqtt, Api { port: http })
}

#[test]
fn broker_topic_and_client_info_describe_the_connected_clients() {
    let (_dir, broker, mqtt, api) = broker("info", "");
    let mut alice = mosquitto_sub(
        mqtt,
        &[
            "-i", "alice", "-u", "ann", "-k", "30", "-t", "a/b", "-t", "c/#", "-q", "1",
        ],
    );
    let mut bob = mosquitto_sub(
        mqtt,
        &["-i", "bob", "-k", "45", "-t", "c/d", "-V", "mqttv5"],
    );
    wait_for("both subscribers", Duration::from_secs(10), || {
        let log = broker.log();
        log.contains("client_id=\"alice\"") && log.contains("client_id=\"bob\"")
    });
    // SUBACKs are sent before the log line; give the subscriptions a moment to be listed.
    wait_for("subscriptions", Duration::from_secs(10), || {
        api.ok(json!({"req": 4, "seq": 1}))["data"]
            .as_array()
            .unwrap()
            .len()
            == 2
    });
    mosquitto_pub(mqtt, &["-t", "c/d", "-m", "x", "-q", "1"]);
    mosquitto_pub(mqtt, &["-t", "nobody/here", "-m", "y"]);

    let info = api.ok(json!({"req": 2, "seq": 42}));
    assert_eq!(info["seq"], 42);
    assert_eq!(info["rep"], 2);
    assert_eq!(
        info["data"]["client_size"], 2,
        "alice and bob are connected"
    );
    assert_eq!(info["data"]["message_in"], 2);
    assert_eq!(info["data"]["message_out"], 2, "c/d went to alice and bob");
    assert_eq!(
        info["data"]["message_drop"], 1,
        "nobody/here matched no subscription"
    );

    let topics = api.ok(json!({"req": 4, "seq": 2}));
    assert_eq!(
        topics["data"],
        json!([
            {"client_id": "alice", "subscriptions": [{"topic": "a/b", "qos": 1}, {"topic": "c/#", "qos": 1}]},
            {"client_id": "bob", "subscriptions": [{"topic": "c/d", "qos": 0}]},
        ])
    );

    let clients = api.ok(json!({"req": 5, "seq": 3}));
    assert_eq!(
        clients["data"],
        json!([
            {"client_id": "alice", "username": "ann", "keepalive": 30, "protocol": 4, "connect_status": 1, "message_receive": 1},
            {"client_id": "bob", "username": "", "keepalive": 45, "protocol": 5, "connect_status": 1, "message_receive": 1},
        ])
    );

    let tree = api.ok(json!({"req": 13, "seq": 4}));
    assert_eq!(tree["data"][0], json!([{"topic": "", "cld_cnt": 2}]));
    assert_eq!(
        tree["data"][1],
        json!([{"topic": "a", "cld_cnt": 1}, {"topic": "c", "cld_cnt": 2}])
    );
    alice.kill().unwrap();
    bob.kill().unwrap();
    let _ = alice.wait();
    let _ = bob.wait();
}

#[test]
fn error_paths_answer_with_the_documented_status_and_code() {
    let (_dir, _broker, _mqtt, api) = broker("errors", "  max_body = 1KB");
    let auth = ["-u", "admin:public"];
    let cases: &[(&str, u16, Value)] = &[
        ("not json", 400, json!({"code": 109, "seq": 0})),
        ("[1,2]", 400, json!({"code": 109, "seq": 0})),
        (r#"{"seq": 1}"#, 400, json!({"code": 107, "seq": 1})),
        (
            r#"{"req": 2}"#,
            400,
            json!({"code": 107, "seq": 0, "rep": 2}),
        ),
        (
            r#"{"req": "2", "seq": 1}"#,
            400,
            json!({"code": 108, "seq": 1}),
        ),
        (
            r#"{"req": 2, "seq": 1.5}"#,
            400,
            json!({"code": 108, "seq": 0, "rep": 2}),
        ),
        (
            r#"{"req": 3, "seq": 7}"#,
            404,
            json!({"code": 108, "seq": 7, "rep": 3}),
        ),
        (
            r#"{"req": 10, "seq": 8}"#,
            400,
            json!({"code": 108, "seq": 8, "rep": 10}),
        ),
        (
            r#"{"req": 10, "seq": 8, "action": "reboot"}"#,
            400,
            json!({"code": 108, "seq": 8, "rep": 10}),
        ),
        (
            r#"{"req": 12, "seq": 9}"#,
            400,
            json!({"code": 108, "seq": 9, "rep": 12}),
        ),
    ];
    for (body, status, expected) in cases {
        let a = api.call(&auth, body);
        assert_eq!(a.status, *status, "{body}: {}", a.json);
        for (k, v) in expected.as_object().unwrap() {
            assert_eq!(&a.json[k], v, "{body}: {k} in {}", a.json);
        }
        if expected.get("rep").is_none() {
            assert!(a.json.get("rep").is_none(), "{body}: {}", a.json);
        }
    }
    // Credentials are checked from the head, before any body is read (NanoMQ parses the
    // body first): unauthenticated garbage is refused with 401.
    let a = api.call(&[], "garbage");
    assert_eq!((a.status, a.json["code"].clone()), (401, json!(104)));

    let big = format!(r#"{{"req": 2, "seq": 1, "pad": "{}"}}"#, "x".repeat(2048));
    let a = api.call(&auth, &big);
    assert_eq!(a.status, 413);
    assert_eq!(a.json["code"], 108);

    let a = api.request("GET", "/api/v2", &auth, "{}");
    assert_eq!(a.status, 404);
    // Any method reaches the API at /api/v1 and /api/v1/; any other path under it is not
    // found, as the spec says of 404.
    let a = api.request("GET", "/api/v1/", &auth, r#"{"req": 2, "seq": 5}"#);
    assert_eq!((a.status, a.json["seq"].clone()), (200, json!(5)));
    let a = api.request("POST", "/api/v1/anything", &auth, r#"{"req": 2, "seq": 5}"#);
    assert_eq!((a.status, a.json["code"].clone()), (404, json!(102)));
    assert!(a.headers.contains("content-type: application/json"));
}

#[test]
fn basic_auth_outcomes() {
    let (_dir, _broker, _mqtt, api) = broker("basic", "  username = root\n  password = \"s3cret\"");
    let body = r#"{"req": 2, "seq": 11}"#;
    let ok = api.call(&["-u", "root:s3cret"], body);
    assert_eq!(ok.status, 200);
    for (args, code) in [
        (vec![], 104),
        (vec!["-H", "Authorization: Basic"], 104),
        (vec!["-H", "Authorization: Basic %%%%"], 104),
        (vec!["-H", "Authorization: Digest abc"], 104),
        (vec!["-u", "root:wrong"], 103),
        (vec!["-u", "admin:public"], 103),
    ] {
        let a = api.call(&args, body);
        assert_eq!(a.status, 401, "{args:?}");
        assert_eq!(a.json["code"], code, "{args:?}");
        // Refused from the head: the body (and its seq) was never read.
        assert_eq!(a.json["seq"], 0);
        assert!(
            a.headers.contains("www-authenticate: basic"),
            "{}",
            a.headers
        );
    }
}

fn jwt_token(private_pem: &[u8], iss: &str, exp_offset: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"iss": iss, "iat": now, "exp": now + exp_offset, "bodyEncode": "0"});
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

#[test]
fn jwt_auth_outcomes() {
    let keys = Dir::new("jwt-keys");
    let private = keys.file("jwtRS256.key");
    let public = keys.file("jwtRS256.key.pub");
    let other = keys.file("other.key");
    for path in [&private, &other] {
        let out = run(tool("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(path));
        assert!(out.status.success(), "{out:?}");
    }
    let out = run(tool("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public));
    assert!(out.status.success(), "{out:?}");
    let (_dir, _broker, _mqtt, api) = broker(
        "jwt",
        &format!(
            "  auth_type = jwt\n  jwt.public.keyfile = \"{}\"",
            public.display()
        ),
    );
    let pem = std::fs::read(&private).unwrap();
    let body = r#"{"req": 2, "seq": 3}"#;
    let bearer = |t: &str| vec!["-H".to_owned(), format!("Authorization: Bearer {t}")];
    let call = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        api.call(&refs, body)
    };
    // The issuer is the public key file's name, as NanoMQ documents.
    let good = call(bearer(&jwt_token(&pem, "jwtRS256.key.pub", 600)));
    assert_eq!(good.status, 200, "{}", good.json);
    let expired = call(bearer(&jwt_token(&pem, "jwtRS256.key.pub", -600)));
    assert_eq!(
        (expired.status, expired.json["code"].clone()),
        (401, json!(116))
    );
    let wrong_iss = call(bearer(&jwt_token(&pem, "someone-else", 600)));
    assert_eq!(
        (wrong_iss.status, wrong_iss.json["code"].clone()),
        (401, json!(103))
    );
    let other_pem = std::fs::read(&other).unwrap();
    let forged = call(bearer(&jwt_token(&other_pem, "jwtRS256.key.pub", 600)));
    assert_eq!(
        (forged.status, forged.json["code"].clone()),
        (401, json!(103))
    );
    let garbage = call(bearer("not.a.token"));
    assert_eq!(garbage.json["code"], 103);
    let missing = api.call(&["-u", "admin:public"], body);
    assert_eq!(
        (missing.status, missing.json["code"].clone()),
        (401, json!(104))
    );
    assert!(missing.headers.contains("www-authenticate: bearer"));
}

#[test]
fn set_configuration_is_validated_applied_persisted_and_survives_a_restart() {
    let (dir, broker, mqtt, api) = broker("setconf", "");
    // A wrong type anywhere rejects the whole request.
    let bad = api.call(
        &["-u", "admin:public"],
        r#"{"req": 12, "seq": 1, "data": {"msq_len": 5, "allow_anonymous": "no"}}"#,
    );
    assert_eq!((bad.status, bad.json["code"].clone()), (400, json!(108)));
    assert_eq!(
        api.ok(json!({"req": 11, "seq": 2}))["data"]["msq_len"],
        2048
    );

    let set = api.ok(json!({"req": 12, "seq": 3, "data": {
        "msq_len": 5, "qos_duration": 30, "allow_anonymous": false,
        "http_server": {"username": "root", "password": "pw2"},
        "websocket": {"enable": true}
    }}));
    assert_eq!(set["rep"], 12);
    assert_eq!(set["data"]["restart_required"], json!(["websocket"]));
    // Applied live: the admin credentials changed at once, anonymous MQTT is refused.
    assert_eq!(
        api.call(&["-u", "admin:public"], r#"{"req":2,"seq":1}"#)
            .status,
        401
    );
    let shown = api
        .call(&["-u", "root:pw2"], r#"{"req": 11, "seq": 4}"#)
        .json;
    assert_eq!(shown["data"]["msq_len"], 5);
    assert_eq!(shown["data"]["qos_duration"], 30);
    assert_eq!(shown["data"]["allow_anonymous"], false);
    assert_eq!(shown["data"]["http_server"]["password"], "******");
    let anon = run(tool("mosquitto_pub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt.to_string(),
        "-t",
        "x",
        "-m",
        "y",
    ]));
    assert!(
        !anon.status.success(),
        "anonymous publish accepted after allow_anonymous=false"
    );

    // The user's file is untouched; the override beside it holds the change.
    let base = std::fs::read_to_string(dir.file("nanomq.conf")).unwrap();
    assert!(!base.contains("msq_len"));
    assert!(
        std::fs::read_to_string(dir.file("nanomq.override.conf"))
            .unwrap()
            .contains("msq_len = 5")
    );

    // Stop and start again from the same file: the change is still there.
    let out = run(Command::new(TIDEMQ)
        .args(["stop", "--pid_file"])
        .arg(dir.file("pid")));
    assert!(out.status.success(), "{out:?}");
    drop(broker);
    let _again = start(
        &dir.file("nanomq.conf"),
        &dir.file("pid"),
        &dir.file("log2"),
        mqtt,
    );
    wait_for("the admin API", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", api.port)).is_ok()
    });
    let shown = api
        .call(&["-u", "root:pw2"], r#"{"req": 11, "seq": 5}"#)
        .json;
    assert_eq!(shown["data"]["msq_len"], 5, "{shown}");
    assert_eq!(shown["data"]["allow_anonymous"], false);
}

#[test]
fn set_configuration_on_an_old_format_file_rewrites_only_its_keys() {
    let dir = Dir::new("setconf-kv");
    let (mqtt, http) = (free_port(), free_port());
    let conf = dir.file("nanomq_old.conf");
    std::fs::write(
        &conf,
        format!("# my broker\nurl=nmq-tcp://127.0.0.1:{mqtt}\n# queue\nmsq_len=64\nhttp_server.enable=true\nhttp_server.port={http}\n"),
    )
    .unwrap();
    let child = Command::new(TIDEMQ)
        .args(["start", "--old_conf"])
        .arg(&conf)
        .arg("--pid_file")
        .arg(dir.file("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.file("log")).unwrap())
        .spawn()
        .unwrap();
    let _running = Running {
        child,
        log: dir.file("log"),
    };
    wait_for("the admin API", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
    let api = Api { port: http };
    // A value with a newline would add a line (a key) of its own: refused, nothing written.
    let before = std::fs::read_to_string(&conf).unwrap();
    let bad = api.call(
        &["-u", "admin:public"],
        r#"{"req": 12, "seq": 1, "data": {"bridge": {"clientid": "x\nallow_anonymous=false"}}}"#,
    );
    assert_eq!((bad.status, bad.json["code"].clone()), (400, json!(108)));
    assert!(
        bad.json["message"]
            .as_str()
            .unwrap()
            .contains("control characters")
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), before);
    api.ok(
        json!({"req": 12, "seq": 1, "data": {"msq_len": 9, "allow_anonymous": true,
        "bridge": {"forwards": ["up/#"], "subscription": [{"topic": "down/#", "qos": 1}]}}}),
    );
    let text = std::fs::read_to_string(&conf).unwrap();
    assert_eq!(
        text,
        format!(
            "# my broker\nurl=nmq-tcp://127.0.0.1:{mqtt}\n# queue\nmsq_len=9\nhttp_server.enable=true\nhttp_server.port={http}\nallow_anonymous=true\nbridge.mqtt.forwards=up/#\nbridge.mqtt.subscription.1.topic=down/#\nbridge.mqtt.subscription.1.qos=1\n"
        )
    );
    // Rewritten in place of the original: its mode is kept.
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn restart_rebinds_a_changed_listener_and_keeps_persistent_sessions() {
    let (_dir, broker, mqtt, api) = broker("restart", "");
    // A persistent session with a QoS 1 subscription, then offline.
    let sub = run(tool("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &mqtt.to_string(),
        "-i",
        "keeper",
        "-c",
        "-q",
        "1",
        "-t",
        "r/t",
        "-E",
    ]));
    assert!(sub.status.success(), "{sub:?}");
    let new_port = free_port();
    let set = api.ok(
        json!({"req": 12, "seq": 1, "data": {"url": format!("nmq-tcp://127.0.0.1:{new_port}")}}),
    );
    assert_eq!(set["data"]["restart_required"], json!(["url"]));
    api.ok(json!({"req": 10, "seq": 2, "action": "restart"}));
    wait_for("the new listener", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", new_port)).is_ok()
    });
    wait_for("the reload to finish", Duration::from_secs(10), || {
        broker.log().contains("configuration reloaded")
    });
    wait_for("the old listener to close", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", mqtt)).is_err()
    });
    mosquitto_pub(new_port, &["-t", "r/t", "-m", "kept", "-q", "1"]);
    let resumed = run(tool("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &new_port.to_string(),
        "-i",
        "keeper",
        "-c",
        "-q",
        "1",
        "-t",
        "r/t",
        "-C",
        "1",
        "-W",
        "10",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&resumed.stdout),
        "kept\n",
        "{resumed:?}"
    );
}

#[test]
fn stop_action_stops_the_broker() {
    let (dir, mut broker, _mqtt, api) = broker("stop", "");
    api.ok(json!({"req": 10, "seq": 1, "action": "stop"}));
    wait_for("the broker to exit", Duration::from_secs(10), || {
        matches!(broker.child.try_wait(), Ok(Some(_)))
    });
    assert!(!dir.file("pid").exists());
}

/// The spec's curl commands, verbatim, against a broker on the default admin port 8081.
#[test]
fn curl_examples_from_the_spec_work_verbatim() {
    let dir = Dir::new("spec");
    let mqtt = free_port();
    let conf = write_conf(&dir, mqtt, 8081, "");
    let _broker = start(&conf, &dir.file("pid"), &dir.file("log"), mqtt);
    wait_for("the admin API on 8081", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", 8081)).is_ok()
    });
    let sh = |script: &str| {
        let out = run(Command::new("sh").args(["-c", script]));
        assert!(out.status.success(), "{script}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let body = text.rsplit("\r\n\r\n").next().unwrap().to_owned();
        serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    for req in [2, 4, 5] {
        let v = sh(&format!(
            r#"curl -i --basic -u admin:public -X POST "http://localhost:8081/api/v1" -d '{{"req": {req},"seq": 1111111}}'"#
        ));
        assert_eq!(
            (v["code"].clone(), v["seq"].clone(), v["rep"].clone()),
            (json!(0), json!(1111111), json!(req))
        );
    }
    let v = sh(
        r#"curl --location --request GET 'http://localhost:8081/api/v1' \
--header 'Authorization: Basic YWRtaW46cHVibGlj' \
--header 'Content-Type: application/json' \
--data-raw '{
"req": 11,
"seq": 9999
}'"#,
    );
    assert_eq!(v["rep"], 11);
    assert_eq!(v["data"]["http_server"]["port"], 8081);
    let v = sh(
        r#"curl --location --request POST 'http://localhost:8081/api/v1' \
--header 'Authorization: Basic YWRtaW46cHVibGlj' \
--header 'Content-Type: application/json' \
--data-raw '{
"req": 12,
"seq": 111,
"data": {
"url": "nmq-tcp://0.0.0.0:1883",
"num_taskq_thread": 10,
"max_taskq_thread": 10,
"parallel": 10,
"property_size": 32,
"msq_len": 64,
"allow_anonymous": true,
"daemon": false,
"tls": {
"enable": false,
"url": "tls+nmq-tcp://0.0.0.0:8883",
"key_password": null,
"key": null,
"cert": null,
"cacert": null,
"verify_peer": false,
"fail_if_no_peer_cert": false
},
"websocket": {
"enable": true,
"url": "nmq-ws://0.0.0.0:8083/mqtt",
"tls_url": "nmq-wss://0.0.0.0:8084/mqtt"
},
"http_server": {
"enable": true,
"port": 8081,
"username": "admin",
"password": "public",
"auth_type": "basic"
},
"bridge": {
"bridge_mode": true,
"address": "mqtt-tcp://broker.emqx.io:1883",
"proto_ver": 4,
"clientid": "bridge_client",
"clean_start": true,
"username": "username",
"password": "passwd",
"keepalive": 60,
"parallel": 2,
"forwards": [
"topic1/#",
"topic2/#"
],
"subscription": [
{
"topic": "cmd/topic1",
"qos": 1
},
{
"topic": "cmd/topic2",
"qos": 2
}
]
}
}
}'"#,
    );
    assert_eq!(
        (v["code"].clone(), v["seq"].clone(), v["rep"].clone()),
        (json!(0), json!(111), json!(12))
    );
    let shown = sh(
        r#"curl -s -u admin:public -X POST "http://localhost:8081/api/v1" -d '{"req": 11,"seq": 1}'"#,
    );
    assert_eq!(shown["data"]["msq_len"], 64);
    assert_eq!(shown["data"]["bridge"]["bridge_mode"], true);
    assert_eq!(shown["data"]["bridge"]["password"], "******");
    assert_eq!(
        shown["data"]["bridge"]["subscription"][1],
        json!({"topic": "cmd/topic2", "qos": 2})
    );
}

/// Sockets that send a request head and then a body a byte at a time: without credentials
/// they are refused from the head, so they hold no connection slot and a real request is
/// answered while they stay open.
#[test]
fn slow_bodies_do_not_lock_out_real_requests() {
    use std::io::{Read, Write};
    let (_dir, _broker, _mqtt, api) = broker("slowbody", "");
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", api.port)).unwrap();
        s.write_all(b"POST /api/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n{")
            .unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        let _ = s.write_all(b" ");
    }
    let started = std::time::Instant::now();
    let a = api.call(&["-u", "admin:public"], r#"{"req": 2, "seq": 77}"#);
    assert_eq!((a.status, a.json["seq"].clone()), (200, json!(77)));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Each slow socket got its 401 without the broker reading its body.
    let mut answer = vec![0u8; 512];
    let first = &mut slow[0];
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let n = first.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");

    // An authorized request whose body never comes is cut after the body deadline.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", api.port)).unwrap();
    s.write_all(
        b"POST /api/v1 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWRtaW46cHVibGlj\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let n = s.read(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

/// A browser request from another site is refused; one from the server's own origin is not.
#[test]
fn cross_origin_requests_are_refused() {
    let (_dir, _broker, _mqtt, api) = broker("origin", "");
    let auth = ["-u", "admin:public"];
    let body = r#"{"req": 2, "seq": 1}"#;
    let evil = api.call(
        &[auth[0], auth[1], "-H", "Origin: http://evil.example"],
        body,
    );
    assert_eq!((evil.status, evil.json["code"].clone()), (403, json!(102)));
    let own = format!("Origin: http://127.0.0.1:{}", api.port);
    let same = api.call(&[auth[0], auth[1], "-H", &own], body);
    assert_eq!(same.status, 200, "{}", same.json);
}
