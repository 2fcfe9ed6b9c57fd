//! The driver: one task owns the broker, feeds it inputs in arrival order and carries out its
//! outputs. Per-connection tasks only read and write bytes; the admin HTTP server only
//! carries requests.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tidemq_core::admin::ControlAction;
use tidemq_core::{Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::config_file::{self, ConfigInputs, Loaded};
use crate::http::{self, AdminAnswer, AdminCall, HttpSettings, JwtKey};
use crate::listener::parse_listener_url;
use crate::logging::LogHandle;

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Inputs waiting for the driver; readers wait when it is full, which slows their peers.
const EVENT_QUEUE: usize = 4096;
/// Inputs handled per wake-up before the driver checks its timer again.
const EVENT_BATCH: usize = 256;
/// How long shutdown waits for writers to flush.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

enum Event {
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
        stream: TcpStream,
    },
    Received {
        conn: ConnId,
        bytes: Bytes,
    },
    Written {
        conn: ConnId,
        bytes: usize,
    },
    Closed {
        conn: ConnId,
    },
    ConfigWritten {
        req_id: u64,
        result: Result<PathBuf, String>,
    },
}

enum WriterCmd {
    Data(Bytes),
    Close,
}

struct ConnHandle {
    writer: mpsc::UnboundedSender<WriterCmd>,
    reader: AbortHandle,
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
    listener: TcpListener,
    http: Option<TcpListener>,
    config: Config,
    seed: u64,
    control: Option<mpsc::UnboundedReceiver<Control>>,
    origin: Option<ConfigOrigin>,
}

/// A broker running in the background (for tests and embedding).
pub struct ServerHandle {
    pub local_addr: SocketAddr,
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

async fn bind_mqtt(config: &Config) -> io::Result<TcpListener> {
    let url = parse_listener_url(&config.url)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("url: {e}")))?;
    TcpListener::bind(url.addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {} (url {}): {e}", url.addr, config.url),
        )
    })
}

async fn bind_http(config: &Config) -> io::Result<Option<TcpListener>> {
    let http = &config.http_server;
    if !http.enable {
        return Ok(None);
    }
    let addr = format!("{}:{}", http.ip_addr, http.port);
    TcpListener::bind(&addr).await.map(Some).map_err(|e| {
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
    Ok(Arc::new(HttpSettings {
        max_body: usize::try_from(http.max_body).unwrap_or(usize::MAX),
        limit_conn: http.limit_conn as usize,
        jwt,
    }))
}

impl Server {
    /// Binds the MQTT listener (`config.url`) and, when enabled, the admin API. The
    /// configuration must already be valid.
    pub async fn bind(config: Config, seed: u64) -> io::Result<Server> {
        let listener = bind_mqtt(&config).await?;
        let http = bind_http(&config).await?;
        // Fail at start, not at the first request, on an unreadable JWT key.
        http_settings(&config)?;
        Ok(Server {
            listener,
            http,
            config,
            seed,
            control: None,
            origin: None,
        })
    }

    /// Records where the configuration came from (enables reload, restart and req 12).
    pub fn with_origin(mut self, origin: ConfigOrigin) -> Server {
        self.origin = Some(origin);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
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
        let http_addr = self.http_addr();
        let control = self.control();
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle {
            local_addr,
            http_addr,
            control,
            shutdown: Some(tx),
            join,
        })
    }

    /// Runs until `shutdown` completes (or req 10 stop), then disconnects every client.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let addr = self.local_addr()?;
        info!(listener = "tcp", %addr, seed = self.seed, "listening");
        let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
        let (admin_tx, mut admin) = mpsc::channel::<AdminCall>(64);
        let next_conn = Arc::new(AtomicU64::new(1));
        let start = tokio::time::Instant::now();
        let now = move || Instant(start.elapsed().as_millis() as u64);
        let mut control = self.control.take();
        let mut driver = Driver {
            broker: Broker::new(self.config.clone(), self.seed, now()),
            config: self.config,
            conns: BTreeMap::new(),
            events_tx: events_tx.clone(),
            writers: JoinSet::new(),
            pending_admin: BTreeMap::new(),
            next_req: 1,
            origin: self.origin,
            next_conn,
            admin_tx,
            accept: None,
            http: None,
            stop_requested: false,
            reload_requested: false,
        };
        driver.start_accepting(self.listener);
        if let Some(listener) = self.http {
            driver.start_http(listener)?;
        }
        driver.input(now(), Input::WallClock { unix_ms: unix_ms() });
        let mut wall_tick = tokio::time::interval(Duration::from_secs(60));
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
                    Control::Reconfigure(config) => driver.reconfigure(now(), *config).await,
                    Control::Reload => driver.reload_requested = true,
                },
                () = sleep_until(deadline) => driver.input(now(), Input::Timeout),
                _ = wall_tick.tick() => driver.input(now(), Input::WallClock { unix_ms: unix_ms() }),
            }
            if driver.reload_requested {
                driver.reload_requested = false;
                driver.reload(now()).await;
            }
            if driver.stop_requested {
                info!("stop requested through the admin API");
                break;
            }
        }
        info!("shutting down");
        driver.input(now(), Input::Shutdown);
        let mut writers = driver.finish();
        let flushed = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while writers.join_next().await.is_some() {}
        })
        .await;
        if flushed.is_err() {
            warn!("some connections did not flush within {SHUTDOWN_GRACE:?}");
        }
        Ok(())
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
    broker: Broker,
    /// The configuration the listeners were set up with.
    config: Config,
    conns: BTreeMap<ConnId, ConnHandle>,
    events_tx: mpsc::Sender<Event>,
    writers: JoinSet<()>,
    pending_admin: BTreeMap<u64, oneshot::Sender<AdminAnswer>>,
    next_req: u64,
    origin: Option<ConfigOrigin>,
    next_conn: Arc<AtomicU64>,
    admin_tx: mpsc::Sender<AdminCall>,
    accept: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    stop_requested: bool,
    reload_requested: bool,
}

