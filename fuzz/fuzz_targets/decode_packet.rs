//! Packet decoder: never panics, never accepts more than the limit, and whatever it accepts
//! encodes back to bytes that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidemq_core::codec::{DecodeLimits, Packet, ProtocolVersion, decode_packet, encode_packet};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let version = match selector % 4 {
        0 => None,
        1 => Some(ProtocolVersion::V31),
        2 => Some(ProtocolVersion::V311),
        _ => Some(ProtocolVersion::V5),
    };
    let limits = DecodeLimits {
        max_packet_size: 64 * 1024,
        max_user_properties: 16,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = decode_packet(&mut buf, version, &limits) {
        let (encode_as, decode_as) = match &packet {
            Packet::Connect(c) => (c.version, None),
            _ => match version {
                Some(v) => (v, Some(v)),
                None => return,
            },
        };
        let mut out = BytesMut::new();
        encode_packet(&packet, encode_as, &mut out).expect("a decoded packet re-encodes");
        let again = decode_packet(&mut out, decode_as, &limits)
            .expect("re-encoded packet decodes")
            .expect("re-encoded packet is complete");
        assert_eq!(again, packet, "round trip changed the packet");
        assert!(out.is_empty(), "re-encoded packet has trailing bytes");
    }
});
