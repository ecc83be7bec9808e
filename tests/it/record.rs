//! Recording while running (`--record`): the transcript written during a real run parses, names
//! its peers, holds both sides of the conversation, and replays on virtual time against a fresh
//! engine with no differences; a full disk does not stop the gateway.

use crate::engine::harness;
use crate::support::device::Device;
use crate::support::mosquitto::Mosquitto;
use mqttsn_gateway::codec::*;
use mqttsn_gateway::driver::{self, Recording};
use mqttsn_gateway::record::snlog::{RecordLimits, Recorder};
use mqttsn_gateway::transcript::replay::replay;
use mqttsn_gateway::transcript::{PeerKind, Transcript};

/// Connects (retrying while the broker connection comes up), registers, publishes QoS 1.
async fn conversation(dev: &Device) {
    loop {
        dev.send(Message::Connect(Connect {
            will: false,
            clean_session: true,
            duration: 60,
            client_id: "rec-dev",
        }))
        .await;
        match Message::decode(&dev.recv().await) {
            Ok(Message::ConnAck {
                return_code: ReturnCode::Accepted,
            }) => break,
            Ok(Message::ConnAck { .. }) => tokio::task::yield_now().await,
            other => panic!("{other:?}"),
        }
    }
    let topic = dev.register("rec/topic", 1).await;
    dev.publish(topic, QoS::One, 2, b"recorded").await;
    let _ = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
}

/// A recording ends with the gateway's clean stop (DISCONNECT and close on its broker
/// connections), which answers no input: left out when replaying on virtual time.
fn without_clean_stop(mut transcript: Transcript) -> Transcript {
    let brokers: Vec<String> = transcript
        .peers
        .iter()
        .filter(|p| matches!(p.kind, PeerKind::Broker { .. }))
        .map(|p| p.name.clone())
        .collect();
    while transcript
        .entries
        .last()
        .is_some_and(|e| !e.direction.is_input() && brokers.iter().any(|b| b == e.peer()))
    {
        transcript.entries.pop();
    }
    transcript
}

