//! Restarts and power cuts (issue 11) with the real binary, a real Mosquitto and `kill -9`: what
//! devices and applications notice when the gateway dies at any moment and comes back with its
//! state directory, in both modes; and what it does with a store it cannot use.

use crate::support::device::{connect_session as connect, Device};
use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Client;
use crate::support::process::{temp_dir, GatewayProcess};
use crate::support::PATIENCE;
use mqttsn_gateway::codec::*;
use rumqttc::QoS as MqttQoS;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const MODES: [&str; 2] = ["aggregating", "transparent"];

fn config(mode: &str, broker: &Mosquitto) -> String {
    format!(
        "[gateway]\nmode = \"{mode}\"\n[upstream]\nurl = \"{}\"\n",
        broker.url()
    )
}

/// The blocking process helpers, from async tests.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Answers what the gateway sends (REGACK to REGISTER, PUBACK to QoS 1 PUBLISH) until `want`
/// payloads have arrived, or PINGRESP when `until_pingresp`; returns the payloads in order.
async fn receive(dev: &Device, want: usize, until_pingresp: bool) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok(Ok((n, _))) = tokio::time::timeout(PATIENCE, dev.socket.recv_from(&mut buf)).await
        else {
            return got; // nothing more came: the caller's assertion says what was missing
        };
        let bytes = buf[..n].to_vec();
        match Message::decode(&bytes) {
            Ok(Message::Register(r)) => {
                dev.send(Message::RegAck(RegAck {
                    topic_id: r.topic_id,
                    msg_id: r.msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await
            }
            Ok(Message::Publish(p)) => {
                got.push(String::from_utf8_lossy(p.data).into_owned());
                if p.qos == QoS::One {
                    let topic_id = match p.topic {
                        TopicRef::Id(id) | TopicRef::Predefined(id) => id,
                        TopicRef::Short(s) => u16::from_be_bytes(s),
                        TopicRef::LongName(_) => 0,
                    };
                    dev.send(Message::PubAck(PubAck {
                        topic_id,
                        msg_id: p.msg_id,
                        return_code: ReturnCode::Accepted,
                    }))
                    .await;
                }
                if !until_pingresp && got.len() == want {
                    return got;
                }
            }
            Ok(Message::PingResp) if until_pingresp => return got,
            _ => {}
        }
    }
}

/// Waits until the store, read as a power cut would leave it (`mqttsn-gateway state`
/// reads the live file, leaving out a commit being written), says `needle`.
fn await_stored(dir: &Path, needle: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let report = mqttsn_gateway::storage::inspect::describe(&dir.join("sessions.log"))
            .unwrap_or_default();
        if report.contains(needle) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the store never said {needle:?}; last report:\n{report}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the gateway with SIGKILL and starts it again five times, at random moments 100 to
/// 700 ms apart, on a thread of its own; the handle gives the gateway back.
fn kill_five_times(mut gw: GatewayProcess) -> std::thread::JoinHandle<GatewayProcess> {
    std::thread::spawn(move || {
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(fastrand::u64(100..700)));
            gw.restart();
        }
        gw
    })
}

/// Waits until the application has seen every one of `sent`; how many duplicates came.
async fn duplicates_until_all_seen(app: &mut Client, sent: &[String]) -> usize {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while sent.iter().any(|p| !seen.contains_key(p)) {
        let message = app.next().await;
        *seen
            .entry(String::from_utf8_lossy(&message.payload).into_owned())
            .or_default() += 1;
    }
    seen.values().map(|n| n - 1).sum()
}

/// The gateway started once and restarted five times, each time from its store.
fn started_six_times(gw: &GatewayProcess) -> bool {
    gw.log()
        .iter()
        .filter(|l| l.contains("sessions restored"))
        .count()
        == 6
}

