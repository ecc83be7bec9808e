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
use crate::engine::{Link, PeerAddr};
use crate::time::{Duration, Instant};
use crate::transcript::{Control, Entry, Peer, PeerKind, TranscriptWriter};
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

    /// Writes what is queued and closes the file.
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
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
    partial: HashMap<(u64, bool), Vec<u8>>,
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
    })
}

/// The transcript's view of a device address.
fn device_kind(addr: &PeerAddr) -> PeerKind {
    match (addr.link, addr.node) {
        (Link::Udp(via), Some(node)) => PeerKind::Forwarded {
            via,
            node_id: node.as_bytes().to_vec(),
        },
        (Link::Udp(a), None) => PeerKind::Udp(a),
        (Link::Serial { port, radio }, _) => PeerKind::Serial {
            port: format!("serial{port}"),
            radio: (radio != 0).then(|| radio.to_be_bytes().to_vec()),
        },
    }
}

impl FileState {
    /// The name of a peer, declaring it on first use.
    fn name(&mut self, endpoint: &Endpoint) -> io::Result<String> {
        let (key, kind) = match endpoint {
            Endpoint::Device(addr) => (format!("{addr}"), device_kind(addr)),
            Endpoint::Broadcast => (
                "broadcast".to_string(),
                PeerKind::Udp(std::net::SocketAddr::from(([255, 255, 255, 255], 1884))),
            ),
            Endpoint::Broker { conn, owner } => {
                let client = match owner {
                    Some(addr) => Some(self.name(&Endpoint::Device(*addr))?),
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
        };
        self.out.write_peer(&peer)?;
        self.declared.push(peer);
        self.names.insert(key, name.clone());
        Ok(name)
    }

    fn write(&mut self, event: &RecordEvent) -> io::Result<()> {
        let name = self.name(&with_forwarder_node(&event.peer, &event.payload))?;
        let at = Instant::from_millis(event.at.saturating_since(self.started).as_millis());
        // The broker side is a byte stream: write it one MQTT packet per line.
        if let (Endpoint::Broker { conn, .. }, Payload::Bytes(bytes)) =
            (&event.peer, &event.payload)
        {
            let buf = self.partial.entry((*conn, event.inbound)).or_default();
            buf.extend_from_slice(bytes);
            let mut packets = Vec::new();
            while let Some(len) = mqtt_packet_len(buf) {
                packets.push(buf.drain(..len).collect::<Vec<u8>>());
            }
            for packet in packets {
                let entry = if event.inbound {
                    Entry::input(at, name.clone(), &packet)
                } else {
                    Entry::output(at, name.clone(), &packet)
                };
                self.out.write_entry(&entry)?;
            }
            return Ok(());
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

/// The length of the MQTT packet at the start of `buf` (fixed header included), or `None` if
/// `buf` does not yet hold a whole packet. Used to write one MQTT packet per transcript line,
/// whatever chunks the TCP stream came in.
pub fn mqtt_packet_len(buf: &[u8]) -> Option<usize> {
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let total = 1 + (i + 1) + remaining;
            return (buf.len() >= total).then_some(total);
        }
    }
    None
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
