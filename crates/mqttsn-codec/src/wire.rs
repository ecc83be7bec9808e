//! Low-level wire helpers: the Length/MsgType header in both forms (§5.2.1) and a bounds-checked
//! reader over a message body that turns every short read into a typed error.

use super::error::DecodeError;
use super::types::MsgType;

/// Where encoded bytes go: a caller's fixed buffer ([`SliceWriter`]) or, with the `alloc`
/// feature, a `Vec<u8>`. Encoders check the whole length against [`Put::remaining`] before they
/// write anything, so a put never runs out of room.
pub trait Put {
    /// How many more bytes fit; growable sinks have no limit.
    fn remaining(&self) -> usize {
        usize::MAX
    }

    /// Appends a slice.
    fn put_slice(&mut self, bytes: &[u8]);

    /// Appends one octet.
    fn put_u8(&mut self, byte: u8) {
        self.put_slice(&[byte]);
    }

    /// Appends a big-endian 16-bit integer.
    fn put_u16(&mut self, value: u16) {
        self.put_slice(&value.to_be_bytes());
    }
}

#[cfg(feature = "alloc")]
impl Put for alloc::vec::Vec<u8> {
    fn put_slice(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes into a caller's buffer, for encoding without an allocator. The encoders refuse a
/// message that does not fit before writing; a direct put that would still overrun is cut off
/// (never a panic) and shows up as a short [`SliceWriter::written`].
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> SliceWriter<'a> {
    /// A writer at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.pos
    }
}

impl Put for SliceWriter<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn put_slice(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.remaining());
        self.buf[self.pos..self.pos + n].copy_from_slice(&bytes[..n]);
        self.pos += n;
    }
}

/// The largest total length the 1-octet form can express.
pub const MAX_SHORT_LENGTH: usize = 255;
/// The largest total length of any MQTT-SN message.
pub const MAX_LENGTH: usize = 65535;
/// The marker octet announcing the 3-octet length form.
const LONG_FORM: u8 = 0x01;

/// The parsed Length field: total message length and how many octets the field took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Length {
    /// Total message length, including the Length field itself.
    pub total: usize,
    /// Octets used by the Length field (1 or 3).
    pub field_len: usize,
}

/// Reads the Length field at the start of `bytes`. Returns `Ok(None)` when more bytes are needed
/// to know the length (useful for stream framings), and an error when the value is impossible.
pub fn peek_length(bytes: &[u8]) -> Result<Option<Length>, DecodeError> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    let (total, field_len) = if first == LONG_FORM {
        if bytes.len() < 3 {
            return Ok(None);
        }
        (usize::from(u16::from_be_bytes([bytes[1], bytes[2]])), 3)
    } else {
        (usize::from(first), 1)
    };
    // A message needs its Length field and the MsgType octet.
    let min = field_len + 1;
    if total < min {
        return Err(DecodeError::InvalidLength {
            declared: total,
            header: field_len,
            min,
        });
    }
    Ok(Some(Length { total, field_len }))
}

/// Splits a whole frame into its type octet and body, checking the Length field against the
/// frame's size.
pub fn split_header(bytes: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    let len = match peek_length(bytes)? {
        Some(len) => len,
        None => {
            return Err(DecodeError::TruncatedHeader {
                needed: 4,
                got: bytes.len(),
            })
        }
    };
    if bytes.len() < len.field_len + 1 {
        return Err(DecodeError::TruncatedHeader {
            needed: len.field_len + 1,
            got: bytes.len(),
        });
    }
    if len.total != bytes.len() {
        return Err(DecodeError::LengthMismatch {
            declared: len.total,
            actual: bytes.len(),
        });
    }
    Ok((bytes[len.field_len], &bytes[len.field_len + 1..]))
}

/// Total message length for a body of `body_len` bytes, choosing the 1-octet length form
/// whenever the total fits in it.
pub fn total_len(body_len: usize) -> usize {
    if body_len + 2 <= MAX_SHORT_LENGTH {
        body_len + 2
    } else {
        body_len + 4
    }
}

