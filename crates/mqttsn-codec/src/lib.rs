//! The MQTT-SN v1.2 wire format: every message of the spec (§5), both Length forms, the flags,
//! and the forwarder encapsulation (§5.5).
//!
//! Decoding is total and zero-copy: [`Message::decode`] borrows strings and payloads from the
//! input and returns either a message or a [`DecodeError`] saying what is wrong; it never panics.
//! Encoding ([`Message::encode`]) writes the 1-octet Length form up to 255 bytes and the
//! 3-octet form above. Bits of the flags octet that mean nothing for a message are ignored on
//! decode and written as zero, so well-formed frames re-encode to the same bytes.
//!
//! `#![no_std]`, and decoding never allocates, so the same crate runs in device firmware:
//! [`Message::encode_into`] writes into a caller's buffer; the `alloc` feature (on by default)
//! adds [`Message::to_vec`] and encoding into a `Vec<u8>`.

#![no_std]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;

mod describe;
mod discovery;
mod error;
mod forwarder;
mod publish;
mod session;
mod subscribe;
mod types;
pub mod wire;

pub use discovery::{Advertise, GwInfo};
pub use error::{DecodeError, EncodeError};
pub use forwarder::{Forwarder, Frame};
pub use publish::{PubAck, Publish, RegAck, Register, TopicRef};
pub use session::{Connect, WillTopic, PROTOCOL_ID};
pub use subscribe::{SubAck, Subscribe, TopicFilter, Unsubscribe};
pub use types::{MsgType, QoS, ReturnCode, TopicIdType};

use wire::{put_header, split_header, total_len, Put, Reader, SliceWriter, MAX_LENGTH};

/// Switches for decoding forms outside the standard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Decode a QoS -1 PUBLISH with TopicIdType "normal" as the nonstandard long-topic form
    /// (TopicId = name length, then MsgId, name, data), as sent by some widespread clients.
    pub qos_minus1_long_topic: bool,
}

