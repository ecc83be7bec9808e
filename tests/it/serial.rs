//! Serial transports end to end over pseudo-terminal pairs, with a real Mosquitto: a simulated
//! XBee coordinator with two remote nodes (API frames), a raw-framed UART node, sleeping and
//! waking over the radio, and the port vanishing and coming back (hot-plug).

use crate::support::mosquitto::Mosquitto;
use crate::support::mqtt::Client;
use crate::support::PATIENCE;
use bytes::BytesMut;
use mqttsn_gateway::codec::*;
use mqttsn_gateway::driver;
use mqttsn_gateway::transport::serial::framing::{
    raw::RawCodec, Deframer, Encoder, RadioAddr, Received,
};
use rumqttc::QoS as MqttQoS;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{SerialPort, SerialStream};

/// A pty pair: the gateway opens `path`; the test plays the radio on `line`.
struct Pty {
    line: SerialStream,
    path: String,
    /// The device side stays open in the test too (it never reads), so that the line does not
    /// report EIO before the gateway has opened `path`; dropping it is "unplugging".
    _device: SerialStream,
}

fn pty() -> Pty {
    let (line, device) = SerialStream::pair().expect("openpty");
    let path = device.name().expect("pty has a name");
    Pty {
        line,
        path,
        _device: device,
    }
}

/// A 0x90 ZigBee Receive Packet (API mode 1), as a coordinator emits for a node's frame.
fn rx_packet(from: RadioAddr, msg: Message<'_>) -> Vec<u8> {
    let mut data = vec![0x90];
    data.extend_from_slice(&from.addr64.to_be_bytes());
    data.extend_from_slice(&from.addr16.to_be_bytes());
    data.push(0x01); // receive options: acknowledged
    data.extend_from_slice(&msg.to_vec().unwrap());
    let sum: u8 = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let mut out = vec![0x7E, (data.len() >> 8) as u8, data.len() as u8];
    out.extend_from_slice(&data);
    out.push(0xFF - sum);
    out
}

/// The radio side of a link: frames out through a framing, items back through the same.
struct Radio<C: Deframer + Encoder> {
    line: SerialStream,
    codec: C,
}

impl<C: Deframer + Encoder> Radio<C> {
    async fn send(&mut self, msg: Message<'_>) {
        let mut out = BytesMut::new();
        self.codec
            .encode(&msg.to_vec().unwrap(), None, &mut out)
            .unwrap();
        self.line.write_all(&out).await.unwrap();
    }

    /// The next item the gateway wrote to the line, skipping ADVERTISE broadcasts.
    async fn recv(&mut self) -> Received {
        let mut buf = [0u8; 512];
        loop {
            if let Some(item) = self.codec.next() {
                match &item {
                    Received::Frame(f)
                        if matches!(Message::decode(&f.payload), Ok(Message::Advertise(_))) =>
                    {
                        continue
                    }
                    _ => return item,
                }
            }
            let n = tokio::time::timeout(PATIENCE, self.line.read(&mut buf))
                .await
                .expect("the gateway wrote to the serial line in time")
                .expect("pty read");
            self.codec.push(&buf[..n]);
        }
    }
}

/// For XBee: the gateway sends 0x10 Transmit Requests; decode the RF data and destination.
fn parse_tx_request(frame: &[u8]) -> (u64, Vec<u8>) {
    // 7E LEN(2) 10 FID DEST64(8) DEST16(2) RADIUS OPTIONS DATA.. CHK (API mode 1)
    assert_eq!(frame[3], 0x10, "a transmit request: {frame:02X?}");
    let dest = u64::from_be_bytes(frame[5..13].try_into().unwrap());
    (dest, frame[17..frame.len() - 1].to_vec())
}

/// Sends a node's frame through the simulated coordinator and returns the gateway's answer to
/// that node (broadcasts such as ADVERTISE are skipped), checking it is addressed to the node.
async fn exchange(line: &mut SerialStream, node: RadioAddr, msg: Message<'_>) -> Vec<u8> {
    line.write_all(&rx_packet(node, msg)).await.unwrap();
    to_node(line, node).await
}

/// The next frame the gateway sends to `node`, skipping broadcasts.
async fn to_node(line: &mut SerialStream, node: RadioAddr) -> Vec<u8> {
    loop {
        let (dest, reply) = parse_tx_request(&read_api_frame(line).await);
        if dest == 0xFFFF {
            continue; // ADVERTISE to all radios
        }
        assert_eq!(dest, node.addr64, "the reply goes to the node that asked");
        return reply;
    }
}

