//! The `replay` subcommand: plays the device side of a recording (a `.snlog` transcript, or a
//! pcap file written by [`crate::record::pcap::PcapWriter`]) against a running gateway over real
//! UDP, and compares what the gateway answers with what the recording says it answered.
//!
//! # How it works
//! - Every recorded device that sent something gets its own UDP socket (bound to
//!   `127.0.0.1:0`, `[::1]:0` for an IPv6 gateway, or the unspecified address when the gateway is
//!   not on loopback), so each device keeps its own address. Devices behind one forwarder
//!   (`udp ADDR via-forwarder NODEID`) share one socket, since they are one forwarder; their
//!   lines already carry the encapsulation.
//! - Only device inputs (`devX > gw`) are sent. Broker lines and control entries are ignored:
//!   the running gateway talks to its own broker. Inputs go out at their recorded times scaled
//!   by [`ReplayOptions::speed`], or back to back with [`ReplayOptions::as_fast_as_possible`];
//!   either way a device waits for the answers recorded before its next input first, so
//!   request/response ordering holds.
//! - The recorded `gw > devX` lines are the expected answers. Frames the gateway sends to a
//!   socket are matched in order per device with [`FramePattern::matches`] (so `??` wildcards
//!   accept any byte); ADVERTISE frames are skipped as broadcast noise. Lines to peers that are
//!   not replayed (a `bcast` peer, say) are ignored.
//! - A missing answer (none within [`ReplayOptions::answer_timeout`]), a frame that differs, and
//!   a frame nobody expected are differences, reported with the transcript line, both frames
//!   decoded with the codec and in hex, and the offset of the first differing byte.
//!
//! [`replay_serial`] plays the same device side over a serial line instead (raw or SLIP for one
//! device, XBee API frames for several, standing in for the coordinator radio), with the same
//! matching and report.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_serial::{SerialPortBuilderExt, SerialStream};

use crate::codec::{Frame, Message};
use crate::config::Framing;
use crate::hex;
use crate::time::Instant;
use crate::transcript::{Direction, Entry, FramePattern, Payload, Peer, PeerKind, Transcript};
use crate::transport::serial::framing::raw::RawCodec;
use crate::transport::serial::framing::slip::SlipCodec;
use crate::transport::serial::framing::xbee::ApiMode;
use crate::transport::serial::framing::{Deframer, Encoder, Received};

/// How long to keep listening for unexpected frames after a device's last recorded line.
const SETTLE: Duration = Duration::from_millis(200);

/// How [`replay`] runs.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// The running gateway's UDP address.
    pub gateway: SocketAddr,
    /// Pace relative to the recording: 1.0 replays at the recorded pace, 2.0 twice as fast.
    pub speed: f64,
    /// Send each input as soon as the answers recorded before it have arrived, ignoring the
    /// recorded times.
    pub as_fast_as_possible: bool,
    /// How long to wait for each expected answer.
    pub answer_timeout: Duration,
}

impl ReplayOptions {
    /// Options for a gateway at `gateway`: recorded pace, answers within 2 s.
    pub fn new(gateway: SocketAddr) -> Self {
        ReplayOptions {
            gateway,
            speed: 1.0,
            as_fast_as_possible: false,
            answer_timeout: Duration::from_secs(2),
        }
    }
}

impl Default for ReplayOptions {
    /// The gateway at `127.0.0.1:1884`, recorded pace, answers within 2 s.
    fn default() -> Self {
        ReplayOptions::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 1884)))
    }
}

/// What happened for one replayed device (or one forwarder with its nodes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceReport {
    /// The peer name from the transcript (`n5+n6` for nodes behind one forwarder).
    pub name: String,
    /// Inputs sent to the gateway.
    pub sent: usize,
    /// Answers the recording expects.
    pub expected: usize,
    /// Answers that arrived and matched.
    pub matched: usize,
    /// Readable descriptions of every difference, in the order they were found.
    pub differences: Vec<String>,
}

/// The outcome of a [`replay`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayReport {
    /// One report per replayed device, in the transcript's peer order.
    pub devices: Vec<DeviceReport>,
}

/// How many differences [`ReplayReport::render`] shows per device.
const SHOWN_DIFFERENCES: usize = 10;

impl ReplayReport {
    /// The total number of differences over all devices.
    pub fn differences(&self) -> usize {
        self.devices.iter().map(|d| d.differences.len()).sum()
    }

    /// A per-device summary followed by each device's first differences.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for device in &self.devices {
            let _ = writeln!(
                out,
                "{}: sent {}, matched {}/{} expected answers, {} difference{}",
                device.name,
                device.sent,
                device.matched,
                device.expected,
                device.differences.len(),
                if device.differences.len() == 1 {
                    ""
                } else {
                    "s"
                }
            );
            for difference in device.differences.iter().take(SHOWN_DIFFERENCES) {
                for (i, line) in difference.lines().enumerate() {
                    let _ = writeln!(out, "  {} {line}", if i == 0 { "-" } else { " " });
                }
            }
            if device.differences.len() > SHOWN_DIFFERENCES {
                let _ = writeln!(
                    out,
                    "  ... and {} more",
                    device.differences.len() - SHOWN_DIFFERENCES
                );
            }
        }
        let total = self.differences();
        if total == 0 {
            let _ = writeln!(out, "OK: {} device(s), no differences", self.devices.len());
        } else {
            let _ = writeln!(
                out,
                "FAILED: {total} difference{} over {} device(s)",
                if total == 1 { "" } else { "s" },
                self.devices.len()
            );
        }
        out
    }
}

