//! Recording while running (`--record FILE.snlog`): every frame exchanged with devices and every
//! MQTT packet exchanged with the broker, with timestamps, in the transcript format, so that a
//! recording becomes a test fixture with no editing beyond naming peers.
//!
//! Recording never slows the gateway: events go through a bounded queue to a writer thread
//! (events that do not fit are counted and skipped); writes are buffered; a write error (full
//! disk, file removed) is logged once and recording stops while the gateway keeps running. With
//! limits, the file is rotated: `FILE` is renamed `FILE.1` (older ones shift up, the oldest
//! beyond `keep` is deleted) and a new `FILE` starts with its peers declared again.

use crate::codec::Frame;
use crate::engine::auth::Identity;
use crate::engine::mqtt::wire::{fixed_header, MalformedLength};
use crate::engine::mqtt::ConnectOptions;
use crate::engine::PeerAddr;
use crate::time::{Duration, Instant};
use crate::transcript::{harness, Control, Entry, Peer, PeerKind, TranscriptWriter};
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Events waiting for the writer thread.
const QUEUE: usize = 65_536;

/// Where a recorded frame went or came from.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A device.
    Device(PeerAddr),
    /// Every device in reach (ADVERTISE, GWINFO).
    Broadcast,
    /// A broker connection; `owner` is the device it belongs to in transparent mode.
    Broker {
        /// The connection.
        conn: u64,
        /// The device whose connection it is, if any.
        owner: Option<PeerAddr>,
    },
}

/// What a recorded event carries.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Bytes on the wire: an MQTT-SN frame or a piece of the MQTT byte stream.
    Bytes(Bytes),
    /// A broker connection's life cycle.
    Control(Control),
}

/// One thing that happened, as seen by the gateway.
#[derive(Debug, Clone)]
pub struct RecordEvent {
    /// When, on the gateway's clock.
    pub at: Instant,
    /// True when the gateway received it.
    pub inbound: bool,
    /// The other side.
    pub peer: Endpoint,
    /// The gateway's own address in this exchange, when it has one (the UDP listener).
    pub local: Option<std::net::SocketAddr>,
    /// What.
    pub payload: Payload,
    /// For a frame from a DTLS association: what it proved (declared with the peer; never
    /// a key).
    pub identity: Option<mqttsn_core::engine::auth::Identity>,
}

/// Bounds of one recording file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordLimits {
    /// Rotate once the file holds this many bytes.
    pub max_bytes: Option<u64>,
    /// Rotate once the file covers this much time.
    pub max_age: Option<Duration>,
    /// Rotated files kept besides the current one.
    pub keep: usize,
}

/// The gateway's handle on a recording.
pub struct Recorder {
    tx: Option<SyncSender<RecordEvent>>,
    skipped: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Records a transcript: creates (truncates) `path` and starts the writer thread.
    pub fn create(path: &Path, limits: RecordLimits) -> io::Result<Recorder> {
        Self::start(Some((path, limits)), None)
    }

