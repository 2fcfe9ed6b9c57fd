//! Accepting connections on every transport and moving their bytes. The tasks here know
//! nothing of MQTT: TLS and WebSocket framing end here, the core sees a byte stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tidemq_core::ConnId;
use tidemq_core::ws::{self, Frame, FrameDecoder, Handshake};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::debug;

use crate::listener::{ListenerUrl, Transport};
use crate::net::{BoxStream, Listener, Network};
use crate::tls::SharedTls;

/// Most bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
/// Fewest: what an idle connection's reader holds while it waits. The read size doubles
/// while reads fill it and halves while they use under a quarter, so idle connections stay
/// small and busy ones read in big chunks.
const READ_CHUNK_MIN: usize = 256;
/// Writes are coalesced up to this size.
const WRITE_BATCH: usize = 256 * 1024;

/// What the connection tasks tell the driver.
pub(crate) enum ConnEvent {
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
        transport: Transport,
        /// The verified client certificate's common name (TLS).
        identity: Option<String>,
        io: ConnIo,
    },
    /// An outbound (bridge) connection is open.
    Connected {
        conn: ConnId,
        io: ConnIo,
    },
    ConnectFailed {
        conn: ConnId,
        error: String,
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

pub(crate) enum WriterCmd {
    /// MQTT bytes from the core.
    Data(Bytes),
    /// Transport bytes written as they are (WebSocket pongs and closes).
    Raw(Bytes),
    Close,
}

/// A connection's outgoing commands: pushed by the driver (and the WebSocket reader), taken
/// by the writer task. Lighter than an mpsc channel, which allocates a 32-slot block per
/// connection up front: idle connections are most of a broker's connections.
struct WriterQueue {
    state: std::sync::Mutex<QueueState>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct QueueState {
    cmds: std::collections::VecDeque<WriterCmd>,
    senders: usize,
}

/// The sending side of a [`WriterQueue`]; the writer sees the end when the last is dropped.
pub(crate) struct WriterTx(Arc<WriterQueue>);

/// The writer task's side.
struct WriterRx(Arc<WriterQueue>);

fn writer_queue() -> (WriterTx, WriterRx) {
    let queue = Arc::new(WriterQueue {
        state: std::sync::Mutex::new(QueueState {
            cmds: std::collections::VecDeque::new(),
            senders: 1,
        }),
        ready: tokio::sync::Notify::new(),
    });
    (WriterTx(queue.clone()), WriterRx(queue))
}

impl WriterTx {
    pub fn send(&self, cmd: WriterCmd) {
        if let Ok(mut state) = self.0.state.lock() {
            state.cmds.push_back(cmd);
        }
        self.0.ready.notify_one();
    }
}

impl Clone for WriterTx {
    fn clone(&self) -> WriterTx {
        if let Ok(mut state) = self.0.state.lock() {
            state.senders += 1;
        }
        WriterTx(self.0.clone())
    }
}

impl Drop for WriterTx {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.state.lock() {
            state.senders = state.senders.saturating_sub(1);
        }
        self.0.ready.notify_one();
    }
}

impl WriterRx {
    /// The next command, or `None` once every sender is gone and the queue is empty.
    async fn recv(&mut self) -> Option<WriterCmd> {
        loop {
            if let Some(cmd) = self.try_recv() {
                return Some(cmd);
            }
            if self.0.state.lock().map_or(true, |s| s.senders == 0) {
                return None;
            }
            // A notify between the check and here leaves a permit: no wake-up is lost.
            self.0.ready.notified().await;
        }
    }

    fn try_recv(&mut self) -> Option<WriterCmd> {
        let mut state = self.0.state.lock().ok()?;
        let cmd = state.cmds.pop_front();
        if state.cmds.is_empty() && state.cmds.capacity() > 16 {
            // A burst is over: give back what it grew.
            state.cmds = std::collections::VecDeque::new();
        }
        cmd
    }
}

/// A connection's two tasks, as the driver holds them.
pub(crate) struct ConnIo {
    pub writer: WriterTx,
    reader: AbortHandle,
    writer_task: JoinHandle<()>,
}

impl ConnIo {
    /// Starts the writer, and the reader behind a gate that [`register`] opens.
    fn launch<W, R>(
        write: impl FnOnce(WriterRx) -> W,
        read: impl FnOnce(oneshot::Receiver<()>, WriterTx) -> R,
    ) -> (ConnIo, oneshot::Sender<()>)
    where
        W: std::future::Future<Output = ()> + Send + 'static,
        R: std::future::Future<Output = ()> + Send + 'static,
    {
        let (writer, commands) = writer_queue();
        let writer_task = tokio::spawn(write(commands));
        let (open, gate) = oneshot::channel();
        let reader = tokio::spawn(read(gate, writer.clone())).abort_handle();
        (
            ConnIo {
                writer,
                reader,
                writer_task,
            },
            open,
        )
    }

    /// Stops reading and lets the writer flush what it has, then close.
    pub fn close(self) -> JoinHandle<()> {
        self.reader.abort();
        self.writer.send(WriterCmd::Close);
        self.writer_task
    }
}

/// Everything an accept loop needs.
pub(crate) struct AcceptContext {
    pub url: ListenerUrl,
    pub tls: Option<SharedTls>,
    pub next_conn: Arc<AtomicU64>,
    pub max_frame: usize,
    /// How long a TLS or WebSocket handshake may take (the connect timeout).
    pub handshake_timeout: Duration,
}

/// Accepts until aborted; each connection's handshake runs in its own task, bounded by the
/// handshake timeout, so a stalled peer holds nothing else up.
pub(crate) async fn accept_loop<E: From<ConnEvent> + Send + 'static>(
    listener: Box<dyn Listener>,
    ctx: AcceptContext,
    events: mpsc::Sender<E>,
) {
    let ctx = Arc::new(ctx);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and similar: log, back off briefly, keep serving.
                tracing::warn!(listener = ctx.url.transport.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let conn = ConnId(ctx.next_conn.fetch_add(1, Ordering::Relaxed));
        if ctx.url.transport == Transport::Tcp {
            let (rd, wr) = tokio::io::split(stream);
            if !start(conn, peer, Transport::Tcp, None, rd, wr, &events).await {
                return;
            }
            continue;
        }
        let ctx = ctx.clone();
        let events = events.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(
                ctx.handshake_timeout,
                handshake(conn, peer, stream, &ctx, &events),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(%peer, listener = ctx.url.transport.name(), error = %e, "handshake failed")
                }
                Err(_) => debug!(%peer, listener = ctx.url.transport.name(), "handshake timed out"),
            }
        });
    }
}

