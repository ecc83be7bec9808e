//! The pcap side of a recording (`--pcap FILE`): device frames as UDP between the device and the
//! gateway's listener (serial radios from synthetic addresses, see [`super::pcap::synthetic_addr`]),
//! broker traffic as TCP between a synthetic client port and the broker, so that Wireshark shows
//! the whole conversation (`-d udp.port==1884,mqttsn` for MQTT-SN; MQTT on 1883 is automatic).

use super::pcap::{synthetic_addr, synthetic_gateway_addr, PcapWriter, Timestamp};
use super::snlog::{Endpoint, EventSink, Payload, RecordEvent};
use crate::engine::{Link, PeerAddr};
use crate::transcript::Control;
use std::fs::File;
use std::io::{self, BufWriter};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A pcap file being written.
pub(super) struct PcapSink {
    path: PathBuf,
    out: Option<PcapWriter<BufWriter<File>>>,
    broker: SocketAddr,
    /// Wall-clock time of the engine's time zero (events carry engine time).
    epoch: SystemTime,
}

impl PcapSink {
    pub(super) fn create(path: &Path, broker: SocketAddr) -> io::Result<PcapSink> {
        let out = PcapWriter::new(BufWriter::with_capacity(64 * 1024, File::create(path)?))?;
        Ok(PcapSink {
            path: path.to_path_buf(),
            out: Some(out),
            broker,
            epoch: SystemTime::now(),
        })
    }

    /// The gateway's end of a broker connection: one synthetic port per connection.
    fn client_addr(&self, conn: u64) -> SocketAddr {
        let ip = if self.broker.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, 20_000 + (conn % 40_000) as u16)
    }

    fn device_addrs(peer: &PeerAddr, local: Option<SocketAddr>) -> (SocketAddr, SocketAddr) {
        match peer.link {
            // DTLS frames are written decrypted, as the UDP datagrams they would be without
            // DTLS, between the same addresses.
            Link::Udp(addr) | Link::Dtls(addr) => {
                let gateway = local.unwrap_or_else(|| SocketAddr::new(addr.ip(), 1884));
                (addr, gateway)
            }
            Link::Serial { port, radio } => {
                (synthetic_addr(port, radio), synthetic_gateway_addr(port))
            }
        }
    }

    fn write(&mut self, event: &RecordEvent) -> io::Result<()> {
        let at: Timestamp = (self.epoch + Duration::from_millis(event.at.as_millis())).into();
        let client = match &event.peer {
            Endpoint::Broker { conn, .. } => Some((*conn, self.client_addr(*conn))),
            _ => None,
        };
        let broker = self.broker;
        let Some(out) = self.out.as_mut() else {
            return Ok(());
        };
        match (&event.peer, &event.payload, client) {
            (Endpoint::Device(peer), Payload::Bytes(bytes), _) => {
                let (device, gateway) = Self::device_addrs(peer, event.local);
                if event.inbound {
                    out.udp(at, device, gateway, bytes)
                } else {
                    out.udp(at, gateway, device, bytes)
                }
            }
            (Endpoint::Broadcast, Payload::Bytes(bytes), _) => {
                let to = SocketAddr::from(([255, 255, 255, 255], 1884));
                let from = event
                    .local
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1884)));
                out.udp(at, from, to, bytes)
            }
            (Endpoint::Broker { .. }, Payload::Bytes(bytes), Some((conn, client))) => {
                if event.inbound {
                    out.tcp(at, conn, broker, client, bytes)
                } else {
                    out.tcp(at, conn, client, broker, bytes)
                }
            }
            (Endpoint::Broker { .. }, Payload::Control(Control::Up), Some((conn, client))) => {
                out.tcp_open(at, conn, client, broker)
            }
            (
                Endpoint::Broker { .. },
                Payload::Control(Control::Down | Control::Close | Control::Abort),
                Some((conn, client)),
            ) => out.tcp_close(at, conn, client, broker),
            _ => Ok(()),
        }
    }
}

impl EventSink for PcapSink {
    fn handle(&mut self, event: &RecordEvent) {
        if let Err(e) = self.write(event) {
            tracing::error!(file = %self.path.display(), error = %e, "pcap recording stopped; the gateway keeps running");
            self.out = None;
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if let Err(e) = out.flush() {
                tracing::error!(file = %self.path.display(), error = %e, "pcap recording stopped; the gateway keeps running");
                self.out = None;
            }
        }
    }
}
