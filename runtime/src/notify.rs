//! The service manager's notification protocol (`sd_notify`): newline-separated `KEY=value`
//! datagrams to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! written with a leading `@`). Without the variable every call does nothing, so the same
//! binary runs under systemd, in a container and from a shell.

use std::future::Future;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, warn};

/// How often the start-up timeout is pushed back while the store is being recovered.
const EXTEND_EVERY: Duration = Duration::from_secs(5);
/// How far each push reaches: a few missed rounds are survived, a wedged recovery is not.
const EXTEND_BY: Duration = Duration::from_secs(20);

/// A handle for sending notifications; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A variable that is set
    /// but unusable is logged and notifications stay off.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let path = path.to_string_lossy().into_owned();
        let opened = socket_addr(&path).and_then(|addr| {
            let socket = UnixDatagram::unbound()?;
            // A full queue at the manager must never stall the driver: a lost ping is
            // better than a stuck broker.
            socket.set_nonblocking(true)?;
            Ok((socket, addr))
        });
        match opened {
            Ok((socket, addr)) => Notifier {
                inner: Some(Arc::new(Inner {
                    socket,
                    addr,
                    watchdog: watchdog_from_env(),
                })),
            },
            Err(e) => {
                warn!(
                    NOTIFY_SOCKET = path,
                    "service manager notifications off: {e}"
                );
                Notifier::default()
            }
        }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Sends one message (lines of `KEY=value`).
    pub fn send(&self, message: &str) {
        let Some(inner) = &self.inner else { return };
        if let Err(e) = inner.socket.send_to_addr(message.as_bytes(), &inner.addr) {
            debug!(error = %e, message, "service manager notification not sent");
        }
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// The broker serves: store recovered, core restored, every listener bound.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A reload starts; `MONOTONIC_USEC` lets systemd (253 and later) match it to its request.
    pub fn reloading(&self) {
        match monotonic_usec() {
            Some(usec) => self.send(&format!(
                "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC={usec}"
            )),
            None => self.send("RELOADING=1\nSTATUS=reloading the configuration"),
        }
    }

    /// A reload finished: the broker serves again, with the new or the previous configuration.
    pub fn reloaded(&self, outcome: &Result<(), String>) {
        match outcome {
            Ok(()) => self.ready("running; configuration reloaded"),
            Err(e) => self.ready(&format!(
                "running; reload failed, previous configuration kept: {e}"
            )),
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=shutting down");
    }

    /// The watchdog ping interval (half of `$WATCHDOG_USEC`), when a watchdog is on.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|i| i.watchdog)
    }

    /// Runs `work` (the store's recovery) while telling the manager it is still going, so a
    /// long journal replay does not hit `TimeoutStartSec`.
    pub async fn while_recovering<F: Future>(&self, work: F) -> F::Output {
        if !self.enabled() {
            return work.await;
        }
        let message = format!(
            "STATUS=recovering store\nEXTEND_TIMEOUT_USEC={}",
            EXTEND_BY.as_micros()
        );
        // Sent before the work is first polled: it may finish at once, and the manager
        // still hears that recovery happened.
        self.send(&message);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + EXTEND_EVERY, EXTEND_EVERY);
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = ticks.tick() => self.send(&message),
            }
        }
    }
}

/// Sends `WATCHDOG=1` from the driver loop: the loop calls [`Watchdog::ping_if_due`] after
/// every round and waits on [`Watchdog::wait`] when idle, so pings stop when the loop stops.
pub struct Watchdog {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

impl Watchdog {
    pub fn new(notifier: &Notifier) -> Watchdog {
        Watchdog {
            interval: notifier.watchdog_interval(),
            next: tokio::time::Instant::now(),
        }
    }

    /// Completes when a ping is due (never without a watchdog).
    pub async fn wait(&self) {
        match self.interval {
            Some(_) => tokio::time::sleep_until(self.next).await,
            None => std::future::pending().await,
        }
    }

    pub fn ping_if_due(&mut self, notifier: &Notifier) {
        let Some(interval) = self.interval else {
            return;
        };
        let now = tokio::time::Instant::now();
        if now >= self.next {
            notifier.send("WATCHDOG=1");
            self.next = now + interval;
        }
    }
}

fn socket_addr(path: &str) -> std::io::Result<SocketAddr> {
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            #[cfg(target_os = "android")]
            use std::os::android::net::SocketAddrExt;
            #[cfg(target_os = "linux")]
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(name.as_bytes());
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let _ = name;
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract sockets exist only on Linux",
            ));
        }
    }
    if !path.starts_with('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an absolute path or an abstract socket name (@...)",
        ));
    }
    SocketAddr::from_pathname(path)
}

/// Half of `$WATCHDOG_USEC`, if it is set for this process (`$WATCHDOG_PID`, when present,
/// names the process the watchdog is meant for).
fn watchdog_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID")
        && pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// A STATUS value is one line.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd stamps its reload requests with.
fn monotonic_usec() -> Option<u64> {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    secs.checked_mul(1_000_000)?.checked_add(nanos / 1_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A notifier and the socket it sends to, in a directory of this test process.
    fn pair() -> (Notifier, UnixDatagram) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tidemq-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(format!("n{n}.sock"));
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let socket = UnixDatagram::unbound().unwrap();
        let addr = socket_addr(path.to_str().unwrap()).unwrap();
        let notifier = Notifier {
            inner: Some(Arc::new(Inner {
                socket,
                addr,
                watchdog: Some(Duration::from_millis(10)),
            })),
        };
        (notifier, receiver)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(buf.get(..n).unwrap()).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let (notifier, receiver) = pair();
        notifier.ready("running\nfine");
        assert_eq!(recv(&receiver), "READY=1\nSTATUS=running fine");
        notifier.reloading();
        let reloading = recv(&receiver);
        assert!(reloading.starts_with("RELOADING=1\n"), "{reloading}");
        assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
        notifier.stopping();
        assert_eq!(recv(&receiver), "STOPPING=1\nSTATUS=shutting down");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn messages_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("tidemq-notify-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = socket_addr(&format!("@{name}")).unwrap();
        let notifier = Notifier {
            inner: Some(Arc::new(Inner {
                socket: UnixDatagram::unbound().unwrap(),
                addr,
                watchdog: None,
            })),
        };
        notifier.send("WATCHDOG=1");
        assert_eq!(recv(&receiver), "WATCHDOG=1");
    }

    #[test]
    fn relative_paths_are_refused_and_a_disabled_notifier_does_nothing() {
        assert!(socket_addr("run/notify").is_err());
        let off = Notifier::default();
        assert!(!off.enabled());
        off.ready("x");
        assert_eq!(off.watchdog_interval(), None);
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_usec().unwrap();
        assert!(b > a);
    }

    #[tokio::test]
    async fn watchdog_pings_only_when_due() {
        let (notifier, receiver) = pair();
        receiver.set_nonblocking(true).unwrap();
        let mut dog = Watchdog::new(&notifier);
        dog.ping_if_due(&notifier);
        dog.ping_if_due(&notifier);
        let mut buf = [0u8; 64];
        assert!(receiver.recv(&mut buf).is_ok());
        assert!(receiver.recv(&mut buf).is_err(), "a second ping too soon");
        dog.wait().await;
        dog.ping_if_due(&notifier);
        assert!(receiver.recv(&mut buf).is_ok());
    }
}
