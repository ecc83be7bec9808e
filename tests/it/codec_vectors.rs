//! The byte-exact test vectors of the MQTT-SN v1.2 digest (shared/mqtt-sn-v1.2.md), decoded and
//! encoded, plus annotated frames for every message type and every documented decode error.

use mqttsn_gateway::codec::*;
use mqttsn_gateway::hex;

fn bytes(text: &str) -> Vec<u8> {
    hex::parse(text).expect("test vector hex")
}

/// Decodes `text`, compares with `expected`, re-encodes and compares bytes.
fn check(text: &str, expected: Message<'_>) {
    let wire = bytes(text);
    let decoded = Message::decode(&wire).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert_eq!(decoded, expected, "decoding {text}");
    assert_eq!(expected.to_vec().unwrap(), wire, "encoding {expected:?}");
    assert_eq!(expected.encoded_len(), wire.len());
    for cut in 0..wire.len() {
        assert!(
            Message::decode(&wire[..cut]).is_err(),
            "prefix of {cut} bytes of {text} decoded"
        );
    }
}

#[test]
fn connect_vectors() {
    let mut connect = Connect {
        will: false,
        clean_session: true,
        duration: 60,
        client_id: "c1",
    };
    check("08 04 04 01 00 3C 63 31", Message::Connect(connect));
    connect.will = true;
    check("08 04 0C 01 00 3C 63 31", Message::Connect(connect));
    check(
        "03 05 00",
        Message::ConnAck {
            return_code: ReturnCode::Accepted,
        },
    );
}

fn publish(qos: QoS, retain: bool, topic: TopicRef<'static>, msg_id: u16) -> Message<'static> {
    Message::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic,
        msg_id,
        data: b"hi",
    })
}

#[test]
fn publish_vectors() {
    check(
        "09 0C 20 00 01 00 01 68 69",
        publish(QoS::One, false, TopicRef::Id(1), 1),
    );
    check(
        "07 0D 00 01 00 01 00",
        Message::PubAck(PubAck {
            topic_id: 1,
            msg_id: 1,
            return_code: ReturnCode::Accepted,
        }),
    );
    check(
        "07 0D 00 01 00 01 02",
        Message::PubAck(PubAck {
            topic_id: 1,
            msg_id: 1,
            return_code: ReturnCode::InvalidTopicId,
        }),
    );
    check(
        "09 0C 00 00 01 00 00 68 69",
        publish(QoS::Zero, false, TopicRef::Id(1), 0),
    );
    check(
        "09 0C 50 00 01 00 07 68 69",
        publish(QoS::Two, true, TopicRef::Id(1), 7),
    );
    check("04 0F 00 07", Message::PubRec { msg_id: 7 });
    check("04 10 00 07", Message::PubRel { msg_id: 7 });
    check("04 0E 00 07", Message::PubComp { msg_id: 7 });
    check(
        "09 0C 62 61 62 00 00 68 69",
        publish(QoS::MinusOne, false, TopicRef::Short(*b"ab"), 0),
    );
    check(
        "09 0C 61 00 05 00 00 68 69",
        publish(QoS::MinusOne, false, TopicRef::Predefined(5), 0),
    );
}

#[test]
fn register_vectors() {
    check(
        "09 0A 00 00 00 01 61 2F 62",
        Message::Register(Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: "a/b",
        }),
    );
    check(
        "07 0B 00 01 00 01 00",
        Message::RegAck(RegAck {
            topic_id: 1,
            msg_id: 1,
            return_code: ReturnCode::Accepted,
        }),
    );
}

#[test]
fn subscribe_vectors() {
    check(
        "08 12 20 00 02 73 2F 23",
        Message::Subscribe(Subscribe {
            dup: false,
            qos: QoS::One,
            msg_id: 2,
            topic: TopicFilter::Name("s/#"),
        }),
    );
    check(
        "08 13 20 00 00 00 02 00",
        Message::SubAck(SubAck {
            qos: QoS::One,
            topic_id: 0,
            msg_id: 2,
            return_code: ReturnCode::Accepted,
        }),
    );
    check(
        "08 14 00 00 03 73 2F 23",
        Message::Unsubscribe(Unsubscribe {
            msg_id: 3,
            topic: TopicFilter::Name("s/#"),
        }),
    );
    check("04 15 00 03", Message::UnsubAck { msg_id: 3 });
}

