//! `soak`: many devices for a long time, each living a sensor's life: a message every period
//! (QoS 0 for even devices, QoS 1 for odd ones, waiting for PUBACK and resending with DUP), and
//! for every third device sleep cycles (DISCONNECT with a duration, sleep, wake with PINGREQ
//! until PINGRESP). The gateway's VmRSS is sampled every `--sample` seconds; at the end the
//! samples after the warm-up are compared, and every message is checked at the subscriber.

use crate::common::{drain, print_arrivals, rss_kib};
use crate::payload::Stamp;
use crate::sn::{self, Device, Then, Timing};
use crate::stats::{now_ns, Histogram, Live, Rng};
use mqttsn_codec::{Message, QoS, ReturnCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Parameters of a `soak` run.
#[derive(Debug, Clone)]
pub struct Params {
    pub gateway: SocketAddr,
    pub broker: (String, u16),
    pub devices: u32,
    pub duration: Duration,
    /// Time between two messages of one device.
    pub period: Duration,
    /// How long a sleeper sleeps.
    pub sleep: Duration,
    pub payload: usize,
    pub timing: Timing,
    pub setup_concurrency: usize,
    pub gateway_pid: Option<u32>,
    pub sample: Duration,
    pub warm_up: Duration,
    pub quiet: bool,
}

/// What one device did.
#[derive(Debug, Default)]
struct Life {
    index: u32,
    sent: u64,
    acked: u64,
    rejected: u64,
    resends: u64,
    sleeps: u64,
    failures: u64,
}

pub async fn run(p: Params) -> Result<(), String> {
    let run = crate::common::run_id();
    let prefix = format!("soak/{run}/");
    let live = Arc::new(Live::default());
    let e2e = Arc::new(Histogram::default());
    let plan = sn::Plan {
        gateway: p.gateway,
        devices: p.devices,
        client_prefix: format!("s{run}-"),
        payload_len: p.payload,
        concurrency: p.setup_concurrency,
        timing: p.timing,
        dtls_psk: None,
        then: Then::Register {
            prefix: prefix.clone(),
        },
    };
    let (sub, devices) = sn::subscriber_and_publishers(
        (&p.broker.0, p.broker.1),
        &format!("mqttsn-load-soak-{run}"),
        rumqttc::QoS::AtLeastOnce,
        &prefix,
        plan,
        &e2e,
        &live,
    )
    .await?;
    let t0 = Instant::now();
    let end = t0 + p.duration;
    let ready = devices.len();
    let mut handles = Vec::with_capacity(ready);
    for (i, dev) in devices.into_iter().enumerate() {
        // Spread the devices' first messages over one period.
        let start = t0 + p.period.mul_f64(i as f64 / ready as f64);
        handles.push(tokio::spawn(live_a_life(
            dev,
            start,
            end,
            p.clone(),
            Arc::clone(&live),
        )));
    }
    let rss = sample_rss(&p, t0, end).await;
    let mut lives = Vec::with_capacity(ready);
    let mut devices = Vec::with_capacity(ready);
    for h in handles {
        if let Ok((dev, life)) = h.await {
            devices.push(dev);
            lives.push(life);
        }
    }
    let sent: u64 = lives.iter().map(|l| l.sent).sum();
    let drained = drain(&live, Duration::from_secs(5), || {
        Live::get(&live.received) >= sent
    })
    .await;
    let received = sub.finish().await;
    let mut lost = 0;
    for l in &lives {
        let got = received.seqs.get(l.index as usize);
        lost += l.sent - got.map_or(0, |s| s.count_below(l.sent));
    }
    let sum = |f: fn(&Life) -> u64| lives.iter().map(f).sum::<u64>();
    println!("results:");
    println!(
        "  devices {ready} for {:.0} s; sent {sent} ({:.0}/s); QoS 1 acked {}, rejected {}, resends {}; sleep cycles {}; failed exchanges {}",
        p.duration.as_secs_f64(),
        sent as f64 / p.duration.as_secs_f64(),
        sum(|l| l.acked),
        sum(|l| l.rejected),
        sum(|l| l.resends),
        sum(|l| l.sleeps),
        sum(|l| l.failures),
    );
    print_arrivals(received.unique(), p.duration, lost, sent, drained, None);
    // A refused QoS 1 message (the device was told) and one that could not be sent are not
    // silent losses.
    let told = sum(|l| l.rejected) + sum(|l| l.failures);
    println!(
        "  lost silently       {} (lost less those refused or not sent)",
        lost.saturating_sub(told)
    );
    println!("  latency end-to-end  {}", e2e.summary());
    let flat = report_rss(&rss, p.warm_up);
    println!(
        "summary: soak devices={ready} duration={:.0} sent={sent} lost={lost} sleeps={} rss_kib_min={} rss_kib_max={} rss_spread_pct={:.1}",
        p.duration.as_secs_f64(),
        sum(|l| l.sleeps),
        flat.0,
        flat.1,
        flat.2
    );
    let unanswered = sn::disconnect_all(devices, p.setup_concurrency).await;
    if unanswered > 0 {
        println!("note: {unanswered} devices got no answer to DISCONNECT");
    }
    Ok(())
}

/// One device's life until `end`.
async fn live_a_life(
    mut dev: Device,
    start: Instant,
    end: Instant,
    p: Params,
    live: Arc<Live>,
) -> (Device, Life) {
    let mut life = Life {
        index: dev.index,
        ..Life::default()
    };
    let qos1 = dev.index % 2 == 1;
    let sleeper = dev.index.is_multiple_of(3);
    let mut rng = Rng::new(u64::from(dev.index) ^ 0x50a4);
    let mut next = start;
    while next < end {
        sleep_until(next).await;
        let stamp = Stamp {
            sent_ns: now_ns(),
            device: dev.index,
            seq: life.sent as u32,
        };
        if qos1 {
            match publish_qos1(&mut dev, stamp, &p.timing, &mut life).await {
                Some(ReturnCode::Accepted) => life.acked += 1,
                Some(_) => life.rejected += 1,
                None => life.failures += 1,
            }
        } else if dev.publish(QoS::Zero, false, 0, stamp).await.is_err() {
            life.failures += 1;
        }
        life.sent += 1;
        Live::add(&live.sent, 1);
        next += rng.jitter(p.period, 0.2);
        // Every third device sleeps after every other message, and wakes before the next.
        if sleeper && life.sent.is_multiple_of(2) && Instant::now() + p.sleep < end {
            if sleep_cycle(&mut dev, p.sleep, &p.timing).await {
                life.sleeps += 1;
            } else {
                life.failures += 1;
            }
            next = next.max(Instant::now());
        }
    }
    (dev, life)
}

/// A QoS 1 PUBLISH until its PUBACK (resent with DUP after `timing.retry`, three times).
async fn publish_qos1(
    dev: &mut Device,
    stamp: Stamp,
    timing: &Timing,
    life: &mut Life,
) -> Option<ReturnCode> {
    let msg_id = dev.next_msg_id();
    for attempt in 0..4 {
        dev.publish(QoS::One, attempt > 0, msg_id, stamp)
            .await
            .ok()?;
        if attempt > 0 {
            life.resends += 1;
        }
        let until = Instant::now() + timing.retry;
        while let Ok(Ok(n)) = timeout_until(until, dev.recv()).await {
            if let Ok(Message::PubAck(a)) = Message::decode(&dev.rx[..n]) {
                if a.msg_id == msg_id {
                    return Some(a.return_code);
                }
            }
        }
    }
    None
}

/// DISCONNECT with a duration (answered by DISCONNECT), sleep, then PINGREQ with the ClientId
/// until PINGRESP (messages buffered meanwhile come first).
async fn sleep_cycle(dev: &mut Device, duration: Duration, timing: &Timing) -> bool {
    // Whole seconds, rounded up: a device announcing less than it sleeps would be lost.
    let secs = u16::try_from(duration.as_secs_f64().ceil().max(1.0) as u64).unwrap_or(u16::MAX);
    if !exchange(
        dev,
        Message::Disconnect {
            duration: Some(secs),
        },
        timing,
        |m| matches!(m, Message::Disconnect { .. }),
    )
    .await
    {
        return false;
    }
    sleep(duration).await;
    let id = dev.client_id.clone();
    exchange(
        dev,
        Message::PingReq {
            client_id: Some(&id),
        },
        timing,
        |m| matches!(m, Message::PingResp),
    )
    .await
}

/// Sends `msg` until an answer `done` recognises arrives (three resends).
async fn exchange(
    dev: &mut Device,
    msg: Message<'_>,
    timing: &Timing,
    done: impl Fn(&Message<'_>) -> bool,
) -> bool {
    for _ in 0..4 {
        if dev.send_msg(msg).await.is_err() {
            return false;
        }
        let until = Instant::now() + timing.retry;
        while let Ok(Ok(n)) = timeout_until(until, dev.recv()).await {
            if Message::decode(&dev.rx[..n]).is_ok_and(|m| done(&m)) {
                return true;
            }
        }
    }
    false
}

async fn timeout_until<F: std::future::Future>(
    until: Instant,
    f: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    timeout(until.saturating_duration_since(Instant::now()), f).await
}

/// The gateway's VmRSS every `p.sample` until `end`: (seconds since start, KiB).
async fn sample_rss(p: &Params, t0: Instant, end: Instant) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    let Some(pid) = p.gateway_pid.map(|pid| pid.to_string()) else {
        sleep_until(end).await;
        return samples;
    };
    let mut at = t0;
    while at <= end {
        sleep_until(at).await;
        if let Some(kib) = rss_kib(&pid) {
            let t = at.duration_since(t0).as_secs_f64();
            if !p.quiet {
                eprintln!("[{t:>6.0} s] gateway VmRSS {kib} KiB");
            }
            samples.push((t, kib));
        }
        at += p.sample;
    }
    samples
}

/// Prints the RSS samples and returns (min, max, spread in % of min) after the warm-up.
fn report_rss(samples: &[(f64, u64)], warm_up: Duration) -> (u64, u64, f64) {
    if samples.is_empty() {
        println!("  gateway VmRSS       not sampled (no --gateway-pid)");
        return (0, 0, 0.0);
    }
    let series: Vec<String> = samples
        .iter()
        .map(|(t, k)| format!("{t:.0}s:{k}"))
        .collect();
    println!("  gateway VmRSS KiB   {}", series.join(" "));
    let after: Vec<u64> = samples
        .iter()
        .filter(|(t, _)| *t >= warm_up.as_secs_f64())
        .map(|(_, k)| *k)
        .collect();
    let (min, max) = (
        after.iter().copied().min().unwrap_or(0),
        after.iter().copied().max().unwrap_or(0),
    );
    let spread = if min > 0 {
        100.0 * (max - min) as f64 / min as f64
    } else {
        0.0
    };
    println!(
        "  after the {:.0} s warm-up: {min}..{max} KiB, spread {spread:.1} %",
        warm_up.as_secs_f64()
    );
    (min, max, spread)
}
