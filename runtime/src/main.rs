//! `tidemq`: the TideMQ broker binary, with NanoMQ's command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tidemq_runtime::config_file::{self, ConfigInputs, Loaded};
use tidemq_runtime::notify::Notifier;
use tidemq_runtime::{ConfigOrigin, Control, Server, auth, health, logging, pidfile};
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    name = "tidemq",
    version,
    about = "TideMQ: an MQTT 3.1/3.1.1/5.0 broker, compatible with NanoMQ's configuration and admin API",
    after_help = "Configuration precedence: built-in defaults < config file < environment \
(NANOMQ_* / TIDEMQ_*) < command-line flags."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (in the foreground unless -d).
    Start(StartArgs),
    /// Stop the broker named by the pid file (SIGTERM, then wait for it to exit).
    Stop(PidArgs),
    /// Stop the running broker, then start it again with these options.
    Restart(StartArgs),
    /// Make the running broker re-read its configuration (SIGHUP).
    Reload(ReloadArgs),
    /// Validate a configuration and print the effective settings (secrets masked).
    Check(FileArgs),
    /// Add, change (-c: create) or delete (-D) a user in a Mosquitto-format password file;
    /// new passwords are stored as argon2id hashes.
    Passwd(PasswdArgs),
    /// Ask the running broker whether it is ready (GET /readyz on the admin API); exit 0 if
    /// it is, 1 otherwise. For container health checks: needs no curl.
    Healthcheck(HealthcheckArgs),
    /// The common admin queries on the running broker, over its local admin API (v4).
    Ctl(CtlArgs),
}

#[derive(Args, Clone)]
struct CtlArgs {
    #[command(subcommand)]
    query: CtlQuery,
    /// The admin API, e.g. http://127.0.0.1:8081 [default: the configured http_server
    /// address, loopback for a wildcard address].
    #[arg(long, value_name = "URL", global = true)]
    url: Option<String>,
    /// Admin user [default: http_server.username from the configuration].
    #[arg(long, global = true)]
    user: Option<String>,
    /// Admin password [default: http_server.password from the configuration; also
    /// TIDEMQ_CTL_PASSWORD].
    #[arg(long, global = true)]
    password: Option<String>,
    /// Print the API's JSON reply instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds each step (connect, send, read) may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, global = true)]
    timeout: u64,
    #[command(flatten)]
    file: FileArgs,
}

#[derive(Subcommand, Clone)]
enum CtlQuery {
    /// Every session: client id, user name, state, protocol, keep alive.
    Clients,
    /// Every subscription, or one client's.
    Subscriptions { client_id: Option<String> },
    /// Disconnect a client (its session ends unless --keep-session).
    Kick {
        client_id: String,
        #[arg(long)]
        keep_session: bool,
    },
    /// The Prometheus text of /metrics.
    Metrics,
}

#[derive(Args, Clone)]
struct HealthcheckArgs {
    /// What to ask, e.g. http://127.0.0.1:8081/readyz [default: /readyz on the configured
    /// http_server address, loopback for a wildcard address].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Seconds each step (connect, send, read) may take.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    timeout: u64,
    #[command(flatten)]
    file: FileArgs,
}

#[derive(Args, Clone)]
struct PasswdArgs {
    /// Create the file, replacing an existing one.
    #[arg(short = 'c', conflicts_with = "delete")]
    create: bool,
    /// Batch mode: take the password from the command line instead of prompting.
    #[arg(short = 'b', requires = "password")]
    batch: bool,
    /// Delete the user.
    #[arg(short = 'D', conflicts_with = "batch")]
    delete: bool,
    /// The password file.
    file: PathBuf,
    /// The user name.
    user: String,
    /// The password (with -b only).
    #[arg(requires = "batch")]
    password: Option<String>,
}

