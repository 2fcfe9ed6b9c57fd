//! The driver: one task owns the broker, feeds it inputs in arrival order and carries out its
//! outputs. It also reads and writes every connection's socket itself, when the socket is
//! ready ([`crate::link`]): a message goes from the socket it arrived on through the core to
//! the sockets it leaves by without crossing a task. Accept loops and handshakes run in tasks
//! of their own; the admin HTTP server only carries requests.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use tidemq_core::admin::ControlAction;
use tidemq_core::{AuthOutcome, Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};

use crate::auth::{self, Check, Checker, PasswordTable};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config_file::{self, ConfigInputs, Loaded};
use crate::conn::{self, AcceptContext, ConnEvent};
use crate::health::{Readiness, StoreState};
use crate::http::{self, AdminAnswer, AdminCall, HttpSettings, JwtKey};
use crate::limits::{ConnGate, ConnStats, Cut, FdBudget, RuntimeLimits, TRANSPORT_SLACK};
use crate::link::{Link, Phase, ReadResult, ReadyQueue};
use crate::listener::{ListenerUrl, Transport, parse_listener_url};
use crate::logging::LogHandle;
use crate::net::{Listener, Network, TokioNet};
use crate::notify::{Notifier, Watchdog};
use crate::store::{self, StoreEvent};
use crate::tls::{self, SharedTls};

/// Accepted sockets, bridge connects and store reports waiting for the driver.
const EVENT_QUEUE: usize = 4096;
/// Events handled per wake-up before the driver checks its timer again.
const EVENT_BATCH: usize = 256;
/// How often the process's memory and CPU use are sampled for the admin API's metrics.
const PROCESS_STATS_EVERY: Duration = Duration::from_secs(5);
/// Reads from one connection per turn before the other ready connections get theirs.
const READS_PER_TURN: usize = 4;
/// How long a stop asked through the admin API waits, so that its reply is sent.
const STOP_GRACE: Duration = Duration::from_millis(300);
/// How long shutdown waits for writers to flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

enum Event {
    Conn(ConnEvent),
    Store(StoreEvent),
    ConfigWritten {
        req_id: u64,
        result: Result<PathBuf, String>,
    },
    /// The ACL service answered.
    Authorized {
        conn: ConnId,
        ticket: auth::AclTicket,
        action: tidemq_core::acl::Action,
        topic: String,
        allow: bool,
    },
    /// A password verification finished on the blocking pool.
    Auth {
        conn: ConnId,
        ticket: auth::Ticket,
        outcome: AuthOutcome,
    },
}

impl From<ConnEvent> for Event {
    fn from(e: ConnEvent) -> Event {
        Event::Conn(e)
    }
}

/// Requests from outside the broker (signals, the command line, tests).
#[derive(Debug)]
pub enum Control {
    /// Apply this configuration (validated by the core; a bad one is refused and logged).
    Reconfigure(Box<Config>),
    /// Re-read the configuration files and apply them (SIGHUP).
    Reload,
}

/// Where the configuration came from, so reloads, restarts and the admin API can redo it.
pub struct ConfigOrigin {
    pub inputs: ConfigInputs,
    pub env: BTreeMap<String, String>,
    /// For `tidemq reload --conf FILE` requests left beside the pid file.
    pub pid_file: Option<PathBuf>,
    pub log: Option<LogHandle>,
}

/// A bound, not yet running broker.
pub struct Server {
    net: Arc<dyn Network>,
    listeners: Vec<(ListenerUrl, Box<dyn Listener>)>,
    http: Option<Box<dyn Listener>>,
    /// The scrape listener (`metrics.listen`).
    metrics: Option<Box<dyn Listener>>,
    tls: Option<SharedTls>,
    config: Config,
    seed: u64,
    control: Option<mpsc::UnboundedReceiver<Control>>,
    origin: Option<ConfigOrigin>,
    readiness: Arc<Readiness>,
    notifier: Notifier,
    /// Set by [`Server::with_limits`]; otherwise derived at start from the open-files limit
    /// (and `TIDEMQ_*` variables when started from the command line).
    limits: Option<RuntimeLimits>,
    gate: Arc<ConnGate>,
}

/// A broker running in the background (for tests and embedding).
pub struct ServerHandle {
    /// The first MQTT listener's address (TCP when enabled).
    pub local_addr: SocketAddr,
    /// Every MQTT listener's address.
    pub listener_addrs: Vec<(Transport, SocketAddr)>,
    pub http_addr: Option<SocketAddr>,
    pub control: mpsc::UnboundedSender<Control>,
    shutdown: Option<oneshot::Sender<()>>,
    join: JoinHandle<io::Result<()>>,
    gate: Arc<ConnGate>,
}

impl ServerHandle {
    /// Connections open, refused and cut by the runtime's limits.
    pub fn conn_stats(&self) -> ConnStats {
        self.gate.stats()
    }

    /// Stops the broker gracefully and waits for it.
    pub async fn shutdown(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.join.await.map_err(io::Error::other)?
    }
}

/// The MQTT listeners a configuration asks for, by transport.
fn wanted_listeners(config: &Config) -> BTreeMap<Transport, String> {
    let mut wanted = BTreeMap::new();
    if config.tcp_enable {
        wanted.insert(Transport::Tcp, config.url.clone());
    }
    if config.tls.enable {
        wanted.insert(Transport::Tls, config.tls.url.clone());
    }
    if config.websocket.enable {
        wanted.insert(Transport::Ws, config.websocket.url.clone());
        if config.tls.enable {
            wanted.insert(Transport::Wss, config.websocket.tls_url.clone());
        }
    }
    wanted
}

/// Binds one listener; the error names it.
async fn bind_listener(
    net: &dyn Network,
    transport: Transport,
    url: &str,
) -> io::Result<(ListenerUrl, Box<dyn Listener>)> {
    let setting = match transport {
        Transport::Tcp => "url",
        Transport::Tls => "tls.url",
        Transport::Ws => "websocket.url",
        Transport::Wss => "websocket.tls_url",
    };
    let parsed = parse_listener_url(url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{setting}: {e}")))?;
    if parsed.transport != transport {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{setting}: {url:?} is not a {} URL", transport.name()),
        ));
    }
    let listener = net.bind(parsed.addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {} ({} listener, {setting} = {url}): {e}",
                parsed.addr,
                transport.name()
            ),
        )
    })?;
    Ok((parsed, listener))
}

/// The scrape listener: `GET /metrics` without credentials, when `metrics.listen` is set.
async fn bind_metrics(net: &dyn Network, config: &Config) -> io::Result<Option<Box<dyn Listener>>> {
    let Some(addr) = &config.metrics_listen else {
        return Ok(None);
    };
    let parsed: SocketAddr = addr.parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("metrics.listen {addr}: {e}"),
        )
    })?;
    net.bind(parsed).await.map(Some).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (metrics.listen): {e}"),
        )
    })
}

