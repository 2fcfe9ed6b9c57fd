//! Unit tests for the codec: framing, the strictness rules of MQTT 3.1, 3.1.1 and 5.0, and
//! byte-exact vectors for well-known packets.

use bytes::{Bytes, BytesMut};

use super::*;

const BEFORE_CONNECT: Option<ProtocolVersion> = None;
const V31: Option<ProtocolVersion> = Some(ProtocolVersion::V31);
const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V311);
const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);

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

// ---------------------------------------------------------------------------------------------
// Fixed header and remaining length
// ---------------------------------------------------------------------------------------------

#[test]
fn peek_fixed_header_reports_header_once_complete() {
    assert_eq!(peek_fixed_header(&[]), Ok(None));
    assert_eq!(peek_fixed_header(&[0x30]), Ok(None));
    assert_eq!(peek_fixed_header(&[0x30, 0x80]), Ok(None));
    assert_eq!(peek_fixed_header(&[0x30, 0x05]), Ok(Some((0x30, 5, 2))));
    assert_eq!(
        peek_fixed_header(&[0x30, 0x80, 0x01]),
        Ok(Some((0x30, 128, 3)))
    );
    assert_eq!(
        peek_fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
        Ok(Some((0x30, 268_435_455, 5)))
    );
    assert_eq!(peek_fixed_header(&[0x30, 0x80, 0x80, 0x80]), Ok(None));
}

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    assert!(matches!(
        peek_fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        Err(DecodeError::Malformed(_))
    ));
    // The fifth length byte need not even have arrived: four continuation bits are enough.
    assert_malformed(decode(&[0x30, 0x80, 0x80, 0x80, 0x80], V5));
    assert_malformed(decode(
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        BEFORE_CONNECT,
    ));
}

#[test]
fn non_minimal_remaining_length_is_malformed() {
    // 0 written in two bytes, 127 in two bytes, 128 in three bytes.
    for bytes in [
        &[0xC0, 0x80, 0x00][..],
        &[0x30, 0xFF, 0x00],
        &[0x30, 0x80, 0x81, 0x00],
        &[0x30, 0x80, 0x80, 0x80, 0x00],
    ] {
        assert!(
            matches!(peek_fixed_header(bytes), Err(DecodeError::Malformed(_))),
            "{bytes:02x?}"
        );
        assert_malformed(decode(bytes, V311));
    }
}

#[test]
fn remaining_length_boundaries_round_trip() {
    let limits = DecodeLimits {
        max_packet_size: 4 * 1024 * 1024,
        ..DecodeLimits::default()
    };
    // A QoS 0 PUBLISH on topic "t" has 3 bytes before its payload.
    for (rl, header_len) in [
        (3, 2),
        (127, 2),
        (128, 3),
        (16_383, 3),
        (16_384, 4),
        (2_097_151, 4),
        (2_097_152, 5),
    ] {
        let packet = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: props(),
            payload: Bytes::from(vec![0xA5; rl - 3]),
        });
        let bytes = encode(&packet, ProtocolVersion::V311);
        assert_eq!(bytes.len(), header_len + rl, "RL {rl}");
        assert_eq!(peek_fixed_header(&bytes), Ok(Some((0x30, rl, header_len))));
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decode_packet(&mut buf, V311, &limits), Ok(Some(packet)));
        assert!(buf.is_empty());
    }
}

