//! The broker side of a test: an MQTT client (rumqttc) that subscribes and collects what
//! arrives, and publishes.

use super::PATIENCE;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A message seen by the subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub qos: u8,
}

/// An MQTT client connected to the test broker.
pub struct Client {
    pub client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    acks: mpsc::UnboundedReceiver<()>,
}

impl Client {
    /// Connects to 127.0.0.1:`port` as `id` and waits for CONNACK.
    pub async fn connect(port: u16, id: &str) -> Client {
        Self::connect_with(port, id, true).await
    }

    /// Like [`Client::connect`] with CleanSession=0: the broker keeps the subscription and
    /// queues QoS 1 messages while the client is away.
    pub async fn connect_persistent(port: u16, id: &str) -> Client {
        Self::connect_with(port, id, false).await
    }

    /// Like [`Client::connect`], logging in as `username` with `password`.
    pub async fn connect_as(port: u16, id: &str, username: &str, password: &str) -> Client {
        Self::connect_full(port, id, true, Some((username, password))).await
    }

    async fn connect_with(port: u16, id: &str, clean: bool) -> Client {
        Self::connect_full(port, id, clean, None).await
    }

    async fn connect_full(port: u16, id: &str, clean: bool, login: Option<(&str, &str)>) -> Client {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((username, password)) = login {
            options.set_credentials(username, password);
        }
        options.set_clean_session(clean);
        options.set_keep_alive(std::time::Duration::from_secs(30));
        options.set_max_packet_size(1 << 20, 1 << 20);
        options.set_inflight(1000);
        let (client, mut eventloop) = AsyncClient::new(options, 100_000);
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (ack_tx, acks) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = seen_tx.send(Seen {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                            qos: p.qos as u8,
                        });
                    }
                    Ok(Event::Incoming(
                        Packet::ConnAck(_) | Packet::SubAck(_) | Packet::PubAck(_),
                    )) => {
                        let _ = ack_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => {
                        // The test broker went away (restart tests): try again shortly.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        let mut c = Client { client, seen, acks };
        c.ack().await; // CONNACK
        c
    }

    async fn ack(&mut self) {
        tokio::time::timeout(PATIENCE, self.acks.recv())
            .await
            .expect("broker acknowledgement in time")
            .expect("event loop alive");
    }

    /// Subscribes and waits for SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.ack().await;
    }

    /// Publishes and, for QoS 1, waits for PUBACK.
    pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish");
        if qos != QoS::AtMostOnce {
            self.ack().await;
        }
    }

    /// The next message, or a panic after [`PATIENCE`].
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("a message at the subscriber in time")
            .expect("event loop alive")
    }

    /// The next message, or `None` after `patience`.
    pub async fn next_within(&mut self, patience: std::time::Duration) -> Option<Seen> {
        tokio::time::timeout(patience, self.seen.recv())
            .await
            .ok()
            .flatten()
    }
}
