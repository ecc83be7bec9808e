//! Issue 12 against real components: a real Mosquitto (with its own password file and ACL for
//! transparent mode), devices on real UDP sockets, an attacker on another loopback address
//! (127.0.0.2 stands for another network), and the real binary reloading on SIGHUP.

use crate::support::device::{connect_session, Device};
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Client;
use crate::support::process::{temp_dir, GatewayProcess};
use mqttsn_gateway::codec::*;
use rumqttc::QoS as MqttQoS;

fn decode(bytes: &[u8]) -> Message<'_> {
    Message::decode(bytes).expect("the gateway sends valid frames")
}

async fn connack(device: &Device, client_id: &str, will: bool) -> Vec<u8> {
    device
        .send(Message::Connect(Connect {
            will,
            clean_session: true,
            duration: 60,
            client_id,
        }))
        .await;
    device.recv().await
}

fn refused() -> Vec<u8> {
    Message::ConnAck {
        return_code: ReturnCode::NotSupported,
    }
    .to_vec()
    .unwrap()
}

/// A second address presenting a protected ClientId is refused; the victim keeps its session,
/// its subscription and its buffered message.
#[tokio::test]
async fn a_hijack_is_refused_and_the_victim_keeps_its_session() {
    let broker = Mosquitto::start();
    let config = broker.gateway_config(
        "[gateway]\nmode = \"aggregating\"\n[auth]\nallow_anonymous = true\n\
         [[auth.client]]\nclient_id = \"victim\"\nnetworks = [\"127.0.0.1/32\"]\n",
    );
    let gw = mqttsn_gateway::driver::start(config).await.unwrap();
    let addr = gw.udp_addrs()[0];
    let mut app = Client::connect(broker.port(), "app").await;

    let victim = Device::new(addr).await;
    connect_session(&victim, "victim", false).await;
    let ack = victim
        .subscribe(TopicFilter::Name("cmd/#"), QoS::One, 1)
        .await;
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    victim
        .send(Message::Disconnect {
            duration: Some(300),
        })
        .await;
    victim.recv().await; // DISCONNECT: asleep
    app.publish("cmd/led", MqttQoS::AtLeastOnce, false, b"on")
        .await;

    let attacker = Device::new_at("127.0.0.2", addr).await;
    assert_eq!(connack(&attacker, "victim", false).await, refused());
    attacker
        .send(Message::PingReq {
            client_id: Some("victim"),
        })
        .await;
    // Another device is still let in (anonymous): its CONNACK also shows that the PINGREQ
    // before it has been handled, and answered with nothing.
    let accepted = Message::ConnAck {
        return_code: ReturnCode::Accepted,
    };
    assert_eq!(
        connack(&attacker, "stranger", false).await,
        accepted.to_vec().unwrap()
    );
    let counters = gw.counters().await.unwrap();
    assert_eq!(counters.not_authorized, 2, "{counters:?}");

    // The victim wakes: its buffered message is still there, for it. (Like a real sleeper it
    // wakes again if the message had not reached the gateway yet: PINGRESP alone.)
    let register = loop {
        victim
            .send(Message::PingReq {
                client_id: Some("victim"),
            })
            .await;
        let frame = victim.recv().await;
        if decode(&frame) != Message::PingResp {
            break frame;
        }
    };
    let Message::Register(r) = decode(&register) else {
        panic!("expected REGISTER, got {:?}", decode(&register));
    };
    assert_eq!(r.topic_name, "cmd/led");
    victim
        .send(Message::RegAck(RegAck {
            topic_id: r.topic_id,
            msg_id: r.msg_id,
            return_code: ReturnCode::Accepted,
        }))
        .await;
    let publish = victim.recv().await;
    let Message::Publish(p) = decode(&publish) else {
        panic!("expected PUBLISH, got {:?}", decode(&publish));
    };
    assert_eq!(p.data, b"on");
    gw.stop().await;
}

