//! A stopped gateway has let go of everything it opened: when `Running::stop` returns, its UDP
//! port can be bound again, its serial line has hung up, its recording is complete and its
//! broker connection has ended with DISCONNECT and FIN. Nothing here sleeps: each check either
//! holds right after the stop or waits, bounded by `PATIENCE`, for something the stop causes.

use crate::support::device::{connect, Device};
use crate::support::mosquitto::Mosquitto;
use crate::support::PATIENCE;
use mqttsn_gateway::codec::*;
use mqttsn_gateway::config::Config;
use mqttsn_gateway::driver;
use mqttsn_gateway::engine::mqtt::wire::fixed_header;
use mqttsn_gateway::transcript::{Control, PeerKind, Transcript};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_serial::{SerialPort, SerialStream};

/// Reads until the other end is gone: end of file, or an error such as the EIO a pty master
/// gets once its slave is closed. Panics if that does not happen within [`PATIENCE`].
async fn read_to_hang_up(what: &str, stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    read_to_end_or(what, stream, true).await
}

/// [`read_to_hang_up`] where only a clean end of file counts (a TCP FIN, not a reset).
async fn read_to_eof(what: &str, stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    read_to_end_or(what, stream, false).await
}

async fn read_to_end_or(
    what: &str,
    stream: &mut (impl AsyncRead + Unpin),
    error_ends: bool,
) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let hung_up = timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(_) if error_ends => return,
                Err(e) => panic!("{what} ended with an error, not end of file: {e}"),
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
    // A frame in and one out: the loop is reading the socket.
    let dev = Device::new(addr).await;
    connect(&dev, "udp-dev", 60, false).await;
    gw.stop().await;
    // Neither side sets SO_REUSEADDR, so this fails while any handle on the gateway's socket
    // is left.
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
    let gw = broker.recording_gateway(&path).await;
    let dev = Device::new(gw.udp_addrs()[0]).await;
    connect(&dev, "stop-dev", 60, false).await;
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

/// Reads one MQTT packet, cut with the core's fixed-header rule.
async fn read_packet(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut packet = Vec::new();
    let header = loop {
        packet.push(conn.read_u8().await.unwrap());
        if let Some(header) = fixed_header(&packet).unwrap() {
            break header;
        }
    };
    let start = packet.len();
    packet.resize(header.packet_len(), 0);
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
    connect(&dev, "brk-dev", 60, false).await;
    // The gateway waits for the broker's FIN before it calls the connection closed, so the
    // broker side reads to the end (and then closes) while the gateway stops.
    let broker_side = tokio::spawn(async move {
        let seen = read_to_eof("the broker connection", &mut conn).await;
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