/// Test 1: a sleeping device has three QoS 1 messages buffered; the gateway is killed, and
/// the broker is killed too (it forgets everything, so only the gateway's store can bring the
/// messages back); after both restart the device wakes with PINGREQ and gets the three in
/// order, then PINGRESP.
#[tokio::test(flavor = "multi_thread")]
async fn a_sleepers_buffered_messages_survive_kill_9_even_of_the_broker() {
    for mode in MODES {
        let mut broker = Mosquitto::start();
        let dir = temp_dir("sleeper");
        let mut gw = blocking(|| GatewayProcess::start(&config(mode, &broker), &dir));
        let dev = Device::new(gw.udp).await;
        connect(&dev, "sleeper", true).await;
        let ack = dev
            .subscribe(TopicFilter::Name("restart/sleeper"), QoS::One, 1)
            .await;
        assert_eq!(ack.return_code, ReturnCode::Accepted, "{mode}");
        dev.send(Message::Disconnect {
            duration: Some(600),
        })
        .await;
        dev.recv_until(|m| matches!(m, Message::Disconnect { .. }))
            .await;
        let mut app = Client::connect(broker.port(), "app").await;
        for i in 1..=3 {
            let payload = format!("m{i}");
            app.publish(
                "restart/sleeper",
                MqttQoS::AtLeastOnce,
                false,
                payload.as_bytes(),
            )
            .await;
        }
        blocking(|| await_stored(&dir, "3 held messages"));
        blocking(|| gw.kill9());
        broker.restart();
        blocking(|| gw.restart());
        dev.send(Message::PingReq {
            client_id: Some("sleeper"),
        })
        .await;
        let got = receive(&dev, 3, true).await;
        assert_eq!(got, ["m1", "m2", "m3"], "{mode}: then PINGRESP");
        assert!(
            gw.log()
                .iter()
                .any(|l| l.contains("sessions restored") && l.contains("held_messages=3")),
            "{mode}: {:?}",
            gw.log()
        );
    }
}

/// Test 2: a device publishes QoS 1 without pause while the gateway is killed and restarted
/// five times at random moments. Every message the device got a PUBACK for reaches the
/// application; duplicates are allowed (QoS 1) and counted.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_publishes_survive_five_kill_9s() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let mut app = Client::connect(broker.port(), "app").await;
        app.subscribe("restart/load", MqttQoS::AtLeastOnce).await;
        let dir = temp_dir("load");
        let gw = blocking(|| GatewayProcess::start(&config(mode, &broker), &dir));
        let dev = Device::new(gw.udp).await;
        connect(&dev, "loader", true).await;
        let topic_id = dev.register("restart/load", 1).await;
        let killer = kill_five_times(gw);
        let mut acked = Vec::new();
        let mut msg_id = 1u16;
        let mut buf = vec![0u8; 2048];
        let deadline = std::time::Instant::now() + 4 * PATIENCE;
        while !killer.is_finished() || acked.len() < 100 {
            msg_id = msg_id.checked_add(1).unwrap_or(1);
            let payload = format!("p{}", acked.len());
            let mut dup = false;
            loop {
                assert!(std::time::Instant::now() < deadline, "{mode}: stuck");
                dev.send(Message::Publish(Publish {
                    dup,
                    qos: QoS::One,
                    retain: false,
                    topic: TopicRef::Id(topic_id),
                    msg_id,
                    data: payload.as_bytes(),
                }))
                .await;
                dup = true;
                let answer = tokio::time::timeout(
                    Duration::from_millis(300),
                    dev.socket.recv_from(&mut buf),
                )
                .await;
                let Ok(Ok((n, _))) = answer else {
                    continue; // the gateway is down or restarting: send it again
                };
                match Message::decode(&buf[..n]) {
                    Ok(Message::PubAck(ack)) if ack.msg_id == msg_id => match ack.return_code {
                        ReturnCode::Accepted => break,
                        ReturnCode::Congestion => {
                            tokio::time::sleep(Duration::from_millis(20)).await
                        }
                        other => panic!("{mode}: {payload} refused: {other:?}"),
                    },
                    _ => {}
                }
            }
            acked.push(payload);
        }
        let gw = blocking(|| killer.join().expect("killer"));
        let duplicates = duplicates_until_all_seen(&mut app, &acked).await;
        eprintln!(
            "{mode}: {} publishes acknowledged through 5 kill -9s, all delivered, {duplicates} duplicates",
            acked.len()
        );
        assert!(
            started_six_times(&gw),
            "{mode}: one start and five restarts"
        );
    }
}

