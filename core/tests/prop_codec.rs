#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
//! Property tests for the MQTT codec: round trips of arbitrary valid packets, robustness against
//! arbitrary and corrupted input, and independence from how the byte stream is fragmented.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::Union;
use tidemq_core::codec::{
    Ack, ConnAck, Connect, DecodeError, DecodeLimits, Packet, Properties, ProtocolVersion, Publish,
    QoS, ReasonCode, ReasonOnly, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
    Will, decode_packet, encode_packet, encoded_len, peek_fixed_header,
};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Do not write regression files into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// A valid MQTT UTF-8 string: any Unicode scalar values except U+0000.
fn mqtt_string(max_chars: usize) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(
        any::<char>().prop_map(|c| if c == '\0' { '_' } else { c }),
        0..=max_chars,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn binary(max: usize) -> impl Strategy<Value = Bytes> + Clone {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn opt<S: Strategy>(s: S) -> impl Strategy<Value = Option<S::Value>> {
    prop::option::weighted(0.3, s)
}

fn qos() -> impl Strategy<Value = QoS> + Clone {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn packet_id() -> impl Strategy<Value = u16> + Clone {
    1..=u16::MAX
}

/// Where a property list sits (MQTT 5.0 §2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Connect,
    ConnAck,
    Publish,
    Will,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Every property with a random valid value, before restricting to one packet type.
fn any_properties() -> impl Strategy<Value = Properties> {
    let a = (
        opt(0..=1u8),
        opt(any::<u32>()),
        opt(mqtt_string(8)),
        opt(mqtt_string(8)),
        opt(binary(8)),
        prop::collection::vec(1..=268_435_455u32, 0..3),
        opt(any::<u32>()),
        opt(mqtt_string(8)),
        opt(any::<u16>()),
        opt(mqtt_string(8)),
    );
    let b = (
        opt(binary(8)),
        opt(0..=1u8),
        opt(any::<u32>()),
        opt(0..=1u8),
        opt(mqtt_string(8)),
        opt(mqtt_string(8)),
        opt(mqtt_string(8)),
        opt(1..=u16::MAX),
        opt(any::<u16>()),
        opt(1..=u16::MAX),
    );
    let c = (
        opt(0..=1u8),
        opt(0..=1u8),
        prop::collection::vec((mqtt_string(6), mqtt_string(6)), 0..3),
        opt(1..=u32::MAX),
        opt(0..=1u8),
        opt(0..=1u8),
        opt(0..=1u8),
    );
    (a, b, c).prop_map(|(a, b, c)| Properties {
        payload_format_indicator: a.0,
        message_expiry_interval: a.1,
        content_type: a.2,
        response_topic: a.3,
        correlation_data: a.4,
        subscription_identifiers: a.5,
        session_expiry_interval: a.6,
        assigned_client_identifier: a.7,
        server_keep_alive: a.8,
        authentication_method: a.9,
        authentication_data: b.0,
        request_problem_information: b.1,
        will_delay_interval: b.2,
        request_response_information: b.3,
        response_information: b.4,
        server_reference: b.5,
        reason_string: b.6,
        receive_maximum: b.7,
        topic_alias_maximum: b.8,
        topic_alias: b.9,
        maximum_qos: c.0,
        retain_available: c.1,
        user_properties: c.2,
        maximum_packet_size: c.3,
        wildcard_subscription_available: c.4,
        subscription_identifier_available: c.5,
        shared_subscription_available: c.6,
    })
}

/// Keeps only the properties MQTT 5.0 allows in `ctx`.
fn restrict(p: Properties, ctx: Ctx) -> Properties {
    use Ctx::*;
    fn keep<T>(v: Option<T>, ok: bool) -> Option<T> {
        v.filter(|_| ok)
    }
    let is = |set: &[Ctx]| set.contains(&ctx);
    let message = is(&[Publish, Will]);
    let connack = ctx == ConnAck;
    let has_method = p.authentication_method.is_some();
    Properties {
        payload_format_indicator: keep(p.payload_format_indicator, message),
        message_expiry_interval: keep(p.message_expiry_interval, message),
        content_type: keep(p.content_type, message),
        response_topic: keep(p.response_topic, message),
        correlation_data: keep(p.correlation_data, message),
        subscription_identifiers: match ctx {
            Publish => p.subscription_identifiers,
            Subscribe => p.subscription_identifiers.into_iter().take(1).collect(),
            _ => Vec::new(),
        },
        session_expiry_interval: keep(
            p.session_expiry_interval,
            is(&[Connect, ConnAck, Disconnect]),
        ),
        assigned_client_identifier: keep(p.assigned_client_identifier, connack),
        server_keep_alive: keep(p.server_keep_alive, connack),
        authentication_method: keep(p.authentication_method, is(&[Connect, ConnAck, Auth])),
        // Data without a method is a Protocol Error (v5 §3.1.2.11.10).
        authentication_data: keep(
            p.authentication_data,
            is(&[Connect, ConnAck, Auth]) && has_method,
        ),
        request_problem_information: keep(p.request_problem_information, ctx == Connect),
        will_delay_interval: keep(p.will_delay_interval, ctx == Will),
        request_response_information: keep(p.request_response_information, ctx == Connect),
        response_information: keep(p.response_information, connack),
        server_reference: keep(p.server_reference, is(&[ConnAck, Disconnect])),
        reason_string: keep(
            p.reason_string,
            is(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]),
        ),
        receive_maximum: keep(p.receive_maximum, is(&[Connect, ConnAck])),
        topic_alias_maximum: keep(p.topic_alias_maximum, is(&[Connect, ConnAck])),
        topic_alias: keep(p.topic_alias, ctx == Publish),
        maximum_qos: keep(p.maximum_qos, connack),
        retain_available: keep(p.retain_available, connack),
        user_properties: p.user_properties,
        maximum_packet_size: keep(p.maximum_packet_size, is(&[Connect, ConnAck])),
        wildcard_subscription_available: keep(p.wildcard_subscription_available, connack),
        subscription_identifier_available: keep(p.subscription_identifier_available, connack),
        shared_subscription_available: keep(p.shared_subscription_available, connack),
    }
}

/// Valid properties for `ctx` in v5; always empty before v5.
fn properties(version: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        any_properties().prop_map(move |p| restrict(p, ctx)).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = version.is_v5();
    let will = opt((
        mqtt_string(12),
        binary(16),
        qos(),
        any::<bool>(),
        properties(version, Ctx::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        }));
    (
        any::<bool>(),
        any::<u16>(),
        properties(version, Ctx::Connect),
        mqtt_string(23),
        will,
        opt(mqtt_string(12)),
        opt(binary(12)),
    )
        .prop_map(
            move |(clean_start, keep_alive, properties, client_id, will, username, password)| {
                // Before v5 a password needs a user name.
                let password = if v5 || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
        .boxed()
}

fn publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        mqtt_string(16),
        packet_id(),
        properties(version, Ctx::Publish),
        binary(64),
    )
        .prop_map(|(qos, dup, retain, topic, id, properties, payload)| {
            let acked = qos != QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && acked,
                qos,
                retain,
                topic,
                packet_id: acked.then_some(id),
                properties,
                payload,
            })
        })
        .boxed()
}

