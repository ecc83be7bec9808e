//! A writer of classic libpcap files (not pcapng) so gateway recordings open in Wireshark and
//! tshark.
//!
//! # Format
//! Global header: magic `0xa1b2c3d4` written little-endian (microsecond timestamps), version 2.4,
//! snaplen 65535, link type 101 (`LINKTYPE_RAW`: every packet starts directly with an IPv4 or
//! IPv6 header). Each record is `ts_sec`, `ts_usec`, `incl_len`, `orig_len` (all little-endian
//! `u32`) followed by the packet bytes.
//!
//! Packets are synthetic: the writer wraps payloads in IPv4 or IPv6 headers (IPv4 when both
//! endpoints are IPv4, otherwise IPv6 with IPv4 endpoints written as IPv4-mapped `::ffff:a.b.c.d`)
//! plus a UDP or TCP header. All checksums are computed: the IPv4 header checksum, and the UDP and
//! TCP checksums over their pseudo-headers for both IP versions. No packet is longer than 65535
//! bytes (the snaplen and the IPv4 total-length limit):
//! - [`PcapWriter::udp`] caps the payload at 65507 bytes over IPv4 and 65487 bytes over IPv6; longer
//!   payloads (impossible for MQTT-SN over real UDP/IPv4 anyway) are recorded truncated, with
//!   headers describing the truncated datagram.
//! - [`PcapWriter::tcp`] splits longer payloads into several consecutive segments (at most 65495
//!   payload bytes each over IPv4, 65475 over IPv6).
//!
//! TCP streams get per-direction sequence numbers that continue across calls, so Wireshark
//! reassembles MQTT packets split across segments. [`PcapWriter::tcp_open`] and
//! [`PcapWriter::tcp_close`] optionally add the SYN / SYN-ACK / ACK handshake and the
//! FIN / FIN / ACK teardown so the conversation looks complete.
//!
//! # Dissectors and ports
//! The writer always uses the real ports of the traffic; it does not remap anything.
//! - MQTT over TCP: Wireshark registers the `mqtt` dissector on TCP port 1883 (and 8883 over
//!   TLS), so broker traffic on 1883 is dissected automatically.
//! - MQTT-SN over UDP: the `mqttsn` dissector has no default UDP port (checked with tshark 4.0:
//!   it is "Decode As" only). Tell tshark which port carries MQTT-SN:
//!   `tshark -r FILE -d udp.port==1884,mqttsn` (in Wireshark: Analyze → Decode As…, UDP port
//!   1884 → MQTTSN). Use the gateway's configured port instead of 1884 if it differs.
//!
//! # Serial radios
//! Frames from serial radio nodes are written as UDP between synthetic IPv6 addresses from the
//! unique-local range, see [`synthetic_addr`] and [`synthetic_gateway_addr`].

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The pcap magic number for microsecond timestamps (written little-endian).
pub const PCAP_MAGIC: u32 = 0xa1b2_c3d4;
/// The snapshot length written in the global header; also the maximum length of any packet.
pub const SNAPLEN: u32 = 65_535;
/// `LINKTYPE_RAW`: packets begin with an IPv4 or IPv6 header.
pub const LINKTYPE_RAW: u32 = 101;
/// The MQTT-SN UDP port used on both ends of synthetic radio addresses.
pub const MQTTSN_PORT: u16 = 1884;

/// Length of the global header at the start of the file.
pub(super) const GLOBAL_HEADER_LEN: usize = 24;
/// Offset of the link type in the global header, after the magic, version, thiszone, sigfigs
/// and snaplen fields.
pub(super) const LINKTYPE_AT: usize = 20;
/// Length of the header before each packet: `ts_sec`, `ts_usec`, `incl_len`, `orig_len`.
pub(super) const RECORD_HEADER_LEN: usize = 16;

const MAX_PACKET: usize = SNAPLEN as usize;
/// An IPv4 header without options, the shortest there is.
pub(super) const IPV4_HEADER: usize = 20;
pub(super) const IPV6_HEADER: usize = 40;
pub(super) const UDP_HEADER: usize = 8;
const TCP_HEADER: usize = 20;
const PROTO_TCP: u8 = 6;
pub(super) const PROTO_UDP: u8 = 17;
const HOP_LIMIT: u8 = 64;
const TCP_WINDOW: u16 = 65_535;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// The first 48 bits of synthetic radio addresses: `fd6d:7173:6e00::/48` (`6d 71 73 6e` is
/// ASCII "mqsn").
const RADIO_PREFIX: [u16; 3] = [0xfd6d, 0x7173, 0x6e00];
/// The first 48 bits of the synthetic gateway address per serial port.
const GATEWAY_PREFIX: [u16; 3] = [0xfd6d, 0x7173, 0x6e01];

