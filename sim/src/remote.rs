//! S25's hostile bridge remote: the broker under test bridges to it, and it floods the link —
//! messages of the largest size at QoS 0 and 1 for the local topics the bridge subscribes to,
//! QoS 2 messages it never releases, now and then a packet header past the maximum size — and
//! may stop reading what the bridge sends it. It keeps no network of its
//! own: what the bridge writes is read at once (or never), and what it sends arrives at once.
//! The attack ends with the chaos: the link is closed and further connects are refused.

use bytes::{Bytes, BytesMut};
use tidemq_core::codec::{
    Ack, ConnAck, DecodeLimits, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    SubAck, decode_packet, encode_packet,
};
use tidemq_core::config::{BridgeConfig, BridgeForward, BridgeSubscription};

use crate::rng::Rng;

const WIDE: DecodeLimits = DecodeLimits {
    max_packet_size: 268_435_460,
    max_user_properties: usize::MAX,
};

/// The bridge the broker gets in S25 seeds with a hostile remote: honest traffic (`t/#`) goes
/// out to the remote; what the remote sends comes in under `x/b/#`, which adversaries and
/// workers subscribed to `#` receive.
pub fn bridge_config(rng: &mut Rng) -> BridgeConfig {
    BridgeConfig {
        enable: true,
        address: "mqtt-tcp://hostile:1883".to_owned(),
        proto_ver: if rng.chance(500) { 5 } else { 4 },
        clientid: "bridge-hostile".to_owned(),
        keepalive: rng.range(2, 10) as u16,
        clean_start: rng.chance(500),
        forwards: vec![BridgeForward {
            local_topic: "t/#".to_owned(),
            ..BridgeForward::default()
        }],
        subscription: vec![BridgeSubscription {
            remote_topic: "x/b/#".to_owned(),
            local_topic: String::new(),
            qos: 2,
        }],
        max_send_queue_len: rng.range(16, 4_096) as u32,
        backoff_max: rng.range(1, 4) as u32,
        ..BridgeConfig::default()
    }
}

pub struct FloodRemote {
    /// The link now open, by the bridge's conn id.
    pub link: Option<u64>,
    /// A link the bridge asked for, opened at this time.
    pub dial: Option<(u64, u64)>,
    rx: BytesMut,
    version: Option<ProtocolVersion>,
    /// CONNACK sent: flooding may start.
    up: bool,
    /// Reads what the bridge writes (and so lets it count it written).
    pub reading: bool,
    /// Acknowledges the bridge's messages.
    acking: bool,
    pub next_wake: u64,
    next_pid: u16,
    n: u64,
    /// The chaos is over: no more links.
    pub retired: bool,
    /// Largest packet the broker takes.
    max_packet: usize,
    /// Topics of the messages sent since the world last took them (for the trace).
    pub topics: Vec<String>,
}

impl FloodRemote {
    pub fn new(max_packet: u32) -> FloodRemote {
        FloodRemote {
            link: None,
            dial: None,
            rx: BytesMut::new(),
            version: None,
            up: false,
            reading: true,
            acking: true,
            next_wake: 0,
            next_pid: 1,
            n: 0,
            retired: false,
            max_packet: max_packet as usize,
            topics: Vec::new(),
        }
    }

    fn enc(&self, p: &Packet) -> Bytes {
        let mut b = BytesMut::new();
        let _ = encode_packet(p, self.version.unwrap_or(ProtocolVersion::V311), &mut b);
        b.freeze()
    }

    /// The bridge asked for a link; it opens at `at`.
    pub fn connect(&mut self, conn: u64, at: u64) {
        self.dial = Some((conn, at));
    }

    /// The link is open: a new conversation.
    pub fn opened(&mut self, conn: u64, rng: &mut Rng) {
        self.link = Some(conn);
        self.dial = None;
        self.rx.clear();
        self.version = None;
        self.up = false;
        self.reading = true;
        self.acking = rng.chance(700);
    }

