//! Accepting connections on every transport, under the connection limits, and opening bridge
//! connections. TLS and WebSocket handshakes run here, each in a task of its own; the open
//! socket then goes to the driver, which reads and writes it ([`crate::link`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tidemq_core::ConnId;
use tidemq_core::ws::{self, Handshake};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::limits::{ConnGate, ConnPermit};
use crate::listener::{ListenerUrl, Transport};
use crate::net::{BoxStream, Listener, Network};
use crate::tls::SharedTls;

/// What the accept loops, handshakes and bridge connects tell the driver. Each socket is
/// handed over once; from then on the driver reads and writes it itself ([`crate::link`]).
pub(crate) enum ConnEvent {
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
        transport: Transport,
        /// The verified client certificate's common name (TLS).
        identity: Option<String>,
        stream: BoxStream,
        /// WebSocket: the bytes that came after the request head.
        websocket: Option<BytesMut>,
        permit: ConnPermit,
    },
    /// An outbound (bridge) connection is open.
    Connected {
        conn: ConnId,
        stream: BoxStream,
    },
    ConnectFailed {
        conn: ConnId,
        error: String,
    },
}

/// Everything an accept loop needs.
pub(crate) struct AcceptContext {
    pub url: ListenerUrl,
    pub tls: Option<SharedTls>,
    pub next_conn: Arc<AtomicU64>,
    /// How long a TLS or WebSocket handshake may take (the connect timeout).
    pub handshake_timeout: Duration,
    /// The connection limits, shared by every listener.
    pub gate: Arc<ConnGate>,
}

/// After a failed `accept` (out of descriptors, say): wait this long before the next, so a
/// full descriptor table does not spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts until aborted. A connection over a limit is closed at once (counted, logged once
/// per interval); a TLS or WebSocket handshake runs in its own task, bounded by the handshake
/// timeout, holding the connection's place under the limits.
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
                ctx.gate.note_accept_error(&e, tokio::time::Instant::now());
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = ctx.gate.admit(peer.ip(), tokio::time::Instant::now()) else {
            // Refused: closed at once, before any byte is read.
            drop(stream);
            continue;
        };
        let conn = ConnId(ctx.next_conn.fetch_add(1, Ordering::Relaxed));
        if ctx.url.transport == Transport::Tcp {
            let accepted = ConnEvent::Accepted {
                conn,
                peer,
                transport: Transport::Tcp,
                identity: None,
                stream,
                websocket: None,
                permit,
            };
            if events.send(E::from(accepted)).await.is_err() {
                return;
            }
            continue;
        }
        let ctx = ctx.clone();
        let events = events.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(
                ctx.handshake_timeout,
                handshake(conn, peer, stream, permit, &ctx, &events),
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
    permit: ConnPermit,
    ctx: &AcceptContext,
    events: &mpsc::Sender<E>,
) -> Result<(), String> {
    let transport = ctx.url.transport;
    let mut identity = None;
    let stream: BoxStream = if transport.uses_tls() {
        let config = ctx
            .tls
            .as_ref()
            .and_then(SharedTls::current)
            .ok_or("no TLS configuration")?;
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(stream)
            .await
            .map_err(|e| e.to_string())?;
        identity = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| crate::tls::subject_common_name(cert));
        Box::new(tls)
    } else {
        stream
    };
    let (stream, websocket) = if transport.uses_websocket() {
        let (stream, leftover) = websocket(stream, ctx).await?;
        (stream, Some(leftover))
    } else {
        (stream, None)
    };
    let accepted = ConnEvent::Accepted {
        conn,
        peer,
        transport,
        identity,
        stream,
        websocket,
        permit,
    };
    // The driver gone means the broker is stopping: nothing to report.
    let _ = events.send(E::from(accepted)).await;
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
    let event = match result {
        Ok(Ok(stream)) => ConnEvent::Connected { conn, stream },
        Ok(Err(error)) => ConnEvent::ConnectFailed { conn, error },
        Err(_) => ConnEvent::ConnectFailed {
            conn,
            error: format!("{address}: timed out"),
        },
    };
    let _ = events.send(E::from(event)).await;
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
