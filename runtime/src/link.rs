//! One connection's socket as the driver drives it: no task per connection. The driver polls
//! the stream with a waker of the connection's own ([`ConnWaker`]); when the socket becomes
//! readable or writable that waker puts the connection on the [`ReadyQueue`] and wakes the
//! driver, which reads, feeds the core, and writes the core's output straight to the socket.
//! So a message crosses no task or thread between the socket it came from and the socket it
//! leaves by, and an idle connection holds no task and no buffer.
//!
//! TLS and WebSocket end here too: the stream may be a TLS stream, and WebSocket frames are
//! unwrapped and wrapped around the core's bytes; pongs are coalesced (a pending pong answers
//! only the latest ping, as RFC 6455 allows).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use bytes::{Bytes, BytesMut};
use tidemq_core::ConnId;
use tidemq_core::ws::{self, Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWrite};

use crate::limits::ConnPermit;
use crate::net::BoxStream;

/// Most bytes read from one socket at a time.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// At most this many chunks per vectored write.
const MAX_IOVECS: usize = 64;
/// Streams without vectored writes get their small chunks joined up to this size.
const JOIN_LIMIT: usize = 64 * 1024;

/// Connections whose sockets became ready, for the driver.
#[derive(Default)]
pub(crate) struct ReadyQueue {
    state: Mutex<ReadyState>,
}

#[derive(Default)]
struct ReadyState {
    ids: Vec<ConnId>,
    driver: Option<Waker>,
}

impl ReadyQueue {
    /// Moves the ready connections into `out` (which should be empty).
    pub fn take(&self, out: &mut Vec<ConnId>) {
        if let Ok(mut state) = self.state.lock() {
            std::mem::swap(&mut state.ids, out);
        }
    }

    /// Ready when some connection is.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let Ok(mut state) = self.state.lock() else {
            return Poll::Pending;
        };
        if state.ids.is_empty() {
            if !state
                .driver
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                state.driver = Some(cx.waker().clone());
            }
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    fn push(&self, id: ConnId) {
        let waker = match self.state.lock() {
            Ok(mut state) => {
                state.ids.push(id);
                state.driver.take()
            }
            Err(_) => None,
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The waker a connection's stream is polled with: it queues the connection (once until the
/// driver takes it) and wakes the driver.
pub(crate) struct ConnWaker {
    id: ConnId,
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push(self.id);
        }
    }
}

/// What reading found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadResult {
    /// Bytes (maybe none, e.g. only WebSocket control frames) and maybe more to come.
    Open,
    /// The peer closed, the read failed, or the WebSocket stream ended (a close frame or a
    /// framing error, answered with a close frame queued here).
    Closed,
}

/// What writing did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct WriteResult {
    /// MQTT bytes now on the wire (for the core's `Written`).
    pub credited: usize,
    /// Some bytes went out.
    pub progress: bool,
    /// Bytes are left and the socket is full: the waker will fire when it has room.
    pub blocked: bool,
    pub failed: bool,
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading and writing; the core knows the connection.
    Open,
    /// The core or the peer closed it: what is queued goes out, then the write side is shut.
    Closing { linger: bool },
    /// Write side shut, reading and discarding for a bounded time and number of bytes.
    Lingering { discarded: usize },
    /// Nothing left to do: drop it.
    Done,
}

/// Bytes on their way out, and how many of them are the core's (reported `Written` once the
/// chunk is on the wire; WebSocket headers, pongs and close frames count for none).
struct Chunk {
    bytes: Bytes,
    credit: usize,
}

struct WsState {
    decoder: FrameDecoder,
    /// The start of a frame that has not fully arrived.
    partial: BytesMut,
    /// The payload of the latest ping not yet answered.
    pong: Option<Bytes>,
    /// A close frame to send once what is queued is out.
    close: Option<u16>,
}

/// One connection's socket and the bytes on their way to it.
pub(crate) struct Link {
    stream: BoxStream,
    wake: Arc<ConnWaker>,
    waker: Waker,
    ws: Option<Box<WsState>>,
    out: VecDeque<Chunk>,
    /// Bytes in `out`.
    queued: usize,
    pub phase: Phase,
    /// When the stall or linger bound runs out (indexed by the driver).
    pub deadline: Option<tokio::time::Instant>,
    /// Its place under the connection limits (bridges have none).
    _permit: Option<ConnPermit>,
}

