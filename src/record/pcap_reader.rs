//! Reads a pcap file back into a transcript of its MQTT-SN traffic, for the `replay`
//! subcommand: the way back from [`super::pcap::PcapWriter`], whose layout constants it shares.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::pcap::{
    GLOBAL_HEADER_LEN, IPV4_HEADER, IPV6_HEADER, LINKTYPE_AT, LINKTYPE_RAW, PCAP_MAGIC, PROTO_UDP,
    RECORD_HEADER_LEN, UDP_HEADER,
};
use crate::codec::Frame;
use crate::hex;
use crate::time::Instant;
use crate::transcript::{Entry, Peer, PeerKind, Transcript};

/// The magic number of files with nanosecond timestamps; the writer's [`PCAP_MAGIC`] means
/// microseconds.
const PCAP_MAGIC_NANOS: u32 = 0xa1b2_3c4d;
/// The link type field's upper bits may carry FCS information; the type is below them.
const LINKTYPE_MASK: u32 = 0x0FFF_FFFF;

/// Whether a file starting with `magic` is a classic pcap file, and if so its byte order
/// (little-endian?) and timestamp precision (nanoseconds?).
fn byte_order_and_precision(magic: [u8; 4]) -> Option<(bool, bool)> {
    match magic {
        m if m == PCAP_MAGIC.to_le_bytes() => Some((true, false)),
        m if m == PCAP_MAGIC.to_be_bytes() => Some((false, false)),
        m if m == PCAP_MAGIC_NANOS.to_le_bytes() => Some((true, true)),
        m if m == PCAP_MAGIC_NANOS.to_be_bytes() => Some((false, true)),
        _ => None,
    }
}

/// Whether `bytes` start like a classic pcap file (either byte order, either precision).
pub fn is_pcap(bytes: &[u8]) -> bool {
    bytes
        .get(..4)
        .is_some_and(|m| byte_order_and_precision([m[0], m[1], m[2], m[3]]).is_some())
}

/// Reads the device side of a pcap file written by [`super::pcap::PcapWriter`] (classic pcap,
/// `LINKTYPE_RAW`, microsecond or nanosecond timestamps, either byte order): every UDP datagram
/// to or from `gateway_port` becomes a transcript entry (to it: an input; from it: an expected
/// output). Devices are named `dev1`, `dev2`, ... by address in order of appearance (frames
/// with a forwarder encapsulation get one peer per node id behind that address); times are
/// relative to the file's first packet. TCP and other packets are skipped.
pub fn transcript_from_pcap(bytes: &[u8], gateway_port: u16) -> Result<Transcript, String> {
    let header = bytes.get(..GLOBAL_HEADER_LEN).ok_or_else(|| {
        format!("not a pcap file: shorter than the {GLOBAL_HEADER_LEN}-byte global header")
    })?;
    let magic = [header[0], header[1], header[2], header[3]];
    let Some((little, nanos)) = byte_order_and_precision(magic) else {
        return Err(format!(
            "not a classic pcap file: magic {}",
            hex::format(&magic)
        ));
    };
    // Only called on slices long enough: the global header and whole record headers.
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let word = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if little {
            u32::from_le_bytes(word)
        } else {
            u32::from_be_bytes(word)
        }
    };
    let linktype = u32_at(header, LINKTYPE_AT) & LINKTYPE_MASK;
    if linktype != LINKTYPE_RAW {
        return Err(format!(
            "link type {linktype} is not supported (only {LINKTYPE_RAW}, LINKTYPE_RAW)"
        ));
    }
    let mut builder = PcapTranscript::new(gateway_port);
    let mut offset = GLOBAL_HEADER_LEN;
    let mut first: Option<u64> = None;
    let mut index = 0usize;
    while offset < bytes.len() {
        index += 1;
        let record = bytes
            .get(offset..offset + RECORD_HEADER_LEN)
            .ok_or_else(|| format!("packet {index}: truncated record header at byte {offset}"))?;
        let secs = u64::from(u32_at(record, 0));
        let frac = u64::from(u32_at(record, 4));
        let incl = u32_at(record, 8) as usize;
        let micros = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let data_at = offset + RECORD_HEADER_LEN;
        // Saturating: a corrupt length must give the error below, not an overflow.
        let end = data_at.saturating_add(incl);
        let data = bytes
            .get(data_at..end)
            .ok_or_else(|| format!("packet {index}: truncated data at byte {data_at}"))?;
        offset = end;
        let first = *first.get_or_insert(micros);
        let at = Instant::from_millis(micros.saturating_sub(first) / 1000);
        if let Some((from, to, payload)) = udp_datagram(data) {
            builder.datagram(at, from, to, payload);
        }
    }
    Ok(builder.finish())
}

/// Source, destination and payload of a raw IPv4/IPv6 UDP packet; `None` for anything else.
/// Lengths in the headers that disagree with the captured bytes are trusted only as far as the
/// bytes go.
fn udp_datagram(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let version = packet.first()? >> 4;
    let (src, dst, udp) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0F) * 4;
            if ihl < IPV4_HEADER || packet.get(9)? != &PROTO_UDP {
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
            if packet.get(6)? != &PROTO_UDP {
                return None;
            }
            let payload_len = usize::from(u16::from_be_bytes([*packet.get(4)?, *packet.get(5)?]));
            let end = (IPV6_HEADER + payload_len).min(packet.len());
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            // The writer stores IPv4 endpoints of mixed pairs as IPv4-mapped IPv6.
            (
                IpAddr::from(src).to_canonical(),
                IpAddr::from(dst).to_canonical(),
                packet.get(IPV6_HEADER..end)?,
            )
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([*udp.first()?, *udp.get(1)?]);
    let dport = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    let end = if len >= UDP_HEADER {
        len.min(udp.len())
    } else {
        udp.len()
    };
    Some((
        SocketAddr::new(src, sport),
        SocketAddr::new(dst, dport),
        udp.get(UDP_HEADER..end)?,
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
        // The node id sits between the encapsulation's length, type and control octets and
        // the end of its header.
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
                    identity: None,
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
