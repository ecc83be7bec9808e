//! Tests of the MQTT session against a scripted broker: bytes are built and parsed with
//! rumqttc's codec, time is virtual.

use super::MQTT_V4;
use bytes::{Bytes, BytesMut};
use mqttsn_core::engine::mqtt::{
    ConnectOptions, ConnectRefusal, LastWill, MqttError, MqttEvent, MqttSession, QoS,
};
use mqttsn_core::time::{Duration, Instant};
use proptest::prelude::*;
use rumqttc::mqttbytes::{self as mb, v4 as wire};

/// A session speaking MQTT 3.1.1.
fn session(options: ConnectOptions) -> Result<MqttSession, MqttError> {
    MqttSession::new(options, &MQTT_V4)
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

const T0: Instant = Instant::ZERO;

fn encode(packets: &[wire::Packet]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for packet in packets {
        packet.write(&mut buf, usize::MAX).unwrap();
    }
    buf.to_vec()
}

fn decode(bytes: &[u8]) -> Vec<wire::Packet> {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    while !buf.is_empty() {
        out.push(wire::Packet::read(&mut buf, usize::MAX).unwrap());
    }
    out
}

/// Everything the session wants to send, decoded.
fn sent(s: &mut MqttSession) -> Vec<wire::Packet> {
    let mut out = Vec::new();
    while let Some(bytes) = s.poll_transmit() {
        out.extend(decode(&bytes));
    }
    out
}

fn events(s: &mut MqttSession) -> Vec<MqttEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn feed(s: &mut MqttSession, now: Instant, packets: &[wire::Packet]) {
    s.handle_bytes(now, &encode(packets));
}

fn connack(session_present: bool) -> wire::Packet {
    wire::Packet::ConnAck(wire::ConnAck::new(
        wire::ConnectReturnCode::Success,
        session_present,
    ))
}

fn options() -> ConnectOptions {
    ConnectOptions {
        keep_alive: Duration::from_secs(10),
        ..ConnectOptions::new("gw")
    }
}

/// A session through CONNECT/CONNACK at time zero, outputs drained.
fn connected(options: ConnectOptions) -> MqttSession {
    let mut s = session(options).unwrap();
    s.handle_connected(T0);
    assert!(matches!(sent(&mut s)[..], [wire::Packet::Connect(_)]));
    feed(&mut s, T0, &[connack(false)]);
    assert_eq!(
        events(&mut s),
        [MqttEvent::Connected {
            session_present: false
        }]
    );
    assert!(s.is_connected());
    s
}

fn broker_publish(topic: &str, qos: mb::QoS, pid: u16, payload: &[u8], dup: bool) -> wire::Packet {
    let mut p = wire::Publish::new(topic, qos, payload.to_vec());
    p.pkid = pid;
    p.dup = dup;
    wire::Packet::Publish(p)
}

/// (pid, dup, qos, topic) of each PUBLISH, for order checks.
fn publishes(packets: &[wire::Packet]) -> Vec<(u16, bool, mb::QoS, String)> {
    packets
        .iter()
        .map(|p| match p {
            wire::Packet::Publish(p) => (p.pkid, p.dup, p.qos, p.topic.clone()),
            other => panic!("expected PUBLISH, got {other:?}"),
        })
        .collect()
}

fn message(topic: &str, payload: &[u8], qos: QoS, pid: Option<u16>, dup: bool) -> MqttEvent {
    MqttEvent::Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        pid,
        dup,
    }
}

fn is_protocol_error(events: &[MqttEvent]) -> bool {
    matches!(events, [MqttEvent::ProtocolError(_)])
}

// ----- CONNECT / CONNACK ------------------------------------------------------------------------

#[test]
fn connect_bytes_carry_all_options() {
    let mut s = session(ConnectOptions {
        client_id: "gw-1".into(),
        clean_session: false,
        keep_alive: Duration::from_secs(30),
        username: Some("user".into()),
        password: Some("secret".into()),
        will: Some(LastWill {
            topic: "gw/status".into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
        }),
        ..ConnectOptions::new("")
    })
    .unwrap();
    assert!(
        s.poll_transmit().is_none(),
        "nothing before the transport is up"
    );
    s.handle_connected(T0);
    let packets = sent(&mut s);
    let [wire::Packet::Connect(c)] = &packets[..] else {
        panic!("{packets:?}")
    };
    assert_eq!(c.protocol, mb::Protocol::V4);
    assert_eq!(c.client_id, "gw-1");
    assert!(!c.clean_session);
    assert_eq!(c.keep_alive, 30);
    assert_eq!(c.login, Some(wire::Login::new("user", "secret")));
    assert_eq!(
        c.last_will,
        Some(wire::LastWill::new(
            "gw/status",
            b"offline".to_vec(),
            mb::QoS::AtLeastOnce,
            true
        ))
    );
    assert!(!s.is_connected(), "not before CONNACK");
}

#[test]
fn connect_bytes_minimal() {
    let mut s = session(ConnectOptions {
        keep_alive: Duration::ZERO,
        ..ConnectOptions::new("dev")
    })
    .unwrap();
    s.handle_connected(T0);
    let bytes = s.poll_transmit().unwrap();
    // Fixed header, "MQTT", level 4, flags = clean session only, keep-alive 0, id "dev".
    assert_eq!(
        &bytes[..],
        &[0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 3, b'd', b'e', b'v']
    );
}

