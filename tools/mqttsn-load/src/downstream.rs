//! `downstream`: N devices subscribe through the gateway (each to its own topic, and with
//! `--fan-out` also to one shared topic); an MQTT publisher (rumqttc) on the broker sends at the
//! offered rate, round-robin over the device topics, or with `--fan-out` to the shared topic so
//! that every message goes to every device. The devices count deliveries (acknowledging QoS 1)
//! and measure latency from the publisher's timestamp.

use crate::common::{drain, pct, per_sec, Pacer, Progress, RunLength, UdpDrops, Watched};
use crate::payload::{self, Stamp, SHARED};
use crate::sn::{self, Device, Then, Timing};
use crate::stats::{fmt_ns, now_ns, Histogram, Live, SeqSet};
use crate::subscriber::options;
use bytes::Bytes;
use mqttsn_codec::{Message, PubAck, QoS, RegAck, ReturnCode, TopicRef};
use rumqttc::{Event, Outgoing, Packet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::time::Instant;

/// Parameters of a `downstream` run.
#[derive(Debug, Clone)]
pub struct Params {
    pub gateway: SocketAddr,
    /// Over DTLS with this PSK; ClientIds (and PSK identities) are then `dtls-{index}`.
    pub dtls_psk: Option<std::sync::Arc<[u8]>>,
    pub broker: (String, u16),
    pub devices: u32,
    pub qos1: bool,
    pub rate: f64,
    pub length: RunLength,
    pub payload: usize,
    pub fan_out: bool,
    pub inflight: u16,
    pub timing: Timing,
    pub setup_concurrency: usize,
    pub drain: Duration,
    pub quiet: bool,
    pub watched: Watched,
}

/// What one device received.
#[derive(Debug, Default)]
struct Got {
    index: u32,
    own: SeqSet,
    shared: SeqSet,
    duplicates: u64,
    foreign: u64,
    disconnected: bool,
}

pub async fn run(p: Params) -> Result<(), String> {
    let run = crate::common::run_id();
    let prefix = format!("load/{run}/d/");
    let shared_topic = format!("load/{run}/all");
    let qos_sn = if p.qos1 { QoS::One } else { QoS::Zero };
    let live = Arc::new(Live::default());
    let e2e = Arc::new(Histogram::default());

    let plan = sn::Plan {
        gateway: p.gateway,
        devices: p.devices,
        client_prefix: sn::client_prefix(&run, p.dtls_psk.is_some()),
        payload_len: p.payload,
        concurrency: p.setup_concurrency,
        timing: p.timing,
        dtls_psk: p.dtls_psk.clone(),
        then: Then::Subscribe {
            prefix: prefix.clone(),
            shared: p.fan_out.then(|| shared_topic.clone()),
            qos: qos_sn,
        },
    };
    let (devices, setup) = sn::setup(&plan).await;
    println!("setup: {}", setup.line(devices.len()));
    if devices.is_empty() {
        return Err("no device could be set up".to_string());
    }
    let ready: Vec<u32> = devices.iter().map(|d| d.index).collect();

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut receivers = Vec::new();
    for dev in devices {
        let stop = stop_rx.clone();
        receivers.push(tokio::spawn(receive(
            dev,
            stop,
            Arc::clone(&live),
            Arc::clone(&e2e),
        )));
    }

    // The publisher.
    let mut opts = options(&format!("l{run}-pub"), &p.broker.0, p.broker.1);
    opts.set_inflight(p.inflight.max(1));
    let (client, mut eventloop) = crate::subscriber::client(opts, 1024);
    let window = Arc::new(Semaphore::new(usize::from(p.inflight.max(1))));
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let mut stop = stop_rx.clone();
    let slots = Arc::clone(&window);
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (acked2, written2) = (Arc::clone(&acked), Arc::clone(&written));
    let qos1 = p.qos1;
    let pub_loop = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut errors = 0u64;
        loop {
            let event = tokio::select! {
                biased;
                _ = stop.changed() => break,
                e = eventloop.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Some(t) = ready.take() {
                        let _ = t.send(Ok(()));
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => Live::add(&written2, 1),
                Ok(Event::Incoming(Packet::PubAck(_))) if qos1 => {
                    Live::add(&acked2, 1);
                    slots.add_permits(1);
                }
                Ok(_) => {}
                Err(e) => {
                    errors += 1;
                    if let Some(t) = ready.take() {
                        let _ = t.send(Err(e.to_string()));
                        break;
                    }
                    eprintln!("publisher: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        errors
    });
    match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(format!("publisher: {e}")),
        _ => return Err("publisher: no CONNACK within 10 s".to_string()),
    }

    let progress = Progress::start(Arc::clone(&live), p.quiet);
    let before = p.watched.sample();
    let drops_before = UdpDrops::read(p.gateway);
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let limit = p.length.limit(t0);
    // Producer: round-robin over the device topics, or the shared topic.
    let topics: Vec<String> = ready.iter().map(|i| format!("{prefix}{i}")).collect();
    let mut sent_to = vec![0u32; topics.len()];
    let mut sent_shared = 0u32;
    let mut pacer = Pacer::new(p.rate, t0);
    let mut buf = vec![0u8; p.payload.max(payload::HEADER)];
    let qos_mqtt = if p.qos1 {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    };
    let mut sent = 0u64;
    let mut k = 0usize;
    loop {
        if limit.reached(sent, Instant::now()) {
            break;
        }
        pacer.wait().await;
        if p.qos1 {
            // A PUBACK that never comes (e.g. lost in a reconnect) must not hang the run.
            match tokio::time::timeout(Duration::from_secs(30), window.acquire()).await {
                Ok(Ok(permit)) => permit.forget(),
                _ => break,
            }
        }
        let (topic, device, seq) = if p.fan_out {
            sent_shared += 1;
            (shared_topic.clone(), SHARED, sent_shared - 1)
        } else {
            sent_to[k] += 1;
            let t = (topics[k].clone(), ready[k], sent_to[k] - 1);
            k = (k + 1) % topics.len();
            t
        };
        payload::write(
            &mut buf,
            Stamp {
                sent_ns: now_ns(),
                device,
                seq,
            },
        );
        if client
            .publish_bytes(topic, qos_mqtt, false, Bytes::copy_from_slice(&buf))
            .await
            .is_err()
        {
            break;
        }
        sent += 1;
        Live::add(&live.sent, 1);
    }
    let _ = drain(&live, p.drain, || {
        Live::get(&written) >= sent && (!p.qos1 || Live::get(&acked) >= sent)
    })
    .await;
    let send_time = t0.elapsed();
    let deliveries_expected = if p.fan_out {
        sent * ready.len() as u64
    } else {
        sent
    };
    let drained = drain(&live, p.drain, || {
        Live::get(&live.received) >= deliveries_expected
    })
    .await;
    let after = p.watched.sample();
    let drops = UdpDrops::read(p.gateway).since(&drops_before);
    progress.stop().await;
    let _ = stop_tx.send(true);
    let publisher_errors = pub_loop.await.unwrap_or(0);
    let _ = client.try_disconnect();
    let mut devices = Vec::new();
    let mut gots = Vec::new();
    for h in receivers {
        if let Ok((dev, got)) = h.await {
            devices.push(dev);
            gots.push(got);
        }
    }

    let mut unique = 0u64;
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    let mut foreign = 0u64;
    let mut disconnected = 0u64;
    for (slot, g) in gots.iter().enumerate() {
        let own_expected = u64::from(sent_to.get(slot).copied().unwrap_or(0));
        let own = g.own.count_below(own_expected);
        let shared = g.shared.count_below(u64::from(sent_shared));
        unique += own + shared;
        lost += own_expected - own;
        if p.fan_out {
            lost += u64::from(sent_shared) - shared;
        }
        duplicates += g.duplicates;
        foreign += g.foreign;
        disconnected += u64::from(g.disconnected);
    }
    println!("results:");
    println!(
        "  offered rate        {} (publisher, {})",
        if p.rate > 0.0 {
            format!("{:.0} msg/s", p.rate)
        } else {
            "as fast as possible".to_string()
        },
        if p.fan_out {
            "every message to the shared topic, i.e. to every device"
        } else {
            "round-robin over the devices' own topics"
        }
    );
    println!(
        "  published           {sent} in {:.2} s = {}{}",
        send_time.as_secs_f64(),
        per_sec(sent, send_time),
        if p.qos1 {
            format!("; PUBACKed by the broker {}", Live::get(&acked))
        } else {
            String::new()
        }
    );
    let recv_time = live.arrival_span(t0_ns);
    println!(
        "  delivered           {unique} unique of {deliveries_expected} expected = {} (start to last delivery, {:.2} s)",
        per_sec(unique, recv_time),
        recv_time.as_secs_f64()
    );
    println!(
        "  lost                {lost} ({}){}",
        pct(lost, deliveries_expected),
        if drained { "" } else { " [drain timed out]" }
    );
    println!(
        "  duplicates          {duplicates}; foreign {foreign}; devices told to DISCONNECT {disconnected}; publisher errors {publisher_errors}"
    );
    println!(
        "  UDP buffer drops    {} at the gateway's socket, {} at the devices' sockets (kernel counters)",
        drops.gateway, drops.devices
    );
    println!("  latency end-to-end  {}", e2e.summary());
    println!("  {}", p.watched.describe(&before, &after));
    println!(
        "summary: downstream qos={} devices={} fan_out={} offered={} published/s={:.0} delivered/s={:.0} lost={lost} e2e_p50={} e2e_p99={}",
        u8::from(p.qos1),
        ready.len(),
        p.fan_out,
        p.rate,
        sent as f64 / send_time.as_secs_f64(),
        unique as f64 / recv_time.as_secs_f64(),
        fmt_ns(e2e.quantile(0.5)),
        fmt_ns(e2e.quantile(0.99)),
    );
    let unanswered = sn::disconnect_all(devices, p.setup_concurrency).await;
    if unanswered > 0 {
        println!("note: {unanswered} devices got no answer to DISCONNECT");
    }
    Ok(())
}

/// One device's receive loop: count, acknowledge, answer REGISTER.
async fn receive(
    mut dev: Device,
    mut stop: watch::Receiver<bool>,
    live: Arc<Live>,
    e2e: Arc<Histogram>,
) -> (Device, Got) {
    let mut got = Got {
        index: dev.index,
        ..Got::default()
    };
    loop {
        let r = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = dev.recv() => r,
        };
        let Ok(n) = r else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let now = now_ns();
        let reply = match Message::decode(&dev.rx[..n]) {
            Ok(Message::Publish(p)) => {
                live.arrived(now);
                match payload::read(p.data) {
                    Some(stamp) if stamp.device == got.index || stamp.device == SHARED => {
                        e2e.record(now.saturating_sub(stamp.sent_ns));
                        let set = if stamp.device == SHARED {
                            &mut got.shared
                        } else {
                            &mut got.own
                        };
                        if !set.insert(stamp.seq) {
                            got.duplicates += 1;
                        }
                    }
                    _ => got.foreign += 1,
                }
                let topic_id = match p.topic {
                    TopicRef::Id(id) | TopicRef::Predefined(id) => id,
                    TopicRef::Short(s) => u16::from_be_bytes(s),
                    TopicRef::LongName(_) => 0,
                };
                (p.qos == QoS::One).then_some(Reply::PubAck(topic_id, p.msg_id))
            }
            Ok(Message::Register(r)) => Some(Reply::RegAck(r.topic_id, r.msg_id)),
            Ok(Message::Disconnect { .. }) => {
                got.disconnected = true;
                None
            }
            _ => None,
        };
        let sent = match reply {
            Some(Reply::PubAck(topic_id, msg_id)) => {
                dev.send_msg(Message::PubAck(PubAck {
                    topic_id,
                    msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await
            }
            Some(Reply::RegAck(topic_id, msg_id)) => {
                dev.send_msg(Message::RegAck(RegAck {
                    topic_id,
                    msg_id,
                    return_code: ReturnCode::Accepted,
                }))
                .await
            }
            None => Ok(()),
        };
        if sent.is_err() {
            Live::add(&live.errors, 1);
        }
    }
    (dev, got)
}

enum Reply {
    PubAck(u16, u16),
    RegAck(u16, u16),
}