    /// Records a transcript, a pcap file for Wireshark, or both. `pcap` is the file and the
    /// broker's address (broker traffic appears as TCP from a synthetic client port).
    pub fn start(
        snlog: Option<(&Path, RecordLimits)>,
        pcap: Option<(&Path, std::net::SocketAddr)>,
    ) -> io::Result<Recorder> {
        let mut sinks: Vec<Box<dyn EventSink>> = Vec::new();
        if let Some((path, limits)) = snlog {
            sinks.push(Box::new(Sink {
                path: path.to_path_buf(),
                limits,
                first: Some(File::create(path)?),
                state: None,
                failed: false,
            }));
        }
        if let Some((path, broker)) = pcap {
            sinks.push(Box::new(super::pcap_sink::PcapSink::create(path, broker)?));
        }
        let (tx, rx) = sync_channel(QUEUE);
        let writer = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || write_loop(sinks, rx))?;
        Ok(Recorder {
            tx: Some(tx),
            skipped: Arc::new(AtomicU64::new(0)),
            writer: Some(writer),
        })
    }

    /// Queues an event; never blocks (a full queue skips the event and counts it).
    pub fn record(&self, event: RecordEvent) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(event) {
                self.skipped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Events skipped because the writer could not keep up.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Relaxed)
    }

    /// Writes what is queued and closes the files; returns once the writer thread has.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        // The end of the queue tells the writer thread to write the rest and stop.
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Recorder {
    /// As [`Recorder::finish`], for the paths that never call it (a panic unwinding the
    /// driver, say): the recording is still complete and closed once the recorder is gone.
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread's state: names given to peers, and the current file.
struct FileState {
    out: TranscriptWriter<CountingWriter<BufWriter<File>>>,
    names: HashMap<String, String>,
    declared: Vec<Peer>,
    devices: usize,
    brokers: usize,
    started: Instant,
    /// Partial MQTT packets per broker connection and direction (true: inbound).
    partial: HashMap<(u64, bool), Reassembly>,
    /// Times a broker stream could not be cut into packets (written raw instead).
    misframed: u64,
}

/// Counts bytes written, for the size limit.
struct CountingWriter<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn open_state(file: File, started: Instant) -> io::Result<FileState> {
    let mut out = TranscriptWriter::new(CountingWriter {
        inner: BufWriter::with_capacity(64 * 1024, file),
        written: 0,
    });
    out.write_comment(
        "Recorded by mqttsn-gateway --record; times are seconds since the recording started.",
    )?;
    Ok(FileState {
        out,
        names: HashMap::new(),
        declared: Vec::new(),
        devices: 0,
        brokers: 0,
        started,
        partial: HashMap::new(),
        misframed: 0,
    })
}

/// The transcript's view of a device address: serial ports are named by their number.
fn device_kind(addr: &PeerAddr) -> PeerKind {
    harness::device_kind(*addr, |port| format!("serial{port}"))
}

impl FileState {
    /// The name of a peer, declaring it on first use.
    fn name(&mut self, endpoint: &Endpoint, identity: Option<&Identity>) -> io::Result<String> {
        let (key, kind) = match endpoint {
            Endpoint::Device(addr) => (format!("{addr}"), device_kind(addr)),
            Endpoint::Broadcast => ("broadcast".to_string(), PeerKind::Udp(harness::BROADCAST)),
            Endpoint::Broker { conn, owner } => {
                let client = match owner {
                    Some(addr) => Some(self.name(&Endpoint::Device(*addr), None)?),
                    None => None,
                };
                (format!("conn{conn}"), PeerKind::Broker { client })
            }
        };
        if let Some(name) = self.names.get(&key) {
            return Ok(name.clone());
        }
        let name = match endpoint {
            Endpoint::Device(_) => {
                self.devices += 1;
                format!("dev{}", self.devices)
            }
            Endpoint::Broadcast => "bcast".to_string(),
            Endpoint::Broker { .. } => {
                self.brokers += 1;
                if self.brokers == 1 {
                    "brk".to_string()
                } else {
                    format!("brk{}", self.brokers)
                }
            }
        };
        let peer = Peer {
            name: name.clone(),
            kind,
            identity: identity.cloned(),
        };
        self.out.write_peer(&peer)?;
        self.declared.push(peer);
        self.names.insert(key, name.clone());
        Ok(name)
    }

    fn write(&mut self, event: &RecordEvent) -> io::Result<()> {
        let name = self.name(
            &with_forwarder_node(&event.peer, &event.payload),
            event.identity.as_ref(),
        )?;
        let at = Instant::from_millis(event.at.saturating_since(self.started).as_millis());
        // The broker side is a byte stream: write it one MQTT packet per line.
        if let (Endpoint::Broker { conn, .. }, Payload::Bytes(bytes)) =
            (&event.peer, &event.payload)
        {
            let stream = self.partial.entry((*conn, event.inbound)).or_default();
            let mut misframed = false;
            for (packet, cut) in take_packets(stream, bytes) {
                let entry = if event.inbound {
                    Entry::input(at, name.clone(), &packet)
                } else {
                    Entry::output(at, name.clone(), &packet)
                };
                let entry = match cut {
                    None => entry,
                    Some(Cut::TooLarge) => entry.with_comment(
                        "the start of a PUBLISH too large for any device (the gateway skips it)",
                    ),
                    Some(Cut::Continued) => {
                        entry.with_comment("more of the PUBLISH too large for any device")
                    }
                    Some(Cut::Misframed) => {
                        misframed = true;
                        entry.with_comment("not MQTT packets: a malformed length")
                    }
                };
                self.out.write_entry(&entry)?;
            }
            if misframed {
                self.misframed += 1;
                if self.misframed == 1 {
                    tracing::warn!(conn, "recording: broker stream misframed; written raw");
                }
            }
            return Ok(());
        }
        if let (Endpoint::Broker { conn, .. }, Payload::Control(control)) =
            (&event.peer, &event.payload)
        {
            // A connection opened, closed or replaced: what was half sent or received belongs
            // to the old byte stream, and the new one starts on a packet boundary. The half
            // packet is still written, raw, so that a broker cutting off mid-packet can be seen.
            // Our own close does not end what the broker sends: a graceful close reads on until
            // the broker's FIN, so the inbound stream ends only with the transport (or a new one).
            let inbound_ends = event.inbound || *control == Control::Open;
            for inbound in [true, false].into_iter().filter(|&i| !i || inbound_ends) {
                let Some(Reassembly { buf: rest, .. }) = self.partial.remove(&(*conn, inbound))
                else {
                    continue;
                };
                if rest.is_empty() {
                    continue;
                }
                let entry = if inbound {
                    Entry::input(at, name.clone(), &rest)
                } else {
                    Entry::output(at, name.clone(), &rest)
                };
                self.out.write_entry(
                    &entry.with_comment("incomplete packet at the end of the stream"),
                )?;
            }
        }
        let entry = match (&event.payload, event.inbound) {
            (Payload::Bytes(bytes), true) => Entry::input(at, name, bytes),
            (Payload::Bytes(bytes), false) => Entry::output(at, name, bytes),
            (Payload::Control(c), true) => Entry::input_control(at, name, *c),
            (Payload::Control(c), false) => Entry::output_control(at, name, *c),
        };
        // Device frames get their decoding as a comment, for people reading the file.
        let entry = match (&event.payload, &event.peer) {
            (Payload::Bytes(bytes), Endpoint::Device(_) | Endpoint::Broadcast) => {
                match Frame::decode(bytes) {
                    Ok(frame) => entry.with_comment(frame.to_string()),
                    Err(e) => entry.with_comment(format!("malformed: {e}")),
                }
            }
            _ => entry,
        };
        self.out.write_entry(&entry)
    }
}

/// A frame from a forwarder carries the radio node's id; the node is the peer (as it is for
/// the gateway's replies), not the forwarder.
fn with_forwarder_node(peer: &Endpoint, payload: &Payload) -> Endpoint {
    if let (Endpoint::Device(addr), Payload::Bytes(bytes)) = (peer, payload) {
        if addr.node.is_none() && Frame::is_encapsulated(bytes) {
            if let Ok(Frame {
                forwarder: Some(fw),
                ..
            }) = Frame::decode(bytes)
            {
                if let Some(node) = crate::engine::NodeId::new(fw.node_id) {
                    return Endpoint::Device(PeerAddr {
                        link: addr.link,
                        node: Some(node),
                    });
                }
            }
        }
    }
    peer.clone()
}

/// The longest MQTT packet a recording waits for: the engine skips broker PUBLISHes beyond its
/// default size limit and refuses other packets that long, and its own packets are far
/// smaller, so waiting for more would only grow the buffer.
const MAX_PACKET: usize = 5 + ConnectOptions::DEFAULT_MAX_PACKET_SIZE;

/// One direction of a broker connection's byte stream, being cut into packets.
#[derive(Debug, Default)]
struct Reassembly {
    /// Bytes of packets not yet whole.
    buf: Vec<u8>,
    /// Bytes still to come of a PUBLISH too large to record whole, not kept.
    skip: usize,
}

/// Why a recorded chunk is not one whole MQTT packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The start of a PUBLISH over [`MAX_PACKET`], which the engine skips as well. Its rest
    /// is written as it arrives ([`Cut::Continued`]), never buffered, so that a replay feeds
    /// the engine the same bytes to skip.
    TooLarge,
    /// Bytes of such a PUBLISH after its start, as they arrived.
    Continued,
    /// A malformed length: what was buffered, raw. The stream starts over after it.
    Misframed,
}

