//! IP addresses as data: parsed from text, compared, masked, shown. The core names nothing
//! from std's networking module (the I/O side of std); this reads and writes exactly what
//! std's `IpAddr` does, which `core/tests/ip_address.rs` checks against it.

use std::fmt;

/// An IPv4 or IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpAddress {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl IpAddress {
    /// `1.2.3.4` (no leading zeros) or any IPv6 text form (`::`, an embedded IPv4 at the end).
    pub fn parse(s: &str) -> Option<IpAddress> {
        let mut v4 = Cursor::new(s);
        if let Some(a) = v4.ipv4().filter(|_| v4.done()) {
            return Some(IpAddress::V4(a));
        }
        let mut v6 = Cursor::new(s);
        v6.ipv6().filter(|_| v6.done()).map(IpAddress::V6)
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self, IpAddress::V4(_))
    }

    pub fn octets(&self) -> &[u8] {
        match self {
            IpAddress::V4(a) => a,
            IpAddress::V6(a) => a,
        }
    }

    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it stands for.
    pub fn canonical(self) -> IpAddress {
        match self {
            IpAddress::V6(a) => mapped_v4(&a).map_or(self, IpAddress::V4),
            v4 => v4,
        }
    }

    /// `127.0.0.0/8` or `::1`.
    pub fn is_loopback(&self) -> bool {
        match self {
            IpAddress::V4(a) => a[0] == 127,
            IpAddress::V6(a) => *a == LOOPBACK_V6,
        }
    }

    /// The address with every bit past the first `prefix` cleared.
    pub fn masked(self, prefix: u8) -> IpAddress {
        let mask = |bytes: &mut [u8]| {
            for (i, b) in bytes.iter_mut().enumerate() {
                let kept = usize::from(prefix).saturating_sub(i * 8).min(8);
                *b &= !(0xffu8.checked_shr(kept as u32).unwrap_or(0));
            }
        };
        let mut out = self;
        match &mut out {
            IpAddress::V4(a) => mask(a),
            IpAddress::V6(a) => mask(a),
        }
        out
    }
}

const LOOPBACK_V6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

fn mapped_v4(a: &[u8; 16]) -> Option<[u8; 4]> {
    match a {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, x, y, z, w] => Some([*x, *y, *z, *w]),
        _ => None,
    }
}

impl std::str::FromStr for IpAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<IpAddress, String> {
        IpAddress::parse(s).ok_or_else(|| format!("{s:?} is not an IP address"))
    }
}

impl fmt::Display for IpAddress {
    /// Dotted IPv4; IPv6 as RFC 5952 writes it (the longest run of two or more zero groups,
    /// the first of equals, as `::`; an IPv4-mapped address as `::ffff:a.b.c.d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = match self {
            IpAddress::V4([x, y, z, w]) => return write!(f, "{x}.{y}.{z}.{w}"),
            IpAddress::V6(a) => a,
        };
        if let Some([x, y, z, w]) = mapped_v4(a) {
            return write!(f, "::ffff:{x}.{y}.{z}.{w}");
        }
        let groups: Vec<u16> = a
            .chunks_exact(2)
            .map(|g| match g {
                [hi, lo] => u16::from_be_bytes([*hi, *lo]),
                _ => 0,
            })
            .collect();
        // The longest run of zero groups (the first of equals).
        let (mut best, mut run) = ((0, 0), (0, 0));
        for (i, g) in groups.iter().enumerate() {
            if *g == 0 {
                run = if run.1 == 0 {
                    (i, 1)
                } else {
                    (run.0, run.1 + 1)
                };
                if run.1 > best.1 {
                    best = run;
                }
            } else {
                run = (0, 0);
            }
        }
        let write_groups = |f: &mut fmt::Formatter<'_>, gs: &[u16]| -> fmt::Result {
            for (i, g) in gs.iter().enumerate() {
                if i > 0 {
                    f.write_str(":")?;
                }
                write!(f, "{g:x}")?;
            }
            Ok(())
        };
        if best.1 > 1 {
            write_groups(f, groups.get(..best.0).unwrap_or_default())?;
            f.write_str("::")?;
            write_groups(f, groups.get(best.0 + best.1..).unwrap_or_default())
        } else {
            write_groups(f, &groups)
        }
    }
}