/// Test 3: the broker publishes QoS 1 to a subscribed device while the gateway is down; after
/// the restart the device receives it: the broker kept it for the gateway's persistent
/// session (in transparent mode, for the device's own CleanSession=0 session).
#[tokio::test(flavor = "multi_thread")]
async fn what_the_broker_sends_while_the_gateway_is_down_arrives_after_the_restart() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let dir = temp_dir("down");
        let mut gw = blocking(|| GatewayProcess::start(&config(mode, &broker), &dir));
        let dev = Device::new(gw.udp).await;
        connect(&dev, "listener", false).await;
        let ack = dev
            .subscribe(TopicFilter::Name("restart/down"), QoS::One, 1)
            .await;
        assert_eq!(ack.return_code, ReturnCode::Accepted, "{mode}");
        // PINGREQ from its own address shows the device receives (the return-path check).
        dev.send(Message::PingReq { client_id: None }).await;
        dev.recv_until(|m| matches!(m, Message::PingResp)).await;
        // Stored: the subscription, and that the address receives (else, after the restart,
        // the gateway would wait for the device's next PINGREQ before it sends anything).
        blocking(|| await_stored(&dir, "address proven"));
        blocking(|| await_stored(&dir, "subscribed: restart/down"));
        blocking(|| gw.kill9());
        let mut app = Client::connect(broker.port(), "app").await;
        app.publish("restart/down", MqttQoS::AtLeastOnce, false, b"while-down")
            .await;
        blocking(|| gw.restart());
        let got = receive(&dev, 1, false).await;
        assert_eq!(
            got,
            ["while-down"],
            "{mode}; the gateway's log:\n{}",
            gw.log().join("\n")
        );
    }
}

/// Test 4: an active device goes on publishing with its registered topic id right after a
/// restart, without REGISTER.
#[tokio::test(flavor = "multi_thread")]
async fn a_registered_topic_id_is_accepted_right_after_a_restart() {
    for mode in MODES {
        let broker = Mosquitto::start();
        let mut app = Client::connect(broker.port(), "app").await;
        app.subscribe("restart/id", MqttQoS::AtLeastOnce).await;
        let dir = temp_dir("id");
        let mut gw = blocking(|| GatewayProcess::start(&config(mode, &broker), &dir));
        let dev = Device::new(gw.udp).await;
        connect(&dev, "publisher", true).await;
        let topic_id = dev.register("restart/id", 1).await;
        for (msg_id, payload) in [(2, "before"), (3, "after")] {
            if msg_id == 3 {
                blocking(|| await_stored(&dir, "1 = restart/id"));
                blocking(|| gw.restart());
            }
            dev.publish(topic_id, QoS::One, msg_id, payload.as_bytes())
                .await;
            let reply = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
            assert!(
                matches!(
                    Message::decode(&reply),
                    Ok(Message::PubAck(PubAck {
                        return_code: ReturnCode::Accepted,
                        ..
                    }))
                ),
                "{mode}: {payload}: {reply:02x?}"
            );
            assert_eq!(app.next().await.payload, payload.as_bytes(), "{mode}");
        }
    }
}

