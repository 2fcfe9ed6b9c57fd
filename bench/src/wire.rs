//! The client side of MQTT 3.1.1 over a tokio `TcpStream`, built on `tidemq_core::codec`.
//!
//! Control packets (CONNECT, CONNACK, SUBSCRIBE, SUBACK, DISCONNECT) go through the codec's
//! `encode_packet` / `decode_packet`. The hot path does not build a `Packet` per message: a
//! PUBLISH is encoded once with the codec into a template that is copied and patched (packet
//! id, stamp) per message, and received packets are framed with the codec's
//! `peek_fixed_header` and read in place.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tidemq_core::codec::{
    self, Connect, DecodeLimits, Packet, Properties, ProtocolVersion, PublishRef, QoS, ReasonOnly,
    Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The protocol every benchmark client speaks: the one all brokers support.
pub const VERSION: ProtocolVersion = ProtocolVersion::V311;
/// Bytes at the start of every benchmark payload: send time, publisher, sequence.
pub const STAMP_LEN: usize = 16;
/// How much the read buffers grow by per read.
const READ_CHUNK: usize = 64 * 1024;
/// What the clients accept from a broker.
const READ_LIMITS: DecodeLimits = DecodeLimits {
    max_packet_size: 16 * 1024 * 1024,
    max_user_properties: 64,
};
/// How long a handshake step (CONNACK, SUBACK, the close after DISCONNECT) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("timed out waiting for {what}"),
    )
}

/// What a benchmark payload starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the run's origin when the message was written.
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u32,
}

impl Stamp {
    pub fn write(&self, out: &mut [u8]) {
        if let Some(s) = out.get_mut(0..8) {
            s.copy_from_slice(&self.sent_ns.to_le_bytes());
        }
        if let Some(s) = out.get_mut(8..12) {
            s.copy_from_slice(&self.publisher.to_le_bytes());
        }
        if let Some(s) = out.get_mut(12..16) {
            s.copy_from_slice(&self.seq.to_le_bytes());
        }
    }

    pub fn read(payload: &[u8]) -> Option<Stamp> {
        let sent_ns = u64::from_le_bytes(payload.get(0..8)?.try_into().ok()?);
        let publisher = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
        let seq = u32::from_le_bytes(payload.get(12..16)?.try_into().ok()?);
        Some(Stamp {
            sent_ns,
            publisher,
            seq,
        })
    }
}

/// One PUBLISH encoded by the codec, to be copied and patched per message.
#[derive(Debug, Clone)]
pub struct PublishTemplate {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    /// A PUBLISH of `payload_len` bytes (at least [`STAMP_LEN`]) to `topic`.
    pub fn new(topic: &str, qos: QoS, payload_len: usize) -> io::Result<PublishTemplate> {
        if payload_len < STAMP_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("payload must be at least {STAMP_LEN} bytes (it carries a timestamp)"),
            ));
        }
        let payload = vec![0u8; payload_len];
        let properties = Properties::default();
        let publish = PublishRef {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(1),
            properties: &properties,
            payload: &payload,
        };
        let mut out = BytesMut::with_capacity(publish.encoded_len(VERSION));
        publish.encode(VERSION, &mut out).map_err(invalid)?;
        let bytes = out.to_vec();
        let payload_at = bytes
            .len()
            .checked_sub(payload_len)
            .ok_or_else(|| invalid("encoded PUBLISH shorter than its payload"))?;
        let packet_id_at = if qos == QoS::AtMostOnce {
            None
        } else {
            Some(
                payload_at
                    .checked_sub(2)
                    .ok_or_else(|| invalid("encoded PUBLISH has no packet id"))?,
            )
        };
        Ok(PublishTemplate {
            bytes,
            packet_id_at,
            payload_at,
        })
    }

    /// Bytes per message on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Appends one message to `out`.
    pub fn append(&self, out: &mut Vec<u8>, packet_id: u16, stamp: Stamp) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if let Some(at) = self.packet_id_at
            && let Some(s) = out.get_mut(start + at..start + at + 2)
        {
            s.copy_from_slice(&packet_id.to_be_bytes());
        }
        if let Some(s) = out.get_mut(start + self.payload_at..) {
            stamp.write(s);
        }
    }
}

