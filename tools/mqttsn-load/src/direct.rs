//! `direct`: the same load published straight to the broker over MQTT (rumqttc), for a
//! side-by-side comparison with `publish`. Each client has an event loop task and a producer
//! task; QoS 1 uses a window of `--inflight` messages per client (the producer waits for a
//! PUBACK to free a slot, so timestamps are taken when a message can really go).
//!
//! rumqttc's own overhead is part of the figures: it allocates the topic and payload of every
//! message, and writes and flushes (one syscall) every packet separately.

use crate::common::{
    drain, per_sec, print_arrivals, print_tail, Limit, Pacer, Progress, RunLength, Totals, Watched,
};
use crate::payload::{self, Stamp};
use crate::stats::{nanos, now_ns, Histogram, Live, SeqSet};
use crate::subscriber::{options, Subscriber};
use bytes::Bytes;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::time::Instant;

/// Parameters of a `direct` run.
#[derive(Debug, Clone)]
pub struct Params {
    pub broker: (String, u16),
    pub clients: u32,
    pub qos1: bool,
    pub rate: f64,
    pub length: RunLength,
    pub payload: usize,
    pub inflight: u16,
    pub drain: Duration,
    pub quiet: bool,
    /// Also write the results as JSON here (`--json`).
    pub json: Option<std::path::PathBuf>,
    pub watched: Watched,
}

/// What one client's event loop saw.
#[derive(Debug, Default)]
struct LoopResult {
    index: u32,
    written: u64,
    acked: u64,
    acked_set: SeqSet,
    errors: u64,
    first_error: Option<String>,
}

