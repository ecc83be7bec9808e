//! Replay over a serial port (`replay --serial PORT --framing raw|slip|xbee-api`): the replay
//! sits where the devices' radio would, at the far end of the gateway's serial line. A raw or
//! SLIP line is point to point and carries one device; on an XBee API line the replay stands in
//! for the coordinator radio (module `coordinator`) and carries every device.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use super::coordinator::{self, Downlink, Node};
use super::{groups_by, Group, Link};
use crate::config::Framing;
use crate::hex;
use crate::transcript::{Peer, PeerKind, Transcript};
use crate::transport::serial::framing::raw::RawCodec;
use crate::transport::serial::framing::slip::SlipCodec;
use crate::transport::serial::framing::xbee::ApiMode;
use crate::transport::serial::framing::{Deframer, Encoder, Received};

/// Frames from the gateway for one device, or the error that ended the line.
type Inbound = io::Result<Vec<u8>>;

/// One device's share of the line: its frames are written framed, under a lock so that the
/// frames of devices do not interleave, and the line's reader task passes on the gateway's
/// frames for it.
pub(super) struct SerialLink {
    writer: Arc<Mutex<WriteHalf<SerialStream>>>,
    encoder: Box<dyn Encoder + Send>,
    inbound: mpsc::Receiver<Inbound>,
}

impl SerialLink {
    pub(super) async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut framed = BytesMut::new();
        self.encoder.encode(bytes, None, &mut framed).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "cannot send [{}] with the serial framing: {e}",
                    hex::format(bytes)
                ),
            )
        })?;
        let mut writer = self.writer.lock().await;
        writer.write_all(&framed).await?;
        writer.flush().await
    }

    /// The next frame from the gateway for this device. Cancel safe.
    pub(super) async fn recv(&mut self) -> io::Result<Vec<u8>> {
        match self.inbound.recv().await {
            Some(result) => result,
            None => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the serial line reader stopped",
            )),
        }
    }
}

/// The replayed devices on an open line.
pub(super) struct SerialLine {
    /// One group per sending device, linked to the line.
    pub(super) groups: Vec<(Group, Link)>,
    /// The task reading the gateway's frames for the groups; abort it when the replay is over.
    pub(super) reader: JoinHandle<()>,
}

/// Opens `port` (8N1, no flow control) and links one group per sending device to it. Framings
/// that cannot carry the transcript's devices are rejected (`InvalidInput`) before the port is
/// opened.
pub(super) fn connect(
    transcript: &Transcript,
    port: &str,
    baud: u32,
    framing: Framing,
) -> io::Result<SerialLine> {
    // One group per device peer, whatever its recorded link.
    let groups = groups_by(transcript, |peer| {
        is_device(peer).then(|| (peer.clone(), None))
    });
    let devices: Vec<&Peer> = groups.iter().map(|(peer, _)| peer).collect();
    let (encoders, line_reader) = line_framing(framing, &devices)?;
    let stream = tokio_serial::new(port, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| io::Error::new(io::Error::from(e.clone()).kind(), format!("{port}: {e}")))?;
    let (reader, writer) = tokio::io::split(stream);
    let writer = Arc::new(Mutex::new(writer));
    let mut senders = Vec::with_capacity(groups.len());
    let mut linked = Vec::with_capacity(groups.len());
    for ((_, group), encoder) in groups.into_iter().zip(encoders) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        senders.push(tx);
        let link = SerialLink {
            writer: Arc::clone(&writer),
            encoder,
            inbound: rx,
        };
        linked.push((group, Link::Serial(link)));
    }
    Ok(SerialLine {
        groups: linked,
        reader: tokio::spawn(read_line(reader, line_reader, senders)),
    })
}

/// Frames from the gateway held for one replayed device until it reads them.
const INBOUND_QUEUE: usize = 4096;

/// Whether a peer is a device (anything but the broker).
fn is_device(peer: &Peer) -> bool {
    !matches!(peer.kind, PeerKind::Broker { .. })
}

/// The encoder of each of `devices` (in order) and the reader of the gateway's frames, for a
/// line in `framing`.
fn line_framing(
    framing: Framing,
    devices: &[&Peer],
) -> io::Result<(Vec<Box<dyn Encoder + Send>>, LineReader)> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let name = match framing {
        Framing::XbeeApi { api_mode } => {
            let mode = ApiMode::try_from(api_mode).map_err(|e| invalid(e.to_string()))?;
            let addresses = coordinator::radio_addresses(devices)?;
            let encoders = addresses
                .iter()
                .map(|&addr| Box::new(Node::new(addr, mode)) as Box<dyn Encoder + Send>)
                .collect();
            let downlink = Downlink::new(mode, &addresses);
            return Ok((encoders, LineReader::Coordinator(downlink)));
        }
        Framing::Raw => "raw",
        Framing::Slip { .. } => "SLIP",
    };
    if devices.len() > 1 {
        let names: Vec<&str> = devices.iter().map(|p| p.name.as_str()).collect();
        return Err(invalid(format!(
            "a {name} serial line carries one device, but the transcript has {} sending devices \
             ({}); replay it with XBee API framing or over UDP",
            devices.len(),
            names.join(", ")
        )));
    }
    Ok(match framing {
        Framing::Slip { crc } => point_to_point(SlipCodec::new(crc), devices.len()),
        _ => point_to_point(RawCodec::new(), devices.len()),
    })
}

