//! The `replay` tool: a session recorded against a real gateway and Mosquitto replays over real
//! UDP against a fresh gateway with no differences; an edited expected frame is reported with
//! its line; a pcap recording turns into a transcript of the device side.

use crate::support::device::{connect_session, Device};
use crate::support::mosquitto::Mosquitto;
use mqttsn_gateway::codec::*;
use mqttsn_gateway::config::Framing;
use mqttsn_gateway::driver::{self, Recording, Running};
use mqttsn_gateway::record::pcap::PcapWriter;
use mqttsn_gateway::record::pcap_reader::transcript_from_pcap;
use mqttsn_gateway::replay::{replay, replay_serial, ReplayOptions};
use mqttsn_gateway::time::Instant;
use mqttsn_gateway::transcript::{Direction, PeerKind, Transcript};
use mqttsn_gateway::transport::serial::framing::xbee::{ApiMode, XbeeCodec};
use mqttsn_gateway::transport::serial::framing::{raw::RawCodec, Deframer, Encoder, Received};
use std::net::SocketAddr;
use std::time::Duration;

/// A gateway whose broker connection is up: a throwaway device was accepted. Returns the
/// throwaway device's address so its lines can be left out of a recording.
async fn warmed_up(gw: &Running) -> SocketAddr {
    let warmup = Device::new(gw.udp_addrs()[0]).await;
    connect_session(&warmup, "replay-warmup", true).await;
    warmup.socket.local_addr().unwrap()
}

/// The recorded session: CONNECT, REGISTER, PUBLISH QoS 1, PINGREQ, DISCONNECT.
async fn conversation(dev: &Device) {
    connect_session(dev, "replay-dev", true).await;
    let topic = dev.register("replay/topic", 1).await;
    dev.publish(topic, QoS::One, 2, b"replayed").await;
    let _ = dev.recv_until(|m| matches!(m, Message::PubAck(_))).await;
    dev.send(Message::PingReq { client_id: None }).await;
    let _ = dev.recv_until(|m| matches!(m, Message::PingResp)).await;
    dev.send(Message::Disconnect { duration: None }).await;
    let _ = dev
        .recv_until(|m| matches!(m, Message::Disconnect { .. }))
        .await;
}

/// Records the conversation against a real gateway and returns the transcript in canonical
/// text, without the warm-up device's lines.
async fn record_session() -> String {
    let broker = Mosquitto::start();
    let path =
        std::env::temp_dir().join(format!("mqttsn-replay-tool-{}.snlog", std::process::id()));
    let gw = broker.recording_gateway(&path).await;
    let warmup = warmed_up(&gw).await;
    let dev = Device::new(gw.udp_addrs()[0]).await;
    conversation(&dev).await;
    gw.stop().await;
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let mut transcript = Transcript::parse(&text, &path.display().to_string())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let warmup_name = transcript
        .peer_at(&PeerKind::Udp(warmup))
        .map(|p| p.name.clone());
    transcript
        .entries
        .retain(|e| Some(e.peer()) != warmup_name.as_deref());
    transcript.to_string()
}