#[test]
fn invalid_connect_options_are_refused() {
    let bad = [
        ConnectOptions {
            keep_alive: Duration::from_millis(1500),
            ..options()
        },
        ConnectOptions {
            keep_alive: Duration::from_secs(65536),
            ..options()
        },
        ConnectOptions {
            clean_session: false,
            ..ConnectOptions::new("")
        },
        ConnectOptions {
            password: Some("pw".into()),
            ..options()
        },
        ConnectOptions {
            will: Some(LastWill {
                topic: "a/+".into(),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
            }),
            ..options()
        },
    ];
    for options in bad {
        assert!(
            matches!(session(options.clone()), Err(MqttError::InvalidOptions(_))),
            "{options:?}"
        );
    }
}

#[test]
fn debug_output_hides_the_password() {
    let options = ConnectOptions {
        username: Some("u".into()),
        password: Some("hunter2".into()),
        ..options()
    };
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[test]
fn connack_accepted_reports_session_present() {
    let mut s = session(ConnectOptions {
        clean_session: false,
        ..options()
    })
    .unwrap();
    s.handle_connected(T0);
    let _ = sent(&mut s);
    feed(&mut s, at(5), &[connack(true)]);
    assert_eq!(
        events(&mut s),
        [MqttEvent::Connected {
            session_present: true
        }]
    );
    assert!(s.is_connected());
}

#[test]
fn connack_refused_makes_the_connection_unusable() {
    let mut s = session(options()).unwrap();
    s.handle_connected(T0);
    let _ = sent(&mut s);
    let refused = wire::Packet::ConnAck(wire::ConnAck::new(
        wire::ConnectReturnCode::NotAuthorized,
        false,
    ));
    // A PUBLISH in the same read must not be processed after the refusal.
    let mut bytes = encode(&[refused]);
    bytes.extend(encode(&[broker_publish(
        "a",
        mb::QoS::AtMostOnce,
        0,
        b"x",
        false,
    )]));
    s.handle_bytes(T0, &bytes);
    assert_eq!(
        events(&mut s),
        [MqttEvent::Rejected {
            reason: ConnectRefusal::NotAuthorized
        }]
    );
    assert_eq!(ConnectRefusal::NotAuthorized.code(), 5);
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    feed(&mut s, at(1), &[connack(false)]);
    assert!(events(&mut s).is_empty(), "input ignored until reconnect");
    assert!(sent(&mut s).is_empty());
}

#[test]
fn packet_before_connack_is_a_protocol_error() {
    let mut s = session(options()).unwrap();
    s.handle_connected(T0);
    let _ = sent(&mut s);
    feed(&mut s, T0, &[wire::Packet::PingResp]);
    assert!(is_protocol_error(&events(&mut s)));
    assert!(!s.is_connected());
}

#[test]
fn second_connack_is_a_protocol_error() {
    let mut s = connected(options());
    feed(&mut s, T0, &[connack(false)]);
    assert!(is_protocol_error(&events(&mut s)));
}

#[test]
fn connack_timeout() {
    let mut s = session(ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        ..options()
    })
    .unwrap();
    assert_eq!(s.poll_timeout(), None);
    s.handle_connected(at(1000));
    assert_eq!(s.poll_timeout(), Some(at(6000)));
    s.handle_timeout(at(5999));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(at(6000));
    assert_eq!(events(&mut s), [MqttEvent::ConnectTimeout]);
    assert_eq!(s.poll_timeout(), None);
}

// ----- outgoing publish -------------------------------------------------------------------------

#[test]
fn qos0_outgoing() {
    let mut s = connected(options());
    s.publish(
        at(1),
        "a/b",
        Bytes::from_static(b"hi"),
        QoS::AtMostOnce,
        true,
        7,
    )
    .unwrap();
    let packets = sent(&mut s);
    let [wire::Packet::Publish(p)] = &packets[..] else {
        panic!("{packets:?}")
    };
    assert_eq!(
        (p.qos, p.retain, p.dup, p.pkid, &p.topic[..], &p.payload[..]),
        (mb::QoS::AtMostOnce, true, false, 0, "a/b", &b"hi"[..])
    );
    assert!(events(&mut s).is_empty());
    assert_eq!(s.inflight(), 0);
}

#[test]
fn qos1_outgoing_full_flow() {
    let mut s = connected(options());
    s.publish(
        at(1),
        "t",
        Bytes::from_static(b"1"),
        QoS::AtLeastOnce,
        false,
        42,
    )
    .unwrap();
    assert_eq!(
        publishes(&sent(&mut s)),
        [(1, false, mb::QoS::AtLeastOnce, "t".into())]
    );
    assert_eq!(s.inflight(), 1);
    feed(&mut s, at(2), &[wire::Packet::PubAck(wire::PubAck::new(1))]);
    assert_eq!(events(&mut s), [MqttEvent::Published { token: 42 }]);
    assert_eq!(s.inflight(), 0);
    assert!(sent(&mut s).is_empty());
    // A second PUBACK for the same id is unknown by now: ignored.
    feed(&mut s, at(3), &[wire::Packet::PubAck(wire::PubAck::new(1))]);
    assert!(events(&mut s).is_empty());
    assert!(s.is_connected());
}

