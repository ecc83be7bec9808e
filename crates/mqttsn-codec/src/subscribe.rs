//! Subscriptions: SUBSCRIBE, SUBACK, UNSUBSCRIBE (§5.4.15-§5.4.17). UNSUBACK is a bare MsgId and
//! lives in [`super::Message`].

use super::error::DecodeError;
use super::publish::return_code;
use super::types::{Flags, MsgType, QoS, ReturnCode, TopicIdType};
use super::wire::Reader;
use crate::wire::Put;

/// What a SUBSCRIBE or UNSUBSCRIBE names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopicFilter<'a> {
    /// A topic name or filter, possibly with `+` and `#` wildcards.
    Name(&'a str),
    /// A predefined topic id.
    Predefined(u16),
    /// A two-character short topic name.
    Short([u8; 2]),
}

impl<'a> TopicFilter<'a> {
    fn decode(r: &mut Reader<'a>, flags: Flags, msg_type: MsgType) -> Result<Self, DecodeError> {
        Ok(match flags.topic_id_type() {
            TopicIdType::Normal => TopicFilter::Name(r.rest_str("topic name")?),
            TopicIdType::Predefined => TopicFilter::Predefined(r.u16()?),
            TopicIdType::Short => {
                let b = r.take(2)?;
                TopicFilter::Short([b[0], b[1]])
            }
            reserved @ TopicIdType::Reserved => {
                return Err(DecodeError::BadTopicIdType {
                    msg_type,
                    topic_id_type: reserved,
                })
            }
        })
    }

    fn topic_id_type(&self) -> TopicIdType {
        match self {
            TopicFilter::Name(_) => TopicIdType::Normal,
            TopicFilter::Predefined(_) => TopicIdType::Predefined,
            TopicFilter::Short(_) => TopicIdType::Short,
        }
    }

    fn len(&self) -> usize {
        match self {
            TopicFilter::Name(name) => name.len(),
            TopicFilter::Predefined(_) | TopicFilter::Short(_) => 2,
        }
    }

    fn write(&self, out: &mut impl Put) {
        match self {
            TopicFilter::Name(name) => out.put_slice(name.as_bytes()),
            TopicFilter::Predefined(id) => out.put_u16(*id),
            TopicFilter::Short(name) => out.put_slice(name),
        }
    }
}

/// SUBSCRIBE (§5.4.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// Set on retransmissions.
    pub dup: bool,
    /// Requested QoS.
    pub qos: QoS,
    /// Message id, echoed in SUBACK.
    pub msg_id: u16,
    /// What to subscribe to.
    pub topic: TopicFilter<'a>,
}

impl<'a> Subscribe<'a> {
    pub(super) fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::Subscribe, body, "at least 3");
        let flags = Flags(r.u8()?);
        let msg_id = r.u16()?;
        let topic = TopicFilter::decode(&mut r, flags, MsgType::Subscribe)?;
        r.finish()?;
        Ok(Subscribe {
            dup: flags.dup(),
            qos: flags.qos(),
            msg_id,
            topic,
        })
    }

    pub(super) fn body_len(&self) -> usize {
        3 + self.topic.len()
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        let flags = Flags::default()
            .with_dup(self.dup)
            .with_qos(self.qos)
            .with_topic_id_type(self.topic.topic_id_type());
        out.put_u8(flags.0);
        out.put_u16(self.msg_id);
        self.topic.write(out);
    }
}

/// SUBACK (§5.4.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAck {
    /// Granted QoS.
    pub qos: QoS,
    /// The topic id for a plain name, 0x0000 for wildcards, short names and predefined ids.
    pub topic_id: u16,
    /// MsgId of the SUBSCRIBE.
    pub msg_id: u16,
    /// Accepted or why not.
    pub return_code: ReturnCode,
}

impl SubAck {
    pub(super) fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::SubAck, body, "exactly 6");
        let flags = Flags(r.u8()?);
        let topic_id = r.u16()?;
        let msg_id = r.u16()?;
        let return_code = return_code(&mut r, MsgType::SubAck)?;
        r.finish()?;
        Ok(SubAck {
            qos: flags.qos(),
            topic_id,
            msg_id,
            return_code,
        })
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        out.put_u8(Flags::default().with_qos(self.qos).0);
        out.put_u16(self.topic_id);
        out.put_u16(self.msg_id);
        out.put_u8(self.return_code.code());
    }
}

/// UNSUBSCRIBE (§5.4.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    /// Message id, echoed in UNSUBACK.
    pub msg_id: u16,
    /// What to unsubscribe from.
    pub topic: TopicFilter<'a>,
}

impl<'a> Unsubscribe<'a> {
    pub(super) fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(MsgType::Unsubscribe, body, "at least 3");
        let flags = Flags(r.u8()?);
        let msg_id = r.u16()?;
        let topic = TopicFilter::decode(&mut r, flags, MsgType::Unsubscribe)?;
        r.finish()?;
        Ok(Unsubscribe { msg_id, topic })
    }

    pub(super) fn body_len(&self) -> usize {
        3 + self.topic.len()
    }

    pub(super) fn write_body(&self, out: &mut impl Put) {
        out.put_u8(
            Flags::default()
                .with_topic_id_type(self.topic.topic_id_type())
                .0,
        );
        out.put_u16(self.msg_id);
        self.topic.write(out);
    }
}