fn ack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let reason = if version.is_v5() {
        any::<u8>().boxed()
    } else {
        Just(0u8).boxed()
    };
    (0..4u8, packet_id(), reason, properties(version, Ctx::Ack))
        .prop_map(|(kind, packet_id, reason, properties)| {
            let ack = Ack {
                packet_id,
                reason: ReasonCode(reason),
                properties,
            };
            match kind {
                0 => Packet::PubAck(ack),
                1 => Packet::PubRec(ack),
                2 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        })
        .boxed()
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if version.is_v5() {
        (qos(), any::<bool>(), any::<bool>(), 0..=2u8)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed()
    }
}

fn subscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        properties(version, Ctx::Subscribe),
        prop::collection::vec((mqtt_string(12), subscription_options(version)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

fn suback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        properties(version, Ctx::SubAck),
        prop::collection::vec(any::<u8>(), 1..5),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons: reasons.into_iter().map(ReasonCode).collect(),
            })
        })
        .boxed()
}

fn unsubscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        properties(version, Ctx::Unsubscribe),
        prop::collection::vec(mqtt_string(12), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        })
        .boxed()
}

fn unsuback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    // Reason codes exist from v5 on only.
    let reasons = if version.is_v5() {
        // One reason code per filter, and at least one filter.
        prop::collection::vec(any::<u8>(), 1..5).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (packet_id(), properties(version, Ctx::UnsubAck), reasons)
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons: reasons.into_iter().map(ReasonCode).collect(),
            })
        })
        .boxed()
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        any::<u8>().boxed()
    } else {
        (0..=5u8).boxed()
    };
    (any::<bool>(), code, properties(version, Ctx::ConnAck))
        .prop_map(|(session_present, code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present,
                code: ReasonCode(code),
                properties,
            })
        })
        .boxed()
}

fn reason_only(version: ProtocolVersion, ctx: Ctx) -> BoxedStrategy<ReasonOnly> {
    if version.is_v5() {
        (any::<u8>(), properties(version, ctx))
            .prop_map(|(reason, properties)| ReasonOnly {
                reason: ReasonCode(reason),
                properties,
            })
            .boxed()
    } else {
        Just(ReasonOnly::default()).boxed()
    }
}