async fn bind_http(net: &dyn Network, config: &Config) -> io::Result<Option<Box<dyn Listener>>> {
    let http = &config.http_server;
    if !http.enable {
        return Ok(None);
    }
    let addr = format!("{}:{}", http.ip_addr, http.port);
    let parsed: SocketAddr = addr.parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("http_server.ip_addr / port {addr}: {e}"),
        )
    })?;
    net.bind(parsed).await.map(Some).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {addr} (http_server admin API): {e}"),
        )
    })
}

fn http_settings(config: &Config) -> io::Result<Arc<HttpSettings>> {
    let http = &config.http_server;
    let jwt = match (&http.auth_type, &http.jwt_public_keyfile) {
        (tidemq_core::config::HttpAuthType::Jwt, Some(path)) => Some(
            JwtKey::load(std::path::Path::new(path))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        ),
        _ => None,
    };
    if http.auth_type == tidemq_core::config::HttpAuthType::NoAuth {
        warn!("http_server.auth_type = no_auth: the admin API accepts anyone");
    }
    if http.exposes_default_credentials() {
        warn!(
            ip_addr = http.ip_addr,
            "the admin API listens beyond this host with the default credentials admin/public: \
             set http_server.username and password"
        );
    }
    Ok(Arc::new(HttpSettings {
        max_body: usize::try_from(http.max_body).unwrap_or(usize::MAX),
        limit_conn: http.limit_conn as usize,
        jwt,
    }))
}

/// WebSocket frames may hold a whole packet and then some.
fn max_frame(config: &Config) -> usize {
    (config.max_packet_size as usize)
        .saturating_mul(2)
        .max(64 * 1024)
}

/// Most bytes queued to one connection: the core cuts a connection whose unwritten bytes pass
/// twice `max_write_buffer`; the runtime's own frames may add a little.
fn queue_cap(config: &Config) -> usize {
    (config.max_write_buffer as usize)
        .saturating_mul(2)
        .saturating_add(TRANSPORT_SLACK)
}

/// The connection limits for this configuration: `max_connections` leaves the reserve, the
/// admin API's connections and the bridges' sockets free.
fn derive_limits(config: &Config, env: Option<&BTreeMap<String, String>>) -> RuntimeLimits {
    let mut extra = config.bridges.len();
    if config.http_server.enable {
        extra += config.http_server.limit_conn as usize;
    }
    let fds = FdBudget::current();
    let limits = RuntimeLimits::from_fds(fds, extra);
    let limits = match env {
        Some(env) => {
            let (limits, warnings) = limits.with_env(env);
            for w in warnings {
                warn!("{w}");
            }
            limits
        }
        None => limits,
    };
    if fds.limit.is_some() && limits.max_connections < 256 {
        warn!(
            open_files_limit = fds.limit,
            max_connections = limits.max_connections,
            "the open-files limit leaves few connections; raise it (ulimit -n)"
        );
    }
    limits
}

impl Server {
    /// Binds every enabled MQTT listener and, when enabled, the admin API. The configuration
    /// must already be valid; a listener that cannot bind is an error naming it.
    pub async fn bind(config: Config, seed: u64) -> io::Result<Server> {
        Server::bind_on(Arc::new(TokioNet), config, seed).await
    }

