//! v5 properties and reason codes.

use super::*;

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
