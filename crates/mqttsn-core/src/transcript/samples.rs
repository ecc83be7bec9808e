//! Sample frames for random walks through the engine: the chaos property test and the engine
//! fuzz target pick from these, so that random sequences reach states that random bytes alone
//! would almost never reach.

use crate::codec::*;

fn frame(msg: Message<'_>) -> Vec<u8> {
    msg.to_vec().expect("every sample frame encodes")
}

/// Device frames that make sense in some state (CONNECT with and without will, the will
/// handshake, REGISTER, PUBLISH at every QoS, acknowledgements, SUBSCRIBE, pings, sleep), so
/// that a random walk reaches deep states.
pub fn pool() -> Vec<Vec<u8>> {
    let publish = |qos, topic, msg_id| {
        frame(Message::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            msg_id,
            data: b"x",
        }))
    };
    vec![
        frame(Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: 10,
            client_id: "a",
        })),
        frame(Message::Connect(Connect {
            will: true,
            clean_session: false,
            duration: 10,
            client_id: "b",
        })),
        frame(Message::WillTopic(Some(WillTopic {
            qos: QoS::One,
            retain: false,
            topic: "w",
        }))),
        frame(Message::WillMsg { msg: b"bye" }),
        frame(Message::Register(Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: "t/1",
        })),
        publish(QoS::Zero, TopicRef::Id(1), 0),
        publish(QoS::One, TopicRef::Id(1), 2),
        publish(QoS::Two, TopicRef::Id(1), 3),
        publish(QoS::MinusOne, TopicRef::Short(*b"ab"), 0),
        frame(Message::PubRel { msg_id: 3 }),
        frame(Message::Subscribe(Subscribe {
            dup: false,
            qos: QoS::One,
            msg_id: 4,
            topic: TopicFilter::Name("t/#"),
        })),
        frame(Message::Unsubscribe(Unsubscribe {
            msg_id: 5,
            topic: TopicFilter::Name("t/#"),
        })),
        frame(Message::PubAck(PubAck {
            topic_id: 1,
            msg_id: 1,
            return_code: ReturnCode::Accepted,
        })),
        frame(Message::PubRec { msg_id: 1 }),
        frame(Message::PubComp { msg_id: 1 }),
        frame(Message::RegAck(RegAck {
            topic_id: 1,
            msg_id: 1,
            return_code: ReturnCode::Accepted,
        })),
        frame(Message::PingReq { client_id: None }),
        frame(Message::PingReq {
            client_id: Some("a"),
        }),
        frame(Message::Disconnect { duration: Some(5) }),
        frame(Message::Disconnect { duration: None }),
        frame(Message::WillTopicUpd(None)),
        frame(Message::WillMsgUpd { msg: b"m" }),
        frame(Message::SearchGw { radius: 1 }),
    ]
}

/// Broker-side inputs: valid MQTT packets the gateway may or may not expect.
pub fn broker_pool() -> Vec<Vec<u8>> {
    vec![
        vec![0x20, 2, 0, 0],
        vec![0x40, 2, 0, 1],
        vec![0x50, 2, 0, 2],
        vec![0x70, 2, 0, 2],
        vec![0x90, 3, 0, 1, 1],
        vec![0xB0, 2, 0, 2],
        vec![0xD0, 0],
        vec![0x30, 6, 0, 3, b't', b'/', b'1', b'z'],
        vec![0x32, 8, 0, 3, b't', b'/', b'1', 0, 9, b'q'],
        vec![0x34, 8, 0, 3, b't', b'/', b'x', 0, 10, b'q'],
        vec![0x62, 2, 0, 10],
    ]
}
