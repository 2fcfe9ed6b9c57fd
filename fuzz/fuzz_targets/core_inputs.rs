//! The whole broker: arbitrary bytes on several connections, closes, time steps and writer
//! acknowledgements. It must never panic, and every output must name a live connection.
#![no_main]

use std::collections::BTreeSet;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tidemq_core::{Broker, Config, ConnId, Input, Instant, Output};

fuzz_target!(|data: &[u8]| {
    let config = Config {
        max_packet_size: 4096,
        msq_len: 8,
        max_inflight: 4,
        receive_maximum: 4,
        ..Config::default()
    };
    let mut broker = Broker::new(config, 7, Instant(0));
    let mut now = 0u64;
    let mut open: BTreeSet<u64> = BTreeSet::new();
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let conn = u64::from(op & 0x03);
        let input = match op >> 2 {
            0 => Input::Accepted {
                conn: ConnId(conn),
                peer: format!("127.0.0.1:{}", 1000 + conn),
            },
            1 => Input::Closed { conn: ConnId(conn) },
            2 => {
                now += u64::from(tail.first().copied().unwrap_or(1)) * 500;
                Input::Timeout
            }
            3 => Input::Written {
                conn: ConnId(conn),
                bytes: usize::from(tail.first().copied().unwrap_or(0)) * 64,
            },
            n => {
                // n = 4..=63 sends the next n - 3 bytes (1..=60).
                let len = usize::from(n - 3).min(tail.len());
                let (chunk, after) = tail.split_at(len);
                rest = after;
                if !open.contains(&conn) {
                    continue;
                }
                let input = Input::Received {
                    conn: ConnId(conn),
                    bytes: Bytes::copy_from_slice(chunk),
                };
                broker.handle_input(Instant(now), input);
                drain(&mut broker, &mut open);
                continue;
            }
        };
        rest = tail;
        if let Input::Accepted { conn, .. } = &input
            && !open.insert(conn.0)
        {
            continue;
        }
        if let Input::Closed { conn } = &input {
            open.remove(&conn.0);
        }
        broker.handle_input(Instant(now), input);
        drain(&mut broker, &mut open);
    }
});

fn drain(broker: &mut Broker, open: &mut BTreeSet<u64>) {
    while let Some(output) = broker.poll_output() {
        match output {
            Output::Transmit { conn, bytes } => {
                assert!(open.contains(&conn.0), "transmit to a closed connection");
                assert!(!bytes.is_empty(), "empty transmit");
            }
            Output::Close { conn } => {
                assert!(open.remove(&conn.0), "close of a closed connection");
            }
            Output::Event(_)
            | Output::AdminReply { .. }
            | Output::WriteConfig { .. }
            | Output::Control(_)
            | Output::BridgeConnect { .. } => {}
        }
    }
}