#[test]
fn oversized_packet_rejected_from_fixed_header_before_body_arrives() {
    let limits = DecodeLimits {
        max_packet_size: 1024,
        ..DecodeLimits::default()
    };
    // PUBLISH with a remaining length of 16384: only the fixed header has arrived.
    assert_eq!(
        decode_with(&[0x30, 0x80, 0x80, 0x01], V5, &limits),
        Err(DecodeError::TooLarge {
            size: 16_388,
            max: 1024
        })
    );
    // The largest possible remaining length, announced by a CONNECT.
    assert_eq!(
        decode_with(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F], BEFORE_CONNECT, &limits),
        Err(DecodeError::TooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    // With the default limit of 1 MiB a header announcing 2 MiB is refused the same way.
    assert!(matches!(
        decode(&[0x32, 0x80, 0x80, 0x80, 0x01], V311),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn packet_exactly_at_size_limit_is_accepted() {
    let body = cat(&[&field(b"t"), &[0u8; 5]]);
    let bytes = frame(0x30, &body); // 2 + 8 = 10 bytes
    assert_eq!(bytes.len(), 10);
    let at = DecodeLimits {
        max_packet_size: 10,
        ..DecodeLimits::default()
    };
    assert!(matches!(decode_with(&bytes, V311, &at), Ok(Some(_))));
    let below = DecodeLimits {
        max_packet_size: 9,
        ..DecodeLimits::default()
    };
    assert_eq!(
        decode_with(&bytes, V311, &below),
        Err(DecodeError::TooLarge { size: 10, max: 9 })
    );
}

// ---------------------------------------------------------------------------------------------
// Packet types, ordering and fixed-header flags
// ---------------------------------------------------------------------------------------------

#[test]
fn first_packet_must_be_connect() {
    for bytes in [
        &[0xC0, 0x00][..],
        &[0x30, 0x03, 0x00, 0x01, 0x61],
        &[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0x61, 0x00],
        &[0xE0, 0x00],
        &[0xF0, 0x00],
        &[0x00, 0x00],
    ] {
        assert_protocol(decode(bytes, BEFORE_CONNECT));
    }
    // Refused from the fixed header alone: no body is waited for.
    assert_protocol(decode(&[0x30, 0x7F], BEFORE_CONNECT));
}

#[test]
fn second_connect_is_protocol_error() {
    let bytes = encode(
        &Packet::Connect(Box::new(v311_connect_full())),
        ProtocolVersion::V311,
    );
    assert!(matches!(decode(&bytes, BEFORE_CONNECT), Ok(Some(_))));
    for version in [V31, V311, V5] {
        assert_protocol(decode(&bytes, version));
    }
}

#[test]
fn reserved_packet_type_zero_is_malformed() {
    for version in [V31, V311, V5] {
        assert_malformed(decode(&[0x00, 0x00], version));
        assert_malformed(decode(&[0x00, 0x02, 0x00, 0x01], version));
    }
}

#[test]
fn auth_is_malformed_in_v311() {
    assert_malformed(decode(&[0xF0, 0x00], V311));
    assert_malformed(decode(&[0xF0, 0x00], V31));
    assert_malformed(decode(&[0xF0, 0x02, 0x18, 0x00], V311));
    assert_eq!(
        decode(&[0xF0, 0x00], V5),
        Ok(Some(Packet::Auth(ReasonOnly::default())))
    );
}

#[test]
fn reserved_flag_bits_rejected() {
    // (packet type, required flags, a valid v5 body)
    let cases: [(u8, u8, Vec<u8>); 13] = [
        (2, 0, vec![0x00, 0x00, 0x00]),
        (4, 0, vec![0x00, 0x01]),
        (5, 0, vec![0x00, 0x01]),
        (6, 2, vec![0x00, 0x01]),
        (7, 0, vec![0x00, 0x01]),
        (8, 2, cat(&[&[0x00, 0x01, 0x00], &field(b"a"), &[0x00]])),
        (9, 0, vec![0x00, 0x01, 0x00, 0x00]),
        (10, 2, cat(&[&[0x00, 0x01, 0x00], &field(b"a")])),
        (11, 0, vec![0x00, 0x01, 0x00, 0x00]),
        (12, 0, vec![]),
        (13, 0, vec![]),
        (14, 0, vec![]),
        (15, 0, vec![]),
    ];
    for (kind, required, body) in cases {
        for flags in 0..16u8 {
            let bytes = frame(kind << 4 | flags, &body);
            let result = decode(&bytes, V5);
            if flags == required {
                assert!(matches!(result, Ok(Some(_))), "{bytes:02x?}: {result:?}");
            } else {
                assert_malformed(result);
            }
        }
    }
    // v3.1.1 has the same rules for the packets it shares.
    for (kind, required, body) in [
        (6u8, 2u8, vec![0x00, 0x01]),
        (8, 2, cat(&[&[0x00, 0x01], &field(b"a"), &[0x00]])),
        (10, 2, cat(&[&[0x00, 0x01], &field(b"a")])),
        (12, 0, vec![]),
        (14, 0, vec![]),
    ] {
        for flags in 0..16u8 {
            let result = decode(&frame(kind << 4 | flags, &body), V311);
            if flags == required {
                assert!(matches!(result, Ok(Some(_))), "{result:?}");
            } else {
                assert_malformed(result);
            }
        }
    }
    // CONNECT's flags must be zero too.
    let connect = encode(
        &Packet::Connect(Box::new(v311_connect_full())),
        ProtocolVersion::V311,
    );
    for flags in 1..16u8 {
        let mut bytes = connect.clone();
        bytes[0] = 0x10 | flags;
        assert_malformed(decode(&bytes, BEFORE_CONNECT));
    }
}

// ---------------------------------------------------------------------------------------------
// PUBLISH and packet identifiers
// ---------------------------------------------------------------------------------------------

#[test]
fn qos3_publish_is_malformed() {
    let body = cat(&[&field(b"a"), &[0x00, 0x01]]);
    for first in [0x36, 0x37, 0x3E, 0x3F] {
        assert_malformed(decode(&frame(first, &body), V311));
        assert_malformed(decode(&frame(first, &cat(&[&body, &[0x00]])), V5));
    }
}

#[test]
fn dup_on_qos0_is_malformed() {
    assert_malformed(decode(&frame(0x38, &field(b"a")), V311));
    assert_malformed(decode(&frame(0x39, &cat(&[&field(b"a"), &[0x00]])), V5));
    // DUP on QoS 1 and 2 is fine.
    for (first, qos) in [(0x3A, QoS::AtLeastOnce), (0x3C, QoS::ExactlyOnce)] {
        let packet = decode_one(&frame(first, &cat(&[&field(b"a"), &[0x00, 0x01]])), V311);
        assert_eq!(
            packet,
            Packet::Publish(Publish {
                dup: true,
                qos,
                retain: false,
                topic: "a".into(),
                packet_id: Some(1),
                properties: props(),
                payload: Bytes::new(),
            })
        );
    }
}

#[test]
fn packet_id_zero_is_protocol_error() {
    let v311_cases = [
        frame(0x32, &cat(&[&field(b"a"), &[0x00, 0x00]])),
        frame(0x34, &cat(&[&field(b"a"), &[0x00, 0x00]])),
        vec![0x40, 0x02, 0x00, 0x00],
        vec![0x50, 0x02, 0x00, 0x00],
        vec![0x62, 0x02, 0x00, 0x00],
        vec![0x70, 0x02, 0x00, 0x00],
        frame(0x82, &cat(&[&[0x00, 0x00], &field(b"a"), &[0x00]])),
        vec![0x90, 0x03, 0x00, 0x00, 0x00],
        frame(0xA2, &cat(&[&[0x00, 0x00], &field(b"a")])),
        vec![0xB0, 0x02, 0x00, 0x00],
    ];
    for bytes in &v311_cases {
        assert_protocol(decode(bytes, V311));
    }
    let v5_cases = [
        frame(0x32, &cat(&[&field(b"a"), &[0x00, 0x00, 0x00]])),
        vec![0x40, 0x02, 0x00, 0x00],
        vec![0x40, 0x04, 0x00, 0x00, 0x10, 0x00],
        frame(0x82, &cat(&[&[0x00, 0x00, 0x00], &field(b"a"), &[0x00]])),
        frame(0xA2, &cat(&[&[0x00, 0x00, 0x00], &field(b"a")])),
    ];
    for bytes in &v5_cases {
        assert_protocol(decode(bytes, V5));
    }
}

#[test]
fn qos0_publish_has_no_packet_id() {
    // The two bytes after the topic are payload, not a packet identifier.
    let packet = decode_one(&frame(0x30, &cat(&[&field(b"a"), &[0x00, 0x00]])), V311);
    assert_eq!(
        packet,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a".into(),
            packet_id: None,
            properties: props(),
            payload: Bytes::from_static(&[0, 0]),
        })
    );
}

#[test]
fn empty_topic_and_empty_payload_decode() {
    // A zero-length topic is a codec-level valid string (v5 uses it with a topic alias).
    let packet = decode_one(&[0x30, 0x03, 0x00, 0x00, 0x00], V5);
    assert!(matches!(packet, Packet::Publish(ref p) if p.topic.is_empty() && p.payload.is_empty()));
}

// ---------------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_utf8_topic_is_malformed() {
    for bad in [
        &[0xC3, 0x28][..],         // bad continuation byte
        &[0xED, 0xA0, 0x80],       // UTF-16 surrogate U+D800
        &[0xC0, 0xAF],             // overlong '/'
        &[0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
        &[0xE2, 0x82],             // cut short
        &[0xFF],
    ] {
        assert_malformed(decode(&frame(0x30, &field(bad)), V311));
        assert_malformed(decode(&frame(0x30, &cat(&[&field(bad), &[0x00]])), V5));
        // Topic filters, user properties and the client identifier are checked the same way.
        assert_malformed(decode(
            &frame(0x82, &cat(&[&[0x00, 0x01], &field(bad), &[0x00]])),
            V311,
        ));
        assert_malformed(decode(
            &frame(0xA2, &cat(&[&[0x00, 0x01], &field(bad)])),
            V311,
        ));
        let user_prop = cat(&[&[0x26], &field(b"k"), &field(bad)]);
        assert_malformed(decode(
            &frame(
                0x30,
                &cat(&[&field(b"t"), &[user_prop.len() as u8], &user_prop]),
            ),
            V5,
        ));
        let connect = cat(&[&field(b"MQTT"), &[0x04, 0x02, 0x00, 0x3C], &field(bad)]);
        assert_malformed(decode(&frame(0x10, &connect), BEFORE_CONNECT));
    }
    // Well-formed multi-byte UTF-8 is fine.
    let packet = decode_one(&frame(0x30, &field("häuser/€/𝄞".as_bytes())), V311);
    assert!(matches!(packet, Packet::Publish(p) if p.topic == "häuser/€/𝄞"));
}

#[test]
fn nul_in_string_is_malformed() {
    assert_malformed(decode(&frame(0x30, &field(b"a\0")), V311));
    assert_malformed(decode(&frame(0x30, &field(b"\0")), V311));
    assert_malformed(decode(
        &frame(0x82, &cat(&[&[0x00, 0x01], &field(b"a/\0/b"), &[0x00]])),
        V311,
    ));
    let connect = cat(&[&field(b"MQTT"), &[0x04, 0x02, 0x00, 0x3C], &field(b"c\0")]);
    assert_malformed(decode(&frame(0x10, &connect), BEFORE_CONNECT));
    let user_prop = cat(&[&[0x26], &field(b"k\0"), &field(b"v")]);
    assert_malformed(decode(
        &frame(
            0x30,
            &cat(&[&field(b"t"), &[user_prop.len() as u8], &user_prop]),
        ),
        V5,
    ));
    // NUL in binary data (payloads, passwords, correlation data) is fine.
    let packet = decode_one(&frame(0x30, &cat(&[&field(b"t"), &[0x00, 0x00]])), V311);
    assert!(matches!(packet, Packet::Publish(p) if p.payload[..] == [0, 0]));
}

// ---------------------------------------------------------------------------------------------
// Truncated packets and trailing bytes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cut {
    /// A shorter but complete packet (e.g. a v5 ack without its optional tail).
    Valid,
    /// Well-formed, but breaks a protocol rule (e.g. SUBSCRIBE without filters).
    Protocol,
}

/// The version to decode with, a valid packet, and the cuts that are not Malformed.
type TruncationCase = (Option<ProtocolVersion>, Vec<u8>, Vec<(usize, Cut)>);

#[test]
fn truncated_packets_are_malformed() {
    let full_subscribe = Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties: Properties {
            subscription_identifiers: vec![42],
            ..props()
        },
        filters: vec![(
            "a/+/c".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: false,
                retain_handling: 1,
            },
        )],
    });
    let sub_props_end = 2 + 1 + 2; // packet id, property length, subscription identifier
    let unsubscribe = Packet::Unsubscribe(Unsubscribe {
        packet_id: 9,
        properties: Properties {
            user_properties: vec![("a".into(), "b".into())],
            ..props()
        },
        filters: vec!["x/y".into()],
    });
    let unsub_props_end = 2 + 1 + 7;
    let ack = Packet::PubRec(Ack {
        packet_id: 5,
        reason: reason::QUOTA_EXCEEDED,
        properties: Properties {
            reason_string: Some("full".into()),
            ..props()
        },
    });
    let disconnect = Packet::Disconnect(ReasonOnly {
        reason: reason::SERVER_SHUTTING_DOWN,
        properties: Properties {
            server_reference: Some("other".into()),
            ..props()
        },
    });
    let v3_publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "a/b".into(),
        packet_id: Some(10),
        properties: props(),
        payload: Bytes::new(),
    });
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        properties: Properties {
            assigned_client_identifier: Some("auto-1".into()),
            maximum_qos: Some(1),
            ..props()
        },
    });
    let mut v31_connect = v311_connect_full();
    v31_connect.version = ProtocolVersion::V31;

    let cases: Vec<TruncationCase> = vec![
        (
            BEFORE_CONNECT,
            encode(
                &Packet::Connect(Box::new(v311_connect_full())),
                ProtocolVersion::V311,
            ),
            vec![],
        ),
        (
            BEFORE_CONNECT,
            encode(
                &Packet::Connect(Box::new(v31_connect)),
                ProtocolVersion::V31,
            ),
            vec![],
        ),
        (
            BEFORE_CONNECT,
            encode(
                &Packet::Connect(Box::new(v5_connect_full())),
                ProtocolVersion::V5,
            ),
            vec![],
        ),
        (V311, encode(&v3_publish, ProtocolVersion::V311), vec![]),
        (
            V5,
            encode(
                &Packet::Publish(v5_publish_with_props()),
                ProtocolVersion::V5,
            ),
            vec![],
        ),
        (V5, encode(&connack, ProtocolVersion::V5), vec![]),
        (V311, encode(&connack, ProtocolVersion::V311), vec![]),
        (
            V5,
            encode(&full_subscribe, ProtocolVersion::V5),
            vec![(sub_props_end, Cut::Protocol)],
        ),
        (
            V311,
            encode(&full_subscribe, ProtocolVersion::V311),
            vec![(2, Cut::Protocol)],
        ),
        (
            V5,
            encode(&unsubscribe, ProtocolVersion::V5),
            vec![(unsub_props_end, Cut::Protocol)],
        ),
        (
            V5,
            encode(&ack, ProtocolVersion::V5),
            vec![(2, Cut::Valid), (3, Cut::Valid)],
        ),
        (V311, encode(&ack, ProtocolVersion::V311), vec![]),
        (
            V5,
            encode(&disconnect, ProtocolVersion::V5),
            vec![(0, Cut::Valid), (1, Cut::Valid)],
        ),
        (
            V5,
            encode(
                &Packet::SubAck(SubAck {
                    packet_id: 3,
                    properties: props(),
                    reasons: vec![0x01],
                }),
                ProtocolVersion::V5,
            ),
            vec![(3, Cut::Protocol)],
        ),
    ];
    for (version, bytes, exceptions) in cases {
        let full = decode_one(&bytes, version);
        let (first, body) = split(&bytes);
        for cut in 0..body.len() {
            let truncated = frame(first, &body[..cut]);
            let result = decode(&truncated, version);
            match exceptions
                .iter()
                .find(|(at, _)| *at == cut)
                .map(|(_, c)| *c)
            {
                None => assert!(
                    matches!(result, Err(DecodeError::Malformed(_))),
                    "{} cut to {cut} of {}: {result:?}",
                    full.kind(),
                    body.len()
                ),
                Some(Cut::Protocol) => assert_protocol(result),
                Some(Cut::Valid) => match result {
                    Ok(Some(p)) => assert_ne!(p, full),
                    other => panic!("{} cut to {cut}: {other:?}", full.kind()),
                },
            }
        }
    }
}

