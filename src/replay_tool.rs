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

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant as TokioInstant;

use crate::codec::{Frame, Message};
use crate::hex;
use crate::time::Instant;
use crate::transcript::{Direction, Entry, FramePattern, Payload, Peer, PeerKind, Transcript};

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
    let senders: Vec<&str> = transcript
        .entries
        .iter()
        .filter(|e| e.direction.is_input() && e.frame().is_some())
        .map(Entry::peer)
        .collect();
    let mut order: Vec<SocketAddr> = Vec::new();
    let mut by_addr: HashMap<SocketAddr, Group> = HashMap::new();
    // (group address, index in group) per peer name.
    let mut member: HashMap<&str, (SocketAddr, usize)> = HashMap::new();
    for peer in &transcript.peers {
        if !senders.contains(&peer.name.as_str()) {
            continue;
        }
        let Some((addr, node)) = udp_address(peer) else {
            continue;
        };
        let group = by_addr.entry(addr).or_insert_with(|| {
            order.push(addr);
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
        let Some(&(addr, index)) = member.get(entry.peer()) else {
            continue;
        };
        let Some(group) = by_addr.get_mut(&addr) else {
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
        .filter_map(|addr| by_addr.remove(&addr))
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

/// Plays the device side of `transcript` against the gateway at `options.gateway` and compares
/// its answers with the recorded ones. IO errors (binding or sending) end the replay with an
/// error; differences in what the gateway says are in the report.
pub async fn replay(transcript: &Transcript, options: &ReplayOptions) -> io::Result<ReplayReport> {
    let valid_speed = options.speed.is_finite() && options.speed > 0.0;
    if !(valid_speed || options.as_fast_as_possible) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("speed must be a positive number, not {}", options.speed),
        ));
    }
    let groups = groups(transcript);
    let mut sockets = Vec::with_capacity(groups.len());
    for _ in &groups {
        sockets.push(UdpSocket::bind(local_bind(options.gateway)).await?);
    }
    let start = TokioInstant::now();
    let options = Arc::new(options.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (group, socket)) in groups.into_iter().zip(sockets).enumerate() {
        let options = Arc::clone(&options);
        tasks.spawn(async move {
            let report = run_group(&group, &socket, &options, start).await;
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
    socket: &'a UdpSocket,
    queues: Vec<VecDeque<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Inbox<'_> {
    /// Receives one frame (ADVERTISE skipped) into its peer's queue, or `false` at `deadline`.
    async fn receive_until(&mut self, deadline: TokioInstant) -> io::Result<bool> {
        loop {
            let received =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.buf)).await;
            let (n, _) = match received {
                Err(_) => return Ok(false),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Ok(result) => result?,
            };
            let bytes = self.buf[..n].to_vec();
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
    socket: &UdpSocket,
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
        socket,
        queues: vec![VecDeque::new(); group.peers.len()],
        buf: vec![0; 65_536],
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
                socket.send_to(bytes, options.gateway).await?;
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
