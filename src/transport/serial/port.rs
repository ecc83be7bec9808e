//! One task per `[[serial]]` port: opens the port (and reopens it after it disappears, e.g. a USB
//! adapter unplugged, with backoff), turns the byte stream into MQTT-SN frames with the port's
//! framing, and writes frames for devices behind it. Other transports keep running meanwhile.
//!
//! The tasks belong to the [`SerialTransport`] and end on the driver's shutdown signal, after
//! writing the frames still queued for their port (within [`DRAIN_TIMEOUT`]); each closes its
//! tty as it ends, so once [`SerialTransport::shutdown`] has returned no port is held open.

use super::framing::xbee::{ApiMode, XbeeCodec};
use super::framing::{raw::RawCodec, slip::SlipCodec, Deframer, Encoder, RadioAddr, Received};
use crate::config::{Framing, Parity, SerialConfig};
use crate::transport::shutdown::Shutdown;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt, SerialStream};

/// First delay before reopening a port that is missing or failed; doubles up to the cap.
const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// Frames waiting to be written to one port.
const OUT_QUEUE: usize = 1024;
/// Longest a port spends at shutdown writing the frames still queued for it: a line that does
/// not take them (a stalled UART, a pty nobody reads) must not hold up the stop.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the line's output queue is looked at while it drains at shutdown.
const SETTLE_POLL: Duration = Duration::from_millis(10);

/// A frame from a device behind a serial port.
#[derive(Debug)]
pub struct SerialInbound {
    /// Index of the port in the configuration.
    pub port: u16,
    /// The radio that sent it, for framings with addresses (XBee).
    pub radio: Option<RadioAddr>,
    /// The MQTT-SN frame.
    pub bytes: Bytes,
}

/// A frame for the port task to write: to one radio, or to every radio (`None`).
struct Outbound {
    to: Option<u64>,
    bytes: Bytes,
}

/// Running totals of one port, for the log and metrics.
#[derive(Debug, Default)]
pub struct PortStats {
    /// Frames received from devices.
    pub frames_in: AtomicU64,
    /// Frames written to the line.
    pub frames_out: AtomicU64,
    /// Line noise, bad checksums or CRCs, oversize or unsupported frames (see the debug log).
    pub dropped_in: AtomicU64,
    /// Frames not sent: too long for the radio, the port was missing, its queue was full (the
    /// line is slower than the traffic for it), or the shutdown came before the line took them.
    pub dropped_out: AtomicU64,
    /// XBee transmit status reports of failed deliveries.
    pub delivery_failures: AtomicU64,
}

/// All serial ports.
pub struct SerialTransport {
    ports: Vec<mpsc::Sender<Outbound>>,
    stats: Vec<(String, Arc<PortStats>)>,
    /// One task per port.
    tasks: JoinSet<()>,
}

impl SerialTransport {
    /// Starts a task per port, feeding `inbound` until `shutdown` fires. Must be called within
    /// a tokio runtime.
    pub fn start(
        configs: &[SerialConfig],
        inbound: mpsc::Sender<SerialInbound>,
        shutdown: &Shutdown,
    ) -> Self {
        let mut ports = Vec::with_capacity(configs.len());
        let mut stats = Vec::with_capacity(configs.len());
        let mut tasks = JoinSet::new();
        for (index, config) in configs.iter().enumerate() {
            let (tx, rx) = mpsc::channel(OUT_QUEUE);
            let port_stats = Arc::new(PortStats::default());
            stats.push((config.port.clone(), port_stats.clone()));
            let port = Port {
                index: index as u16,
                config: config.clone(),
                outbound: rx,
                inbound: inbound.clone(),
                stats: port_stats,
                shutdown: shutdown.clone(),
                short_addr: HashMap::new(),
            };
            tasks.spawn(port.run());
            ports.push(tx);
        }
        SerialTransport {
            ports,
            stats,
            tasks,
        }
    }