/// A reader over the text; every `read` either consumes what it matched or nothing.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str) -> Cursor<'a> {
        Cursor { rest: s.as_bytes() }
    }

    fn done(&self) -> bool {
        self.rest.is_empty()
    }

    /// Runs `read`; on `None` the cursor is where it was.
    fn atomically<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let at = self.rest;
        let out = read(self);
        if out.is_none() {
            self.rest = at;
        }
        out
    }

    fn char(&mut self, c: u8) -> Option<()> {
        self.atomically(|p| match p.rest.split_first() {
            Some((b, rest)) if *b == c => {
                p.rest = rest;
                Some(())
            }
            _ => None,
        })
    }

    /// Up to `max_digits` digits of `radix`; at least one. Decimal numbers may not start with
    /// a 0 followed by more digits (no octal look-alikes).
    fn number(&mut self, radix: u32, max_digits: usize, max: u32) -> Option<u32> {
        self.atomically(|p| {
            let leading_zero = p.rest.first() == Some(&b'0');
            let mut value: u32 = 0;
            let mut digits = 0;
            while digits < max_digits {
                let Some(d) = p.rest.first().and_then(|b| char::from(*b).to_digit(radix)) else {
                    break;
                };
                value = value * radix + d;
                p.rest = p.rest.get(1..).unwrap_or_default();
                digits += 1;
            }
            let octal_like = radix == 10 && leading_zero && digits > 1;
            (digits > 0 && !octal_like && value <= max).then_some(value)
        })
    }

    fn ipv4(&mut self) -> Option<[u8; 4]> {
        self.atomically(|p| {
            let mut out = [0u8; 4];
            for (i, octet) in out.iter_mut().enumerate() {
                if i > 0 {
                    p.char(b'.')?;
                }
                *octet = u8::try_from(p.number(10, 3, 255)?).ok()?;
            }
            Some(out)
        })
    }

    /// Groups separated by `:`, into `groups`: how many were read, and whether the last two
    /// came from an embedded IPv4 address (which must end the address).
    fn groups(&mut self, groups: &mut [u16]) -> (usize, bool) {
        let limit = groups.len();
        for i in 0..limit {
            if i + 1 < limit {
                let v4 = self.atomically(|p| {
                    if i > 0 {
                        p.char(b':')?;
                    }
                    p.ipv4()
                });
                if let Some([a, b, c, d]) = v4 {
                    if let Some(g) = groups.get_mut(i) {
                        *g = u16::from_be_bytes([a, b]);
                    }
                    if let Some(g) = groups.get_mut(i + 1) {
                        *g = u16::from_be_bytes([c, d]);
                    }
                    return (i + 2, true);
                }
            }
            let group = self.atomically(|p| {
                if i > 0 {
                    p.char(b':')?;
                }
                p.number(16, 4, 0xffff)
            });
            match (group, groups.get_mut(i)) {
                (Some(g), Some(slot)) => *slot = g as u16,
                _ => return (i, false),
            }
        }
        (limit, false)
    }

    fn ipv6(&mut self) -> Option<[u8; 16]> {
        self.atomically(|p| {
            let mut head = [0u16; 8];
            let (head_len, head_v4) = p.groups(&mut head);
            if head_len < 8 {
                // An embedded IPv4 address can only end the address, never precede `::`.
                if head_v4 {
                    return None;
                }
                p.char(b':')?;
                p.char(b':')?;
                let mut tail = [0u16; 7];
                let limit = 8 - (head_len + 1);
                let (tail_len, _) = p.groups(tail.get_mut(..limit)?);
                head.get_mut(8 - tail_len..)?
                    .copy_from_slice(tail.get(..tail_len)?);
            }
            let mut out = [0u8; 16];
            for (pair, g) in out.chunks_exact_mut(2).zip(head) {
                pair.copy_from_slice(&g.to_be_bytes());
            }
            Some(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_and_shown() {
        let cases = [
            ("1.2.3.4", "1.2.3.4"),
            ("::", "::"),
            ("::1", "::1"),
            ("fe80::1:2", "fe80::1:2"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
            ("::10.0.0.1", "::a00:1"),
            (
                "ABCD:ef01:2345:6789:abcd:ef01:2345:6789",
                "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
            ),
        ];
        for (text, shown) in cases {
            let ip = IpAddress::parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(ip.to_string(), shown, "{text}");
        }
        for bad in [
            "",
            "1.2.3",
            "01.2.3.4",
            "256.0.0.1",
            "1.2.3.4.5",
            ":::",
            "1::2::3",
            "::1.2.3.4:1",
            "1:2:3:4:5:6:7:8:9",
            " ::1",
            "12345::",
        ] {
            assert_eq!(IpAddress::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn masks_and_canonical_form() {
        let ip = IpAddress::parse("10.1.2.3").unwrap();
        assert_eq!(ip.masked(8), IpAddress::parse("10.0.0.0").unwrap());
        assert_eq!(ip.masked(0), IpAddress::parse("0.0.0.0").unwrap());
        assert_eq!(ip.masked(32), ip);
        assert_eq!(ip.masked(12).to_string(), "10.0.0.0");
        assert_eq!(
            IpAddress::parse("10.17.0.0")
                .unwrap()
                .masked(12)
                .to_string(),
            "10.16.0.0"
        );
        let v6 = IpAddress::parse("fe80::1").unwrap();
        assert_eq!(v6.masked(10).to_string(), "fe80::");
        assert_eq!(
            IpAddress::parse("::ffff:1.2.3.4").unwrap().canonical(),
            IpAddress::parse("1.2.3.4").unwrap()
        );
        assert!(IpAddress::parse("127.9.9.9").unwrap().is_loopback());
        assert!(IpAddress::parse("::1").unwrap().is_loopback());
        assert!(!IpAddress::parse("::2").unwrap().is_loopback());
    }
}