#[derive(Args, Clone, Default)]
struct FileArgs {
    /// HOCON configuration file (NanoMQ's nanomq.conf format).
    #[arg(long, value_name = "FILE", conflicts_with = "old_conf")]
    conf: Option<PathBuf>,
    /// Configuration file in NanoMQ's older key=value format.
    #[arg(long = "old_conf", value_name = "FILE")]
    old_conf: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct PidArgs {
    /// Pid file [env: TIDEMQ_PID_FILE or NANOMQ_PID_FILE; default /run/tidemq/tidemq.pid as
    /// root, else $XDG_RUNTIME_DIR/tidemq/tidemq.pid or /tmp/tidemq-UID/tidemq.pid].
    #[arg(long = "pid_file", value_name = "FILE")]
    pid_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ReloadArgs {
    /// Switch the running broker to this HOCON file before reloading.
    #[arg(long, value_name = "FILE")]
    conf: Option<PathBuf>,
    #[command(flatten)]
    pid: PidArgs,
}

#[derive(Args, Clone, Default)]
struct StartArgs {
    #[command(flatten)]
    file: FileArgs,
    #[command(flatten)]
    pid: PidArgs,
    /// MQTT listener URL, e.g. nmq-tcp://0.0.0.0:1883 (config key `url`).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Enable the admin HTTP API (http_server.enable).
    #[arg(long)]
    http: bool,
    /// Admin HTTP API port (http_server.port).
    #[arg(short = 'p', long, value_name = "PORT")]
    port: Option<u16>,
    /// Run in the background.
    #[arg(short = 'd', long)]
    daemon: bool,
    /// Worker threads at start (num_taskq_thread).
    #[arg(short = 't', long = "tq_thread", value_name = "N")]
    tq_thread: Option<u32>,
    /// Worker threads at most (max_taskq_thread; 0 = one per core).
    #[arg(short = 'T', long = "max_tq_thread", value_name = "N")]
    max_tq_thread: Option<u32>,
    /// NanoMQ's parallelism setting (parallel).
    #[arg(short = 'n', long, value_name = "N")]
    parallel: Option<u32>,
    /// User properties allowed per packet (property_size).
    #[arg(short = 's', long = "property_size", value_name = "N")]
    property_size: Option<u32>,
    /// Per-session queue length (msq_len).
    #[arg(short = 'S', long = "msq_len", value_name = "N")]
    msq_len: Option<u32>,
    /// QoS retry interval in seconds (qos_duration).
    #[arg(short = 'D', long = "qos_duration", value_name = "SECONDS")]
    qos_duration: Option<u32>,
    /// trace, debug, info, warn or error (log.level; RUST_LOG, if set, wins).
    #[arg(long = "log_level", value_name = "LEVEL")]
    log_level: Option<String>,
    /// Also log to this file (log.to includes file).
    #[arg(long = "log_file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// CA certificates for verifying clients (tls.cacertfile).
    #[arg(long, value_name = "FILE")]
    cacert: Option<String>,
    /// Server certificate chain (tls.certfile); with --key, enables TLS.
    #[arg(short = 'E', long, value_name = "FILE")]
    cert: Option<String>,
    /// Server private key (tls.keyfile).
    #[arg(long, value_name = "FILE")]
    key: Option<String>,
    /// Private key password (tls.key_password).
    #[arg(long, value_name = "PASSWORD")]
    keypass: Option<String>,
    /// Verify client certificates (tls.verify_peer).
    #[arg(long)]
    verify: bool,
    /// Refuse clients without a certificate (tls.fail_if_no_peer_cert).
    #[arg(long)]
    fail: bool,
}

impl StartArgs {
    /// Flags as configuration entries, in the keys the config files use.
    fn flag_entries(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| out.push((k.to_owned(), v));
        if let Some(v) = &self.url {
            set("url", v.clone());
        }
        if self.http {
            set("http_server.enable", "true".into());
        }
        if let Some(v) = self.port {
            set("http_server.port", v.to_string());
        }
        if self.daemon {
            set("daemon", "true".into());
        }
        if let Some(v) = self.tq_thread {
            set("num_taskq_thread", v.to_string());
        }
        if let Some(v) = self.max_tq_thread {
            set("max_taskq_thread", v.to_string());
        }
        if let Some(v) = self.parallel {
            set("parallel", v.to_string());
        }
        if let Some(v) = self.property_size {
            set("property_size", v.to_string());
        }
        if let Some(v) = self.msq_len {
            set("msq_len", v.to_string());
        }
        if let Some(v) = self.qos_duration {
            set("qos_duration", v.to_string());
        }
        if let Some(v) = &self.log_level {
            set("log.level", v.clone());
        }
        if let Some(path) = &self.log_file {
            set("log.to", "console,file".into());
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            set(
                "log.dir",
                dir.unwrap_or(Path::new(".")).display().to_string(),
            );
            let file = path.file_name().unwrap_or_default();
            set("log.file", file.to_string_lossy().into_owned());
        }
        if let Some(v) = &self.cacert {
            set("tls.cacertfile", v.clone());
        }
        if let Some(v) = &self.cert {
            set("tls.certfile", v.clone());
        }
        if let Some(v) = &self.key {
            set("tls.keyfile", v.clone());
        }
        if self.cert.is_some() && self.key.is_some() {
            set("tls.enable", "true".into());
        }
        if let Some(v) = &self.keypass {
            set("tls.key_password", v.clone());
        }
        if self.verify {
            set("tls.verify_peer", "true".into());
        }
        if self.fail {
            set("tls.fail_if_no_peer_cert", "true".into());
        }
        out
    }

    fn inputs(&self, env: &BTreeMap<String, String>) -> ConfigInputs {
        ConfigInputs {
            source: config_file::find_source(
                self.file.conf.as_deref(),
                self.file.old_conf.as_deref(),
                env,
            ),
            flags: self.flag_entries(),
        }
    }
}

fn main() -> ExitCode {
    tidemq_runtime::tls::install_provider();
    let cli = Cli::parse();
    let env = config_file::process_env();
    match cli.command {
        Command::Start(args) => start(&args, &env),
        Command::Restart(args) => {
            let pid_path = pidfile::path(args.pid.pid_file.as_deref(), &env);
            if let Err(e) = pidfile::stop(&pid_path, Duration::from_secs(15)) {
                eprintln!("tidemq restart: {e}");
            }
            start(&args, &env)
        }
        Command::Stop(args) => {
            let pid_path = pidfile::path(args.pid_file.as_deref(), &env);
            match pidfile::stop(&pid_path, Duration::from_secs(15)) {
                Ok(pid) => {
                    println!("tidemq (pid {pid}) stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tidemq stop: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Reload(args) => {
            let pid_path = pidfile::path(args.pid.pid_file.as_deref(), &env);
            match pidfile::reload(&pid_path, args.conf.as_deref()) {
                Ok(pid) => {
                    println!(
                        "reload requested from tidemq (pid {pid}); its log reports the result"
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tidemq reload: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Check(args) => {
            let inputs = ConfigInputs {
                source: config_file::find_source(
                    args.conf.as_deref(),
                    args.old_conf.as_deref(),
                    &env,
                ),
                flags: Vec::new(),
            };
            match config_file::load(&inputs, &env) {
                Ok(Loaded { config, warnings }) => {
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                    match &inputs.source {
                        Some(s) => eprintln!("{}: ok", s.path.display()),
                        None => eprintln!("no configuration file found: built-in defaults"),
                    }
                    println!("{}", config_file::masked_json(&config));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Healthcheck(args) => healthcheck(&args, &env),
        Command::Ctl(args) => ctl(&args, &env),
        Command::Passwd(args) => {
            let action = if args.delete {
                auth::PasswdAction::Delete
            } else {
                auth::PasswdAction::Set {
                    password: args.password,
                }
            };
            match auth::passwd(&args.file, &args.user, args.create, action) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("tidemq passwd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn start(args: &StartArgs, env: &BTreeMap<String, String>) -> ExitCode {
    let inputs = args.inputs(env);
    let Loaded { config, warnings } = match config_file::load(&inputs, env) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("tidemq: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.daemon && env.get(pidfile::DAEMON_CHILD_ENV).is_none() {
        return match pidfile::daemonize() {
            Ok(pid) => {
                println!("tidemq started in the background (pid {pid})");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("tidemq: cannot start in the background: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // `TIDEMQ_LOG_FORMAT` wins over `log.format` (the core has checked the latter).
    let format = match logging::LogFormat::from_env(env, &config.log.format) {
        Ok(format) => format,
        Err(e) => {
            eprintln!("tidemq: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log = match logging::init(&config.log, format) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("tidemq: cannot set up logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &inputs.source {
        Some(s) => info!(file = %s.path.display(), "configuration loaded"),
        None => warn!(
            "no configuration file found (etc/nanomq.conf, /etc/nanomq.conf): using built-in defaults"
        ),
    }
    for w in &warnings {
        warn!("{w}");
    }
    if !config.tcp_enable {
        error!(
            "the TCP listener is disabled (listeners.tcp.enable = false) and no other listener exists yet"
        );
        return ExitCode::FAILURE;
    }
    let pid_path = pidfile::path(args.pid.pid_file.as_deref(), env);
    let _pid_guard = match pidfile::PidFile::create(&pid_path) {
        Ok(guard) => guard,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.max_taskq_thread > 0 {
        builder.worker_threads(config.max_taskq_thread as usize);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let origin = ConfigOrigin {
        inputs,
        env: env.clone(),
        pid_file: Some(pid_path),
        log: Some(log),
    };
    let result = runtime.block_on(async move {
        let mut server = Server::bind(config, os_seed())
            .await?
            .with_origin(origin)
            .with_notifier(Notifier::from_env());
        let control = server.control();
        // Installed before serving, so an early SIGHUP reloads instead of killing us.
        let mut hangups = hangup_signals()?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                if control.send(Control::Reload).is_err() {
                    return;
                }
            }
        });
        // On a worker thread, like the connection tasks: no cross-thread hand-off per event.
        tokio::spawn(server.run(shutdown_signal()))
            .await
            .map_err(std::io::Error::other)?
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `tidemq healthcheck`: exit 0 when the broker answers 200 on /readyz.
fn healthcheck(args: &HealthcheckArgs, env: &BTreeMap<String, String>) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let inputs = ConfigInputs {
                source: config_file::find_source(
                    args.file.conf.as_deref(),
                    args.file.old_conf.as_deref(),
                    env,
                ),
                flags: Vec::new(),
            };
            match config_file::load(&inputs, env) {
                Ok(Loaded { config, .. }) if config.http_server.enable => {
                    health::readyz_url(&config.http_server.ip_addr, config.http_server.port)
                }
                Ok(_) => {
                    eprintln!(
                        "tidemq healthcheck: the admin API is off (http_server.enable = false); \
                         give --url"
                    );
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    eprintln!("tidemq healthcheck: invalid configuration: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match health::probe(&url, Duration::from_secs(args.timeout.max(1))) {
        Ok((200, body)) => {
            println!("{url}: 200 {}", body.trim());
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            println!("{url}: {status} {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("{url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tidemq ctl`: one admin query; the answer on stdout, exit 1 with the reason otherwise.
fn ctl(args: &CtlArgs, env: &BTreeMap<String, String>) -> ExitCode {
    let inputs = ConfigInputs {
        source: config_file::find_source(
            args.file.conf.as_deref(),
            args.file.old_conf.as_deref(),
            env,
        ),
        flags: Vec::new(),
    };
    let config = match config_file::load(&inputs, env) {
        Ok(Loaded { config, .. }) => config,
        Err(e) => {
            eprintln!("tidemq ctl: invalid configuration: {e}");
            return ExitCode::FAILURE;
        }
    };
    let http = &config.http_server;
    let authority = match &args.url {
        Some(url) => url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/')
            .to_owned(),
        None if http.enable => health::readyz_url(&http.ip_addr, http.port)
            .trim_start_matches("http://")
            .trim_end_matches("/readyz")
            .to_owned(),
        None => {
            eprintln!("tidemq ctl: the admin API is off (http_server.enable = false); give --url");
            return ExitCode::FAILURE;
        }
    };
    let target = tidemq_runtime::ctl::Target {
        authority,
        username: args.user.clone().unwrap_or_else(|| http.username.clone()),
        password: args
            .password
            .clone()
            .or_else(|| env.get("TIDEMQ_CTL_PASSWORD").cloned())
            .unwrap_or_else(|| http.password.clone()),
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let query = match &args.query {
        CtlQuery::Clients => tidemq_runtime::ctl::Query::Clients,
        CtlQuery::Subscriptions { client_id } => {
            tidemq_runtime::ctl::Query::Subscriptions(client_id.clone())
        }
        CtlQuery::Kick {
            client_id,
            keep_session,
        } => tidemq_runtime::ctl::Query::Kick {
            client_id: client_id.clone(),
            keep_session: *keep_session,
        },
        CtlQuery::Metrics => tidemq_runtime::ctl::Query::Metrics,
    };
    match tidemq_runtime::ctl::run(&target, &query, args.json) {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tidemq ctl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The broker's seed: fresh per process, logged at start so a run can be replayed.
fn os_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id())
}

/// A stream of SIGHUPs (never fires where there are no such signals).
fn hangup_signals() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                // Several signals while a reload is pending make one reload.
                let _ = tx.try_send(());
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    Ok(rx)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