#[test]
fn ping_disconnect_discovery_will_vectors() {
    check(
        "04 16 63 31",
        Message::PingReq {
            client_id: Some("c1"),
        },
    );
    check("02 16", Message::PingReq { client_id: None });
    check("02 17", Message::PingResp);
    check(
        "04 18 01 2C",
        Message::Disconnect {
            duration: Some(300),
        },
    );
    check("02 18", Message::Disconnect { duration: None });
    check(
        "05 00 01 03 84",
        Message::Advertise(Advertise {
            gw_id: 1,
            duration: 900,
        }),
    );
    check("03 01 01", Message::SearchGw { radius: 1 });
    check(
        "03 02 01",
        Message::GwInfo(GwInfo {
            gw_id: 1,
            gw_addr: &[],
        }),
    );
    check(
        "04 07 30 77",
        Message::WillTopic(Some(WillTopic {
            qos: QoS::One,
            retain: true,
            topic: "w",
        })),
    );
    check("05 09 62 79 65", Message::WillMsg { msg: b"bye" });
}

#[test]
fn three_octet_length_for_a_300_byte_payload() {
    let payload = vec![0x5A; 300];
    let mut wire = bytes("01 01 35 0C 20 00 01 00 01");
    wire.extend_from_slice(&payload);
    assert_eq!(wire.len(), 309);
    let msg = Message::Publish(Publish {
        dup: false,
        qos: QoS::One,
        retain: false,
        topic: TopicRef::Id(1),
        msg_id: 1,
        data: &payload,
    });
    assert_eq!(Message::decode(&wire).unwrap(), msg);
    assert_eq!(msg.to_vec().unwrap(), wire);
}

#[test]
fn encapsulated_connect() {
    let wire = bytes("05 FE 00 00 01 08 04 04 01 00 3C 63 31");
    let frame = Frame::decode(&wire).unwrap();
    let expected = Frame {
        forwarder: Some(Forwarder {
            radius: 0,
            node_id: &[0x00, 0x01],
        }),
        message: Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: "c1",
        }),
    };
    assert_eq!(frame, expected);
    assert_eq!(expected.to_vec().unwrap(), wire);
    for cut in 0..wire.len() {
        assert!(Frame::decode(&wire[..cut]).is_err(), "prefix {cut}");
    }
}

#[test]
fn length_form_boundary_is_exactly_255() {
    // 255 total bytes: 1-octet form. PUBLISH body = 5 + data.
    let data = vec![0u8; 255 - 2 - 5];
    let msg = Message::Publish(Publish {
        dup: false,
        qos: QoS::Zero,
        retain: false,
        topic: TopicRef::Id(1),
        msg_id: 0,
        data: &data,
    });
    let wire = msg.to_vec().unwrap();
    assert_eq!((wire.len(), wire[0]), (255, 0xFF));
    // One more payload byte: 256 does not fit one octet, so the 3-octet form: 254 + 4 = 258.
    let data = vec![0u8; 255 - 2 - 5 + 1];
    let msg = Message::Publish(Publish {
        data: &data,
        ..match msg {
            Message::Publish(p) => p,
            _ => unreachable!(),
        }
    });
    let wire = msg.to_vec().unwrap();
    assert_eq!(wire.len(), 258);
    assert_eq!(&wire[..4], &[0x01, 0x01, 0x02, 0x0C]);
    assert_eq!(Message::decode(&wire).unwrap(), msg);
}

#[test]
fn searchgw_with_a_16_bit_radius_from_the_pypi_mqttsn_client() {
    assert_eq!(
        Message::decode(&bytes("04 01 00 01")).unwrap(),
        Message::SearchGw { radius: 1 }
    );
    assert!(Message::decode(&bytes("04 01 01 01")).is_err());
}

#[test]
fn three_octet_form_is_accepted_for_short_messages() {
    // PINGRESP in the 3-octet form: legal, though nobody should send it.
    assert_eq!(
        Message::decode(&bytes("01 00 04 17")).unwrap(),
        Message::PingResp
    );
}

