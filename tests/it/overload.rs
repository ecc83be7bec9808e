//! The gateway under a misbehaving broker: protocol errors end the connection, and the
//! reconnects go through the backoff instead of a tight loop.

use mqttsn_gateway::config::Config;
use mqttsn_gateway::driver;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::time::timeout;

use crate::support::PATIENCE;

/// A "broker" that answers every connection with bytes no MQTT broker sends (a reserved
/// packet type): each is a protocol error, so the gateway drops the connection. It must come
/// back through the backoff: 100, 200, 400, 800 ms (each within ±20%) before the 2nd to 5th
/// connection, so five connections take at least 1.2 s. Without the backoff they took a few
/// milliseconds (thousands of connections a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_sending_garbage_is_reconnected_to_through_the_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = listener.local_addr().unwrap();
    let config = Config::from_toml_str(
        &format!(
            "[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"mqtt://{broker}\"\n\
             reconnect_min = \"100ms\"\nreconnect_max = \"10s\"\n"
        ),
        "test",
    )
    .unwrap();
    let gw = driver::start(config).await.unwrap();
    let mut first = None;
    let mut conns = Vec::new();
    for _ in 0..5 {
        let (mut conn, _) = timeout(PATIENCE, listener.accept())
            .await
            .expect("the gateway reconnects")
            .unwrap();
        first.get_or_insert_with(Instant::now);
        // Reserved packet type 0: "reserved packet type" from the gateway's reader.
        let _ = conn.write_all(&[0x00, 0x00]).await;
        conns.push(conn);
    }
    let elapsed = first.map(|t| t.elapsed()).unwrap_or_default();
    assert!(
        elapsed >= Duration::from_millis(1200),
        "five connections in {elapsed:?}: the reconnects did not back off"
    );
    gw.stop().await;
}

