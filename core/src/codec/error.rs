//! What can go wrong decoding or encoding a packet.

use super::reason::{self, ReasonCode};

/// Why a packet could not be decoded. Each maps to the v5 reason code the broker answers with
/// (a 3.1/3.1.1 peer just gets its connection closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Violates the wire format (0x81).
    Malformed(&'static str),
    /// Well-formed but forbidden by the protocol (0x82).
    Protocol(&'static str),
    /// Remaining length above the configured maximum (0x95).
    TooLarge { size: usize, max: usize },
    /// CONNECT with an unknown protocol level (v3 return code 0x01, v5 0x84).
    UnsupportedVersion(u8),
    /// CONNECT whose protocol name is not MQTT/MQIsdp: close without answering.
    BadProtocolName,
}

impl DecodeError {
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) | DecodeError::BadProtocolName => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedVersion(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Malformed(what) => write!(f, "malformed packet: {what}"),
            DecodeError::Protocol(what) => write!(f, "protocol error: {what}"),
            DecodeError::TooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            DecodeError::UnsupportedVersion(level) => {
                write!(f, "unsupported protocol level {level}")
            }
            DecodeError::BadProtocolName => write!(f, "unknown protocol name in CONNECT"),
        }
    }
}

impl std::error::Error for DecodeError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string or binary field longer than 65,535 bytes.
    FieldTooLong,
    /// Remaining length above 268,435,455.
    PacketTooLarge,
    /// A value outside its wire range (subscription identifier 0 or above 268,435,455).
    ValueOutOfRange,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::FieldTooLong => write!(f, "string or binary field over 65535 bytes"),
            EncodeError::PacketTooLarge => write!(f, "packet over the MQTT size limit"),
            EncodeError::ValueOutOfRange => write!(f, "value outside its wire range"),
        }
    }
}

impl std::error::Error for EncodeError {}