/// Adds `bytes` to `stream` and cuts the whole MQTT packets off its front, with a [`Cut`] for
/// each chunk that is not one. Nothing larger than [`MAX_PACKET`] is ever buffered.
fn take_packets(stream: &mut Reassembly, bytes: &[u8]) -> Vec<(Vec<u8>, Option<Cut>)> {
    let skipped = stream.skip.min(bytes.len());
    stream.skip -= skipped;
    let mut packets = Vec::new();
    if skipped > 0 {
        packets.push((bytes[..skipped].to_vec(), Some(Cut::Continued)));
    }
    stream.buf.extend_from_slice(&bytes[skipped..]);
    let buf = &mut stream.buf;
    loop {
        match fixed_header(buf) {
            Ok(Some(header)) if header.packet_len() > MAX_PACKET && buf[0] >> 4 == 3 => {
                let have = buf.len().min(header.packet_len());
                stream.skip = header.packet_len() - have;
                packets.push((buf.drain(..have).collect(), Some(Cut::TooLarge)));
            }
            Ok(Some(header)) if header.packet_len() > MAX_PACKET => break,
            Ok(Some(header)) if header.packet_len() <= buf.len() => {
                packets.push((buf.drain(..header.packet_len()).collect(), None));
            }
            Ok(_) => return packets,
            Err(MalformedLength) => break,
        }
    }
    packets.push((std::mem::take(buf), Some(Cut::Misframed)));
    packets
}

fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Renames `path` to `path.1` (and older ones up), keeping `keep` old files.
fn rotate(path: &Path, keep: usize) -> io::Result<File> {
    if keep == 0 {
        return File::create(path);
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(rotated(path, n), rotated(path, n + 1));
    }
    std::fs::rename(path, rotated(path, 1))?;
    File::create(path)
}

/// Something the writer thread feeds events to.
pub(super) trait EventSink: Send {
    /// Writes one event (errors are reported once by the sink and end its recording).
    fn handle(&mut self, event: &RecordEvent);
    /// Pushes buffered writes to the file.
    fn flush(&mut self);
}

/// The transcript file being written and what went wrong.
struct Sink {
    path: PathBuf,
    limits: RecordLimits,
    first: Option<File>,
    state: Option<FileState>,
    failed: bool,
}

impl EventSink for Sink {
    fn handle(&mut self, event: &RecordEvent) {
        Sink::handle(self, event);
    }

    fn flush(&mut self) {
        Sink::flush(self);
    }
}

impl Sink {
    fn handle(&mut self, event: &RecordEvent) {
        if self.failed {
            return; // reported once; the gateway keeps running without a recording
        }
        if let Err(e) = self.try_handle(event) {
            self.fail(&e);
        }
    }

    fn try_handle(&mut self, event: &RecordEvent) -> io::Result<()> {
        if self.state.is_none() {
            let file = match self.first.take() {
                Some(f) => f,
                None => File::create(&self.path)?,
            };
            self.state = Some(open_state(file, event.at)?);
        }
        let Some(s) = self.state.as_mut() else {
            return Ok(());
        };
        let too_big = self
            .limits
            .max_bytes
            .is_some_and(|max| s.out.get_ref().written >= max);
        let too_old = self
            .limits
            .max_age
            .is_some_and(|age| event.at.saturating_since(s.started) >= age);
        if too_big || too_old {
            s.out.flush()?;
            let file = rotate(&self.path, self.limits.keep)?;
            *s = open_state(file, event.at)?;
        }
        s.write(event)
    }

