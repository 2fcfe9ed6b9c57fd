//! Logs through `tracing`: to the console and/or a size-rotated file, as text or as one JSON
//! object per line, with a level that a reload can change.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tidemq_core::config::LogConfig;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

/// Changes the log level of the running process.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

impl LogHandle {
    pub fn set_level(&self, level: &str) {
        if std::env::var_os("RUST_LOG").is_some() {
            return;
        }
        if let Ok(filter) = EnvFilter::try_new(level_directive(level)) {
            let _ = self.filter.reload(filter);
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, fields, `target`), for
    /// log collectors.
    Json,
}

/// The environment variable that chooses the format over `log.format`.
pub const FORMAT_ENV: &str = "TIDEMQ_LOG_FORMAT";

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: expected text or json")),
        }
    }
}

impl LogFormat {
    /// The format `TIDEMQ_LOG_FORMAT` asks for, else `configured` (`log.format`); an unknown
    /// value is an error naming where it came from.
    pub fn from_env(
        env: &std::collections::BTreeMap<String, String>,
        configured: &str,
    ) -> Result<LogFormat, String> {
        match env.get(FORMAT_ENV) {
            Some(v) if !v.trim().is_empty() => v.parse().map_err(|e| format!("{FORMAT_ENV}: {e}")),
            _ => configured.parse().map_err(|e| format!("log.format: {e}")),
        }
    }
}

/// NanoMQ's `fatal` is `error` here.
fn level_directive(level: &str) -> &str {
    match level {
        "fatal" => "error",
        other => other,
    }
}

/// Sets up the global subscriber. `RUST_LOG`, when set, wins over `log.level`.
pub fn init(config: &LogConfig, format: LogFormat) -> Result<LogHandle, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level_directive(&config.level)))
        .map_err(|e| format!("log.level: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let to_console = config.to.iter().any(|t| t == "console" || t == "syslog");
    let to_file = config.to.iter().any(|t| t == "file");
    let json = format == LogFormat::Json;
    let console = (to_console && !json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
    });
    let console_json = (to_console && json).then(|| json_layer().with_writer(io::stderr));
    let file = if to_file {
        let path = PathBuf::from(&config.dir).join(&config.file);
        Some(
            RotatingFile::open(path, config.rotation_size, config.rotation_count)
                .map_err(|e| format!("log file: {e}"))?,
        )
    } else {
        None
    };
    let file_json = file
        .clone()
        .filter(|_| json)
        .map(|writer| json_layer().with_writer(writer));
    let file_text = file.filter(|_| !json).map(|writer| {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(console_json)
        .with(file_text)
        .with(file_json)
        .try_init()
        .map_err(|e| e.to_string())?;
    Ok(LogHandle { filter: handle })
}

/// JSON lines with the event's fields at the top level (`message` among them), so a
/// collector finds `level` and `message` without digging.
fn json_layer<S>() -> tracing_subscriber::fmt::Layer<
    S,
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}

/// A log file that moves to `.1`, `.2`, ... when it reaches its size limit.
#[derive(Clone)]
struct RotatingFile {
    inner: Arc<Mutex<Rotating>>,
}

struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    keep: u32,
}

impl RotatingFile {
    fn open(path: PathBuf, max_size: u64, keep: u32) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.exists()) {
            crate::files::private_dir(dir)?;
        }
        let file = open_log(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            inner: Arc::new(Mutex::new(Rotating {
                path,
                file,
                size,
                max_size: max_size.max(4096),
                keep,
            })),
        })
    }
}

/// The log file, 0600 when we create it; the log directory may be shared (NanoMQ's default
/// is /tmp), so a symlink or a file someone else owns in its place is refused.
fn open_log(path: &std::path::Path) -> io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let file = crate::files::append_private(path)?;
    if file.metadata()?.uid() != crate::files::effective_uid()? {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{}: owned by another user; refusing to log into it",
                path.display()
            ),
        ));
    }
    Ok(file)
}

impl Rotating {
    fn rotate(&mut self) -> io::Result<()> {
        let numbered = |n: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            self.file = crate::files::create_private(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
            self.file = open_log(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("log file lock poisoned"))?;
        if inner.size > 0 && inner.size + buf.len() as u64 > inner.max_size {
            inner.rotate()?;
        }
        let n = inner.file.write(buf)?;
        inner.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("log file lock poisoned"))?;
        inner.file.flush()
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = RotatingFile;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_from_the_environment_over_the_configuration() {
        let env = |v: &str| {
            [(FORMAT_ENV.to_owned(), v.to_owned())]
                .into_iter()
                .collect()
        };
        let none = Default::default();
        assert_eq!(LogFormat::from_env(&none, "text"), Ok(LogFormat::Text));
        assert_eq!(LogFormat::from_env(&none, "json"), Ok(LogFormat::Json));
        assert_eq!(
            LogFormat::from_env(&env("json"), "text"),
            Ok(LogFormat::Json)
        );
        assert_eq!(
            LogFormat::from_env(&env(" JSON "), "text"),
            Ok(LogFormat::Json)
        );
        assert_eq!(
            LogFormat::from_env(&env("text"), "json"),
            Ok(LogFormat::Text)
        );
        assert_eq!(LogFormat::from_env(&env(""), "json"), Ok(LogFormat::Json));
        let err = LogFormat::from_env(&env("xml"), "text").unwrap_err();
        assert!(
            err.contains("TIDEMQ_LOG_FORMAT") && err.contains("xml"),
            "{err}"
        );
        let err = LogFormat::from_env(&none, "xml").unwrap_err();
        assert!(err.contains("log.format"), "{err}");
    }
}