/// `#`, `$SYS/#`, another device's topic, a retained publish and a will outside the ACL, a
/// predefined and a short topic id, and QoS -1 from outside its networks are each refused;
/// the allowed paths reach a real broker, and nothing refused does.
#[tokio::test]
async fn the_acl_refuses_every_path_and_lets_the_allowed_ones_through() {
    let broker = Mosquitto::start();
    let config = broker.gateway_config(
        "[gateway]\nmode = \"aggregating\"\n\
         [[predefined]]\nid = 1\ntopic = \"secret/p\"\n\
         [[predefined]]\nid = 2\ntopic = \"devices/s1/p\"\n\
         [auth]\nqos_minus1_from = [\"127.0.0.1/32\"]\n\
         acl_rules = [\"topic write public/#\", \"pattern readwrite devices/%c/#\"]\n",
    );
    let gw = mqttsn_gateway::driver::start(config).await.unwrap();
    let addr = gw.udp_addrs()[0];
    let mut app = Client::connect(broker.port(), "app").await;
    app.subscribe("#", MqttQoS::AtLeastOnce).await;

    let device = Device::new(addr).await;
    // A will outside the ACL: CONNACK 0x03 (the helper CONNECTs until WILLTOPICREQ).
    crate::support::device::connect(&device, "s1", 60, true).await;
    device
        .send(Message::WillTopic(Some(WillTopic {
            qos: QoS::Zero,
            retain: false,
            topic: "secret/will",
        })))
        .await;
    assert_eq!(device.recv().await, refused());

    connect_session(&device, "s1", true).await;
    for (msg_id, filter) in [(1, "#"), (2, "$SYS/#"), (3, "devices/s2/#")] {
        let ack = device
            .subscribe(TopicFilter::Name(filter), QoS::Zero, msg_id)
            .await;
        assert_eq!(ack.return_code, ReturnCode::NotSupported, "{filter}");
    }
    let ack = device
        .subscribe(TopicFilter::Name("devices/s1/#"), QoS::Zero, 4)
        .await;
    assert_eq!(ack.return_code, ReturnCode::Accepted);

    device
        .send(Message::Register(Register {
            topic_id: 0,
            msg_id: 5,
            topic_name: "secret/x",
        }))
        .await;
    let Message::RegAck(regack) = decode(&device.recv().await) else {
        panic!("expected REGACK");
    };
    assert_eq!(regack.return_code, ReturnCode::NotSupported);

    let refusals = [
        (TopicRef::Short(*b"zz"), QoS::One, true),
        (TopicRef::Predefined(1), QoS::One, false),
        (TopicRef::Predefined(1), QoS::Zero, false),
    ];
    for (i, (topic, qos, retain)) in refusals.into_iter().enumerate() {
        let msg_id = 10 + i as u16;
        device
            .send(Message::Publish(Publish {
                dup: false,
                qos,
                retain,
                topic,
                msg_id: if qos == QoS::Zero { 0 } else { msg_id },
                data: b"leak",
            }))
            .await;
        let Message::PubAck(puback) = decode(&device.recv().await) else {
            panic!("expected PUBACK for {topic:?}");
        };
        assert_eq!(puback.return_code, ReturnCode::NotSupported, "{topic:?}");
    }
    // QoS -1 from another network: dropped; from an allowed one, to a topic anonymous
    // publishers may write: forwarded.
    let far = Device::new_at("127.0.0.2", addr).await;
    let near = Device::new(addr).await;
    for (sender, data) in [(&far, &b"far"[..]), (&near, &b"near"[..])] {
        sender
            .send(Message::Publish(Publish {
                dup: false,
                qos: QoS::MinusOne,
                retain: false,
                topic: TopicRef::Short(*b"pq"),
                msg_id: 0,
                data,
            }))
            .await;
    }
    // Allowed: a retained QoS 1 publish to its own predefined topic.
    device
        .send(Message::Publish(Publish {
            dup: false,
            qos: QoS::One,
            retain: true,
            topic: TopicRef::Predefined(2),
            msg_id: 20,
            data: b"mine",
        }))
        .await;
    // (Its own subscription may bring the message back first.)
    let frame = device.recv_until(|m| matches!(m, Message::PubAck(_))).await;
    let Message::PubAck(puback) = decode(&frame) else {
        unreachable!()
    };
    assert_eq!(puback.return_code, ReturnCode::Accepted);
    // The broker saw exactly the allowed messages: QoS -1 "pq" is not under public/, so the
    // near one is refused too; what arrives is the device's own.
    let seen = app.next().await;
    assert_eq!(
        (seen.topic.as_str(), seen.payload.as_slice()),
        ("devices/s1/p", &b"mine"[..])
    );
    let counters = gw.counters().await.unwrap();
    // will, 3 subscriptions, REGISTER, 3 publishes, 2 QoS -1.
    assert_eq!(counters.acl_refused, 10, "{counters:?}");
    gw.stop().await;
}

