//! Shared helpers for the end-to-end tests: a real `tidemq` process on a free port, and
//! bounded runs of external client programs.
//!
//! Every wait here is bounded; a test never hangs on a broker or a client.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long the broker may take to accept TCP connections after it is spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the broker may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A name unique in this test process (and, through the pid, across concurrent runs):
/// for client ids and topics.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the broker binds it right after).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// A `tidemq start` child process. Stopped with SIGTERM on drop; if the test is failing, its
/// stderr (the broker's log) is printed.
pub struct Broker {
    child: Option<Child>,
    pub port: u16,
    /// The broker's working directory (removed after a passing test).
    dir: PathBuf,
    log_path: PathBuf,
}

impl Broker {
    /// Starts the broker binary on a free port and waits until it accepts connections.
    pub fn start() -> Broker {
        let mut last_log = String::new();
        // The port can be taken by someone else between `free_port` and the broker's bind:
        // retry a few times with another port.
        for _ in 0..5 {
            let port = free_port();
            // Each broker runs in a directory of its own, so that its relative paths (a
            // config file under etc/, a pid file, log files) never meet another test's.
            let dir = std::env::temp_dir().join(unique("tidemq-e2e"));
            std::fs::create_dir_all(&dir).expect("create the broker's directory");
            let log_path = dir.join("broker-stderr.log");
            let log = std::fs::File::create(&log_path).expect("create the broker log file");
            let mut command = Command::new(env!("CARGO_BIN_EXE_tidemq"));
            command
                .args([
                    "start",
                    "--url",
                    &format!("nmq-tcp://127.0.0.1:{port}"),
                    "--log_level",
                    "debug",
                ])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            // Settings from the environment of whoever runs the tests must not leak in.
            for (key, _) in std::env::vars_os() {
                let key_text = key.to_string_lossy();
                if key_text == "RUST_LOG"
                    || key_text.starts_with("NANOMQ_")
                    || key_text.starts_with("TIDEMQ_")
                {
                    command.env_remove(&key);
                }
            }
            command.env("TIDEMQ_PID_FILE", dir.join("tidemq.pid"));
            let child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    // E.g. a concurrent `cargo build` is replacing the binary: retry.
                    last_log = format!("cannot spawn {}: {e}", env!("CARGO_BIN_EXE_tidemq"));
                    let _ = std::fs::remove_dir_all(&dir);
                    thread::sleep(Duration::from_millis(500));
                    continue;
                }
            };
            let mut broker = Broker {
                child: Some(child),
                port,
                dir,
                log_path,
            };
            match broker.wait_ready() {
                Ok(()) => return broker,
                Err(why) => {
                    last_log = format!("{why}\n{}", broker.log());
                    // Drop stops it and removes its log; we keep the text.
                    broker.discard_log();
                }
            }
        }
        panic!("the tidemq broker did not start; last attempt:\n{last_log}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = self.addr();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!("tidemq exited during start-up with {status}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "tidemq did not accept connections on {addr} within {START_TIMEOUT:?}"
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    fn discard_log(&mut self) {
        self.stop_child();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Sends SIGTERM and waits (bounded) for the broker to exit. `None` if it had to be killed.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_child()
    }

    fn stop_child(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let stopped = self.stop_child();
        if thread::panicking() {
            eprintln!(
                "----- tidemq broker on port {} (stopped: {stopped:?}) stderr -----\n{}\n----- end of broker stderr ({}) -----",
                self.port,
                self.log(),
                self.log_path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// What a finished external command printed.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Exit code 124 is how `timeout` reports that it had to stop the command.
    pub fn timed_out(&self) -> bool {
        self.status.code() == Some(124) || self.status.code() == Some(137)
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status: {}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out() { " (timed out)" } else { "" },
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `program args...` under coreutils `timeout` (SIGTERM after `limit`, SIGKILL 5 s later)
/// and captures its output.
pub fn run_with_timeout(program: &str, args: &[&str], limit: Duration) -> CmdOutput {
    let secs = limit.as_secs().max(1).to_string();
    let output = Command::new("timeout")
        .args(["--kill-after=5", &secs, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `timeout` (coreutils) to start {program}: {e}"));
    CmdOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Fails the test (never skips it) if `program` cannot be run, naming what to install.
pub fn require_program(program: &str, install_hint: &str) {
    match Command::new(program)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed; these tests need it: {install_hint}")
        }
        Err(e) => panic!("cannot run `{program}` ({e}); these tests need it: {install_hint}"),
    }
}

/// `mosquitto_pub` and `mosquitto_sub` must be installed.
pub fn require_mosquitto_clients() {
    let hint =
        "install the Debian/Ubuntu package `mosquitto-clients` (apt-get install mosquitto-clients)";
    require_program("mosquitto_pub", hint);
    require_program("mosquitto_sub", hint);
    require_program("stdbuf", "install coreutils (Debian package `coreutils`)");
}

/// `python3` with paho-mqtt 2.x must be installed.
pub fn require_paho() {
    require_program(
        "python3",
        "install Python 3 (Debian package `python3`) and the PyPI package `paho-mqtt` >= 2.0",
    );
    let out = run_with_timeout(
        "python3",
        &[
            "-c",
            "import paho.mqtt, sys; sys.exit(0 if int(paho.mqtt.__version__.split('.')[0]) >= 2 else 3)",
        ],
        Duration::from_secs(30),
    );
    assert!(
        out.success(),
        "python3 cannot import paho-mqtt 2.x; install the PyPI package `paho-mqtt` >= 2.0 \
         (pip install 'paho-mqtt>=2')\n{out}"
    );
}

/// A long-running external client (e.g. `mosquitto_sub`) whose stdout is read line by line.
/// Killed (SIGKILL, i.e. no MQTT DISCONNECT) on drop.
pub struct Background {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stdout line seen so far, for failure messages.
    seen: Vec<String>,
    what: String,
}

impl Background {
    /// Spawns `program args...` directly (so that [`Background::kill`] reaches it). Callers
    /// must bound its life themselves (e.g. `mosquitto_sub -W secs`); drop kills it anyway.
    pub fn spawn(program: &str, args: &[&str]) -> Background {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {program}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            let _ = etx.send(text);
        });
        Background {
            child: Some(child),
            lines,
            stderr: erx,
            seen: Vec::new(),
            what: format!("{program} {}", args.join(" ")),
        }
    }

    /// The next stdout line, or `None` if none came within `limit` (or the program exited).
    pub fn next_line(&mut self, limit: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(limit).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads lines until one satisfies `pred` and returns it; panics after `limit`.
    pub fn wait_for_line(&mut self, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_line(left) {
                Some(line) if pred(&line) => return line,
                Some(_) => {}
                None => panic!(
                    "no expected line from `{}` within {limit:?}; it printed so far:\n{}",
                    self.what,
                    self.transcript()
                ),
            }
        }
    }

    /// Everything read so far (and the program's stderr if it has exited).
    pub fn transcript(&self) -> String {
        let mut s = self.seen.join("\n");
        if let Ok(err) = self.stderr.try_recv()
            && !err.is_empty()
        {
            s.push_str("\n--- stderr ---\n");
            s.push_str(&err);
        }
        s
    }

    /// Kills the program at once (SIGKILL): its connection closes without DISCONNECT.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (bounded) for the program to exit by itself; kills it after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}
