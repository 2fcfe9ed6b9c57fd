//! The encoder, and byte-exact vectors of well-known packets.

use super::*;

// ---------------------------------------------------------------------------------------------
// Encoder specifics
// ---------------------------------------------------------------------------------------------

#[test]
fn v5_ack_tail_is_omitted_only_when_empty() {
    let ack = |reason: u8, properties| {
        Packet::PubAck(Ack {
            packet_id: 10,
            reason: ReasonCode(reason),
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
        reason: ReasonCode(0x80),
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
        reasons: vec![ReasonCode(0x00), ReasonCode(0x11)],
    });
    assert_eq!(
        encode(&unsuback, ProtocolVersion::V311),
        [0xB0, 0x02, 0x00, 0x02]
    );
    let disconnect = Packet::Disconnect(ReasonOnly {
        reason: ReasonCode(0x04),
        properties: v5_props.clone(),
    });
    assert_eq!(encode(&disconnect, ProtocolVersion::V311), [0xE0, 0x00]);
    let connack = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode(0),
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
        reason: ReasonCode(0),
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
            code: ReasonCode(0),
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
    let ack = |packet_id, reason: ReasonCode| Ack {
        packet_id,
        reason,
        properties: props(),
    };
    exact(
        &[0x40, 0x02, 0x00, 0x0A],
        V311,
        Packet::PubAck(ack(10, ReasonCode(0))),
    );
    exact(
        &[0x50, 0x02, 0x00, 0x0A],
        V311,
        Packet::PubRec(ack(10, ReasonCode(0))),
    );
    exact(
        &[0x62, 0x02, 0x00, 0x0A],
        V311,
        Packet::PubRel(ack(10, ReasonCode(0))),
    );
    exact(
        &[0x70, 0x02, 0xFF, 0xFF],
        V311,
        Packet::PubComp(ack(0xFFFF, ReasonCode(0))),
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
            reasons: vec![ReasonCode(0x01)],
        }),
    );
    exact(
        &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80],
        V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            properties: props(),
            reasons: vec![ReasonCode(0x01), ReasonCode(0x80)],
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
            reason: ReasonCode(0),
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
            reason: ReasonCode(0x18),
            properties: Properties {
                authentication_method: Some("SCRAM".into()),
                ..props()
            },
        }),
    );
}
