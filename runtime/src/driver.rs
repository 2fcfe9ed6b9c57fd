//! The driver: one task owns the broker, feeds it inputs in arrival order and carries out its
//! outputs. Per-connection tasks only read and write bytes; the admin HTTP server only
//! carries requests.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tidemq_core::admin::ControlAction;
use tidemq_core::{Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::config_file::{self, ConfigInputs, Loaded};
use crate::conn::{self, AcceptContext, ConnEvent, ConnIo, WriterCmd};
use crate::health::{Readiness, StoreState};
use crate::http::{self, AdminAnswer, AdminCall, HttpSettings, JwtKey};
use crate::listener::{ListenerUrl, Transport, parse_listener_url};
use crate::logging::LogHandle;
use crate::net::{Listener, Network, TokioNet};
use crate::notify::{Notifier, Watchdog};
use crate::store::{self, StoreEvent};
use crate::tls::{self, SharedTls};

/// Inputs waiting for the driver; readers wait when it is full, which slows their peers.
const EVENT_QUEUE: usize = 4096;
/// Inputs handled per wake-up before the driver checks its timer again.
const EVENT_BATCH: usize = 256;
/// How often the process's memory and CPU use are sampled for the admin API's metrics.
const PROCESS_STATS_EVERY: Duration = Duration::from_secs(5);
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
    tls: Option<SharedTls>,
    config: Config,
    seed: u64,
    control: Option<mpsc::UnboundedReceiver<Control>>,
    origin: Option<ConfigOrigin>,
    readiness: Arc<Readiness>,
    notifier: Notifier,
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
}