async fn handshake<E: From<ConnEvent> + Send + 'static>(
    conn: ConnId,
    peer: SocketAddr,
    stream: BoxStream,
    ctx: &AcceptContext,
    events: &mpsc::Sender<E>,
) -> Result<(), String> {
    let transport = ctx.url.transport;
    if transport.uses_tls() {
        let config = ctx
            .tls
            .as_ref()
            .and_then(SharedTls::current)
            .ok_or("no TLS configuration")?;
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(|e| e.to_string())?;
        let identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| crate::tls::subject_common_name(cert));
        if transport == Transport::Wss {
            let (tls, leftover) = websocket(tls, ctx).await?;
            start_ws(
                conn,
                peer,
                transport,
                identity,
                tls,
                leftover,
                ctx.max_frame,
                events,
            )
            .await;
        } else {
            let (rd, wr) = tokio::io::split(tls);
            start(conn, peer, transport, identity, rd, wr, events).await;
        }
    } else {
        let (stream, leftover) = websocket(stream, ctx).await?;
        start_ws(
            conn,
            peer,
            transport,
            None,
            stream,
            leftover,
            ctx.max_frame,
            events,
        )
        .await;
    }
    Ok(())
}

/// The WebSocket opening handshake, answered by the core's pure code. Returns the stream
/// and any bytes that arrived after the request head.
async fn websocket<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    ctx: &AcceptContext,
) -> Result<(S, BytesMut), String> {
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        match ws::handshake(&buf, &ctx.url.path) {
            Handshake::NeedMore => {
                if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("closed during the WebSocket handshake".to_owned());
                }
            }
            Handshake::Accept { response, consumed } => {
                stream
                    .write_all(&response)
                    .await
                    .map_err(|e| e.to_string())?;
                let leftover = buf.split_off(consumed);
                return Ok((stream, leftover));
            }
            Handshake::Reject { response, reason } => {
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
                return Err(reason);
            }
        }
    }
}

/// Registers the connection with the driver, then starts reading: the driver hears of the
/// connection before any of its bytes. False when the driver is gone.
async fn start<R, W, E>(
    conn: ConnId,
    peer: SocketAddr,
    transport: Transport,
    identity: Option<String>,
    rd: R,
    wr: W,
    events: &mpsc::Sender<E>,
) -> bool
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    E: From<ConnEvent> + Send + 'static,
{
    let (io, open) = ConnIo::launch(
        |commands| write_loop(conn, wr, commands, events.clone()),
        |gate, _| read_loop(conn, rd, events.clone(), gate),
    );
    let accepted = ConnEvent::Accepted {
        conn,
        peer,
        transport,
        identity,
        io,
    };
    register(accepted, open, events).await
}