#[test]
fn qos2_outgoing_full_flow() {
    let mut s = connected(options());
    s.publish(
        at(1),
        "t",
        Bytes::from_static(b"2"),
        QoS::ExactlyOnce,
        false,
        9,
    )
    .unwrap();
    assert_eq!(
        publishes(&sent(&mut s)),
        [(1, false, mb::QoS::ExactlyOnce, "t".into())]
    );
    feed(&mut s, at(2), &[wire::Packet::PubRec(wire::PubRec::new(1))]);
    assert_eq!(events(&mut s), [MqttEvent::Received { token: 9 }]);
    assert_eq!(sent(&mut s), [wire::Packet::PubRel(wire::PubRel::new(1))]);
    // A repeated PUBREC gets PUBREL again but no second event.
    feed(&mut s, at(3), &[wire::Packet::PubRec(wire::PubRec::new(1))]);
    assert!(events(&mut s).is_empty());
    assert_eq!(sent(&mut s), [wire::Packet::PubRel(wire::PubRel::new(1))]);
    assert_eq!(s.inflight(), 1);
    feed(
        &mut s,
        at(4),
        &[wire::Packet::PubComp(wire::PubComp::new(1))],
    );
    assert_eq!(events(&mut s), [MqttEvent::Published { token: 9 }]);
    assert_eq!(s.inflight(), 0);
}

#[test]
fn mismatched_acks_are_ignored() {
    let mut s = connected(options());
    s.publish(T0, "q1", Bytes::new(), QoS::AtLeastOnce, false, 1)
        .unwrap();
    s.publish(T0, "q2", Bytes::new(), QoS::ExactlyOnce, false, 2)
        .unwrap();
    let _ = sent(&mut s);
    feed(
        &mut s,
        T0,
        &[
            wire::Packet::PubRec(wire::PubRec::new(1)), // QoS 1 message
            wire::Packet::PubAck(wire::PubAck::new(2)), // QoS 2 message
            wire::Packet::PubComp(wire::PubComp::new(2)), // before PUBREC
            wire::Packet::PubAck(wire::PubAck::new(99)),
            wire::Packet::PubRec(wire::PubRec::new(99)),
            wire::Packet::PubComp(wire::PubComp::new(99)),
            wire::Packet::SubAck(wire::SubAck::new(
                99,
                vec![wire::SubscribeReasonCode::Success(mb::QoS::AtMostOnce)],
            )),
            wire::Packet::UnsubAck(wire::UnsubAck::new(1)),
        ],
    );
    assert!(events(&mut s).is_empty());
    assert!(sent(&mut s).is_empty());
    assert!(s.is_connected());
    assert_eq!(s.inflight(), 2);
}

#[test]
fn transmit_is_coalesced() {
    let mut s = connected(options());
    for i in 0..3 {
        s.publish(T0, "t", Bytes::new(), QoS::AtLeastOnce, false, i)
            .unwrap();
    }
    let bytes = s.poll_transmit().unwrap();
    assert_eq!(decode(&bytes).len(), 3);
    assert!(s.poll_transmit().is_none());
}

#[test]
fn invalid_topics_and_filters_are_refused() {
    let mut s = connected(options());
    for topic in ["", "a/+", "a/#", "nul\0"] {
        assert!(matches!(
            s.publish(T0, topic, Bytes::new(), QoS::AtLeastOnce, false, 0),
            Err(MqttError::InvalidTopic(_))
        ));
    }
    for filter in ["", "a/#/b", "a#", "a/b+", "x\0"] {
        assert!(matches!(
            s.subscribe(T0, filter, QoS::AtMostOnce, 0),
            Err(MqttError::InvalidFilter(_))
        ));
        assert!(matches!(
            s.unsubscribe(T0, filter, 0),
            Err(MqttError::InvalidFilter(_))
        ));
    }
    assert_eq!(s.inflight(), 0);
    assert!(sent(&mut s).is_empty());
    s.subscribe(T0, "+/b/#", QoS::AtMostOnce, 0).unwrap();
    s.subscribe(T0, "#", QoS::AtMostOnce, 0).unwrap();
    assert_eq!(sent(&mut s).len(), 2);
}

// ----- packet ids -------------------------------------------------------------------------------