/// A synthetic socket address for serial radio node `radio` on serial port number `port_index`.
///
/// Mapping: `[fd6d:7173:6e00:<port_index>:<radio bits 63..48>:<47..32>:<31..16>:<15..0>]:1884`,
/// i.e. a unique-local IPv6 address (fd00::/8) whose /48 prefix spells "mqsn", whose subnet is
/// the port index and whose interface identifier is the full 64-bit radio address (a 16-bit radio
/// address appears as `::<addr>` in the last group). Example: port 2, radio
/// `0x0013_a200_4086_1234` → `[fd6d:7173:6e00:2:13:a200:4086:1234]:1884`.
pub fn synthetic_addr(port_index: u16, radio: u64) -> SocketAddr {
    let ip = Ipv6Addr::new(
        RADIO_PREFIX[0],
        RADIO_PREFIX[1],
        RADIO_PREFIX[2],
        port_index,
        (radio >> 48) as u16,
        (radio >> 32) as u16,
        (radio >> 16) as u16,
        radio as u16,
    );
    SocketAddr::V6(SocketAddrV6::new(ip, MQTTSN_PORT, 0, 0))
}

/// The synthetic address of the gateway's end of serial port `port_index`:
/// `[fd6d:7173:6e01:<port_index>::1]:1884`. It lies outside the radio prefix, so no radio
/// address collides with it.
pub fn synthetic_gateway_addr(port_index: u16) -> SocketAddr {
    let ip = Ipv6Addr::new(
        GATEWAY_PREFIX[0],
        GATEWAY_PREFIX[1],
        GATEWAY_PREFIX[2],
        port_index,
        0,
        0,
        0,
        1,
    );
    SocketAddr::V6(SocketAddrV6::new(ip, MQTTSN_PORT, 0, 0))
}

/// A packet timestamp: microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// A timestamp `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// `(ts_sec, ts_usec)` as written in a record; seconds saturate at `u32::MAX` (year 2106).
    fn split(self) -> (u32, u32) {
        let secs = u32::try_from(self.0 / 1_000_000).unwrap_or(u32::MAX);
        (secs, (self.0 % 1_000_000) as u32)
    }
}

impl From<SystemTime> for Timestamp {
    /// Times before the epoch become the epoch.
    fn from(t: SystemTime) -> Self {
        t.duration_since(UNIX_EPOCH)
            .map(Self::from)
            .unwrap_or_default()
    }
}