/// A fresh gateway (and broker) whose broker connection is up.
async fn fresh_gateway() -> (Mosquitto, Running) {
    let broker = Mosquitto::start();
    let gw = driver::start_with(broker.gateway_config(""), Recording { snlog: None })
        .await
        .unwrap();
    warmed_up(&gw).await;
    (broker, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_against_a_fresh_gateway_and_an_edit_is_reported() {
    let text = record_session().await;
    let transcript = Transcript::parse(&text, "recorded").unwrap_or_else(|e| panic!("{e}\n{text}"));
    for needle in ["CONNACK", "REGACK", "PUBACK", "PINGRESP", "DISCONNECT"] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }

    // Unchanged, at the recorded pace: no differences.
    let (_broker, gw) = fresh_gateway().await;
    let options = ReplayOptions {
        gateway: gw.udp_addrs()[0],
        speed: 1.0,
        as_fast_as_possible: false,
        answer_timeout: Duration::from_secs(2),
    };
    let report = replay(&transcript, &options).await.unwrap();
    assert_eq!(report.differences(), 0, "{}\n{text}", report.render());
    assert_eq!(report.devices.len(), 1, "{}", report.render());
    let device = &report.devices[0];
    assert_eq!(device.sent, 5, "{}\n{text}", report.render());
    assert_eq!(device.expected, 5, "{}\n{text}", report.render());
    assert_eq!(device.matched, 5, "{}", report.render());
    gw.stop().await;

    // The REGACK's return code edited to "rejected: not supported" (03): exactly that line
    // differs.
    let mut regack_line = 0;
    let edited: String = text
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let (frame, comment) = line.split_once('#').unwrap_or((line, ""));
            if line.contains("gw >") && comment.contains("REGACK") {
                regack_line = i + 1;
                let frame = frame.trim_end();
                let kept = frame.strip_suffix("00").expect("REGACK accepted");
                format!("{kept}03\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert_ne!(regack_line, 0, "no REGACK line in\n{text}");
    let edited = Transcript::parse(&edited, "edited").unwrap_or_else(|e| panic!("{e}\n{edited}"));
    let (_broker2, gw) = fresh_gateway().await;
    let options = ReplayOptions {
        gateway: gw.udp_addrs()[0],
        as_fast_as_possible: true,
        ..ReplayOptions::default()
    };
    let report = replay(&edited, &options).await.unwrap();
    let rendered = report.render();
    eprintln!("{rendered}");
    assert_eq!(report.differences(), 1, "{rendered}");
    assert_eq!(report.devices[0].matched, 4, "{rendered}");
    let difference = &report.devices[0].differences[0];
    assert!(
        difference.starts_with(&format!("line {regack_line} ")),
        "{difference}"
    );
    assert!(difference.contains("REGACK"), "{difference}");
    assert!(
        difference.contains("first difference at byte 6"),
        "{difference}"
    );
    assert!(
        rendered.contains(&format!("line {regack_line} ")),
        "{rendered}"
    );
    assert!(rendered.contains("FAILED: 1 difference"), "{rendered}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_gateway_is_reported_as_missing_answers() {
    // Nobody listens on this socket's address once it is dropped.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let gateway = silent.local_addr().unwrap();
    let text = "@peer dev1 udp 10.0.0.7:50000\n\
                @peer bcast udp 255.255.255.255:1884\n\
                0.000 gw > bcast 03 00 01\n\
                0.000 dev1 > gw 02 16\n\
                0.010 gw > dev1 02 17\n";
    let transcript = Transcript::parse(text, "t").unwrap();
    let options = ReplayOptions {
        gateway,
        as_fast_as_possible: true,
        answer_timeout: Duration::from_millis(200),
        ..ReplayOptions::default()
    };
    let report = replay(&transcript, &options).await.unwrap();
    drop(silent);
    assert_eq!(report.devices.len(), 1);
    assert_eq!(report.devices[0].sent, 1);
    assert_eq!(report.differences(), 1, "{}", report.render());
    let difference = &report.devices[0].differences[0];
    assert!(
        difference.starts_with("line 5 (gw > dev1): no answer"),
        "{difference}"
    );
    assert!(difference.contains("PINGRESP"), "{difference}");
}

#[test]
fn a_pcap_recording_becomes_a_transcript_of_the_device_side() {
    let gw: SocketAddr = "10.0.0.1:1884".parse().unwrap();
    let dev_a: SocketAddr = "10.0.0.7:50000".parse().unwrap();
    let dev_b: SocketAddr = "[fd00::7]:40000".parse().unwrap();
    let broker: SocketAddr = "10.0.0.2:1883".parse().unwrap();
    let base = 1_700_000_000_000_000u64;
    let us = |ms: u64| mqttsn_gateway::record::pcap::Timestamp::from_micros(base + ms * 1000);
    let mut w = PcapWriter::new(Vec::new()).unwrap();
    w.udp(us(0), dev_a, gw, &[2, 0x16]).unwrap();
    w.tcp(us(1), 1, gw, broker, &[0xC0, 0]).unwrap();
    w.udp(us(5), gw, dev_a, &[2, 0x17]).unwrap();
    w.udp(us(1250), dev_b, gw, &[2, 0x16]).unwrap();
    w.udp(us(1260), gw, dev_b, &[2, 0x17]).unwrap();
    let bytes = w.into_inner();

    let t = transcript_from_pcap(&bytes, 1884).unwrap();
    assert_eq!(t.peers.len(), 2, "{t}");
    assert_eq!(t.peers[0].name, "dev1");
    assert_eq!(t.peers[0].kind, PeerKind::Udp(dev_a));
    assert_eq!(t.peers[1].name, "dev2");
    assert_eq!(t.peers[1].kind, PeerKind::Udp(dev_b));
    let lines: Vec<(u64, Direction, Vec<u8>)> = t
        .entries
        .iter()
        .map(|e| {
            (
                e.at.as_millis(),
                e.direction.clone(),
                e.exact_bytes().unwrap(),
            )
        })
        .collect();
    let input = |from: &str| Direction::Input { from: from.into() };
    let output = |to: &str| Direction::Output { to: to.into() };
    assert_eq!(
        lines,
        [
            (0, input("dev1"), vec![2, 0x16]),
            (5, output("dev1"), vec![2, 0x17]),
            (1250, input("dev2"), vec![2, 0x16]),
            (1260, output("dev2"), vec![2, 0x17]),
        ]
    );
    assert_eq!(t.entries[1].at, Instant::from_millis(5));
    // It writes as a transcript that parses back to the same thing.
    let text = t.to_string();
    let back = Transcript::parse(&text, "pcap").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, t, "{text}");
    assert!(text.contains("PINGREQ"), "{text}");

    // Not a pcap file, and a truncated one, are errors.
    assert!(transcript_from_pcap(b"hello", 1884).is_err());
    assert!(transcript_from_pcap(&bytes[..bytes.len() - 1], 1884).is_err());
    // The same file byte-swapped (big-endian) reads the same.
    let mut swapped = bytes.clone();
    swap_endianness(&mut swapped);
    assert_eq!(transcript_from_pcap(&swapped, 1884).unwrap(), t);
}

/// Rewrites a little-endian pcap file's global and record headers big-endian.
fn swap_endianness(bytes: &mut [u8]) {
    let swap = |b: &mut [u8], at: usize, n: usize| b[at..at + n].reverse();
    swap(bytes, 0, 4);
    swap(bytes, 4, 2);
    swap(bytes, 6, 2);
    for at in [8, 12, 16, 20] {
        swap(bytes, at, 4);
    }
    let mut offset = 24;
    while offset < bytes.len() {
        let incl = u32::from_le_bytes(bytes[offset + 8..offset + 12].try_into().unwrap()) as usize;
        for at in [0, 4, 8, 12] {
            swap(bytes, offset + at, 4);
        }
        offset += 16 + incl;
    }
}

/// A fake gateway on the far end of a serial line: answers CONNECT with CONNACK (accepted) and
/// PINGREQ with PINGRESP, until the line closes. With `radios` (an XBee line) it answers only
/// those radios, addresses each answer back to its radio, and sends an ADVERTISE broadcast
/// before each, which the replay must ignore.
async fn fake_serial_gateway<C: Deframer + Encoder>(
    mut line: tokio_serial::SerialStream,
    mut codec: C,
    radios: Option<[u64; 2]>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 512];
    loop {
        let n = match line.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        codec.push(&buf[..n]);
        while let Some(item) = codec.next() {
            let Received::Frame(frame) = item else {
                continue;
            };
            let from = frame.source.map(|s| s.addr64);
            if radios.is_some_and(|radios| !from.is_some_and(|f| radios.contains(&f))) {
                continue;
            }
            let answer: &[u8] = match Message::decode(&frame.payload) {
                Ok(Message::Connect(_)) => &[3, 0x05, 0x00],
                Ok(Message::PingReq { .. }) => &[2, 0x17],
                _ => continue,
            };
            let mut out = bytes::BytesMut::new();
            if radios.is_some() {
                codec
                    .encode(&[5, 0x00, 0x01, 0x00, 0x3C], None, &mut out)
                    .unwrap();
            }
            codec.encode(answer, frame.source, &mut out).unwrap();
            if line.write_all(&out).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_replays_over_a_raw_serial_line_and_an_edit_is_reported() {
    use tokio_serial::SerialPort;
    let text = "@peer node serial serial0\n\
                @peer brk broker\n\
                0.000 node > gw 08 04 04 01 00 3C 6E 31  # CONNECT n1\n\
                0.005 gw > node 03 05 00\n\
                0.006 brk > gw !up\n\
                0.050 node > gw 02 16\n\
                0.055 gw > node 02 17\n";
    let options = ReplayOptions {
        answer_timeout: Duration::from_secs(2),
        ..ReplayOptions::default()
    };
    for (transcript, differences) in [
        (text.to_string(), 0),
        // The CONNACK's return code edited to "rejected: congestion".
        (text.replace("gw > node 03 05 00", "gw > node 03 05 01"), 1),
    ] {
        let transcript = Transcript::parse(&transcript, "serial").unwrap();
        let (line, device) = tokio_serial::SerialStream::pair().expect("openpty");
        let path = device.name().expect("pty has a name");
        let gateway = tokio::spawn(fake_serial_gateway(line, RawCodec::new(), None));
        let report = replay_serial(&transcript, &path, 115_200, Framing::Raw, &options)
            .await
            .unwrap();
        let rendered = report.render();
        assert_eq!(report.devices.len(), 1, "{rendered}");
        let dev = &report.devices[0];
        assert_eq!(dev.name, "node", "{rendered}");
        assert_eq!((dev.sent, dev.expected), (2, 2), "{rendered}");
        assert_eq!(report.differences(), differences, "{rendered}");
        assert_eq!(dev.matched, 2 - differences, "{rendered}");
        if differences == 1 {
            let difference = &dev.differences[0];
            assert!(
                difference.starts_with("line 4 (gw > node): a different frame"),
                "{difference}"
            );
            assert!(difference.contains("CONNACK"), "{difference}");
            assert!(
                difference.contains("first difference at byte 2"),
                "{difference}"
            );
        }
        gateway.abort();
        drop(device);
    }
}

/// Standing in for the coordinator radio, the replay gives each device its radio address (the
/// recorded one, else a synthetic one) and routes the gateway's answers back by destination,
/// in both API modes; broadcasts are ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transcript_replays_over_an_xbee_line_with_two_nodes() {
    use tokio_serial::SerialPort;
    let text = "@peer a serial serial0 0013A20040861234\n\
                @peer b serial serial0\n\
                0.000 a > gw 08 04 04 01 00 3C 61 31  # CONNECT a1\n\
                0.005 gw > a 03 05 00\n\
                0.010 b > gw 08 04 04 01 00 3C 62 31  # CONNECT b1\n\
                0.015 gw > b 03 05 00\n\
                0.050 a > gw 02 16\n\
                0.055 gw > a 02 17\n\
                0.060 b > gw 02 16\n\
                0.065 gw > b 02 17\n";
    let transcript = Transcript::parse(text, "xbee").unwrap();
    // b has no recorded radio address: it gets the first synthetic one.
    let radios = [0x0013_A200_4086_1234, 0x0013_A200_0000_0001];
    let options = ReplayOptions {
        answer_timeout: Duration::from_secs(2),
        ..ReplayOptions::default()
    };
    for api_mode in [1u8, 2] {
        let mode = ApiMode::try_from(api_mode).unwrap();
        let (line, device) = tokio_serial::SerialStream::pair().expect("openpty");
        let path = device.name().expect("pty has a name");
        let gateway = tokio::spawn(fake_serial_gateway(
            line,
            XbeeCodec::new(mode),
            Some(radios),
        ));
        let framing = Framing::XbeeApi { api_mode };
        let report = replay_serial(&transcript, &path, 9600, framing, &options)
            .await
            .unwrap();
        let rendered = report.render();
        assert_eq!(report.differences(), 0, "API mode {api_mode}: {rendered}");
        let names: Vec<&str> = report.devices.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "{rendered}");
        for dev in &report.devices {
            assert_eq!(
                (dev.sent, dev.expected, dev.matched),
                (2, 2, 2),
                "{rendered}"
            );
        }
        gateway.abort();
        drop(device);
    }
}
