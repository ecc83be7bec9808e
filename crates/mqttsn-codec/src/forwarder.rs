//! Forwarder encapsulation (§5.5): a forwarder relays the frames of many radio nodes over one
//! link by wrapping each in `Len FE Ctrl WirelessNodeId`. [`Frame`] is what arrives on a link:
//! a message, possibly wrapped.

use super::error::{DecodeError, EncodeError};
use super::types::MsgType;
use super::wire::MAX_LENGTH;
use super::{DecodeOptions, Message};
use crate::wire::Put;

/// Smallest encapsulation header: Len, MsgType 0xFE, Ctrl (the node id may in theory be empty).
const MIN_HEADER: usize = 3;
/// Longest node id that keeps the 1-octet Len within 255.
const MAX_NODE_ID: usize = 255 - MIN_HEADER;

/// The encapsulation header of a frame relayed by a forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Forwarder<'a> {
    /// Broadcast radius (Ctrl bits 1-0), only meaningful from gateway to forwarder.
    pub radius: u8,
    /// The wireless node id of the radio node the inner message comes from or goes to.
    pub node_id: &'a [u8],
}

/// A frame as carried by a link: one message, possibly encapsulated by a forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The encapsulation header, when a forwarder relayed the message.
    pub forwarder: Option<Forwarder<'a>>,
    /// The MQTT-SN message itself.
    pub message: Message<'a>,
}

impl<'a> Frame<'a> {
    /// True when `bytes` starts with a forwarder encapsulation header rather than a message.
    pub fn is_encapsulated(bytes: &[u8]) -> bool {
        // 0x01 announces a 3-octet length, whose high octet could be 0xFE; never a wrapper.
        matches!(bytes, [first, 0xFE, ..] if *first != 0x01)
    }

    /// Decodes a frame, unwrapping a forwarder encapsulation when present.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, &DecodeOptions::default())
    }

    /// Decodes a frame with nonstandard forms enabled as `opts` says.
    pub fn decode_with(bytes: &'a [u8], opts: &DecodeOptions) -> Result<Self, DecodeError> {
        let (forwarder, inner) = Self::unwrap(bytes)?;
        Ok(Frame {
            forwarder,
            message: Message::decode_with(inner, opts)?,
        })
    }

    /// Splits a frame into its encapsulation header, if any, and the bytes of the message
    /// inside, without decoding the message (for example to answer a message whose body does
    /// not decode, by its type and id).
    pub fn unwrap(bytes: &'a [u8]) -> Result<(Option<Forwarder<'a>>, &'a [u8]), DecodeError> {
        if !Self::is_encapsulated(bytes) {
            return Ok((None, bytes));
        }
        let header_len = usize::from(bytes[0]);
        if header_len < MIN_HEADER {
            return Err(DecodeError::BadEncapsulation(
                "length octet is below the 3-octet minimum",
            ));
        }
        let header = bytes
            .get(..header_len)
            .ok_or(DecodeError::BadEncapsulation(
                "frame ends inside the encapsulation header",
            ))?;
        let inner = &bytes[header_len..];
        if inner.is_empty() {
            return Err(DecodeError::BadEncapsulation("no message after the header"));
        }
        let forwarder = Forwarder {
            radius: header[2] & 0b11,
            node_id: &header[MIN_HEADER..],
        };
        Ok((Some(forwarder), inner))
    }

    /// A frame that is not encapsulated.
    pub fn plain(message: Message<'a>) -> Self {
        Frame {
            forwarder: None,
            message,
        }
    }

    /// The number of bytes [`Frame::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.forwarder.map_or(0, |f| MIN_HEADER + f.node_id.len()) + self.message.encoded_len()
    }

    /// Appends the encoded frame to `out` and returns its length.
    pub fn encode(&self, out: &mut impl Put) -> Result<usize, EncodeError> {
        // Check the inner message first so that a failure leaves `out` untouched.
        let inner_len = self.message.encoded_len();
        if inner_len > MAX_LENGTH {
            return Err(EncodeError::TooLong(inner_len));
        }
        if let Some(f) = self.forwarder {
            if f.node_id.len() > MAX_NODE_ID {
                return Err(EncodeError::NodeIdTooLong(f.node_id.len()));
            }
        }
        let total = self.encoded_len();
        if total > out.remaining() {
            return Err(EncodeError::BufferTooSmall {
                needed: total,
                available: out.remaining(),
            });
        }
        let mut header = 0;
        if let Some(f) = self.forwarder {
            header = MIN_HEADER + f.node_id.len();
            out.put_u8(header as u8);
            out.put_u8(MsgType::Encapsulated as u8);
            out.put_u8(f.radius & 0b11);
            out.put_slice(f.node_id);
        }
        Ok(header + self.message.encode(out)?)
    }

    /// Encodes into the start of `buf` and returns the length written; `buf` is left as it was
    /// when it is too small.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode(&mut crate::wire::SliceWriter::new(buf))
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>, EncodeError> {
        let mut out = alloc::vec::Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out)
    }
}
