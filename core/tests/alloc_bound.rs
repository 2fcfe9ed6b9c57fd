//! Memory taken by decoding is bounded by the maximum packet size plus a constant, measured
//! with a counting allocator. One test function: the counters are global to this binary.
#![allow(unsafe_code)] // a global allocator is an `unsafe impl`; it only counts and forwards
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use tidemq_core::codec::{DecodeLimits, ProtocolVersion, decode_packet};
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(n: usize) {
    let now = CURRENT.fetch_add(n, Ordering::SeqCst) + n;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grow(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grow(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated above the current level while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

/// Not a power of two, so that growth by doubling would show.
const MAX: usize = 200 * 1024;
/// What decoding copies out of the packet: the user property values.
const COPIED: usize = 16 * 8 * 1024;
/// Room for the decoded packet's own structs and small vectors.
const SLACK: usize = 16 * 1024;

fn varint(mut n: usize, out: &mut BytesMut) {
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// A v5 PUBLISH of exactly `total` bytes, most of them in a user property flood.
fn big_publish(total: usize) -> Bytes {
    let mut props = BytesMut::new();
    // 16 user properties of ~equal size, then payload fills the rest.
    for i in 0..16u8 {
        props.put_u8(0x26);
        props.put_u16(1);
        props.put_u8(b'a' + i);
        let v = vec![b'v'; 8 * 1024];
        props.put_u16(v.len() as u16);
        props.put_slice(&v);
    }
    let mut body = BytesMut::new();
    body.put_u16(3);
    body.put_slice(b"a/b");
    body.put_u16(7);
    varint(props.len(), &mut body);
    body.put_slice(&props);
    let mut header = BytesMut::new();
    header.put_u8(0x32);
    // Fill with payload so the whole packet is `total` bytes (header of 4 bytes at this size).
    let payload = total - 1 - 3 - body.len();
    varint(body.len() + payload, &mut header);
    body.put_slice(&vec![b'p'; payload]);
    header.put_slice(&body);
    assert_eq!(header.len(), total);
    header.freeze()
}

#[test]
fn decoding_and_buffering_stay_within_the_packet_limit_plus_a_constant() {
    let limits = DecodeLimits {
        max_packet_size: MAX,
        max_user_properties: 32,
    };
    // 1. Decoding one maximum-size packet already buffered.
    let packet = big_publish(MAX);
    let mut buf = BytesMut::from(&packet[..]);
    let (decoded, peak) =
        peak_during(|| decode_packet(&mut buf, Some(ProtocolVersion::V5), &limits));
    assert!(matches!(decoded, Ok(Some(_))), "{decoded:?}");
    drop(decoded);
    assert!(
        peak <= MAX + SLACK,
        "decode took {peak} bytes for a {MAX}-byte packet"
    );

    // 2. A broker receiving that packet in small reads buffers it once, not by doubling.
    let config = Config {
        max_packet_size: MAX as u32,
        sys_events: false,
        ..Config::default()
    };
    let mut broker = Broker::new(config, 1, Instant(0));
    let conn = ConnId(1);
    let connect: &[u8] = &[
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x03,
        b'c', b'i', b'd',
    ];
    broker.handle_input(
        Instant(0),
        Input::Accepted {
            conn,
            peer: "127.0.0.1:1".into(),
        },
    );
    broker.handle_input(
        Instant(0),
        Input::Received {
            conn,
            bytes: Bytes::from_static(connect),
        },
    );
    while broker.poll_output().is_some() {}
    let (_, peak) = peak_during(|| {
        for chunk in packet.chunks(1024) {
            broker.handle_input(
                Instant(1),
                Input::Received {
                    conn,
                    bytes: Bytes::copy_from_slice(chunk),
                },
            );
        }
    });
    // One buffer of exactly the packet's size, plus what decoding copies out of it.
    assert!(
        peak <= MAX + COPIED + SLACK,
        "buffering and decoding took {peak} bytes"
    );
    let mut closed = false;
    while let Some(out) = broker.poll_output() {
        closed |= matches!(out, Output::Close { .. });
    }
    assert!(!closed, "a maximum-size packet is accepted");

    // 3. A header claiming more than the limit is refused before anything is buffered for it.
    let (_, peak) = peak_during(|| {
        let conn = ConnId(2);
        broker.handle_input(
            Instant(2),
            Input::Accepted {
                conn,
                peer: "127.0.0.1:2".into(),
            },
        );
        broker.handle_input(
            Instant(2),
            Input::Received {
                conn,
                bytes: Bytes::from_static(&[0x10, 0xFF, 0xFF, 0xFF, 0x7F]),
            },
        );
    });
    assert!(peak <= SLACK, "an oversized header cost {peak} bytes");
    let mut closed = false;
    while let Some(out) = broker.poll_output() {
        closed |= matches!(out, Output::Close { conn: ConnId(2) });
    }
    assert!(closed);
}