/// A PUBLISH read in place.
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// Reads a 3.1.1 PUBLISH body (`first` is its fixed header's first byte).
pub fn parse_publish(first: u8, body: &[u8]) -> Option<PublishView<'_>> {
    let qos = (first >> 1) & 0x03;
    let topic_len = usize::from(u16::from_be_bytes(body.get(0..2)?.try_into().ok()?));
    let topic = body.get(2..2 + topic_len)?;
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?);
        at += 2;
    }
    Some(PublishView {
        qos,
        packet_id,
        topic,
        payload: body.get(at..)?,
    })
}

/// A PUBACK for `packet_id`, appended to `out`.
pub fn append_puback(out: &mut Vec<u8>, packet_id: u16) {
    let id = packet_id.to_be_bytes();
    out.extend_from_slice(&[0x40, 0x02, id[0], id[1]]);
}

/// Calls `f(first byte, body)` for every whole packet at the front of `buf`, then removes
/// them; a partial packet stays for the next read.
pub fn drain_frames(
    buf: &mut BytesMut,
    mut f: impl FnMut(u8, &[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut pos = 0;
    loop {
        let rest = buf.get(pos..).unwrap_or_default();
        match codec::peek_fixed_header(rest).map_err(invalid)? {
            Some((first, remaining, header)) => {
                let Some(body) = rest.get(header..header + remaining) else {
                    break;
                };
                f(first, body)?;
                pos += header + remaining;
            }
            None => break,
        }
    }
    buf.advance(pos);
    Ok(())
}

/// The topic aliases a broker set towards a v5 client (MQTT 5 §3.3.2.3.4), as the client
/// resolves them: a PUBLISH with a topic and an alias (re)maps the alias, one with an empty
/// topic stands for the topic its alias was last mapped to.
#[derive(Debug, Clone, Default)]
pub struct AliasMap {
    /// Index `alias - 1`; `None` until the broker maps it.
    topics: Vec<Option<String>>,
}

/// How a PUBLISH named its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicBy {
    /// The topic alone.
    Topic,
    /// The topic and an alias, which now stands for it.
    TopicAndAlias,
    /// The alias alone.
    Alias,
}

impl AliasMap {
    /// What a client that announced Topic Alias Maximum `max` accepts.
    pub fn new(max: u16) -> AliasMap {
        AliasMap {
            topics: vec![None; usize::from(max)],
        }
    }

    /// The topic a PUBLISH with `topic` and alias property `alias` is for, and how it came.
    /// An alias of 0 or above the maximum, an empty topic without an alias and an alias
    /// never mapped are protocol errors (the message cannot be delivered).
    pub fn resolve<'a>(
        &'a mut self,
        topic: &'a str,
        alias: Option<u16>,
    ) -> Result<(&'a str, TopicBy), String> {
        let Some(alias) = alias else {
            if topic.is_empty() {
                return Err("PUBLISH with an empty topic and no topic alias".to_owned());
            }
            return Ok((topic, TopicBy::Topic));
        };
        let max = self.topics.len();
        let slot = usize::from(alias)
            .checked_sub(1)
            .and_then(|i| self.topics.get_mut(i))
            .ok_or_else(|| format!("topic alias {alias} outside 1..={max}"))?;
        if topic.is_empty() {
            return slot
                .as_deref()
                .map(|t| (t, TopicBy::Alias))
                .ok_or_else(|| format!("unknown topic alias {alias}"));
        }
        match slot {
            Some(known) if known == topic => {}
            _ => *slot = Some(topic.to_owned()),
        }
        Ok((topic, TopicBy::TopicAndAlias))
    }
}

/// A connected MQTT client: its socket halves and what was read but not used yet.
pub struct Client {
    pub rd: OwnedReadHalf,
    pub wr: OwnedWriteHalf,
    pub buf: BytesMut,
    /// The protocol it connected with ([`VERSION`] unless [`Client::connect_v5`]).
    pub version: ProtocolVersion,
}