#[allow(clippy::too_many_arguments)]
async fn start_ws<S, E>(
    conn: ConnId,
    peer: SocketAddr,
    transport: Transport,
    identity: Option<String>,
    stream: S,
    leftover: BytesMut,
    max_frame: usize,
    events: &mpsc::Sender<E>,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    E: From<ConnEvent> + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (io, open) = ConnIo::launch(
        |commands| ws_write_loop(conn, wr, commands, events.clone()),
        |gate, writer| ws_read_loop(conn, rd, leftover, max_frame, writer, events.clone(), gate),
    );
    let accepted = ConnEvent::Accepted {
        conn,
        peer,
        transport,
        identity,
        io,
    };
    register(accepted, open, events).await
}

/// Opens a bridge's connection to `address` (`mqtt-tcp://host:port`, `tcp://host:port`,
/// `host:port`, or with TLS `tls+mqtt-tcp://host:port` / `mqtts://host:port`) and reports
/// `Connected` or `ConnectFailed`.
pub(crate) async fn connect_outbound<E: From<ConnEvent> + Send + 'static>(
    net: std::sync::Arc<dyn Network>,
    conn: ConnId,
    address: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    timeout: Duration,
    events: mpsc::Sender<E>,
) {
    let result = tokio::time::timeout(timeout, open_outbound(net.as_ref(), &address, tls)).await;
    let stream = match result {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            let _ = events
                .send(E::from(ConnEvent::ConnectFailed { conn, error }))
                .await;
            return;
        }
        Err(_) => {
            let error = format!("{address}: timed out");
            let _ = events
                .send(E::from(ConnEvent::ConnectFailed { conn, error }))
                .await;
            return;
        }
    };
    let (rd, wr) = tokio::io::split(stream);
    let (io, open) = ConnIo::launch(
        |commands| write_loop(conn, wr, commands, events.clone()),
        |gate, _| read_loop(conn, rd, events.clone(), gate),
    );
    register(ConnEvent::Connected { conn, io }, open, &events).await;
}

async fn open_outbound(
    net: &dyn Network,
    address: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<BoxStream, String> {
    let parsed = tidemq_core::address::parse(address)?;
    if parsed.transport.uses_websocket() || !parsed.path.is_empty() {
        return Err(format!(
            "{address}: unsupported scheme (expected mqtt-tcp:// or tls+mqtt-tcp://)"
        ));
    }
    let secure = parsed.transport.uses_tls();
    let target = parsed.host_port;
    let stream = net
        .connect(target.to_owned())
        .await
        .map_err(|e| format!("{address}: {e}"))?;
    let tls = match tls {
        Some(tls) => tls,
        None if secure => return Err(format!("{address}: TLS address but no bridge ssl settings")),
        None => return Ok(stream),
    };
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    let name = rustls_pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("{address}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|e| format!("{address}: TLS: {e}"))?;
    Ok(Box::new(stream))
}

/// Queues `Accepted`, then lets the reader start: the driver hears of a connection before
/// any of its bytes. False when the driver is gone (the tasks then end with their channels).
async fn register<E: From<ConnEvent>>(
    accepted: ConnEvent,
    open: oneshot::Sender<()>,
    events: &mpsc::Sender<E>,
) -> bool {
    if events.send(E::from(accepted)).await.is_err() {
        return false;
    }
    let _ = open.send(());
    true
}

async fn read_loop<R, E>(
    conn: ConnId,
    mut rd: R,
    events: mpsc::Sender<E>,
    gate: oneshot::Receiver<()>,
) where
    R: AsyncRead + Unpin,
    E: From<ConnEvent>,
{
    if gate.await.is_err() {
        return;
    }
    let mut chunk = READ_CHUNK_MIN;
    loop {
        // A fresh buffer per read: the bytes handed on never pin a bigger allocation.
        let mut buf = BytesMut::with_capacity(chunk);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                report(&events, ConnEvent::Closed { conn }).await;
                return;
            }
            Ok(n) => {
                chunk = next_chunk(chunk, n);
                let bytes = buf.freeze();
                if !report(&events, ConnEvent::Received { conn, bytes }).await {
                    return;
                }
            }
        }
    }
}

/// Tells the driver; false when it is gone. The send future is boxed: it is large, and
/// would otherwise be part of every idle connection's task.
async fn report<E: From<ConnEvent>>(events: &mpsc::Sender<E>, event: ConnEvent) -> bool {
    Box::pin(events.send(E::from(event))).await.is_ok()
}

/// The next read size after a read of `n` bytes into `chunk`.
fn next_chunk(chunk: usize, n: usize) -> usize {
    if n >= chunk {
        (chunk * 2).min(READ_CHUNK)
    } else if n < chunk / 4 {
        (chunk / 2).max(READ_CHUNK_MIN)
    } else {
        chunk
    }
}

