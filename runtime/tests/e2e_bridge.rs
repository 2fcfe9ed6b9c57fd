#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Bridges from tidemq to a real remote broker (Debian's mosquitto, started here on
//! 127.0.0.1), and between two tidemq brokers.

mod support;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{
    Dir, Running, free_port, make_certs, mosquitto_pub, mosquitto_sub, run, start, tool, wait_for,
};

/// A mosquitto broker with persistence in its own folder, restartable on the same port.
struct Mosquitto {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Dir) -> Mosquitto {
        Mosquitto::start_with(dir, "")
    }

    /// `listener_extra`: lines added under the listener (e.g. TLS files).
    fn start_with(dir: &Dir, listener_extra: &str) -> Mosquitto {
        let found = Command::new("sh")
            .args(["-c", "command -v mosquitto || test -x /usr/sbin/mosquitto"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            found,
            "mosquitto is missing: install the Debian package mosquitto (scripts/test does)"
        );
        let port = free_port();
        let conf = dir.file("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: as root, mosquitto would otherwise switch to its own user, which
                // cannot write the persistence file in our folder.
                "listener {port} 127.0.0.1\n{listener_extra}allow_anonymous true\npersistence true\npersistence_location {}/\nmax_queued_messages 10000\nuser root\n",
                dir.0.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            child: None,
            port,
            conf,
        };
        m.restart();
        m
    }

    fn restart(&mut self) {
        let bin = if std::path::Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for("mosquitto", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM: mosquitto saves its sessions and queued messages, then exits.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tidemq_with_bridge(dir: &Dir, remote: u16, bridge: &str) -> (Running, u16) {
    let port = free_port();
    let conf = dir.file("nanomq.conf");
    std::fs::write(
        &conf,
        format!(
            "listeners.tcp.bind = \"127.0.0.1:{port}\"\nbridges.mqtt.remote {{\n  server = \"mqtt-tcp://127.0.0.1:{remote}\"\n  clientid = \"bridge-{port}\"\n  keepalive = 10s\n  backoff_max = 2s\n{bridge}\n}}\n"
        ),
    )
    .unwrap();
    let running = start(&conf, &dir.file("pid"), &dir.file("log"), port);
    (running, port)
}

fn wait_bridge_up(broker: &Running, times: usize) {
    wait_for("the bridge", Duration::from_secs(20), || {
        broker.log().matches("bridge connected").count() >= times
    });
}

fn lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn both_directions_at_every_qos(proto_ver: u8) {
    let dir = Dir::new(&format!("bridge-qos-v{proto_ver}"));
    let mut remote = Mosquitto::start(&dir);
    let (broker, port) = tidemq_with_bridge(
        &dir,
        remote.port,
        &format!(
            "  proto_ver = {proto_ver}\n  forwards = [{{ local_topic = \"up/#\" }}, {{ local_topic = \"loc/#\", remote_topic = \"rem/loc/#\" }}]\n  subscription = [{{ remote_topic = \"down/#\", qos = 2 }}]"
        ),
    );
    wait_bridge_up(&broker, 1);
    for qos in ["0", "1", "2"] {
        // Local to remote.
        let remote_sub = mosquitto_sub(
            remote.port,
            &["-t", "up/#", "-t", "rem/#", "-q", qos, "-C", "2", "-v"],
        );
        std::thread::sleep(Duration::from_millis(300));
        mosquitto_pub(
            port,
            &["-t", &format!("up/{qos}"), "-m", "hello", "-q", qos],
        );
        mosquitto_pub(
            port,
            &["-t", &format!("loc/{qos}"), "-m", "remapped", "-q", qos],
        );
        assert_eq!(
            lines(remote_sub),
            [format!("up/{qos} hello"), format!("rem/loc/{qos} remapped")],
            "QoS {qos} local to remote"
        );
        // Remote to local.
        let local_sub = mosquitto_sub(port, &["-t", "down/#", "-q", qos, "-C", "1", "-v"]);
        std::thread::sleep(Duration::from_millis(300));
        mosquitto_pub(
            remote.port,
            &["-t", &format!("down/{qos}"), "-m", "back", "-q", qos],
        );
        assert_eq!(
            lines(local_sub),
            [format!("down/{qos} back")],
            "QoS {qos} remote to local"
        );
    }
    remote.stop();
}

#[test]
fn bridge_forwards_and_subscribes_at_every_qos_v311() {
    both_directions_at_every_qos(4);
}

#[test]
fn bridge_forwards_and_subscribes_at_every_qos_v5() {
    both_directions_at_every_qos(5);
}

#[test]
fn remote_restart_mid_stream_loses_no_qos1_message() {
    let dir = Dir::new("bridge-restart");
    let mut remote = Mosquitto::start(&dir);
    // A persistent subscriber on the remote, offline from now on: mosquitto keeps its queue.
    let out = run(tool("mosquitto_sub").args([
        "-h",
        "127.0.0.1",
        "-p",
        &remote.port.to_string(),
        "-i",
        "keeper",
        "-c",
        "-q",
        "1",
        "-t",
        "up/#",
        "-E",
    ]));
    assert!(out.status.success(), "{out:?}");
    let (broker, port) = tidemq_with_bridge(
        &dir,
        remote.port,
        "  proto_ver = 4\n  clean_start = false\n  forwards = [{ local_topic = \"up/#\" }]",
    );
    wait_bridge_up(&broker, 1);
    let total = 60;
    let messages: Vec<String> = (0..total).map(|i| format!("m{i:03}")).collect();
    // A third before the outage, a third while the remote is down, a third after it returns.
    for m in &messages[..20] {
        mosquitto_pub(port, &["-t", "up/seq", "-m", m, "-q", "1"]);
    }
    remote.stop();
    wait_for("the bridge to notice", Duration::from_secs(20), || {
        broker.log().contains("bridge down")
    });
    for m in &messages[20..40] {
        mosquitto_pub(port, &["-t", "up/seq", "-m", m, "-q", "1"]);
    }
    remote.restart();
    // The queue drains on reconnect, without waiting for new traffic.
    wait_bridge_up(&broker, 2);
    for m in &messages[40..] {
        mosquitto_pub(port, &["-t", "up/seq", "-m", m, "-q", "1"]);
    }
    let keeper = mosquitto_sub(
        remote.port,
        &[
            "-i",
            "keeper",
            "-c",
            "-q",
            "1",
            "-t",
            "up/#",
            "-C",
            &total.to_string(),
        ],
    );
    let got = lines(keeper);
    assert_eq!(got, messages, "every QoS 1 message, once, in order");
    remote.stop();
}

#[test]
fn two_brokers_bridged_both_ways_do_not_ping_pong() {
    let dir_a = Dir::new("loop-a");
    let dir_b = Dir::new("loop-b");
    let (port_a, port_b) = (free_port(), free_port());
    let bridge = |dir: &Dir, own: u16, other: u16| {
        let conf = dir.file("nanomq.conf");
        std::fs::write(
            &conf,
            format!(
                "listeners.tcp.bind = \"127.0.0.1:{own}\"\nbridges.mqtt.peer {{\n  server = \"mqtt-tcp://127.0.0.1:{other}\"\n  proto_ver = 5\n  clientid = \"bridge-from-{own}\"\n  backoff_max = 1s\n  forwards = [{{ local_topic = \"t/#\" }}]\n}}\n"
            ),
        )
        .unwrap();
        conf
    };
    let conf_a = bridge(&dir_a, port_a, port_b);
    let conf_b = bridge(&dir_b, port_b, port_a);
    let a = start(&conf_a, &dir_a.file("pid"), &dir_a.file("log"), port_a);
    let b = start(&conf_b, &dir_b.file("pid"), &dir_b.file("log"), port_b);
    wait_bridge_up(&a, 1);
    wait_bridge_up(&b, 1);
    let on_a = mosquitto_sub(port_a, &["-t", "t/#", "-W", "3", "-v"]);
    let on_b = mosquitto_sub(port_b, &["-t", "t/#", "-W", "3", "-v"]);
    std::thread::sleep(Duration::from_millis(300));
    mosquitto_pub(port_a, &["-t", "t/1", "-m", "once", "-q", "1"]);
    // -W 3: each subscriber listens 3 s; a loop would deliver the message again and again.
    let got_a = on_a.wait_with_output().unwrap();
    let got_b = on_b.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got_a.stdout), "t/1 once\n");
    assert_eq!(String::from_utf8_lossy(&got_b.stdout), "t/1 once\n");
}

#[test]
fn bridge_to_a_tls_remote() {
    let dir = Dir::new("bridge-tls");
    make_certs(&dir, "");
    let f = |n: &str| dir.file(n).display().to_string();
    let remote = Mosquitto::start_with(
        &dir,
        &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            f("ca.pem"),
            f("server.pem"),
            f("server.key")
        ),
    );
    let (broker, port) = tidemq_with_bridge(
        &dir,
        0,
        &format!(
            "  proto_ver = 5\n  forwards = [{{ local_topic = \"up/#\" }}]\n  subscription = [{{ remote_topic = \"down/#\", qos = 1 }}]\n  ssl {{ cacertfile = \"{}\" }}",
            f("ca.pem")
        ),
    );
    // The bridge address was written with port 0 above; point it at the TLS remote.
    let conf = dir.file("nanomq.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        "mqtt-tcp://127.0.0.1:0",
        &format!("tls+mqtt-tcp://localhost:{}", remote.port),
    );
    std::fs::write(&conf, text).unwrap();
    let out = run(std::process::Command::new(support::TIDEMQ)
        .args(["reload", "--pid_file"])
        .arg(dir.file("pid")));
    assert!(out.status.success(), "{out:?}");
    wait_bridge_up(&broker, 1);
    let ca = f("ca.pem");
    let remote_sub = tool("mosquitto_sub")
        .args([
            "-h",
            "localhost",
            "-p",
            &remote.port.to_string(),
            "--cafile",
            &ca,
        ])
        .args(["-t", "up/#", "-C", "1", "-v", "-W", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    mosquitto_pub(port, &["-t", "up/secure", "-m", "over tls", "-q", "1"]);
    assert_eq!(lines(remote_sub), ["up/secure over tls"]);
    let local_sub = mosquitto_sub(port, &["-t", "down/#", "-C", "1", "-v"]);
    std::thread::sleep(Duration::from_millis(300));
    let out = run(tool("mosquitto_pub")
        .args([
            "-h",
            "localhost",
            "-p",
            &remote.port.to_string(),
            "--cafile",
            &ca,
        ])
        .args(["-t", "down/secure", "-m", "back", "-q", "1"]));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines(local_sub), ["down/secure back"]);
}