pub async fn run(p: Params) -> Result<(), String> {
    let run = crate::common::run_id();
    let prefix = format!("load/{run}/");
    let qos = if p.qos1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let live = Arc::new(Live::default());
    let e2e = Arc::new(Histogram::default());
    let rtt = Arc::new(Histogram::default());
    let sub = Subscriber::start(
        &format!("mqttsn-load-sub-{run}"),
        (&p.broker.0, p.broker.1),
        &format!("{prefix}#"),
        qos,
        p.clients as usize,
        Arc::clone(&e2e),
        Arc::clone(&live),
    )
    .await?;

    // Connect every client first.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = Vec::new();
    let mut clients = Vec::new();
    let setup_start = Instant::now();
    for index in 0..p.clients {
        let mut opts = options(&format!("l{run}-{index}"), &p.broker.0, p.broker.1);
        opts.set_inflight(p.inflight.max(1));
        let (client, mut eventloop) = crate::subscriber::client(opts, 1024);
        let window = Arc::new(Semaphore::new(usize::from(p.inflight.max(1))));
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let live = Arc::clone(&live);
        let rtt = Arc::clone(&rtt);
        let mut stop = stop_rx.clone();
        let slots = Arc::clone(&window);
        let qos1 = p.qos1;
        loops.push(tokio::spawn(async move {
            let mut r = LoopResult {
                index,
                ..LoopResult::default()
            };
            let mut ready = Some(ready_tx);
            // Packet id -> (sequence number, when written). Outgoing publishes come out in
            // the order they were requested, so the k-th one carries sequence number k.
            let mut pending: HashMap<u16, (u32, Instant)> = HashMap::new();
            let mut out_seq = 0u32;
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
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        r.written += 1;
                        Live::add(&live.sent, 1);
                        if qos1 {
                            pending.insert(pkid, (out_seq, Instant::now()));
                        }
                        out_seq += 1;
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some((seq, at)) = pending.remove(&ack.pkid) {
                            r.acked += 1;
                            r.acked_set.insert(seq);
                            rtt.record(nanos(at.elapsed()));
                            Live::add(&live.acked, 1);
                            slots.add_permits(1);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        r.errors += 1;
                        Live::add(&live.errors, 1);
                        r.first_error.get_or_insert_with(|| e.to_string());
                        if let Some(t) = ready.take() {
                            let _ = t.send(Err(e.to_string()));
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            r
        }));
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(format!("client {index}: {e}")),
            _ => return Err(format!("client {index}: no CONNACK within 10 s")),
        }
        clients.push((client, window));
    }
    println!(
        "setup: {} clients connected in {:.2} s",
        p.clients,
        setup_start.elapsed().as_secs_f64()
    );

    let progress = Progress::start(Arc::clone(&live), p.quiet);
    let before = p.watched.sample();
    let t0 = Instant::now();
    let t0_ns = now_ns();
    let limit = p.length.limit(t0);
    let n = clients.len();
    let produced = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut producers = Vec::new();
    for (i, (client, window)) in clients.iter().enumerate() {
        let producer = Producer {
            client: client.clone(),
            window: Arc::clone(window),
            qos1: p.qos1,
            topic: format!("{prefix}{i}"),
            index: i as u32,
            payload: p.payload,
            pacer: Pacer::new(p.rate / n as f64, t0),
            limit: limit.share(i, n),
            produced: Arc::clone(&produced),
        };
        producers.push(tokio::spawn(producer.run()));
    }
    for h in producers {
        let _ = h.await;
    }
    let total = Live::get(&produced);
    // Wait for the event loops to write (and, at QoS 1, get acknowledged) everything.
    let _ = drain(&live, p.drain, || {
        Live::get(&live.sent) >= total && (!p.qos1 || Live::get(&live.acked) >= total)
    })
    .await;
    let send_time = t0.elapsed();
    let drained = drain(&live, p.drain, || Live::get(&live.received) >= total).await;
    let after = p.watched.sample();
    progress.stop().await;
    let _ = stop_tx.send(true);
    let mut results = Vec::new();
    for h in loops {
        if let Ok(r) = h.await {
            results.push(r);
        }
    }
    for (client, _) in &clients {
        let _ = client.try_disconnect();
    }
    let received = sub.finish().await;

    let written: u64 = results.iter().map(|r| r.written).sum();
    let acked: u64 = results.iter().map(|r| r.acked).sum();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let unique = received.unique();
    let mut lost = 0u64;
    let mut acked_missing = 0u64;
    for r in &results {
        let got = received.seqs.get(r.index as usize);
        lost += r.written - got.map_or(0, |s| s.count_below(r.written));
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
        "  sent (written)      {written} in {:.2} s = {} (achieved send rate)",
        send_time.as_secs_f64(),
        per_sec(written, send_time)
    );
    if p.qos1 {
        println!(
            "  acked (PUBACK)      {acked} = {}",
            per_sec(acked, send_time)
        );
    }
    print_arrivals(
        unique,
        recv_time,
        lost,
        written,
        drained,
        p.qos1.then_some(acked_missing),
    );
    println!(
        "  duplicates          {}; reordered {}; foreign {}; subscriber reconnects {}; client errors {errors}",
        received.duplicates, received.reordered, received.foreign, received.reconnects
    );
    if let Some(e) = results.iter().find_map(|r| r.first_error.as_deref()) {
        println!("  first client error  {e}");
    }
    let totals = Totals {
        qos1: p.qos1,
        sent: written,
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
            "direct qos={} clients={} offered={}",
            u8::from(p.qos1),
            p.clients,
            p.rate
        ),
        &totals,
        &p.watched.describe(&before, &after),
        p.json.as_deref(),
    );
    Ok(())
}

/// Creates one client's messages at its share of the rate.
struct Producer {
    client: AsyncClient,
    window: Arc<Semaphore>,
    qos1: bool,
    topic: String,
    index: u32,
    payload: usize,
    pacer: Pacer,
    limit: Limit,
    produced: Arc<std::sync::atomic::AtomicU64>,
}

impl Producer {
    async fn run(mut self) {
        let qos = if self.qos1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        let mut buf = vec![0u8; self.payload.max(payload::HEADER)];
        let mut seq = 0u32;
        loop {
            if self.limit.reached(u64::from(seq), Instant::now()) {
                break;
            }
            self.pacer.wait().await;
            if self.qos1 {
                // A PUBACK that never comes (e.g. lost in a reconnect) must not hang the run.
                match tokio::time::timeout(Duration::from_secs(30), self.window.acquire()).await {
                    Ok(Ok(permit)) => permit.forget(),
                    _ => break,
                }
                // The slot may have taken a while: the run may be over.
                if self.limit.reached(u64::from(seq), Instant::now()) {
                    self.window.add_permits(1);
                    break;
                }
            }
            payload::write(
                &mut buf,
                Stamp {
                    sent_ns: now_ns(),
                    device: self.index,
                    seq,
                },
            );
            let bytes = Bytes::copy_from_slice(&buf);
            if self
                .client
                .publish_bytes(self.topic.clone(), qos, false, bytes)
                .await
                .is_err()
            {
                break;
            }
            seq += 1;
            Live::add(&self.produced, 1);
        }
    }
}
