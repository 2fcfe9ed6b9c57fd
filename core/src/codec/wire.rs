//! The wire's primitives: a bounds-checked reader and the writers for variable byte integers,
//! strings and binary fields. Everything else in the codec is built on these.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::DecodeError;

pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

/// Callers check field lengths with [`check_fields`] first; longer values are cut, never
/// written with a wrong prefix.
pub(crate) fn put_str(out: &mut BytesMut, s: &str) {
    put_binary(out, s.as_bytes());
}

pub(crate) fn put_binary(out: &mut BytesMut, b: &[u8]) {
    let len = b.len().min(u16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(b.get(..len).unwrap_or_default());
}

/// A bounds-checked cursor over one packet body. Every read fails with `Malformed` past the end.
pub(crate) struct Reader {
    data: Bytes,
}

const TRUNCATED: DecodeError = DecodeError::Malformed("packet truncated");

impl Reader {
    pub(crate) fn new(data: Bytes) -> Reader {
        Reader { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.data.is_empty() {
            return Err(TRUNCATED);
        }
        Ok(self.data.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.data.len() < 2 {
            return Err(TRUNCATED);
        }
        Ok(self.data.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        if self.data.len() < 4 {
            return Err(TRUNCATED);
        }
        Ok(self.data.get_u32())
    }

    pub(crate) fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::Protocol("packet identifier 0")),
            id => Ok(id),
        }
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value: u32 = 0;
        for i in 0..4 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(DecodeError::Malformed("non-minimal variable byte integer"));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.data.len() < n {
            return Err(TRUNCATED);
        }
        Ok(self.data.split_to(n))
    }

    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader, DecodeError> {
        self.take(n).map(Reader::new)
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()? as usize;
        self.take(len)
    }

    /// A UTF-8 string as MQTT defines it: well-formed and without U+0000.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let raw = self.binary()?;
        // A zero byte is U+0000 in UTF-8 and nothing else: a byte search, no char decoding.
        if raw.contains(&0) {
            return Err(DecodeError::Malformed("U+0000 in a string"));
        }
        let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::Malformed("invalid UTF-8"))?;
        Ok(s.to_owned())
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }
}