impl Driver {
    fn start_accepting(&mut self, listener: TcpListener) {
        if let Some(old) = self.accept.take() {
            old.abort();
        }
        self.accept = Some(tokio::spawn(accept_loop(
            listener,
            self.next_conn.clone(),
            self.events_tx.clone(),
        )));
    }

    fn start_http(&mut self, listener: TcpListener) -> io::Result<()> {
        let settings = http_settings(&self.config)?;
        if let Ok(addr) = listener.local_addr() {
            info!(listener = "http", %addr, "admin API listening on /api/v1");
        }
        if let Some(old) = self.http.take() {
            old.abort();
        }
        self.http = Some(tokio::spawn(http::serve(
            listener,
            self.admin_tx.clone(),
            settings,
        )));
        Ok(())
    }

    fn event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Accepted { conn, peer, stream } => {
                // The core learns of the connection before any of its bytes can arrive.
                let (rd, wr) = stream.into_split();
                let (writer, writer_rx) = mpsc::unbounded_channel();
                let reader =
                    tokio::spawn(read_loop(conn, rd, self.events_tx.clone())).abort_handle();
                self.writers
                    .spawn(write_loop(conn, wr, writer_rx, self.events_tx.clone()));
                self.conns.insert(conn, ConnHandle { writer, reader });
                self.input(
                    now,
                    Input::Accepted {
                        conn,
                        peer: peer.to_string(),
                    },
                );
            }
            Event::Received { conn, bytes } => self.input(now, Input::Received { conn, bytes }),
            Event::Written { conn, bytes } => self.input(now, Input::Written { conn, bytes }),
            Event::Closed { conn } => {
                if let Some(handle) = self.conns.remove(&conn) {
                    handle.reader.abort();
                    let _ = handle.writer.send(WriterCmd::Close);
                }
                self.input(now, Input::Closed { conn });
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
        // Reap finished writers so the set does not grow.
        while self.writers.try_join_next().is_some() {}
    }

    fn admin(&mut self, now: Instant, call: AdminCall) {
        let req_id = self.next_req;
        self.next_req += 1;
        self.pending_admin.insert(req_id, call.reply);
        self.input(
            now,
            Input::Admin {
                req_id,
                credentials: call.credentials,
                body: call.body,
            },
        );
    }