impl From<Duration> for Timestamp {
    /// A duration since the Unix epoch (saturating).
    fn from(d: Duration) -> Self {
        Self(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
}

/// The IP endpoints of one packet after choosing the IP version.
#[derive(Debug, Clone, Copy)]
enum Ips {
    V4(Ipv4Addr, Ipv4Addr),
    V6(Ipv6Addr, Ipv6Addr),
}

impl Ips {
    fn new(from: IpAddr, to: IpAddr) -> Self {
        match (from, to) {
            (IpAddr::V4(a), IpAddr::V4(b)) => Self::V4(a, b),
            (a, b) => Self::V6(to_v6(a), to_v6(b)),
        }
    }

    fn header_len(self) -> usize {
        match self {
            Self::V4(..) => IPV4_HEADER,
            Self::V6(..) => IPV6_HEADER,
        }
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Sum of big-endian 16-bit words (odd trailing byte padded with zero), unfolded.
fn sum_words(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Folds a word sum to 16 bits and complements it: the Internet checksum.
fn finish_checksum(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// State of one recorded TCP connection.
#[derive(Debug, Clone, Copy)]
struct TcpConn {
    /// The endpoint whose segments are direction 0 (the client if opened with `tcp_open`,
    /// otherwise the sender of the first segment).
    a: SocketAddr,
    /// Next sequence number of each direction: `[a → b, b → a]`.
    next_seq: [u32; 2],
}

impl TcpConn {
    /// An already established connection (handshake not recorded).
    fn established(conn: u64, a: SocketAddr) -> Self {
        Self {
            a,
            next_seq: [isn(conn, 0).wrapping_add(1), isn(conn, 1).wrapping_add(1)],
        }
    }

    fn dir(&self, from: SocketAddr) -> usize {
        usize::from(self.a != from)
    }
}

/// A deterministic initial sequence number per connection and direction.
fn isn(conn: u64, dir: usize) -> u32 {
    // splitmix64 finaliser of the connection id, a different constant per direction.
    let mut x = conn
        ^ if dir == 0 {
            0x243f_6a88_85a3_08d3
        } else {
            0x1319_8a2e_0370_7344
        };
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 32) as u32 ^ x as u32
}

/// Writes a classic pcap file of synthetic IP packets (see the module docs).
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    ip_id: u16,
    conns: HashMap<u64, TcpConn>,
    buf: Vec<u8>,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the global header and returns the writer.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = [0u8; GLOBAL_HEADER_LEN];
        header[0..4].copy_from_slice(&PCAP_MAGIC.to_le_bytes());
        header[4..6].copy_from_slice(&2u16.to_le_bytes());
        header[6..8].copy_from_slice(&4u16.to_le_bytes());
        // thiszone and sigfigs stay 0.
        header[16..20].copy_from_slice(&SNAPLEN.to_le_bytes());
        header[LINKTYPE_AT..LINKTYPE_AT + 4].copy_from_slice(&LINKTYPE_RAW.to_le_bytes());
        out.write_all(&header)?;
        Ok(Self {
            out,
            ip_id: 0,
            conns: HashMap::new(),
            buf: Vec::new(),
        })
    }

    /// Records one UDP datagram (MQTT-SN device traffic) from `from` to `to`, wrapped in
    /// synthetic IPv4 or IPv6 and UDP headers. Payloads longer than 65507 bytes (IPv4) or 65487
    /// bytes (IPv6) are truncated to that length.
    pub fn udp(
        &mut self,
        at: impl Into<Timestamp>,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        let ips = Ips::new(from.ip(), to.ip());
        let max = MAX_PACKET - ips.header_len() - UDP_HEADER;
        let payload = &payload[..payload.len().min(max)];
        let len = (UDP_HEADER + payload.len()) as u16;
        let mut header = [0u8; UDP_HEADER];
        header[0..2].copy_from_slice(&from.port().to_be_bytes());
        header[2..4].copy_from_slice(&to.port().to_be_bytes());
        header[4..6].copy_from_slice(&len.to_be_bytes());
        self.packet(at.into(), ips, PROTO_UDP, &header, payload, 6)
    }

    /// Records bytes of a TCP stream (MQTT broker traffic) sent by `from` to `to` on connection
    /// `conn`, as PSH|ACK segments whose sequence numbers continue the direction's stream across
    /// calls (the ACK number is the other direction's next sequence number). Payloads too long
    /// for one packet are split into several segments; an empty payload records nothing.
    ///
    /// The first endpoint seen on `conn` (the client of [`tcp_open`](Self::tcp_open), or else the
    /// first `from`) is direction 0; any other `from` is the opposite direction.
    pub fn tcp(
        &mut self,
        at: impl Into<Timestamp>,
        conn: u64,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        let at = at.into();
        let max = MAX_PACKET - Ips::new(from.ip(), to.ip()).header_len() - TCP_HEADER;
        for chunk in payload.chunks(max) {
            let state = self
                .conns
                .entry(conn)
                .or_insert_with(|| TcpConn::established(conn, from));
            let dir = state.dir(from);
            let seq = state.next_seq[dir];
            let ack = state.next_seq[1 - dir];
            state.next_seq[dir] = seq.wrapping_add(chunk.len() as u32);
            self.segment(at, from, to, seq, ack, PSH | ACK, chunk)?;
        }
        Ok(())
    }

    /// Records the three-way handshake (SYN, SYN-ACK, ACK) of connection `conn` from `client`
    /// to `server`, starting its sequence numbers afresh (any earlier state of `conn` is
    /// forgotten).
    pub fn tcp_open(
        &mut self,
        at: impl Into<Timestamp>,
        conn: u64,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
        let at = at.into();
        let (isn_c, isn_s) = (isn(conn, 0), isn(conn, 1));
        let (c1, s1) = (isn_c.wrapping_add(1), isn_s.wrapping_add(1));
        self.conns.insert(
            conn,
            TcpConn {
                a: client,
                next_seq: [c1, s1],
            },
        );
        self.segment(at, client, server, isn_c, 0, SYN, &[])?;
        self.segment(at, server, client, isn_s, c1, SYN | ACK, &[])?;
        self.segment(at, client, server, c1, s1, ACK, &[])
    }

    /// Records the teardown of connection `conn` (FIN-ACK from `client`, FIN-ACK from `server`,
    /// final ACK from `client`) and forgets its state.
    pub fn tcp_close(
        &mut self,
        at: impl Into<Timestamp>,
        conn: u64,
        client: SocketAddr,
        server: SocketAddr,
    ) -> io::Result<()> {
        let at = at.into();
        let state = self
            .conns
            .remove(&conn)
            .unwrap_or_else(|| TcpConn::established(conn, client));
        let dir = state.dir(client);
        let (seq_c, seq_s) = (state.next_seq[dir], state.next_seq[1 - dir]);
        let (c1, s1) = (seq_c.wrapping_add(1), seq_s.wrapping_add(1));
        self.segment(at, client, server, seq_c, seq_s, FIN | ACK, &[])?;
        self.segment(at, server, client, seq_s, c1, FIN | ACK, &[])?;
        self.segment(at, client, server, c1, s1, ACK, &[])
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The underlying writer (not flushed; call [`flush`](Self::flush) first if it buffers).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// A reference to the underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    #[allow(clippy::too_many_arguments)]
    fn segment(
        &mut self,
        at: Timestamp,
        from: SocketAddr,
        to: SocketAddr,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut header = [0u8; TCP_HEADER];
        header[0..2].copy_from_slice(&from.port().to_be_bytes());
        header[2..4].copy_from_slice(&to.port().to_be_bytes());
        header[4..8].copy_from_slice(&seq.to_be_bytes());
        header[8..12].copy_from_slice(&ack.to_be_bytes());
        header[12] = ((TCP_HEADER / 4) as u8) << 4;
        header[13] = flags;
        header[14..16].copy_from_slice(&TCP_WINDOW.to_be_bytes());
        let ips = Ips::new(from.ip(), to.ip());
        self.packet(at, ips, PROTO_TCP, &header, payload, 16)
    }

    /// Writes one record: IP header, then `l4_header` and `payload`, with the transport checksum
    /// (at `checksum_at` within `l4_header`) computed over the pseudo-header.
    fn packet(
        &mut self,
        at: Timestamp,
        ips: Ips,
        proto: u8,
        l4_header: &[u8],
        payload: &[u8],
        checksum_at: usize,
    ) -> io::Result<()> {
        let l4_len = l4_header.len() + payload.len();
        let total = ips.header_len() + l4_len;
        debug_assert!(total <= MAX_PACKET);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let pseudo_sum = match ips {
            Ips::V4(src, dst) => {
                let id = self.ip_id;
                self.ip_id = id.wrapping_add(1);
                buf.extend_from_slice(&[0x45, 0]);
                buf.extend_from_slice(&(total as u16).to_be_bytes());
                buf.extend_from_slice(&id.to_be_bytes());
                buf.extend_from_slice(&[0x40, 0, HOP_LIMIT, proto, 0, 0]); // DF, no fragments
                buf.extend_from_slice(&src.octets());
                buf.extend_from_slice(&dst.octets());
                let checksum = finish_checksum(sum_words(&buf));
                buf[10..12].copy_from_slice(&checksum.to_be_bytes());
                sum_words(&src.octets())
                    + sum_words(&dst.octets())
                    + u64::from(proto)
                    + l4_len as u64
            }
            Ips::V6(src, dst) => {
                buf.extend_from_slice(&[0x60, 0, 0, 0]);
                buf.extend_from_slice(&(l4_len as u16).to_be_bytes());
                buf.extend_from_slice(&[proto, HOP_LIMIT]);
                buf.extend_from_slice(&src.octets());
                buf.extend_from_slice(&dst.octets());
                sum_words(&src.octets())
                    + sum_words(&dst.octets())
                    + u64::from(proto)
                    + l4_len as u64
            }
        };
        let l4_start = buf.len();
        buf.extend_from_slice(l4_header);
        buf.extend_from_slice(payload);
        let mut checksum = finish_checksum(pseudo_sum + sum_words(&buf[l4_start..]));
        if proto == PROTO_UDP && checksum == 0 {
            checksum = 0xffff; // 0 means "no checksum" in UDP
        }
        let at_checksum = l4_start + checksum_at;
        buf[at_checksum..at_checksum + 2].copy_from_slice(&checksum.to_be_bytes());

        let (secs, micros) = at.split();
        let mut record = [0u8; RECORD_HEADER_LEN];
        record[0..4].copy_from_slice(&secs.to_le_bytes());
        record[4..8].copy_from_slice(&micros.to_le_bytes());
        record[8..12].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        record[12..16].copy_from_slice(&(buf.len() as u32).to_le_bytes());
        let result = self
            .out
            .write_all(&record)
            .and_then(|()| self.out.write_all(&buf));
        self.buf = buf;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed record.
    #[derive(Debug)]
    struct Record {
        secs: u32,
        micros: u32,
        orig_len: u32,
        data: Vec<u8>,
    }

    fn le32(b: &[u8]) -> u32 {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    fn be16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }

    fn be32(b: &[u8]) -> u32 {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Checks the global header and splits the file into records.
    fn parse(file: &[u8]) -> Vec<Record> {
        assert!(file.len() >= 24);
        assert_eq!(le32(&file[0..4]), PCAP_MAGIC);
        assert_eq!(&file[0..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u16::from_le_bytes([file[4], file[5]]), 2);
        assert_eq!(u16::from_le_bytes([file[6], file[7]]), 4);
        assert_eq!(le32(&file[8..12]), 0);
        assert_eq!(le32(&file[12..16]), 0);
        assert_eq!(le32(&file[16..20]), 65_535);
        assert_eq!(le32(&file[20..24]), 101);
        let mut rest = &file[24..];
        let mut records = Vec::new();
        while !rest.is_empty() {
            assert!(rest.len() >= 16, "truncated record header");
            let incl = le32(&rest[8..12]) as usize;
            assert!(incl <= 65_535);
            assert!(rest.len() >= 16 + incl, "truncated record data");
            records.push(Record {
                secs: le32(&rest[0..4]),
                micros: le32(&rest[4..8]),
                orig_len: le32(&rest[12..16]),
                data: rest[16..16 + incl].to_vec(),
            });
            rest = &rest[16 + incl..];
        }
        records
    }

    /// A parsed IP packet with verified lengths and checksums.
    #[derive(Debug)]
    struct Packet {
        version: u8,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        /// Transport header + payload.
        l4: Vec<u8>,
    }

    fn parse_ip(data: &[u8]) -> Packet {
        let version = data[0] >> 4;
        let (proto, src, dst, l4) = match version {
            4 => {
                assert_eq!(data[0], 0x45);
                assert_eq!(usize::from(be16(&data[2..4])), data.len());
                assert_eq!(finish_checksum(sum_words(&data[..20])), 0, "IPv4 checksum");
                let src: [u8; 4] = data[12..16].try_into().expect("4 bytes");
                let dst: [u8; 4] = data[16..20].try_into().expect("4 bytes");
                (
                    data[9],
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    data[20..].to_vec(),
                )
            }
            6 => {
                assert_eq!(usize::from(be16(&data[4..6])), data.len() - 40);
                let src: [u8; 16] = data[8..24].try_into().expect("16 bytes");
                let dst: [u8; 16] = data[24..40].try_into().expect("16 bytes");
                (
                    data[6],
                    IpAddr::from(src),
                    IpAddr::from(dst),
                    data[40..].to_vec(),
                )
            }
            v => panic!("IP version {v}"),
        };
        // Transport checksum over the pseudo-header verifies to 0.
        let ips = Ips::new(src, dst);
        let (s, d) = match ips {
            Ips::V4(s, d) => (s.octets().to_vec(), d.octets().to_vec()),
            Ips::V6(s, d) => (s.octets().to_vec(), d.octets().to_vec()),
        };
        let pseudo = sum_words(&s) + sum_words(&d) + u64::from(proto) + l4.len() as u64;
        assert_eq!(finish_checksum(pseudo + sum_words(&l4)), 0, "L4 checksum");
        Packet {
            version,
            proto,
            src,
            dst,
            l4,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn write(f: impl FnOnce(&mut PcapWriter<Vec<u8>>) -> io::Result<()>) -> Vec<Record> {
        let mut w = PcapWriter::new(Vec::new()).expect("header");
        f(&mut w).expect("write");
        w.flush().expect("flush");
        parse(&w.into_inner())
    }

    #[test]
    fn empty_file_is_just_the_global_header() {
        let w = PcapWriter::new(Vec::new()).expect("header");
        let bytes = w.into_inner();
        assert_eq!(bytes.len(), 24);
        assert!(parse(&bytes).is_empty());
    }

    #[test]
    fn udp_ipv4_and_ipv6_records() {
        let at = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let records = write(|w| {
            w.udp(
                at,
                sa("10.0.0.7:5000"),
                sa("10.0.0.1:1884"),
                b"\x03\x05\x00",
            )?;
            w.udp(
                Timestamp::from_micros(2_000_001),
                sa("[2001:db8::7]:5000"),
                sa("[2001:db8::1]:1884"),
                b"hello",
            )?;
            // Mixed families become IPv6 with an IPv4-mapped address.
            w.udp(
                Timestamp::from_micros(3),
                sa("10.0.0.7:5000"),
                sa("[2001:db8::1]:1884"),
                b"",
            )
        });
        assert_eq!(records.len(), 3);
        assert_eq!(
            (records[0].secs, records[0].micros),
            (1_700_000_000, 123_456)
        );
        assert_eq!((records[1].secs, records[1].micros), (2, 1));
        assert_eq!((records[2].secs, records[2].micros), (0, 3));

        let expect = [
            (4, 3usize, "10.0.0.7", "10.0.0.1"),
            (6, 5, "2001:db8::7", "2001:db8::1"),
            (6, 0, "::ffff:10.0.0.7", "2001:db8::1"),
        ];
        for (r, (version, len, src, dst)) in records.iter().zip(expect) {
            assert_eq!(r.orig_len as usize, r.data.len());
            let p = parse_ip(&r.data);
            assert_eq!(p.version, version);
            assert_eq!(p.proto, PROTO_UDP);
            assert_eq!(p.src, src.parse::<IpAddr>().expect("ip"));
            assert_eq!(p.dst, dst.parse::<IpAddr>().expect("ip"));
            assert_eq!(be16(&p.l4[0..2]), 5000);
            assert_eq!(be16(&p.l4[2..4]), 1884);
            assert_eq!(usize::from(be16(&p.l4[4..6])), 8 + len);
            assert_ne!(be16(&p.l4[6..8]), 0, "UDP checksum present");
            assert_eq!(p.l4.len(), 8 + len);
        }
        assert_eq!(&parse_ip(&records[0].data).l4[8..], b"\x03\x05\x00");
        assert_eq!(&parse_ip(&records[1].data).l4[8..], b"hello");
    }

    #[test]
    fn ipv4_ids_increment() {
        let records = write(|w| {
            for _ in 0..3 {
                w.udp(Timestamp::default(), sa("1.2.3.4:1"), sa("5.6.7.8:2"), b"x")?;
            }
            Ok(())
        });
        let ids: Vec<u16> = records.iter().map(|r| be16(&r.data[4..6])).collect();
        assert_eq!(ids, [0, 1, 2]);
    }

    #[test]
    fn oversized_udp_is_capped_at_the_maximum_packet() {
        let big = vec![0xab; 70_000];
        let records = write(|w| {
            w.udp(Timestamp::default(), sa("1.2.3.4:1"), sa("5.6.7.8:2"), &big)?;
            w.udp(Timestamp::default(), sa("[::1]:1"), sa("[::2]:2"), &big)
        });
        assert_eq!(records[0].data.len(), 65_535);
        assert_eq!(records[1].data.len(), 65_535);
        let v4 = parse_ip(&records[0].data);
        assert_eq!(be16(&v4.l4[4..6]), 8 + 65_507);
        let v6 = parse_ip(&records[1].data);
        assert_eq!(be16(&v6.l4[4..6]), 8 + 65_487);
    }

    /// (seq, ack, flags, payload) of a TCP record.
    fn tcp_fields(r: &Record) -> (Packet, u32, u32, u8, Vec<u8>) {
        let p = parse_ip(&r.data);
        assert_eq!(p.proto, PROTO_TCP);
        assert_eq!(p.l4[12], 0x50, "20-byte header");
        assert_eq!(be16(&p.l4[14..16]), TCP_WINDOW);
        let (seq, ack, flags) = (be32(&p.l4[4..8]), be32(&p.l4[8..12]), p.l4[13]);
        let payload = p.l4[20..].to_vec();
        (p, seq, ack, flags, payload)
    }

    #[test]
    fn tcp_sequence_numbers_continue_per_direction() {
        let client = sa("192.168.1.10:50000");
        let server = sa("192.168.1.1:1883");
        let records = write(|w| {
            w.tcp_open(Timestamp::from_micros(1), 7, client, server)?;
            w.tcp(Timestamp::from_micros(2), 7, client, server, b"abc")?;
            w.tcp(Timestamp::from_micros(3), 7, client, server, b"defg")?;
            w.tcp(Timestamp::from_micros(4), 7, server, client, b"12")?;
            w.tcp(Timestamp::from_micros(5), 7, client, server, b"")?; // nothing
            w.tcp(Timestamp::from_micros(6), 7, client, server, b"h")?;
            w.tcp_close(Timestamp::from_micros(7), 7, client, server)
        });
        let f: Vec<_> = records.iter().map(tcp_fields).collect();
        assert_eq!(f.len(), 3 + 4 + 3);
        let (c0, s0) = (f[0].1, f[1].1);
        let c = |n: u32| c0.wrapping_add(n);
        let s = |n: u32| s0.wrapping_add(n);
        let expected: [(u32, u32, u8, &[u8]); 10] = [
            (c(0), 0, SYN, b""),
            (s(0), c(1), SYN | ACK, b""),
            (c(1), s(1), ACK, b""),
            (c(1), s(1), PSH | ACK, b"abc"),
            (c(4), s(1), PSH | ACK, b"defg"),
            (s(1), c(8), PSH | ACK, b"12"),
            (c(8), s(3), PSH | ACK, b"h"),
            (c(9), s(3), FIN | ACK, b""),
            (s(3), c(10), FIN | ACK, b""),
            (c(10), s(4), ACK, b""),
        ];
        for (i, (got, want)) in f.iter().zip(expected).enumerate() {
            assert_eq!((got.1, got.2, got.3, got.4.as_slice()), want, "segment {i}");
            let from_client = matches!(i, 0 | 2 | 3 | 4 | 6 | 7 | 9);
            let (sport, dport) = if from_client {
                (50000, 1883)
            } else {
                (1883, 50000)
            };
            assert_eq!(be16(&got.0.l4[0..2]), sport, "segment {i}");
            assert_eq!(be16(&got.0.l4[2..4]), dport, "segment {i}");
            assert_eq!(got.0.version, 4);
        }
        let micros: Vec<u32> = records.iter().map(|r| r.micros).collect();
        assert_eq!(micros, [1, 1, 1, 2, 3, 4, 6, 7, 7, 7]);
    }

    #[test]
    fn tcp_without_open_and_connections_are_independent() {
        let (a, b) = (sa("[2001:db8::a]:40000"), sa("[2001:db8::b]:1883"));
        let records = write(|w| {
            w.tcp(Timestamp::default(), 1, b, a, b"xy")?; // server speaks first
            w.tcp(Timestamp::default(), 2, a, b, b"other")?;
            w.tcp(Timestamp::default(), 1, a, b, b"z")?;
            w.tcp(Timestamp::default(), 1, b, a, b"w")
        });
        let f: Vec<_> = records.iter().map(tcp_fields).collect();
        assert!(f.iter().all(|x| x.0.version == 6));
        // Connection 1: b → a continues from 2 bytes on, a → b acknowledges them.
        assert_eq!(f[3].1, f[0].1.wrapping_add(2));
        assert_eq!(f[2].2, f[0].1.wrapping_add(2));
        assert_eq!(f[3].2, f[2].1.wrapping_add(1));
        assert_eq!(f[0].2, f[2].1);
        assert_ne!(f[1].1, f[2].1, "connection 2 has its own sequence space");
    }

    #[test]
    fn big_tcp_payload_is_split_into_consecutive_segments() {
        let payload: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        let records = write(|w| {
            w.tcp(
                Timestamp::default(),
                9,
                sa("1.1.1.1:1"),
                sa("2.2.2.2:1883"),
                &payload,
            )?;
            w.tcp(
                Timestamp::default(),
                10,
                sa("[::1]:1"),
                sa("[::2]:1883"),
                &payload,
            )
        });
        assert_eq!(records.len(), 6);
        for (chunk, max) in [(&records[..3], 65_495usize), (&records[3..], 65_475)] {
            let f: Vec<_> = chunk.iter().map(tcp_fields).collect();
            assert_eq!(f[0].4.len(), max);
            assert_eq!(f[1].4.len(), max);
            assert_eq!(f[2].4.len(), 150_000 - 2 * max);
            assert!(chunk.iter().all(|r| r.data.len() <= 65_535));
            assert_eq!(f[1].1, f[0].1.wrapping_add(max as u32));
            assert_eq!(f[2].1, f[1].1.wrapping_add(max as u32));
            let joined: Vec<u8> = f.iter().flat_map(|x| x.4.clone()).collect();
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example words: sum 0xddf2 → checksum 0x220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish_checksum(sum_words(&data)), 0x220d);
        // Odd length pads with a zero byte.
        assert_eq!(finish_checksum(sum_words(&[0x12])), !0x1200);
    }

    #[test]
    fn synthetic_addresses() {
        let a = synthetic_addr(2, 0x0013_a200_4086_1234);
        assert_eq!(a, sa("[fd6d:7173:6e00:2:13:a200:4086:1234]:1884"));
        assert_eq!(synthetic_addr(0, 0x42), sa("[fd6d:7173:6e00:0::42]:1884"));
        assert_eq!(synthetic_gateway_addr(3), sa("[fd6d:7173:6e01:3::1]:1884"));
        let records = write(|w| w.udp(Timestamp::default(), a, synthetic_gateway_addr(2), b"x"));
        assert_eq!(parse_ip(&records[0].data).version, 6);
    }

    #[test]
    fn timestamps_from_system_time_and_duration() {
        assert_eq!(Timestamp::from(UNIX_EPOCH).as_micros(), 0);
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(Timestamp::from(before), Timestamp::default());
        assert_eq!(
            Timestamp::from(Duration::from_millis(1500)).split(),
            (1, 500_000)
        );
        assert_eq!(Timestamp::from_micros(u64::MAX).split().0, u32::MAX);
    }

    /// Runs tshark on a recording with MQTT-SN over UDP 1884 and MQTT over TCP 1883, if tshark
    /// is installed.
    #[test]
    fn tshark_dissects_mqttsn_and_mqtt() {
        use std::process::Command;
        let found = Command::new("which")
            .arg("tshark")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            eprintln!("note: tshark not installed; skipping the Wireshark dissection check");
            return;
        }
        let device = sa("10.0.0.7:50123");
        let gateway = sa("10.0.0.1:1884");
        let radio = synthetic_addr(1, 0x0013_a200_4086_1234);
        let radio_gw = synthetic_gateway_addr(1);
        let client = sa("127.0.0.1:50000");
        let broker = sa("127.0.0.1:1883");
        let connect_sn = b"\x0a\x04\x04\x01\x00\x3cdev1";
        let connack_sn = b"\x03\x05\x00";
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04gw01";
        let connack = b"\x20\x02\x00\x00";
        let t = |ms: u64| Timestamp::from_micros(1_700_000_000_000_000 + ms * 1000);

        let mut w = PcapWriter::new(Vec::new()).expect("header");
        w.udp(t(0), device, gateway, connect_sn).expect("udp");
        w.tcp_open(t(1), 1, client, broker).expect("open");
        // The CONNECT split across two segments, reassembled by Wireshark.
        w.tcp(t(2), 1, client, broker, &connect[..7]).expect("tcp");
        w.tcp(t(3), 1, client, broker, &connect[7..]).expect("tcp");
        w.tcp(t(4), 1, broker, client, connack).expect("tcp");
        w.udp(t(5), gateway, device, connack_sn).expect("udp");
        w.udp(t(6), radio, radio_gw, connect_sn).expect("udp");
        w.udp(t(7), radio_gw, radio, connack_sn).expect("udp");
        w.tcp_close(t(8), 1, client, broker).expect("close");
        let path = std::env::temp_dir().join(format!(
            "mqttsn-gateway-pcap-test-{}.pcap",
            std::process::id()
        ));
        std::fs::write(&path, w.into_inner()).expect("write pcap");

        let run = |args: &[&str]| {
            let out = Command::new("tshark")
                .arg("-r")
                .arg(&path)
                .args(["-d", "udp.port==1884,mqttsn"])
                .args(["-o", "ip.check_checksum:TRUE"])
                .args(["-o", "udp.check_checksum:TRUE"])
                .args(["-o", "tcp.check_checksum:TRUE"])
                .args(args)
                .output()
                .expect("run tshark");
            assert!(
                out.status.success(),
                "tshark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let protocols = run(&["-T", "fields", "-e", "frame.protocols"]);
        let verbose = run(&["-V"]);
        std::fs::remove_file(&path).ok();

        let lines: Vec<&str> = protocols.lines().collect();
        assert_eq!(lines.len(), 13, "{protocols}");
        assert!(lines[0].ends_with("udp:mqttsn"), "{protocols}");
        assert!(lines[0].starts_with("raw:ip:"), "{protocols}");
        assert!(lines[8].starts_with("raw:ipv6:"), "{protocols}");
        assert_eq!(
            lines.iter().filter(|l| l.ends_with(":mqttsn")).count(),
            4,
            "{protocols}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.ends_with("tcp:mqtt")).count(),
            2,
            "{protocols}"
        );
        assert!(!protocols.contains("_ws.malformed"), "{protocols}");
        assert!(!verbose.contains("Malformed"), "{verbose}");
        // With checksum validation on: every IPv4 header and every UDP/TCP checksum is good.
        assert_eq!(
            verbose.matches("[Header checksum status: Good]").count(),
            11
        );
        assert_eq!(verbose.matches("[Checksum Status: Good]").count(), 13);
        assert!(!verbose.contains("Bad]"), "checksum errors: {verbose}");
        assert!(verbose.contains("dev1"), "{verbose}");
        assert!(verbose.contains("gw01"), "{verbose}");
    }
}