/// Takes one command and whatever else is already queued, up to [`WRITE_BATCH`] bytes.
/// Returns the MQTT bytes to write, transport bytes to write first, and whether a close was
/// asked for; `None` when the channel is closed.
async fn next_batch(commands: &mut WriterRx, batch: &mut BytesMut) -> Option<(Bytes, Bytes, bool)> {
    let mut raw = BytesMut::new();
    let mut single = None;
    let mut closing = false;
    let mut next = Some(commands.recv().await?);
    while let Some(cmd) = next.take() {
        match cmd {
            WriterCmd::Data(more) if single.is_none() && batch.is_empty() => single = Some(more),
            WriterCmd::Data(more) => {
                if let Some(f) = single.take() {
                    batch.extend_from_slice(&f);
                }
                batch.extend_from_slice(&more);
            }
            WriterCmd::Raw(bytes) => raw.extend_from_slice(&bytes),
            WriterCmd::Close => {
                closing = true;
                break;
            }
        }
        if batch.len() < WRITE_BATCH {
            next = commands.try_recv();
        }
    }
    let data = single.unwrap_or_else(|| batch.split().freeze());
    Some((data, raw.freeze(), closing))
}

async fn write_loop<W, E>(conn: ConnId, wr: W, commands: WriterRx, events: mpsc::Sender<E>)
where
    W: AsyncWrite + Unpin,
    E: From<ConnEvent>,
{
    framed_write_loop(conn, wr, commands, events, false).await
}

/// Wraps each batch of MQTT bytes in one WebSocket binary frame.
async fn ws_write_loop<W, E>(conn: ConnId, wr: W, commands: WriterRx, events: mpsc::Sender<E>)
where
    W: AsyncWrite + Unpin,
    E: From<ConnEvent>,
{
    framed_write_loop(conn, wr, commands, events, true).await
}

/// Writes batches of MQTT bytes (each in a WebSocket binary frame when `websocket`) and
/// reports them `Written`; transport bytes (pongs, closes) go out first, uncounted.
async fn framed_write_loop<W, E>(
    conn: ConnId,
    mut wr: W,
    mut commands: WriterRx,
    events: mpsc::Sender<E>,
    websocket: bool,
) where
    W: AsyncWrite + Unpin,
    E: From<ConnEvent>,
{
    let mut batch = BytesMut::new();
    let mut frame = BytesMut::new();
    while let Some((bytes, raw, closing)) = next_batch(&mut commands, &mut batch).await {
        if !raw.is_empty() && wr.write_all(&raw).await.is_err() {
            break;
        }
        if !bytes.is_empty() {
            let out = if websocket {
                ws::binary_frame(&bytes, &mut frame);
                frame.split().freeze()
            } else {
                bytes.clone()
            };
            if wr.write_all(&out).await.is_err() {
                report(&events, ConnEvent::Closed { conn }).await;
                return;
            }
            let written = ConnEvent::Written {
                conn,
                bytes: bytes.len(),
            };
            if !report(&events, written).await {
                break;
            }
        }
        if closing {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Unframes WebSocket frames into MQTT bytes; answers pings; a close, a text frame or a
/// framing error ends the connection with the matching close code.
async fn ws_read_loop<R, E>(
    conn: ConnId,
    mut rd: R,
    mut buf: BytesMut,
    max_frame: usize,
    writer: WriterTx,
    events: mpsc::Sender<E>,
    gate: oneshot::Receiver<()>,
) where
    R: AsyncRead + Unpin,
    E: From<ConnEvent>,
{
    if gate.await.is_err() {
        return;
    }
    let mut decoder = FrameDecoder::new(max_frame);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(Frame::Data(bytes))) => {
                if !bytes.is_empty()
                    && events
                        .send(E::from(ConnEvent::Received { conn, bytes }))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            Ok(Some(Frame::Ping(payload))) => {
                let mut pong = BytesMut::new();
                ws::pong_frame(&payload, &mut pong);
                writer.send(WriterCmd::Raw(pong.freeze()));
            }
            Ok(Some(Frame::Pong)) => {}
            Ok(Some(Frame::Close)) => {
                let mut close = BytesMut::new();
                ws::close_frame(1000, &mut close);
                writer.send(WriterCmd::Raw(close.freeze()));
                break;
            }
            Ok(None) => {
                buf.reserve(READ_CHUNK);
                match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            Err(e) => {
                debug!(%conn, error = %e, "WebSocket framing error");
                let mut close = BytesMut::new();
                ws::close_frame(e.close_code(), &mut close);
                writer.send(WriterCmd::Raw(close.freeze()));
                break;
            }
        }
    }
    let _ = events.send(E::from(ConnEvent::Closed { conn })).await;
}