impl Link {
    pub fn new(
        id: ConnId,
        stream: BoxStream,
        websocket: Option<(BytesMut, usize)>,
        permit: Option<ConnPermit>,
        queue: &Arc<ReadyQueue>,
    ) -> Link {
        let wake = Arc::new(ConnWaker {
            id,
            // Queued by the driver at once: bytes may already be waiting.
            queued: AtomicBool::new(false),
            queue: queue.clone(),
        });
        let waker = Waker::from(wake.clone());
        let ws = websocket.map(|(partial, max_frame)| {
            Box::new(WsState {
                decoder: FrameDecoder::new(max_frame),
                partial,
                pong: None,
                close: None,
            })
        });
        Link {
            stream,
            wake,
            waker,
            ws,
            out: VecDeque::new(),
            queued: 0,
            phase: Phase::Open,
            deadline: None,
            _permit: permit,
        }
    }

    /// Puts the connection on the ready queue (after accept, and to resume work).
    pub fn schedule(&self) {
        self.wake.wake_by_ref();
    }

    /// Called by the driver before it services the connection: later wake-ups queue it again.
    pub fn unqueue(&self) {
        self.wake.queued.store(false, Ordering::Release);
    }

    /// Bytes waiting to go out (the core's and the runtime's).
    pub fn queued(&self) -> usize {
        self.queued
            + self
                .ws
                .as_ref()
                .map_or(0, |ws| ws.pong.as_ref().map_or(0, |p| p.len() + 2))
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
            || self
                .ws
                .as_ref()
                .is_some_and(|ws| ws.pong.is_some() || ws.close.is_some())
    }

    /// Queues the core's bytes (framed for WebSocket).
    pub fn queue(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let credit = bytes.len();
        if self.ws.is_some() {
            let header = ws_binary_header(bytes.len());
            self.push(header, 0);
        }
        self.push(bytes, credit);
    }

    fn push(&mut self, bytes: Bytes, credit: usize) {
        self.queued += bytes.len();
        self.out.push_back(Chunk { bytes, credit });
    }

    /// Stops reading (the connection is closing): what is queued still goes out.
    pub fn close(&mut self, linger: bool) {
        if matches!(self.phase, Phase::Open) {
            self.phase = Phase::Closing { linger };
        }
    }