    fn flush(&mut self) {
        if self.failed {
            return;
        }
        if let Some(s) = self.state.as_mut() {
            if let Err(e) = s.out.flush() {
                self.fail(&e);
            }
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::error!(file = %self.path.display(), error = %e, "recording stopped; the gateway keeps running");
        self.failed = true;
        self.state = None;
    }
}

fn write_loop(mut sinks: Vec<Box<dyn EventSink>>, rx: Receiver<RecordEvent>) {
    // Write what has queued up, then flush once the queue is empty: a busy gateway's events
    // are written in large buffered batches, a quiet one's files are always up to date.
    while let Ok(event) = rx.recv() {
        for sink in &mut sinks {
            sink.handle(&event);
        }
        while let Ok(event) = rx.try_recv() {
            for sink in &mut sinks {
                sink.handle(&event);
            }
        }
        for sink in &mut sinks {
            sink.flush();
        }
    }
    for sink in &mut sinks {
        sink.flush();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::transcript::{FramePattern, Payload as Line, Transcript};

    fn broker_bytes(at: u64, inbound: bool, bytes: &[u8]) -> RecordEvent {
        RecordEvent {
            at: Instant::from_millis(at),
            inbound,
            peer: Endpoint::Broker {
                conn: 0,
                owner: None,
            },
            local: None,
            identity: None,
            payload: Payload::Bytes(Bytes::copy_from_slice(bytes)),
        }
    }

    fn broker_control(at: u64, inbound: bool, control: Control) -> RecordEvent {
        RecordEvent {
            identity: None,
            payload: Payload::Control(control),
            ..broker_bytes(at, inbound, &[])
        }
    }

    /// Records `events` and returns the payloads of the recording's lines.
    fn record(name: &str, events: Vec<RecordEvent>) -> Vec<Line> {
        let path =
            std::env::temp_dir().join(format!("mqttsn-snlog-{name}-{}.snlog", std::process::id()));
        let recorder = Recorder::create(&path, RecordLimits::default()).unwrap();
        for event in events {
            recorder.record(event);
        }
        recorder.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let transcript = Transcript::parse(&text, name).unwrap();
        transcript.entries.into_iter().map(|e| e.payload).collect()
    }

    #[test]
    fn a_recorder_dropped_without_finish_still_completes_its_file() {
        // What a panic unwinding the driver does to it.
        let path =
            std::env::temp_dir().join(format!("mqttsn-snlog-dropped-{}.snlog", std::process::id()));
        let recorder = Recorder::create(&path, RecordLimits::default()).unwrap();
        recorder.record(broker_control(0, true, Control::Up));
        recorder.record(broker_bytes(1, true, &[0x20, 0x02, 0x00, 0x00]));
        drop(recorder);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let transcript = Transcript::parse(&text, "dropped").unwrap();
        let lines: Vec<Line> = transcript.entries.into_iter().map(|e| e.payload).collect();
        assert_eq!(
            lines,
            [Line::Control(Control::Up), bytes(&[0x20, 0x02, 0x00, 0x00])]
        );
    }

    fn bytes(b: &[u8]) -> Line {
        Line::Frame(FramePattern::exact(b))
    }

    #[test]
    fn a_reconnect_ends_the_half_packet_of_the_old_stream() {
        let lines = record(
            "reconnect",
            vec![
                broker_control(0, true, Control::Up),
                // A PUBLISH cut off by the connection dropping...
                broker_bytes(1, true, &[0x30, 0x05, 0x00, 0x01]),
                broker_control(2, true, Control::Down),
                broker_control(3, true, Control::Up),
                // ...must not swallow the first packet of the next connection.
                broker_bytes(4, true, &[0x20, 0x02, 0x00, 0x00, 0xD0, 0x00]),
            ],
        );
        assert_eq!(
            lines,
            [
                Line::Control(Control::Up),
                bytes(&[0x30, 0x05, 0x00, 0x01]),
                Line::Control(Control::Down),
                Line::Control(Control::Up),
                bytes(&[0x20, 0x02, 0x00, 0x00]),
                bytes(&[0xD0, 0x00]),
            ]
        );
    }

    #[test]
    fn a_malformed_length_is_written_raw_and_the_stream_starts_over() {
        let malformed = [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01];
        let lines = record(
            "malformed",
            vec![
                broker_bytes(0, true, &[0xD0, 0x00]),
                broker_bytes(1, true, &malformed),
                broker_bytes(2, true, &[0xD0, 0x00]),
            ],
        );
        assert_eq!(
            lines,
            [
                bytes(&[0xD0, 0x00]),
                bytes(&malformed),
                bytes(&[0xD0, 0x00])
            ]
        );
    }

    #[test]
    fn an_oversized_publish_is_cut_and_its_rest_passed_through() {
        // Declares a 2 MiB PUBLISH: more than any broker packet the engine takes.
        let huge = [0x30, 0x80, 0x80, 0x80, 0x01, 0x00, 0x01, b't'];
        let mut stream = Reassembly::default();
        assert_eq!(
            take_packets(&mut stream, &huge),
            [(huge.to_vec(), Some(Cut::TooLarge))]
        );
        assert!(stream.buf.is_empty());
        assert_eq!(stream.skip, (1 << 21) + 5 - huge.len());
        // Its rest is passed through as it arrives, never buffered, and the next packet is
        // whole again.
        let rest = vec![0u8; stream.skip];
        for chunk in rest.chunks(65_536) {
            assert_eq!(
                take_packets(&mut stream, chunk),
                [(chunk.to_vec(), Some(Cut::Continued))]
            );
            assert!(stream.buf.is_empty());
        }
        assert_eq!(
            take_packets(&mut stream, &[0xD0, 0x00]),
            [(vec![0xD0, 0x00], None)]
        );
        // Any other packet type that long cannot be skipped: misframed.
        let mut stream = Reassembly::default();
        let suback = [0x90, 0x80, 0x80, 0x80, 0x01];
        assert_eq!(
            take_packets(&mut stream, &suback),
            [(suback.to_vec(), Some(Cut::Misframed))]
        );
        // Short of the limit, a partial packet is kept until the rest arrives.
        let mut stream = Reassembly::default();
        assert_eq!(
            take_packets(&mut stream, &[0x30, 0x80, 0x80, 0x01, 0x00]),
            []
        );
        assert_eq!(stream.buf.len(), 5);
    }
}