/// One recorded line of a replayed group, in file order.
#[derive(Debug, Clone)]
enum Step {
    /// Bytes to send from the peer at index `peer` of the group.
    Send {
        at: Instant,
        peer: usize,
        bytes: Vec<u8>,
    },
    /// An answer expected for the peer at `peer` (index in the group).
    Expect {
        at: Instant,
        peer: usize,
        pattern: FramePattern,
        line: usize,
        direction: String,
    },
}

/// Devices that share one socket: a plain UDP device, or the nodes behind one forwarder.
#[derive(Debug, Clone)]
struct Group {
    /// The peers, with their node id when forwarded.
    peers: Vec<(String, Option<Vec<u8>>)>,
    steps: Vec<Step>,
}

impl Group {
    fn name(&self) -> String {
        self.peers
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join("+")
    }

    /// Which peer of the group a frame from the gateway is for.
    fn route(&self, bytes: &[u8]) -> usize {
        if Frame::is_encapsulated(bytes) {
            let header = usize::from(bytes[0]);
            if let Some(node) = bytes.get(3..header) {
                if let Some(i) = self
                    .peers
                    .iter()
                    .position(|(_, id)| id.as_deref() == Some(node))
                {
                    return i;
                }
            }
        } else if let Some(i) = self.peers.iter().position(|(_, id)| id.is_none()) {
            return i;
        }
        0
    }
}

/// The socket address a peer's frames travel on, if it is a UDP device.
fn udp_address(peer: &Peer) -> Option<(SocketAddr, Option<Vec<u8>>)> {
    match &peer.kind {
        PeerKind::Udp(addr) => Some((*addr, None)),
        PeerKind::Forwarded { via, node_id } => Some((*via, Some(node_id.clone()))),
        PeerKind::Serial { .. } | PeerKind::Broker { .. } => None,
    }
}

/// Splits the transcript into socket groups: every UDP or forwarded peer that sends at least
/// one frame, grouped by address, with its inputs and expected answers in file order.
fn groups(transcript: &Transcript) -> Vec<Group> {
    groups_by(transcript, udp_address)
        .into_iter()
        .map(|(_, group)| group)
        .collect()
}

/// Splits the transcript into groups of peers that send at least one frame, keyed by `key`
/// (peers without a key are left out), with their inputs and expected answers in file order.
fn groups_by<K: std::hash::Hash + Eq + Clone>(
    transcript: &Transcript,
    key: impl Fn(&Peer) -> Option<(K, Option<Vec<u8>>)>,
) -> Vec<(K, Group)> {
    let senders: Vec<&str> = transcript
        .entries
        .iter()
        .filter(|e| e.direction.is_input() && e.frame().is_some())
        .map(Entry::peer)
        .collect();
    let mut order: Vec<K> = Vec::new();
    let mut by_addr: HashMap<K, Group> = HashMap::new();
    // (group key, index in group) per peer name.
    let mut member: HashMap<&str, (K, usize)> = HashMap::new();
    for peer in &transcript.peers {
        if !senders.contains(&peer.name.as_str()) {
            continue;
        }
        let Some((addr, node)) = key(peer) else {
            continue;
        };
        let group = by_addr.entry(addr.clone()).or_insert_with(|| {
            order.push(addr.clone());
            Group {
                peers: Vec::new(),
                steps: Vec::new(),
            }
        });
        member.insert(&peer.name, (addr, group.peers.len()));
        group.peers.push((peer.name.clone(), node));
    }
    for entry in &transcript.entries {
        let Payload::Frame(pattern) = &entry.payload else {
            continue;
        };
        let Some((addr, index)) = member.get(entry.peer()) else {
            continue;
        };
        let index = *index;
        let Some(group) = by_addr.get_mut(addr) else {
            continue;
        };
        let step = match &entry.direction {
            Direction::Input { .. } => Step::Send {
                at: entry.at,
                peer: index,
                bytes: filled(pattern),
            },
            Direction::Output { .. } => Step::Expect {
                at: entry.at,
                peer: index,
                pattern: pattern.clone(),
                line: entry.line,
                direction: entry.direction.to_string(),
            },
        };
        group.steps.push(step);
    }
    order
        .into_iter()
        .filter_map(|addr| by_addr.remove(&addr).map(|group| (addr, group)))
        .collect()
}

/// The pattern's bytes with wildcards as zero.
fn filled(pattern: &FramePattern) -> Vec<u8> {
    pattern.positions().iter().map(|p| p.unwrap_or(0)).collect()
}

/// A frame decoded with the codec, or why it does not decode.
fn describe(bytes: &[u8]) -> String {
    match Frame::decode(bytes) {
        Ok(frame) => frame.to_string(),
        Err(e) => format!("undecodable ({e})"),
    }
}

/// An expected pattern, decoded (wildcards read as zero) and in hex.
fn describe_pattern(pattern: &FramePattern) -> String {
    let note = if pattern.has_wildcards() {
        " (?? read as 00)"
    } else {
        ""
    };
    format!("{}{note} [{pattern}]", describe(&filled(pattern)))
}

fn describe_actual(bytes: &[u8]) -> String {
    format!("{} [{}]", describe(bytes), hex::format(bytes))
}