#[test]
fn pid_allocation_skips_inflight_and_wraps() {
    let mut s = connected(options());
    for token in 1..=3 {
        s.publish(T0, "t", Bytes::new(), QoS::AtLeastOnce, false, token)
            .unwrap();
    }
    let _ = sent(&mut s);
    feed(&mut s, T0, &[wire::Packet::PubAck(wire::PubAck::new(1))]);
    let _ = events(&mut s);
    // In flight: 2 and 3. Walk the counter to the end of the range, completing each id.
    for pid in 4..65534u16 {
        s.publish(T0, "t", Bytes::new(), QoS::AtLeastOnce, false, 100)
            .unwrap();
        let _ = s.poll_transmit();
        feed(&mut s, T0, &[wire::Packet::PubAck(wire::PubAck::new(pid))]);
        while s.poll_event().is_some() {}
    }
    for token in 4..=7 {
        s.publish(T0, "t", Bytes::new(), QoS::AtLeastOnce, false, token)
            .unwrap();
    }
    s.subscribe(T0, "f", QoS::AtMostOnce, 8).unwrap();
    let packets = sent(&mut s);
    let pids: Vec<u16> = packets
        .iter()
        .map(|p| match p {
            wire::Packet::Publish(p) => p.pkid,
            wire::Packet::Subscribe(s) => s.pkid,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(pids, [65534, 65535, 1, 4, 5]);
}

#[test]
fn pid_exhaustion_is_an_error_until_one_is_freed() {
    let mut s = session(options()).unwrap();
    for token in 0..65535 {
        s.publish(T0, "t", Bytes::new(), QoS::AtLeastOnce, false, token)
            .unwrap();
    }
    assert_eq!(s.inflight(), 65535);
    assert_eq!(
        s.publish(T0, "t", Bytes::new(), QoS::AtLeastOnce, false, 0),
        Err(MqttError::PacketIdsExhausted)
    );
    assert_eq!(
        s.subscribe(T0, "f", QoS::AtMostOnce, 0),
        Err(MqttError::PacketIdsExhausted)
    );
    assert_eq!(
        s.unsubscribe(T0, "f", 0),
        Err(MqttError::PacketIdsExhausted)
    );
    s.handle_connected(T0);
    feed(&mut s, T0, &[connack(false)]);
    assert_eq!(sent(&mut s).len(), 65536, "CONNECT and every PUBLISH");
    feed(&mut s, T0, &[wire::Packet::PubAck(wire::PubAck::new(777))]);
    assert_eq!(events(&mut s).len(), 2);
    s.publish(T0, "t", Bytes::new(), QoS::ExactlyOnce, false, 0)
        .unwrap();
    assert_eq!(publishes(&sent(&mut s))[0].0, 777);
}

// ----- disconnect and resend --------------------------------------------------------------------

#[test]
fn reconnect_resends_inflight_in_order_with_dup_after_connack() {
    let mut s = connected(options());
    for (token, topic) in [(1, "a"), (2, "b"), (3, "c")] {
        s.publish(T0, topic, Bytes::new(), QoS::AtLeastOnce, false, token)
            .unwrap();
    }
    assert_eq!(sent(&mut s).len(), 3);
    s.handle_disconnected();
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.inflight(), 3);
    // Requested while down: kept, and sent first time without DUP after the resends.
    s.publish(at(10), "d", Bytes::new(), QoS::AtLeastOnce, false, 4)
        .unwrap();
    assert_eq!(
        s.publish(at(10), "zero", Bytes::new(), QoS::AtMostOnce, false, 5),
        Err(MqttError::NotConnected)
    );
    assert!(sent(&mut s).is_empty());

    s.handle_connected(at(20));
    // Requested while waiting for CONNACK: held back.
    s.publish(at(21), "e", Bytes::new(), QoS::AtMostOnce, false, 6)
        .unwrap();
    s.publish(at(21), "f", Bytes::new(), QoS::AtLeastOnce, false, 7)
        .unwrap();
    assert!(matches!(sent(&mut s)[..], [wire::Packet::Connect(_)]));
    s.handle_bytes(at(22), &[]);
    assert!(sent(&mut s).is_empty(), "nothing before CONNACK");

    feed(&mut s, at(30), &[connack(false)]);
    assert_eq!(
        events(&mut s),
        [MqttEvent::Connected {
            session_present: false
        }]
    );
    let q1 = mb::QoS::AtLeastOnce;
    assert_eq!(
        publishes(&sent(&mut s)),
        [
            (1, true, q1, "a".into()),
            (2, true, q1, "b".into()),
            (3, true, q1, "c".into()),
            (4, false, q1, "d".into()),
            (5, false, q1, "f".into()),
            (0, false, mb::QoS::AtMostOnce, "e".into()),
        ]
    );
    feed(
        &mut s,
        at(31),
        &[wire::Packet::PubAck(wire::PubAck::new(2))],
    );
    assert_eq!(events(&mut s), [MqttEvent::Published { token: 2 }]);
}

#[test]
fn qos2_resends_pubrel_after_pubrec() {
    let mut s = connected(options());
    s.publish(
        T0,
        "a",
        Bytes::from_static(b"A"),
        QoS::ExactlyOnce,
        false,
        1,
    )
    .unwrap();
    s.publish(
        T0,
        "b",
        Bytes::from_static(b"B"),
        QoS::ExactlyOnce,
        false,
        2,
    )
    .unwrap();
    let _ = sent(&mut s);
    feed(&mut s, T0, &[wire::Packet::PubRec(wire::PubRec::new(1))]);
    assert_eq!(events(&mut s), [MqttEvent::Received { token: 1 }]);
    let _ = sent(&mut s);
    s.handle_disconnected();
    s.handle_connected(at(1));
    let _ = sent(&mut s);
    feed(&mut s, at(2), &[connack(true)]);
    let _ = events(&mut s);
    let packets = sent(&mut s);
    assert_eq!(packets.len(), 2);
    assert_eq!(packets[0], wire::Packet::PubRel(wire::PubRel::new(1)));
    assert_eq!(
        publishes(&packets[1..]),
        [(2, true, mb::QoS::ExactlyOnce, "b".into())]
    );
    feed(
        &mut s,
        at(3),
        &[wire::Packet::PubComp(wire::PubComp::new(1))],
    );
    assert_eq!(events(&mut s), [MqttEvent::Published { token: 1 }]);
}

#[test]
fn subscribe_and_unsubscribe_flows_and_resend() {
    let mut s = connected(options());
    s.subscribe(T0, "a/+", QoS::AtLeastOnce, 10).unwrap();
    s.subscribe(T0, "b/#", QoS::ExactlyOnce, 11).unwrap();
    s.unsubscribe(T0, "old", 12).unwrap();
    let packets = sent(&mut s);
    let [wire::Packet::Subscribe(a), wire::Packet::Subscribe(b), wire::Packet::Unsubscribe(u)] =
        &packets[..]
    else {
        panic!("{packets:?}")
    };
    assert_eq!(
        (a.pkid, &a.filters[0].path[..], a.filters[0].qos),
        (1, "a/+", mb::QoS::AtLeastOnce)
    );
    assert_eq!(
        (b.pkid, &b.filters[0].path[..], b.filters[0].qos),
        (2, "b/#", mb::QoS::ExactlyOnce)
    );
    assert_eq!((u.pkid, &u.topics[..]), (3, &["old".to_string()][..]));

    // Lost before the acks: all three go again after CONNACK, in order.
    s.handle_disconnected();
    s.handle_connected(at(1));
    let _ = sent(&mut s);
    feed(&mut s, at(1), &[connack(false)]);
    let _ = events(&mut s);
    assert_eq!(sent(&mut s), packets);

    use wire::SubscribeReasonCode::{Failure, Success};
    feed(
        &mut s,
        at(2),
        &[
            wire::Packet::SubAck(wire::SubAck::new(1, vec![Success(mb::QoS::AtLeastOnce)])),
            wire::Packet::SubAck(wire::SubAck::new(2, vec![Failure])),
            wire::Packet::UnsubAck(wire::UnsubAck::new(3)),
        ],
    );
    assert_eq!(
        events(&mut s),
        [
            MqttEvent::Subscribed {
                token: 10,
                granted: vec![Some(QoS::AtLeastOnce)]
            },
            MqttEvent::Subscribed {
                token: 11,
                granted: vec![None]
            },
            MqttEvent::Unsubscribed { token: 12 },
        ]
    );
    assert_eq!(s.inflight(), 0);
}

#[test]
fn suback_with_wrong_number_of_codes_is_a_protocol_error() {
    let mut s = connected(options());
    s.subscribe(T0, "a", QoS::AtLeastOnce, 1).unwrap();
    let _ = sent(&mut s);
    use wire::SubscribeReasonCode::Success;
    feed(
        &mut s,
        T0,
        &[wire::Packet::SubAck(wire::SubAck::new(
            1,
            vec![Success(mb::QoS::AtMostOnce), Success(mb::QoS::AtMostOnce)],
        ))],
    );
    assert!(is_protocol_error(&events(&mut s)));
}

#[test]
fn disconnect_queues_disconnect_and_stops() {
    let mut s = connected(options());
    s.publish(T0, "a", Bytes::new(), QoS::AtLeastOnce, false, 1)
        .unwrap();
    let _ = sent(&mut s);
    s.disconnect();
    assert_eq!(sent(&mut s), [wire::Packet::Disconnect]);
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(
        s.publish(T0, "a", Bytes::new(), QoS::AtMostOnce, false, 1),
        Err(MqttError::NotConnected)
    );
    feed(&mut s, T0, &[wire::Packet::PubAck(wire::PubAck::new(1))]);
    assert!(events(&mut s).is_empty());
    assert_eq!(s.inflight(), 1, "kept for a later reconnect");
    s.disconnect();
    assert!(sent(&mut s).is_empty());
}

#[test]
fn qos0_queue_before_connack_is_bounded() {
    let mut s = session(options()).unwrap();
    s.handle_connected(T0);
    for _ in 0..mqttsn_core::engine::mqtt::MAX_QUEUED_QOS0 {
        s.publish(T0, "t", Bytes::new(), QoS::AtMostOnce, false, 0)
            .unwrap();
    }
    assert_eq!(
        s.publish(T0, "t", Bytes::new(), QoS::AtMostOnce, false, 0),
        Err(MqttError::QueueFull(
            mqttsn_core::engine::mqtt::MAX_QUEUED_QOS0
        ))
    );
    // Dropped with the transport.
    s.handle_disconnected();
    s.handle_connected(T0);
    feed(&mut s, T0, &[connack(false)]);
    assert_eq!(sent(&mut s).len(), 1, "CONNECT only");
}

// ----- incoming ---------------------------------------------------------------------------------

#[test]
fn incoming_qos0() {
    let mut s = connected(options());
    feed(
        &mut s,
        T0,
        &[broker_publish("x/y", mb::QoS::AtMostOnce, 0, b"v", false)],
    );
    assert_eq!(
        events(&mut s),
        [message("x/y", b"v", QoS::AtMostOnce, None, false)]
    );
    assert!(sent(&mut s).is_empty());
}

#[test]
fn incoming_retained_flag() {
    let mut s = connected(options());
    let mut p = wire::Publish::new("r", mb::QoS::AtMostOnce, b"1".to_vec());
    p.retain = true;
    feed(&mut s, T0, &[wire::Packet::Publish(p)]);
    assert!(matches!(
        &events(&mut s)[..],
        [MqttEvent::Message { retain: true, .. }]
    ));
}

#[test]
fn incoming_qos1_redelivered_until_acked() {
    let mut s = connected(options());
    let q1 = mb::QoS::AtLeastOnce;
    feed(&mut s, T0, &[broker_publish("t", q1, 5, b"m", false)]);
    assert_eq!(
        events(&mut s),
        [message("t", b"m", QoS::AtLeastOnce, Some(5), false)]
    );
    assert!(sent(&mut s).is_empty(), "PUBACK waits for the engine");
    // At-least-once: a redelivery before the engine acked is delivered again.
    feed(&mut s, T0, &[broker_publish("t", q1, 5, b"m", true)]);
    assert_eq!(
        events(&mut s),
        [message("t", b"m", QoS::AtLeastOnce, Some(5), true)]
    );
    s.ack_message(at(1), 5);
    assert_eq!(sent(&mut s), [wire::Packet::PubAck(wire::PubAck::new(5))]);
    s.ack_message(at(1), 5);
    assert!(sent(&mut s).is_empty(), "second ack is ignored");
    s.ack_message(at(1), 6);
    assert!(sent(&mut s).is_empty(), "unknown id is ignored");
}

#[test]
fn incoming_qos2_delivered_once() {
    let mut s = connected(options());
    let q2 = mb::QoS::ExactlyOnce;
    feed(&mut s, T0, &[broker_publish("t", q2, 9, b"m", false)]);
    assert_eq!(
        events(&mut s),
        [message("t", b"m", QoS::ExactlyOnce, Some(9), false)]
    );
    // Redelivery before the engine acked: not delivered again, no PUBREC yet.
    feed(&mut s, T0, &[broker_publish("t", q2, 9, b"m", true)]);
    assert!(events(&mut s).is_empty());
    assert!(sent(&mut s).is_empty());
    s.ack_message(at(1), 9);
    assert_eq!(sent(&mut s), [wire::Packet::PubRec(wire::PubRec::new(9))]);
    // Redelivery after PUBREC (the broker missed it): PUBREC again, still no delivery.
    feed(&mut s, at(2), &[broker_publish("t", q2, 9, b"m", true)]);
    assert!(events(&mut s).is_empty());
    assert_eq!(sent(&mut s), [wire::Packet::PubRec(wire::PubRec::new(9))]);
    feed(&mut s, at(3), &[wire::Packet::PubRel(wire::PubRel::new(9))]);
    assert_eq!(sent(&mut s), [wire::Packet::PubComp(wire::PubComp::new(9))]);
    assert!(events(&mut s).is_empty());
    // Released: the id now names a new message.
    feed(&mut s, at(4), &[broker_publish("t", q2, 9, b"n", false)]);
    assert_eq!(
        events(&mut s),
        [message("t", b"n", QoS::ExactlyOnce, Some(9), false)]
    );
}

#[test]
fn pubrel_for_unknown_id_gets_pubcomp() {
    let mut s = connected(options());
    feed(&mut s, T0, &[wire::Packet::PubRel(wire::PubRel::new(3))]);
    assert_eq!(sent(&mut s), [wire::Packet::PubComp(wire::PubComp::new(3))]);
    assert!(events(&mut s).is_empty());
}

#[test]
fn incoming_qos2_state_survives_a_reconnect_with_session() {
    let mut s = connected(ConnectOptions {
        clean_session: false,
        ..options()
    });
    let q2 = mb::QoS::ExactlyOnce;
    feed(&mut s, T0, &[broker_publish("t", q2, 1, b"m", false)]);
    feed(&mut s, T0, &[broker_publish("t", q2, 2, b"m", false)]);
    assert_eq!(events(&mut s).len(), 2);
    s.ack_message(T0, 1);
    let _ = sent(&mut s);
    s.handle_disconnected();
    // Acked while down: remembered, answered on redelivery.
    s.ack_message(T0, 2);
    assert!(sent(&mut s).is_empty());
    s.handle_connected(at(1));
    let _ = sent(&mut s);
    feed(&mut s, at(1), &[connack(true)]);
    let _ = events(&mut s);
    feed(
        &mut s,
        at(2),
        &[
            broker_publish("t", q2, 1, b"m", true),
            broker_publish("t", q2, 2, b"m", true),
        ],
    );
    assert!(events(&mut s).is_empty(), "no duplicates");
    assert_eq!(
        sent(&mut s),
        [
            wire::Packet::PubRec(wire::PubRec::new(1)),
            wire::Packet::PubRec(wire::PubRec::new(2))
        ]
    );
}

#[test]
fn incoming_state_is_dropped_when_the_broker_has_no_session() {
    let mut s = connected(options());
    let q2 = mb::QoS::ExactlyOnce;
    feed(&mut s, T0, &[broker_publish("t", q2, 1, b"m", false)]);
    let _ = events(&mut s);
    s.handle_disconnected();
    s.handle_connected(at(1));
    feed(&mut s, at(1), &[connack(false)]);
    let _ = events(&mut s);
    let _ = sent(&mut s);
    s.ack_message(at(2), 1);
    assert!(
        sent(&mut s).is_empty(),
        "no PUBREC for the old session's id"
    );
    feed(&mut s, at(3), &[broker_publish("t", q2, 1, b"new", false)]);
    assert_eq!(
        events(&mut s),
        [message("t", b"new", QoS::ExactlyOnce, Some(1), false)]
    );
}

#[test]
fn incoming_64k_payload_in_chunks() {
    let mut s = connected(options());
    let payload: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let bytes = encode(&[broker_publish(
        "big/topic",
        mb::QoS::AtLeastOnce,
        1,
        &payload,
        false,
    )]);
    for chunk in bytes.chunks(1460) {
        assert!(events(&mut s).is_empty());
        s.handle_bytes(T0, chunk);
    }
    assert_eq!(
        events(&mut s),
        [message(
            "big/topic",
            &payload,
            QoS::AtLeastOnce,
            Some(1),
            false
        )]
    );
}

// ----- keep-alive -------------------------------------------------------------------------------

#[test]
fn keep_alive_ping_and_pong() {
    let mut s = connected(options());
    assert_eq!(s.poll_timeout(), Some(at(10_000)));
    s.handle_timeout(at(9_999));
    assert!(sent(&mut s).is_empty(), "spurious early call");
    s.handle_timeout(at(10_000));
    assert_eq!(sent(&mut s), [wire::Packet::PingReq]);
    assert_eq!(
        s.poll_timeout(),
        Some(at(15_000)),
        "grace of half the interval"
    );
    s.handle_timeout(at(12_000));
    assert!(sent(&mut s).is_empty(), "one PINGREQ at a time");
    feed(&mut s, at(12_000), &[wire::Packet::PingResp]);
    assert_eq!(s.poll_timeout(), Some(at(20_000)));
    // Anything we send restarts the idle timer.
    s.publish(at(13_000), "t", Bytes::new(), QoS::AtMostOnce, false, 0)
        .unwrap();
    let _ = sent(&mut s);
    assert_eq!(s.poll_timeout(), Some(at(23_000)));
    // A stale `now` does not move it back.
    s.publish(at(1), "t", Bytes::new(), QoS::AtMostOnce, false, 0)
        .unwrap();
    assert_eq!(s.poll_timeout(), Some(at(23_000)));
    assert!(events(&mut s).is_empty());
}

#[test]
fn keep_alive_timeout() {
    let mut s = connected(options());
    s.handle_timeout(at(10_000));
    assert_eq!(sent(&mut s), [wire::Packet::PingReq]);
    s.handle_timeout(at(14_999));
    assert!(events(&mut s).is_empty());
    s.handle_timeout(at(15_000));
    assert_eq!(events(&mut s), [MqttEvent::KeepAliveTimeout]);
    assert!(!s.is_connected());
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(at(99_000));
    assert!(events(&mut s).is_empty() && sent(&mut s).is_empty());
}

#[test]
fn keep_alive_grace_is_at_least_a_second() {
    let mut s = connected(ConnectOptions {
        keep_alive: Duration::from_secs(1),
        ..options()
    });
    s.handle_timeout(at(1_000));
    assert_eq!(sent(&mut s), [wire::Packet::PingReq]);
    assert_eq!(s.poll_timeout(), Some(at(2_000)));
}

#[test]
fn keep_alive_zero_means_no_timers() {
    let mut s = connected(ConnectOptions {
        keep_alive: Duration::ZERO,
        ..options()
    });
    assert_eq!(s.poll_timeout(), None);
    s.handle_timeout(at(1_000_000));
    assert!(sent(&mut s).is_empty());
}

// ----- framing and garbage ----------------------------------------------------------------------

/// A broker stream exercising most packet kinds, and the events it produces.
fn script() -> (Vec<u8>, Vec<MqttEvent>) {
    let bytes = encode(&[
        connack(false),
        broker_publish("a", mb::QoS::AtMostOnce, 0, b"zero", false),
        broker_publish("b/c", mb::QoS::AtLeastOnce, 1, &[7; 300], false),
        broker_publish("d", mb::QoS::ExactlyOnce, 2, b"two", false),
        wire::Packet::PingResp,
        wire::Packet::PubRel(wire::PubRel::new(2)),
        broker_publish("e", mb::QoS::AtMostOnce, 0, b"", false),
    ]);
    let expected = vec![
        MqttEvent::Connected {
            session_present: false,
        },
        message("a", b"zero", QoS::AtMostOnce, None, false),
        message("b/c", &[7; 300], QoS::AtLeastOnce, Some(1), false),
        message("d", b"two", QoS::ExactlyOnce, Some(2), false),
        message("e", b"", QoS::AtMostOnce, None, false),
    ];
    (bytes, expected)
}

fn connecting() -> MqttSession {
    let mut s = session(options()).unwrap();
    s.handle_connected(T0);
    let _ = sent(&mut s);
    s
}

#[test]
fn several_packets_in_one_read() {
    let (bytes, expected) = script();
    let mut s = connecting();
    s.handle_bytes(T0, &bytes);
    assert_eq!(events(&mut s), expected);
    assert_eq!(sent(&mut s), [wire::Packet::PubComp(wire::PubComp::new(2))]);
}

#[test]
fn split_at_every_byte_boundary() {
    let (bytes, expected) = script();
    for cut in 0..=bytes.len() {
        let mut s = connecting();
        s.handle_bytes(T0, &bytes[..cut]);
        s.handle_bytes(T0, &bytes[cut..]);
        assert_eq!(events(&mut s), expected, "cut at {cut}");
    }
    let mut s = connecting();
    for byte in &bytes {
        s.handle_bytes(T0, std::slice::from_ref(byte));
    }
    assert_eq!(events(&mut s), expected, "byte by byte");
}

#[test]
fn garbage_is_a_protocol_error() {
    let cases: &[(&str, &[u8])] = &[
        ("reserved type 0", &[0x00, 0x00]),
        ("reserved type 15", &[0xF0, 0x00]),
        ("CONNECT from the broker", &[0x10]),
        ("SUBSCRIBE from the broker", &[0x82, 0x05, 0, 1, 0, 1, b'a']),
        ("UNSUBSCRIBE from the broker", &[0xA2]),
        ("PINGREQ from the broker", &[0xC0, 0x00]),
        ("DISCONNECT from the broker", &[0xE0, 0x00]),
        ("PUBREL with wrong flags", &[0x60, 0x02, 0, 1]),
        ("PUBACK with flags", &[0x41, 0x02, 0, 1]),
        ("PUBLISH QoS 3", &[0x36, 0x05, 0, 1, b'a', 0, 1]),
        ("PUBLISH QoS 1 id 0", &[0x32, 0x05, 0, 1, b'a', 0, 0]),
        ("PUBLISH topic past the end", &[0x30, 0x03, 0, 9, b'a']),
        ("PUBLISH topic not UTF-8", &[0x30, 0x03, 0, 1, 0xFF]),
        ("PUBACK too short", &[0x40, 0x01, 0]),
        ("PUBACK empty", &[0x40, 0x00]),
        ("SUBACK bad code", &[0x90, 0x03, 0, 1, 0x05]),
        ("UNSUBACK too long", &[0xB0, 0x03, 0, 1, 0]),
        (
            "remaining length of 5 bytes",
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
    ];
    for (name, bytes) in cases {
        let mut s = connected(options());
        s.handle_bytes(T0, bytes);
        let ev = events(&mut s);
        assert!(is_protocol_error(&ev), "{name}: {ev:?}");
        assert!(!s.is_connected(), "{name}");
        // Everything after is ignored until the transport is replaced.
        feed(&mut s, T0, &[wire::Packet::PingResp]);
        assert!(events(&mut s).is_empty(), "{name}");
    }
    // CONNACK with an unknown return code.
    let mut s = connecting();
    s.handle_bytes(T0, &[0x20, 0x02, 0x00, 0x06]);
    assert!(is_protocol_error(&events(&mut s)));
}

#[test]
fn an_oversize_publish_is_judged_from_its_header_and_not_buffered() {
    let mut s = connected(ConnectOptions {
        max_packet_size: 1000,
        ..options()
    });
    let ok = encode(&[broker_publish(
        "t",
        mb::QoS::AtMostOnce,
        0,
        &[0; 997],
        false,
    )]);
    s.handle_bytes(T0, &ok);
    assert_eq!(
        events(&mut s).len(),
        1,
        "1000 bytes remaining length is fine"
    );
    let big = encode(&[broker_publish(
        "t",
        mb::QoS::AtMostOnce,
        0,
        &[0; 998],
        false,
    )]);
    // Only the fixed header has arrived: nothing yet, and nothing buffered beyond the topic.
    s.handle_bytes(T0, &big[..3]);
    assert!(events(&mut s).is_empty());
    // The rest arrives: the message is dropped, not the connection.
    s.handle_bytes(T0, &big[3..]);
    assert_eq!(events(&mut s), [MqttEvent::TooLarge { size: big.len() }]);
    assert!(s.is_connected());
}

#[test]
fn an_oversize_publish_is_skipped_acknowledged_and_the_stream_goes_on() {
    for (qos, ack) in [
        (
            mb::QoS::AtLeastOnce,
            wire::Packet::PubAck(wire::PubAck::new(41)),
        ),
        (
            mb::QoS::ExactlyOnce,
            wire::Packet::PubRec(wire::PubRec::new(41)),
        ),
    ] {
        let mut s = connected(ConnectOptions {
            max_packet_size: 1000,
            ..options()
        });
        let mut stream = encode(&[broker_publish(
            "huge/retained",
            qos,
            41,
            &[7; 100_000],
            false,
        )]);
        let big = stream.len();
        stream.extend(encode(&[broker_publish(
            "small",
            mb::QoS::AtMostOnce,
            0,
            b"after",
            false,
        )]));
        // In small pieces, as TCP delivers them: the skip spans many reads.
        for chunk in stream.chunks(1_500) {
            s.handle_bytes(T0, chunk);
        }
        let ev = events(&mut s);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[0], MqttEvent::TooLarge { size: big });
        assert!(
            matches!(&ev[1], MqttEvent::Message { topic, payload, .. } if topic == "small" && &payload[..] == b"after"),
            "{ev:?}"
        );
        assert_eq!(sent(&mut s), [ack]);
        assert!(s.is_connected());
    }
}

#[test]
fn an_oversize_packet_other_than_publish_is_a_protocol_error() {
    let mut s = connected(ConnectOptions {
        max_packet_size: 10,
        ..options()
    });
    // A SUBACK claiming 200 return codes.
    let mut suback = vec![0x90, 0xCA, 0x01, 0x00, 0x01];
    suback.extend([0u8; 200]);
    s.handle_bytes(T0, &suback);
    assert!(is_protocol_error(&events(&mut s)));
}

#[test]
fn reconnect_forgets_partial_input() {
    let mut s = connected(options());
    s.handle_bytes(T0, &[0x30, 0x10, 0x00]); // partial PUBLISH
    s.handle_bytes(T0, &[0xF0]); // not reached: still inside that PUBLISH
    assert!(events(&mut s).is_empty());
    s.handle_disconnected();
    s.handle_connected(at(1));
    let _ = sent(&mut s);
    feed(&mut s, at(1), &[connack(false)]);
    assert_eq!(
        events(&mut s),
        [MqttEvent::Connected {
            session_present: false
        }],
        "partial input of the old transport is forgotten"
    );
}

#[test]
fn input_while_down_is_ignored() {
    let mut s = session(options()).unwrap();
    feed(&mut s, T0, &[connack(false)]);
    assert!(events(&mut s).is_empty());
    assert!(!s.is_connected());
}

#[test]
fn qos_conversions_with_mqtt_sn() {
    use crate::codec::QoS as Sn;
    assert_eq!(QoS::from_sn(Sn::MinusOne), None);
    for (sn, mqtt) in [
        (Sn::Zero, QoS::AtMostOnce),
        (Sn::One, QoS::AtLeastOnce),
        (Sn::Two, QoS::ExactlyOnce),
    ] {
        assert_eq!(QoS::from_sn(sn), Some(mqtt));
        assert_eq!(Sn::from(mqtt), sn);
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        after_connack in any::<bool>(),
    ) {
        let mut s = if after_connack { connected(options()) } else { connecting() };
        for chunk in &chunks {
            s.handle_bytes(T0, chunk);
            s.handle_timeout(at(20_000));
            let _ = s.poll_timeout();
        }
        let _ = events(&mut s);
        while s.poll_transmit().is_some() {}
    }

    #[test]
    fn valid_stream_with_random_cuts_and_noise_suffix(
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
        noise in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let (mut bytes, expected) = script();
        let len = bytes.len();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(len + 1)).collect();
        points.sort_unstable();
        bytes.extend(noise);
        let mut s = connecting();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            s.handle_bytes(T0, &bytes[start..point]);
            start = point;
        }
        let ev = events(&mut s);
        // The valid part is always delivered in full; the noise may add one error or a packet.
        prop_assert!(ev.len() >= expected.len());
        prop_assert_eq!(&ev[..expected.len()], &expected[..]);
    }
}
