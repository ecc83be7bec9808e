//! Human-readable and JSON renderings of decoded frames, for logs and the `decode` tool.
//! Text fields print as quoted strings; binary fields (payloads, will messages, addresses) print
//! as text when they are printable UTF-8 and as hex otherwise; JSON always gives binary as hex.

use super::{Forwarder, Frame, Message, Publish, TopicFilter, TopicRef, WillTopic};
use crate::hex;
use serde_json::{json, Map, Value};
use std::fmt;

/// Renders binary data as a quoted string when it is printable text, else as `0x..` hex.
struct Data<'a>(&'a [u8]);

impl fmt::Display for Data<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text)
                if !text
                    .chars()
                    .any(|c| c.is_control() && c != '\n' && c != '\t') =>
            {
                write!(f, "{text:?}")
            }
            _ => write!(f, "0x{}", hex::format_compact(self.0)),
        }
    }
}

/// A short topic name, as text when printable.
fn short_name(name: [u8; 2]) -> String {
    Data(&name).to_string()
}

impl fmt::Display for TopicRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicRef::Id(id) => write!(f, "topic_id={id}(normal)"),
            TopicRef::Predefined(id) => write!(f, "topic_id={id}(predefined)"),
            TopicRef::Short(name) => write!(f, "topic={}(short)", short_name(*name)),
            TopicRef::LongName(name) => write!(f, "topic={name:?}(long name)"),
        }
    }
}

impl fmt::Display for TopicFilter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicFilter::Name(name) => write!(f, "topic={name:?}"),
            TopicFilter::Predefined(id) => write!(f, "topic_id={id}(predefined)"),
            TopicFilter::Short(name) => write!(f, "topic={}(short)", short_name(*name)),
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
                    write!(f, " gw_addr=0x{}", hex::format_compact(m.gw_addr))?;
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
            hex::format_compact(self.node_id)
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

fn topic_ref_json(obj: &mut Map<String, Value>, topic: &TopicRef<'_>) {
    let (kind, value) = match topic {
        TopicRef::Id(id) => ("normal", json!(id)),
        TopicRef::Predefined(id) => ("predefined", json!(id)),
        TopicRef::Short(name) => ("short", json!(String::from_utf8_lossy(name))),
        TopicRef::LongName(name) => ("long_name", json!(name)),
    };
    obj.insert("topic_id_type".into(), json!(kind));
    let key = if matches!(topic, TopicRef::Id(_) | TopicRef::Predefined(_)) {
        "topic_id"
    } else {
        "topic_name"
    };
    obj.insert(key.into(), value);
}

fn topic_filter_json(obj: &mut Map<String, Value>, topic: &TopicFilter<'_>) {
    let (kind, key, value) = match topic {
        TopicFilter::Name(name) => ("normal", "topic_name", json!(name)),
        TopicFilter::Predefined(id) => ("predefined", "topic_id", json!(id)),
        TopicFilter::Short(name) => ("short", "topic_name", json!(String::from_utf8_lossy(name))),
    };
    obj.insert("topic_id_type".into(), json!(kind));
    obj.insert(key.into(), value);
}

fn publish_json(obj: &mut Map<String, Value>, m: &Publish<'_>) {
    obj.insert("qos".into(), json!(m.qos.level()));
    obj.insert("retain".into(), json!(m.retain));
    obj.insert("dup".into(), json!(m.dup));
    topic_ref_json(obj, &m.topic);
    obj.insert("msg_id".into(), json!(m.msg_id));
    obj.insert("payload".into(), json!(hex::format_compact(m.data)));
}

impl Message<'_> {
    /// The message as a JSON object: `type`, then every field by name; binary data as hex.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("type".into(), json!(self.msg_type().name()));
        let mut put = |k: &str, v: Value| {
            obj.insert(k.to_string(), v);
        };
        match self {
            Message::Advertise(m) => {
                put("gw_id", json!(m.gw_id));
                put("duration", json!(m.duration));
            }
            Message::SearchGw { radius } => put("radius", json!(radius)),
            Message::GwInfo(m) => {
                put("gw_id", json!(m.gw_id));
                put("gw_addr", json!(hex::format_compact(m.gw_addr)));
            }
            Message::Connect(m) => {
                put("will", json!(m.will));
                put("clean_session", json!(m.clean_session));
                put("protocol_id", json!(super::PROTOCOL_ID));
                put("duration", json!(m.duration));
                put("client_id", json!(m.client_id));
            }
            Message::ConnAck { return_code }
            | Message::WillTopicResp { return_code }
            | Message::WillMsgResp { return_code } => {
                put("return_code", json!(return_code.code()));
                put("return_code_name", json!(return_code.name()));
            }
            Message::WillTopicReq | Message::WillMsgReq | Message::PingResp => {}
            Message::WillTopic(w) | Message::WillTopicUpd(w) => match w {
                Some(w) => {
                    put("qos", json!(w.qos.level()));
                    put("retain", json!(w.retain));
                    put("will_topic", json!(w.topic));
                }
                None => put("will_topic", Value::Null),
            },
            Message::WillMsg { msg } | Message::WillMsgUpd { msg } => {
                put("will_msg", json!(hex::format_compact(msg)))
            }
            Message::Register(m) => {
                put("topic_id", json!(m.topic_id));
                put("msg_id", json!(m.msg_id));
                put("topic_name", json!(m.topic_name));
            }
            Message::RegAck(m) => {
                put("topic_id", json!(m.topic_id));
                put("msg_id", json!(m.msg_id));
                put("return_code", json!(m.return_code.code()));
                put("return_code_name", json!(m.return_code.name()));
            }
            Message::Publish(m) => publish_json(&mut obj, m),
            Message::PubAck(m) => {
                put("topic_id", json!(m.topic_id));
                put("msg_id", json!(m.msg_id));
                put("return_code", json!(m.return_code.code()));
                put("return_code_name", json!(m.return_code.name()));
            }
            Message::PubComp { msg_id }
            | Message::PubRec { msg_id }
            | Message::PubRel { msg_id }
            | Message::UnsubAck { msg_id } => put("msg_id", json!(msg_id)),
            Message::Subscribe(m) => {
                put("dup", json!(m.dup));
                put("qos", json!(m.qos.level()));
                put("msg_id", json!(m.msg_id));
                topic_filter_json(&mut obj, &m.topic);
            }
            Message::SubAck(m) => {
                put("qos", json!(m.qos.level()));
                put("topic_id", json!(m.topic_id));
                put("msg_id", json!(m.msg_id));
                put("return_code", json!(m.return_code.code()));
                put("return_code_name", json!(m.return_code.name()));
            }
            Message::Unsubscribe(m) => {
                put("msg_id", json!(m.msg_id));
                topic_filter_json(&mut obj, &m.topic);
            }
            Message::PingReq { client_id } => put("client_id", json!(client_id)),
            Message::Disconnect { duration } => put("duration", json!(duration)),
        }
        Value::Object(obj)
    }
}

impl Frame<'_> {
    /// The frame as a JSON object: the message's fields, plus `forwarder` when encapsulated.
    pub fn to_json(&self) -> Value {
        let mut value = self.message.to_json();
        if let (Some(fw), Value::Object(obj)) = (&self.forwarder, &mut value) {
            obj.insert(
                "forwarder".into(),
                json!({ "radius": fw.radius, "node_id": hex::format_compact(fw.node_id) }),
            );
        }
        value
    }
}