#[test]
fn incomplete_packet_waits_and_consumes_nothing() {
    let bytes = encode(
        &Packet::Connect(Box::new(v5_connect_full())),
        ProtocolVersion::V5,
    );
    for len in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..len]);
        assert_eq!(
            decode_packet(&mut buf, BEFORE_CONNECT, &DecodeLimits::default()),
            Ok(None),
            "prefix of {len}"
        );
        assert_eq!(&buf[..], &bytes[..len], "prefix of {len} was consumed");
    }
    let publish = encode(
        &Packet::Publish(v5_publish_with_props()),
        ProtocolVersion::V5,
    );
    for len in 0..publish.len() {
        let mut buf = BytesMut::from(&publish[..len]);
        assert_eq!(
            decode_packet(&mut buf, V5, &DecodeLimits::default()),
            Ok(None)
        );
        assert_eq!(buf.len(), len);
    }
}

#[test]
fn trailing_bytes_are_malformed() {
    assert_malformed(decode(&[0xC0, 0x01, 0x00], V311));
    assert_malformed(decode(&[0xD0, 0x01, 0x00], V5));
    assert_malformed(decode(&[0x40, 0x03, 0x00, 0x01, 0x00], V311));
    assert_malformed(decode(&[0x62, 0x03, 0x00, 0x01, 0x00], V31));
    assert_malformed(decode(&[0xE0, 0x01, 0x00], V311));
    assert_malformed(decode(&[0x20, 0x03, 0x00, 0x00, 0x00], V311));
    assert_malformed(decode(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311));
    // v5: bytes after the property list of packets with no payload.
    assert_malformed(decode(&[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], V5));
    assert_malformed(decode(&[0xE0, 0x03, 0x00, 0x00, 0x00], V5));
    assert_malformed(decode(&[0x20, 0x04, 0x00, 0x00, 0x00, 0x00], V5));
    // CONNECT's flags account for every field, so anything after them is left over.
    for (version, connect) in [
        (ProtocolVersion::V311, v311_connect_full()),
        (ProtocolVersion::V5, v5_connect_full()),
    ] {
        let bytes = encode(&Packet::Connect(Box::new(connect)), version);
        let (first, body) = split(&bytes);
        assert_malformed(decode(
            &frame(first, &cat(&[&body, &[0x00]])),
            BEFORE_CONNECT,
        ));
    }
    // The next packet in the buffer is not trailing data: it is left for the next call.
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xC0, 0x00][..]);
    let limits = DecodeLimits::default();
    assert_eq!(
        decode_packet(&mut buf, V311, &limits),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(&buf[..], &[0xC0, 0x00]);
}

// ---------------------------------------------------------------------------------------------
// v5 properties
// ---------------------------------------------------------------------------------------------

/// A v5 QoS 0 PUBLISH to "t" with these raw property bytes.
fn v5_publish_with_raw_props(raw: &[u8]) -> Vec<u8> {
    let mut len = Vec::new();
    let mut n = raw.len();
    loop {
        let mut byte = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            byte |= 0x80;
        }
        len.push(byte);
        if n == 0 {
            break;
        }
    }
    frame(0x30, &cat(&[&field(b"t"), &len, raw]))
}

/// A v5 SUBSCRIBE (id 1, one filter "a") with these raw property bytes.
fn v5_subscribe_with_raw_props(raw: &[u8]) -> Vec<u8> {
    frame(
        0x82,
        &cat(&[&[0x00, 0x01, raw.len() as u8], raw, &field(b"a"), &[0x00]]),
    )
}

/// A v5 CONNECT (client id "c") with these raw CONNECT property bytes.
fn v5_connect_with_raw_props(raw: &[u8]) -> Vec<u8> {
    frame(
        0x10,
        &cat(&[
            &field(b"MQTT"),
            &[0x05, 0x02, 0x00, 0x3C, raw.len() as u8],
            raw,
            &field(b"c"),
        ]),
    )
}

