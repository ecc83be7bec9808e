//! Publishing and topic registration: PUBLISH, PUBACK, REGISTER, REGACK (§5.4.10-§5.4.13),
//! including the nonstandard QoS -1 long-topic PUBLISH some clients send (decoded on request).

use super::error::DecodeError;
use super::types::{Flags, MsgType, QoS, ReturnCode, TopicIdType};
use super::wire::{utf8, Reader};
use super::DecodeOptions;
use crate::wire::Put;

/// Which topic a PUBLISH is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicRef<'a> {
    /// A normal topic id, registered with REGISTER.
    Id(u16),
    /// A predefined topic id from the gateway's configuration.
    Predefined(u16),
    /// A two-character short topic name.
    Short([u8; 2]),
    /// The whole topic name, as carried by the nonstandard QoS -1 long-topic form.
    LongName(&'a str),
}

impl TopicRef<'_> {
    /// The TopicIdType bits this reference is encoded with.
    pub fn topic_id_type(&self) -> TopicIdType {
        match self {
            TopicRef::Id(_) | TopicRef::LongName(_) => TopicIdType::Normal,
            TopicRef::Predefined(_) => TopicIdType::Predefined,
            TopicRef::Short(_) => TopicIdType::Short,
        }
    }
}

/// PUBLISH (§5.4.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// Set on retransmissions.
    pub dup: bool,
    /// Quality of service, -1 to 2.
    pub qos: QoS,
    /// Whether the broker should retain the message.
    pub retain: bool,
    /// The topic, by id, short name or (nonstandard QoS -1 form) full name.
    pub topic: TopicRef<'a>,
    /// Message id; 0 for QoS 0 and -1.
    pub msg_id: u16,
    /// The application payload.
    pub data: &'a [u8],
}

impl<'a> Publish<'a> {
    pub(super) fn decode(body: &'a [u8], opts: &DecodeOptions) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::Publish, body, "at least 5");
        let flags = Flags(r.u8()?);
        let topic_id = r.u16()?;
        let msg_id = r.u16()?;
        let qos = flags.qos();
        let topic = match flags.topic_id_type() {
            TopicIdType::Normal if qos == QoS::MinusOne && opts.qos_minus1_long_topic => {
                // Nonstandard: the TopicId field holds the length of the name that starts the data.
                let declared = usize::from(topic_id);
                let rest = r.rest();
                let name = rest.get(..declared).ok_or(DecodeError::LongTopicOverrun {
                    declared,
                    available: rest.len(),
                })?;
                let name = utf8(name, MsgType::Publish, "topic name")?;
                return Ok(Publish {
                    dup: flags.dup(),
                    qos,
                    retain: flags.retain(),
                    topic: TopicRef::LongName(name),
                    msg_id,
                    data: &rest[declared..],
                });
            }
            TopicIdType::Normal => TopicRef::Id(topic_id),
            TopicIdType::Predefined => TopicRef::Predefined(topic_id),
            TopicIdType::Short => TopicRef::Short(topic_id.to_be_bytes()),
            reserved @ TopicIdType::Reserved => {
                return Err(DecodeError::BadTopicIdType {
                    msg_type: MsgType::Publish,
                    topic_id_type: reserved,
                })
            }
        };
        Ok(Publish {
            dup: flags.dup(),
            qos,
            retain: flags.retain(),
            topic,
            msg_id,
            data: r.rest(),
        })
    }

    pub(super) fn body_len(&self) -> usize {
        let name_len = match self.topic {
            TopicRef::LongName(name) => name.len(),
            _ => 0,
        };
        5 + name_len + self.data.len()
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        let flags = Flags::default()
            .with_dup(self.dup)
            .with_qos(self.qos)
            .with_retain(self.retain)
            .with_topic_id_type(self.topic.topic_id_type());
        out.put_u8(flags.0);
        match self.topic {
            TopicRef::Id(id) | TopicRef::Predefined(id) => out.put_u16(id),
            TopicRef::Short(name) => out.put_slice(&name),
            // The length always fits: the whole message is limited to 65535 bytes.
            TopicRef::LongName(name) => out.put_u16(name.len() as u16),
        }
        out.put_u16(self.msg_id);
        if let TopicRef::LongName(name) = self.topic {
            out.put_slice(name.as_bytes());
        }
        out.put_slice(self.data);
    }
}

/// Reads a return code octet, rejecting the reserved values.
pub(super) fn return_code(
    r: &mut Reader<'_>,
    msg_type: MsgType,
) -> Result<ReturnCode, DecodeError> {
    let code = r.u8()?;
    ReturnCode::from_code(code).ok_or(DecodeError::ReservedReturnCode { msg_type, code })
}

/// PUBACK (§5.4.13): acknowledges a QoS 1 PUBLISH, or rejects a PUBLISH at any QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// The topic id of the acknowledged PUBLISH.
    pub topic_id: u16,
    /// The MsgId of the acknowledged PUBLISH.
    pub msg_id: u16,
    /// Accepted or why not.
    pub return_code: ReturnCode,
}

/// REGACK (§5.4.11): answers a REGISTER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegAck {
    /// The assigned (or acknowledged) topic id.
    pub topic_id: u16,
    /// The MsgId of the REGISTER.
    pub msg_id: u16,
    /// Accepted or why not.
    pub return_code: ReturnCode,
}

/// The common layout of PUBACK and REGACK: TopicId, MsgId, ReturnCode.
pub(super) fn decode_ack(
    msg_type: MsgType,
    body: &[u8],
) -> Result<(u16, u16, ReturnCode), DecodeError> {
    let mut r = Reader::new(msg_type, body, "exactly 5");
    let topic_id = r.u16()?;
    let msg_id = r.u16()?;
    let rc = return_code(&mut r, msg_type)?;
    r.finish()?;
    Ok((topic_id, msg_id, rc))
}

pub(super) fn write_ack(out: &mut impl Put, topic_id: u16, msg_id: u16, rc: ReturnCode) {
    out.put_u16(topic_id);
    out.put_u16(msg_id);
    out.put_u8(rc.code());
}

/// REGISTER (§5.4.10): client or gateway binds a topic name to a topic id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Register<'a> {
    /// 0x0000 from a client; the assigned id from the gateway.
    pub topic_id: u16,
    /// Message id, echoed in REGACK.
    pub msg_id: u16,
    /// The topic name.
    pub topic_name: &'a str,
}

impl<'a> Register<'a> {
    pub(super) fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::Register, body, "at least 4");
        Ok(Register {
            topic_id: r.u16()?,
            msg_id: r.u16()?,
            topic_name: r.rest_str("topic name")?,
        })
    }

    pub(super) fn body_len(&self) -> usize {
        4 + self.topic_name.len()
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        out.put_u16(self.topic_id);
        out.put_u16(self.msg_id);
        out.put_slice(self.topic_name.as_bytes());
    }
}
