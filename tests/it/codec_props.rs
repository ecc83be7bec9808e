//! Property tests of the codec: every message type round-trips through encode and decode (both
//! Length forms, up to the largest payload), and no byte string, random or mutated, panics the
//! decoder.

use mqttsn_gateway::codec::*;
use proptest::prelude::*;

/// Every field a message could need, generated independently; [`build`] picks what it uses.
#[derive(Debug, Clone)]
struct Fields {
    kind: u8,
    flag_a: bool,
    flag_b: bool,
    qos: QoS,
    n1: u16,
    n2: u16,
    small: u8,
    rc: ReturnCode,
    text: String,
    short: [u8; 2],
    data: Vec<u8>,
}

/// Number of message kinds [`build`] knows: the 27 types, with PUBLISH, SUBSCRIBE and
/// UNSUBSCRIBE once per topic form.
const KINDS: u8 = 35;

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::MinusOne),
        Just(QoS::Zero),
        Just(QoS::One),
        Just(QoS::Two)
    ]
}

fn return_code() -> impl Strategy<Value = ReturnCode> {
    prop_oneof![
        Just(ReturnCode::Accepted),
        Just(ReturnCode::Congestion),
        Just(ReturnCode::InvalidTopicId),
        Just(ReturnCode::NotSupported)
    ]
}

/// Payload sizes around the interesting places: empty, the 255-byte Length boundary, and the
/// largest PUBLISH payload (65535 - 4 header - 5 fixed fields).
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..64),
        3 => proptest::collection::vec(any::<u8>(), 240..270),
        1 => proptest::collection::vec(any::<u8>(), 65_500..=65_526),
    ]
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        0..KINDS,
        any::<(bool, bool)>(),
        qos(),
        any::<(u16, u16, u8)>(),
        return_code(),
        prop_oneof![".{0,40}", "[a-z/+#]{240,260}"],
        any::<[u8; 2]>(),
        data(),
    )
        .prop_map(
            |(kind, (flag_a, flag_b), qos, (n1, n2, small), rc, text, short, data)| Fields {
                kind,
                flag_a,
                flag_b,
                qos,
                n1,
                n2,
                small,
                rc,
                text,
                short,
                data,
            },
        )
}

/// Builds one message of kind `f.kind` from the generated fields.
fn build(f: &Fields) -> Message<'_> {
    let text = f.text.as_str();
    let data = f.data.as_slice();
    let will = WillTopic {
        qos: f.qos,
        retain: f.flag_a,
        topic: text,
    };
    let publish = |topic, qos| {
        Message::Publish(Publish {
            dup: f.flag_a,
            qos,
            retain: f.flag_b,
            topic,
            msg_id: f.n2,
            data,
        })
    };
    let subscribe = |topic| {
        Message::Subscribe(Subscribe {
            dup: f.flag_a,
            qos: f.qos,
            msg_id: f.n1,
            topic,
        })
    };
    let unsubscribe = |topic| {
        Message::Unsubscribe(Unsubscribe {
            msg_id: f.n1,
            topic,
        })
    };
    match f.kind {
        0 => Message::Advertise(Advertise {
            gw_id: f.small,
            duration: f.n1,
        }),
        1 => Message::SearchGw { radius: f.small },
        2 => Message::GwInfo(GwInfo {
            gw_id: f.small,
            gw_addr: data,
        }),
        3 => Message::Connect(Connect {
            will: f.flag_a,
            clean_session: f.flag_b,
            duration: f.n1,
            client_id: text,
        }),
        4 => Message::ConnAck { return_code: f.rc },
        5 => Message::WillTopicReq,
        6 => Message::WillTopic(f.flag_b.then_some(will)),
        7 => Message::WillMsgReq,
        8 => Message::WillMsg { msg: data },
        9 => Message::Register(Register {
            topic_id: f.n1,
            msg_id: f.n2,
            topic_name: text,
        }),
        10 => Message::RegAck(RegAck {
            topic_id: f.n1,
            msg_id: f.n2,
            return_code: f.rc,
        }),
        11 => publish(TopicRef::Id(f.n1), f.qos),
        12 => publish(TopicRef::Predefined(f.n1), f.qos),
        13 => publish(TopicRef::Short(f.short), f.qos),
        // The long-name form only exists at QoS -1.
        14 => publish(TopicRef::LongName(text), QoS::MinusOne),
        15 => Message::PubAck(PubAck {
            topic_id: f.n1,
            msg_id: f.n2,
            return_code: f.rc,
        }),
        16 => Message::PubComp { msg_id: f.n1 },
        17 => Message::PubRec { msg_id: f.n1 },
        18 => Message::PubRel { msg_id: f.n1 },
        19 => subscribe(TopicFilter::Name(text)),
        20 => subscribe(TopicFilter::Predefined(f.n2)),
        21 => subscribe(TopicFilter::Short(f.short)),
        22 => Message::SubAck(SubAck {
            qos: f.qos,
            topic_id: f.n1,
            msg_id: f.n2,
            return_code: f.rc,
        }),
        23 => unsubscribe(TopicFilter::Name(text)),
        24 => unsubscribe(TopicFilter::Predefined(f.n2)),
        25 => unsubscribe(TopicFilter::Short(f.short)),
        26 => Message::UnsubAck { msg_id: f.n1 },
        // An empty client id is the same bytes as "no client id".
        27 => Message::PingReq {
            client_id: (f.flag_a && !text.is_empty()).then_some(text),
        },
        28 => Message::PingResp,
        29 => Message::Disconnect {
            duration: f.flag_a.then_some(f.n1),
        },
        30 => Message::WillTopicUpd(f.flag_b.then_some(will)),
        31 => Message::WillTopicResp { return_code: f.rc },
        32 => Message::WillMsgUpd { msg: data },
        33 => Message::WillMsgResp { return_code: f.rc },
        _ => Message::PubAck(PubAck {
            topic_id: 0,
            msg_id: f.n1,
            return_code: f.rc,
        }),
    }
}

