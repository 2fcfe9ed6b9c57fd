//! MQTT over WebSocket (RFC 6455) as pure code: the opening handshake and the frame codec.
//! The runtime moves bytes; this decides what they mean, so it can be fuzzed and simulated.
//! MQTT sees a byte stream: frame boundaries carry no meaning [MQTT-6.0.0-2].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::{Engine, alphabet};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

/// The longest request head accepted in the opening handshake.
pub const MAX_HANDSHAKE: usize = 8 * 1024;

/// The outcome of looking at the bytes received so far on a new WebSocket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// The request head is not complete yet.
    NeedMore,
    /// Send `response`; the connection now carries frames. `consumed` bytes were the head.
    Accept { response: Vec<u8>, consumed: usize },
    /// Send `response` and close.
    Reject { response: Vec<u8>, reason: String },
}

fn reject(status: &str, reason: &str) -> Handshake {
    Handshake::Reject {
        response: format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .into_bytes(),
        reason: reason.to_owned(),
    }
}

/// Answers a client's opening handshake for the endpoint at `path`, choosing the `mqtt` or
/// `mqttv3.1` subprotocol when offered.
pub fn handshake(received: &[u8], path: &str) -> Handshake {
    let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        if received.len() > MAX_HANDSHAKE {
            return reject("431 Request Header Fields Too Large", "handshake too long");
        }
        return Handshake::NeedMore;
    };
    let consumed = end + 4;
    if consumed > MAX_HANDSHAKE {
        return reject("431 Request Header Fields Too Large", "handshake too long");
    }
    let Some(head) = received
        .get(..end)
        .and_then(|h| std::str::from_utf8(h).ok())
    else {
        return reject("400 Bad Request", "request head is not text");
    };
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    if method != Some("GET") || version.is_none_or(|v| !v.starts_with("HTTP/1.")) {
        return reject("400 Bad Request", "not an HTTP/1.1 GET");
    }
    let target_path = target
        .unwrap_or_default()
        .split('?')
        .next()
        .unwrap_or_default();
    if target_path != path {
        return reject("404 Not Found", "no MQTT endpoint at this path");
    }
    let mut upgrade = false;
    let mut connection_upgrade = false;
    let mut version13 = false;
    let mut key = None;
    let mut protocol = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return reject("400 Bad Request", "malformed header line");
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                connection_upgrade = value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-version" => version13 = value == "13",
            "sec-websocket-key" => key = Some(value.to_owned()),
            "sec-websocket-protocol" if protocol.is_none() => {
                protocol = value
                    .split(',')
                    .map(str::trim)
                    .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"))
                    .map(str::to_owned);
            }
            _ => {}
        }
    }
    if !upgrade || !connection_upgrade {
        return reject("426 Upgrade Required", "not a WebSocket upgrade");
    }
    if !version13 {
        return reject("426 Upgrade Required", "WebSocket version 13 only");
    }
    let Some(key) = key.filter(|k| LENIENT.decode(k).ok().is_some_and(|d| d.len() == 16)) else {
        return reject("400 Bad Request", "missing or malformed Sec-WebSocket-Key");
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(&key)
    );
    if let Some(p) = protocol {
        response.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    response.push_str("\r\n");
    Handshake::Accept {
        response: response.into_bytes(),
        consumed,
    }
}

/// Base64 as the key was always read here: canonical padding, bits past the last byte
/// ignored.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(Sha1::digest(&input))
}

/// What a client frame meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// MQTT bytes (a binary frame or its continuation).
    Data(Bytes),
    /// Answer with a pong carrying the same bytes.
    Ping(Bytes),
    Pong,
    /// The client closes; answer with a close frame and end the connection.
    Close,
}

/// Why a frame stream was refused; each maps to the close code the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Malformed or forbidden framing (1002).
    Protocol(&'static str),
    /// A text frame: MQTT is binary only [MQTT-6.0.0-1] (1003).
    Text,
    /// Frame longer than allowed (1009).
    TooBig,
}

impl FrameError {
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::Text => 1003,
            FrameError::TooBig => 1009,
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Protocol(what) => write!(f, "WebSocket protocol error: {what}"),
            FrameError::Text => write!(f, "WebSocket text frame (MQTT needs binary frames)"),
            FrameError::TooBig => write!(f, "WebSocket frame too large"),
        }
    }
}

/// Decodes client frames: masked, no extensions, control frames short and whole, binary
/// data possibly fragmented.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame: usize,
    /// Inside a fragmented binary message.
    fragmented: bool,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> FrameDecoder {
        FrameDecoder {
            max_frame,
            fragmented: false,
        }
    }

    /// The next frame at the front of `buf`, removing its bytes; `Ok(None)` until complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(FrameError::Protocol("client frame not masked"));
        }
        let (len, header) = match b1 & 0x7F {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(bytes) => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(bytes);
                    let n = u64::from_be_bytes(a);
                    if n >> 63 != 0 {
                        return Err(FrameError::Protocol("64-bit length with the top bit set"));
                    }
                    (n, 10)
                }
                None => return Ok(None),
            },
            n => (u64::from(n), 2),
        };
        let control = opcode & 0x08 != 0;
        if control && (len > 125 || !fin) {
            return Err(FrameError::Protocol("control frame too long or fragmented"));
        }
        let len = usize::try_from(len).map_err(|_| FrameError::TooBig)?;
        if len > self.max_frame {
            return Err(FrameError::TooBig);
        }
        let total = header + 4 + len;
        if buf.len() < total {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(buf.get(header..header + 4).unwrap_or(&[0; 4]));
        buf.advance(header + 4);
        let mut payload = buf.split_to(len);
        for (b, m) in payload.iter_mut().zip(mask.iter().cycle()) {
            *b ^= m;
        }
        let payload = payload.freeze();
        match opcode {
            0x0 => {
                if !self.fragmented {
                    return Err(FrameError::Protocol("continuation without a message"));
                }
                self.fragmented = !fin;
                Ok(Some(Frame::Data(payload)))
            }
            0x1 => Err(FrameError::Text),
            0x2 => {
                if self.fragmented {
                    return Err(FrameError::Protocol("new message inside a fragmented one"));
                }
                self.fragmented = !fin;
                Ok(Some(Frame::Data(payload)))
            }
            0x8 => Ok(Some(Frame::Close)),
            0x9 => Ok(Some(Frame::Ping(payload))),
            0xA => Ok(Some(Frame::Pong)),
            _ => Err(FrameError::Protocol("unknown opcode")),
        }
    }
}

fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A server binary frame (unmasked) carrying MQTT bytes.
pub fn binary_frame(payload: &[u8], out: &mut BytesMut) {
    put_header(out, 0x2, payload.len());
    out.put_slice(payload);
}

/// A pong answering a ping's payload.
pub fn pong_frame(payload: &[u8], out: &mut BytesMut) {
    let payload = payload.get(..125).unwrap_or(payload);
    put_header(out, 0xA, payload.len());
    out.put_slice(payload);
}

/// A close frame with a status code.
pub fn close_frame(code: u16, out: &mut BytesMut) {
    put_header(out, 0x8, 2);
    out.put_u16(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_u8(u8::from(fin) << 7 | opcode);
        let len = payload.len();
        if len < 126 {
            out.put_u8(0x80 | len as u8);
        } else if len <= 65535 {
            out.put_u8(0x80 | 126);
            out.put_u16(len as u16);
        } else {
            out.put_u8(0x80 | 127);
            out.put_u64(len as u64);
        }
        out.put_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out.to_vec()
    }

    #[test]
    fn accept_key_matches_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn handshake_accepts_mqtt_and_answers_the_subprotocol() {
        let req = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqttv3.1, mqtt\r\n\r\n\x10";
        let Handshake::Accept { response, consumed } = handshake(req, "/mqtt") else {
            panic!("refused")
        };
        assert_eq!(consumed, req.len() - 1);
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: mqttv3.1\r\n"));
        assert_eq!(handshake(&req[..20], "/mqtt"), Handshake::NeedMore);
    }

    #[test]
    fn handshake_refusals() {
        let ok = "GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        for (bad, status) in [
            (ok.replace("/mqtt", "/other"), "404"),
            (ok.replace("GET", "POST"), "400"),
            (ok.replace("Upgrade: websocket\r\n", ""), "426"),
            (ok.replace("13", "8"), "426"),
            (ok.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), "400"),
        ] {
            match handshake(bad.as_bytes(), "/mqtt") {
                Handshake::Reject { response, .. } => {
                    assert!(
                        String::from_utf8(response).unwrap().contains(status),
                        "{bad}"
                    )
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(
            handshake(&[b'a'; MAX_HANDSHAKE + 1], "/mqtt"),
            Handshake::Reject { .. }
        ));
    }

    #[test]
    fn frames_decode_across_any_split() {
        let mut stream = Vec::new();
        stream.extend(client_frame(false, 0x2, b"\x10\x0c", [1, 2, 3, 4]));
        stream.extend(client_frame(true, 0x9, b"hi", [9, 9, 9, 9]));
        stream.extend(client_frame(true, 0x0, b"\x00\x04MQTT", [5, 6, 7, 8]));
        stream.extend(client_frame(true, 0x2, &[7u8; 300], [0, 1, 0, 1]));
        for split in 1..stream.len() {
            let mut dec = FrameDecoder::new(1024);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for piece in stream.chunks(split) {
                buf.extend_from_slice(piece);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame::Data(Bytes::from_static(b"\x10\x0c")),
                    Frame::Ping(Bytes::from_static(b"hi")),
                    Frame::Data(Bytes::from_static(b"\x00\x04MQTT")),
                    Frame::Data(Bytes::from(vec![7u8; 300])),
                ]
            );
        }
    }

    #[test]
    fn bad_frames_are_refused_with_their_close_code() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (client_frame(true, 0x1, b"text", [1; 4]), 1003),
            (
                {
                    let mut f = client_frame(true, 0x2, b"x", [1; 4]);
                    f[1] &= 0x7F;
                    f
                },
                1002,
            ),
            (
                {
                    let mut f = client_frame(true, 0x2, b"x", [1; 4]);
                    f[0] |= 0x40;
                    f
                },
                1002,
            ),
            (client_frame(true, 0x0, b"x", [1; 4]), 1002),
            (client_frame(false, 0x9, b"x", [1; 4]), 1002),
            (client_frame(true, 0x9, &[0; 126], [1; 4]), 1002),
            (client_frame(true, 0x3, b"x", [1; 4]), 1002),
            (client_frame(true, 0x2, &[0; 2000], [1; 4]), 1009),
            (vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1], 1002),
        ];
        for (frame, code) in cases {
            let mut dec = FrameDecoder::new(1024);
            let err = dec.decode(&mut BytesMut::from(&frame[..])).unwrap_err();
            assert_eq!(err.close_code(), code, "{frame:?}");
        }
        let mut dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::from(&client_frame(false, 0x2, b"a", [1; 4])[..]);
        buf.extend_from_slice(&client_frame(true, 0x2, b"b", [1; 4]));
        assert!(dec.decode(&mut buf).unwrap().is_some());
        assert_eq!(dec.decode(&mut buf).unwrap_err().close_code(), 1002);
    }

    #[test]
    fn server_frames_have_the_right_length_encoding() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut out = BytesMut::new();
            binary_frame(&vec![0u8; len], &mut out);
            let header = match len {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x82);
        }
    }
}