/// A gateway on `dir` serves a device, then stops; its log.
async fn serves_then_stops(broker: &Mosquitto, dir: &Path, uid: Option<u32>) -> Vec<String> {
    let mut gw = blocking(|| GatewayProcess::start_as(&config("aggregating", broker), dir, uid));
    let dev = Device::new(gw.udp).await;
    connect(&dev, "survivor", true).await;
    blocking(|| gw.stop());
    gw.log()
}

fn logged(log: &[String], all: &[&str]) -> bool {
    log.iter().any(|l| all.iter().all(|part| l.contains(part)))
}

/// Test 5a: a damaged store file does not stop the start: it is moved aside, kept for
/// inspection, logged naming the file, counted, and the gateway starts empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_is_moved_aside_and_the_gateway_starts_empty() {
    let broker = Mosquitto::start();
    let dir = temp_dir("damaged");
    let garbage = vec![0xA5u8; 8192];
    std::fs::write(dir.join("sessions.log"), &garbage).unwrap();
    let log = serves_then_stops(&broker, &dir, None).await;
    assert!(
        logged(&log, &["ERROR", "moved aside", "sessions.log"]),
        "{log:#?}"
    );
    assert!(
        logged(&log, &["storage totals", "moved_aside: 1"]),
        "{log:#?}"
    );
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("sessions.log.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage, "kept as it was");
}

/// Test 5b: a store of another format version is never misread: moved aside the same way.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_of_another_format_is_moved_aside() {
    let broker = Mosquitto::start();
    let dir = temp_dir("format");
    mqttsn_gateway::storage::log_store::create_empty(&dir.join("sessions.log"), 99).unwrap();
    let log = serves_then_stops(&broker, &dir, None).await;
    assert!(
        logged(
            &log,
            &["moved aside", "store format 99, this version reads 1"]
        ),
        "{log:#?}"
    );
}

/// Test 5c: a state directory the gateway cannot write: it starts, says so, and keeps
/// sessions in memory. (Run as an unprivileged user when the tests run as root, who could
/// write anywhere.)
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_state_directory_runs_in_memory() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let broker = Mosquitto::start();
    let dir = temp_dir("read-only");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    let log = serves_then_stops(&broker, &dir, root.then_some(65534)).await;
    assert!(
        logged(
            &log,
            &["ERROR", "cannot write the session store", "in memory only"]
        ),
        "{log:#?}"
    );
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
}

/// Unmounts a test's file system when the test ends, however it ends.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Test 5d: a full disk is logged and counted, and traffic goes on with sessions in memory.
/// The state directory is a 1 MiB file system of its own, filled up (mounting it needs root;
/// where that is refused the test says so and checks nothing).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_logged_and_traffic_goes_on() {
    let broker = Mosquitto::start();
    let dir = temp_dir("full");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&dir)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIPPED a_full_disk_is_logged_and_traffic_goes_on: cannot mount a tmpfs here");
        return;
    }
    let _unmount = Unmount(dir.clone());
    let mut gw = blocking(|| GatewayProcess::start(&config("aggregating", &broker), &dir));
    let dev = Device::new(gw.udp).await;
    connect(&dev, "on-full-disk", true).await;
    let ack = dev
        .subscribe(TopicFilter::Name("restart/full"), QoS::One, 1)
        .await;
    assert_eq!(ack.return_code, ReturnCode::Accepted);
    dev.send(Message::PingReq { client_id: None }).await;
    dev.recv_until(|m| matches!(m, Message::PingResp)).await;
    // Fill the file system to the last byte.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(dir.join("filler")).unwrap();
        let block = vec![0u8; 4096];
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&[0]);
    }
    // Messages large enough that storing them needs more space than the file has now (the
    // file system gives out whole pages).
    let mut app = Client::connect(broker.port(), "app").await;
    let payloads: Vec<String> = (0..3).map(|i| format!("{i}{}", "x".repeat(2000))).collect();
    for payload in &payloads {
        app.publish(
            "restart/full",
            MqttQoS::AtLeastOnce,
            false,
            payload.as_bytes(),
        )
        .await;
    }
    assert_eq!(receive(&dev, 3, false).await, payloads);
    blocking(|| gw.stop());
    let log = gw.log();
    assert!(
        logged(
            &log,
            &["ERROR", "cannot write the session store", "in memory"]
        ),
        "{log:#?}"
    );
    // What was committed before the disk filled up is still there, complete.
    let stored = mqttsn_gateway::storage::inspect::describe(&dir.join("sessions.log")).unwrap();
    assert!(
        stored.contains("\"on-full-disk\"") && stored.contains("subscribed: restart/full"),
        "{stored}"
    );
    assert!(logged(&log, &["storage totals", "errors: 1,"]), "{log:#?}");
    for line in log
        .iter()
        .filter(|l| l.contains("cannot write") || l.contains("storage totals"))
    {
        eprintln!("{line}");
    }
}