#[test]
fn properties_decode_into_fields() {
    let raw = cat(&[
        &[0x01, 0x01],                   // payload format indicator
        &[0x02, 0x00, 0x00, 0x01, 0x00], // message expiry 256
        &[0x03],
        &field(b"json"),
        &[0x08],
        &field(b"reply/to"),
        &[0x09],
        &field(&[0x00, 0xFF]),
        &[0x0B, 0x80, 0x01], // subscription identifier 128
        &[0x0B, 0x02],
        &[0x23, 0x00, 0x07], // topic alias
        &[0x26],
        &field(b"k"),
        &field(b"v1"),
        &[0x26],
        &field(b"k"),
        &field(b"v2"),
    ]);
    let packet = decode_one(&v5_publish_with_raw_props(&raw), V5);
    let Packet::Publish(p) = packet else {
        panic!("{packet:?}")
    };
    assert_eq!(
        p.properties,
        Properties {
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(256),
            content_type: Some("json".into()),
            response_topic: Some("reply/to".into()),
            correlation_data: Some(Bytes::from_static(&[0x00, 0xFF])),
            subscription_identifiers: vec![128, 2],
            topic_alias: Some(7),
            user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            ..props()
        }
    );
}

#[test]
fn duplicate_property_is_protocol_error() {
    let expiry = [0x02, 0x00, 0x00, 0x00, 0x01];
    assert_protocol(decode(
        &v5_publish_with_raw_props(&cat(&[&expiry, &expiry])),
        V5,
    ));
    assert_protocol(decode(
        &v5_publish_with_raw_props(&[0x23, 0x00, 0x01, 0x23, 0x00, 0x02]),
        V5,
    ));
    // Subscription identifier: at most one in SUBSCRIBE, any number in PUBLISH.
    assert_protocol(decode(
        &v5_subscribe_with_raw_props(&[0x0B, 0x01, 0x0B, 0x02]),
        V5,
    ));
    assert!(matches!(
        decode(&v5_publish_with_raw_props(&[0x0B, 0x01, 0x0B, 0x02]), V5),
        Ok(Some(_))
    ));
    assert_protocol(decode(
        &v5_connect_with_raw_props(&[0x21, 0x00, 0x01, 0x21, 0x00, 0x01]),
        BEFORE_CONNECT,
    ));
    let method = cat(&[&[0x15], &field(b"m")]);
    assert_protocol(decode(
        &frame(
            0xF0,
            &cat(&[&[0x18, (2 * method.len()) as u8], &method, &method]),
        ),
        V5,
    ));
    // User properties may repeat, even with the same key and value.
    let user = cat(&[&[0x26], &field(b"k"), &field(b"v")]);
    assert!(matches!(
        decode(&v5_publish_with_raw_props(&cat(&[&user, &user])), V5),
        Ok(Some(_))
    ));
}

#[test]
fn property_not_allowed_in_packet_is_malformed() {
    // Topic alias in SUBSCRIBE.
    assert_malformed(decode(
        &v5_subscribe_with_raw_props(&[0x23, 0x00, 0x01]),
        V5,
    ));
    // Session expiry in PUBLISH.
    assert_malformed(decode(
        &v5_publish_with_raw_props(&[0x11, 0x00, 0x00, 0x00, 0x01]),
        V5,
    ));
    // Will delay interval in the CONNECT properties (it belongs to the will properties).
    assert_malformed(decode(
        &v5_connect_with_raw_props(&[0x18, 0x00, 0x00, 0x00, 0x01]),
        BEFORE_CONNECT,
    ));
    // Assigned client identifier (CONNACK only) in CONNECT.
    assert_malformed(decode(
        &v5_connect_with_raw_props(&cat(&[&[0x12], &field(b"x")])),
        BEFORE_CONNECT,
    ));
    // Reason string in PUBLISH, in UNSUBSCRIBE.
    assert_malformed(decode(
        &v5_publish_with_raw_props(&cat(&[&[0x1F], &field(b"x")])),
        V5,
    ));
    assert_malformed(decode(
        &frame(
            0xA2,
            &cat(&[&[0x00, 0x01, 0x04, 0x1F], &field(b"x"), &field(b"a")]),
        ),
        V5,
    ));
    // Subscription identifier in a PUBACK.
    assert_malformed(decode(
        &[0x40, 0x06, 0x00, 0x01, 0x00, 0x02, 0x0B, 0x01],
        V5,
    ));
    // Receive maximum in DISCONNECT.
    assert_malformed(decode(&[0xE0, 0x05, 0x00, 0x03, 0x21, 0x00, 0x01], V5));
    // Session expiry in AUTH.
    assert_malformed(decode(
        &[0xF0, 0x07, 0x18, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01],
        V5,
    ));
    // Will properties: no session expiry there.
    let connect = cat(&[
        &field(b"MQTT"),
        &[0x05, 0x06, 0x00, 0x00, 0x00],
        &field(b"c"),
        &[0x05, 0x11, 0x00, 0x00, 0x00, 0x01],
        &field(b"w"),
        &field(b""),
    ]);
    assert_malformed(decode(&frame(0x10, &connect), BEFORE_CONNECT));
}

#[test]
fn unknown_property_is_malformed() {
    for raw in [
        &[0x04, 0x00][..], // unassigned identifier
        &[0x00, 0x00],     // 0 is not a property
        &[0x2B, 0x00],     // one past the last assigned identifier
        &[0x7F, 0x00],
        &[0x80, 0x01, 0x00], // 128, a two-byte identifier
        &[0x81, 0x80, 0x01, 0x00],
    ] {
        assert_malformed(decode(&v5_publish_with_raw_props(raw), V5));
    }
}

#[test]
fn property_list_overrunning_its_packet_is_malformed() {
    // Property length 10, but only the two bytes of a topic alias id+half value follow.
    assert_malformed(decode(
        &frame(0x30, &cat(&[&field(b"t"), &[0x0A, 0x23, 0x00]])),
        V5,
    ));
    // A property value cut short by the property length, with the rest as payload.
    assert_malformed(decode(
        &frame(0x30, &cat(&[&field(b"t"), &[0x02, 0x23, 0x00, 0x07]])),
        V5,
    ));
    // Non-minimal variable byte integers in the body.
    assert_malformed(decode(
        &frame(0x30, &cat(&[&field(b"t"), &[0x80, 0x00]])),
        V5,
    ));
    assert_malformed(decode(&v5_publish_with_raw_props(&[0x0B, 0x81, 0x00]), V5));
}

#[test]
fn user_properties_over_limit_rejected() {
    let limits = DecodeLimits {
        max_user_properties: 2,
        ..DecodeLimits::default()
    };
    let user = cat(&[&[0x26], &field(b"k"), &field(b"v")]);
    let two = v5_publish_with_raw_props(&cat(&[&user, &user]));
    let three = v5_publish_with_raw_props(&cat(&[&user, &user, &user]));
    assert!(matches!(decode_with(&two, V5, &limits), Ok(Some(_))));
    let err = decode_with(&three, V5, &limits).unwrap_err();
    assert_eq!(err, DecodeError::TooLarge { size: 3, max: 2 });
    assert_eq!(err.reason_code(), reason::PACKET_TOO_LARGE);
    let connect = v5_connect_with_raw_props(&cat(&[&user, &user, &user]));
    assert!(matches!(
        decode_with(&connect, BEFORE_CONNECT, &limits),
        Err(DecodeError::TooLarge { .. })
    ));
    // v3 has no properties, so the limit never applies there.
    let no_users = DecodeLimits {
        max_user_properties: 0,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode_with(&frame(0x30, &field(b"t")), V311, &no_users),
        Ok(Some(_))
    ));
    assert_eq!(
        decode_with(&v5_publish_with_raw_props(&user), V5, &no_users),
        Err(DecodeError::TooLarge { size: 1, max: 0 })
    );
}

