//! Typed decode and encode errors: each says what is wrong with a frame, precisely enough to
//! put in a log line or print from the `decode` tool.

use super::types::{MsgType, TopicIdType};
use thiserror::Error;

/// Why a byte string is not a valid MQTT-SN v1.2 message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// No bytes at all.
    #[error("empty frame")]
    Empty,
    /// The frame ends before its header (length and type) is complete.
    #[error("truncated header: {got} bytes, the header needs {needed}")]
    TruncatedHeader {
        /// Header octets needed.
        needed: usize,
        /// Octets present.
        got: usize,
    },
    /// The Length field holds a value no message can have.
    #[error("invalid length field {declared}: a message with a {header}-octet header is at least {min} bytes")]
    InvalidLength {
        /// The declared total length.
        declared: usize,
        /// Size of the length field itself (1 or 3).
        header: usize,
        /// The smallest valid total.
        min: usize,
    },
    /// The Length field and the number of bytes received disagree.
    #[error("length field says {declared} bytes but the frame has {actual}")]
    LengthMismatch {
        /// The declared total length.
        declared: usize,
        /// The bytes present.
        actual: usize,
    },
    /// A message type code that v1.2 reserves.
    #[error("reserved message type 0x{0:02X}")]
    ReservedType(u8),
    /// The body of a message does not have a size that message can have.
    #[error("{msg_type}: body of {got} bytes, expected {expected}")]
    BodyLength {
        /// The message being decoded.
        msg_type: MsgType,
        /// What sizes are allowed, in words ("exactly 2", "at least 5").
        expected: &'static str,
        /// The body size present.
        got: usize,
    },
    /// CONNECT with a protocol id other than 0x01.
    #[error("CONNECT: protocol id 0x{0:02X}, expected 0x01 (MQTT-SN v1.2)")]
    BadProtocolId(u8),
    /// A TopicIdType that the message cannot carry.
    #[error("{msg_type}: topic id type {} is not valid in this message", .topic_id_type.name())]
    BadTopicIdType {
        /// The message being decoded.
        msg_type: MsgType,
        /// The offending type.
        topic_id_type: TopicIdType,
    },
    /// A string field that is not valid UTF-8.
    #[error("{msg_type}: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The message being decoded.
        msg_type: MsgType,
        /// The field, e.g. "topic name" or "client id".
        field: &'static str,
    },
    /// A return code in the reserved range 0x04..=0xFF.
    #[error("{msg_type}: reserved return code 0x{code:02X}")]
    ReservedReturnCode {
        /// The message being decoded.
        msg_type: MsgType,
        /// The offending code.
        code: u8,
    },
    /// The nonstandard long-topic QoS -1 PUBLISH declares a name longer than the message.
    #[error("PUBLISH (QoS -1 long topic): topic name length {declared} exceeds the {available} bytes left")]
    LongTopicOverrun {
        /// The name length from the TopicId field.
        declared: usize,
        /// Bytes left after the MsgId.
        available: usize,
    },
    /// A forwarder encapsulation whose header is malformed.
    #[error("forwarder encapsulation: {0}")]
    BadEncapsulation(&'static str),
}

/// Why a message cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The message would exceed the 65535 bytes the 3-octet Length field can express.
    #[error("message of {0} bytes exceeds the MQTT-SN maximum of 65535")]
    TooLong(usize),
    /// A forwarder wireless node id too long for the 1-octet encapsulation length.
    #[error("wireless node id of {0} bytes exceeds the 252 bytes an encapsulation can carry")]
    NodeIdTooLong(usize),
    /// The caller's buffer cannot hold the encoded message.
    #[error("encoding needs {needed} bytes but the buffer holds {available}")]
    BufferTooSmall {
        /// Bytes the encoding takes.
        needed: usize,
        /// Size of the buffer given.
        available: usize,
    },
}
