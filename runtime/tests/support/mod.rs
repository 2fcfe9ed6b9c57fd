#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Helpers for end-to-end tests that start `tidemq` with a configuration file.

pub mod api;
pub mod browser;
pub mod nats;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TIDEMQ: &str = env!("CARGO_BIN_EXE_tidemq");

/// A process's resident memory in KiB, from `/proc/<pid>/status` (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!("tidemq-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Dir(path)
    }
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nothing listens on, below the kernel's ephemeral range: a port the kernel hands out
/// for `:0` may be taken by an outgoing connection's local end before the broker binds it
/// (seen in a run: "Address already in use" for the admin API's port). Each test process
/// walks its own stretch, and never hands out a port twice.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const LOW: u32 = 10_000;
    if ephemeral_start <= LOW + 1000 {
        return TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
    }
    let span = ephemeral_start - LOW;
    let base = std::process::id().wrapping_mul(2654435761) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOW + (base + n) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {ephemeral_start}");
}

pub fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is missing: install the Debian package mosquitto-clients (scripts/test does)"
    );
    Command::new(name)
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

pub struct Running {
    pub child: Child,
    pub log: PathBuf,
}

impl Running {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- broker log ---\n{}", self.log());
        }
    }
}

pub fn start(conf: &Path, pid: &Path, log: &Path, port: u16) -> Running {
    let child = Command::new(TIDEMQ)
        .args(["start", "--conf"])
        .arg(conf)
        .arg("--pid_file")
        .arg(pid)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let running = Running {
        child,
        log: log.to_owned(),
    };
    wait_for("the broker to listen", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    running
}

/// Waits until the broker of `running` accepts an anonymous MQTT connection on `port`: its
/// listener is bound before the broker serves it (a cluster node first opens its JetStream
/// buckets), so an accepted TCP connection says too little. Fails at once if it exits.
pub fn wait_serving(running: &mut Running, port: u16) {
    wait_for(
        "the broker to accept a CONNECT",
        Duration::from_secs(60),
        || {
            if let Ok(Some(status)) = running.child.try_wait() {
                // Its log follows, from `Running`'s drop.
                panic!("the broker exited ({status}) before serving");
            }
            answers_connect(port)
        },
    );
}

/// Whether an MQTT 3.1.1 CONNECT (clean session, no client id) to `port` is accepted (a
/// CONNACK with return code 0) within a second; the connection is then closed with DISCONNECT.
pub fn answers_connect(port: u16) -> bool {
    use std::io::{Read, Write};
    const CONNECT: [u8; 14] = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0];
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut connack = [0u8; 4];
    let answered = stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .is_ok()
        && stream.write_all(&CONNECT).is_ok()
        && stream.read_exact(&mut connack).is_ok()
        && connack[0] == 0x20
        && connack[3] == 0;
    if answered {
        let _ = stream.write_all(&[0xE0, 0]);
    }
    answered
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by
/// the CA, written as `<prefix>ca.pem`, `<prefix>server.pem`/`.key`, `<prefix>client.pem`/`.key`.
pub fn make_certs(dir: &Dir, prefix: &str) {
    let p = |name: &str| dir.file(&format!("{prefix}{name}"));
    let ok = |cmd: &mut Command| {
        let out = run(cmd);
        assert!(out.status.success(), "openssl failed: {out:?}");
    };
    ok(tool("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
        ])
        .args(["-subj", &format!("/CN=TideMQ test CA {prefix}")])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    for (who, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(p(&format!("{who}.ext")), ext).unwrap();
        ok(tool("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
            ])
            .args(["-subj", &format!("/CN={who}")])
            .arg("-keyout")
            .arg(p(&format!("{who}.key")))
            .arg("-out")
            .arg(p(&format!("{who}.csr"))));
        ok(tool("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p(&format!("{who}.csr")))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p(&format!("{who}.ext")))
            .arg("-out")
            .arg(p(&format!("{who}.pem"))));
    }
}

/// A `mosquitto_sub` on 127.0.0.1:`port` (30 s limit), its output piped.
pub fn mosquitto_sub(port: u16, args: &[&str]) -> Child {
    tool("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-W", "30"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `mosquitto_pub` to 127.0.0.1:`port`, which must succeed.
pub fn mosquitto_pub(port: u16, args: &[&str]) {
    let out = run(tool("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args));
    assert!(out.status.success(), "{out:?}");
}