fn is_advertise(bytes: &[u8]) -> bool {
    matches!(
        Frame::decode(bytes),
        Ok(Frame {
            message: Message::Advertise(_),
            ..
        })
    )
}

/// The local address to bind for talking to `gateway`.
fn local_bind(gateway: SocketAddr) -> SocketAddr {
    let ip = match (gateway.ip(), gateway.ip().is_loopback()) {
        (IpAddr::V4(_), true) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(_), true) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        (IpAddr::V4(_), false) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (IpAddr::V6(_), false) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

/// How a replayed group reaches the gateway.
enum Link {
    /// Its own UDP socket.
    Udp {
        socket: UdpSocket,
        gateway: SocketAddr,
        buf: Vec<u8>,
    },
    /// One device on a serial line shared with the other devices: frames are written framed
    /// (under a lock, so frames of devices do not interleave), and the line's reader task
    /// passes on the frames for this device.
    Serial {
        writer: Arc<tokio::sync::Mutex<WriteHalf<SerialStream>>>,
        encoder: LineEncoder,
        inbound: mpsc::UnboundedReceiver<io::Result<Vec<u8>>>,
    },
}

impl Link {
    /// Sends one MQTT-SN frame to the gateway.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp {
                socket, gateway, ..
            } => socket.send_to(bytes, *gateway).await.map(|_| ()),
            Link::Serial {
                writer, encoder, ..
            } => {
                let framed = encoder.encode(bytes)?;
                let mut writer = writer.lock().await;
                writer.write_all(&framed).await?;
                writer.flush().await
            }
        }
    }

    /// The next frame from the gateway for this link. Cancel safe.
    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Link::Udp { socket, buf, .. } => loop {
                match socket.recv_from(buf).await {
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e),
                    Ok((n, _)) => return Ok(buf[..n].to_vec()),
                }
            },
            Link::Serial { inbound, .. } => match inbound.recv().await {
                Some(result) => result,
                None => Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the serial line reader stopped",
                )),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// serial lines

/// The first synthetic XBee address, for device peers without a recorded radio address: the
/// `n`th such peer (from 1) is `0x0013A200_00000000 + n`.
const SYNTHETIC_RADIO_BASE: u64 = 0x0013_A200_0000_0000;

/// How one device's frames go onto the line.
enum LineEncoder {
    /// Raw or SLIP framing, with the gateway's own encoder.
    Codec(Box<dyn Encoder + Send>),
    /// XBee: a ZigBee Receive Packet (0x90) from `addr64`, as the coordinator on the gateway's
    /// line would emit it.
    XbeeRx { addr64: u64, mode: ApiMode },
}

impl LineEncoder {
    fn encode(&mut self, payload: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            LineEncoder::Codec(codec) => {
                let mut out = BytesMut::new();
                codec.encode(payload, None, &mut out).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "cannot send [{}] with the serial framing: {e}",
                            hex::format(payload)
                        ),
                    )
                })?;
                Ok(out.to_vec())
            }
            LineEncoder::XbeeRx { addr64, mode } => Ok(xbee_rx_packet(*addr64, *mode, payload)),
        }
    }
}

/// The octets of an API frame after the start delimiter, escaped in API mode 2.
fn xbee_escape(mode: ApiMode, octets: &[u8], out: &mut Vec<u8>) {
    for &b in octets {
        if mode == ApiMode::Escaped && matches!(b, 0x7E | 0x7D | 0x11 | 0x13) {
            out.push(0x7D);
            out.push(b ^ 0x20);
        } else {
            out.push(b);
        }
    }
}

/// A 0x90 ZigBee Receive Packet from the radio `addr64` (16-bit address unknown, FFFE; receive
/// options 01, acknowledged) carrying `payload`.
fn xbee_rx_packet(addr64: u64, mode: ApiMode, payload: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(12 + payload.len());
    data.push(0x90);
    data.extend_from_slice(&addr64.to_be_bytes());
    data.extend_from_slice(&0xFFFEu16.to_be_bytes());
    data.push(0x01);
    data.extend_from_slice(payload);
    let sum = data.iter().fold(0u8, |a, &b| a.wrapping_add(b));
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    let mut out = vec![0x7E];
    xbee_escape(mode, &len.to_be_bytes(), &mut out);
    xbee_escape(mode, &data, &mut out);
    xbee_escape(mode, &[0xFF - sum], &mut out);
    out
}

/// Reads the gateway's 0x10 Transmit Requests off an XBee line (what the XBee deframer, which
/// decodes what a coordinator sends, does not do). Both API modes are handled; frames of other
/// types, with a bad checksum or too short are skipped, and bytes outside frames are ignored.
#[derive(Debug)]
struct TxRequestReader {
    mode: ApiMode,
    raw: Vec<u8>,
}

/// What [`TxRequestReader::parse`] found at the start of the buffer.
enum ApiParse {
    /// More bytes are needed.
    Incomplete,
    /// Discard this many bytes and look again.
    Skip(usize),
    /// A whole frame of this many raw bytes, with its frame data (type onwards).
    Frame(usize, Vec<u8>),
}