#[test]
fn subscription_identifier_zero_is_protocol_error() {
    assert_protocol(decode(&v5_subscribe_with_raw_props(&[0x0B, 0x00]), V5));
    assert_protocol(decode(&v5_publish_with_raw_props(&[0x0B, 0x00]), V5));
    // The largest identifier is accepted.
    let packet = decode_one(
        &v5_subscribe_with_raw_props(&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F]),
        V5,
    );
    assert!(
        matches!(packet, Packet::Subscribe(s) if s.properties.subscription_identifiers == [268_435_455])
    );
}

#[test]
fn receive_maximum_zero_is_protocol_error() {
    assert_protocol(decode(
        &v5_connect_with_raw_props(&[0x21, 0x00, 0x00]),
        BEFORE_CONNECT,
    ));
    assert_protocol(decode(
        &[0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x00],
        V5,
    ));
    // Maximum packet size 0 likewise.
    assert_protocol(decode(
        &v5_connect_with_raw_props(&[0x27, 0x00, 0x00, 0x00, 0x00]),
        BEFORE_CONNECT,
    ));
}

/// MQTT 5.0 §3.1.2.11.10: "It is a Protocol Error to include Authentication Data if there is
/// no Authentication Method."
#[test]
fn authentication_data_without_method_is_protocol_error() {
    let data = cat(&[&[0x16], &field(b"secret")]);
    assert_protocol(decode(&v5_connect_with_raw_props(&data), BEFORE_CONNECT));
}

#[test]
fn boolean_property_other_than_0_or_1_is_protocol_error() {
    assert_protocol(decode(&v5_publish_with_raw_props(&[0x01, 0x02]), V5));
    assert_protocol(decode(
        &v5_connect_with_raw_props(&[0x17, 0x02]),
        BEFORE_CONNECT,
    ));
    assert_protocol(decode(
        &v5_connect_with_raw_props(&[0x19, 0xFF]),
        BEFORE_CONNECT,
    ));
    for id in [0x24, 0x25, 0x28, 0x29, 0x2A] {
        assert_protocol(decode(&[0x20, 0x05, 0x00, 0x00, 0x02, id, 0x02], V5));
        assert!(matches!(
            decode(&[0x20, 0x05, 0x00, 0x00, 0x02, id, 0x01], V5),
            Ok(Some(_))
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------------------------

#[test]
fn subscribe_without_filters_is_protocol_error() {
    assert_protocol(decode(&[0x82, 0x02, 0x00, 0x01], V311));
    assert_protocol(decode(&[0x82, 0x03, 0x00, 0x01, 0x00], V5));
    assert_protocol(decode(&[0xA2, 0x02, 0x00, 0x01], V311));
    assert_protocol(decode(&[0xA2, 0x03, 0x00, 0x01, 0x00], V5));
    assert_protocol(decode(&[0x90, 0x02, 0x00, 0x01], V311));
    assert_protocol(decode(&[0x90, 0x03, 0x00, 0x01, 0x00], V5));
}

#[test]
fn subscription_options_reserved_bits_malformed() {
    let sub = |options: u8| frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &field(b"a"), &[options]]));
    let sub_v3 = |options: u8| frame(0x82, &cat(&[&[0x00, 0x01], &field(b"a"), &[options]]));
    for options in [0x40, 0x80, 0xC0, 0x41] {
        assert_malformed(decode(&sub(options), V5));
    }
    // In 3.1.1 everything above the QoS bits is reserved (MQTT-3.8.3-4).
    for options in [0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
        assert_malformed(decode(&sub_v3(options), V311));
        assert_malformed(decode(&sub_v3(options), V31));
    }
    // QoS 3 in 3.1.1 is malformed too.
    assert_malformed(decode(&sub_v3(0x03), V311));
    // Every v5 option combination decodes.
    let packet = decode_one(&sub(0x2D), V5);
    assert_eq!(
        packet,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: props(),
            filters: vec![(
                "a".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                }
            )],
        })
    );
}

#[test]
fn retain_handling_3_is_rejected() {
    let sub = |options: u8| frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &field(b"a"), &[options]]));
    for options in [0x30, 0x31, 0x3E] {
        assert!(decode(&sub(options), V5).is_err());
    }
    assert!(decode(&sub(0x03), V5).is_err());
}

/// MQTT 5.0 §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3" and "It is
/// a Protocol Error if the Maximum QoS field has the value 3". Only the reserved bits 6-7 make
/// the packet malformed (MQTT-3.8.3-5).
#[test]
fn retain_handling_3_and_subscription_qos_3_are_protocol_errors_in_v5() {
    let sub = |options: u8| frame(0x82, &cat(&[&[0x00, 0x01, 0x00], &field(b"a"), &[options]]));
    assert_protocol(decode(&sub(0x30), V5));
    assert_protocol(decode(&sub(0x03), V5));
}