    /// Each port's name and totals.
    pub fn stats(&self) -> &[(String, Arc<PortStats>)] {
        &self.stats
    }

    /// Waits for the port tasks, which end once the shutdown signal has fired (fire it first):
    /// each writes what is queued for its port, within [`DRAIN_TIMEOUT`], and closes the port.
    pub async fn shutdown(&mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "serial port task failed");
            }
        }
    }

    /// Queues a frame for `radio` (0: the port has no addresses) behind `port`.
    pub fn send(&mut self, port: u16, radio: u64, bytes: &[u8]) {
        let to = (radio != 0).then_some(radio);
        self.queue(port as usize, to, Bytes::copy_from_slice(bytes));
    }

    /// Queues a frame for every radio on every port (ADVERTISE), or on `port` only.
    pub fn broadcast(&mut self, port: Option<u16>, bytes: &[u8]) {
        let bytes = Bytes::copy_from_slice(bytes);
        for i in 0..self.ports.len() {
            if port.is_none_or(|p| usize::from(p) == i) {
                self.queue(i, None, bytes.clone());
            }
        }
    }

    fn queue(&mut self, port: usize, to: Option<u64>, bytes: Bytes) {
        let (Some(tx), Some((_, stats))) = (self.ports.get(port), self.stats.get(port)) else {
            // The engine only answers ports that sent it frames, so this is a bug, not traffic.
            tracing::warn!(port, "frame for a serial port that does not exist");
            return;
        };
        // Full: the port is missing or slower than the traffic for it. Closed: its task ended,
        // which only a shutdown does.
        if tx.try_send(Outbound { to, bytes }).is_err() {
            stats.dropped_out.fetch_add(1, Relaxed);
        }
    }
}

/// A port's framing: both directions.
trait LineCodec: Deframer + Encoder + Send {}
impl<T: Deframer + Encoder + Send> LineCodec for T {}

fn codec(config: &SerialConfig) -> Box<dyn LineCodec> {
    match config.framing {
        Framing::Raw => Box::new(RawCodec::new()),
        Framing::Slip { crc } => Box::new(SlipCodec::new(crc)),
        Framing::XbeeApi { api_mode } => {
            // The config accepts only modes 1 and 2; anything else falls back to 1.
            let mode = ApiMode::try_from(api_mode).unwrap_or(ApiMode::Unescaped);
            let codec = XbeeCodec::new(mode);
            match config.max_payload {
                Some(max) => Box::new(codec.with_payload_limit(max)),
                None => Box::new(codec),
            }
        }
    }
}

fn open(config: &SerialConfig) -> tokio_serial::Result<tokio_serial::SerialStream> {
    let data_bits = match config.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let parity = match config.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let stop_bits = if config.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    tokio_serial::new(&config.port, config.baud)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
}

/// One port's task: everything it owns, so that the stream (the open tty) is its only IO.
struct Port {
    index: u16,
    config: SerialConfig,
    outbound: mpsc::Receiver<Outbound>,
    inbound: mpsc::Sender<SerialInbound>,
    stats: Arc<PortStats>,
    shutdown: Shutdown,
    /// The 16-bit network address last seen for each radio, so replies need no address discovery.
    short_addr: HashMap<u64, u16>,
}

/// How the exchange on an open port ended.
enum Exchange {
    /// The line closed or failed: reopen it.
    Lost,
    /// Shutdown: the line may still send what it was given until the drain deadline.
    Stop(Instant),
}

/// How a spell with the port open ended.
enum Ended {
    /// The line closed or failed (a USB adapter unplugged, say): reopen it.
    Lost,
    /// Shutdown, or the driver is gone: the task ends.
    Stop,
}

