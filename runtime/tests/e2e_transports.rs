#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! TLS, WebSocket and WSS listeners with real clients and certificates made at test time.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Dir, Running, TIDEMQ, free_port, make_certs, run, start, tool, wait_for};

struct Ports {
    tcp: u16,
    tls: u16,
    ws: u16,
    wss: u16,
}

fn conf(dir: &Dir, ports: &Ports, ssl_extra: &str) -> PathBuf {
    let conf = dir.file("nanomq.conf");
    let f = |n: &str| dir.file(n).display().to_string();
    std::fs::write(
        &conf,
        format!(
            r#"listeners.tcp.bind = "127.0.0.1:{tcp}"
listeners.ssl {{
  bind = "127.0.0.1:{tls}"
  keyfile = "{key}"
  certfile = "{cert}"
  cacertfile = "{ca}"
{ssl_extra}
}}
listeners.ws.bind = "127.0.0.1:{ws}/mqtt"
listeners.wss.bind = "127.0.0.1:{wss}/mqtt"
mqtt.connect_timeout = 1s
"#,
            tcp = ports.tcp,
            tls = ports.tls,
            ws = ports.ws,
            wss = ports.wss,
            key = f("server.key"),
            cert = f("server.pem"),
            ca = f("ca.pem"),
        ),
    )
    .unwrap();
    conf
}

fn ports() -> Ports {
    Ports {
        tcp: free_port(),
        tls: free_port(),
        ws: free_port(),
        wss: free_port(),
    }
}

fn broker(name: &str, ssl_extra: &str) -> (Dir, Ports, Running) {
    let dir = Dir::new(name);
    make_certs(&dir, "");
    let ports = ports();
    let conf = conf(&dir, &ports, ssl_extra);
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), ports.tcp);
    for port in [ports.tls, ports.ws, ports.wss] {
        wait_for("every listener", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    (dir, ports, running)
}

fn mosquitto(kind: &str, port: u16, tls: &[&str], args: &[&str]) -> std::process::Output {
    run(tool(kind)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(tls)
        .args(args))
}

#[test]
fn messages_cross_tcp_tls_websocket_and_wss_both_ways() {
    let (dir, ports, _broker) = broker("transports", "");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/paho_transports.py"
    );
    let out = run(Command::new("python3")
        .arg(script)
        .arg(dir.file("ca.pem"))
        .arg(format!("tcp=tcp:{}", ports.tcp))
        .arg(format!("tls=tls:{}", ports.tls))
        .arg(format!("ws=ws:{}", ports.ws))
        .arg(format!("wss=wss:{}", ports.wss)));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn mosquitto_clients_work_over_tls_with_the_ca_file() {
    let (dir, ports, _broker) = broker("tls-mosquitto", "");
    let ca = dir.file("ca.pem").display().to_string();
    let tls = ["--cafile", ca.as_str()];
    let sub = tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports.tls.to_string(),
            "--cafile",
            &ca,
        ])
        .args(["-t", "secure/t", "-C", "1", "-W", "10", "-q", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &tls,
        &["-t", "secure/t", "-m", "over tls", "-q", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    let got = sub.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "over tls\n");
    // A client that does not trust our CA fails the handshake.
    let other = Dir::new("tls-other-ca");
    make_certs(&other, "");
    let wrong = other.file("ca.pem").display().to_string();
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &wrong],
        &["-t", "x", "-m", "y"],
    );
    assert!(!out.status.success());
}