impl TxRequestReader {
    fn new(mode: ApiMode) -> Self {
        TxRequestReader {
            mode,
            raw: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
    }

    /// The next Transmit Request as (destination 64-bit address, RF data).
    fn next(&mut self) -> Option<(u64, Vec<u8>)> {
        loop {
            match self.parse() {
                ApiParse::Incomplete => return None,
                ApiParse::Skip(n) => {
                    self.raw.drain(..n);
                }
                ApiParse::Frame(n, data) => {
                    self.raw.drain(..n);
                    // 10 FID DEST64(8) DEST16(2) RADIUS OPTIONS DATA..
                    if data.len() > 14 && data[0] == 0x10 {
                        let dest = u64::from_be_bytes(data[2..10].try_into().unwrap_or_default());
                        return Some((dest, data[14..].to_vec()));
                    }
                }
            }
        }
    }

    fn parse(&self) -> ApiParse {
        let Some(start) = self.raw.iter().position(|&b| b == 0x7E) else {
            return if self.raw.is_empty() {
                ApiParse::Incomplete
            } else {
                ApiParse::Skip(self.raw.len())
            };
        };
        if start > 0 {
            return ApiParse::Skip(start);
        }
        // Unescaped octets after the delimiter: length (2), data, checksum.
        let mut octets: Vec<u8> = Vec::new();
        let mut i = 1;
        let mut escaped = false;
        loop {
            let Some(&raw) = self.raw.get(i) else {
                return ApiParse::Incomplete;
            };
            i += 1;
            let b = if self.mode == ApiMode::Escaped {
                if raw == 0x7E {
                    // A new frame starts: the one in progress was cut short.
                    return ApiParse::Skip(i - 1);
                }
                if escaped {
                    escaped = false;
                    raw ^ 0x20
                } else if raw == 0x7D {
                    escaped = true;
                    continue;
                } else {
                    raw
                }
            } else {
                raw
            };
            octets.push(b);
            if octets.len() >= 2 {
                let len = usize::from(u16::from_be_bytes([octets[0], octets[1]]));
                if octets.len() == len + 3 {
                    let data = &octets[2..2 + len];
                    let sum = data.iter().fold(0u8, |a, &b| a.wrapping_add(b));
                    if sum.wrapping_add(octets[2 + len]) != 0xFF {
                        // Not a frame: look for the next delimiter after this one.
                        return ApiParse::Skip(1);
                    }
                    return ApiParse::Frame(i, data.to_vec());
                }
            }
        }
    }
}

/// A device peer's radio address: its recorded one (the first 8 bytes as the 64-bit address,
/// or fewer bytes right-aligned), else the next synthetic one.
fn radio_addr64(peer: &Peer, synthetic: &mut u64) -> u64 {
    if let PeerKind::Serial {
        radio: Some(radio), ..
    } = &peer.kind
    {
        if !radio.is_empty() {
            return radio
                .iter()
                .take(8)
                .fold(0u64, |a, &b| (a << 8) | u64::from(b));
        }
    }
    *synthetic += 1;
    SYNTHETIC_RADIO_BASE + *synthetic
}

/// Whether a peer is a device (anything but the broker).
fn is_device(peer: &Peer) -> bool {
    !matches!(peer.kind, PeerKind::Broker { .. })
}

/// Plays the device side of `transcript` to a gateway over the serial line `port` at `baud`
/// (8N1, no flow control) with `framing`, and compares its answers with the recorded ones,
/// exactly as [`replay`] does over UDP (same report, same difference texts, ADVERTISE skipped;
/// `options.gateway` is not used).
///
/// Every device peer that sends something is replayed, whatever its recorded link (serial,
/// UDP or forwarded: the frames are the same MQTT-SN bytes; forwarded ones keep their
/// encapsulation):
/// - raw and SLIP lines carry one device: every frame from the gateway is that device's, and a
///   transcript with more than one sending device is rejected (`InvalidInput`).
/// - XBee API: the replay stands in for the coordinator radio on the gateway's line. A device's
///   frame is written as a 0x90 ZigBee Receive Packet from its 64-bit address (a serial peer's
///   recorded radio address, else `0x0013A200_00000001`, `..02`, ... in peer order), and the
///   gateway's 0x10 Transmit Requests are routed by destination address (broadcasts and
///   unknown addresses are ignored, like UDP broadcasts). Frames are written and read in the
///   configured API mode (1, or 2 escaped); other API modes are rejected. Two devices with the
///   same radio address are rejected.
///
/// Errors opening, reading or writing the port end the replay with an error.
pub async fn replay_serial(
    transcript: &Transcript,
    port: &str,
    baud: u32,
    framing: Framing,
    options: &ReplayOptions,
) -> io::Result<ReplayReport> {
    check_speed(options)?;
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    let xbee_mode = match framing {
        Framing::XbeeApi { api_mode } => {
            Some(ApiMode::try_from(api_mode).map_err(|e| invalid(e.to_string()))?)
        }
        Framing::Raw | Framing::Slip { .. } => None,
    };
    // One group per device peer, keyed by its name.
    let groups = groups_by(transcript, |peer| {
        is_device(peer).then(|| (peer.name.clone(), None))
    });
    let mut synthetic = 0;
    let mut addresses: Vec<u64> = Vec::with_capacity(groups.len());
    for (name, _) in &groups {
        let peer = transcript.peers.iter().find(|p| &p.name == name);
        let addr = peer.map_or(0, |p| radio_addr64(p, &mut synthetic));
        if let Some(other) = addresses.iter().position(|a| *a == addr) {
            if xbee_mode.is_some() {
                return Err(invalid(format!(
                    "devices {} and {name} have the same radio address {addr:016X}",
                    groups[other].0
                )));
            }
        }
        addresses.push(addr);
    }
    if xbee_mode.is_none() && groups.len() > 1 {
        let names: Vec<&str> = groups.iter().map(|(n, _)| n.as_str()).collect();
        return Err(invalid(format!(
            "a {} serial line carries one device, but the transcript has {} sending devices ({}); \
             replay it with XBee API framing or over UDP",
            match framing {
                Framing::Raw => "raw",
                _ => "SLIP",
            },
            groups.len(),
            names.join(", ")
        )));
    }
    let stream = tokio_serial::new(port, baud)
        .data_bits(tokio_serial::DataBits::Eight)
        .parity(tokio_serial::Parity::None)
        .stop_bits(tokio_serial::StopBits::One)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
        .map_err(|e| io::Error::new(io::Error::from(e.clone()).kind(), format!("{port}: {e}")))?;
    let (reader, writer) = tokio::io::split(stream);
    let writer = Arc::new(tokio::sync::Mutex::new(writer));
    let mut senders = Vec::with_capacity(groups.len());
    let mut linked = Vec::with_capacity(groups.len());
    for ((_, group), addr64) in groups.into_iter().zip(&addresses) {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let encoder = match (framing, xbee_mode) {
            (_, Some(mode)) => LineEncoder::XbeeRx {
                addr64: *addr64,
                mode,
            },
            (Framing::Slip { crc }, None) => LineEncoder::Codec(Box::new(SlipCodec::new(crc))),
            _ => LineEncoder::Codec(Box::new(RawCodec::new())),
        };
        let link = Link::Serial {
            writer: Arc::clone(&writer),
            encoder,
            inbound: rx,
        };
        linked.push((group, link));
    }
    let route: HashMap<u64, usize> = addresses.iter().enumerate().map(|(i, a)| (*a, i)).collect();
    let reader_task = tokio::spawn(read_line(reader, framing, xbee_mode, route, senders));
    let report = run_groups(linked, options).await;
    reader_task.abort();
    report
}

/// Reads the gateway's frames off the line and hands each to its device's channel (index in
/// `senders`): by destination address for XBee, all to the one device otherwise. A read error
/// or the end of the line is passed to every device.
async fn read_line(
    mut reader: ReadHalf<SerialStream>,
    framing: Framing,
    xbee_mode: Option<ApiMode>,
    route: HashMap<u64, usize>,
    senders: Vec<mpsc::UnboundedSender<io::Result<Vec<u8>>>>,
) {
    let mut deframer: Option<Box<dyn Deframer + Send>> = match framing {
        Framing::Raw => Some(Box::new(RawCodec::new())),
        Framing::Slip { crc } => Some(Box::new(SlipCodec::new(crc))),
        Framing::XbeeApi { .. } => None,
    };
    let mut tx_requests = TxRequestReader::new(xbee_mode.unwrap_or(ApiMode::Unescaped));
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) => {
                for tx in &senders {
                    let _ = tx.send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the serial line closed",
                    )));
                }
                return;
            }
            Ok(n) => n,
            Err(e) => {
                for tx in &senders {
                    let _ = tx.send(Err(io::Error::new(
                        e.kind(),
                        format!("reading the serial line: {e}"),
                    )));
                }
                return;
            }
        };
        match &mut deframer {
            Some(deframer) => {
                deframer.push(&buf[..n]);
                while let Some(item) = deframer.next() {
                    if let Received::Frame(frame) = item {
                        if let Some(tx) = senders.first() {
                            let _ = tx.send(Ok(frame.payload.to_vec()));
                        }
                    }
                }
            }
            None => {
                tx_requests.push(&buf[..n]);
                while let Some((dest, data)) = tx_requests.next() {
                    if let Some(tx) = route.get(&dest).and_then(|&i| senders.get(i)) {
                        let _ = tx.send(Ok(data));
                    }
                }
            }
        }
    }
}