impl Port {
    /// Opens the port, serves it, and reopens it when it is lost, until shutdown.
    async fn run(mut self) {
        let mut delay = REOPEN_MIN;
        let mut reported_missing = false;
        loop {
            let stream = match open(&self.config) {
                Ok(stream) => stream,
                Err(e) => {
                    if !reported_missing {
                        let port = &self.config.port;
                        tracing::warn!(%port, error = %e, "serial port unavailable; retrying");
                        reported_missing = true;
                    }
                    // Frames for devices behind a missing port cannot be delivered: discard them.
                    self.discard_queued();
                    tokio::select! {
                        () = self.shutdown.recv() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(REOPEN_MAX);
                    continue;
                }
            };
            tracing::info!(port = %self.config.port, baud = self.config.baud, "serial port open");
            reported_missing = false;
            let opened = Instant::now();
            // The stream is moved in and dropped on the way out, which closes the tty.
            match self.serve(stream).await {
                Ended::Lost => {
                    tracing::warn!(port = %self.config.port, "serial port lost; reopening")
                }
                Ended::Stop => break,
            }
            if opened.elapsed() >= REOPEN_MAX {
                // It served for a while: come back at once after an unplug.
                delay = REOPEN_MIN;
            } else {
                // A port that opens and fails at once (a USB device in a bad state) must not
                // turn into an open/fail loop: back off as for a missing port.
                tokio::select! {
                    () = self.shutdown.recv() => break,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(REOPEN_MAX);
            }
        }
        // What the line did not take before the shutdown.
        self.discard_queued();
    }

    /// Moves frames both ways while the port is open. On shutdown, first writes what is still
    /// queued and lets the line send it, within [`DRAIN_TIMEOUT`] in all.
    async fn serve(&mut self, mut stream: SerialStream) -> Ended {
        match self.exchange(&mut stream).await {
            Exchange::Lost => Ended::Lost,
            Exchange::Stop(deadline) => {
                self.settle(&stream, deadline).await;
                Ended::Stop
            }
        }
    }

    /// At shutdown, once the last frames are with the kernel: waits for the line to send them,
    /// until `deadline`, then discards what is left. Otherwise closing the tty would wait for a
    /// slow or stalled line for as long as the kernel's closing wait (30 s by default).
    async fn settle(&self, stream: &SerialStream, deadline: Instant) {
        loop {
            match stream.bytes_to_write() {
                Ok(0) | Err(_) => return,
                Ok(pending) if Instant::now() >= deadline => {
                    let _ = stream.clear(ClearBuffer::Output);
                    let port = &self.config.port;
                    tracing::warn!(%port, pending, "serial line too slow at shutdown; output discarded");
                    return;
                }
                // Bounded by the deadline, and only at shutdown.
                Ok(_) => tokio::time::sleep(SETTLE_POLL).await,
            }
        }
    }

    /// The exchange of frames while the port is open; see [`Port::serve`].
    async fn exchange(&mut self, stream: &mut SerialStream) -> Exchange {
        let mut codec = codec(&self.config);
        let mut read_buf = vec![0u8; 4096];
        let mut write_buf = BytesMut::with_capacity(4096);
        let deadline = 'serve: loop {
            // All three are cancel safe: a read or a receive that loses the race takes nothing.
            // Biased to the signal: once it has fired, queued frames go out through
            // `write_queued`, under its deadline.
            tokio::select! {
                biased;
                () = self.shutdown.recv() => break Instant::now() + DRAIN_TIMEOUT,
                read = stream.read(&mut read_buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => return Exchange::Lost,
                        Ok(n) => n,
                    };
                    codec.push(&read_buf[..n]);
                    while let Some(item) = codec.next() {
                        if !self.received(item).await {
                            break 'serve Instant::now() + DRAIN_TIMEOUT;
                        }
                    }
                }
                Some(out) = self.outbound.recv() => {
                    if !self.encode(&mut *codec, &out, &mut write_buf) {
                        continue;
                    }
                    // `write_all` is not cancel safe (it would cut the frame), so a shutdown
                    // does not cancel it; it only bounds how long the line may take.
                    let write = stream.write_all(&write_buf);
                    tokio::pin!(write);
                    let (written, stopping) = tokio::select! {
                        written = &mut write => (written, None),
                        () = self.shutdown.recv() => {
                            let deadline = Instant::now() + DRAIN_TIMEOUT;
                            match tokio::time::timeout_at(deadline, &mut write).await {
                                Ok(written) => (written, Some(deadline)),
                                Err(_) => {
                                    // Cut mid-frame: nothing may follow it on the line.
                                    self.stats.dropped_out.fetch_add(1, Relaxed);
                                    self.too_slow_at_shutdown();
                                    return Exchange::Stop(deadline);
                                }
                            }
                        }
                    };
                    if written.is_err() {
                        self.stats.dropped_out.fetch_add(1, Relaxed);
                        return match stopping {
                            None => Exchange::Lost,
                            // The task ends anyway: no need to reopen the line for the last frames.
                            Some(deadline) => Exchange::Stop(deadline),
                        };
                    }
                    self.stats.frames_out.fetch_add(1, Relaxed);
                    if let Some(deadline) = stopping {
                        break deadline;
                    }
                }
            }
        };
        self.write_queued(stream, &mut *codec, &mut write_buf, deadline)
            .await;
        Exchange::Stop(deadline)
    }