    /// [`Server::bind`] on another network (a simulated one in tests).
    pub async fn bind_on(net: Arc<dyn Network>, config: Config, seed: u64) -> io::Result<Server> {
        let wanted = wanted_listeners(&config);
        if wanted.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no MQTT listener is enabled (tcp, tls and websocket are all off)",
            ));
        }
        let tls = if wanted.keys().any(|t| t.uses_tls()) {
            let built = tls::server_config(&config.tls)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Some(SharedTls::new(built))
        } else {
            None
        };
        let mut listeners = Vec::new();
        for (transport, url) in &wanted {
            listeners.push(bind_listener(net.as_ref(), *transport, url).await?);
        }
        let http = bind_http(net.as_ref(), &config).await?;
        let metrics = bind_metrics(net.as_ref(), &config).await?;
        // Fail at start, not at the first request, on an unreadable JWT key.
        http_settings(&config)?;
        Ok(Server {
            net,
            listeners,
            http,
            metrics,
            tls,
            readiness: Arc::new(Readiness::new(config.persistence.enable)),
            config,
            seed,
            control: None,
            origin: None,
            notifier: Notifier::default(),
            limits: None,
            gate: ConnGate::new(RuntimeLimits::default()),
        })
    }

    /// Reports start-up, reloads, shutdown and watchdog pings to the service manager.
    pub fn with_notifier(mut self, notifier: Notifier) -> Server {
        self.notifier = notifier;
        self
    }

    /// Runs with these limits instead of the derived ones.
    pub fn with_limits(mut self, limits: RuntimeLimits) -> Server {
        self.limits = Some(limits);
        self
    }

    /// The connection counters, for metrics.
    pub fn conn_gate(&self) -> Arc<ConnGate> {
        self.gate.clone()
    }

    /// Records where the configuration came from (enables reload, restart and req 12).
    pub fn with_origin(mut self, origin: ConfigOrigin) -> Server {
        self.origin = Some(origin);
        self
    }

    /// The first MQTT listener's address (the TCP one when enabled).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.listeners.first() {
            Some((_, l)) => l.local_addr(),
            None => Err(io::Error::other("no listener")),
        }
    }

    pub fn listener_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(url, l)| l.local_addr().ok().map(|a| (url.transport, a)))
            .collect()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The scrape listener's address, when `metrics.listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// A channel for [`Control`] requests to the running broker.
    pub fn control(&mut self) -> mpsc::UnboundedSender<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.control = Some(rx);
        tx
    }

    /// Runs in a background task until [`ServerHandle::shutdown`].
    pub fn spawn(mut self) -> io::Result<ServerHandle> {
        let local_addr = self.local_addr()?;
        let listener_addrs = self.listener_addrs();
        let http_addr = self.http_addr();
        let control = self.control();
        let gate = self.gate.clone();
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle {
            local_addr,
            listener_addrs,
            http_addr,
            control,
            shutdown: Some(tx),
            join,
            gate,
        })
    }

    /// Runs until `shutdown` completes (or req 10 stop), then disconnects every client.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
        let (admin_tx, mut admin) = mpsc::channel::<AdminCall>(64);
        let start = tokio::time::Instant::now();
        let now = move || Instant(start.elapsed().as_millis() as u64);
        let mut control = self.control.take();
        info!(seed = self.seed, "starting");
        let ready = Arc::new(ReadyQueue::default());
        let table = load_password_table(&self.config)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let auth = Checker::new(&self.config, table);
        let mut driver = Driver {
            net: self.net,
            broker: Broker::new(self.config.clone(), self.seed, now()),
            seed: self.seed,
            queue_cap: queue_cap(&self.config),
            max_frame: max_frame(&self.config),
            links: BTreeMap::new(),
            ready: ready.clone(),
            ready_ids: Vec::new(),
            scratch: BytesMut::new(),
            received: Vec::new(),
            dirty: Vec::new(),
            feedback: VecDeque::new(),
            deadlines: BTreeSet::new(),
            gate: self.gate,
            limits: RuntimeLimits::default(),
            shutting_down: false,
            events_tx,
            pending_admin: BTreeMap::new(),
            next_req: 1,
            origin: self.origin,
            next_conn: Arc::new(AtomicU64::new(1)),
            admin_tx,
            listeners: BTreeMap::new(),
            tls: self.tls,
            http: None,
            metrics_http: None,
            stop_requested: false,
            http_settings: None,
            restart_replies: Vec::new(),
            last_rejection: None,
            reload_requested: false,
            store: None,
            store_failed: None,
            store_stats: Arc::default(),
            readiness: self.readiness,
            notifier: self.notifier,
            auth,
            cluster: None,
        };
        // Before anything is restored: restored subscriptions are the cluster's interest.
        let (cluster_tx, mut cluster_rx) = mpsc::channel::<Input>(EVENT_QUEUE);
        if driver.broker.config().cluster.enable {
            let link =
                crate::cluster::ClusterLink::start(&driver.broker.config().cluster, cluster_tx)
                    .await
                    .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
            driver.cluster = Some(link);
        } else {
            drop(cluster_tx);
        }
        // Served from the start, so /readyz answers (503) during a long recovery; /api/v1
        // waits for the restore.
        if let Some(listener) = self.http {
            driver.start_http(listener)?;
        }
        if let Some(listener) = self.metrics {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = "metrics", %addr, "metrics without credentials on /metrics");
            }
            driver.metrics_http = Some(tokio::spawn(http::serve_metrics(
                listener,
                driver.admin_tx.clone(),
                driver.readiness.clone(),
            )));
        }
        let mut store_thread = None;
        if driver.broker.config().persistence.enable {
            store_thread = Some(driver.open_store(now()).await?);
        }
        driver.readiness.set_core_restored();
        // Counted once the store and the listeners hold their descriptors.
        let limits = match self.limits.take() {
            Some(limits) => limits,
            None => derive_limits(
                driver.broker.config(),
                driver.origin.as_ref().map(|o| &o.env),
            ),
        };
        info!(
            max_connections = limits.max_connections,
            max_connections_per_ip = limits.max_connections_per_ip,
            max_conn_rate = limits.max_conn_rate,
            write_stall_timeout_ms = limits.write_stall_timeout.as_millis() as u64,
            disconnect_linger_ms = limits.disconnect_linger.as_millis() as u64,
            "connection limits"
        );
        driver.gate.set_limits(limits.clone());
        driver.limits = limits;
        let texts = wanted_listeners(driver.broker.config());
        for (url, listener) in self.listeners {
            let text = texts.get(&url.transport).cloned().unwrap_or_default();
            driver.start_listener(url, &text, listener);
        }
        driver.readiness.set_listeners_bound();
        driver.input(now(), Input::WallClock { unix_ms: unix_ms() });
        driver.notifier.ready("running");
        let mut watchdog = Watchdog::new(&driver.notifier);
        let mut wall_tick = tokio::time::interval(Duration::from_secs(60));
        let mut process_tick = tokio::time::interval(PROCESS_STATS_EVERY);
        let mut process = crate::procstat::Sampler::default();
        let mut log_tick = tokio::time::interval(crate::limits::REFUSAL_LOG_INTERVAL);
        // One timer for the core's deadline and the connections' (stall, linger), reset
        // only when the earliest changes.
        let sleep = tokio::time::sleep_until(start);
        tokio::pin!(sleep);
        let mut armed = None;
        tokio::pin!(shutdown);
        loop {
            let deadline = driver.next_deadline(start);
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(at);
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                event = events.recv() => {
                    let Some(event) = event else { break };
                    driver.event(now(), event);
                    for _ in 1..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(event) => driver.event(now(), event),
                            Err(_) => break,
                        }
                    }
                }
                Some(input) = cluster_rx.recv() => {
                    let more = std::iter::from_fn(|| cluster_rx.try_recv().ok());
                    let burst = std::iter::once(input).chain(more.take(EVENT_BATCH - 1));
                    driver.input_burst(now(), burst);
                }
                Some(call) = admin.recv() => driver.admin(now(), call),
                Some(request) = recv_control(&mut control) => match request {
                    Control::Reconfigure(config) => {
                        if let Err(why) = driver.reconfigure(now(), *config).await {
                            warn!("configuration not wholly applied: {why}");
                        }
                    }
                    Control::Reload => driver.reload_requested = true,
                },
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    driver.timeout(now(), tokio::time::Instant::now());
                }
                _ = wall_tick.tick() => driver.input(now(), Input::WallClock { unix_ms: unix_ms() }),
                _ = process_tick.tick() => {
                    if let Some((rss_bytes, cpu_percent)) = process.sample() {
                        driver.input(now(), Input::ProcessStats { rss_bytes, cpu_percent });
                    }
                    driver.report_conn_counters(now());
                }
                // Only wakes the loop: the ping below is sent by a loop that still turns.
                () = watchdog.wait() => {}
                _ = log_tick.tick() => driver.gate.flush_log(tokio::time::Instant::now()),
                () = std::future::poll_fn(|cx| ready.poll_ready(cx)) => driver.service_ready(now()),
            }
            watchdog.ping_if_due(&driver.notifier);
            if driver.reload_requested {
                driver.reload_requested = false;
                driver.notifier.reloading();
                let outcome = driver.reload(now()).await;
                driver.notifier.reloaded(&outcome);
                for req_id in std::mem::take(&mut driver.restart_replies) {
                    let result = outcome.clone();
                    driver.input(now(), Input::ControlDone { req_id, result });
                }
            }
            if driver.stop_requested {
                // Let the admin API's reply reach the wire before everything stops.
                info!("stop requested through the admin API");
                let _ = tokio::time::timeout(STOP_GRACE, async {
                    loop {
                        tokio::select! {
                            event = events.recv() => match event {
                                Some(event) => driver.event(now(), event),
                                None => break,
                            },
                            () = std::future::poll_fn(|cx| ready.poll_ready(cx)) => {
                                driver.service_ready(now())
                            }
                        }
                    }
                })
                .await;
                break;
            }
            // The sockets' readiness is polled here, outside tokio's budget accounting for
            // this task: give the other tasks (accepts, handshakes) their turn.
            if !tokio::task::coop::has_budget_remaining() {
                tokio::task::yield_now().await;
            }
        }
        info!("shutting down");
        driver.readiness.set_draining();
        driver.notifier.stopping();
        driver.shutting_down = true;
        driver.input(now(), Input::Shutdown);
        let store_failed = driver.store_failed.take();
        // Closing the channel lets the store commit what it has and stop.
        driver.store = None;
        if let Some(thread) = store_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        driver.stop_listeners();
        let flushed = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while driver.flushing() {
                std::future::poll_fn(|cx| ready.poll_ready(cx)).await;
                driver.service_ready(now());
            }
        })
        .await;
        if flushed.is_err() {
            warn!("some connections did not flush within {SHUTDOWN_GRACE:?}");
        }
        match store_failed {
            Some(error) => Err(io::Error::other(error)),
            None => Ok(()),
        }
    }
}

