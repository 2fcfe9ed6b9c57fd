//! MQTT 3.1, 3.1.1 and 5.0 packet codec.
//!
//! Decoding is streaming: [`decode_packet`] looks at the bytes received so far and either
//! returns a whole packet, asks for more bytes, or reports an error with the v5 reason code the
//! broker must answer with. The remaining length is checked against the maximum packet size
//! from the fixed header, before anything is buffered for the body.

mod decode;
mod encode;
mod error;
mod packet;
mod properties;
pub mod reason;
mod wire;

pub use decode::{DecodeLimits, connect_protocol_level, decode_packet, peek_fixed_header};
pub use encode::{PublishRef, encode_packet, encoded_len};
pub use error::{DecodeError, EncodeError};
pub use packet::{
    Ack, ConnAck, Connect, Packet, ProtocolVersion, Publish, QoS, ReasonOnly, SubAck, Subscribe,
    SubscriptionOptions, UnsubAck, Unsubscribe, Will,
};
pub use properties::Properties;
pub(crate) use properties::PropertyContext;
pub use reason::ReasonCode;
pub(crate) use wire::{Reader, put_str};

#[cfg(test)]
mod tests;
