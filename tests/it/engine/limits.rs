//! Bounds on what devices can make the engine hold, checked on the engine itself with many
//! more frames than a transcript would list: topic names are not stored before the per-client
//! limit is checked, and names nobody uses any more are given back.

use super::*;
use mqttsn_gateway::codec::{Connect, Message, Register, TopicFilter, Unsubscribe};
use mqttsn_gateway::engine::PeerAddr;
use mqttsn_gateway::engine::UpstreamEvent;
use mqttsn_gateway::time::Instant;

fn gateway(extra: &str) -> Gateway {
    let config = Config::from_toml_str(&format!("[gateway]\n{extra}\n"), "test").unwrap();
    let mut gw = Gateway::new(config.engine_settings(HashSeed(9, 9)), &MQTT_V4);
    // The broker connection comes up and accepts the gateway.
    gw.handle_upstream(
        Instant::ZERO,
        mqttsn_gateway::engine::ConnId::GATEWAY,
        UpstreamEvent::Connected,
    );
    gw.handle_upstream(
        Instant::ZERO,
        mqttsn_gateway::engine::ConnId::GATEWAY,
        UpstreamEvent::Data(&[0x20, 0x02, 0x00, 0x00]),
    );
    drain(&mut gw);
    gw
}

fn drain(gw: &mut Gateway) -> Vec<Vec<u8>> {
    while gw.poll_upstream().is_some() {}
    while gw.poll_event().is_some() {}
    std::iter::from_fn(|| gw.poll_transmit())
        .map(|t| t.bytes)
        .collect()
}

fn send(gw: &mut Gateway, peer: PeerAddr, msg: Message<'_>) -> Vec<Vec<u8>> {
    gw.handle_frame(Instant::from_millis(1), peer, &msg.to_vec().unwrap());
    drain(gw)
}

fn connected(gw: &mut Gateway, n: u8) -> PeerAddr {
    let peer = PeerAddr::udp(format!("10.0.0.{n}:5000").parse().unwrap());
    let id = format!("dev{n}");
    let replies = send(
        gw,
        peer,
        Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: &id,
        }),
    );
    assert_eq!(replies, [vec![0x03, 0x05, 0x00]], "CONNACK accepted");
    peer
}

/// `dev` subscribes to the name "t"; the broker grants the gateway's SUBSCRIBE `pid`. Returns
/// what the gateway sent meanwhile.
fn subscribe_t(gw: &mut Gateway, dev: PeerAddr, pid: u8) -> Vec<Vec<u8>> {
    let _ = send(
        gw,
        dev,
        Message::Subscribe(mqttsn_gateway::codec::Subscribe {
            dup: false,
            qos: mqttsn_gateway::codec::QoS::Zero,
            msg_id: 1,
            topic: TopicFilter::Name("t"),
        }),
    );
    gw.handle_upstream(
        Instant::ZERO,
        mqttsn_gateway::engine::ConnId::GATEWAY,
        UpstreamEvent::Data(&[0x90, 0x03, 0x00, pid, 0x00]),
    );
    drain(gw)
}

#[test]
fn a_full_registry_stores_no_more_names() {
    let mut gw = gateway("max_topics_per_client = 10\n[limits]\nframe_rate = 0");
    let dev = connected(&mut gw, 1);
    let before = gw.interned_names();
    for i in 0..5_000u16 {
        let name = format!("flood/{i:0>200}");
        let replies = send(
            &mut gw,
            dev,
            Message::Register(Register {
                topic_id: 0,
                msg_id: i,
                topic_name: &name,
            }),
        );
        let Ok(Message::RegAck(ack)) = Message::decode(&replies[0]) else {
            panic!("{replies:?}");
        };
        let expected = if i < 10 {
            mqttsn_gateway::codec::ReturnCode::Accepted
        } else {
            mqttsn_gateway::codec::ReturnCode::Congestion
        };
        assert_eq!(ack.return_code, expected, "REGISTER {i}");
    }
    assert_eq!(gw.interned_names(), before + 10);
}