impl ServerHandle {
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
        // Fail at start, not at the first request, on an unreadable JWT key.
        http_settings(&config)?;
        Ok(Server {
            net,
            listeners,
            http,
            tls,
            readiness: Arc::new(Readiness::new(config.persistence.enable)),
            config,
            seed,
            control: None,
            origin: None,
            notifier: Notifier::default(),
        })
    }

    /// Reports start-up, reloads, shutdown and watchdog pings to the service manager.
    pub fn with_notifier(mut self, notifier: Notifier) -> Server {
        self.notifier = notifier;
        self
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
        let mut driver = Driver {
            net: self.net,
            broker: Broker::new(self.config.clone(), self.seed, now()),
            seed: self.seed,
            conns: BTreeMap::new(),
            closing: Vec::new(),
            events_tx,
            pending_admin: BTreeMap::new(),
            next_req: 1,
            origin: self.origin,
            next_conn: Arc::new(AtomicU64::new(1)),
            admin_tx,
            listeners: BTreeMap::new(),
            tls: self.tls,
            http: None,
            stop_requested: false,
            http_settings: None,
            restart_replies: Vec::new(),
            last_rejection: None,
            reload_requested: false,
            store: None,
            store_failed: None,
            readiness: self.readiness,
            notifier: self.notifier,
        };
        // Served from the start, so /readyz answers (503) during a long recovery; /api/v1
        // waits for the restore.
        if let Some(listener) = self.http {
            driver.start_http(listener)?;
        }
        let mut store_thread = None;
        if driver.broker.config().persistence.enable {
            store_thread = Some(driver.open_store(now()).await?);
        }
        driver.readiness.set_core_restored();
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
        tokio::pin!(shutdown);
        loop {
            let deadline = driver
                .broker
                .poll_timeout()
                .map(|at| start + Duration::from_millis(at.0));
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
                Some(call) = admin.recv() => driver.admin(now(), call),
                Some(request) = recv_control(&mut control) => match request {
                    Control::Reconfigure(config) => {
                        if let Err(why) = driver.reconfigure(now(), *config).await {
                            warn!("configuration not wholly applied: {why}");
                        }
                    }
                    Control::Reload => driver.reload_requested = true,
                },
                () = sleep_until(deadline) => driver.input(now(), Input::Timeout),
                _ = wall_tick.tick() => driver.input(now(), Input::WallClock { unix_ms: unix_ms() }),
                _ = process_tick.tick() => {
                    if let Some((rss_bytes, cpu_percent)) = process.sample() {
                        driver.input(now(), Input::ProcessStats { rss_bytes, cpu_percent });
                    }
                }
                // Only wakes the loop: the ping below is sent by a loop that still turns.
                () = watchdog.wait() => {}
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
                    while let Some(event) = events.recv().await {
                        driver.event(now(), event);
                    }
                })
                .await;
                break;
            }
        }
        info!("shutting down");
        driver.readiness.set_draining();
        driver.notifier.stopping();
        driver.input(now(), Input::Shutdown);
        let store_failed = driver.store_failed.take();
        // Closing the channel lets the store commit what it has and stop.
        driver.store = None;
        if let Some(thread) = store_thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let writers = driver.finish();
        let flushed = tokio::time::timeout(SHUTDOWN_GRACE, async {
            for writer in writers {
                let _ = writer.await;
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
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
    conns: BTreeMap<ConnId, ConnIo>,
    /// Writers of closed connections still flushing.
    closing: Vec<JoinHandle<()>>,
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
    /// For the health endpoints.
    readiness: Arc<Readiness>,
    notifier: Notifier,
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
            max_frame: max_frame(config),
            handshake_timeout: Duration::from_millis(config.connect_timeout_ms),
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
        )));
        Ok(())
    }

    fn close_conn(&mut self, conn: ConnId) {
        if let Some(handle) = self.conns.remove(&conn) {
            self.closing.push(handle.close());
        }
    }

    fn event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Conn(ConnEvent::Accepted {
                conn,
                peer,
                transport,
                identity,
                io,
            }) => {
                debug!(%conn, %peer, transport = transport.name(), "accepted");
                self.conns.insert(conn, io);
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
            Event::Conn(ConnEvent::Connected { conn, io }) => {
                self.conns.insert(conn, io);
                self.input(now, Input::BridgeConnected { conn });
            }
            Event::Conn(ConnEvent::ConnectFailed { conn, error }) => {
                self.input(now, Input::BridgeConnectFailed { conn, error });
            }
            Event::Conn(ConnEvent::Received { conn, bytes }) => {
                self.input(now, Input::Received { conn, bytes })
            }
            Event::Conn(ConnEvent::Written { conn, bytes }) => {
                self.input(now, Input::Written { conn, bytes })
            }
            Event::Conn(ConnEvent::Closed { conn }) => {
                self.close_conn(conn);
                self.input(now, Input::Closed { conn });
            }
            Event::Store(StoreEvent::Done { upto }) => self.input(now, Input::PersistDone { upto }),
            Event::Store(StoreEvent::SnapshotWanted) => self.input(now, Input::SnapshotRequest),
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
        self.closing.retain(|task| !task.is_finished());
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
            AdminCall::RequestV4 {
                credentials,
                method,
                path,
                query,
                body,
                reply,
            } => {
                self.pending_admin.insert(req_id, reply);
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
        let (tx, thread) = store::spawn(journal, &config, move |e| {
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

    /// One input, then every output it caused.
    fn input(&mut self, now: Instant, input: Input) {
        self.broker.handle_input(now, input);
        self.drain(now);
    }

    fn drain(&mut self, now: Instant) {
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    if let Some(handle) = self.conns.get(&conn) {
                        handle.writer.send(WriterCmd::Data(bytes));
                    }
                }
                Output::Close { conn } => self.close_conn(conn),
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

    /// Stops the listeners and closes every connection; returns the writers to wait for.
    fn finish(mut self) -> Vec<JoinHandle<()>> {
        for (_, (_, task)) in std::mem::take(&mut self.listeners) {
            task.abort();
        }
        if let Some(http) = self.http.take() {
            http.abort();
        }
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.close_conn(conn);
        }
        std::mem::take(&mut self.closing)
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
    }
}