fn options_for(msg: &Message<'_>) -> DecodeOptions {
    DecodeOptions {
        qos_minus1_long_topic: matches!(
            msg,
            Message::Publish(Publish {
                topic: TopicRef::LongName(_),
                ..
            })
        ),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn every_message_round_trips(f in fields()) {
        let msg = build(&f);
        let mut wire = Vec::new();
        match msg.encode(&mut wire) {
            Ok(n) => {
                prop_assert_eq!(n, wire.len());
                prop_assert_eq!(n, msg.encoded_len());
                // Length form: one octet up to 255, three octets (01 HI LO) above.
                if n <= 255 {
                    prop_assert_eq!(usize::from(wire[0]), n);
                } else {
                    prop_assert_eq!(wire[0], 0x01);
                    prop_assert_eq!(usize::from(u16::from_be_bytes([wire[1], wire[2]])), n);
                }
                let decoded = Message::decode_with(&wire, &options_for(&msg));
                prop_assert_eq!(decoded, Ok(msg));
            }
            Err(EncodeError::TooLong(n)) => {
                prop_assert!(n > 65535);
                prop_assert_eq!(n, msg.encoded_len());
                prop_assert!(wire.is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn every_message_round_trips_through_a_forwarder(
        f in fields(),
        node_id in proptest::collection::vec(any::<u8>(), 0..12),
        radius in 0u8..4,
    ) {
        let frame = Frame {
            forwarder: Some(Forwarder { radius, node_id: &node_id }),
            message: build(&f),
        };
        if let Ok(wire) = frame.to_vec() {
            prop_assert_eq!(Frame::decode_with(&wire, &options_for(&frame.message)), Ok(frame));
        }
    }

    #[test]
    fn random_bytes_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..300)) {
        for opts in [DecodeOptions::default(), DecodeOptions { qos_minus1_long_topic: true }] {
            if let Ok(frame) = Frame::decode_with(&wire, &opts) {
                // Whatever decodes re-encodes to something that decodes to the same frame.
                let again = frame.to_vec().expect("a decoded frame fits");
                prop_assert_eq!(Frame::decode_with(&again, &opts), Ok(frame));
                let _ = frame.to_string();
                let _ = mqttsn_gateway::decode_tool::json::frame_json(&frame);
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        f in fields(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let Ok(mut wire) = build(&f).to_vec() else { return Ok(()) };
        for (at, value) in edits {
            let i = at.index(wire.len());
            wire[i] = value;
        }
        let cut = cut.index(wire.len() + 1);
        for bytes in [&wire[..], &wire[..cut]] {
            let opts = DecodeOptions { qos_minus1_long_topic: true };
            if let Ok(frame) = Frame::decode_with(bytes, &opts) {
                let again = frame.to_vec().expect("a decoded frame fits");
                prop_assert_eq!(Frame::decode_with(&again, &opts), Ok(frame));
            }
        }
    }
}
