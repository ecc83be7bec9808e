//! The MQTT subscriber (rumqttc) on the broker that counts what arrives from the publishers:
//! unique messages per device, duplicates, reordering, and end-to-end latency from the send
//! timestamp in the payload.

use crate::payload;
use crate::stats::{now_ns, Histogram, Live, SeqSet};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Packet, QoS};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// What the subscriber saw.
#[derive(Debug, Default)]
pub struct Received {
    /// Unique sequence numbers per device index.
    pub seqs: Vec<SeqSet>,
    /// Messages that arrived more than once.
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same device.
    pub reordered: u64,
    /// Messages whose payload had no valid header or an unknown device index.
    pub foreign: u64,
    /// Times the connection to the broker broke.
    pub reconnects: u64,
}

impl Received {
    /// Unique messages.
    pub fn unique(&self) -> u64 {
        self.seqs.iter().map(SeqSet::len).sum()
    }
}

/// A running subscriber.
pub struct Subscriber {
    stop: watch::Sender<bool>,
    task: JoinHandle<Received>,
    /// Kept so that the event loop's request channel stays open.
    _client: AsyncClient,
}

/// MQTT options for the tool's own clients.
pub fn options(client_id: &str, host: &str, port: u16) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// A rumqttc client with TCP_NODELAY (rumqttc leaves Nagle on by default, which holds small
/// packets back for milliseconds and would be counted as broker latency).
pub fn client(options: MqttOptions, cap: usize) -> (AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, cap);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    (client, eventloop)
}

impl Subscriber {
    /// Connects, subscribes to `filter` at `qos` and returns once the broker granted it.
    pub async fn start(
        client_id: &str,
        broker: (&str, u16),
        filter: &str,
        qos: QoS,
        devices: usize,
        latency: Arc<Histogram>,
        live: Arc<Live>,
    ) -> Result<Subscriber, String> {
        let (client, mut eventloop) = AsyncClient::new(options(client_id, broker.0, broker.1), 16);
        let (stop, mut stopped) = watch::channel(false);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
        let sub_client = client.clone();
        let filter = filter.to_string();
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut rx = Received {
                seqs: vec![SeqSet::default(); devices],
                ..Received::default()
            };
            let mut last_seq: Vec<Option<u32>> = vec![None; devices];
            loop {
                let event = tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    event = eventloop.poll() => event,
                };
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let now = now_ns();
                        live.arrived(now);
                        let Some(stamp) = payload::read(&p.payload) else {
                            rx.foreign += 1;
                            continue;
                        };
                        let i = stamp.device as usize;
                        let Some(set) = rx.seqs.get_mut(i) else {
                            rx.foreign += 1;
                            continue;
                        };
                        latency.record(now.saturating_sub(stamp.sent_ns));
                        if !set.insert(stamp.seq) {
                            rx.duplicates += 1;
                        }
                        if let Some(slot) = last_seq.get_mut(i) {
                            if slot.is_some_and(|l| stamp.seq < l) {
                                rx.reordered += 1;
                            }
                            *slot = Some(slot.map_or(stamp.seq, |l| l.max(stamp.seq)));
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        // (Re)subscribe on every connection: the session is clean.
                        if let Err(e) = sub_client.try_subscribe(filter.clone(), qos) {
                            if let Some(r) = ready.take() {
                                let _ = r.send(Err(format!("subscribe: {e}")));
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if let Some(r) = ready.take() {
                            let ok = ack
                                .return_codes
                                .iter()
                                .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure));
                            let _ = r.send(if ok {
                                Ok(())
                            } else {
                                Err("the broker refused the subscription".to_string())
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        rx.reconnects += 1;
                        Live::add(&live.errors, 1);
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(format!("broker connection: {e}")));
                            break;
                        }
                        eprintln!("subscriber: broker connection: {e}; reconnecting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            rx
        });
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Subscriber {
                stop,
                task,
                _client: client,
            }),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err("subscriber task ended".to_string()),
            Err(_) => Err("no SUBACK from the broker within 10 s".to_string()),
        }
    }

    /// Stops and returns what was received.
    pub async fn finish(self) -> Received {
        // Stopping drops the connection; a DISCONNECT first would race with the stop and show
        // up as a broken connection.
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}