#[test]
fn names_nobody_uses_are_given_back() {
    // No frame budget: this is about what the engine keeps, however fast a device may send.
    let mut gw = gateway("[limits]\nframe_rate = 0");
    let dev = connected(&mut gw, 2);
    // 50,000 UNSUBSCRIBEs of names nobody subscribed to: each is answered, none is kept for long.
    for i in 0..50_000u32 {
        let name = format!("nothing/{i}");
        let replies = send(
            &mut gw,
            dev,
            Message::Unsubscribe(Unsubscribe {
                msg_id: i as u16,
                topic: TopicFilter::Name(&name),
            }),
        );
        assert_eq!(replies.len(), 1, "UNSUBACK");
        assert!(
            gw.interned_names() <= 2 * 1024 + 1,
            "{} names held after {i} UNSUBSCRIBEs",
            gw.interned_names()
        );
    }
}

/// `sleep.max_total_bytes` bounds what all sleepers hold together, and the running total the
/// bound is checked against stays equal to what the sessions really hold, through buffering,
/// dropping and delivery on wake-up.
#[test]
fn sleepers_together_hold_no_more_than_the_total_bound() {
    let config = Config::from_toml_str("[sleep]\nmax_total_bytes = 100\n", "test").unwrap();
    let mut gw = Gateway::new(config.engine_settings(HashSeed(9, 9)), &MQTT_V4);
    let conn = mqttsn_gateway::engine::ConnId::GATEWAY;
    gw.handle_upstream(Instant::ZERO, conn, UpstreamEvent::Connected);
    gw.handle_upstream(
        Instant::ZERO,
        conn,
        UpstreamEvent::Data(&[0x20, 0x02, 0x00, 0x00]),
    );
    drain(&mut gw);
    let mut sleepers = Vec::new();
    for (n, pid) in [(3u8, 1u8), (4, 2)] {
        let dev = connected(&mut gw, n);
        let suback = subscribe_t(&mut gw, dev, pid);
        assert!(
            matches!(Message::decode(&suback[0]), Ok(Message::SubAck(_))),
            "{suback:?}"
        );
        let _ = send(
            &mut gw,
            dev,
            Message::Disconnect {
                duration: Some(600),
            },
        );
        sleepers.push(dev);
    }
    // Ten QoS 0 messages of 30 bytes for both sleepers: 20 copies of 31 bytes (payload and
    // topic) would be 620 bytes.
    let mut publish = vec![0x30, 0x21, 0x00, 0x01, b't'];
    publish.extend([7u8; 30]);
    for _ in 0..10 {
        gw.handle_upstream(Instant::from_millis(2), conn, UpstreamEvent::Data(&publish));
        drain(&mut gw);
        assert!(gw.held_bytes() <= 100, "{} bytes held", gw.held_bytes());
        assert_eq!(gw.held_bytes(), gw.held_bytes_recounted());
    }
    assert_eq!(gw.held_bytes(), 93, "three copies fit in 100 bytes");
    // The total is nearly used up by sleepers, but a device taking messages now (one that has
    // shown it receives, with a PINGREQ: an unproven address shares the total with sleepers)
    // still gets them.
    let awake = connected(&mut gw, 5);
    subscribe_t(&mut gw, awake, 3);
    let _ = send(&mut gw, awake, Message::PingReq { client_id: None });
    gw.handle_upstream(Instant::from_millis(3), conn, UpstreamEvent::Data(&publish));
    let out: Vec<_> = std::iter::from_fn(|| gw.poll_transmit()).collect();
    drain(&mut gw);
    assert!(
        out.iter()
            .any(|t| t.to == mqttsn_gateway::engine::Destination::Peer(awake)
                && matches!(Message::decode(&t.bytes), Ok(Message::Publish(_)))),
        "the awake device got nothing: {out:?}"
    );
    assert_eq!(gw.held_bytes(), gw.held_bytes_recounted());
    // The first sleeper wakes and gets what it holds; its bytes are released.
    let replies = send(
        &mut gw,
        sleepers[0],
        Message::PingReq {
            client_id: Some("dev3"),
        },
    );
    assert!(replies.len() >= 2, "{replies:?}");
    assert_eq!(
        replies.last().map(Vec::as_slice),
        Some(&[0x02, 0x17][..]),
        "PINGRESP last"
    );
    assert_eq!(gw.held_bytes(), gw.held_bytes_recounted());
    assert!(gw.held_bytes() < 93);
}

