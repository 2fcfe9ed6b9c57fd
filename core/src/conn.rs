//! One client connection's state: its buffers, the limits both sides announced, its keep alive
//! and topic aliases, and how many bytes its writer still holds (back-pressure).

use std::collections::BTreeMap;

use bytes::BytesMut;

use crate::acl::{Action, Decision};
use crate::api::Instant;
use crate::codec::{self, DecodeLimits, ProtocolVersion, ReasonCode};
use crate::config::Config;
use crate::ids::SessionId;
use crate::memory::{CONN_BYTES, Charge, Ledger};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnState {
    AwaitingConnect,
    /// CONNECT received, its credentials being checked outside the core: nothing further
    /// from this connection is decoded until the answer.
    Authenticating,
    Active(SessionId),
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub peer: String,
    pub state: ConnState,
    pub version: Option<ProtocolVersion>,
    pub limits: DecodeLimits,
    pub rx: BytesMut,
    /// Output produced during the current input, flushed as one Transmit.
    pub tx: BytesMut,
    /// Bytes handed out in Transmits and not yet reported written.
    pub unwritten: usize,
    pub last_rx: Instant,
    /// Milliseconds of silence allowed; 0 = none. Before CONNECT: the connect timeout.
    pub idle_limit_ms: u64,
    pub timer_armed: Option<Instant>,
    /// Client's limits towards us (v5 CONNECT properties).
    pub client_receive_maximum: u16,
    pub client_max_packet_size: u32,
    /// Our limits as told in CONNACK; a later config change does not alter them.
    pub receive_maximum: u16,
    pub topic_alias_max: u16,
    pub topic_aliases: BTreeMap<u16, String>,
    /// Aliases we set towards the client (`mqtt.max_topic_alias_out`).
    pub out_aliases: Option<Box<crate::alias::OutAliases>>,
    /// Session expiry given in CONNECT (v5: DISCONNECT may not raise it from 0).
    pub connect_expiry_secs: u32,
    pub username: Option<String>,
    pub keep_alive: u16,
    pub clean_start: bool,
    /// The verified client certificate's common name (TLS), if any.
    pub cert_identity: Option<String>,
    /// Its buffers, output not yet written and aliases in the memory count.
    pub charge: Charge,
    /// Bytes of the topics behind `topic_aliases`.
    pub alias_bytes: usize,
    /// The CONNECT waiting for its credentials' check (password removed).
    pub pending_connect: Option<Box<codec::Connect>>,
    /// Not subject to the ACL (an authentication backend said so).
    pub superuser: bool,
    /// A PUBLISH or SUBSCRIBE waiting for the ACL service's answers; nothing after it is
    /// decoded meanwhile.
    pub acl_wait: Option<Box<AclWait>>,
}

/// A packet held for the ACL service, and its questions.
#[derive(Debug)]
pub(crate) struct AclWait {
    pub packet: codec::Packet,
    pub pending: std::collections::BTreeSet<(Action, String)>,
    pub decided: BTreeMap<(Action, String), Decision>,
}

impl Conn {
    /// A connection just accepted: it has `connect_timeout_ms` to send CONNECT.
    pub fn new(peer: String, now: Instant, config: &Config, ledger: &Ledger) -> Conn {
        Conn {
            charge: ledger.charge(CONN_BYTES + peer.len()),
            alias_bytes: 0,
            peer,
            state: ConnState::AwaitingConnect,
            version: None,
            limits: decode_limits(config),
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            unwritten: 0,
            last_rx: now,
            idle_limit_ms: config.connect_timeout_ms,
            timer_armed: None,
            client_receive_maximum: u16::MAX,
            client_max_packet_size: u32::MAX,
            receive_maximum: config.receive_maximum,
            topic_alias_max: config.max_topic_alias,
            topic_aliases: BTreeMap::new(),
            out_aliases: None,
            connect_expiry_secs: 0,
            username: None,
            keep_alive: 0,
            clean_start: true,
            cert_identity: None,
            pending_connect: None,
            superuser: false,
            acl_wait: None,
        }
    }

    /// When silence closes this connection, if it can.
    pub fn idle_deadline(&self) -> Option<Instant> {
        (self.idle_limit_ms > 0).then(|| self.last_rx.plus_ms(self.idle_limit_ms))
    }

    /// Appends received bytes to the receive buffer ([`buffer_input`]).
    pub fn buffer_input(&mut self, bytes: &[u8]) {
        buffer_input(&mut self.rx, bytes, self.limits.max_packet_size);
        self.recount();
    }

    /// Brings the memory count up to what the connection holds now.
    pub fn recount(&mut self) {
        let bytes = CONN_BYTES
            + self.peer.len()
            + self.rx.capacity()
            + self.tx.len()
            + self.unwritten
            + self.alias_bytes;
        if bytes != self.charge.bytes() {
            self.charge.set(bytes);
        }
    }

    /// Bytes this connection's writer has or will have: handed out, being built, and held
    /// for the store.
    pub fn backlog(&self, held: usize) -> usize {
        self.unwritten + self.tx.len() + held
    }
}

/// Appends received bytes to a receive buffer (a client's or a bridge link's). It grows only
/// to what is needed, or at once to the size of the packet being assembled when its header is
/// in and within `max_packet_size`, never by doubling: it holds at most one maximum-size
/// packet plus one read.
pub(crate) fn buffer_input(rx: &mut BytesMut, bytes: &[u8], max_packet_size: usize) {
    let needed = rx.len() + bytes.len();
    if needed > rx.capacity() {
        let packet = match codec::peek_fixed_header(rx) {
            Ok(Some((_, remaining, header))) if header + remaining <= max_packet_size => {
                header + remaining
            }
            _ => 0,
        };
        let mut grown = BytesMut::with_capacity(needed.max(packet));
        grown.extend_from_slice(rx);
        *rx = grown;
    }
    rx.extend_from_slice(bytes);
}

/// The decoder's limits under a configuration.
pub(crate) fn decode_limits(config: &Config) -> DecodeLimits {
    DecodeLimits {
        max_packet_size: config.max_packet_size as usize,
        max_user_properties: config.property_size as usize,
    }
}

/// Why a connection is being closed by the broker.
pub(crate) struct CloseReason {
    /// v5 reason code (also reported in events and `$SYS`).
    pub code: ReasonCode,
    /// Send a v5 DISCONNECT first (only after a successful CONNACK).
    pub notify: bool,
    /// Publish the will (anything but a normal DISCONNECT).
    pub will: bool,
    /// The driver reported the connection gone: nothing to send, no Close to ask for.
    pub peer_gone: bool,
    pub detail: String,
}

impl CloseReason {
    /// A protocol or limit violation: tell a v5 client, publish the will.
    pub fn error(code: ReasonCode, detail: impl Into<String>) -> CloseReason {
        CloseReason {
            peer_gone: false,
            code,
            notify: true,
            will: true,
            detail: detail.into(),
        }
    }

    /// Closed without a word and without the will: a refused or unreadable CONNECT.
    pub fn silent(code: ReasonCode, detail: impl Into<String>) -> CloseReason {
        CloseReason {
            peer_gone: false,
            code,
            notify: false,
            will: false,
            detail: detail.into(),
        }
    }
}
