//! `publish`: N MQTT-SN devices publish through the gateway while an MQTT subscriber on the
//! broker counts what arrives.
//!
//! QoS 0: devices are grouped, one task per group, each group paced to its share of the offered
//! rate and sending round-robin over its devices (no per-message allocation; the codec encodes
//! into a reused buffer). QoS 1: one task per device, lock-step with a window (the next PUBLISH
//! once a PUBACK frees a slot), retransmitting with DUP after `--retry-ms`.

use crate::common::{
    drain, per_sec, print_arrivals, print_tail, Limit, Pacer, Progress, RunLength, Totals,
    UdpDrops, Watched,
};
use crate::payload::Stamp;
use crate::sn::{self, Device, Then, Timing};
use crate::stats::{now_ns, Histogram, Live, SeqSet};
use mqttsn_codec::{Message, QoS, ReturnCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// Parameters of a `publish` run.
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
    pub window: usize,
    pub groups: usize,
    pub timing: Timing,
    pub setup_concurrency: usize,
    pub max_retries: u32,
    pub drain: Duration,
    pub quiet: bool,
    /// Also write the results as JSON here (`--json`).
    pub json: Option<std::path::PathBuf>,
    pub watched: Watched,
}

/// What one device did.
#[derive(Debug, Default)]
struct Sent {
    index: u32,
    sent: u64,
    acked: u64,
    acked_set: SeqSet,
    rejected: u64,
    retransmits: u64,
    given_up: u64,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(p: Params) -> Result<(), String> {
    let run = crate::common::run_id();
    let prefix = format!("load/{run}/");
    let qos_mqtt = if p.qos1 {
        rumqttc::QoS::AtLeastOnce
    } else {
        rumqttc::QoS::AtMostOnce
    };
    let live = Arc::new(Live::default());
    let e2e = Arc::new(Histogram::default());
    let rtt = Arc::new(Histogram::default());
    let plan = sn::Plan {
        gateway: p.gateway,
        devices: p.devices,
        client_prefix: sn::client_prefix(&run, p.dtls_psk.is_some()),
        payload_len: p.payload,
        concurrency: p.setup_concurrency,
        timing: p.timing,
        dtls_psk: p.dtls_psk.clone(),
        then: Then::Register {
            prefix: prefix.clone(),
        },
    };
    let (sub, devices) = sn::subscriber_and_publishers(
        (&p.broker.0, p.broker.1),
        &format!("mqttsn-load-sub-{run}"),
        qos_mqtt,
        &prefix,
        plan,
        &e2e,
        &live,
    )
    .await?;
    let ready = devices.len();

    let progress = Progress::start(Arc::clone(&live), p.quiet);
    let before = p.watched.sample();
    let drops_before = UdpDrops::read(p.gateway);
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let limit = p.length.limit(t0);
    let mut handles = Vec::new();
    if p.qos1 {
        let per_device_rate = p.rate / ready as f64;
        for (i, dev) in devices.into_iter().enumerate() {
            // Stagger paced devices evenly over one interval.
            let offset = if per_device_rate > 0.0 {
                Duration::from_secs_f64(i as f64 / ready as f64 / per_device_rate)
            } else {
                Duration::ZERO
            };
            let task = Qos1Task {
                window: p.window.max(1),
                pacer: Pacer::new(per_device_rate, t0 + offset),
                limit: limit.share(i, ready),
                retry: p.timing.retry,
                max_retries: p.max_retries,
                live: Arc::clone(&live),
                rtt: Arc::clone(&rtt),
            };
            handles.push(tokio::spawn(task.run(dev)));
        }
    } else {
        let groups = p.groups.clamp(1, ready);
        let mut buckets: Vec<Vec<Device>> = (0..groups).map(|_| Vec::new()).collect();
        for (i, dev) in devices.into_iter().enumerate() {
            buckets[i % groups].push(dev);
        }
        for (g, group) in buckets.into_iter().enumerate() {
            let share = group.len() as f64 / ready as f64;
            let task = Qos0Group {
                pacer: Pacer::new(p.rate * share, t0),
                limit: limit.share(g, groups),
                live: Arc::clone(&live),
            };
            handles.push(tokio::spawn(task.run(group)));
        }
    }
    let mut results = Vec::with_capacity(ready);
    let mut devices = Vec::with_capacity(ready);
    for h in handles {
        match h.await {
            Ok((devs, sent)) => {
                devices.extend(devs);
                results.extend(sent);
            }
            Err(e) => return Err(format!("sender task failed: {e}")),
        }
    }
    let send_time = t0.elapsed();
    let total_sent: u64 = results.iter().map(|r| r.sent).sum();
    let drained = drain(&live, p.drain, || Live::get(&live.received) >= total_sent).await;
    let after = p.watched.sample();
    let drops = UdpDrops::read(p.gateway).since(&drops_before);
    progress.stop().await;
    let received = sub.finish().await;

    // ----- the summary
    let acked: u64 = results.iter().map(|r| r.acked).sum();
    let rejected: u64 = results.iter().map(|r| r.rejected).sum();
    let retransmits: u64 = results.iter().map(|r| r.retransmits).sum();
    let given_up: u64 = results.iter().map(|r| r.given_up).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let unique = received.unique();
    // Loss: messages a device sent (sequence numbers below its count) that never arrived.
    let mut lost = 0u64;
    let mut acked_missing = 0u64;
    for r in &results {
        let got = received.seqs.get(r.index as usize);
        let arrived = got.map_or(0, |s| s.count_below(r.sent));
        lost += r.sent - arrived;
        if p.qos1 {
            acked_missing += got.map_or(r.acked, |s| r.acked_set.missing_from(s));
        }
    }
    let recv_time = live.arrival_span(t0_ns);
    println!("results:");
    println!(
        "  offered rate        {}",
        if p.rate > 0.0 {
            format!("{:.0} msg/s", p.rate)
        } else {
            "as fast as possible".to_string()
        }
    );
    println!(
        "  sent                {total_sent} in {:.2} s = {} (achieved send rate)",
        send_time.as_secs_f64(),
        per_sec(total_sent, send_time)
    );
    if p.qos1 {
        println!(
            "  acked (PUBACK)      {acked} = {}; rejected {rejected}; retransmissions {retransmits}; given up {given_up}",
            per_sec(acked, send_time)
        );
    }
    print_arrivals(
        unique,
        recv_time,
        lost,
        total_sent,
        drained,
        p.qos1.then_some(acked_missing),
    );
    println!(
        "  duplicates          {}; reordered {}; foreign {}; subscriber reconnects {}; send errors {errors}",
        received.duplicates, received.reordered, received.foreign, received.reconnects
    );
    if let Some(e) = results.iter().find_map(|r| r.first_error.as_deref()) {
        println!("  first device error  {e}");
    }
    println!(
        "  UDP buffer drops    {} at the gateway's socket, {} at the devices' sockets (kernel counters)",
        drops.gateway, drops.devices
    );
    let totals = Totals {
        qos1: p.qos1,
        sent: total_sent,
        acked,
        unique,
        lost,
        acked_missing,
        send_time,
        recv_time,
        e2e: &e2e,
        rtt: &rtt,
    };
    print_tail(
        &format!(
            "publish qos={} devices={ready} offered={}",
            u8::from(p.qos1),
            p.rate
        ),
        &totals,
        &p.watched.describe(&before, &after),
        p.json.as_deref(),
    );
    let unanswered = sn::disconnect_all(devices, p.setup_concurrency).await;
    if unanswered > 0 {
        println!("note: {unanswered} devices got no answer to DISCONNECT");
    }
    Ok(())
}

/// A group of QoS 0 devices sending round-robin at the group's share of the rate.
struct Qos0Group {
    pacer: Pacer,
    limit: Limit,
    live: Arc<Live>,
}

impl Qos0Group {
    async fn run(mut self, mut devs: Vec<Device>) -> (Vec<Device>, Vec<Sent>) {
        let mut sent: Vec<Sent> = devs
            .iter()
            .map(|d| Sent {
                index: d.index,
                ..Sent::default()
            })
            .collect();
        let mut total = 0u64;
        let mut unreported = 0u64;
        let mut since_yield = 0u32;
        let mut i = 0usize;
        loop {
            if self.limit.reached(total, Instant::now()) {
                break;
            }
            if self.pacer.wait().await {
                since_yield = 0;
            }
            let (dev, s) = (&mut devs[i], &mut sent[i]);
            let stamp = Stamp {
                sent_ns: now_ns(),
                device: dev.index,
                seq: s.sent as u32,
            };
            match dev.publish(QoS::Zero, false, 0, stamp).await {
                Ok(()) => {
                    s.sent += 1;
                    total += 1;
                    unreported += 1;
                }
                Err(e) => {
                    s.errors += 1;
                    s.first_error.get_or_insert_with(|| e.to_string());
                    Live::add(&self.live.errors, 1);
                }
            }
            i = (i + 1) % devs.len();
            if unreported >= 64 {
                Live::add(&self.live.sent, unreported);
                unreported = 0;
            }
            since_yield += 1;
            if since_yield >= 64 {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
        Live::add(&self.live.sent, unreported);
        (devs, sent)
    }
}

/// One QoS 1 PUBLISH awaiting its PUBACK.
struct Flight {
    msg_id: u16,
    stamp: Stamp,
    last_sent: Instant,
    retries: u32,
}

/// One QoS 1 device: lock-step with a window.
struct Qos1Task {
    window: usize,
    pacer: Pacer,
    limit: Limit,
    retry: Duration,
    max_retries: u32,
    live: Arc<Live>,
    rtt: Arc<Histogram>,
}

enum Wake {
    Frame(std::io::Result<usize>),
    Timer,
}

impl Qos1Task {
    async fn run(mut self, mut dev: Device) -> (Vec<Device>, Vec<Sent>) {
        let mut s = Sent {
            index: dev.index,
            ..Sent::default()
        };
        let mut flights: Vec<Flight> = Vec::with_capacity(self.window);
        let mut stopped = false;
        loop {
            // Fill the window with whatever is due.
            while !stopped && flights.len() < self.window {
                let now = Instant::now();
                if self.limit.reached(s.sent, now) {
                    stopped = true;
                    break;
                }
                if !self.pacer.ready(now) {
                    break;
                }
                self.pacer.take();
                let msg_id = dev.next_msg_id();
                let stamp = Stamp {
                    sent_ns: now_ns(),
                    device: dev.index,
                    seq: s.sent as u32,
                };
                match dev.publish(QoS::One, false, msg_id, stamp).await {
                    Ok(()) => {
                        s.sent += 1;
                        Live::add(&self.live.sent, 1);
                        flights.push(Flight {
                            msg_id,
                            stamp,
                            last_sent: Instant::now(),
                            retries: 0,
                        });
                    }
                    Err(e) => {
                        s.errors += 1;
                        s.first_error.get_or_insert_with(|| e.to_string());
                        Live::add(&self.live.errors, 1);
                        stopped = true;
                    }
                }
            }
            if stopped && flights.is_empty() {
                break;
            }
            // Sleep until a PUBACK, a retransmission, the next paced send or the end.
            let mut wake = flights
                .iter()
                .map(|f| f.last_sent + self.retry)
                .min()
                .unwrap_or(Instant::now() + Duration::from_secs(3600));
            if !stopped && flights.len() < self.window {
                if let Some(at) = self.pacer.next_at() {
                    wake = wake.min(at);
                }
                if let Limit::Until(at) = self.limit {
                    wake = wake.min(at);
                }
            }
            let event = tokio::select! {
                r = dev.recv() => Wake::Frame(r),
                _ = sleep_until(wake) => Wake::Timer,
            };
            match event {
                Wake::Frame(Ok(n)) => match Message::decode(&dev.rx[..n]) {
                    Ok(Message::PubAck(ack)) => {
                        if let Some(i) = flights.iter().position(|f| f.msg_id == ack.msg_id) {
                            let f = flights.swap_remove(i);
                            if ack.return_code == ReturnCode::Accepted {
                                s.acked += 1;
                                s.acked_set.insert(f.stamp.seq);
                                self.rtt.record(now_ns().saturating_sub(f.stamp.sent_ns));
                                Live::add(&self.live.acked, 1);
                            } else {
                                s.rejected += 1;
                                s.first_error.get_or_insert_with(|| {
                                    format!("PUBACK {}", ack.return_code.name())
                                });
                                Live::add(&self.live.errors, 1);
                            }
                        }
                    }
                    Ok(Message::Disconnect { .. }) => {
                        s.errors += 1;
                        s.first_error
                            .get_or_insert_with(|| "the gateway sent DISCONNECT".to_string());
                        Live::add(&self.live.errors, 1);
                        s.given_up += flights.len() as u64;
                        flights.clear();
                        stopped = true;
                    }
                    _ => {}
                },
                Wake::Frame(Err(e)) => {
                    s.errors += 1;
                    s.first_error.get_or_insert_with(|| e.to_string());
                    Live::add(&self.live.errors, 1);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Wake::Timer => {}
            }
            // Retransmit what is overdue.
            let now = Instant::now();
            let mut k = 0;
            while k < flights.len() {
                if flights[k].last_sent + self.retry > now {
                    k += 1;
                    continue;
                }
                if flights[k].retries >= self.max_retries {
                    flights.swap_remove(k);
                    s.given_up += 1;
                    Live::add(&self.live.errors, 1);
                    continue;
                }
                let f = &mut flights[k];
                f.retries += 1;
                f.last_sent = now;
                s.retransmits += 1;
                if dev
                    .publish(QoS::One, true, f.msg_id, f.stamp)
                    .await
                    .is_err()
                {
                    s.errors += 1;
                }
                k += 1;
            }
        }
        (vec![dev], vec![s])
    }
}