/// While the broker connection is congested, light users still get through, but only until
/// what they add reaches `upstream.max_queued_bytes` again: the queue cannot grow without
/// bound because every device happens to be light.
#[test]
fn a_congested_connection_takes_no_more_than_its_overdraft() {
    use mqttsn_gateway::codec::{Publish, QoS, TopicRef};
    use mqttsn_gateway::engine::{ConnId, UpstreamCommand};
    let mut gw = gateway("mode = \"aggregating\"\n[upstream]\nmax_queued_bytes = 65536");
    let devices: Vec<PeerAddr> = (1..=200).map(|n| connected(&mut gw, n)).collect();
    let payload = [0x42u8; 1000];
    let publish = Message::Publish(Publish {
        dup: false,
        qos: QoS::Zero,
        retain: false,
        topic: TopicRef::Short(*b"ab"),
        msg_id: 0,
        data: &payload,
    });
    let forward_all = |gw: &mut Gateway| -> usize {
        for &dev in &devices {
            gw.handle_frame(Instant::from_millis(2), dev, &publish.to_vec().unwrap());
        }
        let mut bytes = 0;
        while let Some(command) = gw.poll_upstream() {
            if let UpstreamCommand::Send(_, b) = command {
                bytes += b.len();
            }
        }
        drain(gw);
        bytes
    };
    gw.handle_upstream(
        Instant::from_millis(2),
        ConnId::GATEWAY,
        UpstreamEvent::Congested,
    );
    let congested = forward_all(&mut gw);
    assert!(
        (60_000..=65_536).contains(&congested),
        "{congested} bytes let through while congested"
    );
    let dropped = gw.counters().congestion_dropped;
    assert_eq!(
        dropped,
        200 - (congested / 1007) as u64,
        "every drop counted"
    );
    gw.handle_upstream(
        Instant::from_millis(2),
        ConnId::GATEWAY,
        UpstreamEvent::Drained,
    );
    assert_eq!(forward_all(&mut gw), 200 * 1007, "all through once drained");
}

/// While congested, one light device cannot take the whole overdraft from the others: each
/// gets at most an eighth of it per congestion episode, and one that uses up its share counts
/// as pushing from then on.
#[test]
fn a_light_device_gets_only_its_share_of_the_overdraft() {
    use mqttsn_gateway::codec::{Publish, QoS, TopicRef};
    use mqttsn_gateway::engine::{ConnId, UpstreamCommand};
    let mut gw = gateway("mode = \"aggregating\"\n[upstream]\nmax_queued_bytes = 65536");
    let (a, b) = (connected(&mut gw, 1), connected(&mut gw, 2));
    let payload = [0x42u8; 1000];
    let frame = |qos, msg_id| {
        Message::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicRef::Short(*b"ab"),
            msg_id,
            data: &payload,
        })
        .to_vec()
        .unwrap()
    };
    let forwarded = |gw: &mut Gateway| -> usize {
        let mut n = 0;
        while let Some(command) = gw.poll_upstream() {
            if let UpstreamCommand::Send(_, bytes) = command {
                n += bytes.len() / 1007;
            }
        }
        n
    };
    let t = Instant::from_millis(2);
    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Congested);
    drain(&mut gw);
    for _ in 0..20 {
        gw.handle_frame(t, a, &frame(QoS::Zero, 0));
    }
    assert_eq!(
        forwarded(&mut gw),
        8,
        "an eighth of 64 KiB is 8 such messages"
    );
    drain(&mut gw);
    // The other light device still gets its QoS 1 message through, with no refusal.
    gw.handle_frame(t, b, &frame(QoS::One, 7));
    assert_eq!(forwarded(&mut gw), 1);
    assert!(drain(&mut gw).is_empty(), "no PUBACK refusal for b");
    // a goes on pushing and stays refused, although the overdraft has room.
    gw.handle_frame(Instant::from_millis(600), a, &frame(QoS::Zero, 0));
    assert_eq!(forwarded(&mut gw), 0);
}
