//! End to end over real sockets: the gateway (in-process, UDP on 127.0.0.1:0) between MQTT-SN
//! devices and a real Mosquitto started for each test, in both gateway modes.

use crate::support::device::{connect, Device};
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Client;
use mqttsn_gateway::codec::*;
use mqttsn_gateway::config::{Config, Mode, PredefinedTopic};
use mqttsn_gateway::driver::{self, Running};

use rumqttc::QoS as MqttQoS;
use std::net::SocketAddr;

const MODES: [Mode; 2] = [Mode::Aggregating, Mode::Transparent];

fn config(broker: &Mosquitto, mode: Mode) -> Config {
    let mut config = Config::from_toml_str(
        &format!(
            "[gateway]\nmode = \"{}\"\n[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"500ms\"\n",
            mode.as_str(),
            broker.url()
        ),
        "test",
    )
    .unwrap();
    config.predefined.push(PredefinedTopic {
        id: 7,
        topic: "pre/seven".into(),
        client_id: None,
    });
    config
}

async fn gateway(config: Config) -> (Running, SocketAddr) {
    let running = driver::start(config).await.expect("gateway starts");
    let addr = running.udp_addrs()[0];
    (running, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_qos_reaches_the_broker_exactly_once() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let mut sub = Client::connect(broker.port(), "watcher").await;
        sub.subscribe("#", MqttQoS::AtLeastOnce).await;
        let (gw, addr) = gateway(config(&broker, mode)).await;
        let dev = Device::new(addr).await;
        connect(&dev, "dev-qos", 60, false).await;
        let topic = dev.register("e2e/qos", 1).await;
        dev.publish(topic, QoS::Zero, 0, b"q0").await;
        dev.publish(topic, QoS::One, 2, b"q1").await;
        let ack = dev.recv().await;
        assert_eq!(
            Message::decode(&ack),
            Ok(Message::PubAck(PubAck {
                topic_id: topic,
                msg_id: 2,
                return_code: ReturnCode::Accepted
            }))
        );
        dev.publish(topic, QoS::Two, 3, b"q2").await;
        assert_eq!(
            Message::decode(&dev.recv().await),
            Ok(Message::PubRec { msg_id: 3 })
        );
        dev.send(Message::PubRel { msg_id: 3 }).await;
        assert_eq!(
            Message::decode(&dev.recv().await),
            Ok(Message::PubComp { msg_id: 3 })
        );
        // QoS -1 from an address that never connected, on a predefined id.
        let stranger = Device::new(addr).await;
        stranger
            .send(Message::Publish(Publish {
                dup: false,
                qos: QoS::MinusOne,
                retain: false,
                topic: TopicRef::Predefined(7),
                msg_id: 0,
                data: b"q-1",
            }))
            .await;
        let mut seen = Vec::new();
        while seen.len() < 4 {
            let m = sub.next().await;
            seen.push((m.topic, m.payload));
        }
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("e2e/qos".to_string(), b"q0".to_vec()),
                ("e2e/qos".to_string(), b"q1".to_vec()),
                ("e2e/qos".to_string(), b"q2".to_vec()),
                ("pre/seven".to_string(), b"q-1".to_vec()),
            ],
            "{mode:?}"
        );
        // Nothing twice: a marker published after everything arrives next, alone.
        dev.publish(topic, QoS::One, 4, b"marker").await;
        let _ = dev.recv().await;
        let next = sub.next().await;
        assert_eq!(
            next.payload, b"marker",
            "{mode:?}: duplicate before the marker"
        );
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_messages_reach_subscribed_devices() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let mut publisher = Client::connect(broker.port(), "publisher").await;
        let (gw, addr) = gateway(config(&broker, mode)).await;
        let dev = Device::new(addr).await;
        connect(&dev, "dev-sub", 60, false).await;
        // A plain name: the SUBACK carries the topic id.
        let plain = dev
            .subscribe(TopicFilter::Name("to/dev"), QoS::One, 1)
            .await;
        assert_eq!(plain.return_code, ReturnCode::Accepted);
        assert_ne!(plain.topic_id, 0);
        // A wildcard: topic id 0, REGISTER before the first PUBLISH on each topic.
        let wild = dev
            .subscribe(TopicFilter::Name("wild/+"), QoS::Zero, 2)
            .await;
        assert_eq!((wild.return_code, wild.topic_id), (ReturnCode::Accepted, 0));
        let short = dev
            .subscribe(TopicFilter::Short(*b"sh"), QoS::Zero, 3)
            .await;
        assert_eq!(short.return_code, ReturnCode::Accepted);
        let pre = dev
            .subscribe(TopicFilter::Predefined(7), QoS::Zero, 4)
            .await;
        assert_eq!((pre.return_code, pre.topic_id), (ReturnCode::Accepted, 7));

        publisher
            .publish("to/dev", MqttQoS::AtLeastOnce, false, b"plain")
            .await;
        let frame = dev.recv_until(|m| matches!(m, Message::Publish(_))).await;
        let Ok(Message::Publish(p)) = Message::decode(&frame) else {
            unreachable!()
        };
        assert_eq!(
            (p.topic, p.data, p.qos),
            (TopicRef::Id(plain.topic_id), &b"plain"[..], QoS::One)
        );
        dev.send(Message::PubAck(PubAck {
            topic_id: plain.topic_id,
            msg_id: p.msg_id,
            return_code: ReturnCode::Accepted,
        }))
        .await;

        publisher
            .publish("wild/a", MqttQoS::AtMostOnce, false, b"w")
            .await;
        let frame = dev.recv_until(|m| matches!(m, Message::Register(_))).await;
        let Ok(Message::Register(r)) = Message::decode(&frame) else {
            unreachable!()
        };
        assert_eq!(r.topic_name, "wild/a");
        dev.send(Message::RegAck(RegAck {
            topic_id: r.topic_id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }))
        .await;
        let frame = dev.recv_until(|m| matches!(m, Message::Publish(_))).await;
        let Ok(Message::Publish(p)) = Message::decode(&frame) else {
            unreachable!()
        };
        assert_eq!((p.topic, p.data), (TopicRef::Id(r.topic_id), &b"w"[..]));

        publisher
            .publish("sh", MqttQoS::AtMostOnce, false, b"s")
            .await;
        let frame = dev.recv_until(|m| matches!(m, Message::Publish(_))).await;
        let Ok(Message::Publish(p)) = Message::decode(&frame) else {
            unreachable!()
        };
        assert_eq!((p.topic, p.data), (TopicRef::Short(*b"sh"), &b"s"[..]));

        publisher
            .publish("pre/seven", MqttQoS::AtMostOnce, false, b"p")
            .await;
        let frame = dev.recv_until(|m| matches!(m, Message::Publish(_))).await;
        let Ok(Message::Publish(p)) = Message::decode(&frame) else {
            unreachable!()
        };
        assert_eq!((p.topic, p.data), (TopicRef::Predefined(7), &b"p"[..]));
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_message_is_delivered_on_subscribe() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let mut publisher = Client::connect(broker.port(), "retainer").await;
        publisher
            .publish("cfg/led", MqttQoS::AtLeastOnce, true, b"blue")
            .await;
        let (gw, addr) = gateway(config(&broker, mode)).await;
        let dev = Device::new(addr).await;
        connect(&dev, "dev-ret", 60, false).await;
        let ack = dev
            .subscribe(TopicFilter::Name("cfg/led"), QoS::Zero, 1)
            .await;
        let frame = dev.recv_until(|m| matches!(m, Message::Publish(_))).await;
        let Ok(Message::Publish(p)) = Message::decode(&frame) else {
            unreachable!()
        };
        assert_eq!(
            (p.topic, p.data, p.retain),
            (TopicRef::Id(ack.topic_id), &b"blue"[..], true),
            "{mode:?}"
        );
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_a_device_goes_silent() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let mut sub = Client::connect(broker.port(), "will-watcher").await;
        sub.subscribe("wills/#", MqttQoS::AtLeastOnce).await;
        let mut config = config(&broker, mode);
        config.timers.keep_alive_tolerance = 1.0;
        let (gw, addr) = gateway(config).await;
        let dev = Device::new(addr).await;
        // Keep-alive 1 s: silent for more than that, the device is lost.
        connect(&dev, "dev-will", 1, true).await;
        dev.send(Message::WillTopic(Some(WillTopic {
            qos: QoS::One,
            retain: false,
            topic: "wills/dev-will",
        })))
        .await;
        assert_eq!(Message::decode(&dev.recv().await), Ok(Message::WillMsgReq));
        dev.send(Message::WillMsg { msg: b"gone" }).await;
        assert_eq!(
            Message::decode(&dev.recv().await),
            Ok(Message::ConnAck {
                return_code: ReturnCode::Accepted
            })
        );
        let will = sub.next().await;
        assert_eq!(
            (will.topic.as_str(), &will.payload[..]),
            ("wills/dev-will", &b"gone"[..]),
            "{mode:?}"
        );
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleeping_device_gets_its_messages_on_wake_up() {
    let broker = Mosquitto::start();
    let mut publisher = Client::connect(broker.port(), "sleep-pub").await;
    let (gw, addr) = gateway(config(&broker, Mode::Aggregating)).await;
    let dev = Device::new(addr).await;
    connect(&dev, "sleeper", 60, false).await;
    let ack = dev
        .subscribe(TopicFilter::Name("sleep/in"), QoS::One, 1)
        .await;
    dev.send(Message::Disconnect {
        duration: Some(600),
    })
    .await;
    assert_eq!(
        Message::decode(&dev.recv().await),
        Ok(Message::Disconnect { duration: None })
    );
    for (qos, payload) in [
        (MqttQoS::AtLeastOnce, "a"),
        (MqttQoS::AtMostOnce, "b"),
        (MqttQoS::AtLeastOnce, "c"),
    ] {
        publisher
            .publish("sleep/in", qos, false, payload.as_bytes())
            .await;
    }
    // Wake up: the three buffered messages, in order, each QoS 1 one acknowledged, then PINGRESP.
    // (The broker's QoS 0 copy may overtake nothing: one connection, in order.)
    let mut got = Vec::new();
    let mut pinged = false;
    // Messages may still be on their way to the gateway: wake up until all three were seen.
    for _ in 0..5000 {
        dev.send(Message::PingReq {
            client_id: Some("sleeper"),
        })
        .await;
        loop {
            let frame = dev.recv().await;
            match Message::decode(&frame).unwrap() {
                Message::Publish(p) => {
                    assert_eq!(p.topic, TopicRef::Id(ack.topic_id));
                    got.push(String::from_utf8(p.data.to_vec()).unwrap());
                    if p.qos == QoS::One {
                        dev.send(Message::PubAck(PubAck {
                            topic_id: ack.topic_id,
                            msg_id: p.msg_id,
                            return_code: ReturnCode::Accepted,
                        }))
                        .await;
                    }
                }
                Message::PingResp => {
                    pinged = true;
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if got.len() == 3 {
            break;
        }
    }
    assert!(pinged);
    assert_eq!(got, ["a", "b", "c"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_flood_does_not_disturb_a_publishing_device() {
    let broker = Mosquitto::start();
    let mut sub = Client::connect(broker.port(), "flood-watch").await;
    sub.subscribe("flood/ok", MqttQoS::AtLeastOnce).await;
    let (gw, addr) = gateway(config(&broker, Mode::Aggregating)).await;
    let dev = Device::new(addr).await;
    connect(&dev, "steady", 60, false).await;
    let topic = dev.register("flood/ok", 1).await;
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let flood = tokio::spawn(async move {
        let mut x: u32 = 0x1234_5678;
        for i in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let len = 1 + (x % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|j| (x >> (j % 24)) as u8 ^ i as u8).collect();
            let _ = flooder.send_to(&bytes, addr).await;
        }
    });
    for i in 0..50u16 {
        dev.publish(topic, QoS::One, i + 2, format!("m{i}").as_bytes())
            .await;
        let ack = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
        assert_eq!(
            Message::decode(&ack),
            Ok(Message::PubAck(PubAck {
                topic_id: topic,
                msg_id: i + 2,
                return_code: ReturnCode::Accepted
            }))
        );
    }
    flood.await.unwrap();
    let mut payloads = Vec::new();
    while payloads.len() < 50 {
        payloads.push(String::from_utf8(sub.next().await.payload).unwrap());
    }
    assert_eq!(
        payloads,
        (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_devices_publish_twenty_qos1_messages_each() {
    let broker = Mosquitto::start();
    let mut sub = Client::connect(broker.port(), "counter").await;
    sub.subscribe("many/#", MqttQoS::AtLeastOnce).await;
    let (gw, addr) = gateway(config(&broker, Mode::Aggregating)).await;
    let mut tasks = Vec::new();
    for d in 0..500u32 {
        tasks.push(tokio::spawn(async move {
            let dev = Device::new(addr).await;
            connect(&dev, &format!("many-{d}"), 300, false).await;
            let topic = dev.register(&format!("many/{d}"), 1).await;
            for i in 0..20u16 {
                dev.publish(topic, QoS::One, i + 2, &i.to_be_bytes()).await;
                let ack = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
                assert!(matches!(
                    Message::decode(&ack),
                    Ok(Message::PubAck(PubAck {
                        return_code: ReturnCode::Accepted,
                        ..
                    }))
                ));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut count = 0;
    while count < 500 * 20 {
        sub.next().await;
        count += 1;
    }
    assert_eq!(count, 10_000);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_no_acknowledged_message() {
    let mut broker = Mosquitto::start_persistent();
    let mut sub = Client::connect_persistent(broker.port(), "survivor").await;
    sub.subscribe("restart/#", MqttQoS::AtLeastOnce).await;
    let (gw, addr) = gateway(config(&broker, Mode::Aggregating)).await;
    let dev = Device::new(addr).await;
    connect(&dev, "restart-dev", 300, false).await;
    let topic = dev.register("restart/data", 1).await;
    let mut acked = Vec::new();
    for i in 0..40u16 {
        if i == 15 {
            broker.stop_gracefully();
        }
        if i == 20 {
            broker.restart();
        }
        dev.publish(topic, QoS::One, i + 2, &i.to_be_bytes()).await;
        if (15..20).contains(&i) {
            continue; // broker down: the acknowledgement comes after the restart
        }
        loop {
            let frame = dev.recv().await;
            if let Ok(Message::PubAck(a)) = Message::decode(&frame) {
                if a.return_code == ReturnCode::Accepted {
                    acked.push(a.msg_id);
                }
                if a.msg_id == i + 2 {
                    break;
                }
            }
        }
    }
    acked.sort();
    acked.dedup();
    assert_eq!(
        acked.len(),
        40,
        "every message acknowledged once the broker is back: {acked:?}"
    );
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 40 {
        let Some(m) = sub.next_within(crate::support::PATIENCE).await else {
            panic!("the subscriber saw only {seen:?}");
        };
        seen.insert(u16::from_be_bytes([m.payload[0], m.payload[1]]));
    }
    assert_eq!(seen.len(), 40);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_smoke_test() {
    let config = Config::from_toml_str(
        "[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"embedded\"\nembedded_bind = \"127.0.0.1:0\"\n",
        "test",
    )
    .unwrap();
    let (gw, addr) = gateway(config).await;
    let mut sub = Client::connect(gw.broker_addr().port(), "embedded-watch").await;
    sub.subscribe("emb/#", MqttQoS::AtLeastOnce).await;
    let dev = Device::new(addr).await;
    connect(&dev, "emb-dev", 60, false).await;
    let topic = dev.register("emb/hello", 1).await;
    dev.publish(topic, QoS::One, 2, b"world").await;
    let _ = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
    let m = sub.next().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("emb/hello", &b"world"[..])
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_one_forwarder_have_their_own_sessions() {
    let broker = Mosquitto::start();
    let mut sub = Client::connect(broker.port(), "fwd-watch").await;
    sub.subscribe("fwd/#", MqttQoS::AtLeastOnce).await;
    let (gw, addr) = gateway(config(&broker, Mode::Aggregating)).await;
    // One UDP socket: the forwarder. Each node's frames are wrapped with its node id (§5.5).
    let forwarder = Device::new(addr).await;
    let wrap = |node: u8, msg: Message<'_>| {
        Frame {
            forwarder: Some(Forwarder {
                radius: 0,
                node_id: &[0x00, node],
            }),
            message: msg,
        }
        .to_vec()
        .unwrap()
    };
    let unwrap = |bytes: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let frame = Frame::decode(bytes).unwrap();
        let node = frame
            .forwarder
            .expect("reply encapsulated")
            .node_id
            .to_vec();
        (node, frame.message.to_vec().unwrap())
    };
    for node in [1u8, 2] {
        let id = format!("node-{node}");
        let connect = wrap(
            node,
            Message::Connect(Connect {
                will: false,
                clean_session: true,
                duration: 60,
                client_id: &id,
            }),
        );
        // Retried while the gateway's broker connection comes up (CONNACK congestion).
        loop {
            forwarder.socket.send_to(&connect, addr).await.unwrap();
            let (to, reply) = unwrap(&forwarder.recv().await);
            assert_eq!(to, [0, node]);
            match Message::decode(&reply).unwrap() {
                Message::ConnAck {
                    return_code: ReturnCode::Accepted,
                } => break,
                Message::ConnAck {
                    return_code: ReturnCode::Congestion,
                } => tokio::task::yield_now().await,
                other => panic!("{other:?}"),
            }
        }
    }
    // Both register a topic: each gets id 1 in its own table.
    for node in [1u8, 2] {
        let name = format!("fwd/{node}");
        forwarder
            .socket
            .send_to(
                &wrap(
                    node,
                    Message::Register(Register {
                        topic_id: 0,
                        msg_id: 1,
                        topic_name: &name,
                    }),
                ),
                addr,
            )
            .await
            .unwrap();
        let (to, reply) = unwrap(&forwarder.recv().await);
        assert_eq!(to, [0, node]);
        assert!(matches!(
            Message::decode(&reply),
            Ok(Message::RegAck(RegAck { topic_id: 1, .. }))
        ));
    }
    for node in [1u8, 2] {
        let publish = Message::Publish(Publish {
            dup: false,
            qos: QoS::One,
            retain: false,
            topic: TopicRef::Id(1),
            msg_id: 2,
            data: &[node],
        });
        forwarder
            .socket
            .send_to(&wrap(node, publish), addr)
            .await
            .unwrap();
        let (to, reply) = unwrap(&forwarder.recv().await);
        assert_eq!(to, [0, node]);
        assert!(matches!(Message::decode(&reply), Ok(Message::PubAck(_))));
    }
    let mut seen = [sub.next().await, sub.next().await];
    seen.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(
        (seen[0].topic.as_str(), &seen[0].payload[..]),
        ("fwd/1", &[1u8][..])
    );
    assert_eq!(
        (seen[1].topic.as_str(), &seen[1].payload[..]),
        ("fwd/2", &[2u8][..])
    );
    gw.stop().await;
}