#[test]
fn client_without_certificate_is_refused_when_one_is_required() {
    let (dir, ports, _broker) = broker(
        "mtls",
        "  verify_peer = true\n  fail_if_no_peer_cert = true",
    );
    let ca = dir.file("ca.pem").display().to_string();
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &ca],
        &["-t", "m/t", "-m", "no cert"],
    );
    assert!(
        !out.status.success(),
        "a client without a certificate was accepted"
    );
    let cert = dir.file("client.pem").display().to_string();
    let key = dir.file("client.key").display().to_string();
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &ca, "--cert", &cert, "--key", &key],
        &["-t", "m/t", "-m", "with cert"],
    );
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn reloaded_certificate_is_used_by_new_connections_while_old_ones_continue() {
    let (dir, ports, broker) = broker("cert-reload", "");
    let old_ca = dir.file("old-ca.pem");
    std::fs::copy(dir.file("ca.pem"), &old_ca).unwrap();
    let old_ca = old_ca.display().to_string();
    let keeper = tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports.tls.to_string(),
            "--cafile",
            &old_ca,
        ])
        .args([
            "-t", "reload/t", "-C", "2", "-W", "20", "-q", "1", "-i", "keeper",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the TLS subscriber", Duration::from_secs(10), || {
        broker.log().contains("client_id=\"keeper\"")
    });

    // A broken certificate is refused; the old one stays in use.
    std::fs::write(dir.file("server.pem"), "not a certificate").unwrap();
    let reload = || {
        let out = run(Command::new(TIDEMQ)
            .args(["reload", "--pid_file"])
            .arg(dir.file("pid")));
        assert!(out.status.success(), "{out:?}");
    };
    reload();
    wait_for("the refused TLS reload", Duration::from_secs(10), || {
        broker.log().contains("TLS not reloaded")
    });
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &old_ca],
        &["-t", "reload/t", "-m", "one", "-q", "1"],
    );
    assert!(out.status.success(), "{out:?}");

    // A new certificate from another CA: new connections get it.
    make_certs(&dir, "");
    let new_ca = dir.file("ca.pem").display().to_string();
    reload();
    wait_for("two reloads", Duration::from_secs(10), || {
        broker.log().matches("configuration reloaded").count() >= 2
    });
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &old_ca],
        &["-t", "x", "-m", "old ca"],
    );
    assert!(
        !out.status.success(),
        "a new connection still got the old certificate"
    );
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &new_ca],
        &["-t", "reload/t", "-m", "two", "-q", "1"],
    );
    assert!(out.status.success(), "{out:?}");
    // The connection made before both reloads kept working throughout.
    let got = keeper.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout), "one\ntwo\n");
}

#[test]
fn stalled_tls_handshake_is_dropped_after_the_connect_timeout() {
    let (_dir, ports, _broker) = broker("stalled", "");
    let mut stalled = TcpStream::connect(("127.0.0.1", ports.tls)).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    // connect_timeout = 1s: the broker closes a peer that never starts the handshake. (A
    // signal to the test process may interrupt the read: a clean run saw EINTR once.)
    let n = loop {
        match stalled.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            read => break read.expect("closed before the 10 s read timeout"),
        }
    };
    assert_eq!(n, 0);
}

#[test]
fn websocket_on_a_wrong_path_is_refused() {
    let (_dir, ports, _broker) = broker("ws-path", "");
    let mut s = TcpStream::connect(("127.0.0.1", ports.ws)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::Write;
    s.write_all(
        b"GET /other HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
}

#[test]
fn missing_certificate_stops_start_up_with_a_clear_error() {
    let dir = Dir::new("tls-missing");
    let ports = ports();
    let conf = conf(&dir, &ports, "");
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--conf"])
        .arg(&conf)
        .arg("--pid_file")
        .arg(dir.file("pid")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.certfile") && err.contains("server.pem"),
        "{err}"
    );
}

#[test]
fn certificate_common_name_is_the_user_name_when_configured() {
    let dir = Dir::new("cert-identity");
    make_certs(&dir, "");
    let ports = ports();
    let conf = conf(
        &dir,
        &ports,
        "  verify_peer = true\n  fail_if_no_peer_cert = false\n  use_identity_as_username = true",
    );
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("auth {\n  allow_anonymous = false\n  password { watcher = \"w\" }\n}\n");
    std::fs::write(&conf, text).unwrap();
    let _broker = start(&conf, &dir.file("pid"), &dir.file("log"), ports.tcp);
    wait_for("the TLS listener", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", ports.tls)).is_ok()
    });
    let watcher = tool("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &ports.tcp.to_string(),
            "-u",
            "watcher",
            "-P",
            "w",
        ])
        .args(["-t", "$SYS/brokers/connected", "-C", "1", "-W", "10"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let ca = dir.file("ca.pem").display().to_string();
    // Without a certificate (and without a password) the client is refused.
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &ca],
        &["-t", "x", "-m", "y"],
    );
    assert!(!out.status.success());
    let cert = dir.file("client.pem").display().to_string();
    let key = dir.file("client.key").display().to_string();
    let out = mosquitto(
        "mosquitto_pub",
        ports.tls,
        &["--cafile", &ca, "--cert", &cert, "--key", &key],
        &["-t", "x", "-m", "y", "-i", "by-cert"],
    );
    assert!(out.status.success(), "{out:?}");
    let event = watcher.wait_with_output().unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.stdout).unwrap();
    assert_eq!(event["client_id"], "by-cert");
    assert_eq!(event["username"], "client", "the certificate's CN");
}