impl Client {
    /// Connects, sends CONNECT (3.1.1, clean session) and waits for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, client_id: &str, keep_alive: u16) -> io::Result<Client> {
        Client::connect_session(addr, client_id, keep_alive, true).await
    }

    /// [`Client::connect`] with a chosen clean-session flag.
    pub async fn connect_session(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        clean: bool,
    ) -> io::Result<Client> {
        let connect = Connect {
            version: VERSION,
            clean_start: clean,
            keep_alive,
            properties: Properties::default(),
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
        };
        Client::handshake(addr, connect).await
    }

    /// Connects with MQTT 5 (clean start), announcing `topic_alias_maximum` (0: none, so the
    /// broker sets no aliases towards us), and waits for a successful CONNACK.
    pub async fn connect_v5(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
        topic_alias_maximum: u16,
    ) -> io::Result<Client> {
        let connect = Connect {
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive,
            properties: Properties {
                topic_alias_maximum: (topic_alias_maximum > 0).then_some(topic_alias_maximum),
                ..Properties::default()
            },
            client_id: client_id.to_owned(),
            will: None,
            username: None,
            password: None,
        };
        Client::handshake(addr, connect).await
    }

    async fn handshake(addr: SocketAddr, connect: Connect) -> io::Result<Client> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut client = Client {
            rd,
            wr,
            buf: BytesMut::with_capacity(1024),
            version: connect.version,
        };
        client.send(&Packet::Connect(Box::new(connect))).await?;
        match client.expect_packet("CONNACK").await? {
            Packet::ConnAck(ack) if ack.code.0 == 0 => Ok(client),
            Packet::ConnAck(ack) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("CONNACK return code {}", ack.code.0),
            )),
            other => Err(invalid(format!("expected CONNACK, got {}", other.kind()))),
        }
    }

    /// Encodes and writes one packet.
    pub async fn send(&mut self, packet: &Packet) -> io::Result<()> {
        let mut out = BytesMut::with_capacity(codec::encoded_len(packet, self.version));
        codec::encode_packet(packet, self.version, &mut out).map_err(invalid)?;
        self.wr.write_all(&out).await
    }

    /// The next whole packet, decoded by the codec; bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn expect_packet(&mut self, what: &str) -> io::Result<Packet> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, self.read_packet())
            .await
            .map_err(|_| timed_out(what))?
    }

    async fn read_packet(&mut self) -> io::Result<Packet> {
        loop {
            if let Some(packet) = self.decode_buffered()? {
                return Ok(packet);
            }
            self.read_more().await?;
        }
    }

    /// The next whole packet already in the buffer, decoded by the codec (and removed from
    /// the buffer); `None` when the buffer holds less than one packet.
    pub fn decode_buffered(&mut self) -> io::Result<Option<Packet>> {
        codec::decode_packet(&mut self.buf, Some(self.version), &READ_LIMITS).map_err(invalid)
    }

    /// Reads once more into the buffer; end of stream is an error.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        match self.rd.read_buf(&mut self.buf).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the connection",
            )),
            n => Ok(n),
        }
    }

    /// Subscribes to one filter and waits for a granted SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> io::Result<()> {
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
        });
        self.send(&subscribe).await?;
        match self.expect_packet("SUBACK").await? {
            Packet::SubAck(ack) if ack.packet_id == 1 => match ack.reasons.first() {
                Some(code) if !code.is_error() => Ok(()),
                code => Err(invalid(format!(
                    "subscription to {filter} refused: {code:?}"
                ))),
            },
            other => Err(invalid(format!("expected SUBACK, got {}", other.kind()))),
        }
    }

    /// Sends DISCONNECT and waits (bounded) for the broker to close, so that the broker's
    /// side, not ours, keeps the TIME_WAIT (repeated runs would otherwise run out of ports).
    pub async fn disconnect(mut self) -> io::Result<()> {
        self.send(&Packet::Disconnect(ReasonOnly::default()))
            .await?;
        let wait_eof = async {
            let mut sink = [0u8; 4096];
            loop {
                match self.rd.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, wait_eof)
            .await
            .map_err(|_| timed_out("the broker to close after DISCONNECT"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips_through_the_codec() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let t = PublishTemplate::new("bench/x", qos, 40).unwrap();
            let mut out = Vec::new();
            let stamp = Stamp {
                sent_ns: 123_456_789,
                publisher: 7,
                seq: 42,
            };
            t.append(&mut out, 513, stamp);
            t.append(&mut out, 514, stamp);
            let mut buf = BytesMut::from(&out[..]);
            let limits = DecodeLimits::default();
            let Some(Packet::Publish(p)) =
                codec::decode_packet(&mut buf, Some(VERSION), &limits).unwrap()
            else {
                panic!("not a PUBLISH");
            };
            assert_eq!(p.topic, "bench/x");
            assert_eq!(p.qos, qos);
            assert_eq!(p.payload.len(), 40);
            assert_eq!(Stamp::read(&p.payload), Some(stamp));
            if qos == QoS::AtLeastOnce {
                assert_eq!(p.packet_id, Some(513));
            }
            let mut seen = 0;
            drain_frames(&mut buf, |first, body| {
                let v = parse_publish(first, body).unwrap();
                assert_eq!(v.topic, b"bench/x");
                assert_eq!(v.qos, qos as u8);
                assert_eq!(Stamp::read(v.payload), Some(stamp));
                seen += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(seen, 1);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let t = PublishTemplate::new("a", QoS::AtMostOnce, 16).unwrap();
        let mut out = Vec::new();
        t.append(
            &mut out,
            0,
            Stamp {
                sent_ns: 1,
                publisher: 0,
                seq: 0,
            },
        );
        let mut buf = BytesMut::from(&out[..out.len() - 1]);
        let mut seen = 0;
        drain_frames(&mut buf, |_, _| {
            seen += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, 0);
        assert_eq!(buf.len(), out.len() - 1);
    }

    #[test]
    fn aliases_resolve_to_what_the_broker_mapped() {
        let mut m = AliasMap::new(2);
        assert_eq!(m.resolve("a/b", None), Ok(("a/b", TopicBy::Topic)));
        assert!(m.resolve("", None).is_err());
        assert!(m.resolve("", Some(1)).unwrap_err().contains("unknown"));
        assert_eq!(
            m.resolve("a/b", Some(1)),
            Ok(("a/b", TopicBy::TopicAndAlias))
        );
        assert_eq!(m.resolve("", Some(1)), Ok(("a/b", TopicBy::Alias)));
        // Remapped.
        assert_eq!(m.resolve("c", Some(1)), Ok(("c", TopicBy::TopicAndAlias)));
        assert_eq!(m.resolve("", Some(1)), Ok(("c", TopicBy::Alias)));
        assert!(m.resolve("", Some(2)).is_err());
        assert!(m.resolve("x", Some(0)).is_err());
        assert!(m.resolve("x", Some(3)).is_err());
        assert!(AliasMap::new(0).resolve("x", Some(1)).is_err());
    }

    #[test]
    fn v5_publishes_with_aliases_decode() {
        let mut out = BytesMut::new();
        for (topic, alias) in [("t/long", Some(1)), ("", Some(1))] {
            let properties = Properties {
                topic_alias: alias,
                ..Properties::default()
            };
            let payload = [0u8; 16];
            PublishRef {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: Some(7),
                properties: &properties,
                payload: &payload,
            }
            .encode(ProtocolVersion::V5, &mut out)
            .unwrap();
        }
        let mut m = AliasMap::new(16);
        let mut seen = Vec::new();
        while let Some(Packet::Publish(p)) =
            codec::decode_packet(&mut out, Some(ProtocolVersion::V5), &READ_LIMITS).unwrap()
        {
            let (topic, by) = m.resolve(&p.topic, p.properties.topic_alias).unwrap();
            seen.push((topic.to_owned(), by));
        }
        assert_eq!(
            seen,
            [
                ("t/long".to_owned(), TopicBy::TopicAndAlias),
                ("t/long".to_owned(), TopicBy::Alias)
            ]
        );
    }

    #[test]
    fn short_payloads_are_refused() {
        assert!(PublishTemplate::new("a", QoS::AtMostOnce, 8).is_err());
    }
}
