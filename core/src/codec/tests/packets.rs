//! The packet bodies: PUBLISH, strings, SUBSCRIBE / UNSUBSCRIBE and CONNECT.

use super::*;

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
