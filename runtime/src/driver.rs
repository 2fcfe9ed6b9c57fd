//! The driver: one task owns the broker, feeds it inputs in arrival order and carries out its
//! outputs. Per-connection tasks only read and write bytes.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tidemq_core::{Broker, BrokerEvent, Config, ConnId, Input, Instant, Output};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, error, info, warn};

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
}

enum WriterCmd {
    Data(Bytes),
    Close,
}

struct ConnHandle {
    writer: mpsc::UnboundedSender<WriterCmd>,
    reader: AbortHandle,
}

/// Requests from outside the broker (signals, the command line).
#[derive(Debug)]
pub enum Control {
    /// Apply a new configuration (validated by the core; a bad one is refused and logged).
    Reconfigure(Box<Config>),
}

/// A bound, not yet running broker.
pub struct Server {
    listener: TcpListener,
    config: Config,
    seed: u64,
    control: Option<mpsc::UnboundedReceiver<Control>>,
}

/// A broker running in the background (for tests and embedding).
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    pub control: mpsc::UnboundedSender<Control>,
    shutdown: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<io::Result<()>>,
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

impl Server {
    /// Binds the MQTT listener. The configuration must already be valid.
    pub async fn bind(config: Config, addr: SocketAddr, seed: u64) -> io::Result<Server> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {addr} (tcp): {e}"))
        })?;
        Ok(Server {
            listener,
            config,
            seed,
            control: None,
        })
    }

    /// A channel for [`Control`] requests to the running broker.
    pub fn control(&mut self) -> mpsc::UnboundedSender<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.control = Some(rx);
        tx
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs in a background task until [`ServerHandle::shutdown`].
    pub fn spawn(mut self) -> io::Result<ServerHandle> {
        let local_addr = self.local_addr()?;
        let control = self.control();
        let (tx, rx) = oneshot::channel();
        let join = tokio::spawn(self.run(async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle {
            local_addr,
            control,
            shutdown: Some(tx),
            join,
        })
    }

    /// Runs until `shutdown` completes, then disconnects every client and returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let addr = self.local_addr()?;
        info!(listener = "tcp", %addr, seed = self.seed, "listening");
        let (events_tx, mut events) = mpsc::channel::<Event>(EVENT_QUEUE);
        let mut writers = JoinSet::new();
        let next_conn = Arc::new(AtomicU64::new(1));
        let accept = tokio::spawn(accept_loop(self.listener, next_conn, events_tx.clone()));
        let start = tokio::time::Instant::now();
        let now = || Instant(start.elapsed().as_millis() as u64);
        let mut driver = Driver {
            broker: Broker::new(self.config, self.seed, now()),
            conns: BTreeMap::new(),
            events_tx,
        };
        driver.input(now(), Input::WallClock { unix_ms: unix_ms() });
        let mut wall_tick = tokio::time::interval(Duration::from_secs(60));
        let mut control = self.control.take();
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
                    driver.event(now(), event, &mut writers);
                    for _ in 1..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(event) => driver.event(now(), event, &mut writers),
                            Err(_) => break,
                        }
                    }
                }
                Some(request) = recv_control(&mut control) => match request {
                    Control::Reconfigure(config) => driver.input(now(), Input::ConfigChange(config)),
                },
                () = sleep_until(deadline) => driver.input(now(), Input::Timeout),
                _ = wall_tick.tick() => driver.input(now(), Input::WallClock { unix_ms: unix_ms() }),
            }
        }
        info!("shutting down");
        accept.abort();
        driver.input(now(), Input::Shutdown);
        drop(driver);
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
    conns: BTreeMap<ConnId, ConnHandle>,
    events_tx: mpsc::Sender<Event>,
}

impl Driver {
    fn event(&mut self, now: Instant, event: Event, writers: &mut JoinSet<()>) {
        match event {
            Event::Accepted { conn, peer, stream } => {
                // The core learns of the connection before any of its bytes can arrive.
                let (rd, wr) = stream.into_split();
                let (writer, writer_rx) = mpsc::unbounded_channel();
                let reader = tokio::spawn(read_loop(conn, rd, self.events_tx.clone())).abort_handle();
                writers.spawn(write_loop(conn, wr, writer_rx, self.events_tx.clone()));
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
        }
        // Reap finished writers so the set does not grow.
        while writers.try_join_next().is_some() {}
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
                Output::Event(event) => log_event(event),
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        for handle in std::mem::take(&mut self.conns).into_values() {
            handle.reader.abort();
            let _ = handle.writer.send(WriterCmd::Close);
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
        } => info!(%conn, client_id, reason_code = format_args!("{reason_code:#04x}"), "connect refused"),
        BrokerEvent::ClientDisconnected {
            conn,
            client_id,
            reason_code,
            detail,
        } => info!(%conn, client_id = client_id.as_deref().unwrap_or("-"), reason_code = format_args!("{reason_code:#04x}"), detail, "client disconnected"),
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

async fn accept_loop(listener: TcpListener, next_conn: Arc<AtomicU64>, events: mpsc::Sender<Event>) {
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

async fn read_loop(
    conn: ConnId,
    mut rd: OwnedReadHalf,
    events: mpsc::Sender<Event>,
) {
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