#[test]
fn several_filters_keep_their_order() {
    let body = cat(&[
        &[0x00, 0x0B],
        &field(b"a/#"),
        &[0x02],
        &field(b"+/b"),
        &[0x00],
        &field(b"c"),
        &[0x01],
    ]);
    let packet = decode_one(&frame(0x82, &body), V311);
    let Packet::Subscribe(s) = packet else {
        panic!("{packet:?}")
    };
    let got: Vec<(&str, QoS)> = s.filters.iter().map(|(f, o)| (f.as_str(), o.qos)).collect();
    assert_eq!(
        got,
        [
            ("a/#", QoS::ExactlyOnce),
            ("+/b", QoS::AtMostOnce),
            ("c", QoS::AtLeastOnce)
        ]
    );
    // A filter cut off before its options byte.
    assert_malformed(decode(&frame(0x82, &body[..body.len() - 1]), V311));
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

/// A CONNECT body with the given protocol name, level and flags, then keep alive 60 and the
/// fields the flags ask for (v3 layout, no properties).
fn v3_connect_body(name: &[u8], level: u8, flags: u8) -> Vec<u8> {
    let mut body = cat(&[&field(name), &[level, flags, 0x00, 0x3C], &field(b"c")]);
    if flags & 0x04 != 0 {
        body.extend(field(b"w"));
        body.extend(field(b"x"));
    }
    if flags & 0x80 != 0 {
        body.extend(field(b"u"));
    }
    if flags & 0x40 != 0 {
        body.extend(field(b"p"));
    }
    body
}

#[test]
fn connect_reserved_flag_is_malformed() {
    for flags in [0x01, 0x03, 0xC3] {
        assert_malformed(decode(
            &frame(0x10, &v3_connect_body(b"MQTT", 4, flags)),
            BEFORE_CONNECT,
        ));
    }
    let v5 = cat(&[
        &field(b"MQTT"),
        &[0x05, 0x01, 0x00, 0x00, 0x00],
        &field(b"c"),
    ]);
    assert_malformed(decode(&frame(0x10, &v5), BEFORE_CONNECT));
}

#[test]
fn connect_will_qos_3_is_malformed() {
    // Will flag, QoS 3, clean session.
    assert_malformed(decode(
        &frame(0x10, &v3_connect_body(b"MQTT", 4, 0x1E)),
        BEFORE_CONNECT,
    ));
    let v5 = cat(&[
        &field(b"MQTT"),
        &[0x05, 0x1E, 0x00, 0x00, 0x00],
        &field(b"c"),
        &[0x00],
        &field(b"w"),
        &field(b"x"),
    ]);
    assert_malformed(decode(&frame(0x10, &v5), BEFORE_CONNECT));
}

#[test]
fn connect_will_qos_or_retain_without_will_flag_is_malformed() {
    for flags in [0x22, 0x0A, 0x12, 0x2A] {
        assert_malformed(decode(
            &frame(0x10, &v3_connect_body(b"MQTT", 4, flags)),
            BEFORE_CONNECT,
        ));
    }
}

#[test]
fn v3_password_without_username_is_malformed() {
    assert_malformed(decode(
        &frame(0x10, &v3_connect_body(b"MQTT", 4, 0x42)),
        BEFORE_CONNECT,
    ));
    assert_malformed(decode(
        &frame(0x10, &v3_connect_body(b"MQIsdp", 3, 0x42)),
        BEFORE_CONNECT,
    ));
    // v5 allows a password without a user name (§3.1.2.9).
    let v5 = cat(&[
        &field(b"MQTT"),
        &[0x05, 0x42, 0x00, 0x00, 0x00],
        &field(b"c"),
        &field(b"token"),
    ]);
    let packet = decode_one(&frame(0x10, &v5), BEFORE_CONNECT);
    let Packet::Connect(c) = packet else {
        panic!("{packet:?}")
    };
    assert_eq!(c.username, None);
    assert_eq!(c.password.as_deref(), Some(&b"token"[..]));
}

#[test]
fn connect_with_wrong_protocol_name_is_bad_protocol_name() {
    for name in [&b"MQTX"[..], b"mqtt", b"MQTT\0", b"", b"MQIsdpX", b"MQ"] {
        assert_eq!(
            decode(
                &frame(0x10, &v3_connect_body(name, 4, 0x02)),
                BEFORE_CONNECT
            ),
            Err(DecodeError::BadProtocolName),
            "{name:?}"
        );
    }
}

#[test]
fn connect_with_unknown_level_is_unsupported_version() {
    assert_eq!(
        decode(
            &frame(0x10, &v3_connect_body(b"MQTT", 6, 0x02)),
            BEFORE_CONNECT
        ),
        Err(DecodeError::UnsupportedVersion(6))
    );
    for (name, level) in [
        (&b"MQTT"[..], 3u8),
        (b"MQTT", 0),
        (b"MQTT", 0xFF),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
    ] {
        assert_eq!(
            decode(
                &frame(0x10, &v3_connect_body(name, level, 0x02)),
                BEFORE_CONNECT
            ),
            Err(DecodeError::UnsupportedVersion(level))
        );
    }
}

#[test]
fn mqisdp_level_3_is_accepted_as_v31() {
    let bytes = frame(0x10, &v3_connect_body(b"MQIsdp", 3, 0xC2));
    let packet = decode_one(&bytes, BEFORE_CONNECT);
    let expected = Connect {
        version: ProtocolVersion::V31,
        clean_start: true,
        keep_alive: 60,
        properties: props(),
        client_id: "c".into(),
        will: None,
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
    };
    assert_eq!(packet, Packet::Connect(Box::new(expected)));
    assert_eq!(encode(&packet, ProtocolVersion::V31), bytes);
}

#[test]
fn connect_fields_decode() {
    let packet = decode_one(
        &frame(0x10, &v3_connect_body(b"MQTT", 4, 0xEE)),
        BEFORE_CONNECT,
    );
    let expected = Connect {
        version: ProtocolVersion::V311,
        clean_start: true,
        keep_alive: 60,
        properties: props(),
        client_id: "c".into(),
        will: Some(Will {
            topic: "w".into(),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: props(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
    };
    assert_eq!(packet, Packet::Connect(Box::new(expected)));
}

#[test]
fn connect_round_trips_in_each_version() {
    let mut v31 = v311_connect_full();
    v31.version = ProtocolVersion::V31;
    for (version, connect) in [
        (ProtocolVersion::V31, v31),
        (ProtocolVersion::V311, v311_connect_full()),
        (ProtocolVersion::V5, v5_connect_full()),
    ] {
        let packet = Packet::Connect(Box::new(connect));
        // A CONNECT is always written in its own version, whatever the peer version says.
        let bytes = encode(&packet, version);
        for other in [
            ProtocolVersion::V31,
            ProtocolVersion::V311,
            ProtocolVersion::V5,
        ] {
            assert_eq!(encode(&packet, other), bytes);
        }
        assert_eq!(decode_one(&bytes, BEFORE_CONNECT), packet);
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// Decodes every packet from `chunks` fed one after the other, switching from "before CONNECT"
/// to the CONNECT's version once it is seen. Checks that nothing is consumed while waiting.
fn decode_stream<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Packet> {
    let limits = DecodeLimits::default();
    let mut buf = BytesMut::new();
    let mut version = None;
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone();
            match decode_packet(&mut buf, version, &limits).unwrap() {
                Some(packet) => {
                    if let Packet::Connect(c) = &packet {
                        version = Some(c.version);
                    }
                    out.push(packet);
                }
                None => {
                    assert_eq!(buf, before, "bytes consumed while incomplete");
                    break;
                }
            }
        }
    }
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    out
}

fn v5_session_packets() -> Vec<Packet> {
    vec![
        Packet::Connect(Box::new(v5_connect_full())),
        Packet::Publish(v5_publish_with_props()),
        Packet::Subscribe(Subscribe {
            packet_id: 2,
            properties: props(),
            filters: vec![("x/#".into(), SubscriptionOptions::default())],
        }),
        Packet::PingReq,
        Packet::PubAck(Ack {
            packet_id: 300,
            reason: 0,
            properties: props(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "big".into(),
            packet_id: None,
            properties: props(),
            payload: Bytes::from(vec![7; 300]),
        }),
        Packet::Disconnect(ReasonOnly::default()),
    ]
}

#[test]
fn byte_at_a_time_decodes_like_all_at_once() {
    let packets = v5_session_packets();
    let mut stream = Vec::new();
    for p in &packets {
        stream.extend(encode(p, ProtocolVersion::V5));
    }
    let at_once = decode_stream([&stream[..]]);
    assert_eq!(at_once, packets);
    let bytewise = decode_stream(stream.chunks(1));
    assert_eq!(bytewise, packets);
    for size in [2, 3, 7, 64] {
        assert_eq!(
            decode_stream(stream.chunks(size)),
            packets,
            "chunks of {size}"
        );
    }
}

#[test]
fn v311_stream_byte_at_a_time() {
    let packets = vec![
        Packet::Connect(Box::new(v311_connect_full())),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "t/1".into(),
            packet_id: Some(1),
            properties: props(),
            payload: Bytes::from_static(b"payload"),
        }),
        Packet::PubRel(Ack {
            packet_id: 1,
            ..Ack::default()
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            properties: props(),
            filters: vec!["a".into(), "b/+".into()],
        }),
        Packet::PingReq,
        Packet::Disconnect(ReasonOnly::default()),
    ];
    let mut stream = Vec::new();
    for p in &packets {
        stream.extend(encode(p, ProtocolVersion::V311));
    }
    assert_eq!(decode_stream(stream.chunks(1)), packets);
}

// ---------------------------------------------------------------------------------------------
// Reason codes
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_error_reason_codes() {
    assert_eq!(DecodeError::Malformed("x").reason_code(), 0x81);
    assert_eq!(DecodeError::BadProtocolName.reason_code(), 0x81);
    assert_eq!(DecodeError::Protocol("x").reason_code(), 0x82);
    assert_eq!(DecodeError::UnsupportedVersion(6).reason_code(), 0x84);
    assert_eq!(
        DecodeError::TooLarge { size: 2, max: 1 }.reason_code(),
        0x95
    );
    assert_eq!(reason::MALFORMED_PACKET, 0x81);
    assert_eq!(reason::PROTOCOL_ERROR, 0x82);
    assert_eq!(reason::UNSUPPORTED_PROTOCOL_VERSION, 0x84);
    assert_eq!(reason::PACKET_TOO_LARGE, 0x95);
    for e in [
        DecodeError::Malformed("what"),
        DecodeError::Protocol("what"),
        DecodeError::TooLarge { size: 2, max: 1 },
        DecodeError::UnsupportedVersion(9),
        DecodeError::BadProtocolName,
    ] {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn v3_connack_codes_map_from_v5_reasons() {
    use reason::v3;
    assert_eq!(reason::connack_code_for_v3(reason::SUCCESS), v3::ACCEPTED);
    assert_eq!(
        reason::connack_code_for_v3(reason::UNSUPPORTED_PROTOCOL_VERSION),
        v3::UNACCEPTABLE_PROTOCOL_VERSION
    );
    assert_eq!(
        reason::connack_code_for_v3(reason::CLIENT_ID_NOT_VALID),
        v3::IDENTIFIER_REJECTED
    );
    assert_eq!(
        reason::connack_code_for_v3(reason::BAD_USERNAME_OR_PASSWORD),
        v3::BAD_USERNAME_OR_PASSWORD
    );
    assert_eq!(
        reason::connack_code_for_v3(reason::NOT_AUTHORIZED),
        v3::NOT_AUTHORIZED
    );
    assert_eq!(
        reason::connack_code_for_v3(reason::SERVER_UNAVAILABLE),
        v3::SERVER_UNAVAILABLE
    );
    assert_eq!(
        reason::connack_code_for_v3(reason::MALFORMED_PACKET),
        v3::SERVER_UNAVAILABLE
    );
}

// ---------------------------------------------------------------------------------------------
// Encoder specifics
// ---------------------------------------------------------------------------------------------

#[test]
fn v5_ack_tail_is_omitted_only_when_empty() {
    let ack = |reason, properties| {
        Packet::PubAck(Ack {
            packet_id: 10,
            reason,
            properties,
        })
    };
    assert_eq!(
        encode(&ack(0, props()), ProtocolVersion::V5),
        [0x40, 0x02, 0x00, 0x0A]
    );
    assert_eq!(
        encode(&ack(0x10, props()), ProtocolVersion::V5),
        [0x40, 0x03, 0x00, 0x0A, 0x10]
    );
    let with_props = Properties {
        reason_string: Some("x".into()),
        ..props()
    };
    assert_eq!(
        encode(&ack(0, with_props.clone()), ProtocolVersion::V5),
        [0x40, 0x08, 0x00, 0x0A, 0x00, 0x04, 0x1F, 0x00, 0x01, b'x']
    );
    // Every form decodes back, and an explicit success code or empty list is the same packet.
    assert_eq!(decode_one(&[0x40, 0x02, 0x00, 0x0A], V5), ack(0, props()));
    assert_eq!(
        decode_one(&[0x40, 0x03, 0x00, 0x0A, 0x00], V5),
        ack(0, props())
    );
    assert_eq!(
        decode_one(&[0x40, 0x04, 0x00, 0x0A, 0x00, 0x00], V5),
        ack(0, props())
    );
    assert_eq!(
        decode_one(&[0x40, 0x04, 0x00, 0x0A, 0x10, 0x00], V5),
        ack(0x10, props())
    );
    assert_eq!(
        encode(
            &Packet::Disconnect(ReasonOnly::default()),
            ProtocolVersion::V5
        ),
        [0xE0, 0x00]
    );
    assert_eq!(
        decode_one(&[0xE0, 0x01, 0x00], V5),
        Packet::Disconnect(ReasonOnly::default())
    );
    assert_eq!(
        decode_one(&[0xE0, 0x02, 0x00, 0x00], V5),
        Packet::Disconnect(ReasonOnly::default())
    );
}

#[test]
fn v3_encoding_drops_v5_only_fields() {
    let v5_props = Properties {
        reason_string: Some("why".into()),
        user_properties: vec![("a".into(), "b".into())],
        ..props()
    };
    let ack = Packet::PubAck(Ack {
        packet_id: 10,
        reason: 0x80,
        properties: v5_props.clone(),
    });
    assert_eq!(
        encode(&ack, ProtocolVersion::V311),
        [0x40, 0x02, 0x00, 0x0A]
    );
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties {
            message_expiry_interval: Some(5),
            ..props()
        },
        payload: Bytes::from_static(b"p"),
    });
    assert_eq!(
        encode(&publish, ProtocolVersion::V311),
        [0x30, 0x04, 0x00, 0x01, b't', b'p']
    );
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: props(),
        filters: vec![(
            "t".into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
        )],
    });
    assert_eq!(
        encode(&subscribe, ProtocolVersion::V311),
        [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b't', 0x02]
    );
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 2,
        properties: v5_props.clone(),
        reasons: vec![0x00, 0x11],
    });
    assert_eq!(
        encode(&unsuback, ProtocolVersion::V311),
        [0xB0, 0x02, 0x00, 0x02]
    );
    let disconnect = Packet::Disconnect(ReasonOnly {
        reason: 0x04,
        properties: v5_props.clone(),
    });
    assert_eq!(encode(&disconnect, ProtocolVersion::V311), [0xE0, 0x00]);
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: 0,
        properties: v5_props,
    });
    assert_eq!(
        encode(&connack, ProtocolVersion::V311),
        [0x20, 0x02, 0x01, 0x00]
    );
}