/// Any valid packet other than CONNECT for a connection speaking `version`.
fn session_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut options = vec![
        connack(version),
        publish(version),
        ack(version),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        reason_only(version, Ctx::Disconnect)
            .prop_map(Packet::Disconnect)
            .boxed(),
    ];
    if version.is_v5() {
        options.push(
            reason_only(version, Ctx::Auth)
                .prop_map(Packet::Auth)
                .boxed(),
        );
    }
    Union::new(options).boxed()
}

/// Any valid packet, CONNECT included.
fn any_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    prop_oneof![1 => connect(version), 10 => session_packet(version)].boxed()
}

fn version() -> impl Strategy<Value = ProtocolVersion> + Clone {
    prop_oneof![
        Just(ProtocolVersion::V31),
        Just(ProtocolVersion::V311),
        Just(ProtocolVersion::V5)
    ]
}

fn decode_version() -> impl Strategy<Value = Option<ProtocolVersion>> {
    prop_oneof![1 => Just(None), 3 => version().prop_map(Some)]
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), any_packet(v)))
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_packet(packet, version, &mut out).unwrap();
    out.to_vec()
}

/// The version to decode `packet` with: CONNECT is only read before the version is known.
fn decode_version_for(packet: &Packet, version: ProtocolVersion) -> Option<ProtocolVersion> {
    match packet {
        Packet::Connect(_) => None,
        _ => Some(version),
    }
}

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