/// Plays the device side of `transcript` against the gateway at `options.gateway` and compares
/// its answers with the recorded ones. IO errors (binding or sending) end the replay with an
/// error; differences in what the gateway says are in the report.
pub async fn replay(transcript: &Transcript, options: &ReplayOptions) -> io::Result<ReplayReport> {
    check_speed(options)?;
    let groups = groups(transcript);
    let mut links = Vec::with_capacity(groups.len());
    for _ in &groups {
        links.push(Link::Udp {
            socket: UdpSocket::bind(local_bind(options.gateway)).await?,
            gateway: options.gateway,
            buf: vec![0; 65_536],
        });
    }
    run_groups(groups.into_iter().zip(links).collect(), options).await
}

/// Rejects a pace that is not a positive number (unless it is ignored).
fn check_speed(options: &ReplayOptions) -> io::Result<()> {
    let valid_speed = options.speed.is_finite() && options.speed > 0.0;
    if !(valid_speed || options.as_fast_as_possible) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("speed must be a positive number, not {}", options.speed),
        ));
    }
    Ok(())
}

/// Replays every group over its link concurrently and collects the reports in group order.
async fn run_groups(
    groups: Vec<(Group, Link)>,
    options: &ReplayOptions,
) -> io::Result<ReplayReport> {
    let start = TokioInstant::now();
    let options = Arc::new(options.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (group, mut link)) in groups.into_iter().enumerate() {
        let options = Arc::clone(&options);
        tasks.spawn(async move {
            let report = run_group(&group, &mut link, &options, start).await;
            (index, report)
        });
    }
    let mut devices: Vec<(usize, DeviceReport)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, report) = joined.map_err(io::Error::other)?;
        devices.push((index, report?));
    }
    devices.sort_by_key(|(i, _)| *i);
    Ok(ReplayReport {
        devices: devices.into_iter().map(|(_, d)| d).collect(),
    })
}

