//! The `replay` subcommand: plays the device side of a recording (a `.snlog` transcript, or a
//! pcap file read by [`crate::record::pcap_reader`]) against a running gateway, and compares
//! what the gateway answers with what the recording says it answered.
//!
//! # How it works
//! - The recorded devices are split into groups that share one link to the gateway: over UDP
//!   ([`replay`], module `udp`) a device or the nodes behind one forwarder; over a serial line
//!   ([`replay_serial`], module `serial`) one device each, all on the one line.
//! - Only device inputs (`devX > gw`) are sent. Broker lines and control entries are ignored:
//!   the running gateway talks to its own broker. Inputs go out at their recorded times scaled
//!   by [`ReplayOptions::speed`], or back to back with [`ReplayOptions::as_fast_as_possible`];
//!   either way a device waits for the answers recorded before its next input first, so
//!   request/response ordering holds.
//! - The recorded `gw > devX` lines are the expected answers. Frames the gateway sends are
//!   matched in order per device with [`FramePattern::matches`] (so `??` wildcards accept any
//!   byte); ADVERTISE frames are skipped as broadcast noise. Lines to peers that are not
//!   replayed (a `bcast` peer, say) are ignored.
//! - A missing answer (none within [`ReplayOptions::answer_timeout`]), a frame that differs, and
//!   a frame nobody expected are differences, reported with the transcript line, both frames
//!   decoded with the codec and in hex, and the offset of the first differing byte.
//!
//! # Modules
//! This module holds what every link shares: options, the plan of inputs and expected answers,
//! the comparison and the report. `udp` and `serial` connect the groups to the gateway;
//! `coordinator` stands in for the XBee coordinator radio on an XBee serial line.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant as TokioInstant;

use crate::codec::{Frame, Message};
use crate::config::Framing;
use crate::hex;
use crate::time::Instant;
use crate::transcript::{Direction, Entry, FramePattern, Payload, Peer, Transcript};

mod coordinator;
mod serial;
mod udp;

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

/// Plays the device side of `transcript` against the gateway at `options.gateway` over UDP and
/// compares its answers with the recorded ones. Every recorded device that sent something gets
/// its own socket (bound to `127.0.0.1:0`, `[::1]:0` for an IPv6 gateway, or the unspecified
/// address when the gateway is not on loopback), so each device keeps its own address; devices
/// behind one forwarder (`udp ADDR via-forwarder NODEID`) share one socket, since they are one
/// forwarder, and their lines already carry the encapsulation.
///
/// IO errors (binding or sending) end the replay with an error; differences in what the gateway
/// says are in the report.
pub async fn replay(transcript: &Transcript, options: &ReplayOptions) -> io::Result<ReplayReport> {
    check_speed(options)?;
    let groups = udp::connect(transcript, options.gateway).await?;
    run_groups(groups, options).await
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
    let line = serial::connect(transcript, port, baud, framing)?;
    let report = run_groups(line.groups, options).await;
    line.reader.abort();
    report
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

// ---------------------------------------------------------------------------------------------
// The plan: what each group sends and expects, in file order

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

/// Devices that share one link: a plain UDP device, the nodes behind one forwarder, or one
/// device on a serial line.
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

    /// Which peer of the group a frame from the gateway is for: by the node id of its forwarder
    /// encapsulation, else the group's peer without one, else the first.
    fn route(&self, bytes: &[u8]) -> usize {
        if Frame::is_encapsulated(bytes) {
            // Length, type and control octets, then the node id up to the header's end.
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

/// Splits the transcript into groups of peers that send at least one frame, keyed by `key`
/// (peers without a key are left out; the second part of a key is the node id of a forwarded
/// peer), with their inputs and expected answers in file order. Groups are in the order their
/// first peer is declared.
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

// ---------------------------------------------------------------------------------------------
// Running the plan and comparing

/// How a replayed group reaches the gateway.
enum Link {
    /// Its own UDP socket.
    Udp(udp::UdpLink),
    /// One device's share of a serial line.
    Serial(serial::SerialLink),
}

impl Link {
    /// Sends one MQTT-SN frame to the gateway.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp(link) => link.send(bytes).await,
            Link::Serial(link) => link.send(bytes).await,
        }
    }

    /// The next frame from the gateway for this link. Cancel safe.
    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Link::Udp(link) => link.recv().await,
            Link::Serial(link) => link.recv().await,
        }
    }
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

/// Plays one group's steps over its link and compares each answer as it is due.
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

#[cfg(test)]
mod tests {
    use super::*;

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