async fn recv_control(control: &mut Option<mpsc::UnboundedReceiver<Control>>) -> Option<Control> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Driver {
    net: Arc<dyn Network>,
    /// The broker, and with it the configuration in force (the core owns it: it validates
    /// every change, and the driver applies what it accepted).
    broker: Broker,
    /// The broker's seed, for the broker rebuilt from the store.
    seed: u64,
    /// Every open socket, including closed connections still flushing or lingering.
    links: BTreeMap<ConnId, Box<Link>>,
    /// Where the sockets' wakers put the connections that became ready.
    ready: Arc<ReadyQueue>,
    ready_ids: Vec<ConnId>,
    /// The one read buffer: what a read hands on is split off it, and it gets the space back
    /// once the core has taken the bytes.
    scratch: BytesMut,
    received: Vec<Bytes>,
    /// Connections with new output since the last flush.
    dirty: Vec<ConnId>,
    /// What the sockets tell the core (`Written`, `Closed`), fed after the current input.
    feedback: VecDeque<Input>,
    /// Stall and linger deadlines, earliest first.
    deadlines: BTreeSet<(tokio::time::Instant, ConnId)>,
    gate: Arc<ConnGate>,
    /// The gate's limits, kept here for the per-message paths.
    limits: RuntimeLimits,
    /// Derived from the configuration in force, kept for the per-message paths.
    queue_cap: usize,
    max_frame: usize,
    /// No lingering once the broker stops.
    shutting_down: bool,
    events_tx: mpsc::Sender<Event>,
    pending_admin: BTreeMap<u64, oneshot::Sender<AdminAnswer>>,
    next_req: u64,
    origin: Option<ConfigOrigin>,
    next_conn: Arc<AtomicU64>,
    admin_tx: mpsc::Sender<AdminCall>,
    /// Running MQTT listeners: their URL and accept task.
    listeners: BTreeMap<Transport, (String, JoinHandle<()>)>,
    tls: Option<SharedTls>,
    http: Option<JoinHandle<()>>,
    metrics_http: Option<JoinHandle<()>>,
    /// The admin server's settings, changed in place when its address stays.
    http_settings: Option<tokio::sync::watch::Sender<Arc<HttpSettings>>>,
    stop_requested: bool,
    reload_requested: bool,
    /// Admin req 10 restarts waiting for the reload's outcome.
    restart_replies: Vec<u64>,
    /// Why the core refused the last configuration it was given.
    last_rejection: Option<String>,
    /// The store thread's queue, when persistence is on.
    store: Option<std::sync::mpsc::Sender<store::StoreCmd>>,
    /// Why the store stopped, if it did: the process then exits with this error.
    store_failed: Option<String>,
    /// The store thread's figures, for the metrics.
    store_stats: Arc<store::StoreStats>,
    /// For the health endpoints.
    readiness: Arc<Readiness>,
    notifier: Notifier,
    /// Answers the core's credential checks.
    auth: Checker,
    /// Cluster mode's NATS client.
    cluster: Option<crate::cluster::ClusterLink>,
}

/// The password table for `config`, its problems logged; an unreadable password file is an
/// error.
async fn load_password_table(config: &Config) -> Result<PasswordTable, String> {
    let config = config.clone();
    let (table, report) = tokio::task::spawn_blocking(move || PasswordTable::load(&config))
        .await
        .map_err(|e| format!("password table: {e}"))??;
    for problem in &report.problems {
        error!("{problem}");
    }
    if !report.plaintext_users.is_empty() {
        warn!(
            users = report.plaintext_users.join(","),
            "plaintext passwords in the configuration: store hashes (tidemq passwd)"
        );
    }
    Ok(table)
}

impl Driver {
    /// Serves a bound listener; `text` is its address as configured.
    fn start_listener(&mut self, url: ListenerUrl, text: &str, listener: Box<dyn Listener>) {
        if let Ok(addr) = listener.local_addr() {
            info!(listener = url.transport.name(), %addr, "listening");
        }
        let transport = url.transport;
        let text = text.to_owned();
        let config = self.broker.config();
        let ctx = AcceptContext {
            url,
            tls: self.tls.clone(),
            next_conn: self.next_conn.clone(),
            handshake_timeout: Duration::from_millis(config.connect_timeout_ms),
            gate: self.gate.clone(),
        };
        let task = tokio::spawn(conn::accept_loop(listener, ctx, self.events_tx.clone()));
        if let Some((_, old)) = self.listeners.insert(transport, (text, task)) {
            old.abort();
        }
    }

    fn start_http(&mut self, listener: Box<dyn Listener>) -> io::Result<()> {
        let settings = http_settings(self.broker.config())?;
        if let Ok(addr) = listener.local_addr() {
            info!(listener = "http", %addr, "admin API listening on /api/v1 and /api/v4, dashboard on /");
        }
        if let Some(old) = self.http.take() {
            old.abort();
        }
        let (tx, rx) = tokio::sync::watch::channel(settings);
        self.http_settings = Some(tx);
        self.http = Some(tokio::spawn(http::serve(
            listener,
            self.admin_tx.clone(),
            rx,
            self.readiness.clone(),
            self.gate.clone(),
        )));
        Ok(())
    }

