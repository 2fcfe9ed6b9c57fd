//! `tidemq_core::ip::IpAddress` reads and writes exactly what `std::net::IpAddr` does: the
//! core may not name `std::net`, so std is the oracle here, outside it.

#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use tidemq_core::ip::IpAddress;

fn ours_agree(s: &str) {
    let ours = IpAddress::parse(s);
    let std = s.parse::<IpAddr>().ok();
    assert_eq!(
        ours.is_some(),
        std.is_some(),
        "{s:?}: ours {ours:?}, std {std:?}"
    );
    if let (Some(ours), Some(std)) = (ours, std) {
        let std_octets = match std {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        assert_eq!(ours.octets(), std_octets, "{s:?}");
        assert_eq!(ours.to_string(), std.to_string(), "{s:?}");
        assert_eq!(ours.is_loopback(), std.is_loopback(), "{s:?}");
        assert_eq!(
            ours.canonical().octets(),
            match std.to_canonical() {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            },
            "{s:?}"
        );
    }
}

#[test]
fn known_forms() {
    for s in [
        "0.0.0.0",
        "255.255.255.255",
        "1.2.3.4",
        "01.2.3.4",
        "1.2.3.04",
        "1.2.3.256",
        "1.2.3",
        "1.2.3.4.",
        ".1.2.3.4",
        "1.2.3.4 ",
        "::",
        ":::",
        "::1",
        "1::",
        "1::2",
        "1::2::3",
        ":1::",
        "1:2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7:8:9",
        "1:2:3:4:5:6:7::",
        "1:2:3:4:5:6:7::8",
        "::1:2:3:4:5:6:7",
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "1:2:3:4:5:6:1.2.3.4",
        "1:2:3:4:5:6:7:1.2.3.4",
        "1.2.3.4::",
        "::1.2.3.4:5",
        "00000::",
        "0000::",
        "fe80::1%eth0",
        "FE80::ABCD",
        "1:0:0:1:0:0:0:1",
        "1:0:0:1:0:0:1:1",
        "0:0:1:0:0:1:0:0",
        "",
    ] {
        ours_agree(s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn any_text_of_address_characters(s in "[0-9a-fA-F:.]{0,45}") {
        ours_agree(&s);
    }

    #[test]
    fn any_address_shown(bytes in proptest::array::uniform16(any::<u8>()), zeros in any::<u16>()) {
        // Runs of zero groups of every shape, so every `::` placement is shown.
        let mut b = bytes;
        for g in 0..8 {
            if zeros >> g & 1 == 1 {
                b[2 * g] = 0;
                b[2 * g + 1] = 0;
            }
        }
        let std = IpAddr::from(b);
        ours_agree(&std.to_string());
        let v4 = IpAddr::from([b[0], b[1], b[2], b[3]]);
        ours_agree(&v4.to_string());
    }
}