#[test]
fn encoder_rejects_fields_over_65535_bytes() {
    let long = "x".repeat(65_536);
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: long.clone(),
        packet_id: None,
        properties: props(),
        payload: Bytes::new(),
    });
    let mut out = BytesMut::new();
    assert_eq!(
        encode_packet(&publish, ProtocolVersion::V311, &mut out),
        Err(EncodeError::FieldTooLong)
    );
    assert!(out.is_empty(), "nothing written on error");
    let ack = Packet::PubAck(Ack {
        packet_id: 1,
        reason: 0,
        properties: Properties {
            user_properties: vec![("k".into(), long.clone())],
            ..props()
        },
    });
    assert_eq!(
        encode_packet(&ack, ProtocolVersion::V5, &mut out),
        Err(EncodeError::FieldTooLong)
    );
    let mut connect = v311_connect_full();
    connect.password = Some(Bytes::from(long.into_bytes()));
    assert_eq!(
        encode_packet(
            &Packet::Connect(Box::new(connect)),
            ProtocolVersion::V311,
            &mut out
        ),
        Err(EncodeError::FieldTooLong)
    );
    // 65,535 bytes is still fine.
    let ok = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "x".repeat(65_535),
        packet_id: None,
        properties: props(),
        payload: Bytes::new(),
    });
    let bytes = encode(&ok, ProtocolVersion::V311);
    assert_eq!(decode_one(&bytes, V311), ok);
}

/// Subscription identifiers are variable byte integers, 1..=268,435,455 (MQTT 5.0 §3.3.2.3.8,
/// §1.5.5). A larger value cannot be written in four bytes; the encoder must refuse it rather
/// than emit a packet whose remaining and property lengths disagree with its bytes.
#[test]
fn encoder_rejects_subscription_identifier_beyond_varint_range() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "t".into(),
        packet_id: None,
        properties: Properties {
            subscription_identifiers: vec![268_435_456],
            ..props()
        },
        payload: Bytes::new(),
    });
    let mut out = BytesMut::new();
    let result = encode_packet(&packet, ProtocolVersion::V5, &mut out);
    assert!(
        result.is_err(),
        "wrote {:02x?} (encoded_len says {})",
        &out[..],
        encoded_len(&packet, ProtocolVersion::V5)
    );
    assert!(out.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Known byte vectors
// ---------------------------------------------------------------------------------------------

/// Decodes `bytes` to `expected`, and encodes `expected` back to exactly `bytes`.
#[track_caller]
fn exact(bytes: &[u8], version: Option<ProtocolVersion>, expected: Packet) {
    let decoded = decode_one(bytes, version);
    assert_eq!(decoded, expected);
    let encode_version = match (&expected, version) {
        (Packet::Connect(c), _) => c.version,
        (_, Some(v)) => v,
        (_, None) => unreachable!(),
    };
    assert_eq!(
        encode(&expected, encode_version),
        bytes,
        "{}",
        expected.kind()
    );
}

#[test]
fn mosquitto_pub_v311_connect_bytes() {
    // `mosquitto_pub -V mqttv311 -i 'mosqpub|1234-host' -t t -m m`: clean session, keep alive
    // 60, no will, no credentials.
    let bytes = [
        0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x11, b'm',
        b'o', b's', b'q', b'p', b'u', b'b', b'|', b'1', b'2', b'3', b'4', b'-', b'h', b'o', b's',
        b't',
    ];
    exact(
        &bytes,
        BEFORE_CONNECT,
        Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V311,
            clean_start: true,
            keep_alive: 60,
            properties: props(),
            client_id: "mosqpub|1234-host".into(),
            will: None,
            username: None,
            password: None,
        })),
    );
}

