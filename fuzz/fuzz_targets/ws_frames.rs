//! The WebSocket handshake and frame decoder: any bytes, any split, never a panic; decoded
//! payloads never exceed the frame limit, and splitting the input does not change the result.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tidemq_core::ws::{Frame, FrameDecoder, handshake};

fn decode_all(data: &[u8], split: usize) -> (Vec<Frame>, Option<u16>) {
    let mut decoder = FrameDecoder::new(256);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(split.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => {
                    if let Frame::Data(d) | Frame::Ping(d) = &f {
                        assert!(d.len() <= 256);
                    }
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e.close_code())),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let _ = handshake(data, "/mqtt");
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let whole = decode_all(rest, rest.len());
    let pieces = decode_all(rest, usize::from(split % 16) + 1);
    assert_eq!(whole, pieces, "splitting changed the decoding");
});
