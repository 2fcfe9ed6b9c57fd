//! Reason codes: the MQTT v5 reason codes the broker uses, and the 3.1/3.1.1 CONNACK return
//! codes, as one typed byte.

use std::fmt;

/// An MQTT v5 reason code, or a 3.1/3.1.1 CONNACK return code: the byte on the wire. Below
/// 0x80 it reports success (a granted QoS too), from 0x80 on a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// 0x80 and above (v5 §2.4).
    pub fn is_error(self) -> bool {
        self.0 >= 0x80
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> u8 {
        code.0
    }
}

impl From<u8> for ReasonCode {
    fn from(byte: u8) -> ReasonCode {
        ReasonCode(byte)
    }
}

/// Compares with the byte on the wire, as tests and tools read codes.
impl PartialEq<u8> for ReasonCode {
    fn eq(&self, byte: &u8) -> bool {
        self.0 == *byte
    }
}

impl fmt::LowerHex for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x}", self.0)
    }
}

pub const SUCCESS: ReasonCode = ReasonCode(0x00);
pub const GRANTED_QOS_1: ReasonCode = ReasonCode(0x01);
pub const GRANTED_QOS_2: ReasonCode = ReasonCode(0x02);
pub const DISCONNECT_WITH_WILL: ReasonCode = ReasonCode(0x04);
pub const NO_MATCHING_SUBSCRIBERS: ReasonCode = ReasonCode(0x10);
pub const NO_SUBSCRIPTION_EXISTED: ReasonCode = ReasonCode(0x11);
pub const UNSPECIFIED_ERROR: ReasonCode = ReasonCode(0x80);
pub const MALFORMED_PACKET: ReasonCode = ReasonCode(0x81);
pub const PROTOCOL_ERROR: ReasonCode = ReasonCode(0x82);
pub const IMPLEMENTATION_SPECIFIC: ReasonCode = ReasonCode(0x83);
pub const UNSUPPORTED_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x84);
pub const CLIENT_ID_NOT_VALID: ReasonCode = ReasonCode(0x85);
pub const BAD_USERNAME_OR_PASSWORD: ReasonCode = ReasonCode(0x86);
pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x87);
pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x88);
pub const SERVER_BUSY: ReasonCode = ReasonCode(0x89);
pub const SERVER_SHUTTING_DOWN: ReasonCode = ReasonCode(0x8B);
pub const BAD_AUTH_METHOD: ReasonCode = ReasonCode(0x8C);
pub const KEEP_ALIVE_TIMEOUT: ReasonCode = ReasonCode(0x8D);
pub const SESSION_TAKEN_OVER: ReasonCode = ReasonCode(0x8E);
pub const TOPIC_FILTER_INVALID: ReasonCode = ReasonCode(0x8F);
pub const TOPIC_NAME_INVALID: ReasonCode = ReasonCode(0x90);
pub const PACKET_ID_NOT_FOUND: ReasonCode = ReasonCode(0x92);
pub const RECEIVE_MAXIMUM_EXCEEDED: ReasonCode = ReasonCode(0x93);
pub const TOPIC_ALIAS_INVALID: ReasonCode = ReasonCode(0x94);
pub const PACKET_TOO_LARGE: ReasonCode = ReasonCode(0x95);
pub const QUOTA_EXCEEDED: ReasonCode = ReasonCode(0x97);
pub const ADMINISTRATIVE_ACTION: ReasonCode = ReasonCode(0x98);
pub const PAYLOAD_FORMAT_INVALID: ReasonCode = ReasonCode(0x99);
pub const QOS_NOT_SUPPORTED: ReasonCode = ReasonCode(0x9B);
pub const USE_ANOTHER_SERVER: ReasonCode = ReasonCode(0x9C);

/// 3.1/3.1.1 CONNACK return codes.
pub mod v3 {
    use super::ReasonCode;

    pub const ACCEPTED: ReasonCode = ReasonCode(0x00);
    pub const UNACCEPTABLE_PROTOCOL_VERSION: ReasonCode = ReasonCode(0x01);
    pub const IDENTIFIER_REJECTED: ReasonCode = ReasonCode(0x02);
    pub const SERVER_UNAVAILABLE: ReasonCode = ReasonCode(0x03);
    pub const BAD_USERNAME_OR_PASSWORD: ReasonCode = ReasonCode(0x04);
    pub const NOT_AUTHORIZED: ReasonCode = ReasonCode(0x05);
}

/// The 3.1.1 CONNACK return code that best matches a v5 CONNACK reason code.
pub fn connack_code_for_v3(v5: ReasonCode) -> ReasonCode {
    match v5 {
        SUCCESS => v3::ACCEPTED,
        UNSUPPORTED_PROTOCOL_VERSION => v3::UNACCEPTABLE_PROTOCOL_VERSION,
        CLIENT_ID_NOT_VALID => v3::IDENTIFIER_REJECTED,
        BAD_USERNAME_OR_PASSWORD => v3::BAD_USERNAME_OR_PASSWORD,
        NOT_AUTHORIZED => v3::NOT_AUTHORIZED,
        _ => v3::SERVER_UNAVAILABLE,
    }
}