    /// Handles one item from the line. False: the task must end.
    async fn received(&mut self, item: Received) -> bool {
        let port = &self.config.port;
        match item {
            Received::Frame(frame) => {
                self.stats.frames_in.fetch_add(1, Relaxed);
                if let Some(radio) = frame.source {
                    self.short_addr.insert(radio.addr64, radio.addr16);
                }
                // A place in the driver's queue, waiting while it is full; the driver reads no
                // more once it shuts down, so the shutdown must end this wait too.
                let permit = tokio::select! {
                    permit = self.inbound.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_) => return false, // the driver is gone
                    },
                    () = self.shutdown.recv() => return false,
                };
                permit.send(SerialInbound {
                    port: self.index,
                    radio: frame.source,
                    bytes: frame.payload,
                });
            }
            Received::TxStatus {
                delivery, addr16, ..
            } if delivery != 0 => {
                self.stats.delivery_failures.fetch_add(1, Relaxed);
                tracing::warn!(port = %port, addr16, delivery, "radio delivery failed");
            }
            Received::Dropped(reason) => {
                self.stats.dropped_in.fetch_add(1, Relaxed);
                tracing::debug!(port = %port, %reason, "serial frame dropped");
            }
            Received::ModemStatus(status) => {
                // 0 hardware reset, 1 watchdog reset, 2 joined, 3 disassociated...
                tracing::info!(port = %port, status, "radio modem status");
            }
            Received::TxStatus { .. } => {}
        }
        true
    }

    /// Encodes `out` into `buf` with the port's framing. False: it cannot be sent (counted).
    fn encode(&self, codec: &mut dyn LineCodec, out: &Outbound, buf: &mut BytesMut) -> bool {
        buf.clear();
        let to = out.to.map(|addr64| RadioAddr {
            addr64,
            addr16: self.short_addr.get(&addr64).copied().unwrap_or(0xFFFE),
        });
        match codec.encode(&out.bytes, to, buf) {
            Ok(()) => true,
            Err(e) => {
                self.stats.dropped_out.fetch_add(1, Relaxed);
                tracing::warn!(port = %self.config.port, error = %e, "frame not sent");
                false
            }
        }
    }

    /// At shutdown: writes the frames still queued (the engine's last replies) until
    /// `deadline`. What is left then is counted as dropped when the task ends.
    async fn write_queued(
        &mut self,
        stream: &mut SerialStream,
        codec: &mut dyn LineCodec,
        buf: &mut BytesMut,
        deadline: Instant,
    ) {
        let drain = async {
            // The driver queued its last frames before firing the signal, so they are all here.
            while let Ok(out) = self.outbound.try_recv() {
                if self.encode(codec, &out, buf) {
                    if let Err(error) = stream.write_all(buf).await {
                        self.stats.dropped_out.fetch_add(1, Relaxed);
                        return Err(error);
                    }
                    self.stats.frames_out.fetch_add(1, Relaxed);
                }
            }
            Ok(())
        };
        match tokio::time::timeout_at(deadline, drain).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(port = %self.config.port, %error, "serial write failed at shutdown")
            }
            Err(_) => {
                // The frame being written was cut.
                self.stats.dropped_out.fetch_add(1, Relaxed);
                self.too_slow_at_shutdown();
            }
        }
    }

    fn too_slow_at_shutdown(&self) {
        let port = &self.config.port;
        let timeout = DRAIN_TIMEOUT;
        tracing::warn!(%port, ?timeout, "serial port did not take its last frames in time");
    }

    /// Discards the frames queued for the port, counting them as dropped.
    fn discard_queued(&mut self) {
        while self.outbound.try_recv().is_ok() {
            self.stats.dropped_out.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::transport::shutdown;
    use tokio_serial::SerialPort;

    /// Far beyond anything these tests wait for; reaching it is a failure.
    const PATIENCE: Duration = Duration::from_secs(15);
    /// A PINGRESP: the smallest frame.
    const FRAME: [u8; 2] = [0x02, 0x17];

    fn raw_port(port: &str) -> SerialConfig {
        SerialConfig {
            port: port.to_string(),
            baud: 115_200,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            framing: Framing::Raw,
            max_payload: None,
        }
    }

    // On the current-thread runtime the port task does not run before the test awaits, so the
    // queue is exactly as the test fills it.
    #[tokio::test]
    async fn frames_beyond_a_full_queue_are_counted_and_a_missing_port_stops_on_shutdown() {
        let (inbound, _rx) = mpsc::channel(1);
        let (trigger, shutdown) = shutdown::channel();
        let config = raw_port("/nonexistent/ttyMQTTSN");
        let mut serial = SerialTransport::start(&[config], inbound, &shutdown);
        for _ in 0..OUT_QUEUE + 3 {
            serial.send(0, 0, &FRAME);
        }
        let stats = serial.stats()[0].1.clone();
        assert_eq!(stats.dropped_out.load(Relaxed), 3);
        // The task finds the port missing, discards the queue and waits to retry: the signal
        // must end that wait.
        trigger.fire();
        tokio::time::timeout(PATIENCE, serial.shutdown())
            .await
            .expect("the port task ends on the signal");
        assert_eq!(stats.dropped_out.load(Relaxed), OUT_QUEUE as u64 + 3);
    }

    #[tokio::test]
    async fn frames_queued_before_the_shutdown_are_still_written() {
        let (mut line, device) = SerialStream::pair().unwrap();
        let (inbound, _rx) = mpsc::channel(1);
        let (trigger, shutdown) = shutdown::channel();
        let config = raw_port(&device.name().unwrap());
        let mut serial = SerialTransport::start(&[config], inbound, &shutdown);
        // Several frames, so that most of them are still queued when the signal is seen.
        const FRAMES: usize = 16;
        for _ in 0..FRAMES {
            serial.send(0, 0, &FRAME);
        }
        trigger.fire();
        tokio::time::timeout(PATIENCE, serial.shutdown())
            .await
            .expect("the port task ends on the signal");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < FRAMES * FRAME.len() {
            let n = tokio::time::timeout(PATIENCE, line.read(&mut buf))
                .await
                .expect("every frame on the line")
                .unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, FRAME.repeat(FRAMES));
        assert_eq!(serial.stats()[0].1.frames_out.load(Relaxed), FRAMES as u64);
        // The test's own handle kept the line up until here, so that reading it above did not
        // race the gateway's end closing.
        drop(device);
    }
}
