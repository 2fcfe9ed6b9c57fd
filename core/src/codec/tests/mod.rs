//! Unit tests for the codec: framing, the strictness rules of MQTT 3.1, 3.1.1 and 5.0, and
//! byte-exact vectors for well-known packets.

use bytes::{Bytes, BytesMut};

use super::*;

const BEFORE_CONNECT: Option<ProtocolVersion> = None;
const V31: Option<ProtocolVersion> = Some(ProtocolVersion::V31);
const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

mod encode;
mod framing;
mod packets;
mod properties;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn decode_with(
    bytes: &[u8],
    version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode_packet(&mut buf, version, limits)
}

fn decode(bytes: &[u8], version: Option<ProtocolVersion>) -> Result<Option<Packet>, DecodeError> {
    decode_with(bytes, version, &DecodeLimits::default())
}

/// Decodes exactly one whole packet and checks that every byte was consumed.
#[track_caller]
fn decode_one(bytes: &[u8], version: Option<ProtocolVersion>) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = match decode_packet(&mut buf, version, &DecodeLimits::default()) {
        Ok(Some(p)) => p,
        Ok(None) => panic!("decoding {bytes:02x?}: incomplete"),
        Err(e) => panic!("decoding {bytes:02x?}: {e}"),
    };
    assert!(buf.is_empty(), "{} bytes left after {packet:?}", buf.len());
    packet
}

/// Encodes and checks `encoded_len` agrees with the bytes written.
#[track_caller]
fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_packet(packet, version, &mut out).unwrap();
    assert_eq!(
        out.len(),
        encoded_len(packet, version),
        "encoded_len of {packet:?}"
    );
    out.to_vec()
}

/// A whole packet: `first`, the remaining length of `body`, then `body`.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// An MQTT string or binary field: two length bytes, then the bytes.
fn field(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(data);
    out
}

/// Concatenates byte pieces.
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Splits an encoded packet into its first byte and body.
fn split(bytes: &[u8]) -> (u8, Vec<u8>) {
    let (first, rl, hl) = peek_fixed_header(bytes).unwrap().unwrap();
    assert_eq!(bytes.len(), hl + rl);
    (first, bytes[hl..].to_vec())
}

#[track_caller]
fn assert_malformed(result: Result<Option<Packet>, DecodeError>) {
    assert!(
        matches!(result, Err(DecodeError::Malformed(_))),
        "expected Malformed, got {result:?}"
    );
}

#[track_caller]
fn assert_protocol(result: Result<Option<Packet>, DecodeError>) {
    assert!(
        matches!(result, Err(DecodeError::Protocol(_))),
        "expected Protocol, got {result:?}"
    );
}

fn props() -> Properties {
    Properties::default()
}

fn v311_connect_full() -> Connect {
    Connect {
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 30,
        properties: props(),
        client_id: "cid".into(),
        will: Some(Will {
            topic: "w/top".into(),
            payload: Bytes::from_static(b"bye!"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props(),
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"pwd")),
    }
}

fn v5_connect_full() -> Connect {
    Connect {
        version: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: 0,
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(10),
            user_properties: vec![("k".into(), "v".into())],
            ..props()
        },
        client_id: "dev-1".into(),
        will: Some(Will {
            topic: "dev/1/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::ExactlyOnce,
            retain: false,
            properties: Properties {
                will_delay_interval: Some(5),
                content_type: Some("text/plain".into()),
                ..props()
            },
        }),
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"s3cret")),
    }
}

fn v5_publish_with_props() -> Publish {
    Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: "a/b".into(),
        packet_id: Some(7),
        properties: Properties {
            message_expiry_interval: Some(60),
            topic_alias: Some(3),
            subscription_identifiers: vec![1, 300],
            ..props()
        },
        payload: Bytes::new(),
    }
}