/// When a recorded time is due, relative to `start`, at `speed`.
fn due(start: TokioInstant, at: Instant, speed: f64) -> TokioInstant {
    let secs = at.as_millis() as f64 / 1000.0 / speed;
    start + Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX / 4)
}

/// Frames received from the gateway, per peer of a group, not yet compared.
struct Inbox<'a> {
    group: &'a Group,
    link: &'a mut Link,
    queues: Vec<VecDeque<Vec<u8>>>,
}

impl Inbox<'_> {
    /// Receives one frame (ADVERTISE skipped) into its peer's queue, or `false` at `deadline`.
    async fn receive_until(&mut self, deadline: TokioInstant) -> io::Result<bool> {
        loop {
            let bytes = match tokio::time::timeout_at(deadline, self.link.recv()).await {
                Err(_) => return Ok(false),
                Ok(result) => result?,
            };
            if is_advertise(&bytes) {
                continue;
            }
            let peer = self.group.route(&bytes);
            self.queues[peer].push_back(bytes);
            return Ok(true);
        }
    }

    /// The next frame for `peer`, waiting until `deadline`.
    async fn next_for(
        &mut self,
        peer: usize,
        deadline: TokioInstant,
    ) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(bytes) = self.queues[peer].pop_front() {
                return Ok(Some(bytes));
            }
            if !self.receive_until(deadline).await? {
                return Ok(None);
            }
        }
    }
}

async fn run_group(
    group: &Group,
    link: &mut Link,
    options: &ReplayOptions,
    start: TokioInstant,
) -> io::Result<DeviceReport> {
    let mut report = DeviceReport {
        name: group.name(),
        expected: group
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Expect { .. }))
            .count(),
        ..DeviceReport::default()
    };
    let mut inbox = Inbox {
        group,
        link,
        queues: vec![VecDeque::new(); group.peers.len()],
    };
    let mut last_line = 0;
    for step in &group.steps {
        match step {
            Step::Send { at, peer, bytes } => {
                // Everything the gateway was expected to say to this peer before this input
                // has been compared; anything else it said to it is unexpected.
                while inbox.receive_until(TokioInstant::now()).await? {}
                unexpected(&mut inbox, &mut report, last_line, Some(*peer));
                if !options.as_fast_as_possible {
                    tokio::time::sleep_until(due(start, *at, options.speed)).await;
                }
                inbox.link.send(bytes).await?;
                report.sent += 1;
            }
            Step::Expect {
                at,
                peer,
                pattern,
                line,
                direction,
            } => {
                last_line = *line;
                let from = if options.as_fast_as_possible {
                    TokioInstant::now()
                } else {
                    due(start, *at, options.speed).max(TokioInstant::now())
                };
                let deadline = from + options.answer_timeout;
                match inbox.next_for(*peer, deadline).await? {
                    Some(actual) if pattern.matches(&actual) => report.matched += 1,
                    Some(actual) => {
                        let offset = pattern.first_difference(&actual).unwrap_or(0);
                        report.differences.push(format!(
                            "line {line} ({direction}): a different frame\n\
                             expected {}\n\
                             actual   {}\n\
                             first difference at byte {offset}",
                            describe_pattern(pattern),
                            describe_actual(&actual),
                        ));
                    }
                    None => report.differences.push(format!(
                        "line {line} ({direction}): no answer within {:?}\n\
                         expected {}",
                        options.answer_timeout,
                        describe_pattern(pattern),
                    )),
                }
            }
        }
    }
    // Whatever else arrives shortly after the last line was not recorded.
    let settle = TokioInstant::now() + SETTLE.min(options.answer_timeout);
    while inbox.receive_until(settle).await? {}
    unexpected(&mut inbox, &mut report, last_line, None);
    Ok(report)
}

