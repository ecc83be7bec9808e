//! One task per `[[serial]]` port: opens the port (and reopens it after it disappears, e.g. a USB
//! adapter unplugged, with backoff), turns the byte stream into MQTT-SN frames with the port's
//! framing, and writes frames for devices behind it. Other transports keep running meanwhile.

use super::framing::xbee::{ApiMode, XbeeCodec};
use super::framing::{raw::RawCodec, slip::SlipCodec, Deframer, Encoder, RadioAddr, Received};
use crate::config::{Framing, Parity, SerialConfig};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_serial::SerialPortBuilderExt;

/// First delay before reopening a port that is missing or failed; doubles up to the cap.
const REOPEN_MIN: Duration = Duration::from_millis(100);
const REOPEN_MAX: Duration = Duration::from_secs(5);
/// Frames waiting to be written to one port.
const OUT_QUEUE: usize = 1024;

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
    /// Frames not sent: too long for the radio, or the port was missing.
    pub dropped_out: AtomicU64,
    /// XBee transmit status reports of failed deliveries.
    pub delivery_failures: AtomicU64,
}

/// All serial ports.
pub struct SerialTransport {
    ports: Vec<mpsc::Sender<Outbound>>,
    stats: Vec<(String, Arc<PortStats>)>,
    /// Frames not queued because a port's queue was full (the port is gone or too slow).
    pub dropped: u64,
}

impl SerialTransport {
    /// Starts a task per port, feeding `inbound`. Must be called within a tokio runtime.
    pub fn start(configs: &[SerialConfig], inbound: mpsc::Sender<SerialInbound>) -> Self {
        let mut ports = Vec::with_capacity(configs.len());
        let mut stats = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            let (tx, rx) = mpsc::channel(OUT_QUEUE);
            let port_stats = Arc::new(PortStats::default());
            stats.push((config.port.clone(), port_stats.clone()));
            tokio::spawn(run_port(
                index as u16,
                config.clone(),
                rx,
                inbound.clone(),
                port_stats,
            ));
            ports.push(tx);
        }
        SerialTransport {
            ports,
            stats,
            dropped: 0,
        }
    }

    /// Each port's name and totals.
    pub fn stats(&self) -> &[(String, Arc<PortStats>)] {
        &self.stats
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
        let Some(tx) = self.ports.get(port) else {
            self.dropped += 1;
            return;
        };
        if tx.try_send(Outbound { to, bytes }).is_err() {
            self.dropped += 1;
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

async fn run_port(
    index: u16,
    config: SerialConfig,
    mut outbound: mpsc::Receiver<Outbound>,
    inbound: mpsc::Sender<SerialInbound>,
    stats: Arc<PortStats>,
) {
    let mut delay = REOPEN_MIN;
    let mut reported_missing = false;
    // The 16-bit network address last seen for each radio, so replies need no address discovery.
    let mut short_addr: HashMap<u64, u16> = HashMap::new();
    loop {
        let mut stream = match open(&config) {
            Ok(stream) => stream,
            Err(e) => {
                if !reported_missing {
                    tracing::warn!(port = %config.port, error = %e, "serial port unavailable; retrying");
                    reported_missing = true;
                }
                // Frames for devices behind a missing port cannot be delivered: discard them.
                while outbound.try_recv().is_ok() {
                    stats.dropped_out.fetch_add(1, Relaxed);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(REOPEN_MAX);
                continue;
            }
        };
        tracing::info!(port = %config.port, baud = config.baud, "serial port open");
        reported_missing = false;
        delay = REOPEN_MIN;
        let mut codec = codec(&config);
        let mut read_buf = vec![0u8; 4096];
        let mut write_buf = BytesMut::with_capacity(4096);
        loop {
            tokio::select! {
                read = stream.read(&mut read_buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    codec.push(&read_buf[..n]);
                    while let Some(item) = codec.next() {
                        match item {
                            Received::Frame(frame) => {
                                stats.frames_in.fetch_add(1, Relaxed);
                                if let Some(radio) = frame.source {
                                    short_addr.insert(radio.addr64, radio.addr16);
                                }
                                let msg = SerialInbound { port: index, radio: frame.source, bytes: frame.payload };
                                if inbound.send(msg).await.is_err() {
                                    return; // the driver is gone
                                }
                            }
                            Received::TxStatus { delivery, addr16, .. } if delivery != 0 => {
                                stats.delivery_failures.fetch_add(1, Relaxed);
                                tracing::warn!(port = %config.port, addr16, delivery, "radio delivery failed");
                            }
                            Received::Dropped(reason) => {
                                stats.dropped_in.fetch_add(1, Relaxed);
                                tracing::debug!(port = %config.port, %reason, "serial frame dropped");
                            }
                            Received::ModemStatus(status) => {
                                // 0 hardware reset, 1 watchdog reset, 2 joined, 3 disassociated...
                                tracing::info!(port = %config.port, status, "radio modem status");
                            }
                            Received::TxStatus { .. } => {}
                        }
                    }
                }
                Some(out) = outbound.recv() => {
                    write_buf.clear();
                    let to = out.to.map(|addr64| RadioAddr {
                        addr64,
                        addr16: short_addr.get(&addr64).copied().unwrap_or(0xFFFE),
                    });
                    match codec.encode(&out.bytes, to, &mut write_buf) {
                        Ok(()) => {
                            if stream.write_all(&write_buf).await.is_err() {
                                break;
                            }
                            stats.frames_out.fetch_add(1, Relaxed);
                        }
                        Err(e) => {
                            stats.dropped_out.fetch_add(1, Relaxed);
                            tracing::warn!(port = %config.port, error = %e, "frame not sent");
                        }
                    }
                }
            }
        }
        tracing::warn!(port = %config.port, "serial port lost; reopening");
    }
}
