//! The `decode` tool's JSON rendering of frames: `type`, then every field by name; binary data
//! as hex. (The text rendering is the codec's `Display`.)

use crate::codec::{Frame, Message, Publish, TopicFilter, TopicRef};
use crate::hex;
use serde_json::{json, Map, Value};

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

/// The message as a JSON object: `type`, then every field by name; binary data as hex.
pub fn message_json(msg: &Message<'_>) -> Value {
    let mut obj = Map::new();
    obj.insert("type".into(), json!(msg.msg_type().name()));
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_string(), v);
    };
    match msg {
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
            put("protocol_id", json!(crate::codec::PROTOCOL_ID));
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

/// The frame as a JSON object: the message's fields, plus `forwarder` when encapsulated.
pub fn frame_json(frame: &Frame<'_>) -> Value {
    let mut value = message_json(&frame.message);
    if let (Some(fw), Value::Object(obj)) = (&frame.forwarder, &mut value) {
        obj.insert(
            "forwarder".into(),
            json!({ "radius": fw.radius, "node_id": hex::format_compact(fw.node_id) }),
        );
    }
    value
}
