//! The pid file that `tidemq stop`, `restart` and `reload` use to find a running broker, and
//! running in the background.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Set in the environment of the background copy started by `-d`.
pub const DAEMON_CHILD_ENV: &str = "TIDEMQ_DAEMON_CHILD";

/// The pid file: the flag, else `TIDEMQ_PID_FILE` / `NANOMQ_PID_FILE`, else
/// `tidemq.pid` in a directory of our own: `/run/tidemq` as root, `$XDG_RUNTIME_DIR/tidemq`
/// otherwise, or `/tmp/tidemq-<uid>` without one. (NanoMQ uses `/tmp/nanomq`, which anyone
/// could create first.)
pub fn path(flag: Option<&Path>, env: &BTreeMap<String, String>) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| env.get("TIDEMQ_PID_FILE").map(PathBuf::from))
        .or_else(|| env.get("NANOMQ_PID_FILE").map(PathBuf::from))
        .unwrap_or_else(|| default_dir(env).join("tidemq.pid"))
}

fn default_dir(env: &BTreeMap<String, String>) -> PathBuf {
    let uid = crate::files::effective_uid().unwrap_or(u32::MAX);
    if uid == 0 {
        return PathBuf::from("/run/tidemq");
    }
    match env.get("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(dir).join("tidemq"),
        None => PathBuf::from(format!("/tmp/tidemq-{uid}")),
    }
}

fn reload_request_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("reload")
}

/// A process that exists and has not exited (a zombie waiting for its parent has).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn read_pid(path: &Path) -> io::Result<u32> {
    let text = crate::files::read_own(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "no running broker found: cannot read pid file {}: {e}",
                path.display()
            ),
        )
    })?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pid file {} does not hold a process id", path.display()),
        )
    })
}

fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill -{name} {pid} failed")))
    }
}

/// Held while the broker runs; removes the file when dropped.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes our pid, refusing if the file names a live process. Its directory must be
    /// ours alone (created 0700 if missing): the reload request beside it names the
    /// configuration file to load.
    pub fn create(path: &Path) -> io::Result<PidFile> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::files::private_dir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("pid file {}: {e}", path.display())))?;
        if let Ok(pid) = read_pid(path)
            && pid != std::process::id()
            && alive(pid)
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "a broker is already running (pid {pid}, pid file {}); stop it or use --pid_file",
                    path.display()
                ),
            ));
        }
        let write = || -> io::Result<()> {
            use std::io::Write;
            let mut file = crate::files::create_private(path)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())
        };
        write().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write pid file {}: {e}", path.display()),
            )
        })?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if read_pid(&self.path).ok() == Some(std::process::id()) {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(reload_request_path(&self.path));
        }
    }
}

/// Asks the broker to stop and waits until it has.
pub fn stop(path: &Path, wait: Duration) -> io::Result<u32> {
    let pid = read_pid(path)?;
    if !alive(pid) {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("pid {pid} from {} is not running", path.display()),
        ));
    }
    signal(pid, "TERM")?;
    let start = Instant::now();
    while alive(pid) {
        if start.elapsed() > wait {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("pid {pid} did not stop within {wait:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(pid)
}

/// Asks the broker to re-read its configuration, optionally from another file.
pub fn reload(path: &Path, conf: Option<&Path>) -> io::Result<u32> {
    let pid = read_pid(path)?;
    if !alive(pid) {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("pid {pid} from {} is not running", path.display()),
        ));
    }
    if let Some(conf) = conf {
        use std::io::Write;
        let absolute = std::path::absolute(conf)?;
        crate::files::create_private(&reload_request_path(path))?
            .write_all(absolute.display().to_string().as_bytes())?;
    }
    signal(pid, "HUP")?;
    Ok(pid)
}

/// The file a `tidemq reload --conf FILE` asked for, consumed.
pub fn take_reload_request(pid_file: &Path) -> Option<PathBuf> {
    let request = reload_request_path(pid_file);
    // Only a request we wrote (the directory is ours; the file must be too).
    let text = match crate::files::read_own(&request) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!("ignoring reload request {}: {e}", request.display());
            let _ = std::fs::remove_file(&request);
            return None;
        }
    };
    let _ = std::fs::remove_file(&request);
    Some(PathBuf::from(text.trim()))
}

/// Starts this same command again in the background, detached from the terminal's process
/// group, and returns its pid.
pub fn daemonize() -> io::Result<u32> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(DAEMON_CHILD_ENV, "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}