/// Transparent mode: each device logs in to Mosquitto with its own credentials; one with wrong
/// credentials gets its CONNACK refused, and the broker's own ACL applies per device.
#[tokio::test]
async fn transparent_mode_uses_each_devices_own_broker_login() {
    let dir = temp_dir("mosquitto-auth");
    let passwords = dir.join("passwords");
    for (i, (user, pass)) in [("dev-a", "pa"), ("dev-b", "pb"), ("app", "papp")]
        .into_iter()
        .enumerate()
    {
        let mut cmd = std::process::Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&passwords)
            .arg(user)
            .arg(pass)
            .status()
            .expect("mosquitto_passwd runs (apt-get install -y mosquitto)");
        assert!(status.success());
    }
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "user dev-a\ntopic write a/#\nuser dev-b\ntopic write b/#\nuser app\ntopic read #\n",
    )
    .unwrap();
    // Mosquitto drops to its own user when started as root: let it read the files.
    #[cfg(unix)]
    for file in [&dir, &passwords, &acl] {
        use std::os::unix::fs::PermissionsExt;
        let mode = if file == &dir { 0o755 } else { 0o644 };
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let broker = Mosquitto::start_secured(&format!(
        "allow_anonymous false\npassword_file {}\nacl_file {}",
        passwords.display(),
        acl.display()
    ));
    let clients = dir.join("clients.toml");
    std::fs::write(
        &clients,
        "[[client]]\nclient_id = \"dev-a\"\nnetworks = [\"127.0.0.1/32\"]\n\
         username = \"dev-a\"\npassword = \"pa\"\n\
         [[client]]\nclient_id = \"dev-b\"\nnetworks = [\"127.0.0.1/32\"]\n\
         username = \"dev-b\"\npassword = \"wrong\"\n",
    )
    .unwrap();
    // (The extra lines start inside the [upstream] table the helper writes.)
    let config = broker.gateway_config(&format!(
        "username = \"app\"\npassword = \"papp\"\n[gateway]\nmode = \"transparent\"\n\
         [auth]\nclients_file = \"{}\"\n",
        clients.display()
    ));
    let gw = mqttsn_gateway::driver::start(config).await.unwrap();
    let addr = gw.udp_addrs()[0];
    let mut app = Client::connect_as(broker.port(), "watcher", "app", "papp").await;
    app.subscribe("#", MqttQoS::AtLeastOnce).await;

    let b = Device::new(addr).await;
    assert_eq!(
        connack(&b, "dev-b", false).await,
        refused(),
        "wrong password"
    );
    let a = Device::new(addr).await;
    connect_session(&a, "dev-a", true).await;
    let id = a.register("a/temp", 1).await;
    a.publish(id, QoS::One, 2, b"21.5").await;
    let Message::PubAck(puback) = decode(&a.recv().await) else {
        panic!("expected PUBACK");
    };
    assert_eq!(puback.return_code, ReturnCode::Accepted);
    let seen = app.next().await;
    assert_eq!(
        (seen.topic.as_str(), seen.payload.as_slice()),
        ("a/temp", &b"21.5"[..])
    );
    assert_eq!(broker.connects("dev-a"), 1);
    gw.stop().await;
}

/// SIGHUP to the real binary: a device removed from the clients file is disconnected, and its
/// will is published.
#[tokio::test]
async fn a_reload_disconnects_a_device_no_longer_listed() {
    let broker = Mosquitto::start();
    let dir = temp_dir("reload");
    let clients = dir.join("clients.toml");
    let listed = "[[client]]\nclient_id = \"keep\"\nnetworks = [\"127.0.0.1/32\"]\n\
                  [[client]]\nclient_id = \"gone\"\nnetworks = [\"127.0.0.1/32\"]\n";
    std::fs::write(&clients, listed).unwrap();
    let mut gateway = GatewayProcess::start(
        &format!(
            "[gateway]\nmode = \"aggregating\"\n[upstream]\nurl = \"{}\"\n\
             [auth]\nclients_file = \"{}\"\n",
            broker.url(),
            clients.display()
        ),
        &dir.join("state"),
    );
    let mut app = Client::connect(broker.port(), "app").await;
    app.subscribe("wills/#", MqttQoS::AtLeastOnce).await;

    let keep = Device::new(gateway.udp).await;
    connect_session(&keep, "keep", true).await;
    let gone = Device::new(gateway.udp).await;
    gone.send(Message::Connect(Connect {
        will: true,
        clean_session: true,
        duration: 60,
        client_id: "gone",
    }))
    .await;
    assert_eq!(decode(&gone.recv().await), Message::WillTopicReq);
    gone.send(Message::WillTopic(Some(WillTopic {
        qos: QoS::Zero,
        retain: false,
        topic: "wills/gone",
    })))
    .await;
    assert_eq!(decode(&gone.recv().await), Message::WillMsgReq);
    gone.send(Message::WillMsg { msg: b"offline" }).await;
    assert_eq!(
        decode(&gone.recv().await),
        Message::ConnAck {
            return_code: ReturnCode::Accepted
        }
    );

    std::fs::write(
        &clients,
        "[[client]]\nclient_id = \"keep\"\nnetworks = [\"127.0.0.1/32\"]\n",
    )
    .unwrap();
    gateway.hangup();
    assert_eq!(
        decode(&gone.recv().await),
        Message::Disconnect { duration: None }
    );
    let will = app.next().await;
    assert_eq!(
        (will.topic.as_str(), will.payload.as_slice()),
        ("wills/gone", &b"offline"[..])
    );
    // The other device's session is untouched.
    keep.send(Message::PingReq { client_id: None }).await;
    assert_eq!(decode(&keep.recv().await), Message::PingResp);
    // And the removed one cannot come back.
    assert_eq!(connack(&gone, "gone", false).await, refused());
    gateway.stop();
}