/// Test 2 at QoS 2: a device publishes QoS 2 without pause while the gateway is killed and
/// restarted five times. Every message the device completed (PUBCOMP) reaches the application.
/// (A kill between the broker's PUBREC and the gateway's PUBREL is rare at these speeds; what
/// the restarted gateway does then, releasing the packet id rather than reusing it, is shown
/// frame by frame in transcript 58.)
#[tokio::test(flavor = "multi_thread")]
async fn completed_qos_2_publishes_survive_five_kill_9s() {
    let broker = Mosquitto::start();
    let mut app = Client::connect(broker.port(), "app").await;
    app.subscribe("restart/qos2", MqttQoS::ExactlyOnce).await;
    let dir = temp_dir("qos2");
    let gw = blocking(|| GatewayProcess::start(&config("aggregating", &broker), &dir));
    let dev = Device::new(gw.udp).await;
    connect(&dev, "qos2", true).await;
    let topic_id = dev.register("restart/qos2", 1).await;
    let killer = kill_five_times(gw);
    let mut completed = Vec::new();
    let mut msg_id = 1u16;
    let mut buf = vec![0u8; 2048];
    let deadline = std::time::Instant::now() + 4 * PATIENCE;
    while !killer.is_finished() || completed.len() < 50 {
        msg_id = msg_id.checked_add(1).unwrap_or(1);
        let payload = format!("q{}", completed.len());
        // PUBLISH (DUP once sent) until PUBREC, then PUBREL until PUBCOMP.
        let mut received = false;
        let mut dup = false;
        loop {
            assert!(std::time::Instant::now() < deadline, "stuck at {payload}");
            if received {
                dev.send(Message::PubRel { msg_id }).await;
            } else {
                dev.send(Message::Publish(Publish {
                    dup,
                    qos: QoS::Two,
                    retain: false,
                    topic: TopicRef::Id(topic_id),
                    msg_id,
                    data: payload.as_bytes(),
                }))
                .await;
                dup = true;
            }
            let answer =
                tokio::time::timeout(Duration::from_millis(300), dev.socket.recv_from(&mut buf))
                    .await;
            let Ok(Ok((n, _))) = answer else {
                continue;
            };
            match Message::decode(&buf[..n]) {
                Ok(Message::PubRec { msg_id: m }) if m == msg_id => received = true,
                Ok(Message::PubComp { msg_id: m }) if m == msg_id && received => break,
                Ok(Message::PubAck(ack)) if ack.msg_id == msg_id => {
                    assert_eq!(ack.return_code, ReturnCode::Congestion, "{payload}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ => {}
            }
        }
        completed.push(payload);
    }
    let gw = blocking(|| killer.join().expect("killer"));
    let duplicates = duplicates_until_all_seen(&mut app, &completed).await;
    eprintln!(
        "{} QoS 2 publishes completed through 5 kill -9s, all delivered, {duplicates} duplicates",
        completed.len()
    );
    assert!(started_six_times(&gw), "one start and five restarts");
}
