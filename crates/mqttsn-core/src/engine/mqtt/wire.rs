//! The seam between the upstream MQTT session and an MQTT packet codec: the packets the session
//! writes and reads, in protocol-neutral terms, and the [`MqttWire`] trait a codec implements.
//!
//! The gateway implements it on rumqttc's MQTT 3.1.1 codec. rumqttc depends on tokio, so it
//! cannot be a dependency of this crate; behind the trait, the session stays pure and MQTT 5 can
//! come as a second implementation. Also here: the fixed-header length rule shared by everything
//! that cuts a byte stream into packets.

use bytes::{Bytes, BytesMut};
use std::fmt;

use super::{ConnectOptions, ConnectRefusal, MqttError, QoS};

/// The largest remaining length the 4-byte variable length integer can carry (MQTT §2.2.3).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// The largest whole packet: fixed header byte, 4 length bytes, remaining length.
pub const MAX_PACKET_SIZE: usize = 1 + 4 + MAX_REMAINING_LENGTH;

/// A PUBLISH the session sends (and keeps, at QoS 1/2, for resending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPacket {
    /// Topic name.
    pub topic: String,
    /// Body.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain flag.
    pub retain: bool,
    /// Redelivery flag.
    pub dup: bool,
    /// Packet id; 0 at QoS 0.
    pub pid: u16,
}

/// A SUBSCRIBE the session sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribePacket {
    /// Packet id.
    pub pid: u16,
    /// Filters with the QoS asked for, in order.
    pub filters: Vec<(String, QoS)>,
}

/// An UNSUBSCRIBE the session sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubscribePacket {
    /// Packet id.
    pub pid: u16,
    /// Filters, in order.
    pub filters: Vec<String>,
}

/// A packet to encode.
#[derive(Debug, Clone, Copy)]
pub enum Outgoing<'a> {
    /// CONNECT built from validated options.
    Connect(&'a ConnectOptions),
    /// PUBLISH.
    Publish(&'a PublishPacket),
    /// SUBSCRIBE.
    Subscribe(&'a SubscribePacket),
    /// UNSUBSCRIBE.
    Unsubscribe(&'a UnsubscribePacket),
    /// PUBACK for a broker message.
    PubAck(u16),
    /// PUBREC for a broker message.
    PubRec(u16),
    /// PUBREL for one of ours.
    PubRel(u16),
    /// PUBCOMP for a broker message.
    PubComp(u16),
    /// PINGREQ.
    PingReq,
    /// DISCONNECT.
    Disconnect,
}

/// A packet from the broker, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// CONNACK.
    ConnAck {
        /// The broker resumed a stored session.
        session_present: bool,
        /// `None`: accepted.
        refused: Option<ConnectRefusal>,
    },
    /// PUBLISH.
    Publish {
        /// Topic name.
        topic: String,
        /// Body.
        payload: Bytes,
        /// QoS.
        qos: QoS,
        /// Retain flag.
        retain: bool,
        /// Redelivery flag.
        dup: bool,
        /// Packet id; zero for QoS 0.
        pid: u16,
    },
    /// PUBACK.
    PubAck(u16),
    /// PUBREC.
    PubRec(u16),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBACK: per filter, the granted QoS or `None` for failure.
    SubAck {
        /// Packet id.
        pid: u16,
        /// Grants, in filter order.
        granted: Vec<Option<QoS>>,
    },
    /// UNSUBACK.
    UnsubAck(u16),
    /// PINGRESP.
    PingResp,
    /// A PUBLISH larger than the session accepts, read only as far as its packet id: the
    /// message is dropped, and the next `skip` bytes of the stream are the rest of it.
    TooLarge {
        /// The whole packet's size.
        size: usize,
        /// Its QoS.
        qos: QoS,
        /// Its packet id; zero at QoS 0.
        pid: u16,
        /// Bytes of it still to come, to be discarded as they arrive.
        skip: usize,
    },
}

impl Incoming {
    /// The packet's name as the specification writes it, for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Incoming::ConnAck { .. } => "CONNACK",
            Incoming::Publish { .. } => "PUBLISH",
            Incoming::PubAck(_) => "PUBACK",
            Incoming::PubRec(_) => "PUBREC",
            Incoming::PubRel(_) => "PUBREL",
            Incoming::PubComp(_) => "PUBCOMP",
            Incoming::SubAck { .. } => "SUBACK",
            Incoming::UnsubAck(_) => "UNSUBACK",
            Incoming::PingResp => "PINGRESP",
            Incoming::TooLarge { .. } => "PUBLISH",
        }
    }
}

/// An MQTT packet codec (one protocol version).
pub trait MqttWire: Send + Sync + fmt::Debug {
    /// The bytes `packet` takes on the wire.
    fn encoded_len(&self, packet: Outgoing<'_>) -> usize;

    /// Appends `packet` to `tx`; on failure `tx` is left as it was.
    fn write(&self, packet: Outgoing<'_>, tx: &mut BytesMut) -> Result<(), MqttError>;

    /// Takes the next whole packet off the front of `rx`. `Ok(None)`: more bytes are needed.
    /// `Err`: a protocol error after which the stream cannot be resynchronised. A packet whose
    /// remaining length exceeds `max_remaining` is an error as soon as its fixed header is in.
    fn read(&self, rx: &mut BytesMut, max_remaining: usize) -> Result<Option<Incoming>, String>;
}

/// The fixed header at the start of a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// Bytes of the fixed header: the type byte plus 1 to 4 length bytes.
    pub header_len: usize,
    /// The remaining length it declares.
    pub remaining: usize,
}

impl FixedHeader {
    /// The whole packet's length.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining
    }
}

/// Why a byte stream cannot be cut into MQTT packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed remaining length: a fifth length byte")]
pub struct MalformedLength;

/// Reads the fixed header at the start of `buf`: `Ok(None)` until its length bytes are all in.
/// The one implementation of MQTT's variable length integer (§2.2.3) in the project.
pub fn fixed_header(buf: &[u8]) -> Result<Option<FixedHeader>, MalformedLength> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                header_len: 2 + i,
                remaining,
            }));
        }
    }
    Err(MalformedLength)
}

/// The length of the whole packet at the start of `buf`, or `Ok(None)` while `buf` holds less.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, MalformedLength> {
    Ok(fixed_header(buf)?
        .map(|h| h.packet_len())
        .filter(|&len| buf.len() >= len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_of_every_width() {
        assert_eq!(packet_len(&[0xD0, 0x00]), Ok(Some(2)));
        assert_eq!(packet_len(&[0x30, 0x02, 1]), Ok(None));
        assert_eq!(packet_len(&[0x30, 0x02, 1, 2, 3]), Ok(Some(4)));
        assert_eq!(
            fixed_header(&[0x30, 0xC1, 0x02]),
            Ok(Some(FixedHeader {
                header_len: 3,
                remaining: 321
            }))
        );
        assert_eq!(
            fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]),
            Ok(Some(FixedHeader {
                header_len: 5,
                remaining: MAX_REMAINING_LENGTH
            }))
        );
        assert_eq!(fixed_header(&[0x30, 0x80, 0x80]), Ok(None));
        assert_eq!(fixed_header(&[0x30]), Ok(None));
    }

    #[test]
    fn a_fifth_length_byte_is_malformed() {
        assert_eq!(
            fixed_header(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(MalformedLength)
        );
    }
}
