//! A stopped gateway has let go of everything it opened: when `Running::stop` returns, its UDP
//! port can be bound again, its serial line has hung up, its recording is complete and its
//! broker connection has ended with DISCONNECT and FIN. Nothing here sleeps: each check either
//! holds right after the stop or waits, bounded by `PATIENCE`, for something the stop causes.

use crate::support::device::Device;
use crate::support::mosquitto::Mosquitto;
use crate::support::PATIENCE;
use mqttsn_gateway::codec::*;
use mqttsn_gateway::config::Config;
use mqttsn_gateway::driver::{self, Recording};
use mqttsn_gateway::record::snlog::{RecordLimits, Recorder};
use mqttsn_gateway::transcript::{Control, PeerKind, Transcript};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_serial::{SerialPort, SerialStream};

fn connect(id: &str) -> Message<'_> {
    Message::Connect(Connect {
        will: false,
        clean_session: true,
        duration: 60,
        client_id: id,
    })
}

/// CONNECT until accepted: the gateway answers "congestion" while its broker connection is
/// still coming up.
async fn connect_until_accepted(dev: &Device, id: &str) {
    loop {
        dev.send(connect(id)).await;
        match Message::decode(&dev.recv().await) {
            Ok(Message::ConnAck {
                return_code: ReturnCode::Accepted,
            }) => return,
            Ok(Message::ConnAck { .. }) => tokio::task::yield_now().await,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }
}

/// Reads until the other end is gone: end of file, or an error such as the EIO a pty master
/// gets once its slave is closed. Panics if that does not happen within [`PATIENCE`].
async fn read_to_hang_up(what: &str, stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let hung_up = timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        hung_up.is_ok(),
        "{what} still open {PATIENCE:?} after the stop"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_port_binds_again_right_after_the_stop() {
    let broker = Mosquitto::start();
    let gw = driver::start(broker.gateway_config("")).await.unwrap();
    let addr = gw.udp_addrs()[0];
    // A frame in and one out: the reader task is running and has the socket.
    let dev = Device::new(addr).await;
    connect_until_accepted(&dev, "udp-dev").await;
    gw.stop().await;
    // Neither side sets SO_REUSEADDR, so this fails while any handle on the gateway's socket
    // is left (a reader task still waiting for a datagram).
    if let Err(e) = std::net::UdpSocket::bind(addr) {
        panic!("{addr} is still taken after the stop: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_serial_line_hangs_up_after_the_stop() {
    let broker = Mosquitto::start();
    let (mut line, device) = SerialStream::pair().expect("openpty");
    let path = device.name().expect("pty has a name");
    let serial = format!("[[serial]]\nport = \"{path}\"\nbaud = 115200\nframing = \"raw\"\n");
    let gw = driver::start(broker.gateway_config(&serial)).await.unwrap();
    // The gateway's first frame on the line (ADVERTISE, once the broker is up) shows it has the
    // port open. Only then does the test close its own handle on the gateway's end, which would
    // otherwise keep the line up by itself (and closed earlier, would hang it up at once).
    let mut buf = [0u8; 256];
    let n = timeout(PATIENCE, line.read(&mut buf))
        .await
        .expect("the gateway wrote to the serial line in time")
        .expect("pty read");
    assert!(n > 0);
    drop(device);
    gw.stop().await;
    read_to_hang_up("the serial port", &mut line).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_is_complete_after_the_stop() {
    let broker = Mosquitto::start();
    let path = std::env::temp_dir().join(format!("mqttsn-stop-{}.snlog", std::process::id()));
    let recorder = Recorder::create(&path, RecordLimits::default()).unwrap();
    let recording = Recording {
        snlog: Some(recorder),
    };
    let gw = driver::start_with(broker.gateway_config(""), recording)
        .await
        .unwrap();
    let dev = Device::new(gw.udp_addrs()[0]).await;
    connect_until_accepted(&dev, "stop-dev").await;
    let topic = dev.register("stop/topic", 1).await;
    dev.publish(topic, QoS::One, 2, b"last words").await;
    let puback = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
    gw.stop().await;

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let transcript = Transcript::parse(&text, &path.display().to_string())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    // The device's last exchange: its PUBLISH in, then the PUBACK out, and nothing after.
    let dev_addr = dev.socket.local_addr().unwrap();
    let device = transcript
        .peers
        .iter()
        .find(|p| p.kind == PeerKind::Udp(dev_addr))
        .unwrap_or_else(|| panic!("no {dev_addr} in\n{text}"))
        .name
        .clone();
    let frames: Vec<(bool, Vec<u8>)> = transcript
        .entries
        .iter()
        .filter(|e| e.peer() == device)
        .filter_map(|e| {
            let bytes = e.payload.frame()?.exact_bytes()?;
            Some((e.direction.is_input(), bytes))
        })
        .collect();
    let [.., (true, publish), (false, ack)] = &frames[..] else {
        panic!("the device's last frames are not an input and an output:\n{text}");
    };
    assert!(
        matches!(Message::decode(publish), Ok(Message::Publish(p)) if p.data == b"last words"),
        "{text}"
    );
    assert_eq!(ack, &puback, "{text}");
    // The stop itself is recorded to its end: the broker connection's close is the last line.
    let last = transcript.entries.last().unwrap();
    assert_eq!(last.payload.control(), Some(Control::Close), "{text}");
}

/// Reads one MQTT packet (fixed header, remaining length, body).
async fn read_packet(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut packet = vec![conn.read_u8().await.unwrap()];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let byte = conn.read_u8().await.unwrap();
        packet.push(byte);
        len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let start = packet.len();
    packet.resize(start + len, 0);
    conn.read_exact(&mut packet[start..]).await.unwrap();
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_connection_ends_with_disconnect_and_eof() {
    // A plain listener stands in for the broker: it sees exactly what the gateway sends.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let broker = listener.local_addr().unwrap();
    let config = Config::from_toml_str(
        &format!("[[udp]]\nbind = \"127.0.0.1:0\"\n[upstream]\nurl = \"mqtt://{broker}\"\n"),
        "test",
    )
    .unwrap();
    let gw = driver::start(config).await.unwrap();
    let (mut conn, _) = timeout(PATIENCE, listener.accept())
        .await
        .expect("the gateway connected in time")
        .unwrap();
    let connect_packet = timeout(PATIENCE, read_packet(&mut conn))
        .await
        .expect("CONNECT in time");
    assert_eq!(connect_packet[0], 0x10, "CONNECT: {connect_packet:02X?}");
    // CONNACK, accepted.
    conn.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
    // A device accepted means the gateway has taken the CONNACK: its MQTT session is up.
    let dev = Device::new(gw.udp_addrs()[0]).await;
    connect_until_accepted(&dev, "brk-dev").await;
    // The gateway waits for the broker's FIN before it calls the connection closed, so the
    // broker side reads to the end (and then closes) while the gateway stops.
    let broker_side = tokio::spawn(async move {
        let seen = read_to_hang_up("the broker connection", &mut conn).await;
        drop(conn);
        seen
    });
    gw.stop().await;
    let seen = broker_side.await.unwrap();
    assert!(
        seen.ends_with(&[0xE0, 0x00]),
        "the last bytes are not a DISCONNECT: {seen:02X?}"
    );
}