/// Reports every frame still queued (for `only` that peer, or for all) as unexpected.
fn unexpected(
    inbox: &mut Inbox<'_>,
    report: &mut DeviceReport,
    last_line: usize,
    only: Option<usize>,
) {
    for (peer, queue) in inbox.queues.iter_mut().enumerate() {
        if only.is_some_and(|o| o != peer) {
            continue;
        }
        let name = &inbox.group.peers[peer].0;
        for bytes in queue.drain(..) {
            let place = if last_line == 0 {
                "before the first expected line".to_owned()
            } else {
                format!("after line {last_line}")
            };
            report.differences.push(format!(
                "{place} (gw > {name}): an unexpected frame\n\
                 actual   {}",
                describe_actual(&bytes)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pcap input

/// Reads the device side of a pcap file written by [`crate::record::pcap::PcapWriter`] (classic
/// pcap, `LINKTYPE_RAW`, microsecond or nanosecond timestamps, either byte order): every UDP
/// datagram to or from `gateway_port` becomes a transcript entry (to it: an input; from it: an
/// expected output). Devices are named `dev1`, `dev2`, ... by address in order of appearance
/// (frames with a forwarder encapsulation get one peer per node id behind that address); times
/// are relative to the file's first packet. TCP and other packets are skipped.
pub fn transcript_from_pcap(bytes: &[u8], gateway_port: u16) -> Result<Transcript, String> {
    let header = bytes
        .get(..24)
        .ok_or("not a pcap file: shorter than the 24-byte global header")?;
    let magic = [header[0], header[1], header[2], header[3]];
    let (little, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => {
            return Err(format!(
                "not a classic pcap file: magic {}",
                hex::format(&magic)
            ))
        }
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let word = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(word)
        } else {
            u32::from_be_bytes(word)
        }
    };
    let linktype = u32_at(header, 20) & 0x0FFF_FFFF;
    if linktype != 101 {
        return Err(format!(
            "link type {linktype} is not supported (only 101, LINKTYPE_RAW)"
        ));
    }
    let mut builder = PcapTranscript::new(gateway_port);
    let mut offset = 24;
    let mut first: Option<u64> = None;
    let mut index = 0usize;
    while offset < bytes.len() {
        index += 1;
        let record = bytes
            .get(offset..offset + 16)
            .ok_or_else(|| format!("packet {index}: truncated record header at byte {offset}"))?;
        let secs = u64::from(u32_at(record, 0));
        let frac = u64::from(u32_at(record, 4));
        let incl = u32_at(record, 8) as usize;
        let micros = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let data = bytes
            .get(offset + 16..offset + 16 + incl)
            .ok_or_else(|| format!("packet {index}: truncated data at byte {}", offset + 16))?;
        offset += 16 + incl;
        let first = *first.get_or_insert(micros);
        let at = Instant::from_millis(micros.saturating_sub(first) / 1000);
        if let Some((from, to, payload)) = udp_datagram(data) {
            builder.datagram(at, from, to, payload);
        }
    }
    Ok(builder.finish())
}

/// Source, destination and payload of a raw IPv4/IPv6 UDP packet; `None` for anything else.
fn udp_datagram(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let version = packet.first()? >> 4;
    let (src, dst, udp) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0F) * 4;
            if ihl < 20 || packet.get(9)? != &17 {
                return None;
            }
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            let end = if total >= ihl {
                total.min(packet.len())
            } else {
                packet.len()
            };
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), packet.get(ihl..end)?)
        }
        6 => {
            if packet.get(6)? != &17 {
                return None;
            }
            let payload_len = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
            let end = (40 + payload_len).min(packet.len());
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(src).to_canonical(),
                IpAddr::from(dst).to_canonical(),
                packet.get(40..end)?,
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let end = if len >= 8 {
        len.min(udp.len())
    } else {
        udp.len()
    };
    Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        udp.get(8..end)?,
    ))
}

/// Builds a transcript from UDP datagrams.
struct PcapTranscript {
    gateway_port: u16,
    gateways: Vec<SocketAddr>,
    transcript: Transcript,
    names: HashMap<(SocketAddr, Option<Vec<u8>>), String>,
}

impl PcapTranscript {
    fn new(gateway_port: u16) -> Self {
        PcapTranscript {
            gateway_port,
            gateways: Vec::new(),
            transcript: Transcript::default(),
            names: HashMap::new(),
        }
    }

    /// Whether a datagram from `from` to `to` goes to the gateway (`Some(true)`), comes from it
    /// (`Some(false)`) or does not involve it (`None`).
    fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<bool> {
        let to_gw = to.port() == self.gateway_port;
        let from_gw = from.port() == self.gateway_port;
        let inbound = match (to_gw, from_gw) {
            (true, false) => true,
            (false, true) => false,
            (false, false) => return None,
            // Both ends on the gateway port (e.g. synthetic radio addresses): the side seen as
            // the gateway before decides; otherwise the destination is the gateway.
            (true, true) => {
                if self.gateways.contains(&to) {
                    true
                } else {
                    !self.gateways.contains(&from)
                }
            }
        };
        let gateway = if inbound { to } else { from };
        if !self.gateways.contains(&gateway) {
            self.gateways.push(gateway);
        }
        Some(inbound)
    }

    fn datagram(&mut self, at: Instant, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let Some(inbound) = self.inbound(from, to) else {
            return;
        };
        let device = if inbound { from } else { to };
        let node = if Frame::is_encapsulated(payload) {
            payload
                .get(3..usize::from(payload[0]))
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
        } else {
            None
        };
        let key = (device, node);
        let name = match self.names.get(&key) {
            Some(name) => name.clone(),
            None => {
                let name = format!("dev{}", self.transcript.peers.len() + 1);
                let kind = match &key.1 {
                    None => PeerKind::Udp(device),
                    Some(node_id) => PeerKind::Forwarded {
                        via: device,
                        node_id: node_id.clone(),
                    },
                };
                self.transcript.peers.push(Peer {
                    name: name.clone(),
                    kind,
                });
                self.names.insert(key, name.clone());
                name
            }
        };
        let mut entry = if inbound {
            Entry::input(at, name, payload)
        } else {
            Entry::output(at, name, payload)
        };
        if let Ok(frame) = Frame::decode(payload) {
            entry = entry.with_comment(frame.to_string());
        }
        self.transcript.entries.push(entry);
    }