/// A broker that stops reading (Mosquitto paused with SIGSTOP) while one device floods: the
/// gateway must not drop its broker connection (it used to, once its send queue was full,
/// cutting every device off in aggregating mode and firing the flooder's will in transparent
/// mode). It slows the flooder instead, while a light QoS 1 device loses nothing.
async fn stalled_broker_flood(mode: &str) {
    use crate::support::device::{connect, Device};
    use crate::support::mosquitto::Mosquitto;
    use crate::support::mqtt::Client;
    use mqttsn_gateway::codec::{Message, PubAck, QoS, ReturnCode};

    let broker = Mosquitto::start();
    let mut watcher = Client::connect(broker.port(), "watcher").await;
    watcher.subscribe("t/#", rumqttc::QoS::AtLeastOnce).await;
    watcher.subscribe("will/#", rumqttc::QoS::AtLeastOnce).await;
    // A small queue bound so that the flood reaches it quickly; a budget the flooder exceeds
    // (it sends as fast as it can) and the steady device never comes near. The bucket spans a
    // second, so that the flooder (refused while it pushes) would have to pause half a second
    // to count as light again: a test machine's stalls do not make it one.
    let gw = driver::start(broker.gateway_config(&format!(
        "max_queued_bytes = 65536\n[gateway]\nmode = \"{mode}\"\n\
         [limits]\npublish_rate = 1000\npublish_burst = 1000\n"
    )))
    .await
    .unwrap();
    let addr = gw.udp_addrs()[0];
    let steady = Device::new(addr).await;
    connect(&steady, "steady", 60, false).await;
    let steady_topic = steady.register("t/steady", 1).await;
    let flooder = Device::new(addr).await;
    connect(&flooder, "flooder", 60, true).await;
    flooder
        .send(Message::WillTopic(Some(mqttsn_gateway::codec::WillTopic {
            qos: QoS::Zero,
            retain: false,
            topic: "will/flooder",
        })))
        .await;
    flooder.recv().await; // WILLMSGREQ
    flooder.send(Message::WillMsg { msg: b"gone" }).await;
    flooder.recv().await; // CONNACK
    let flood_topic = flooder.register("t/flood", 1).await;
    let gateway_id = if mode == "aggregating" {
        "gateway-1"
    } else {
        "flooder"
    };
    broker.await_connects(gateway_id, 1).await;

    let steady_data = |i: u16| format!("steady {i} {}", "s".repeat(200));
    broker.pause();
    // Under the default udp.max_frame (4096).
    let payload = vec![0x46u8; 4000];
    let started = Instant::now();
    let mut steady_sent = 0u16;
    // Two seconds of flood at its budget (16 MB: far more than the socket buffers and the
    // queue hold), with a QoS 1 message from the steady device every 200 ms.
    while started.elapsed() < Duration::from_secs(2) {
        for _ in 0..40 {
            flooder.publish(flood_topic, QoS::Zero, 0, &payload).await;
        }
        if started.elapsed() >= Duration::from_millis(200 * u64::from(steady_sent)) {
            steady_sent += 1;
            // Long enough that light users' overdraft, not luck, decides.
            let data = steady_data(steady_sent);
            steady
                .publish(steady_topic, QoS::One, steady_sent, data.as_bytes())
                .await;
        }
        tokio::task::yield_now().await;
    }
    broker.resume();

    // Every steady message is acknowledged as accepted, and reaches the subscriber.
    // Every steady message is acknowledged as accepted, and reaches the subscriber. A device
    // resends what is not acknowledged (with DUP): the kernel may drop a datagram while the
    // gateway's socket buffer is full of flood.
    let mut unacked: std::collections::BTreeSet<u16> = (1..=steady_sent).collect();
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + PATIENCE;
    while !unacked.is_empty() {
        assert!(Instant::now() < deadline, "never acknowledged: {unacked:?}");
        match timeout(Duration::from_secs(1), steady.socket.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                if let Ok(Message::PubAck(PubAck {
                    msg_id,
                    return_code,
                    ..
                })) = Message::decode(&buf[..n])
                {
                    if return_code != ReturnCode::Accepted {
                        panic!(
                            "steady message {msg_id}: {return_code:?}; {:?}",
                            gw.counters().await
                        );
                    }
                    unacked.remove(&msg_id);
                }
            }
            _ => {
                for &i in &unacked {
                    let data = steady_data(i);
                    steady
                        .send(Message::Publish(mqttsn_gateway::codec::Publish {
                            dup: true,
                            qos: QoS::One,
                            retain: false,
                            topic: mqttsn_gateway::codec::TopicRef::Id(steady_topic),
                            msg_id: i,
                            data: data.as_bytes(),
                        }))
                        .await;
                }
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < usize::from(steady_sent) {
        let m = watcher.next().await;
        assert_ne!(
            m.topic, "will/flooder",
            "the live flooder's will was published"
        );
        if m.topic == "t/steady" {
            seen.insert(String::from_utf8(m.payload).unwrap());
        }
    }
    let expected: std::collections::BTreeSet<String> = (1..=steady_sent).map(steady_data).collect();
    assert_eq!(seen, expected);
    // The flooder is still connected, and served once it has paused (its budget is spent: it
    // was told "congestion" and, as the spec asks, waits before it tries again).
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(attempts <= 20, "the flooder is never served again");
        flooder.publish(flood_topic, QoS::One, 77, b"after").await;
        let reply = flooder
            .recv_until(|m| matches!(m, Message::PubAck(PubAck { msg_id: 77, .. })))
            .await;
        match Message::decode(&reply) {
            Ok(Message::PubAck(PubAck {
                return_code: ReturnCode::Accepted,
                ..
            })) => break,
            Ok(Message::PubAck(PubAck {
                return_code: ReturnCode::Congestion,
                ..
            })) => tokio::time::sleep(Duration::from_millis(250)).await,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    // ... over the broker connection it had all along.
    assert_eq!(
        broker.connects(gateway_id),
        1,
        "the broker connection was dropped"
    );
    // The congestion was reached (not only the flooder's own budget), and counted.
    let counters = gw.counters().await.unwrap();
    assert!(counters.congestion_dropped > 0, "{counters:?}");
    assert!(counters.over_budget > 0, "{counters:?}");
    assert_eq!(counters.congestion_refused, 0, "{counters:?}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_slows_the_flooder_and_keeps_the_shared_connection() {
    stalled_broker_flood("aggregating").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_broker_fires_no_will_for_a_live_flooder() {
    stalled_broker_flood("transparent").await;
}

/// A blind CONNECT and SUBSCRIBE, as from a forged source address that never answers, must
/// not turn the gateway into a stream of broker messages aimed at that address: until the
/// address shows it receives, it gets no more bytes than it sent (its CONNACK and SUBACK are
/// all it gets). (Before the check, 1,000
/// broker messages sent it about 1 MB for 39 bytes.) A device that proved itself with PINGREQ,
/// subscribed to the same topic, gets every message meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unproven_address_gets_no_more_bytes_than_it_sent() {
    use crate::support::device::{connect, Device};
    use crate::support::mosquitto::Mosquitto;
    use crate::support::mqtt::Client;
    use mqttsn_gateway::codec::{Connect, Message, QoS, Subscribe, TopicFilter};

    let broker = Mosquitto::start();
    let gw = driver::start(broker.gateway_config("")).await.unwrap();
    let addr = gw.udp_addrs()[0];
    let legit = Device::new(addr).await;
    connect(&legit, "legit", 60, false).await;
    legit
        .subscribe(TopicFilter::Name("r/t"), QoS::Zero, 1)
        .await;
    legit.send(Message::PingReq { client_id: None }).await;
    legit.recv().await; // PINGRESP

    // Two forged addresses, with a long and a one-letter ClientId (the least sent).
    let mut blinds = Vec::new();
    for id in ["blind-device", "b"] {
        let blind = Device::new(addr).await;
        let connect_frame = Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: id,
        })
        .to_vec()
        .unwrap();
        let subscribe_frame = Message::Subscribe(Subscribe {
            dup: false,
            qos: QoS::Zero,
            msg_id: 1,
            topic: TopicFilter::Name("r/t"),
        })
        .to_vec()
        .unwrap();
        let bytes_in = connect_frame.len() + subscribe_frame.len();
        blind.socket.send_to(&connect_frame, addr).await.unwrap();
        blind.socket.send_to(&subscribe_frame, addr).await.unwrap();
        // What reaches the forged address is counted, never answered. The SUBACK tells that
        // the subscription is in place.
        let mut bytes_out = blind.recv().await.len(); // CONNACK
        bytes_out += blind
            .recv_until(|m| matches!(m, Message::SubAck(_)))
            .await
            .len();
        blinds.push((id, blind, bytes_in, bytes_out));
    }

    let mut publisher = Client::connect(broker.port(), "publisher").await;
    let mut buf = vec![0u8; 65_536];
    // In rounds of 100, so that the test's own socket buffers never overflow.
    for round in 0..10u32 {
        for i in 0..100u32 {
            let payload = format!("message {round}/{i:02} {}", "x".repeat(100));
            publisher
                .publish("r/t", rumqttc::QoS::AtMostOnce, false, payload.as_bytes())
                .await;
        }
        let mut delivered = 0;
        while delivered < 100 {
            let got = timeout(PATIENCE, legit.socket.recv_from(&mut buf)).await;
            let Ok(Ok((n, _))) = got else {
                panic!("round {round}: the proven device got {delivered} of 100 messages");
            };
            if let Ok(Message::Publish(_)) = Message::decode(&buf[..n]) {
                delivered += 1;
            }
        }
    }
    // The gateway sent the blind addresses whatever it was going to in the same steps that
    // served the legitimate device: it is all in the sockets' buffers by now.
    for (id, blind, bytes_in, mut bytes_out) in blinds {
        while let Ok((n, _)) = blind.socket.try_recv_from(&mut buf) {
            bytes_out += n;
        }
        assert!(
            bytes_out <= bytes_in,
            "{id}: {bytes_out} bytes out for {bytes_in} bytes in"
        );
    }
    let counters = gw.counters().await.unwrap();
    assert!(counters.return_path_waits > 0, "{counters:?}");
    gw.stop().await;
}

/// 50,000 CONNECTs with keep-alive 0 (asking for no supervision at all), as a flood from one
/// address: they fill the session table, and a device that comes meanwhile is refused with
/// "congestion". The flood cannot hold the table for good: once `sessions.max_idle` has passed
/// without a frame from them, a legitimate device connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_0_connect_flood_ends_within_the_idle_limit() {
    use crate::support::device::{connect, Device};
    use crate::support::mosquitto::Mosquitto;
    use mqttsn_gateway::codec::{Connect, Message, ReturnCode};

    let broker = Mosquitto::start();
    let gw = driver::start(
        broker.gateway_config("[gateway]\nmax_clients = 200\n[sessions]\nmax_idle = \"2s\"\n"),
    )
    .await
    .unwrap();
    let addr = gw.udp_addrs()[0];
    // The broker connection is up once a device gets in; it leaves again at once.
    let probe = Device::new(addr).await;
    connect(&probe, "probe", 60, false).await;
    probe.send(Message::Disconnect { duration: None }).await;
    probe.recv().await;

    // 500 addresses (a session per address: a new CONNECT from the same address supersedes
    // the one before), 100 CONNECTs each.
    let mut flooders = Vec::new();
    for _ in 0..500 {
        flooders.push(Device::new(addr).await);
    }
    for round in 0..100u32 {
        for (n, flooder) in flooders.iter().enumerate() {
            let id = format!("flood-{n}-{round}");
            flooder
                .send(Message::Connect(Connect {
                    will: false,
                    clean_session: true,
                    duration: 0,
                    client_id: &id,
                }))
                .await;
        }
        tokio::task::yield_now().await;
    }
    let flood_end = Instant::now();
    let legit = Device::new(addr).await;
    let hello = Message::Connect(Connect {
        will: false,
        clean_session: true,
        duration: 60,
        client_id: "legit",
    })
    .to_vec()
    .unwrap();
    // Retry as a device would (every 200 ms; a datagram may be lost while the flood is read)
    // until accepted: that must happen within the idle limit (2 s after the flood's last
    // frame, plus the time the flood takes to be read), and only after being refused.
    let mut refused = 0;
    let mut buf = vec![0u8; 1024];
    loop {
        assert!(
            flood_end.elapsed() < Duration::from_secs(8),
            "not accepted {:?} after the flood ({refused} refusals)",
            flood_end.elapsed()
        );
        legit.socket.send_to(&hello, addr).await.unwrap();
        let reply = timeout(Duration::from_millis(200), legit.socket.recv_from(&mut buf)).await;
        let Ok(Ok((n, _))) = reply else { continue };
        match Message::decode(&buf[..n]) {
            Ok(Message::ConnAck {
                return_code: ReturnCode::Accepted,
            }) => break,
            Ok(Message::ConnAck {
                return_code: ReturnCode::Congestion,
            }) => refused += 1,
            other => panic!("unexpected answer {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused > 0, "the flood never filled the table");
    let waited = flood_end.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "accepted after {waited:?}: no flood?"
    );
    let counters = gw.counters().await.unwrap();
    assert!(counters.connects_rejected > 0, "{counters:?}");
    gw.stop().await;
}

/// A retained message over 256 KiB on the broker, larger than any MQTT-SN frame: a device that
/// subscribes to `#` in aggregating mode used to make the gateway drop and reopen its shared
/// connection thousands of times (the broker resends the message on every resubscribe). Now
/// the message is skipped and counted, the connection stays, and the device gets the retained
/// message that fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retained_message_is_skipped_without_a_reconnect() {
    use crate::support::device::{connect, Device};
    use crate::support::mosquitto::Mosquitto;
    use crate::support::mqtt::Client;
    use mqttsn_gateway::codec::{Message, QoS, RegAck, ReturnCode, TopicFilter};

    let broker = Mosquitto::start();
    let mut publisher = Client::connect(broker.port(), "publisher").await;
    let huge = vec![0x48u8; 300 * 1024];
    publisher
        .publish("big/x", rumqttc::QoS::AtLeastOnce, true, &huge)
        .await;
    publisher
        .publish("small/y", rumqttc::QoS::AtLeastOnce, true, b"fits")
        .await;
    let gw = driver::start(broker.gateway_config("")).await.unwrap();
    let device = Device::new(gw.udp_addrs()[0]).await;
    connect(&device, "watcher-device-1", 60, false).await;
    device.subscribe(TopicFilter::Name("#"), QoS::Zero, 1).await;
    // The small retained message comes, announced by the gateway's REGISTER.
    let register = device
        .recv_until(|m| matches!(m, Message::Register(_)))
        .await;
    let Ok(Message::Register(r)) = Message::decode(&register) else {
        unreachable!()
    };
    assert_eq!(r.topic_name, "small/y");
    device
        .send(Message::RegAck(RegAck {
            topic_id: r.topic_id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }))
        .await;
    let publish = device
        .recv_until(|m| matches!(m, Message::Publish(_)))
        .await;
    let Ok(Message::Publish(p)) = Message::decode(&publish) else {
        unreachable!()
    };
    assert_eq!(p.data, b"fits");
    let counters = gw.counters().await.unwrap();
    assert_eq!(counters.too_large_dropped, 1, "{counters:?}");
    // The gateway is still on its first connection, and serves devices through it.
    let sender = Device::new(gw.udp_addrs()[0]).await;
    connect(&sender, "sender", 60, false).await;
    let id = sender.register("small/z", 1).await;
    sender.publish(id, QoS::One, 9, b"after").await;
    let ack = sender.recv_until(|m| matches!(m, Message::PubAck(_))).await;
    assert!(matches!(
        Message::decode(&ack),
        Ok(Message::PubAck(mqttsn_gateway::codec::PubAck {
            return_code: ReturnCode::Accepted,
            ..
        }))
    ));
    assert_eq!(
        broker.connects("gateway-1"),
        1,
        "the shared connection flapped"
    );
    gw.stop().await;
}

/// A datagram longer than its listener's `udp.max_frame` is dropped unread and counted; one at
/// the limit is served, and the device is not otherwise affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datagram_over_max_frame_is_dropped_and_counted() {
    use crate::support::device::{connect, Device};
    use crate::support::mosquitto::Mosquitto;
    use crate::support::mqtt::Client;
    use mqttsn_gateway::codec::{Message, PubAck, QoS, ReturnCode};

    let broker = Mosquitto::start();
    let mut watcher = Client::connect(broker.port(), "watcher").await;
    watcher.subscribe("big/#", rumqttc::QoS::AtLeastOnce).await;
    let config = Config::from_toml_str(
        &format!(
            "[[udp]]\nbind = \"127.0.0.1:0\"\nmax_frame = 600\n[upstream]\nurl = \"{}\"\n",
            broker.url()
        ),
        "test",
    )
    .unwrap();
    let gw = driver::start(config).await.unwrap();
    let device = Device::new(gw.udp_addrs()[0]).await;
    connect(&device, "big", 60, false).await;
    let topic = device.register("big/t", 1).await;
    // A PUBLISH this long has a 3-octet length, then type, flags, topic id and MsgId: 9 octets
    // before the data. 601 octets in all: over the limit, so no PUBACK, and nothing upstream.
    device.publish(topic, QoS::One, 2, &[b'x'; 592]).await;
    // 600 octets: at the limit, served. Datagrams are read in order, so the first answer
    // would be the PUBACK of MsgId 2 if that one had been taken.
    device.publish(topic, QoS::One, 3, &[b'y'; 591]).await;
    let reply = device.recv().await;
    assert!(
        matches!(
            Message::decode(&reply),
            Ok(Message::PubAck(PubAck {
                msg_id: 3,
                return_code: ReturnCode::Accepted,
                ..
            }))
        ),
        "{reply:?}"
    );
    let seen = watcher.next().await;
    assert_eq!((seen.topic.as_str(), seen.payload.len()), ("big/t", 591));
    let counters = gw.counters().await.unwrap();
    assert_eq!(counters.frames_too_long, 1, "{counters:?}");
    gw.stop().await;
}
