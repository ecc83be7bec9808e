//! Human-readable renderings of decoded frames (`Display`), for logs and the `decode` tool.
//! Text fields print as quoted strings; binary fields (payloads, will messages, addresses) print
//! as text when they are printable UTF-8 and as hex otherwise. Written on `core::fmt` alone, so
//! firmware can log frames too.

use super::{Forwarder, Frame, Message, TopicFilter, TopicRef, WillTopic};
use core::fmt;

/// Lower-case hex without separators.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Renders binary data as a quoted string when it is printable text, else as `0x..` hex.
struct Data<'a>(&'a [u8]);

impl fmt::Display for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match core::str::from_utf8(self.0) {
            Ok(text)
                if !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t') =>
            {
                write!(f, "{text:?}")
            }
            _ => write!(f, "0x{}", Hex(self.0)),
        }
    }
}

impl fmt::Display for TopicRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicRef::Id(id) => write!(f, "topic_id={id}(normal)"),
            TopicRef::Predefined(id) => write!(f, "topic_id={id}(predefined)"),
            TopicRef::Short(name) => write!(f, "topic={}(short)", Data(name)),
            TopicRef::LongName(name) => write!(f, "topic={name:?}(long name)"),
        }
    }
}

impl fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicFilter::Name(name) => write!(f, "topic={name:?}"),
            TopicFilter::Predefined(id) => write!(f, "topic_id={id}(predefined)"),
            TopicFilter::Short(name) => write!(f, "topic={}(short)", Data(name)),
        }
    }
}

fn fmt_will(f: &mut fmt::Formatter<'_>, will: &Option<WillTopic<'_>>) -> fmt::Result {
    match will {
        Some(w) => write!(
            f,
            " qos={} retain={} topic={:?}",
            w.qos.level(),
            w.retain,
            w.topic
        ),
        None => f.write_str(" (empty: delete the will)"),
    }
}

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.msg_type().name())?;
        match self {
            Message::Advertise(m) => write!(f, " gw_id={} duration={}", m.gw_id, m.duration),
            Message::SearchGw { radius } => write!(f, " radius={radius}"),
            Message::GwInfo(m) => {
                write!(f, " gw_id={}", m.gw_id)?;
                if !m.gw_addr.is_empty() {
                    write!(f, " gw_addr=0x{}", Hex(m.gw_addr))?;
                }
                Ok(())
            }
            Message::Connect(m) => write!(
                f,
                " client_id={:?} keep_alive={} clean_session={} will={}",
                m.client_id, m.duration, m.clean_session, m.will
            ),
            Message::ConnAck { return_code }
            | Message::WillTopicResp { return_code }
            | Message::WillMsgResp { return_code } => {
                write!(f, " return_code={}", return_code.name())
            }
            Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => Ok(()),
            Message::WillTopic(w) | Message::WillTopicUpd(w) => fmt_will(f, w),
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => {
                write!(f, " msg={} ({} bytes)", Data(msg), msg.len())
            }
            Message::Register(m) => write!(
                f,
                " topic_id={} msg_id={} topic_name={:?}",
                m.topic_id, m.msg_id, m.topic_name
            ),
            Message::RegAck(m) => write!(
                f,
                " topic_id={} msg_id={} return_code={}",
                m.topic_id,
                m.msg_id,
                m.return_code.name()
            ),
            Message::Publish(m) => write!(
                f,
                " qos={} retain={} dup={} {} msg_id={} payload={} ({} bytes)",
                m.qos.level(),
                m.retain,
                m.dup,
                m.topic,
                m.msg_id,
                Data(m.data),
                m.data.len()
            ),
            Message::PubAck(m) => write!(
                f,
                " topic_id={} msg_id={} return_code={}",
                m.topic_id,
                m.msg_id,
                m.return_code.name()
            ),
            Message::PubComp { msg_id }
            | Message::PubRec { msg_id }
            | Message::PubRel { msg_id }
            | Message::UnsubAck { msg_id } => write!(f, " msg_id={msg_id}"),
            Message::Subscribe(m) => write!(
                f,
                " qos={} dup={} msg_id={} {}",
                m.qos.level(),
                m.dup,
                m.msg_id,
                m.topic
            ),
            Message::SubAck(m) => write!(
                f,
                " qos={} topic_id={} msg_id={} return_code={}",
                m.qos.level(),
                m.topic_id,
                m.msg_id,
                m.return_code.name()
            ),
            Message::Unsubscribe(m) => write!(f, " msg_id={} {}", m.msg_id, m.topic),
            Message::PingReq { client_id } => match client_id {
                Some(id) => write!(f, " client_id={id:?}"),
                None => Ok(()),
            },
            Message::Disconnect { duration } => match duration {
                Some(d) => write!(f, " duration={d}"),
                None => Ok(()),
            },
        }
    }
}

impl fmt::Display for Forwarder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ENCAPSULATED radius={} node_id=0x{}",
            self.radius,
            Hex(self.node_id)
        )
    }
}

impl fmt::Display for Frame<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fw) = &self.forwarder {
            write!(f, "{fw} | ")?;
        }
        write!(f, "{}", self.message)
    }
}
