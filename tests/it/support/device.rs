//! An MQTT-SN device for tests: its own UDP socket, frames built with the project's codec.

use super::PATIENCE;
use mqttsn_gateway::codec::*;
use std::net::SocketAddr;
use tokio::net::UdpSocket;

/// A device talking to the gateway at `gw`.
pub struct Device {
    pub socket: UdpSocket,
    pub gw: SocketAddr,
}

impl Device {
    /// A device with a fresh socket on 127.0.0.1.
    pub async fn new(gw: SocketAddr) -> Device {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        Device { socket, gw }
    }

    /// A device with a fresh socket on `ip` (another loopback address, 127.0.0.2, stands
    /// for a device on another network).
    pub async fn new_at(ip: &str, gw: SocketAddr) -> Device {
        let socket = UdpSocket::bind((ip, 0)).await.expect("bind");
        Device { socket, gw }
    }

    /// Sends one message.
    pub async fn send(&self, msg: Message<'_>) {
        let bytes = msg.to_vec().expect("encodable");
        self.socket.send_to(&bytes, self.gw).await.expect("send");
    }

    /// The next frame from the gateway (panics after [`PATIENCE`]).
    pub async fn recv(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 65_536];
        let (n, _) = tokio::time::timeout(PATIENCE, self.socket.recv_from(&mut buf))
            .await
            .expect("a frame from the gateway in time")
            .expect("recv");
        buf.truncate(n);
        buf
    }

    /// Receives frames until one satisfies `want`, returning it (others are skipped).
    pub async fn recv_until(&self, want: impl Fn(&Message<'_>) -> bool) -> Vec<u8> {
        loop {
            let bytes = self.recv().await;
            let ok = Message::decode(&bytes).map(|m| want(&m)).unwrap_or(false);
            if ok {
                return bytes;
            }
        }
    }

    /// REGISTER `topic` and return the assigned id.
    pub async fn register(&self, topic: &str, msg_id: u16) -> u16 {
        self.send(Message::Register(Register {
            topic_id: 0,
            msg_id,
            topic_name: topic,
        }))
        .await;
        let reply = self.recv().await;
        match Message::decode(&reply) {
            Ok(Message::RegAck(RegAck {
                topic_id,
                msg_id: m,
                return_code: ReturnCode::Accepted,
            })) if m == msg_id => topic_id,
            other => panic!("expected REGACK for {topic}, got {other:?}"),
        }
    }

    /// PUBLISH on a normal topic id.
    pub async fn publish(&self, topic_id: u16, qos: QoS, msg_id: u16, data: &[u8]) {
        self.send(Message::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: TopicRef::Id(topic_id),
            msg_id,
            data,
        }))
        .await;
    }

    /// SUBSCRIBE and return the SUBACK.
    pub async fn subscribe(&self, topic: TopicFilter<'_>, qos: QoS, msg_id: u16) -> SubAck {
        self.send(Message::Subscribe(Subscribe {
            dup: false,
            qos,
            msg_id,
            topic,
        }))
        .await;
        let reply = self.recv_until(|m| matches!(m, Message::SubAck(_))).await;
        match Message::decode(&reply) {
            Ok(Message::SubAck(ack)) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
}

/// Connects a device, retrying while the gateway's broker connection comes up (CONNACK
/// congestion until then).
pub async fn connect(device: &Device, client_id: &str, keep_alive: u16, will: bool) {
    for _ in 0..200 {
        device
            .send(Message::Connect(Connect {
                will,
                clean_session: true,
                duration: keep_alive,
                client_id,
            }))
            .await;
        let reply = device.recv().await;
        match Message::decode(&reply) {
            Ok(Message::ConnAck {
                return_code: ReturnCode::Congestion,
            }) => tokio::task::yield_now().await,
            Ok(Message::ConnAck {
                return_code: ReturnCode::Accepted,
            }) if !will => return,
            Ok(Message::WillTopicReq) if will => return,
            other => panic!("unexpected answer to CONNECT: {other:?}"),
        }
    }
    panic!("the gateway never accepted {client_id}");
}

/// CONNECTs without a will, with the given CleanSession flag, until the gateway accepts it
/// (CONNACK "congestion" while its broker connection comes up).
pub async fn connect_session(device: &Device, client_id: &str, clean_session: bool) {
    for _ in 0..500 {
        device
            .send(Message::Connect(Connect {
                will: false,
                clean_session,
                duration: 60,
                client_id,
            }))
            .await;
        match Message::decode(&device.recv().await) {
            Ok(Message::ConnAck {
                return_code: ReturnCode::Accepted,
            }) => return,
            Ok(Message::ConnAck {
                return_code: ReturnCode::Congestion,
            }) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            other => panic!("unexpected answer to CONNECT: {other:?}"),
        }
    }
    panic!("the gateway never accepted {client_id}");
}