/// The recordings in tests/fixtures/recorded/ (real clients against a real broker; see the
/// README there) replay over UDP against a fresh gateway and Mosquitto with no differences.
/// The broker is first given the retained message the recorded subscriber received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_fixtures_replay_against_a_fresh_gateway() {
    use mqttsn_gateway::replay::{replay as replay_udp, ReplayOptions};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snlog"))
        .collect();
    files.sort();
    assert!(files.len() >= 2);
    for path in files {
        let broker = Mosquitto::start();
        let mut publisher =
            crate::support::mqtt::Client::connect(broker.port(), "fixture-setup").await;
        publisher
            .publish("fixture/cmd/led", rumqttc::QoS::AtLeastOnce, true, b"on")
            .await;
        let gw = driver::start(broker.gateway_config("")).await.unwrap();
        // Wait until the gateway's broker connection is up (a throwaway device is accepted).
        let probe = Device::new(gw.udp_addrs()[0]).await;
        loop {
            probe
                .send(Message::Connect(Connect {
                    will: false,
                    clean_session: true,
                    duration: 60,
                    client_id: "probe",
                }))
                .await;
            if Message::decode(&probe.recv().await)
                == Ok(Message::ConnAck {
                    return_code: ReturnCode::Accepted,
                })
            {
                break;
            }
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let transcript = Transcript::parse(&text, &path.display().to_string()).unwrap();
        // At the recorded pace (doubled): the recorded devices ran one after another, some
        // with the same ClientId, so they must not overlap.
        let mut options = ReplayOptions::new(gw.udp_addrs()[0]);
        options.speed = 2.0;
        let report = replay_udp(&transcript, &options).await.unwrap();
        assert_eq!(
            report.differences(),
            0,
            "{}:\n{}",
            path.display(),
            report.render()
        );
        gw.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_parses_and_replays_on_virtual_time() {
    let broker = Mosquitto::start();
    let path = std::env::temp_dir().join(format!("mqttsn-rec-{}.snlog", std::process::id()));
    let gw = broker.recording_gateway(&path).await;
    let dev = Device::new(gw.udp_addrs()[0]).await;
    conversation(&dev).await;
    gw.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let transcript = Transcript::parse(&text, &path.display().to_string())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    // Both sides of both conversations are there.
    assert!(
        transcript
            .peers
            .iter()
            .any(|p| matches!(p.kind, PeerKind::Broker { client: None })),
        "{text}"
    );
    assert!(
        transcript
            .peers
            .iter()
            .any(|p| matches!(p.kind, PeerKind::Udp(_))),
        "{text}"
    );
    for needle in [
        "!open",
        "!up",
        "CONNECT client_id=\"rec-dev\"",
        "CONNACK",
        "REGISTER",
        "PUBACK",
        "!close",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
    // Replayed against a fresh engine on virtual time, the gateway says the same things. The
    // clean stop at the end (DISCONNECT, !close) answers no input, so it is left out.
    let transcript = without_clean_stop(transcript);
    if let Err(mismatch) = replay(&transcript, &mut harness(&transcript)) {
        panic!("the recording does not replay:\n{mismatch}");
    }
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_does_not_stop_the_gateway() {
    let broker = Mosquitto::start();
    // Writes to /dev/full fail with "no space left on device".
    let recorder =
        Recorder::create(std::path::Path::new("/dev/full"), RecordLimits::default()).unwrap();
    let gw = driver::start_with(
        broker.gateway_config(""),
        Recording {
            snlog: Some(recorder),
        },
    )
    .await
    .unwrap();
    let dev = Device::new(gw.udp_addrs()[0]).await;
    conversation(&dev).await;
    // And again, well after the recording failed.
    dev.publish(1, QoS::One, 3, b"still").await;
    let _ = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
    gw.stop().await;
}

#[test]
fn an_unwritable_record_file_is_an_error_not_a_panic() {
    let err = Recorder::create(
        std::path::Path::new("/nonexistent-dir/x.snlog"),
        RecordLimits::default(),
    );
    assert!(err.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcap_recording_opens_in_tshark() {
    let broker = Mosquitto::start();
    let path = std::env::temp_dir().join(format!("mqttsn-rec-{}.pcap", std::process::id()));
    let broker_addr: std::net::SocketAddr = ([127, 0, 0, 1], broker.port()).into();
    let recorder = Recorder::start(None, Some((&path, broker_addr))).unwrap();
    let gw = driver::start_with(
        broker.gateway_config(""),
        Recording {
            snlog: Some(recorder),
        },
    )
    .await
    .unwrap();
    let gw_port = gw.udp_addrs()[0].port();
    let dev = Device::new(gw.udp_addrs()[0]).await;
    conversation(&dev).await;
    gw.stop().await;
    let bytes = std::fs::read(&path).unwrap();
    // Classic pcap, raw IP: magic, version 2.4, link type 101; then records.
    assert_eq!(&bytes[..4], &0xa1b2_c3d4u32.to_le_bytes());
    assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 101);
    assert!(
        bytes.len() > 24 + 10 * 16,
        "too few records: {} bytes",
        bytes.len()
    );
    // When tshark is installed (CI installs it), every device frame decodes as MQTT-SN and
    // the broker side as MQTT (on the test broker's port), with nothing malformed.
    let tshark = std::process::Command::new("tshark")
        .args([
            "-r",
            path.to_str().unwrap(),
            "-d",
            &format!("udp.port=={gw_port},mqttsn"),
            "-d",
            &format!("tcp.port=={},mqtt", broker.port()),
            "-T",
            "fields",
            "-e",
            "frame.protocols",
        ])
        .output();
    match tshark {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let udp = text.lines().filter(|l| l.contains("udp")).count();
            let mqttsn = text.lines().filter(|l| l.contains("mqttsn")).count();
            assert!(
                udp >= 6 && mqttsn == udp,
                "every UDP frame is MQTT-SN:\n{text}"
            );
            assert!(
                text.lines()
                    .any(|l| l.contains("mqtt") && l.contains("tcp")),
                "{text}"
            );
            assert!(!text.contains("malformed"), "{text}");
        }
        _ => eprintln!("tshark not installed: structural checks only"),
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_recording_rotates_by_size_and_keeps_n_files() {
    use mqttsn_gateway::engine::PeerAddr;
    use mqttsn_gateway::record::snlog::{Endpoint, Payload, RecordEvent};
    let dir = std::env::temp_dir().join(format!("mqttsn-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.snlog");
    let limits = RecordLimits {
        max_bytes: Some(2_000),
        max_age: None,
        keep: 2,
    };
    let recorder = Recorder::create(&path, limits).unwrap();
    let frame = Message::PingReq { client_id: None }.to_vec().unwrap();
    for i in 0..400 {
        recorder.record(RecordEvent {
            at: mqttsn_gateway::time::Instant::from_millis(i),
            inbound: true,
            peer: Endpoint::Device(PeerAddr::udp(([10, 0, 0, 1], 5000).into())),
            local: None,
            payload: Payload::Bytes(frame.clone().into()),
            identity: None,
        });
    }
    recorder.finish();
    // The current file and two rotated ones, each a transcript that parses on its own.
    for name in ["gw.snlog", "gw.snlog.1", "gw.snlog.2"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let t = Transcript::parse(&text, name).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.entries.is_empty(), "{name}");
        assert!(
            t.peers.iter().any(|p| p.name == "dev1"),
            "{name} declares its peer again"
        );
    }
    assert!(!dir.join("gw.snlog.3").exists());
    let size = std::fs::metadata(dir.join("gw.snlog.1")).unwrap().len();
    assert!(size < 2_000 + 200, "rotated at about the limit: {size}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A broker PUBLISH too large for any device (a 300 KiB retained message) is recorded as it
/// came, its start marked, and the recording still replays on virtual time: the engine skips
/// the same bytes as it did live (before, the recorder left the rest out and the replayed
/// engine took the next packets for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_with_a_publish_too_large_for_devices_replays() {
    let broker = Mosquitto::start();
    let mut publisher = crate::support::mqtt::Client::connect(broker.port(), "publisher").await;
    publisher
        .publish(
            "big/x",
            rumqttc::QoS::AtLeastOnce,
            true,
            &vec![0x48; 300 * 1024],
        )
        .await;
    publisher
        .publish("small/y", rumqttc::QoS::AtLeastOnce, true, b"fits")
        .await;
    let path = std::env::temp_dir().join(format!("mqttsn-rec-big-{}.snlog", std::process::id()));
    let gw = broker.recording_gateway(&path).await;
    let dev = Device::new(gw.udp_addrs()[0]).await;
    crate::support::device::connect(&dev, "watcher-device-1", 60, false).await;
    dev.subscribe(TopicFilter::Name("#"), QoS::Zero, 1).await;
    let register = dev.recv_until(|m| matches!(m, Message::Register(_))).await;
    let Ok(Message::Register(r)) = Message::decode(&register) else {
        unreachable!()
    };
    dev.send(Message::RegAck(RegAck {
        topic_id: r.topic_id,
        msg_id: r.msg_id,
        return_code: ReturnCode::Accepted,
    }))
    .await;
    let _ = dev.recv_until(|m| matches!(m, Message::Publish(_))).await;
    let counters = gw.counters().await.unwrap();
    assert_eq!(counters.too_large_dropped, 1, "{counters:?}");
    gw.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("too large for any device"), "not marked");
    let transcript = Transcript::parse(&text, &path.display().to_string()).unwrap();
    let transcript = without_clean_stop(transcript);
    if let Err(mismatch) = replay(&transcript, &mut harness(&transcript)) {
        panic!("the recording does not replay:\n{mismatch}");
    }
    std::fs::remove_file(&path).unwrap();
}

/// Frames of a DTLS association are recorded decrypted, the peer declared as DTLS with the
/// identity it proved, and the broker CONNECT's password masked: the recording parses back
/// and holds no secret.
#[test]
fn dtls_peers_are_recorded_with_their_identity_and_no_secrets() {
    use mqttsn_gateway::engine::auth::Identity;
    use mqttsn_gateway::engine::mqtt::wire::{MqttWire, Outgoing};
    use mqttsn_gateway::engine::mqtt::ConnectOptions;
    use mqttsn_gateway::engine::{Link, PeerAddr};
    use mqttsn_gateway::record::redact::mask_connect_passwords;
    use mqttsn_gateway::record::snlog::{Endpoint, Payload, RecordEvent};
    let dir = std::env::temp_dir().join(format!("mqttsn-rec-dtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gw.snlog");
    let recorder = Recorder::create(&path, RecordLimits::default()).unwrap();
    let options = ConnectOptions {
        username: Some("gw".into()),
        password: Some("hunter2".into()),
        ..ConnectOptions::new("mqttsn-gateway-1")
    };
    let mut connect = bytes::BytesMut::new();
    mqttsn_gateway::mqtt_v4::MQTT_V4
        .write(Outgoing::Connect(&options), &mut connect)
        .unwrap();
    let device = PeerAddr::direct(Link::Dtls(([10, 0, 0, 7], 50000).into()));
    let events = [
        (
            Endpoint::Broker {
                conn: 0,
                owner: None,
            },
            false,
            mask_connect_passwords(&connect.freeze()),
            None,
        ),
        (
            Endpoint::Device(device),
            true,
            Message::PingReq { client_id: None }
                .to_vec()
                .unwrap()
                .into(),
            Some(Identity::Psk("dev-psk".into())),
        ),
    ];
    for (i, (peer, inbound, bytes, identity)) in events.into_iter().enumerate() {
        recorder.record(RecordEvent {
            at: mqttsn_gateway::time::Instant::from_millis(i as u64),
            inbound,
            peer,
            local: None,
            payload: Payload::Bytes(bytes),
            identity,
        });
    }
    recorder.finish();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("dtls 10.0.0.7:50000 psk dev-psk"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    // "hunter2" in hex is 68 75 6E 74 65 72 32: not in the CONNECT line either.
    assert!(!text.contains("68 75 6E 74 65 72 32"), "{text}");
    let t = Transcript::parse(&text, "gw.snlog").unwrap_or_else(|e| panic!("{e}\n{text}"));
    let dev = t
        .peers
        .iter()
        .find(|p| p.kind == PeerKind::Dtls(([10, 0, 0, 7], 50000).into()));
    assert_eq!(
        dev.and_then(|p| p.identity.clone()),
        Some(Identity::Psk("dev-psk".into()))
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
