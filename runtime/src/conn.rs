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

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;
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

/// A connection's two tasks, as the driver holds them.
pub(crate) struct ConnIo {
    pub writer: mpsc::UnboundedSender<WriterCmd>,
    reader: AbortHandle,
    writer_task: JoinHandle<()>,
}

impl ConnIo {
    /// Starts the writer, and the reader behind a gate that [`register`] opens.
    fn launch<W, R>(
        write: impl FnOnce(mpsc::UnboundedReceiver<WriterCmd>) -> W,
        read: impl FnOnce(oneshot::Receiver<()>, mpsc::UnboundedSender<WriterCmd>) -> R,
    ) -> (ConnIo, oneshot::Sender<()>)
    where
        W: std::future::Future<Output = ()> + Send + 'static,
        R: std::future::Future<Output = ()> + Send + 'static,
    {
        let (writer, commands) = mpsc::unbounded_channel();
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
        let _ = self.writer.send(WriterCmd::Close);
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
    let (secure, target) = [
        ("tls+mqtt-tcp://", true),
        ("tls+nmq-tcp://", true),
        ("mqtts://", true),
        ("mqtt-tcp://", false),
        ("nmq-tcp://", false),
        ("tcp://", false),
    ]
    .iter()
    .find_map(|(scheme, secure)| address.strip_prefix(scheme).map(|t| (*secure, t)))
    .unwrap_or((false, address));
    if target.contains("://") {
        return Err(format!(
            "{address}: unsupported scheme (expected mqtt-tcp:// or tls+mqtt-tcp://)"
        ));
    }
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
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        match rd.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = events.send(E::from(ConnEvent::Closed { conn })).await;
                return;
            }
            Ok(_) => {
                let bytes = buf.split().freeze();
                if events
                    .send(E::from(ConnEvent::Received { conn, bytes }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Takes one command and whatever else is already queued, up to [`WRITE_BATCH`] bytes.
/// Returns the MQTT bytes to write, transport bytes to write first, and whether a close was
/// asked for; `None` when the channel is closed.
async fn next_batch(
    commands: &mut mpsc::UnboundedReceiver<WriterCmd>,
    batch: &mut BytesMut,
) -> Option<(Bytes, Bytes, bool)> {
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
            next = commands.try_recv().ok();
        }
    }
    let data = single.unwrap_or_else(|| batch.split().freeze());
    Some((data, raw.freeze(), closing))
}

async fn write_loop<W, E>(
    conn: ConnId,
    wr: W,
    commands: mpsc::UnboundedReceiver<WriterCmd>,
    events: mpsc::Sender<E>,
) where
    W: AsyncWrite + Unpin,
    E: From<ConnEvent>,
{
    framed_write_loop(conn, wr, commands, events, false).await
}

/// Wraps each batch of MQTT bytes in one WebSocket binary frame.
async fn ws_write_loop<W, E>(
    conn: ConnId,
    wr: W,
    commands: mpsc::UnboundedReceiver<WriterCmd>,
    events: mpsc::Sender<E>,
) where
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
    mut commands: mpsc::UnboundedReceiver<WriterCmd>,
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
                let _ = events.send(E::from(ConnEvent::Closed { conn })).await;
                return;
            }
            let written = ConnEvent::Written {
                conn,
                bytes: bytes.len(),
            };
            if events.send(E::from(written)).await.is_err() {
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
    writer: mpsc::UnboundedSender<WriterCmd>,
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
                let _ = writer.send(WriterCmd::Raw(pong.freeze()));
            }
            Ok(Some(Frame::Pong)) => {}
            Ok(Some(Frame::Close)) => {
                let mut close = BytesMut::new();
                ws::close_frame(1000, &mut close);
                let _ = writer.send(WriterCmd::Raw(close.freeze()));
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
                let _ = writer.send(WriterCmd::Raw(close.freeze()));
                break;
            }
        }
    }
    let _ = events.send(E::from(ConnEvent::Closed { conn })).await;
}
