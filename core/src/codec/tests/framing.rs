//! Framing: the fixed header, packet order and flags, truncation and streaming.

use super::*;

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
        code: ReasonCode(0),
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
                    reasons: vec![ReasonCode(0x01)],
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
            reason: ReasonCode(0),
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