    fn event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Conn(ConnEvent::Accepted {
                conn,
                peer,
                transport,
                identity,
                stream,
                websocket,
                permit,
            }) => {
                debug!(%conn, %peer, transport = transport.name(), "accepted");
                let websocket = websocket.map(|leftover| (leftover, self.max_frame));
                let link = Link::new(conn, stream, websocket, Some(permit), &self.ready);
                self.add_link(conn, link);
                self.input(
                    now,
                    Input::Accepted {
                        conn,
                        peer: peer.to_string(),
                    },
                );
                if let Some(identity) = identity {
                    self.input(now, Input::PeerCertificate { conn, identity });
                }
            }
            Event::Conn(ConnEvent::Connected { conn, stream }) => {
                let link = Link::new(conn, stream, None, None, &self.ready);
                self.add_link(conn, link);
                self.input(now, Input::BridgeConnected { conn });
            }
            Event::Conn(ConnEvent::ConnectFailed { conn, error }) => {
                self.input(now, Input::BridgeConnectFailed { conn, error });
            }
            Event::Store(StoreEvent::Done { upto }) => self.input(now, Input::PersistDone { upto }),
            Event::Store(StoreEvent::SnapshotWanted) => self.input(now, Input::SnapshotRequest),
            Event::Store(StoreEvent::Usage { bytes, refusing }) => {
                self.input(now, Input::StoreUsage { bytes, refusing });
            }
            Event::Store(StoreEvent::Failed { error }) => {
                self.readiness.set_store(StoreState::Failed);
                self.notifier.status(&format!("store failed: {error}"));
                self.input(
                    now,
                    Input::PersistFailed {
                        error: error.clone(),
                    },
                );
                if self.broker.config().persistence.fail_fast {
                    error!("{error}; stopping (persistence.fail_fast)");
                    self.store_failed = Some(error);
                    self.stop_requested = true;
                } else {
                    error!("{error}; running on, refusing what needs the store (0x97)");
                }
            }
            Event::Authorized {
                conn,
                ticket,
                action,
                topic,
                allow,
            } => {
                self.auth
                    .acl_finished(tokio::time::Instant::now(), ticket, allow);
                self.input(
                    now,
                    Input::AuthorizeResult {
                        conn,
                        action,
                        topic,
                        allow,
                    },
                );
            }
            Event::Auth {
                conn,
                ticket,
                outcome,
            } => {
                self.auth
                    .finished(tokio::time::Instant::now(), ticket, outcome);
                self.input(now, Input::AuthResult { conn, outcome });
            }
            Event::ConfigWritten { req_id, result } => {
                match &result {
                    Ok(path) => info!(file = %path.display(), "admin API changes saved"),
                    Err(e) => error!("admin API changes not saved: {e}"),
                }
                self.input(
                    now,
                    Input::AdminConfigWritten {
                        req_id,
                        result: result.map(|_| ()),
                    },
                );
            }
        }
    }

    /// The runtime's connection counters, to the core for its metrics.
    fn report_conn_counters(&mut self, now: Instant) {
        let s = self.gate.stats();
        let counters = tidemq_core::RuntimeConnCounters {
            accepted: s.accepted,
            refused_max_connections: s.refused_max_connections,
            refused_per_ip: s.refused_per_ip,
            refused_rate: s.refused_rate,
            accept_errors: s.accept_errors,
            write_stalls: s.write_stalls,
            queue_overflows: s.queue_overflows,
            cluster_dropped: self.cluster.as_ref().map_or(0, |c| c.dropped()),
        };
        self.input(now, Input::RuntimeCounters(counters));
        if self.store.is_some() {
            let figures = self.store_stats.figures();
            self.input(now, Input::StoreFigures(figures));
        }
    }

    fn admin(&mut self, now: Instant, call: AdminCall) {
        let req_id = self.next_req;
        self.next_req += 1;
        let input = match call {
            AdminCall::Authorize { credentials, reply } => {
                self.pending_admin.insert(req_id, reply);
                Input::AdminAuthorize {
                    req_id,
                    credentials,
                }
            }
            AdminCall::Request {
                credentials,
                body,
                reply,
            } => {
                self.pending_admin.insert(req_id, reply);
                Input::Admin {
                    req_id,
                    credentials,
                    body,
                }
            }
            AdminCall::Scrape { reply } => {
                self.pending_admin.insert(req_id, reply);
                self.report_conn_counters(now);
                Input::MetricsScrape { req_id }
            }
            AdminCall::RequestV4 {
                credentials,
                method,
                path,
                query,
                body,
                reply,
            } => {
                self.pending_admin.insert(req_id, reply);
                // Metrics read now agree with the runtime's counters now.
                self.report_conn_counters(now);
                Input::AdminV4 {
                    req_id,
                    credentials,
                    method,
                    path,
                    query,
                    body,
                }
            }
        };
        self.input(now, input);
    }

    /// Opens the store, restores the core from it, and starts the store thread. Runs before
    /// any listener accepts.
    async fn open_store(&mut self, now: Instant) -> io::Result<std::thread::JoinHandle<()>> {
        let config = self.broker.config().persistence.clone();
        let started = std::time::Instant::now();
        let dir = config.data_dir.clone();
        let opening = config.clone();
        let opened = self
            .notifier
            .while_recovering(tokio::task::spawn_blocking(move || {
                let fs = store::FsDir::open(&opening.data_dir)
                    .map_err(|e| format!("persistence.data_dir {}: {e}", opening.data_dir))?;
                store::Journal::open(Box::new(fs), &opening)
            }))
            .await
            .map_err(io::Error::other)?;
        let (journal, recovered, report) =
            opened.map_err(|e| io::Error::other(format!("store {dir}: {e}")))?;
        for s in &report.salvaged {
            error!(dir, "store damaged, salvaged: {s}");
        }
        info!(
            dir,
            sync = ?config.sync,
            snapshot = ?report.snapshot,
            segments = report.segments,
            records = report.records,
            torn_bytes = report.truncated_bytes,
            ms = started.elapsed().as_millis() as u64,
            "store recovered: {}",
            recovered.summary()
        );
        let events = self.events_tx.clone();
        let (tx, thread) =
            store::spawn_with_stats(journal, &config, self.store_stats.clone(), move |e| {
                let _ = events.blocking_send(Event::Store(e));
            })?;
        self.store = Some(tx);
        // Nothing reached the broker built at start-up: it is replaced by the recovered one.
        self.broker = Broker::from_recovered(
            self.broker.config().clone(),
            self.seed,
            now,
            recovered,
            unix_ms(),
        );
        self.readiness.set_store(StoreState::Recovered);
        self.drain(now);
        Ok(thread)
    }

    /// One input, then every output it caused, written out; then what the sockets answered
    /// (bytes written, connections failed), each in turn.
    fn input(&mut self, now: Instant, input: Input) {
        self.step(now, input);
        while let Some(next) = self.feedback.pop_front() {
            self.step(now, next);
        }
    }

    fn step(&mut self, now: Instant, input: Input) {
        self.broker.handle_input(now, input);
        self.drain(now);
        self.flush_dirty();
    }

    /// Inputs that come in bursts (messages from other nodes): each applied in order, the
    /// sockets written once for the whole burst.
    fn input_burst(&mut self, now: Instant, inputs: impl IntoIterator<Item = Input>) {
        for input in inputs {
            self.broker.handle_input(now, input);
            self.drain(now);
        }
        self.flush_dirty();
        while let Some(next) = self.feedback.pop_front() {
            self.step(now, next);
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.dedup();
        for id in dirty.drain(..) {
            self.flush(id);
        }
        self.dirty = dirty;
    }

    fn add_link(&mut self, conn: ConnId, link: Link) {
        // Bytes may be waiting already.
        link.schedule();
        self.links.insert(conn, Box::new(link));
    }

    /// Drops a socket (closing it) and its deadline.
    fn remove(&mut self, id: ConnId) {
        if let Some(link) = self.links.remove(&id)
            && let Some(at) = link.deadline
        {
            self.deadlines.remove(&(at, id));
        }
    }

    fn set_deadline(&mut self, id: ConnId, at: Option<tokio::time::Instant>) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        if link.deadline == at {
            return;
        }
        if let Some(old) = link.deadline {
            self.deadlines.remove(&(old, id));
        }
        if let Some(new) = at {
            self.deadlines.insert((new, id));
        }
        link.deadline = at;
    }

    /// The earliest of the core's timeout and the connections' deadlines.
    fn next_deadline(&self, start: tokio::time::Instant) -> Option<tokio::time::Instant> {
        let core = self
            .broker
            .poll_timeout()
            .map(|at| start + Duration::from_millis(at.0));
        let io = self.deadlines.first().map(|(at, _)| *at);
        match (core, io) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The timer fired: the core's timeout and any stall or linger bound that ran out.
    fn timeout(&mut self, now: Instant, clock: tokio::time::Instant) {
        if self.broker.poll_timeout().is_some_and(|at| at <= now) {
            self.input(now, Input::Timeout);
        }
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > clock {
                break;
            }
            self.deadlines.pop_first();
            let Some(link) = self.links.get_mut(&id) else {
                continue;
            };
            link.deadline = None;
            match link.phase {
                Phase::Open => {
                    debug!(conn = %id, "write stalled: the peer takes no bytes; cutting");
                    self.gate.note_cut(Cut::WriteStall, clock);
                    self.remove(id);
                    self.input(now, Input::Closed { conn: id });
                }
                Phase::Closing { .. } => {
                    debug!(conn = %id, "closed connection did not flush; dropping");
                    self.gate.note_cut(Cut::WriteStall, clock);
                    self.remove(id);
                }
                Phase::Lingering { .. } | Phase::Done => self.remove(id),
            }
        }
    }

    /// Services every connection whose socket became ready.
    fn service_ready(&mut self, now: Instant) {
        let mut ids = std::mem::take(&mut self.ready_ids);
        self.ready.take(&mut ids);
        for id in ids.drain(..) {
            self.service(now, id);
        }
        self.ready_ids = ids;
    }

    /// Writes what waits, then reads (a few chunks, then the others get their turn).
    fn service(&mut self, now: Instant, id: ConnId) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        link.unqueue();
        self.flush(id);
        let linger_bytes = self.limits.disconnect_linger_bytes;
        for _ in 0..READS_PER_TURN {
            let Some(link) = self.links.get_mut(&id) else {
                return;
            };
            match link.phase {
                Phase::Open => {}
                Phase::Closing { .. } => return,
                Phase::Lingering { .. } => {
                    if link.discard(&mut self.scratch, linger_bytes).is_ready() {
                        self.remove(id);
                    }
                    return;
                }
                Phase::Done => {
                    self.remove(id);
                    return;
                }
            }
            let mut received = std::mem::take(&mut self.received);
            let polled = link.read(&mut self.scratch, &mut received);
            for bytes in received.drain(..) {
                self.input(now, Input::Received { conn: id, bytes });
            }
            self.received = received;
            match polled {
                Poll::Pending => return,
                Poll::Ready(ReadResult::Open) => {}
                Poll::Ready(ReadResult::Closed) => {
                    self.peer_closed(now, id);
                    return;
                }
            }
        }
        // More may be waiting: after the other ready connections.
        if let Some(link) = self.links.get(&id) {
            link.schedule();
        }
    }

    /// The peer closed (or the socket failed): the core forgets the connection, and what is
    /// queued (a WebSocket close frame, say) still goes out.
    fn peer_closed(&mut self, now: Instant, id: ConnId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let known = link.phase == Phase::Open;
        link.close(false);
        if known {
            self.input(now, Input::Closed { conn: id });
        }
        self.flush(id);
    }

    /// Writes what is queued; then, for a closing connection, shuts the write side and
    /// lingers. A write blocked longer than the stall timeout is cut by [`Driver::timeout`].
    fn flush(&mut self, id: ConnId) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let result = link.write();
        let open = link.phase == Phase::Open;
        if result.credited > 0 && open {
            self.feedback.push_back(Input::Written {
                conn: id,
                bytes: result.credited,
            });
        }
        if result.failed {
            self.remove(id);
            if open {
                self.feedback.push_back(Input::Closed { conn: id });
            }
            return;
        }
        let stall = || tokio::time::Instant::now() + self.limits.write_stall_timeout;
        if result.blocked {
            if result.progress || link.deadline.is_none() {
                let at = stall();
                self.set_deadline(id, Some(at));
            }
            return;
        }
        match link.phase {
            Phase::Open => {
                if link.deadline.is_some() {
                    self.set_deadline(id, None);
                }
            }
            Phase::Closing { linger } => match link.shutdown() {
                Poll::Pending => {
                    if link.deadline.is_none() {
                        let at = stall();
                        self.set_deadline(id, Some(at));
                    }
                }
                Poll::Ready(_) => {
                    let linger_for = self.limits.disconnect_linger;
                    if linger && !self.shutting_down && !linger_for.is_zero() {
                        // Read and discard for a while: a client still writing gets to read
                        // the reason it was disconnected instead of a reset.
                        link.phase = Phase::Lingering { discarded: 0 };
                        link.schedule();
                        self.gate
                            .counters()
                            .lingered
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let at = tokio::time::Instant::now() + linger_for;
                        self.set_deadline(id, Some(at));
                    } else {
                        self.remove(id);
                    }
                }
            },
            Phase::Lingering { .. } => {}
            Phase::Done => self.remove(id),
        }
    }

    /// Connections still flushing after the broker stopped.
    fn flushing(&self) -> bool {
        self.links
            .values()
            .any(|l| l.phase != Phase::Open || l.has_output())
    }

    fn drain(&mut self, now: Instant) {
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    let Some(link) = self.links.get_mut(&conn) else {
                        continue;
                    };
                    link.queue(bytes);
                    if link.queued() <= self.queue_cap {
                        self.dirty.push(conn);
                        continue;
                    }
                    debug!(%conn, queued = link.queued(), "write queue over its budget; cutting");
                    let open = link.phase == Phase::Open;
                    self.gate
                        .note_cut(Cut::QueueOverflow, tokio::time::Instant::now());
                    self.remove(conn);
                    if open {
                        self.feedback.push_back(Input::Closed { conn });
                    }
                }
                Output::Close { conn } => {
                    if let Some(link) = self.links.get_mut(&conn) {
                        link.close(!self.shutting_down);
                        self.dirty.push(conn);
                    }
                }
                Output::AdminReply {
                    req_id,
                    status,
                    body,
                    content_type,
                    challenge,
                } => {
                    if let Some(reply) = self.pending_admin.remove(&req_id) {
                        let _ = reply.send(AdminAnswer::Reply {
                            status,
                            body,
                            content_type,
                            challenge,
                        });
                    }
                }
                Output::AdminAuthorized { req_id } => {
                    if let Some(reply) = self.pending_admin.remove(&req_id) {
                        let _ = reply.send(AdminAnswer::Proceed);
                    }
                }
                Output::WriteConfig { req_id, changes } => {
                    let source = self.origin.as_ref().and_then(|o| o.inputs.source.clone());
                    let events = self.events_tx.clone();
                    // File I/O off the driver; the answer comes back as an input.
                    tokio::spawn(async move {
                        let result = tokio::task::spawn_blocking(move || {
                            config_file::persist(source.as_ref(), &changes)
                        })
                        .await
                        .unwrap_or_else(|e| Err(format!("writer task failed: {e}")));
                        let _ = events.send(Event::ConfigWritten { req_id, result }).await;
                    });
                }
                Output::BridgeConnect {
                    conn,
                    bridge,
                    address,
                } => {
                    debug!(%conn, bridge, address, "bridge connecting");
                    let settings = self.broker.config().bridges.get(&bridge).cloned();
                    let wants_tls = settings.as_ref().is_some_and(|b| b.ssl.enable)
                        || tidemq_core::address::wants_tls(&address);
                    let tls = match settings
                        .filter(|_| wants_tls)
                        .map(|b| tls::client_config(&b.ssl))
                    {
                        Some(Ok(config)) => Some(config),
                        Some(Err(error)) => {
                            self.input(now, Input::BridgeConnectFailed { conn, error });
                            continue;
                        }
                        None => None,
                    };
                    tokio::spawn(conn::connect_outbound(
                        self.net.clone(),
                        conn,
                        address,
                        tls,
                        Duration::from_millis(self.broker.config().connect_timeout_ms),
                        self.events_tx.clone(),
                    ));
                }
                Output::Control {
                    action: ControlAction::Stop,
                    ..
                } => self.stop_requested = true,
                Output::Control {
                    req_id,
                    action: ControlAction::Restart,
                } => {
                    self.reload_requested = true;
                    self.restart_replies.push(req_id);
                }
                Output::Event(event) => {
                    if let BrokerEvent::ConfigRejected { error } = &event {
                        self.last_rejection = Some(error.to_string());
                    }
                    log_event(event)
                }
                Output::Persist { upto, records } => {
                    if let Some(store) = &self.store {
                        let _ = store.send(store::StoreCmd::Persist { upto, records });
                    }
                }
                Output::Snapshot { upto, records } => {
                    if let Some(store) = &self.store {
                        let _ = store.send(store::StoreCmd::Snapshot { upto, records });
                    }
                }
                Output::Authorize {
                    conn,
                    client_id,
                    username,
                    peer,
                    action,
                    topic,
                } => match self.auth.authorize(
                    tokio::time::Instant::now(),
                    (&client_id, username.as_deref(), &peer),
                    action,
                    &topic,
                ) {
                    auth::AclCheck::Ready(allow) => {
                        self.feedback.push_back(Input::AuthorizeResult {
                            conn,
                            action,
                            topic,
                            allow,
                        });
                    }
                    auth::AclCheck::Later { ticket, work } => {
                        let events = self.events_tx.clone();
                        tokio::spawn(async move {
                            let allow = work.await;
                            let _ = events
                                .send(Event::Authorized {
                                    conn,
                                    ticket,
                                    action,
                                    topic,
                                    allow,
                                })
                                .await;
                        });
                    }
                },
                Output::ClusterSubscribe {
                    sid,
                    subject,
                    queue,
                } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.subscribe(sid, subject, queue);
                    }
                }
                Output::ClusterUnsubscribe { sid } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.unsubscribe(sid);
                    }
                }
                Output::ClusterPublish {
                    subject,
                    payload,
                    droppable,
                } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.publish(subject, payload, droppable);
                    }
                }
                Output::ClusterDurable {
                    token,
                    subject,
                    msg_id,
                    payload,
                } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.durable(token, subject, msg_id, payload);
                    }
                }
                Output::ClusterLookup { token, key } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.lookup(token, key);
                    }
                }
                Output::ClusterClaim {
                    token,
                    key,
                    value,
                    keep_record,
                } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.claim(token, key, value, keep_record);
                    }
                }
                Output::ClusterRecord {
                    token,
                    key,
                    value,
                    revision,
                } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.record(token, key, value, revision);
                    }
                }
                Output::ClusterCatchUp { token, from, to } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.catch_up(token, from, to);
                    }
                }
                Output::ClusterRelease { key, revision } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.release(key, revision);
                    }
                }
                Output::ClusterScan { token } => {
                    if let Some(c) = self.cluster.as_mut() {
                        c.scan(token);
                    }
                }
                Output::ClusterRetain { key, value } => {
                    if let Some(c) = self.cluster.as_mut()
                        && !c.retain(key.clone(), value)
                    {
                        self.feedback.push_back(Input::ClusterRetainFailed { key });
                    }
                }
                Output::Authenticate {
                    conn,
                    username,
                    password,
                    client_id,
                    peer,
                    ..
                } => match self.auth.check(
                    tokio::time::Instant::now(),
                    &username,
                    &password.0,
                    &client_id,
                    &peer,
                ) {
                    Check::Ready(outcome) => {
                        self.feedback.push_back(Input::AuthResult { conn, outcome });
                    }
                    Check::Later { ticket, work } => {
                        let events = self.events_tx.clone();
                        tokio::spawn(async move {
                            let outcome = work.await;
                            let _ = events
                                .send(Event::Auth {
                                    conn,
                                    ticket,
                                    outcome,
                                })
                                .await;
                        });
                    }
                },
            }
        }
    }

    /// Re-reads the configuration files and applies them (SIGHUP, req 10 restart). The
    /// error says what did not take effect (all of it when the files were refused).
    async fn reload(&mut self, now: Instant) -> Result<(), String> {
        let Some(origin) = self.origin.as_mut() else {
            warn!("reload requested, but the broker was not started from a configuration file");
            return Err("not started from a configuration file".to_owned());
        };
        if let Some(path) = origin
            .pid_file
            .as_deref()
            .and_then(crate::pidfile::take_reload_request)
        {
            origin.inputs.source = Some(config_file::ConfigSource {
                path,
                format: tidemq_core::config_parse::Format::Hocon,
            });
        }
        match config_file::load(&origin.inputs, &origin.env) {
            Ok(Loaded { config, warnings }) => {
                for w in &warnings {
                    warn!("{w}");
                }
                match self.reconfigure(now, config).await {
                    Ok(()) => {
                        info!("configuration reloaded");
                        Ok(())
                    }
                    Err(why) => {
                        error!("configuration reloaded in part: {why}");
                        Err(why)
                    }
                }
            }
            Err(e) => {
                error!("reload failed, keeping the running configuration: {e}");
                Err(e.to_string())
            }
        }
    }

    /// Applies a configuration. The core decides first: a configuration it refuses changes
    /// nothing here. Then what it accepted is put in force: TLS certificates are reloaded,
    /// listeners whose address changed are rebound, the admin API and the log level follow.
    /// What cannot be put in force (a certificate that does not load, an address that cannot
    /// be bound) stays as it was, the core is told so that its configuration is the one in
    /// force, and the error lists it.
    async fn reconfigure(&mut self, now: Instant, config: Config) -> Result<(), String> {
        let previous = self.broker.config().clone();
        self.last_rejection = None;
        self.input(now, Input::ConfigChange(Box::new(config.clone())));
        if *self.broker.config() != config {
            let why = self
                .last_rejection
                .take()
                .unwrap_or_else(|| "refused by the broker".to_owned());
            return Err(format!("nothing applied: {why}"));
        }
        let mut problems: Vec<String> = Vec::new();
        // Passwords are re-read on every reload; remembered successes are forgotten.
        match load_password_table(&config).await {
            Ok(table) => self.auth.replace(&config, table),
            Err(e) => {
                error!("passwords not reloaded, keeping the previous ones: {e}");
                problems.push(e);
                self.auth.flush();
            }
        }
        let mut in_force = config;
        let wanted = wanted_listeners(&in_force);
        if wanted.keys().any(|t| t.uses_tls()) {
            // Certificates are re-read on every reload: new connections use the new ones.
            match tls::server_config(&in_force.tls) {
                Ok(built) => match &self.tls {
                    Some(shared) => shared.replace(built),
                    None => self.tls = Some(SharedTls::new(built)),
                },
                Err(e) => {
                    error!("TLS not reloaded, keeping the previous certificate and settings: {e}");
                    problems.push(format!("tls: {e}"));
                    in_force.tls = previous.tls.clone();
                }
            }
        }
        let wanted = wanted_listeners(&in_force);
        let stale: Vec<Transport> = self
            .listeners
            .keys()
            .filter(|t| !wanted.contains_key(t))
            .copied()
            .collect();
        for transport in stale {
            if let Some((_, task)) = self.listeners.remove(&transport) {
                task.abort();
                info!(listener = transport.name(), "listener stopped");
            }
        }
        for (transport, url) in wanted {
            if self
                .listeners
                .get(&transport)
                .is_some_and(|(u, _)| *u == url)
            {
                continue;
            }
            match bind_listener(self.net.as_ref(), transport, &url).await {
                Ok((parsed, listener)) => self.start_listener(parsed, &url, listener),
                Err(e) => {
                    error!("{e}; keeping the previous listener");
                    problems.push(format!("{} listener: {e}", transport.name()));
                    match transport {
                        Transport::Tcp => in_force.url = previous.url.clone(),
                        Transport::Tls => in_force.tls.url = previous.tls.url.clone(),
                        Transport::Ws => in_force.websocket.url = previous.websocket.url.clone(),
                        Transport::Wss => {
                            in_force.websocket.tls_url = previous.websocket.tls_url.clone()
                        }
                    }
                }
            }
        }
        if let Err(e) = self.reconfigure_http(&previous, &mut in_force).await {
            problems.push(format!("admin API: {e}"));
        }
        for key in previous.restart_required(&in_force) {
            if !matches!(key, "url" | "http_server" | "tls" | "websocket") {
                warn!(key, "changed; takes effect after the process restarts");
            }
        }
        if let Some(log) = self.origin.as_ref().and_then(|o| o.log.as_ref())
            && in_force.log.level != previous.log.level
        {
            log.set_level(&in_force.log.level);
        }
        if *self.broker.config() != in_force {
            self.input(now, Input::ConfigChange(Box::new(in_force)));
        }
        self.queue_cap = queue_cap(self.broker.config());
        self.max_frame = max_frame(self.broker.config());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The admin server follows the configuration: a new address is bound before the old
    /// one is let go (and kept if it cannot be); everything else (limits, the JWT key) is
    /// changed in place, so a reload on the same address never needs a rebind. Credentials
    /// are the core's: nothing to do here.
    async fn reconfigure_http(
        &mut self,
        previous: &Config,
        in_force: &mut Config,
    ) -> io::Result<()> {
        let (old, new) = (&previous.http_server, &in_force.http_server);
        let moved = old.enable != new.enable || old.port != new.port || old.ip_addr != new.ip_addr;
        if moved {
            let rebound = match bind_http(self.net.as_ref(), in_force).await {
                Ok(Some(listener)) => self.start_http(listener),
                Ok(None) => {
                    if let Some(old) = self.http.take() {
                        old.abort();
                        info!("admin API stopped");
                    }
                    self.http_settings = None;
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = rebound {
                error!("{e}; the admin API stays where it was");
                let (enable, ip_addr, port) = (old.enable, old.ip_addr.clone(), old.port);
                in_force.http_server.enable = enable;
                in_force.http_server.ip_addr = ip_addr;
                in_force.http_server.port = port;
                self.update_http_settings(previous, in_force)?;
                return Err(e);
            }
            return Ok(());
        }
        self.update_http_settings(previous, in_force)
    }

    fn update_http_settings(&mut self, previous: &Config, in_force: &mut Config) -> io::Result<()> {
        let Some(tx) = &self.http_settings else {
            return Ok(());
        };
        match http_settings(in_force) {
            Ok(settings) => {
                tx.send_replace(settings);
                Ok(())
            }
            Err(e) => {
                // A JWT key that does not load: the API keeps verifying with the old one.
                error!("{e}; the admin API keeps its previous authentication settings");
                in_force.http_server.auth_type = previous.http_server.auth_type;
                in_force.http_server.jwt_public_keyfile =
                    previous.http_server.jwt_public_keyfile.clone();
                Err(e)
            }
        }
    }

    /// Stops accepting (the core has closed every connection by now).
    fn stop_listeners(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.listeners) {
            task.abort();
        }
        if let Some(http) = self.http.take() {
            http.abort();
        }
        if let Some(metrics) = self.metrics_http.take() {
            metrics.abort();
        }
    }
}

fn log_event(event: BrokerEvent) {
    match event {
        BrokerEvent::ClientConnected {
            conn,
            client_id,
            protocol,
            session_present,
        } => info!(%conn, client_id, protocol, session_present, "client connected"),
        BrokerEvent::ConnectRefused {
            conn,
            client_id,
            reason_code,
        } => {
            info!(%conn, client_id, reason_code = format_args!("{reason_code:#04x}"), "connect refused")
        }
        BrokerEvent::ClientDisconnected {
            conn,
            client_id,
            reason_code,
            detail,
        } => {
            info!(%conn, client_id = client_id.as_deref().unwrap_or("-"), reason_code = format_args!("{reason_code:#04x}"), detail, "client disconnected")
        }
        BrokerEvent::SessionExpired { client_id } => info!(client_id, "session expired"),
        BrokerEvent::SessionShed { client_id } => {
            info!(
                client_id,
                "offline session ended early: memory over max_memory"
            )
        }
        BrokerEvent::MessagesDropped {
            client_id,
            count,
            why,
        } => debug!(client_id, count, why, "messages dropped"),
        BrokerEvent::BridgeUp { bridge } => info!(bridge, "bridge connected"),
        BrokerEvent::BridgeDown {
            bridge,
            detail,
            retry_in_ms,
        } => warn!(bridge, detail, retry_in_ms, "bridge down"),
        BrokerEvent::ConfigApplied => info!("configuration applied"),
        BrokerEvent::ConfigRejected { error } => error!(%error, "configuration rejected"),
        BrokerEvent::StoreFailed { error } => error!(error, "store failed"),
        BrokerEvent::StoreFull { full, used, cap } if full => warn!(
            used,
            cap, "store at persistence.max_disk: new durable work refused (0x97) until compacted"
        ),
        BrokerEvent::StoreFull { used, cap, .. } => {
            info!(
                used,
                cap, "store back under persistence.max_disk: durable work accepted"
            );
        }
    }
}
