//! `connect-storm`: N devices, each with its own socket, send CONNECT at the same moment; the
//! run reports how fast the gateway accepted them all (retrying "rejected: congestion"), the
//! CONNECT->CONNACK latency, and (with `--gateway-pid`) the gateway's resident memory before and
//! with every device connected. `--hold` keeps the devices connected (with PINGREQ) for a while,
//! e.g. to look at the gateway and broker from outside.

use crate::common::{rss_kib, UdpDrops, Watched};
use crate::sn::{Device, SetupCounters, Timing};
use crate::stats::{fmt_ns, nanos, now_ns, Histogram, Live, Rng};
use mqttsn_codec::Message;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

/// Parameters of a `connect-storm` run.
#[derive(Debug, Clone)]
pub struct Params {
    pub gateway: SocketAddr,
    pub devices: u32,
    pub timing: Timing,
    pub hold: Duration,
    pub gateway_pid: Option<u32>,
    pub disconnect_concurrency: usize,
    pub quiet: bool,
    pub watched: Watched,
}

pub async fn run(p: Params) -> Result<(), String> {
    let run = crate::common::run_id();
    let rss = |stage: &str| {
        if let Some(pid) = p.gateway_pid {
            match rss_kib(&pid.to_string()) {
                Some(kib) => println!(
                    "gateway VmRSS {stage}: {kib} KiB ({:.1} MiB)",
                    kib as f64 / 1024.0
                ),
                None => println!("gateway VmRSS {stage}: cannot read /proc/{pid}/status"),
            }
        }
        p.gateway_pid
            .and_then(|pid| rss_kib(&pid.to_string()))
            .unwrap_or(0)
    };
    let rss_before = rss("before the storm");

    let counters = Arc::new(SetupCounters::default());
    let (go_tx, go_rx) = watch::channel(false);
    let (release_tx, release_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Result<Duration, String>>();
    let opened = Arc::new(AtomicU64::new(0));
    // When the last device began its CONNECT (process clock, ns): shows whether this tool
    // or the gateway set the pace.
    let last_start = Arc::new(AtomicU64::new(0));
    let bye = Arc::new(Semaphore::new(p.disconnect_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(p.devices as usize);
    for index in 0..p.devices {
        let (mut go, mut release) = (go_rx.clone(), release_rx.clone());
        let (done, opened, counters, bye, last_start) = (
            done_tx.clone(),
            Arc::clone(&opened),
            Arc::clone(&counters),
            Arc::clone(&bye),
            Arc::clone(&last_start),
        );
        let (gateway, timing, client_id) = (p.gateway, p.timing, format!("l{run}-{index}"));
        tasks.push(tokio::spawn(async move {
            let mut dev = match Device::open(index, gateway, client_id, 16).await {
                Ok(dev) => dev,
                Err(e) => {
                    let _ = done.send(Err(format!("socket: {e}")));
                    return false;
                }
            };
            Live::add(&opened, 1);
            if go.wait_for(|go| *go).await.is_err() {
                return false;
            }
            let mut rng = Rng::new(u64::from(index));
            let t = Instant::now();
            last_start.fetch_max(now_ns(), std::sync::atomic::Ordering::Relaxed);
            let result = dev.connect(&timing, &counters, &mut rng).await;
            let ok = result.is_ok();
            let _ = done.send(result.map(|()| t.elapsed()).map_err(|e| e.to_string()));
            if !ok {
                return false;
            }
            // Hold: answer nothing, but keep the session alive and the socket drained.
            let ping_every = Duration::from_secs(u64::from(timing.keep_alive.max(2) / 2));
            let mut next_ping = Instant::now() + ping_every;
            loop {
                if *release.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    r = release.changed() => if r.is_err() { break },
                    _ = tokio::time::sleep_until(next_ping), if timing.keep_alive > 0 => {
                        let _ = dev.send_msg(Message::PingReq { client_id: None }).await;
                        next_ping = Instant::now() + ping_every;
                    }
                    _ = dev.recv() => {}
                }
            }
            let _permit = bye.acquire().await.ok();
            dev.disconnect().await
        }));
    }
    drop(done_tx);
    // Everyone has a socket and waits for the signal.
    let open_deadline = Instant::now() + Duration::from_secs(60);
    while Live::get(&opened) < u64::from(p.devices) && Instant::now() < open_deadline {
        if done_rx.is_closed() && done_rx.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let open_failures = u64::from(p.devices) - Live::get(&opened);
    // Give the waiting tasks a moment to park on the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "{} devices have their sockets; sending every CONNECT now",
        Live::get(&opened)
    );
    let before = p.watched.sample();
    let drops_before = UdpDrops::read(p.gateway);
    let latency = Histogram::default();
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let _ = go_tx.send(true);
    let mut accepted = 0u64;
    let mut failed = 0u64;
    let mut first_error = None;
    let mut last_ok = Duration::ZERO;
    let mut reported = 0u64;
    let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
    loop {
        tokio::select! {
            r = done_rx.recv() => match r {
                Some(Ok(lat)) => {
                    accepted += 1;
                    latency.record(nanos(lat));
                    last_ok = t0.elapsed();
                }
                Some(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
                None => break,
            },
            _ = tick.tick(), if !p.quiet => {
                eprintln!(
                    "  {:6.1} s  accepted {accepted:>7} (+{})  congestion answers {}  resends {}  failed {failed}",
                    t0.elapsed().as_secs_f64(),
                    accepted - reported,
                    Live::get(&counters.congestion),
                    Live::get(&counters.resends),
                );
                reported = accepted;
            }
        }
        if accepted + failed + open_failures >= u64::from(p.devices) {
            break;
        }
    }
    let after = p.watched.sample();
    let drops = UdpDrops::read(p.gateway).since(&drops_before);
    let rss_connected = rss("with every device connected");
    println!("results:");
    println!(
        "  devices             {} ({} accepted, {} failed{})",
        p.devices,
        accepted,
        failed + open_failures,
        first_error
            .as_deref()
            .map(|e| format!(", first error: {e}"))
            .unwrap_or_default()
    );
    println!(
        "  all accepted after  {:.3} s = {:.0} connects/s",
        last_ok.as_secs_f64(),
        accepted as f64 / last_ok.as_secs_f64().max(1e-9)
    );
    println!(
        "  last CONNECT sent   {:.3} s after the start (the pace this tool could send at)",
        Live::get(&last_start).saturating_sub(t0_ns) as f64 / 1e9
    );
    println!("  CONNECT->CONNACK    {}", latency.summary());
    println!(
        "  congestion answers  {}; resends after {} ms without answer: {}",
        Live::get(&counters.congestion),
        p.timing.retry.as_millis(),
        Live::get(&counters.resends)
    );
    println!(
        "  UDP buffer drops    {} at the gateway's socket, {} at the devices' sockets (kernel counters)",
        drops.gateway, drops.devices
    );
    println!("  {}", p.watched.describe(&before, &after));
    if p.gateway_pid.is_some() && accepted > 0 {
        println!(
            "  gateway memory      {} KiB before, {} KiB connected: {:.0} bytes per device",
            rss_before,
            rss_connected,
            (rss_connected as f64 - rss_before as f64) * 1024.0 / accepted as f64
        );
    }
    println!(
        "summary: connect-storm devices={} accepted={accepted} seconds={:.3} connects/s={:.0} p50={} p99={} max={} congestion={} resends={}{}",
        p.devices,
        last_ok.as_secs_f64(),
        accepted as f64 / last_ok.as_secs_f64().max(1e-9),
        fmt_ns(latency.quantile(0.5)),
        fmt_ns(latency.quantile(0.99)),
        fmt_ns(latency.max()),
        Live::get(&counters.congestion),
        Live::get(&counters.resends),
        if p.gateway_pid.is_some() {
            format!(" gateway_rss_before_kib={rss_before} gateway_rss_connected_kib={rss_connected}")
        } else {
            String::new()
        }
    );
    if !p.hold.is_zero() {
        println!("holding the connections for {:.0} s", p.hold.as_secs_f64());
        tokio::time::sleep(p.hold).await;
        rss("after holding");
    }
    let _ = release_tx.send(true);
    let mut unanswered = 0;
    for t in tasks {
        if !matches!(t.await, Ok(true)) {
            unanswered += 1;
        }
    }
    let not_connected = failed + open_failures;
    if unanswered as u64 > not_connected {
        println!(
            "note: {} devices got no answer to DISCONNECT",
            unanswered as u64 - not_connected
        );
    }
    rss("after every device disconnected");
    Ok(())
}