    pub fn closed(&mut self) {
        self.link = None;
        self.up = false;
    }

    /// Bytes the bridge wrote; returns what to answer.
    pub fn on_bytes(&mut self, bytes: &[u8], rng: &mut Rng) -> Vec<Bytes> {
        let mut out = Vec::new();
        if !self.reading {
            return out;
        }
        self.rx.extend_from_slice(bytes);
        loop {
            let p = match decode_packet(&mut self.rx, self.version, &WIDE) {
                Ok(Some(p)) => p,
                Ok(None) | Err(_) => return out,
            };
            match p {
                Packet::Connect(c) => {
                    self.version = Some(c.version);
                    out.push(self.enc(&Packet::ConnAck(ConnAck {
                        session_present: !c.clean_start && rng.chance(500),
                        code: ReasonCode(0),
                        properties: Properties::default(),
                    })));
                    self.up = true;
                }
                Packet::Subscribe(s) => out.push(self.enc(&Packet::SubAck(SubAck {
                    packet_id: s.packet_id,
                    properties: Properties::default(),
                    reasons: vec![ReasonCode(2); s.filters.len()],
                }))),
                Packet::Publish(p) if self.acking => {
                    if let Some(pid) = p.packet_id {
                        let ack = Ack::new(pid, ReasonCode(0));
                        out.push(self.enc(&if p.qos == QoS::ExactlyOnce {
                            Packet::PubRec(ack)
                        } else {
                            Packet::PubAck(ack)
                        }));
                    }
                }
                Packet::PubRel(a) => {
                    out.push(self.enc(&Packet::PubComp(Ack::new(a.packet_id, ReasonCode(0)))))
                }
                Packet::PingReq => out.push(self.enc(&Packet::PingResp)),
                _ => {}
            }
        }
    }

    fn publish(&mut self, topic: String, qos: QoS, retain: bool, size: usize) -> Bytes {
        self.n += 1;
        self.topics.push(topic.clone());
        let packet_id = (qos != QoS::AtMostOnce).then(|| {
            let id = self.next_pid;
            self.next_pid = self.next_pid.wrapping_add(1).max(1);
            id
        });
        self.enc(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id,
            properties: Properties::default(),
            payload: Bytes::from(vec![b'X'; size]),
        }))
    }

    /// One round of the attack, if the link is up.
    pub fn flood(&mut self, rng: &mut Rng) -> Vec<Bytes> {
        let mut out = Vec::new();
        if self.link.is_none() || !self.up || self.retired {
            return out;
        }
        // Room for the topic and the packet's own fields.
        let big = self.max_packet.saturating_sub(96).max(1);
        match rng.below(10) {
            0..=2 => {
                for _ in 0..4 {
                    out.push(self.publish("x/b/q0".to_owned(), QoS::AtMostOnce, false, big));
                }
            }
            3..=5 => {
                // Not retained: the retained audit (I8) knows only what clients keep there;
                // retained messages from a bridge are the scenario tests'.
                for _ in 0..4 {
                    let topic = format!("x/b/m/{}", self.n % 8);
                    out.push(self.publish(topic, QoS::AtLeastOnce, false, big));
                }
            }
            6 | 7 => {
                // Never released: past the receive maximum the link is cut.
                for _ in 0..4 {
                    out.push(self.publish("x/b/q2".to_owned(), QoS::ExactlyOnce, false, 16));
                }
            }
            8 => {
                if rng.chance(200) {
                    // A header announcing far more than the maximum packet size.
                    out.push(Bytes::from_static(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F, 0, 0]));
                } else {
                    out.push(self.publish("x/b/q1".to_owned(), QoS::AtLeastOnce, false, big));
                }
            }
            _ => {
                if rng.chance(300) {
                    // From now on this link's output is never read.
                    self.reading = false;
                }
                out.push(self.publish("x/b/q0".to_owned(), QoS::AtMostOnce, false, big));
            }
        }
        out
    }
}