    /// Reads once into `scratch` (the driver's, shared by every connection: an idle
    /// connection holds no read buffer); MQTT bytes go to `into`. Pending registers the
    /// waker.
    pub fn read(&mut self, scratch: &mut BytesMut, into: &mut Vec<Bytes>) -> Poll<ReadResult> {
        let chunk = match self.read_chunk(scratch) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(Some(chunk))) => chunk,
            Poll::Ready(Ok(None) | Err(_)) => return Poll::Ready(ReadResult::Closed),
        };
        let Some(ws) = self.ws.as_mut() else {
            into.push(chunk);
            return Poll::Ready(ReadResult::Open);
        };
        // Copied: what stays of a partial frame must not hold on to the shared buffer.
        ws.partial.extend_from_slice(&chunk);
        drop(chunk);
        let result = loop {
            match ws.decoder.decode(&mut ws.partial) {
                Ok(Some(Frame::Data(bytes))) => {
                    if !bytes.is_empty() {
                        into.push(bytes);
                    }
                }
                // Only the latest ping is answered while a pong waits.
                Ok(Some(Frame::Ping(payload))) => ws.pong = Some(payload),
                Ok(Some(Frame::Pong)) => {}
                Ok(Some(Frame::Close)) => {
                    ws.close = Some(1000);
                    break ReadResult::Closed;
                }
                Ok(None) => break ReadResult::Open,
                Err(e) => {
                    tracing::debug!(conn = %self.wake.id, error = %e, "WebSocket framing error");
                    ws.close = Some(e.close_code());
                    break ReadResult::Closed;
                }
            }
        };
        if ws.partial.is_empty() {
            // Idle WebSocket connections hold no buffer.
            ws.partial = BytesMut::new();
        }
        Poll::Ready(result)
    }

    /// One read from the socket into `scratch`: `None` at end of stream. The bytes handed
    /// out are split off `scratch`, which gets its space back once they are dropped.
    fn read_chunk(&mut self, scratch: &mut BytesMut) -> Poll<io::Result<Option<Bytes>>> {
        scratch.clear();
        scratch.reserve(READ_CHUNK);
        let mut cx = Context::from_waker(&self.waker);
        let polled = {
            let mut limited = bytes::BufMut::limit(&mut *scratch, READ_CHUNK);
            let read = std::pin::pin!(self.stream.read_buf(&mut limited));
            std::future::Future::poll(read, &mut cx)
        };
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(Some(scratch.split().freeze()))),
        }
    }

    /// Reads and discards while lingering, until the end of stream, an error or the byte
    /// bound (then the phase is `Done`).
    pub fn discard(&mut self, scratch: &mut BytesMut, max_bytes: usize) -> Poll<()> {
        loop {
            let Phase::Lingering { discarded } = self.phase else {
                return Poll::Ready(());
            };
            match self.read_chunk(scratch) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(chunk))) => {
                    let discarded = discarded + chunk.len();
                    self.phase = if discarded >= max_bytes {
                        Phase::Done
                    } else {
                        Phase::Lingering { discarded }
                    };
                }
                Poll::Ready(Ok(None) | Err(_)) => self.phase = Phase::Done,
            }
        }
    }

    /// Writes what is queued until it is all out or the socket is full.
    pub fn write(&mut self) -> WriteResult {
        let mut result = WriteResult::default();
        loop {
            if self.out.is_empty() && !self.take_control() {
                return result;
            }
            if !self.stream.is_write_vectored() {
                self.join_front();
            }
            let mut slices = [io::IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.out.iter()) {
                *slot = io::IoSlice::new(&chunk.bytes);
                count += 1;
            }
            let slices = slices.get(..count).unwrap_or(&[]);
            let mut cx = Context::from_waker(&self.waker);
            match Pin::new(&mut self.stream).poll_write_vectored(&mut cx, slices) {
                Poll::Pending => {
                    result.blocked = true;
                    return result;
                }
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    result.failed = true;
                    return result;
                }
                Poll::Ready(Ok(n)) => {
                    result.progress = true;
                    result.credited += self.consume(n);
                }
            }
        }
    }

    /// Moves a pending pong or close frame into `out` (only between frames: `out` is empty).
    fn take_control(&mut self) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        let mut frame = BytesMut::new();
        if let Some(payload) = ws.pong.take() {
            ws::pong_frame(&payload, &mut frame);
        }
        if let Some(code) = ws.close.take() {
            ws::close_frame(code, &mut frame);
        }
        if frame.is_empty() {
            return false;
        }
        self.push(frame.freeze(), 0);
        true
    }

    /// Joins small chunks at the front into one write, for streams that take one buffer per
    /// write.
    fn join_front(&mut self) {
        let Some(first) = self.out.front() else {
            return;
        };
        if self.out.len() < 2 || first.bytes.len() >= JOIN_LIMIT {
            return;
        }
        let mut joined = BytesMut::new();
        let mut credit = 0;
        while let Some(chunk) = self.out.front() {
            if !joined.is_empty() && joined.len() + chunk.bytes.len() > JOIN_LIMIT {
                break;
            }
            joined.extend_from_slice(&chunk.bytes);
            credit += chunk.credit;
            self.out.pop_front();
        }
        self.out.push_front(Chunk {
            bytes: joined.freeze(),
            credit,
        });
    }

    /// Drops `n` written bytes from the front; returns the core's bytes completed.
    fn consume(&mut self, mut n: usize) -> usize {
        self.queued = self.queued.saturating_sub(n);
        let mut credited = 0;
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            if n < front.bytes.len() {
                bytes::Buf::advance(&mut front.bytes, n);
                break;
            }
            n -= front.bytes.len();
            credited += front.credit;
            self.out.pop_front();
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            // An idle connection holds no queue.
            self.out = VecDeque::new();
        }
        credited
    }

    /// Shuts the write side (after a flush); Pending registers the waker.
    pub fn shutdown(&mut self) -> Poll<io::Result<()>> {
        let mut cx = Context::from_waker(&self.waker);
        Pin::new(&mut self.stream).poll_shutdown(&mut cx)
    }
}