#[test]
fn every_remaining_message_type() {
    check("02 06", Message::WillTopicReq);
    check("02 08", Message::WillMsgReq);
    check("02 07", Message::WillTopic(None));
    check(
        "05 1A 00 61 2F",
        Message::WillTopicUpd(Some(WillTopic {
            qos: QoS::Zero,
            retain: false,
            topic: "a/",
        })),
    );
    check("02 1A", Message::WillTopicUpd(None));
    check(
        "03 1B 00",
        Message::WillTopicResp {
            return_code: ReturnCode::Accepted,
        },
    );
    check("04 1C 6F 6B", Message::WillMsgUpd { msg: b"ok" });
    check(
        "03 1D 03",
        Message::WillMsgResp {
            return_code: ReturnCode::NotSupported,
        },
    );
    check(
        "07 02 05 0A 00 00 07",
        Message::GwInfo(GwInfo {
            gw_id: 5,
            gw_addr: &[0x0A, 0x00, 0x00, 0x07],
        }),
    );
    // SUBSCRIBE by predefined id and by short name, QoS 2, DUP.
    check(
        "07 12 C1 00 09 00 05",
        Message::Subscribe(Subscribe {
            dup: true,
            qos: QoS::Two,
            msg_id: 9,
            topic: TopicFilter::Predefined(5),
        }),
    );
    check(
        "07 14 02 00 0A 74 31",
        Message::Unsubscribe(Unsubscribe {
            msg_id: 10,
            topic: TopicFilter::Short(*b"t1"),
        }),
    );
    check(
        "08 13 40 00 00 00 09 02",
        Message::SubAck(SubAck {
            qos: QoS::Two,
            topic_id: 0,
            msg_id: 9,
            return_code: ReturnCode::InvalidTopicId,
        }),
    );
}

#[test]
fn nonstandard_long_topic_qos_minus1_publish_only_on_request() {
    // Flags 0x60 (QoS -1, normal), TopicId = 3 (name length), MsgId 0, "a/b", then "hi".
    let wire = bytes("0C 0C 60 00 03 00 00 61 2F 62 68 69");
    let opts = DecodeOptions {
        qos_minus1_long_topic: true,
    };
    let long = Message::decode_with(&wire, &opts).unwrap();
    let expected = Message::Publish(Publish {
        dup: false,
        qos: QoS::MinusOne,
        retain: false,
        topic: TopicRef::LongName("a/b"),
        msg_id: 0,
        data: b"hi",
    });
    assert_eq!(long, expected);
    assert_eq!(expected.to_vec().unwrap(), wire);
    // Without the switch it is a standard PUBLISH to normal topic id 3.
    match Message::decode(&wire).unwrap() {
        Message::Publish(p) => {
            assert_eq!(p.topic, TopicRef::Id(3));
            assert_eq!(p.data, b"a/bhi");
        }
        other => panic!("{other:?}"),
    }
    // A name longer than what is left is an error, not a panic.
    let bad = bytes("08 0C 60 00 09 00 00 61");
    assert_eq!(
        Message::decode_with(&bad, &opts),
        Err(DecodeError::LongTopicOverrun {
            declared: 9,
            available: 1
        })
    );
}