/// Writes the header for a message of `total` bytes (as returned by [`total_len`]).
pub fn put_header(out: &mut impl Put, total: usize, msg_type: MsgType) {
    if total <= MAX_SHORT_LENGTH {
        out.put_u8(total as u8);
    } else {
        out.put_u8(LONG_FORM);
        out.put_u16(total as u16);
    }
    out.put_u8(msg_type as u8);
}

/// A cursor over a message body; every read that runs past the end reports which message was
/// too short.
pub struct Reader<'a> {
    msg_type: MsgType,
    body: &'a [u8],
    pos: usize,
    expected: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader for the body of `msg_type`; `expected` describes valid body sizes for errors.
    pub fn new(msg_type: MsgType, body: &'a [u8], expected: &'static str) -> Self {
        Reader {
            msg_type,
            body,
            pos: 0,
            expected,
        }
    }

    fn short(&self) -> DecodeError {
        DecodeError::BodyLength {
            msg_type: self.msg_type,
            expected: self.expected,
            got: self.body.len(),
        }
    }

    /// One octet.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.body.get(self.pos).ok_or_else(|| self.short())?;
        self.pos += 1;
        Ok(b)
    }

    /// A big-endian 16-bit integer.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// Exactly `n` octets.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.short())?;
        let bytes = self.body.get(self.pos..end).ok_or_else(|| self.short())?;
        self.pos = end;
        Ok(bytes)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        let bytes = &self.body[self.pos.min(self.body.len())..];
        self.pos = self.body.len();
        bytes
    }

    /// Everything left, as UTF-8 text.
    pub fn rest_str(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let msg_type = self.msg_type;
        core::str::from_utf8(self.rest()).map_err(|_| DecodeError::InvalidUtf8 { msg_type, field })
    }

    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.body.len()
    }

    /// Fails unless the whole body was consumed (fixed-size messages).
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(self.short())
        }
    }
}

/// Decodes `bytes` as UTF-8 or reports which field of which message is not.
pub fn utf8<'a>(
    bytes: &'a [u8],
    msg_type: MsgType,
    field: &'static str,
) -> Result<&'a str, DecodeError> {
    core::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { msg_type, field })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn length_forms() {
        assert_eq!(
            peek_length(&[0x03, 0x05, 0x00]).unwrap(),
            Some(Length {
                total: 3,
                field_len: 1
            })
        );
        assert_eq!(
            peek_length(&[0x01, 0x01, 0x35]).unwrap(),
            Some(Length {
                total: 309,
                field_len: 3
            })
        );
        assert_eq!(peek_length(&[0x01, 0x00]).unwrap(), None);
        assert_eq!(peek_length(&[]).unwrap(), None);
        assert!(matches!(
            peek_length(&[0x00]),
            Err(DecodeError::InvalidLength { declared: 0, .. })
        ));
        assert!(matches!(
            peek_length(&[0x01, 0x00, 0x03]),
            Err(DecodeError::InvalidLength { declared: 3, .. })
        ));
    }

    #[test]
    fn header_boundary_is_255() {
        assert_eq!(total_len(253), 255);
        assert_eq!(total_len(254), 258);
        let mut out = Vec::new();
        put_header(&mut out, 255, MsgType::Publish);
        assert_eq!(out, [0xFF, 0x0C]);
        out.clear();
        put_header(&mut out, 258, MsgType::Publish);
        assert_eq!(out, [0x01, 0x01, 0x02, 0x0C]);
    }

    #[test]
    fn split_header_checks_the_length() {
        assert_eq!(split_header(&[0x02, 0x17]).unwrap(), (0x17, &[][..]));
        assert_eq!(
            split_header(&[0x03, 0x17]),
            Err(DecodeError::LengthMismatch {
                declared: 3,
                actual: 2
            })
        );
        assert_eq!(
            split_header(&[0x01, 0x00, 0x04]),
            Err(DecodeError::TruncatedHeader { needed: 4, got: 3 })
        );
        assert_eq!(split_header(&[]), Err(DecodeError::Empty));
    }
}