#[test]
fn v311_connect_with_will_and_credentials_bytes() {
    let bytes = [
        0x10, 0x27, // fixed header, RL 39
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, // protocol
        0xEE, // user, password, will retain, will QoS 1, will, clean session
        0x00, 0x1E, // keep alive 30
        0x00, 0x03, b'c', b'i', b'd', // client id
        0x00, 0x05, b'w', b'/', b't', b'o', b'p', // will topic
        0x00, 0x04, b'b', b'y', b'e', b'!', // will payload
        0x00, 0x04, b'u', b's', b'e', b'r', // user name
        0x00, 0x03, b'p', b'w', b'd', // password
    ];
    exact(
        &bytes,
        BEFORE_CONNECT,
        Packet::Connect(Box::new(v311_connect_full())),
    );
}

#[test]
fn v31_connect_bytes() {
    let bytes = [
        0x10, 0x10, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x02, b'c', b'1',
    ];
    exact(
        &bytes,
        BEFORE_CONNECT,
        Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V31,
            clean_start: true,
            keep_alive: 60,
            properties: props(),
            client_id: "c1".into(),
            will: None,
            username: None,
            password: None,
        })),
    );
}

#[test]
fn v5_connect_bytes() {
    let bytes = [
        0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x05, 0x11, 0x00,
        0x00, 0x0E, 0x10, // session expiry 3600
        0x00, 0x02, b'c', b'1',
    ];
    exact(
        &bytes,
        BEFORE_CONNECT,
        Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V5,
            clean_start: true,
            keep_alive: 60,
            properties: Properties {
                session_expiry_interval: Some(3600),
                ..props()
            },
            client_id: "c1".into(),
            will: None,
            username: None,
            password: None,
        })),
    );
}

#[test]
fn connack_bytes() {
    exact(
        &[0x20, 0x02, 0x00, 0x00],
        V311,
        Packet::ConnAck(ConnAck::default()),
    );
    exact(
        &[0x20, 0x02, 0x01, 0x05],
        V311,
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: reason::v3::NOT_AUTHORIZED,
            properties: props(),
        }),
    );
    exact(
        &[0x20, 0x03, 0x00, 0x00, 0x00],
        V5,
        Packet::ConnAck(ConnAck::default()),
    );
    // Receive maximum 20, topic alias maximum 10.
    exact(
        &[
            0x20, 0x09, 0x00, 0x00, 0x06, 0x21, 0x00, 0x14, 0x22, 0x00, 0x0A,
        ],
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: 0,
            properties: Properties {
                receive_maximum: Some(20),
                topic_alias_maximum: Some(10),
                ..props()
            },
        }),
    );
    // CONNACK reserved flag bits must be zero.
    assert_malformed(decode(&[0x20, 0x02, 0x02, 0x00], V311));
    assert_malformed(decode(&[0x20, 0x03, 0x80, 0x00, 0x00], V5));
}

#[test]
fn publish_bytes() {
    exact(
        &[
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i',
        ],
        V311,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: Some(10),
            properties: props(),
            payload: Bytes::from_static(b"hi"),
        }),
    );
    exact(
        &[
            0x31, 0x14, 0x00, 0x03, b'a', b'/', b'b', 0x0C, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x03,
            0x00, 0x04, b't', b'e', b'x', b't', b'h', b'i',
        ],
        V5,
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: None,
            properties: Properties {
                message_expiry_interval: Some(60),
                content_type: Some("text".into()),
                ..props()
            },
            payload: Bytes::from_static(b"hi"),
        }),
    );
}

#[test]
fn ack_bytes() {
    let ack = |packet_id, reason| Ack {
        packet_id,
        reason,
        properties: props(),
    };
    exact(&[0x40, 0x02, 0x00, 0x0A], V311, Packet::PubAck(ack(10, 0)));
    exact(&[0x50, 0x02, 0x00, 0x0A], V311, Packet::PubRec(ack(10, 0)));
    exact(&[0x62, 0x02, 0x00, 0x0A], V311, Packet::PubRel(ack(10, 0)));
    exact(
        &[0x70, 0x02, 0xFF, 0xFF],
        V311,
        Packet::PubComp(ack(0xFFFF, 0)),
    );
    exact(
        &[0x40, 0x03, 0x00, 0x0A, 0x10],
        V5,
        Packet::PubAck(ack(10, reason::NO_MATCHING_SUBSCRIBERS)),
    );
    exact(
        &[0x62, 0x03, 0x00, 0x0A, 0x92],
        V5,
        Packet::PubRel(ack(10, reason::PACKET_ID_NOT_FOUND)),
    );
    exact(
        &[0x50, 0x08, 0x00, 0x0A, 0x97, 0x04, 0x1F, 0x00, 0x01, b'x'],
        V5,
        Packet::PubRec(Ack {
            packet_id: 10,
            reason: reason::QUOTA_EXCEEDED,
            properties: Properties {
                reason_string: Some("x".into()),
                ..props()
            },
        }),
    );
}

#[test]
fn subscribe_and_unsubscribe_bytes() {
    exact(
        &[0x82, 0x08, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01],
        V311,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: props(),
            filters: vec![(
                "a/b".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..SubscriptionOptions::default()
                },
            )],
        }),
    );
    exact(
        &[
            0x82, 0x0B, 0x00, 0x01, 0x02, 0x0B, 0x05, 0x00, 0x03, b'a', b'/', b'#', 0x2D,
        ],
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties {
                subscription_identifiers: vec![5],
                ..props()
            },
            filters: vec![(
                "a/#".into(),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                },
            )],
        }),
    );
    exact(
        &[0x90, 0x03, 0x00, 0x01, 0x01],
        V311,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: props(),
            reasons: vec![0x01],
        }),
    );
    exact(
        &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80],
        V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: props(),
            reasons: vec![0x01, 0x80],
        }),
    );
    exact(
        &[0xA2, 0x07, 0x00, 0x02, 0x00, 0x03, b'a', b'/', b'b'],
        V311,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            properties: props(),
            filters: vec!["a/b".into()],
        }),
    );
    exact(
        &[0xB0, 0x02, 0x00, 0x02],
        V311,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: props(),
            reasons: vec![],
        }),
    );
    exact(
        &[0xB0, 0x04, 0x00, 0x02, 0x00, 0x11],
        V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            properties: props(),
            reasons: vec![reason::NO_SUBSCRIPTION_EXISTED],
        }),
    );
}

#[test]
fn ping_disconnect_auth_bytes() {
    exact(&[0xC0, 0x00], V311, Packet::PingReq);
    exact(&[0xC0, 0x00], V5, Packet::PingReq);
    exact(&[0xD0, 0x00], V311, Packet::PingResp);
    exact(
        &[0xE0, 0x00],
        V311,
        Packet::Disconnect(ReasonOnly::default()),
    );
    exact(&[0xE0, 0x00], V5, Packet::Disconnect(ReasonOnly::default()));
    // A reason code is sent with an (empty) property length, which every client reads;
    // the short form without it still decodes.
    exact(
        &[0xE0, 0x02, 0x8E, 0x00],
        V5,
        Packet::Disconnect(ReasonOnly {
            reason: reason::SESSION_TAKEN_OVER,
            properties: props(),
        }),
    );
    let mut short = BytesMut::from(&[0xE0, 0x01, 0x8E][..]);
    assert_eq!(
        decode_packet(&mut short, V5, &DecodeLimits::default()).unwrap(),
        Some(Packet::Disconnect(ReasonOnly {
            reason: reason::SESSION_TAKEN_OVER,
            properties: props(),
        }))
    );
    exact(
        &[0xE0, 0x07, 0x00, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
        V5,
        Packet::Disconnect(ReasonOnly {
            reason: 0,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..props()
            },
        }),
    );
    exact(
        &[
            0xF0, 0x0A, 0x18, 0x08, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M',
        ],
        V5,
        Packet::Auth(ReasonOnly {
            reason: 0x18,
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                ..props()
            },
        }),
    );
}