#[test]
fn decode_errors_say_what_is_wrong() {
    let cases: &[(&str, DecodeError)] = &[
        ("", DecodeError::Empty),
        (
            "00 17",
            DecodeError::InvalidLength {
                declared: 0,
                header: 1,
                min: 2,
            },
        ),
        (
            "05 17",
            DecodeError::LengthMismatch {
                declared: 5,
                actual: 2,
            },
        ),
        (
            "02 17 00",
            DecodeError::LengthMismatch {
                declared: 2,
                actual: 3,
            },
        ),
        ("02 03", DecodeError::ReservedType(0x03)),
        ("02 11", DecodeError::ReservedType(0x11)),
        ("02 FF", DecodeError::ReservedType(0xFF)),
        ("08 04 04 02 00 3C 63 31", DecodeError::BadProtocolId(0x02)),
        (
            "09 0C 03 00 01 00 00 68 69",
            DecodeError::BadTopicIdType {
                msg_type: MsgType::Publish,
                topic_id_type: TopicIdType::Reserved,
            },
        ),
        (
            "07 12 03 00 01 61 62",
            DecodeError::BadTopicIdType {
                msg_type: MsgType::Subscribe,
                topic_id_type: TopicIdType::Reserved,
            },
        ),
        (
            "07 0A 00 00 00 01 FF",
            DecodeError::InvalidUtf8 {
                msg_type: MsgType::Register,
                field: "topic name",
            },
        ),
        (
            "07 04 04 01 00 3C C3",
            DecodeError::InvalidUtf8 {
                msg_type: MsgType::Connect,
                field: "client id",
            },
        ),
        (
            "03 05 04",
            DecodeError::ReservedReturnCode {
                msg_type: MsgType::ConnAck,
                code: 4,
            },
        ),
        (
            "03 0F 00",
            DecodeError::BodyLength {
                msg_type: MsgType::PubRec,
                expected: "exactly 2",
                got: 1,
            },
        ),
        (
            "05 18 00 00 00",
            DecodeError::BodyLength {
                msg_type: MsgType::Disconnect,
                expected: "0 or 2",
                got: 3,
            },
        ),
        (
            "03 17 00",
            DecodeError::BodyLength {
                msg_type: MsgType::PingResp,
                expected: "exactly 0",
                got: 1,
            },
        ),
        (
            "06 0C 20 00 01 00",
            DecodeError::BodyLength {
                msg_type: MsgType::Publish,
                expected: "at least 5",
                got: 4,
            },
        ),
        (
            "06 12 21 00 01 05",
            DecodeError::BodyLength {
                msg_type: MsgType::Subscribe,
                expected: "at least 3",
                got: 4,
            },
        ),
        (
            "02 FE",
            DecodeError::BadEncapsulation("length octet is below the 3-octet minimum"),
        ),
    ];
    for (text, expected) in cases {
        let wire = bytes(text);
        assert_eq!(
            Frame::decode(&wire).map(|f| f.message),
            Err(expected.clone()),
            "{text}"
        );
    }
    assert_eq!(
        Frame::decode(&bytes("05 FE 00 00 01")),
        Err(DecodeError::BadEncapsulation("no message after the header"))
    );
    assert_eq!(
        Frame::decode(&bytes("05 FE 00 00")),
        Err(DecodeError::BadEncapsulation(
            "frame ends inside the encapsulation header"
        ))
    );
    assert_eq!(
        Frame::decode(&bytes("03 FE 00 05 FE 00 02 17")),
        Err(DecodeError::BadEncapsulation(
            "an encapsulated message cannot itself be encapsulated"
        ))
    );
    // Error messages read well in a log line.
    assert_eq!(
        DecodeError::BadTopicIdType {
            msg_type: MsgType::Publish,
            topic_id_type: TopicIdType::Reserved
        }
        .to_string(),
        "PUBLISH: topic id type reserved is not valid in this message"
    );
    assert_eq!(
        DecodeError::LengthMismatch {
            declared: 5,
            actual: 2
        }
        .to_string(),
        "length field says 5 bytes but the frame has 2"
    );
}

#[test]
fn oversize_messages_are_an_error_not_a_panic() {
    let data = vec![0u8; 65535];
    let msg = Message::Publish(Publish {
        dup: false,
        qos: QoS::Zero,
        retain: false,
        topic: TopicRef::Id(1),
        msg_id: 0,
        data: &data,
    });
    let mut out = Vec::new();
    assert_eq!(msg.encode(&mut out), Err(EncodeError::TooLong(65544)));
    assert!(out.is_empty(), "nothing written on error");
    let node = [0u8; 253];
    let frame = Frame {
        forwarder: Some(Forwarder {
            radius: 0,
            node_id: &node,
        }),
        message: Message::PingResp,
    };
    assert_eq!(frame.to_vec(), Err(EncodeError::NodeIdTooLong(253)));
}

#[test]
fn human_readable_rendering() {
    let wire = bytes("09 0C 20 00 01 00 01 68 69");
    assert_eq!(
        Message::decode(&wire).unwrap().to_string(),
        "PUBLISH qos=1 retain=false dup=false topic_id=1(normal) msg_id=1 payload=\"hi\" (2 bytes)"
    );
    let wire = bytes("05 FE 00 00 01 08 04 04 01 00 3C 63 31");
    assert_eq!(
        Frame::decode(&wire).unwrap().to_string(),
        "ENCAPSULATED radius=0 node_id=0x0001 | CONNECT client_id=\"c1\" keep_alive=60 clean_session=true will=false"
    );
    let wire = bytes("09 0C 62 61 62 00 00 00 FF");
    assert_eq!(
        Message::decode(&wire).unwrap().to_string(),
        "PUBLISH qos=-1 retain=false dup=false topic=\"ab\"(short) msg_id=0 payload=0x00ff (2 bytes)"
    );
}

#[test]
fn json_rendering_names_every_field() {
    let wire = bytes("09 0C 20 00 01 00 01 68 69");
    let json = mqttsn_gateway::decode_tool::json::message_json(&Message::decode(&wire).unwrap());
    assert_eq!(
        json,
        serde_json::json!({
            "type": "PUBLISH", "qos": 1, "retain": false, "dup": false,
            "topic_id_type": "normal", "topic_id": 1, "msg_id": 1, "payload": "6869"
        })
    );
}