    fn finish(self) -> Transcript {
        self.transcript
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_and_forwarded_peers_group_by_address() {
        let text = "@peer a udp 127.0.0.1:5000\n\
                    @peer n1 udp 127.0.0.1:6000 via-forwarder 01\n\
                    @peer n2 udp 127.0.0.1:6000 via-forwarder 02\n\
                    @peer bcast udp 255.255.255.255:1884\n\
                    @peer brk broker\n\
                    0.000 a > gw 02 16\n\
                    0.000 gw > a 02 17\n\
                    0.000 gw > bcast 03 00 01\n\
                    0.100 n1 > gw 04 FE 00 01 02 16\n\
                    0.100 gw > n1 04 FE 00 01 02 17\n\
                    0.200 n2 > gw 04 FE 00 02 02 16\n\
                    0.200 brk > gw !up\n";
        let t = Transcript::parse(text, "t").expect("parses");
        let groups = groups(&t);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].name(), "a");
        assert_eq!(groups[0].steps.len(), 2);
        assert_eq!(groups[1].name(), "n1+n2");
        assert_eq!(groups[1].steps.len(), 3);
        assert_eq!(groups[1].route(&[4, 0xFE, 0, 2, 2, 0x17]), 1);
        assert_eq!(groups[1].route(&[4, 0xFE, 0, 1, 2, 0x17]), 0);
    }

    #[test]
    fn rx_packets_decode_with_the_gateways_xbee_deframer() {
        use crate::transport::serial::framing::xbee::XbeeCodec;
        // 0x13 and 0x11 in the address and payload need escaping in API mode 2.
        let payload = [5u8, 0x0C, 0x7E, 0x11, 0x13];
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let bytes = xbee_rx_packet(0x0013_A200_4011_7D13, mode, &payload);
            let mut codec = XbeeCodec::new(mode);
            codec.push(&bytes);
            match codec.next() {
                Some(Received::Frame(frame)) => {
                    assert_eq!(&frame.payload[..], &payload, "{mode:?}");
                    let source = frame.source.expect("a source address");
                    assert_eq!(source.addr64, 0x0013_A200_4011_7D13, "{mode:?}");
                    assert_eq!(source.addr16, 0xFFFE, "{mode:?}");
                }
                other => panic!("{mode:?}: {other:?}"),
            }
        }
        // The Digi example layout in API mode 1: 7E, length, 0x90, ..., checksum.
        let bytes = xbee_rx_packet(1, ApiMode::Unescaped, &[2, 0x17]);
        assert_eq!(&bytes[..4], &[0x7E, 0x00, 0x0E, 0x90]);
        let sum = bytes[3..].iter().fold(0u8, |a, &b| a.wrapping_add(b));
        assert_eq!(sum, 0xFF);
    }

    #[test]
    fn tx_requests_from_the_gateways_xbee_encoder_are_parsed_in_any_split() {
        use crate::transport::serial::framing::xbee::XbeeCodec;
        use crate::transport::serial::framing::RadioAddr;
        for mode in [ApiMode::Unescaped, ApiMode::Escaped] {
            let mut codec = XbeeCodec::new(mode);
            let mut out = BytesMut::new();
            out.extend_from_slice(&[0x00, 0x42]); // noise before the first frame
            let to = RadioAddr::new(0x0013_A200_1111_7E13, 0x1234);
            codec.encode(&[3, 0x05, 0x00], Some(to), &mut out).unwrap();
            // A frame of another type (Modem Status) is skipped.
            out.extend_from_slice(&[0x7E, 0x00, 0x02, 0x8A, 0x00, 0x75]);
            codec.encode(&[2, 0x17], None, &mut out).unwrap();
            let expected = vec![
                (0x0013_A200_1111_7E13, vec![3, 0x05, 0x00]),
                (0xFFFF, vec![2, 0x17]),
            ];
            for split in 0..out.len() {
                let mut reader = TxRequestReader::new(mode);
                let mut got = Vec::new();
                for chunk in [&out[..split], &out[split..]] {
                    reader.push(chunk);
                    while let Some(item) = reader.next() {
                        got.push(item);
                    }
                }
                assert_eq!(got, expected, "{mode:?}, split at {split}");
            }
        }
    }

    #[test]
    fn radio_addresses_come_from_the_peer_or_are_synthetic() {
        let text = "@peer a serial serial0 0013A20040861234\n\
                    @peer b serial serial0\n\
                    @peer c udp 127.0.0.1:5000\n";
        let t = Transcript::parse(text, "t").expect("parses");
        let mut synthetic = 0;
        let addrs: Vec<u64> = t
            .peers
            .iter()
            .map(|p| radio_addr64(p, &mut synthetic))
            .collect();
        assert_eq!(
            addrs,
            [
                0x0013_A200_4086_1234,
                0x0013_A200_0000_0001,
                0x0013_A200_0000_0002
            ]
        );
    }

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

    #[test]
    fn a_report_renders_summaries_and_differences() {
        let report = ReplayReport {
            devices: vec![DeviceReport {
                name: "dev1".into(),
                sent: 3,
                expected: 3,
                matched: 2,
                differences: vec!["line 7 (gw > dev1): no answer\nexpected PINGRESP".into()],
            }],
        };
        assert_eq!(report.differences(), 1);
        let text = report.render();
        assert!(text.contains("dev1: sent 3, matched 2/3"), "{text}");
        assert!(text.contains("line 7"), "{text}");
        assert!(text.contains("FAILED: 1 difference"), "{text}");
    }
}