/// Decodes packets from `bytes` until one is incomplete or an error occurs, checking the
/// streaming contract along the way. Returns the packets and whether it stopped on an error.
fn decode_all(
    bytes: &[u8],
    mut version: Option<ProtocolVersion>,
    limits: &DecodeLimits,
) -> (Vec<Packet>, Option<DecodeError>) {
    let mut buf = BytesMut::from(bytes);
    let mut packets = Vec::new();
    loop {
        let before = buf.clone();
        match decode_packet(&mut buf, version, limits) {
            Ok(Some(packet)) => {
                let used = before.len() - buf.len();
                assert!(used >= 2, "a packet takes at least two bytes, took {used}");
                assert_eq!(&before[used..], &buf[..], "only the front may be consumed");
                if let Packet::Connect(c) = &packet {
                    version = Some(c.version);
                }
                packets.push(packet);
            }
            Ok(None) => {
                assert_eq!(buf, before, "bytes consumed by an incomplete packet");
                return (packets, None);
            }
            Err(e) => {
                assert!(buf.len() <= bytes.len());
                return (packets, Some(e));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Round trips
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn decode_of_encode_is_identity((version, packet) in versioned_packet()) {
        let bytes = encode(&packet, version);
        prop_assert_eq!(bytes.len(), encoded_len(&packet, version));
        let (first, rl, hl) = peek_fixed_header(&bytes).unwrap().unwrap();
        prop_assert_eq!(hl + rl, bytes.len());
        prop_assert_eq!(first, bytes[0]);

        let mut buf = BytesMut::from(&bytes[..]);
        let decoded =
            decode_packet(&mut buf, decode_version_for(&packet, version), &DecodeLimits::default());
        prop_assert_eq!(decoded, Ok(Some(packet.clone())));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn size_limit_is_checked_against_the_whole_packet(
        (version, packet) in versioned_packet(),
        max in 0usize..256,
    ) {
        let bytes = encode(&packet, version);
        let limits = DecodeLimits { max_packet_size: max, ..DecodeLimits::default() };
        let mut buf = BytesMut::from(&bytes[..]);
        let result = decode_packet(&mut buf, decode_version_for(&packet, version), &limits);
        if bytes.len() <= max {
            prop_assert_eq!(result, Ok(Some(packet)));
        } else {
            prop_assert_eq!(result, Err(DecodeError::TooLarge { size: bytes.len(), max }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Arbitrary input never panics
// ---------------------------------------------------------------------------------------------

/// First bytes with valid flags for every packet type, so random bodies get past the header.
const VALID_FIRST_BYTES: &[u8] = &[
    0x10, 0x20, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x3A, 0x3B, 0x3C, 0x3D, 0x40, 0x50, 0x62, 0x70,
    0x82, 0x90, 0xA2, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0,
];

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        version in decode_version(),
    ) {
        let _ = peek_fixed_header(&bytes);
        decode_all(&bytes, version, &DecodeLimits::default());
    }

    /// Random bodies behind a correct fixed header reach the body decoders far more often than
    /// plain random bytes do.
    #[test]
    fn arbitrary_bodies_never_panic(
        first in prop_oneof![1 => any::<u8>(), 3 => prop::sample::select(VALID_FIRST_BYTES)],
        body in prop::collection::vec(any::<u8>(), 0..96),
        version in decode_version(),
    ) {
        let bytes = frame(first, &body);
        let (packets, _) = decode_all(&bytes, version, &DecodeLimits::default());
        prop_assert!(packets.len() <= 1);
    }

    /// Valid packets with a few bytes changed: deep into every field decoder.
    #[test]
    fn corrupted_packets_never_panic(
        (version, packet) in versioned_packet(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..4),
        limit in prop_oneof![Just(usize::MAX), 0usize..64],
    ) {
        let mut bytes = encode(&packet, version);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let limits = DecodeLimits { max_user_properties: limit, ..DecodeLimits::default() };
        for v in [None, Some(version)] {
            decode_all(&bytes, v, &limits);
        }
    }

    /// Whatever decodes, re-encodes into a canonical form that decodes to the same packet.
    #[test]
    fn decoded_packets_re_encode_to_themselves(
        (version, packet) in versioned_packet(),
        edits in prop::collection::vec((any::<Index>(), any::<u8>()), 0..3),
    ) {
        let mut bytes = encode(&packet, version);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let decode_as = decode_version_for(&packet, version);
        let mut buf = BytesMut::from(&bytes[..]);
        if let Ok(Some(decoded)) = decode_packet(&mut buf, decode_as, &DecodeLimits::default()) {
            let speak = match &decoded {
                Packet::Connect(c) => c.version,
                _ => version,
            };
            let again = encode(&decoded, speak);
            prop_assert_eq!(again.len(), encoded_len(&decoded, speak));
            let mut buf = BytesMut::from(&again[..]);
            let redecoded = decode_packet(
                &mut buf,
                decode_version_for(&decoded, speak),
                &DecodeLimits::default(),
            );
            prop_assert_eq!(redecoded, Ok(Some(decoded)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Bytes appended to a valid body
// ---------------------------------------------------------------------------------------------

/// v5 acks, DISCONNECT and AUTH may omit a success reason code and an empty property list;
/// appending exactly those omitted zero bytes gives back the same packet.
fn may_absorb_zeros(packet: &Packet, version: ProtocolVersion) -> bool {
    if !version.is_v5() {
        return false;
    }
    match packet {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties.is_empty()
        }
        Packet::Disconnect(r) | Packet::Auth(r) => r.properties.is_empty(),
        _ => false,
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn bytes_after_a_valid_body_are_rejected_or_change_the_packet(
        (version, packet) in versioned_packet(),
        suffix in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let bytes = encode(&packet, version);
        let (first, rl, hl) = peek_fixed_header(&bytes).unwrap().unwrap();
        let mut body = bytes[hl..hl + rl].to_vec();
        body.extend_from_slice(&suffix);
        let longer = frame(first, &body);

        let mut buf = BytesMut::from(&longer[..]);
        let result =
            decode_packet(&mut buf, decode_version_for(&packet, version), &DecodeLimits::default());
        match result {
            Err(_) => {}
            Ok(None) => prop_assert!(false, "a complete packet was reported incomplete"),
            Ok(Some(other)) => {
                prop_assert!(buf.is_empty(), "the whole body must be consumed");
                if other == packet {
                    prop_assert!(
                        may_absorb_zeros(&packet, version)
                            && suffix.len() <= 2
                            && suffix.iter().all(|&b| b == 0),
                        "{:?} absorbed {:02x?}",
                        packet,
                        suffix
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (d) Fragmentation
// ---------------------------------------------------------------------------------------------

fn session() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(|v| {
        (
            Just(v),
            connect(v),
            prop::collection::vec(session_packet(v), 0..8),
        )
            .prop_map(|(v, connect, rest)| {
                let mut all = vec![connect];
                all.extend(rest);
                (v, all)
            })
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn fragmentation_does_not_change_the_packets(
        (version, packets) in session(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
        bytewise in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        for p in &packets {
            stream.extend(encode(p, version));
        }
        let mut points: Vec<usize> = if bytewise {
            (0..=stream.len()).collect()
        } else {
            cuts.iter().map(|i| i.index(stream.len() + 1)).collect()
        };
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();

        let limits = DecodeLimits::default();
        let mut buf = BytesMut::new();
        let mut current = None;
        let mut decoded = Vec::new();
        for pair in points.windows(2) {
            buf.extend_from_slice(&stream[pair[0]..pair[1]]);
            loop {
                let before = buf.clone();
                match decode_packet(&mut buf, current, &limits) {
                    Ok(Some(packet)) => {
                        if let Packet::Connect(c) = &packet {
                            current = Some(c.version);
                        }
                        decoded.push(packet);
                    }
                    Ok(None) => {
                        prop_assert_eq!(&buf, &before, "consumed while incomplete");
                        break;
                    }
                    Err(e) => prop_assert!(false, "decode error {e} at chunk {pair:?}"),
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(current, Some(version));
        prop_assert_eq!(decoded, packets);
    }
}