/// One MQTT-SN v1.2 message, borrowing its strings and payload from the frame it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Message<'a> {
    Advertise(Advertise),
    SearchGw {
        radius: u8,
    },
    GwInfo(GwInfo<'a>),
    Connect(Connect<'a>),
    ConnAck {
        return_code: ReturnCode,
    },
    WillTopicReq,
    /// `None` is the empty WILLTOPIC that deletes the will.
    WillTopic(Option<WillTopic<'a>>),
    WillMsgReq,
    WillMsg {
        msg: &'a [u8],
    },
    Register(Register<'a>),
    RegAck(RegAck),
    Publish(Publish<'a>),
    PubAck(PubAck),
    PubComp {
        msg_id: u16,
    },
    PubRec {
        msg_id: u16,
    },
    PubRel {
        msg_id: u16,
    },
    Subscribe(Subscribe<'a>),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck {
        msg_id: u16,
    },
    /// With a client id when a sleeping client wakes up to fetch its messages.
    PingReq {
        client_id: Option<&'a str>,
    },
    PingResp,
    /// With a duration when the client goes to sleep.
    Disconnect {
        duration: Option<u16>,
    },
    /// `None` is the empty WILLTOPICUPD that deletes the will.
    WillTopicUpd(Option<WillTopic<'a>>),
    WillTopicResp {
        return_code: ReturnCode,
    },
    WillMsgUpd {
        msg: &'a [u8],
    },
    WillMsgResp {
        return_code: ReturnCode,
    },
}

impl<'a> Message<'a> {
    /// Decodes one complete message (no forwarder encapsulation; see [`Frame::decode`]).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, &DecodeOptions::default())
    }

    /// Decodes one complete message with nonstandard forms enabled as `opts` says.
    pub fn decode_with(bytes: &'a [u8], opts: &DecodeOptions) -> Result<Self, DecodeError> {
        let (code, body) = split_header(bytes)?;
        let msg_type = MsgType::from_u8(code).ok_or(DecodeError::ReservedType(code))?;
        Self::decode_body(msg_type, body, opts)
    }

    fn decode_body(
        msg_type: MsgType,
        body: &'a [u8],
        opts: &DecodeOptions,
    ) -> Result<Self, DecodeError> {
        use MsgType as T;
        Ok(match msg_type {
            T::Advertise => Message::Advertise(Advertise::decode(body)?),
            T::SearchGw => Message::SearchGw {
                radius: match body {
                    [radius] => *radius,
                    // The PyPI `mqttsn` client packs Radius as a 16-bit number: accept it.
                    [0, radius] => *radius,
                    _ => {
                        return Err(DecodeError::BodyLength {
                            msg_type,
                            expected: "exactly 1 (or a 16-bit radius below 256)",
                            got: body.len(),
                        })
                    }
                },
            },
            T::GwInfo => Message::GwInfo(GwInfo::decode(body)?),
            T::Connect => Message::Connect(Connect::decode(body)?),
            T::ConnAck => Message::ConnAck {
                return_code: fixed_return_code(msg_type, body)?,
            },
            T::WillTopicReq => empty(msg_type, body, Message::WillTopicReq)?,
            T::WillTopic => Message::WillTopic(WillTopic::decode(msg_type, body)?),
            T::WillMsgReq => empty(msg_type, body, Message::WillMsgReq)?,
            T::WillMsg => Message::WillMsg { msg: body },
            T::Register => Message::Register(Register::decode(body)?),
            T::RegAck => {
                let (topic_id, msg_id, return_code) = publish::decode_ack(msg_type, body)?;
                Message::RegAck(RegAck {
                    topic_id,
                    msg_id,
                    return_code,
                })
            }
            T::Publish => Message::Publish(Publish::decode(body, opts)?),
            T::PubAck => {
                let (topic_id, msg_id, return_code) = publish::decode_ack(msg_type, body)?;
                Message::PubAck(PubAck {
                    topic_id,
                    msg_id,
                    return_code,
                })
            }
            T::PubComp => Message::PubComp {
                msg_id: fixed_u16(msg_type, body)?,
            },
            T::PubRec => Message::PubRec {
                msg_id: fixed_u16(msg_type, body)?,
            },
            T::PubRel => Message::PubRel {
                msg_id: fixed_u16(msg_type, body)?,
            },
            T::Subscribe => Message::Subscribe(Subscribe::decode(body)?),
            T::SubAck => Message::SubAck(SubAck::decode(body)?),
            T::Unsubscribe => Message::Unsubscribe(Unsubscribe::decode(body)?),
            T::UnsubAck => Message::UnsubAck {
                msg_id: fixed_u16(msg_type, body)?,
            },
            T::PingReq => Message::PingReq {
                client_id: if body.is_empty() {
                    None
                } else {
                    Some(wire::utf8(body, msg_type, "client id")?)
                },
            },
            T::PingResp => empty(msg_type, body, Message::PingResp)?,
            T::Disconnect => Message::Disconnect {
                duration: match body {
                    [] => None,
                    [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
                    _ => {
                        return Err(DecodeError::BodyLength {
                            msg_type,
                            expected: "0 or 2",
                            got: body.len(),
                        })
                    }
                },
            },
            T::WillTopicUpd => Message::WillTopicUpd(WillTopic::decode(msg_type, body)?),
            T::WillTopicResp => Message::WillTopicResp {
                return_code: fixed_return_code(msg_type, body)?,
            },
            T::WillMsgUpd => Message::WillMsgUpd { msg: body },
            T::WillMsgResp => Message::WillMsgResp {
                return_code: fixed_return_code(msg_type, body)?,
            },
            T::Encapsulated => {
                return Err(DecodeError::BadEncapsulation(
                    "an encapsulated message cannot itself be encapsulated",
                ))
            }
        })
    }

    /// This message's type code.
    pub fn msg_type(&self) -> MsgType {
        use MsgType as T;
        match self {
            Message::Advertise(_) => T::Advertise,
            Message::SearchGw { .. } => T::SearchGw,
            Message::GwInfo(_) => T::GwInfo,
            Message::Connect(_) => T::Connect,
            Message::ConnAck { .. } => T::ConnAck,
            Message::WillTopicReq => T::WillTopicReq,
            Message::WillTopic(_) => T::WillTopic,
            Message::WillMsgReq => T::WillMsgReq,
            Message::WillMsg { .. } => T::WillMsg,
            Message::Register(_) => T::Register,
            Message::RegAck(_) => T::RegAck,
            Message::Publish(_) => T::Publish,
            Message::PubAck(_) => T::PubAck,
            Message::PubComp { .. } => T::PubComp,
            Message::PubRec { .. } => T::PubRec,
            Message::PubRel { .. } => T::PubRel,
            Message::Subscribe(_) => T::Subscribe,
            Message::SubAck(_) => T::SubAck,
            Message::Unsubscribe(_) => T::Unsubscribe,
            Message::UnsubAck { .. } => T::UnsubAck,
            Message::PingReq { .. } => T::PingReq,
            Message::PingResp => T::PingResp,
            Message::Disconnect { .. } => T::Disconnect,
            Message::WillTopicUpd(_) => T::WillTopicUpd,
            Message::WillTopicResp { .. } => T::WillTopicResp,
            Message::WillMsgUpd { .. } => T::WillMsgUpd,
            Message::WillMsgResp { .. } => T::WillMsgResp,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Message::WillTopicReq
            | Message::WillMsgReq
            | Message::PingResp
            | Message::Disconnect { duration: None } => 0,
            Message::SearchGw { .. }
            | Message::ConnAck { .. }
            | Message::WillTopicResp { .. }
            | Message::WillMsgResp { .. } => 1,
            Message::PubComp { .. }
            | Message::PubRec { .. }
            | Message::PubRel { .. }
            | Message::UnsubAck { .. }
            | Message::Disconnect { duration: Some(_) } => 2,
            Message::Advertise(_) => 3,
            Message::RegAck(_) | Message::PubAck(_) => 5,
            Message::SubAck(_) => 6,
            Message::GwInfo(m) => m.body_len(),
            Message::Connect(m) => m.body_len(),
            Message::WillTopic(w) | Message::WillTopicUpd(w) => WillTopic::body_len(w),
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => msg.len(),
            Message::Register(m) => m.body_len(),
            Message::Publish(m) => m.body_len(),
            Message::Subscribe(m) => m.body_len(),
            Message::Unsubscribe(m) => m.body_len(),
            Message::PingReq { client_id } => client_id.map_or(0, str::len),
        }
    }

    /// The number of bytes [`Message::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        total_len(self.body_len())
    }

    /// Appends the encoded message to `out` and returns its length; a message that does not
    /// fit in what is left of `out` is refused before anything is written.
    pub fn encode(&self, out: &mut impl Put) -> Result<usize, EncodeError> {
        let total = self.encoded_len();
        if total > MAX_LENGTH {
            return Err(EncodeError::TooLong(total));
        }
        if total > out.remaining() {
            return Err(EncodeError::BufferTooSmall {
                needed: total,
                available: out.remaining(),
            });
        }
        put_header(out, total, self.msg_type());
        match self {
            Message::WillTopicReq
            | Message::WillMsgReq
            | Message::PingResp
            | Message::Disconnect { duration: None } => {}
            Message::SearchGw { radius } => out.put_u8(*radius),
            Message::ConnAck { return_code }
            | Message::WillTopicResp { return_code }
            | Message::WillMsgResp { return_code } => out.put_u8(return_code.code()),
            Message::PubComp { msg_id }
            | Message::PubRec { msg_id }
            | Message::PubRel { msg_id }
            | Message::UnsubAck { msg_id }
            | Message::Disconnect {
                duration: Some(msg_id),
            } => out.put_u16(*msg_id),
            Message::Advertise(m) => m.write_body(out),
            Message::RegAck(m) => publish::write_ack(out, m.topic_id, m.msg_id, m.return_code),
            Message::PubAck(m) => publish::write_ack(out, m.topic_id, m.msg_id, m.return_code),
            Message::SubAck(m) => m.write_body(out),
            Message::GwInfo(m) => m.write_body(out),
            Message::Connect(m) => m.write_body(out),
            Message::WillTopic(w) | Message::WillTopicUpd(w) => WillTopic::write_body(w, out),
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => out.put_slice(msg),
            Message::Register(m) => m.write_body(out),
            Message::Publish(m) => m.write_body(out),
            Message::Subscribe(m) => m.write_body(out),
            Message::Unsubscribe(m) => m.write_body(out),
            Message::PingReq { client_id } => {
                out.put_slice(client_id.map_or(&[][..], str::as_bytes))
            }
        }
        Ok(total)
    }

    /// Encodes into the start of `buf` and returns the length written; `buf` is left as it was
    /// when it is too small.
    pub fn encode_into(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.encode(&mut SliceWriter::new(buf))
    }

    /// Encodes into a new vector.
    #[cfg(feature = "alloc")]
    pub fn to_vec(&self) -> Result<alloc::vec::Vec<u8>, EncodeError> {
        let mut out = alloc::vec::Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out)
    }
}

/// A body that must be empty.
fn empty<'a>(msg_type: MsgType, body: &[u8], msg: Message<'a>) -> Result<Message<'a>, DecodeError> {
    Reader::new(msg_type, body, "exactly 0").finish()?;
    Ok(msg)
}

/// A body that is exactly one 16-bit integer (a MsgId).
fn fixed_u16(msg_type: MsgType, body: &[u8]) -> Result<u16, DecodeError> {
    let mut r = Reader::new(msg_type, body, "exactly 2");
    let v = r.u16()?;
    r.finish()?;
    Ok(v)
}

/// A body that is exactly one return code.
fn fixed_return_code(msg_type: MsgType, body: &[u8]) -> Result<ReturnCode, DecodeError> {
    let mut r = Reader::new(msg_type, body, "exactly 1");
    let rc = publish::return_code(&mut r, msg_type)?;
    r.finish()?;
    Ok(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish() -> Message<'static> {
        Message::Publish(Publish {
            dup: false,
            qos: QoS::One,
            retain: false,
            topic: TopicRef::Id(1),
            msg_id: 7,
            data: b"21.5",
        })
    }

    #[test]
    fn encode_into_a_fixed_buffer() {
        let mut buf = [0u8; 16];
        let len = publish().encode_into(&mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            [0x0B, 0x0C, 0x20, 0x00, 0x01, 0x00, 0x07, b'2', b'1', b'.', b'5']
        );
        assert_eq!(Message::decode(&buf[..len]).unwrap(), publish());
    }

    #[test]
    fn a_short_buffer_is_an_error_and_left_untouched() {
        let mut buf = [0xAAu8; 10];
        assert_eq!(
            publish().encode_into(&mut buf),
            Err(EncodeError::BufferTooSmall {
                needed: 11,
                available: 10
            })
        );
        assert_eq!(buf, [0xAA; 10]);
        let frame = Frame {
            forwarder: Some(Forwarder {
                radius: 1,
                node_id: &[9],
            }),
            message: publish(),
        };
        let mut exact = [0u8; 15];
        assert_eq!(frame.encode_into(&mut exact), Ok(15));
        assert_eq!(Frame::decode(&exact).unwrap(), frame);
        assert!(frame.encode_into(&mut exact[..14]).is_err());
    }

    #[test]
    fn encode_refuses_a_sink_too_small_before_writing() {
        let mut buf = [0u8; 4];
        let mut out = SliceWriter::new(&mut buf);
        assert_eq!(
            publish().encode(&mut out),
            Err(EncodeError::BufferTooSmall {
                needed: 11,
                available: 4
            })
        );
        assert_eq!(out.written(), 0);
    }
}