/// A point-to-point line's framing: `codec` encodes for each of the `devices` (at most one) and
/// deframes what the gateway writes.
fn point_to_point<C>(codec: C, devices: usize) -> (Vec<Box<dyn Encoder + Send>>, LineReader)
where
    C: Encoder + Deframer + Clone + Send + 'static,
{
    let encoders = (0..devices)
        .map(|_| Box::new(codec.clone()) as Box<dyn Encoder + Send>)
        .collect();
    (encoders, LineReader::PointToPoint(Box::new(codec)))
}

/// Turns what the gateway writes into frames for the replayed devices.
enum LineReader {
    /// Raw or SLIP: every frame is for the one device.
    PointToPoint(Box<dyn Deframer + Send>),
    /// XBee: Transmit Requests, routed by destination.
    Coordinator(Downlink),
}

impl LineReader {
    fn push(&mut self, bytes: &[u8]) {
        match self {
            LineReader::PointToPoint(deframer) => deframer.push(bytes),
            LineReader::Coordinator(downlink) => downlink.push(bytes),
        }
    }

    /// The next frame, with the index of the device it is for; `None` when more bytes are
    /// needed.
    fn next_frame(&mut self) -> Option<(usize, Bytes)> {
        match self {
            LineReader::PointToPoint(deframer) => loop {
                if let Received::Frame(frame) = deframer.next()? {
                    return Some((0, frame.payload));
                }
            },
            LineReader::Coordinator(downlink) => downlink.next_frame(),
        }
    }
}

/// Reads the gateway's frames off the line and hands each to its device's channel (index in
/// `senders`). A read error or the end of the line is passed to every device.
async fn read_line(
    mut reader: ReadHalf<SerialStream>,
    mut frames: LineReader,
    senders: Vec<mpsc::Sender<Inbound>>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => {
                for tx in &senders {
                    let _ = tx.try_send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the serial line closed",
                    )));
                }
                return;
            }
            Ok(n) => n,
            Err(e) => {
                for tx in &senders {
                    let _ = tx.try_send(Err(io::Error::new(
                        e.kind(),
                        format!("reading the serial line: {e}"),
                    )));
                }
                return;
            }
        };
        frames.push(&buf[..n]);
        while let Some((device, frame)) = frames.next_frame() {
            if let Some(tx) = senders.get(device) {
                // Never waits: a device whose turn has not come must not stop the line for
                // the others. A frame beyond the bound is dropped, and the replay reports it
                // as missing.
                if tx.try_send(Ok(frame.to_vec())).is_err() {
                    tracing::warn!(
                        device,
                        "replay: too many unread frames for a device; dropped"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Framing;
    use crate::replay::{replay_serial, ReplayOptions};
    use crate::transcript::Transcript;
    use std::io;

    #[tokio::test]
    async fn raw_and_slip_lines_refuse_several_devices() {
        let text = "@peer a udp 127.0.0.1:5000\n\
                    @peer b udp 127.0.0.1:5001\n\
                    0.000 a > gw 02 16\n\
                    0.000 b > gw 02 16\n";
        let t = Transcript::parse(text, "t").expect("parses");
        let options = ReplayOptions::default();
        for framing in [Framing::Raw, Framing::Slip { crc: true }] {
            let e = replay_serial(&t, "/nonexistent/tty", 115_200, framing, &options)
                .await
                .expect_err("two devices on one line");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("(a, b)"), "{e}");
        }
        // XBee would address them, but API mode 0 carries no addresses.
        let e = replay_serial(
            &t,
            "/nonexistent/tty",
            9600,
            Framing::XbeeApi { api_mode: 0 },
            &options,
        )
        .await
        .expect_err("API mode 0");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        // With XBee framing the port is what fails.
        let e = replay_serial(
            &t,
            "/nonexistent/tty",
            9600,
            Framing::XbeeApi { api_mode: 1 },
            &options,
        )
        .await
        .expect_err("no such port");
        assert!(e.to_string().contains("/nonexistent/tty"), "{e}");
    }
}