    /// One input, then every output it caused.
    fn input(&mut self, now: Instant, input: Input) {
        self.broker.handle_input(now, input);
        while let Some(output) = self.broker.poll_output() {
            match output {
                Output::Transmit { conn, bytes } => {
                    if let Some(handle) = self.conns.get(&conn) {
                        let _ = handle.writer.send(WriterCmd::Data(bytes));
                    }
                }
                Output::Close { conn } => {
                    if let Some(handle) = self.conns.remove(&conn) {
                        handle.reader.abort();
                        let _ = handle.writer.send(WriterCmd::Close);
                    }
                }
                Output::AdminReply {
                    req_id,
                    status,
                    body,
                    challenge,
                } => {
                    if let Some(reply) = self.pending_admin.remove(&req_id) {
                        let _ = reply.send(AdminAnswer {
                            status,
                            body,
                            challenge,
                        });
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
                Output::Control(ControlAction::Stop) => self.stop_requested = true,
                Output::Control(ControlAction::Restart) => self.reload_requested = true,
                Output::Event(event) => log_event(event),
            }
        }
    }

    /// Re-reads the configuration files and applies them (SIGHUP, req 10 restart).
    async fn reload(&mut self, now: Instant) {
        let Some(origin) = self.origin.as_mut() else {
            warn!("reload requested, but the broker was not started from a configuration file");
            return;
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
                self.reconfigure(now, config).await;
                info!("configuration reloaded");
            }
            Err(e) => error!("reload failed, keeping the running configuration: {e}"),
        }
    }

    /// Applies a configuration: rebinds listeners whose address changed (keeping the old
    /// one if the new address cannot be bound), then hands it to the core.
    async fn reconfigure(&mut self, now: Instant, mut config: Config) {
        if config.url != self.config.url {
            match bind_mqtt(&config).await {
                Ok(listener) => {
                    if let Ok(addr) = listener.local_addr() {
                        info!(listener = "tcp", %addr, "listening");
                    }
                    self.start_accepting(listener);
                }
                Err(e) => {
                    error!("{e}; keeping {}", self.config.url);
                    config.url = self.config.url.clone();
                }
            }
        }
        let old_http = &self.config.http_server;
        let new_http = &config.http_server;
        if old_http.enable != new_http.enable
            || old_http.port != new_http.port
            || old_http.ip_addr != new_http.ip_addr
            || old_http.auth_type != new_http.auth_type
            || old_http.jwt_public_keyfile != new_http.jwt_public_keyfile
            || old_http.max_body != new_http.max_body
            || old_http.limit_conn != new_http.limit_conn
        {
            let previous = std::mem::replace(&mut self.config, config.clone());
            let rebound = match bind_http(&config).await {
                Ok(Some(listener)) => self.start_http(listener),
                Ok(None) => {
                    if let Some(old) = self.http.take() {
                        old.abort();
                        info!("admin API stopped");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = rebound {
                error!("{e}; keeping the admin API as it was");
                config.http_server = previous.http_server;
            }
        }
        for key in self.config.restart_required(&config) {
            if !matches!(key, "url" | "http_server") {
                warn!(key, "changed; takes effect after the process restarts");
            }
        }
        if let Some(log) = self.origin.as_ref().and_then(|o| o.log.as_ref())
            && config.log.level != self.config.log.level
        {
            log.set_level(&config.log.level);
        }
        self.config = config.clone();
        self.input(now, Input::ConfigChange(Box::new(config)));
    }

    /// Stops the listeners and closes every connection; returns the writers to wait for.
    fn finish(mut self) -> JoinSet<()> {
        for task in [self.accept.take(), self.http.take()].into_iter().flatten() {
            task.abort();
        }
        for handle in std::mem::take(&mut self.conns).into_values() {
            handle.reader.abort();
            let _ = handle.writer.send(WriterCmd::Close);
        }
        std::mem::take(&mut self.writers)
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
        BrokerEvent::ConfigApplied => info!("configuration applied"),
        BrokerEvent::ConfigRejected { error } => error!(%error, "configuration rejected"),
    }
}

async fn accept_loop(
    listener: TcpListener,
    next_conn: Arc<AtomicU64>,
    events: mpsc::Sender<Event>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and similar: log, back off briefly, keep serving.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Without NODELAY a QoS 0 subscriber stalls on delayed ACKs.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "set_nodelay failed");
        }
        let conn = ConnId(next_conn.fetch_add(1, Ordering::Relaxed));
        if events
            .send(Event::Accepted { conn, peer, stream })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn read_loop(conn: ConnId, mut rd: OwnedReadHalf, events: mpsc::Sender<Event>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = events.send(Event::Closed { conn }).await;
                return;
            }
            Ok(_) => {
                let bytes = buf.split().freeze();
                if events.send(Event::Received { conn, bytes }).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn write_loop(
    conn: ConnId,
    mut wr: OwnedWriteHalf,
    mut commands: mpsc::UnboundedReceiver<WriterCmd>,
    events: mpsc::Sender<Event>,
) {
    let mut batch = BytesMut::new();
    let mut closing = false;
    while !closing {
        let Some(cmd) = commands.recv().await else {
            break;
        };
        let mut first = None;
        match cmd {
            WriterCmd::Data(bytes) => first = Some(bytes),
            WriterCmd::Close => closing = true,
        }
        // Coalesce whatever else is already queued into one write.
        while !closing {
            match commands.try_recv() {
                Ok(WriterCmd::Data(more)) => {
                    if let Some(f) = first.take() {
                        batch.extend_from_slice(&f);
                    }
                    batch.extend_from_slice(&more);
                    if batch.len() >= 256 * 1024 {
                        break;
                    }
                }
                Ok(WriterCmd::Close) => closing = true,
                Err(_) => break,
            }
        }
        let result = match first.take() {
            Some(single) if batch.is_empty() => wr.write_all(&single).await.map(|()| single.len()),
            _ => {
                let n = batch.len();
                let r = wr.write_all(&batch).await.map(|()| n);
                batch.clear();
                r
            }
        };
        match result {
            Ok(0) => {}
            Ok(n) => {
                if events
                    .send(Event::Written { conn, bytes: n })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(_) => {
                let _ = events.send(Event::Closed { conn }).await;
                return;
            }
        }
    }
    let _ = wr.shutdown().await;
}