/// A raw WebSocket client: handshake, then masked frames.
fn ws_connect(port: u16) -> TcpStream {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /mqtt HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    assert!(head.contains("Sec-WebSocket-Protocol: mqtt"), "{head}");
    s
}

fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut f = vec![u8::from(fin) << 7 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn websocket_carries_mqtt_split_across_and_sharing_frames() {
    use std::io::Write;
    let (_dir, ports, _broker) = broker("ws-frames", "");
    let mut s = ws_connect(ports.ws);
    let connect: &[u8] = &[
        0x10, 0x0f, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x03, b'w',
        b's', b'1',
    ];
    let ping: &[u8] = &[0xc0, 0x00];
    // CONNECT in three fragments (binary, continuation, continuation), then CONNECT's tail
    // and a PINGREQ sharing the last frame.
    let mut bytes = masked(false, 0x2, &connect[..5]);
    bytes.extend(masked(false, 0x0, &connect[5..12]));
    let mut tail = connect[12..].to_vec();
    tail.extend_from_slice(ping);
    bytes.extend(masked(true, 0x0, &tail));
    s.write_all(&bytes).unwrap();
    // Expect binary frames carrying CONNACK (20 02 00 00) then PINGRESP (d0 00).
    let mut got = Vec::new();
    while got.len() < 6 {
        let mut header = [0u8; 2];
        s.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 0x82, "server frames are final binary frames");
        let mut payload = vec![0u8; usize::from(header[1])];
        s.read_exact(&mut payload).unwrap();
        got.extend(payload);
    }
    assert_eq!(got, [0x20, 0x02, 0x00, 0x00, 0xd0, 0x00]);
}

#[test]
fn websocket_text_frame_closes_the_connection_with_1003() {
    use std::io::Write;
    let (_dir, ports, _broker) = broker("ws-text", "");
    let mut s = ws_connect(ports.ws);
    s.write_all(&masked(true, 0x1, b"hello")).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(
        rest,
        [0x88, 0x02, 0x03, 0xEB],
        "a close frame with 1003, then EOF"
    );
}

#[test]
fn encrypted_private_key_is_refused_with_a_clear_error() {
    let dir = Dir::new("tls-encrypted-key");
    make_certs(&dir, "");
    let out = run(tool("openssl")
        .args([
            "pkcs8",
            "-topk8",
            "-v2",
            "aes-256-cbc",
            "-passout",
            "pass:secret",
            "-in",
        ])
        .arg(dir.file("server.key"))
        .arg("-out")
        .arg(dir.file("encrypted.key")));
    assert!(out.status.success(), "{out:?}");
    std::fs::rename(dir.file("encrypted.key"), dir.file("server.key")).unwrap();
    let ports = ports();
    let conf = conf(&dir, &ports, "  key_password = \"secret\"");
    let out = run(Command::new(TIDEMQ)
        .args(["start", "--conf"])
        .arg(&conf)
        .arg("--pid_file")
        .arg(dir.file("pid")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.keyfile") && err.contains("encrypted private keys are not supported"),
        "{err}"
    );
    assert!(err.contains("PKCS#8"), "says which formats work: {err}");
}