/// Reads one raw XBee API frame (mode 1) from the line.
async fn read_api_frame(line: &mut SerialStream) -> Vec<u8> {
    let mut header = [0u8; 3];
    tokio::time::timeout(PATIENCE, line.read_exact(&mut header))
        .await
        .expect("an API frame in time")
        .unwrap();
    assert_eq!(header[0], 0x7E);
    let len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    let mut rest = vec![0u8; len + 1];
    line.read_exact(&mut rest).await.unwrap();
    let mut frame = header.to_vec();
    frame.extend_from_slice(&rest);
    frame
}

fn connect(id: &str) -> Message<'_> {
    Message::Connect(Connect {
        will: false,
        clean_session: true,
        duration: 60,
        client_id: id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xbee_coordinator_with_two_nodes_and_a_raw_uart_node() {
    let broker = Mosquitto::start();
    let mut watcher = Client::connect(broker.port(), "serial-watch").await;
    watcher.subscribe("radio/#", MqttQoS::AtLeastOnce).await;
    let mut xbee = pty();
    let raw = pty();
    let serial = format!(
        "[[serial]]\nport = \"{}\"\nbaud = 115200\nframing = \"xbee-api\"\nxbee_api_mode = 1\n\
         [[serial]]\nport = \"{}\"\nbaud = 115200\nframing = \"raw\"\n",
        xbee.path, raw.path
    );
    let gw = driver::start(broker.gateway_config(&serial)).await.unwrap();
    let node_a = RadioAddr::new(0x0013_A200_40A1_B2C3, 0x1234);
    let node_b = RadioAddr::new(0x0013_A200_40A1_B2C4, 0x5678);

    // Both radio nodes connect (retrying while the gateway's broker connection comes up).
    for (addr, id) in [(node_a, "node-a"), (node_b, "node-b")] {
        loop {
            let reply = exchange(&mut xbee.line, addr, connect(id)).await;
            match Message::decode(&reply).unwrap() {
                Message::ConnAck {
                    return_code: ReturnCode::Accepted,
                } => break,
                Message::ConnAck {
                    return_code: ReturnCode::Congestion,
                } => tokio::task::yield_now().await,
                other => panic!("{other:?}"),
            }
        }
    }
    // Each publishes through the coordinator; QoS 1 acknowledged to the right node.
    for (addr, name) in [(node_a, "radio/a"), (node_b, "radio/b")] {
        let reg = Message::Register(Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: name,
        });
        let reply = exchange(&mut xbee.line, addr, reg).await;
        let Ok(Message::RegAck(ack)) = Message::decode(&reply) else {
            panic!("{reply:02X?}")
        };
        let publish = Message::Publish(Publish {
            dup: false,
            qos: QoS::One,
            retain: false,
            topic: TopicRef::Id(ack.topic_id),
            msg_id: 2,
            data: name.as_bytes(),
        });
        let reply = exchange(&mut xbee.line, addr, publish).await;
        assert!(matches!(Message::decode(&reply), Ok(Message::PubAck(_))));
    }
    let mut topics = vec![watcher.next().await.topic, watcher.next().await.topic];
    topics.sort();
    assert_eq!(topics, ["radio/a", "radio/b"]);

    // The raw UART node: frames back to back, no addresses.
    let mut uart = Radio {
        line: raw.line,
        codec: RawCodec::new(),
    };
    uart.send(connect("uart-node")).await;
    let Received::Frame(f) = uart.recv().await else {
        panic!()
    };
    assert_eq!(
        Message::decode(&f.payload),
        Ok(Message::ConnAck {
            return_code: ReturnCode::Accepted
        })
    );
    uart.send(Message::Publish(Publish {
        dup: false,
        qos: QoS::MinusOne,
        retain: false,
        topic: TopicRef::Short(*b"ru"),
        msg_id: 0,
        data: b"x",
    }))
    .await;
    uart.send(Message::Register(Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: "radio/uart",
    }))
    .await;
    let Received::Frame(f) = uart.recv().await else {
        panic!()
    };
    let Ok(Message::RegAck(ack)) = Message::decode(&f.payload) else {
        panic!()
    };
    uart.send(Message::Publish(Publish {
        dup: false,
        qos: QoS::Zero,
        retain: false,
        topic: TopicRef::Id(ack.topic_id),
        msg_id: 0,
        data: b"uart",
    }))
    .await;
    assert_eq!(watcher.next().await.topic, "radio/uart");

    // Node A sleeps; a message for it waits; it wakes with PINGREQ and gets it, then PINGRESP.
    let sub = Message::Subscribe(Subscribe {
        dup: false,
        qos: QoS::Zero,
        msg_id: 3,
        topic: TopicFilter::Name("radio/cmd/a"),
    });
    let reply = exchange(&mut xbee.line, node_a, sub).await;
    let Ok(Message::SubAck(suback)) = Message::decode(&reply) else {
        panic!("{reply:02X?}")
    };
    let reply = exchange(
        &mut xbee.line,
        node_a,
        Message::Disconnect {
            duration: Some(300),
        },
    )
    .await;
    assert_eq!(
        Message::decode(&reply),
        Ok(Message::Disconnect { duration: None })
    );
    let mut publisher = Client::connect(broker.port(), "serial-pub").await;
    publisher
        .publish("radio/cmd/a", MqttQoS::AtLeastOnce, false, b"wake")
        .await;
    // The watcher seeing it means the broker has routed it (to the gateway too, usually
    // already there); wake until the buffered message is delivered.
    while watcher.next().await.topic != "radio/cmd/a" {}
    let mut delivered = false;
    for _ in 0..5000 {
        let mut reply = exchange(
            &mut xbee.line,
            node_a,
            Message::PingReq {
                client_id: Some("node-a"),
            },
        )
        .await;
        loop {
            match Message::decode(&reply).unwrap() {
                Message::Publish(p) => {
                    assert_eq!(
                        (p.topic, p.data),
                        (TopicRef::Id(suback.topic_id), &b"wake"[..])
                    );
                    delivered = true;
                }
                Message::PingResp => break,
                other => panic!("{other:?}"),
            }
            reply = to_node(&mut xbee.line, node_a).await;
        }
        if delivered {
            break;
        }
    }
    assert!(delivered, "the sleeping node got its message on wake-up");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_port_unplugged_and_replugged() {
    let broker = Mosquitto::start();
    let dir = std::env::temp_dir().join(format!("mqttsn-hotplug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A stable name, as udev gives one: a symlink to whichever pty is "plugged in".
    let stable: PathBuf = dir.join("ttyRADIO");
    let first = pty();
    std::os::unix::fs::symlink(&first.path, &stable).unwrap();
    let serial = format!(
        "[[serial]]\nport = \"{}\"\nbaud = 9600\nframing = \"raw\"\n",
        stable.display()
    );
    let gw = driver::start(broker.gateway_config(&serial)).await.unwrap();
    let mut uart = Radio {
        line: first.line,
        codec: RawCodec::new(),
    };
    connect_raw(&mut uart, "plug-node").await;
    // Unplug: the line closes and the device node disappears.
    drop(uart);
    std::fs::remove_file(&stable).unwrap();
    // The other transports keep working meanwhile: a UDP device connects.
    let udp = crate::support::device::Device::new(gw.udp_addrs()[0]).await;
    udp.send(connect("udp-meanwhile")).await;
    assert_eq!(
        Message::decode(&udp.recv().await),
        Ok(Message::ConnAck {
            return_code: ReturnCode::Accepted
        })
    );
    // Replug: a new device node under the same stable name; the gateway reopens it.
    let second = pty();
    std::os::unix::fs::symlink(&second.path, &stable).unwrap();
    let mut uart = Radio {
        line: second.line,
        codec: RawCodec::new(),
    };
    connect_raw(&mut uart, "plug-node").await;
    gw.stop().await;
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

/// CONNECT over a raw line until accepted (the port may still be opening, the broker coming up).
async fn connect_raw(uart: &mut Radio<RawCodec>, id: &str) {
    for _ in 0..200 {
        uart.send(connect(id)).await;
        // The gateway may not have the port open yet: wait a little for an answer, then resend.
        let mut buf = [0u8; 64];
        match tokio::time::timeout(
            std::time::Duration::from_millis(200),
            uart.line.read(&mut buf),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {
                uart.codec.push(&buf[..n]);
                if let Some(Received::Frame(f)) = uart.codec.next() {
                    if Message::decode(&f.payload)
                        == Ok(Message::ConnAck {
                            return_code: ReturnCode::Accepted,
                        })
                    {
                        return;
                    }
                }
            }
            _ => {}
        }
    }
    panic!("{id} never connected over the serial line");
}