/// The header of an unmasked, unfragmented binary frame of `len` bytes.
fn ws_binary_header(len: usize) -> Bytes {
    let mut header = BytesMut::with_capacity(10);
    header.extend_from_slice(&[0x82]);
    if len < 126 {
        header.extend_from_slice(&[len as u8]);
    } else if let Ok(short) = u16::try_from(len) {
        header.extend_from_slice(&[126]);
        header.extend_from_slice(&short.to_be_bytes());
    } else {
        header.extend_from_slice(&[127]);
        header.extend_from_slice(&(len as u64).to_be_bytes());
    }
    header.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn link(server: DuplexStream, websocket: bool) -> Link {
        let queue = Arc::new(ReadyQueue::default());
        let ws = websocket.then(|| (BytesMut::new(), 1 << 16));
        Link::new(ConnId(1), Box::new(server), ws, None, &queue)
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Reads what the link has read so far, until the socket has nothing more.
    fn read_all(link: &mut Link, scratch: &mut BytesMut) -> Vec<Bytes> {
        let mut into = Vec::new();
        while let Poll::Ready(r) = link.read(scratch, &mut into) {
            assert_eq!(r, ReadResult::Open);
        }
        into
    }

    #[tokio::test]
    async fn pings_from_a_peer_that_does_not_read_leave_one_pong_queued() {
        // A pipe of 256 bytes each way: the peer's unread pongs fill it at once.
        let (server, mut client) = tokio::io::duplex(256);
        let mut link = link(server, true);
        let mut scratch = BytesMut::new();
        for i in 0..200u8 {
            client.write_all(&masked(0x9, &[i; 100])).await.unwrap();
            assert!(read_all(&mut link, &mut scratch).is_empty());
            let written = link.write();
            assert_eq!(written.credited, 0, "pongs are not the core's bytes");
            assert!(
                link.queued() <= 2 * 102,
                "ping {i}: {} bytes queued",
                link.queued()
            );
        }
        // The peer reads at last: a few pongs, the last one for the last ping.
        let mut pongs = Vec::new();
        let mut wire = BytesMut::new();
        for _ in 0..10 {
            link.write();
            let mut buf = [0u8; 1024];
            let n =
                tokio::time::timeout(std::time::Duration::from_millis(50), client.read(&mut buf))
                    .await
                    .unwrap_or(Ok(0))
                    .unwrap();
            wire.extend_from_slice(&buf[..n]);
        }
        while wire.len() >= 102 {
            let frame = wire.split_to(102);
            assert_eq!(&frame[..2], &[0x8A, 100]);
            pongs.push(frame[2]);
        }
        assert!(wire.is_empty());
        assert!(pongs.len() <= 4, "{} pongs for 200 pings", pongs.len());
        assert_eq!(pongs.last(), Some(&199));
    }

    #[tokio::test]
    async fn websocket_framing_is_not_counted_as_the_core_bytes() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut link = link(server, true);
        link.queue(Bytes::from_static(b"hello"));
        assert_eq!(link.queued(), 7);
        let written = link.write();
        assert_eq!((written.credited, written.blocked), (5, false));
        assert_eq!(link.queued(), 0);
        let mut buf = [0u8; 7];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"\x82\x05hello");
    }

    #[tokio::test]
    async fn bytes_are_credited_once_their_chunk_is_on_the_wire() {
        let (server, mut client) = tokio::io::duplex(4);
        let mut link = link(server, false);
        link.queue(Bytes::from_static(b"0123456789"));
        let first = link.write();
        assert!(first.progress && first.blocked);
        assert_eq!(first.credited, 0);
        let mut credited = 0;
        let mut got = Vec::new();
        while got.len() < 10 {
            let mut buf = [0u8; 4];
            let n = client.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
            credited += link.write().credited;
        }
        assert_eq!(got, b"0123456789");
        assert_eq!(credited, 10);
        assert!(!link.has_output());
    }

    #[tokio::test]
    async fn lingering_discards_up_to_the_byte_bound_or_the_end_of_stream() {
        let (server, mut client) = tokio::io::duplex(1024);
        let mut link = link(server, false);
        let mut scratch = BytesMut::new();
        link.phase = Phase::Lingering { discarded: 0 };
        client.write_all(&[0u8; 100]).await.unwrap();
        assert!(link.discard(&mut scratch, 1000).is_pending());
        assert_eq!(link.phase, Phase::Lingering { discarded: 100 });
        client.write_all(&[0u8; 100]).await.unwrap();
        assert!(link.discard(&mut scratch, 150).is_ready());
        assert_eq!(link.phase, Phase::Done);

        let (server, client) = tokio::io::duplex(1024);
        let mut link = super::tests::link(server, false);
        link.phase = Phase::Lingering { discarded: 0 };
        drop(client);
        assert!(link.discard(&mut scratch, 1000).is_ready());
        assert_eq!(link.phase, Phase::Done);
    }

    #[test]
    fn binary_header_matches_the_core_framing() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 200_000] {
            let payload = vec![7u8; len];
            let mut framed = BytesMut::new();
            ws::binary_frame(&payload, &mut framed);
            let header = ws_binary_header(len);
            assert_eq!(&framed[..header.len()], &header[..], "len {len}");
            assert_eq!(framed.len(), header.len() + len);
        }
    }
}
