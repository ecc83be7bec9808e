//! Digi XBee API framing, for ZigBee (and similar) modules in API mode 1 or 2.
//!
//! An API frame is `7E | length (2 octets, big-endian) | frame data | checksum`: the length
//! counts the frame data only, and the checksum is 0xFF minus the low octet of the sum of the
//! frame data octets, so that frame data plus checksum sum to 0xFF. In API mode 2 every octet
//! after the start delimiter that is 7E, 7D, 11 or 13 (delimiter, escape, XON, XOFF) is sent as
//! 7D followed by the octet XOR 0x20; length and checksum are computed on the unescaped data.
//!
//! Received frame types: 0x90 ZigBee Receive Packet and 0x91 Explicit Rx Indicator (their RF data
//! is the MQTT-SN frame, their source addresses the [`RadioAddr`]), 0x8B Transmit Status and
//! 0x8A Modem Status. Other types are dropped as [`DropReason::Unsupported`]. Frames are sent as
//! 0x10 Transmit Requests, with a frame id counting 1..=255 (never 0, which would suppress the
//! Transmit Status) and radius and options 0.
//!
//! Resynchronisation: bytes outside frames are [`DropReason::Garbage`], reported once per run. A
//! start delimiter followed by a length of 0 is not a frame start (garbage); one above the
//! maximum is [`DropReason::Oversize`]. On a bad checksum ([`DropReason::BadChecksum`]) the
//! deframer resumes:
//! - in API mode 1, right after the start delimiter of the bad frame, since a corrupted length
//!   may have swallowed the start of the next frame (7E can appear unescaped inside frames in
//!   this mode, so the bytes of the bad frame are then reported as garbage up to the next 7E);
//! - in API mode 2, after the bad frame, since an unescaped 7E is always a start delimiter: a
//!   frame interrupted by one is garbage, and the new frame is decoded from it.

use super::{Deframer, DropReason, EncodeError, Encoder, GarbageRun, RadioAddr, Received, RxFrame};
use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Start delimiter.
pub const START: u8 = 0x7E;
/// Escape octet (API mode 2).
pub const ESCAPE: u8 = 0x7D;
/// XON, escaped in API mode 2 so that software flow control never sees it in data.
pub const XON: u8 = 0x11;
/// XOFF, escaped in API mode 2.
pub const XOFF: u8 = 0x13;
/// An escaped octet is sent XORed with this.
const ESCAPE_XOR: u8 = 0x20;

/// API frame type: Transmit Request.
pub const TX_REQUEST: u8 = 0x10;
/// API frame type: Modem Status.
pub const MODEM_STATUS: u8 = 0x8A;
/// API frame type: Transmit Status.
pub const TX_STATUS: u8 = 0x8B;
/// API frame type: ZigBee Receive Packet.
pub const RX_PACKET: u8 = 0x90;
/// API frame type: ZigBee Explicit Rx Indicator.
pub const EXPLICIT_RX: u8 = 0x91;

/// Default largest RF payload sent. Over ZigBee an MQTT-SN message is at most about 60 octets
/// (less with encryption or source routing); this leaves a margin for the limit of the module.
pub const DEFAULT_PAYLOAD_LIMIT: usize = 72;
/// Default largest received frame data (the length field), in octets: a 0x91 header of 18
/// octets plus the 255 octets of the largest fragmented ZigBee payload fit with room to spare.
/// In API mode 1 a false start delimiter with a plausible length delays the frames after it
/// until this many octets have arrived, so it is kept well below 64 KiB.
pub const DEFAULT_MAX_FRAME_DATA: usize = 512;

/// Frame data of a Transmit Request before the RF data: type, frame id, 64-bit and 16-bit
/// destination, broadcast radius, options.
const TX_HEADER: usize = 14;
/// Frame data of a Receive Packet before the RF data: type, 64-bit and 16-bit source, options.
const RX_HEADER: usize = 12;
/// Frame data of an Explicit Rx Indicator before the RF data: type, 64-bit and 16-bit source,
/// source and destination endpoints, cluster id, profile id, options.
const EXPLICIT_RX_HEADER: usize = 18;
/// Frame data of a Transmit Status: type, frame id, 16-bit destination, retries, delivery status,
/// discovery status.
const TX_STATUS_LEN: usize = 7;
/// Length field plus checksum around the frame data.
const ENVELOPE: usize = 3;

/// The XBee `AP` setting: whether special octets are escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiMode {
    /// API mode 1 (`AP=1`): no escaping.
    Unescaped = 1,
    /// API mode 2 (`AP=2`): 7E 7D 11 13 escaped after the start delimiter.
    Escaped = 2,
}

/// An `AP` value other than 1 or 2 (0 is transparent mode, which carries no addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("XBee API mode must be 1 (unescaped) or 2 (escaped), not {0}")]
pub struct InvalidApiMode(pub u8);

impl TryFrom<u8> for ApiMode {
    type Error = InvalidApiMode;

    fn try_from(mode: u8) -> Result<Self, Self::Error> {
        match mode {
            1 => Ok(ApiMode::Unescaped),
            2 => Ok(ApiMode::Escaped),
            other => Err(InvalidApiMode(other)),
        }
    }
}

/// The XBee API codec. Clone it to use the deframer and the encoder from separate tasks.
#[derive(Debug, Clone)]
pub struct XbeeCodec {
    mode: ApiMode,
    max_len: usize,
    payload_limit: usize,
    /// The frame id of the next Transmit Request.
    next_frame_id: u8,
    last_frame_id: Option<u8>,
    /// Unconsumed raw bytes. While a frame is being decoded (`pos > 0`) they start at its
    /// start delimiter, so that API mode 1 can rescan them after a bad checksum.
    input: BytesMut,
    /// Raw bytes of `input` examined for the frame in progress; 0 while hunting for a start.
    pos: usize,
    /// Unescaped octets of the frame in progress after the delimiter: length, data, checksum.
    frame: Vec<u8>,
    /// The previous octet was an escape (API mode 2).
    escaped: bool,
    garbage: GarbageRun,
    /// Turns a verified frame's data into an item: [`decode`] on the gateway's side of the line,
    /// [`decode_from_host`] inside a [`TxRequestDeframer`] on the radio's side.
    decode: fn(&[u8]) -> Received,
}

impl XbeeCodec {
    /// A codec for the given API mode, with [`DEFAULT_MAX_FRAME_DATA`] and
    /// [`DEFAULT_PAYLOAD_LIMIT`].
    pub fn new(mode: ApiMode) -> Self {
        XbeeCodec {
            mode,
            max_len: DEFAULT_MAX_FRAME_DATA,
            payload_limit: DEFAULT_PAYLOAD_LIMIT,
            next_frame_id: 1,
            last_frame_id: None,
            input: BytesMut::new(),
            pos: 0,
            frame: Vec::new(),
            escaped: false,
            garbage: GarbageRun::default(),
            decode,
        }
    }

    /// Sets the largest received frame data (the API length field) accepted, at least 1.
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// Sets the largest RF payload the encoder sends (at most 65521, what the 16-bit length
    /// field allows after the Transmit Request header).
    pub fn with_payload_limit(mut self, limit: usize) -> Self {
        self.payload_limit = limit.min(usize::from(u16::MAX) - TX_HEADER);
        self
    }

    /// The API mode.
    pub fn api_mode(&self) -> ApiMode {
        self.mode
    }

    /// The largest received frame data accepted, in octets.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The largest RF payload sent, in octets.
    pub fn payload_limit(&self) -> usize {
        self.payload_limit
    }

    /// The frame id of the last Transmit Request encoded, to match its Transmit Status.
    pub fn last_frame_id(&self) -> Option<u8> {
        self.last_frame_id
    }

    /// Forgets the frame in progress; the deframer hunts for a start delimiter at `input[0]`.
    fn restart(&mut self) {
        self.pos = 0;
        self.frame.clear();
        self.escaped = false;
    }

    /// Decodes raw bytes of the frame in progress until it completes or is given up.
    fn scan(&mut self) -> Step {
        while let Some(&raw) = self.input.get(self.pos) {
            self.pos += 1;
            let mut b = raw;
            if self.mode == ApiMode::Escaped {
                if raw == START {
                    // Never data in API mode 2: the frame in progress was cut short, and a new
                    // one starts here.
                    let cut = self.pos - 1;
                    self.input.advance(cut);
                    self.garbage.add(cut);
                    self.restart();
                    self.pos = 1;
                    return Step::Continue;
                }
                // Unescaped XON/XOFF, or an escape of an octet that needs none, never come from
                // a module; they are taken as data and left to the checksum.
                if self.escaped {
                    self.escaped = false;
                    b = raw ^ ESCAPE_XOR;
                } else if raw == ESCAPE {
                    self.escaped = true;
                    continue;
                }
            }
            self.frame.push(b);
            let n = self.frame.len();
            if n < 2 {
                continue;
            }
            let len = usize::from(u16::from_be_bytes([self.frame[0], self.frame[1]]));
            if n == 2 {
                if len == 0 {
                    // No frame type: this 7E was noise. Rescan after it.
                    self.input.advance(1);
                    self.garbage.add(1);
                    self.restart();
                    return Step::Continue;
                }
                if len > self.max_len {
                    // Most likely a corrupted length or a false start: rescan after the 7E
                    // rather than wait for that many octets.
                    self.input.advance(1);
                    self.restart();
                    let item = Received::Dropped(DropReason::Oversize { len });
                    return Step::Item(self.garbage.emit(item));
                }
            }
            if n == len + ENVELOPE {
                let data = &self.frame[2..];
                let sum = data.iter().fold(0u8, |sum, &b| sum.wrapping_add(b));
                let (item, consumed) = if sum == 0xFF {
                    ((self.decode)(&data[..len]), self.pos)
                } else if self.mode == ApiMode::Unescaped {
                    (Received::Dropped(DropReason::BadChecksum), 1)
                } else {
                    (Received::Dropped(DropReason::BadChecksum), self.pos)
                };
                self.input.advance(consumed);
                self.restart();
                return Step::Item(self.garbage.emit(item));
            }
        }
        Step::NeedMore
    }
}

/// Outcome of [`XbeeCodec::scan`].
enum Step {
    /// All bytes examined, the frame is incomplete.
    NeedMore,
    /// The frame in progress was given up without an item; go on.
    Continue,
    /// An item to return.
    Item(Received),
}

/// Reads a big-endian integer of up to 8 octets.
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

/// Turns verified frame data (at least the type octet) into an item.
fn decode(data: &[u8]) -> Received {
    let frame_type = data.first().copied().unwrap_or_default();
    match frame_type {
        RX_PACKET => rx(data, RX_HEADER),
        EXPLICIT_RX => rx(data, EXPLICIT_RX_HEADER),
        TX_STATUS if data.len() >= TX_STATUS_LEN => Received::TxStatus {
            frame_id: data[1],
            addr16: u16::from_be_bytes([data[2], data[3]]),
            retries: data[4],
            delivery: data[5],
            discovery: data[6],
        },
        MODEM_STATUS if data.len() >= 2 => Received::ModemStatus(data[1]),
        TX_STATUS | MODEM_STATUS => Received::Dropped(DropReason::Malformed { frame_type }),
        _ => Received::Dropped(DropReason::Unsupported { frame_type }),
    }
}

/// A receive frame whose RF data starts at `header`; both types start with the 64-bit and
/// 16-bit source addresses. The endpoints, cluster and profile of 0x91 mean nothing to MQTT-SN.
fn rx(data: &[u8], header: usize) -> Received {
    if data.len() <= header {
        // Too short for the header, or no RF data: not an MQTT-SN frame.
        return Received::Dropped(DropReason::Malformed {
            frame_type: data[0],
        });
    }
    Received::Frame(RxFrame {
        source: Some(RadioAddr {
            addr64: be(&data[1..9]),
            addr16: be(&data[9..11]) as u16,
        }),
        payload: Bytes::copy_from_slice(&data[header..]),
    })
}

impl Deframer for XbeeCodec {
    fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Option<Received> {
        loop {
            if let Some(item) = self.garbage.ready() {
                return Some(item);
            }
            if self.pos == 0 {
                match self.input.iter().position(|&b| b == START) {
                    Some(at) => {
                        self.input.advance(at);
                        self.garbage.add(at);
                        self.pos = 1;
                    }
                    None => {
                        self.garbage.add(self.input.len());
                        self.input.clear();
                        return self.garbage.ready();
                    }
                }
                continue;
            }
            match self.scan() {
                Step::NeedMore => return None,
                Step::Continue => {}
                Step::Item(item) => return Some(item),
            }
        }
    }

    fn buffered(&self) -> usize {
        self.input.len() + self.frame.len()
    }

    /// An unfinished frame holds at most `max_len + 2` unescaped octets (length and data, the
    /// checksum would finish it), in the scratch buffer and as raw bytes after the delimiter:
    /// as many in API mode 1, up to twice as many plus a pending escape in API mode 2. Hence
    /// `2 * max_len + 5` in mode 1 and `3 * max_len + 8` in mode 2.
    fn buffer_cap(&self) -> usize {
        let decoded = self.max_len + 2;
        let raw = match self.mode {
            ApiMode::Unescaped => 1 + decoded,
            ApiMode::Escaped => 1 + 2 * decoded + 1,
        };
        raw + decoded
    }
}

/// Appends `data` to `out`, escaped as `mode` requires.
fn put_escaped(mode: ApiMode, data: &[u8], out: &mut BytesMut) {
    if mode == ApiMode::Unescaped {
        out.extend_from_slice(data);
        return;
    }
    let special = |b: u8| matches!(b, START | ESCAPE | XON | XOFF);
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&b| special(b)) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(&[ESCAPE, rest[at] ^ ESCAPE_XOR]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

impl Encoder for XbeeCodec {
    /// Appends a Transmit Request to `to`, or to every node (64-bit 0xFFFF, 16-bit 0xFFFE) when
    /// `to` is `None`. A `to` whose 16-bit address is unknown should carry 0xFFFE.
    fn encode(
        &mut self,
        payload: &[u8],
        to: Option<RadioAddr>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        super::check_payload(payload, self.payload_limit)?;
        let dest = to.unwrap_or(RadioAddr::BROADCAST);
        let frame_id = self.next_frame_id;
        self.next_frame_id = frame_id.checked_add(1).unwrap_or(1);
        self.last_frame_id = Some(frame_id);

        let mut header = [0u8; TX_HEADER];
        header[0] = TX_REQUEST;
        header[1] = frame_id;
        header[2..10].copy_from_slice(&dest.addr64.to_be_bytes());
        header[10..12].copy_from_slice(&dest.addr16.to_be_bytes());
        // header[12], broadcast radius 0: the network maximum. header[13], options 0.
        // `with_payload_limit` keeps the length within 16 bits.
        put_api_frame(self.mode, &header, payload, out);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The radio's side of the line, for tools and tests that stand in for the coordinator radio
// (the replay tool's XBee emulator): they write what the gateway's deframer reads and read what
// its encoder writes, with this codec's layouts and deframer rather than copies of them.

/// Receive options of the Receive Packets [`encode_rx_packet`] writes: 0x01, packet
/// acknowledged, as for a unicast from a node to the coordinator.
const RX_OPTIONS_ACKNOWLEDGED: u8 = 0x01;

/// Appends a 0x90 ZigBee Receive Packet from `from` carrying `payload` (receive options 0x01,
/// acknowledged), framed for `mode`: what a coordinator radio writes to its host when a node's
/// frame arrives. Fails on an empty payload or one over the 65523 octets the length field
/// leaves; on error nothing is appended.
pub fn encode_rx_packet(
    mode: ApiMode,
    from: RadioAddr,
    payload: &[u8],
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    super::check_payload(payload, usize::from(u16::MAX) - RX_HEADER)?;
    let mut header = [0u8; RX_HEADER];
    header[0] = RX_PACKET;
    header[1..9].copy_from_slice(&from.addr64.to_be_bytes());
    header[9..11].copy_from_slice(&from.addr16.to_be_bytes());
    header[11] = RX_OPTIONS_ACKNOWLEDGED;
    put_api_frame(mode, &header, payload, out);
    Ok(())
}

/// Appends one API frame whose data is `header` then `payload`: start delimiter, length, data
/// and checksum, escaped for `mode`. The caller keeps the data within the 16-bit length. Used by
/// the Transmit Request encoder and by [`encode_rx_packet`].
fn put_api_frame(mode: ApiMode, header: &[u8], payload: &[u8], out: &mut BytesMut) {
    let sum = header
        .iter()
        .chain(payload)
        .fold(0u8, |sum, &b| sum.wrapping_add(b));
    let len = (header.len() + payload.len()) as u16;
    out.reserve(1 + 2 * (header.len() + payload.len() + ENVELOPE));
    out.extend_from_slice(&[START]);
    put_escaped(mode, &len.to_be_bytes(), out);
    put_escaped(mode, header, out);
    put_escaped(mode, payload, out);
    put_escaped(mode, &[0xFF - sum], out);
}

/// A 0x10 Transmit Request as the radio reads it from its host: RF data for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxRequest {
    /// The destination: one node, or [`RadioAddr::BROADCAST`].
    pub to: RadioAddr,
    /// The RF data: one MQTT-SN frame, possibly forwarder-encapsulated.
    pub payload: Bytes,
}

/// Recovers the Transmit Requests a host writes (the gateway's [`XbeeCodec`] encoder), with the
/// unescaping, checksum and resynchronisation of the gateway's own deframer. Frames of other
/// types, requests with no RF data, bad checksums and line noise are skipped. Any length the
/// 16-bit field allows is accepted, since the host's payload limit is configurable up to that.
///
/// It is an iterator over the requests recoverable from the bytes pushed so far: after it
/// returns `None`, push more bytes and iterate again.
#[derive(Debug, Clone)]
pub struct TxRequestDeframer {
    codec: XbeeCodec,
}

impl TxRequestDeframer {
    /// A deframer for the given API mode.
    pub fn new(mode: ApiMode) -> Self {
        let codec = XbeeCodec {
            decode: decode_from_host,
            ..XbeeCodec::new(mode)
        };
        TxRequestDeframer {
            codec: codec.with_max_len(usize::from(u16::MAX)),
        }
    }

    /// Appends bytes read from the line; any split of the stream into pushes gives the same
    /// requests.
    pub fn push(&mut self, bytes: &[u8]) {
        self.codec.push(bytes);
    }
}

impl Iterator for TxRequestDeframer {
    type Item = TxRequest;

    fn next(&mut self) -> Option<TxRequest> {
        loop {
            // `decode_from_host` puts a request's destination where a received frame has its
            // source, so that the deframer's item type serves both sides of the line.
            if let Received::Frame(RxFrame {
                source: Some(to),
                payload,
            }) = self.codec.next()?
            {
                return Some(TxRequest { to, payload });
            }
        }
    }
}

/// [`decode`] for the radio's side of the line: a Transmit Request becomes a frame whose
/// `source` is the request's destination (see [`TxRequestDeframer`]); frames a host does not
/// send are unsupported.
fn decode_from_host(data: &[u8]) -> Received {
    let frame_type = data.first().copied().unwrap_or_default();
    if frame_type != TX_REQUEST {
        return Received::Dropped(DropReason::Unsupported { frame_type });
    }
    if data.len() <= TX_HEADER {
        return Received::Dropped(DropReason::Malformed { frame_type });
    }
    Received::Frame(RxFrame {
        source: Some(RadioAddr {
            addr64: be(&data[2..10]),
            addr16: be(&data[10..12]) as u16,
        }),
        payload: Bytes::copy_from_slice(&data[TX_HEADER..]),
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        feed, feed_all_splits, feed_chunks, is_subsequence, payloads,
    };
    use super::*;
    use proptest::prelude::*;

    const MODES: [ApiMode; 2] = [ApiMode::Unescaped, ApiMode::Escaped];

    fn frame(source: RadioAddr, payload: &[u8]) -> Received {
        Received::Frame(RxFrame {
            source: Some(source),
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn dropped(reason: DropReason) -> Received {
        Received::Dropped(reason)
    }

    fn garbage(bytes: usize) -> Received {
        Received::Dropped(DropReason::Garbage { bytes })
    }

    /// Builds an API frame around `data`, written independently of the encoder: checksum
    /// computed here, escaping octet by octet.
    fn api_frame(mode: ApiMode, data: &[u8]) -> Vec<u8> {
        let mut unescaped = (data.len() as u16).to_be_bytes().to_vec();
        unescaped.extend_from_slice(data);
        let sum: u32 = data.iter().map(|&b| u32::from(b)).sum();
        unescaped.push(0xFF - (sum & 0xFF) as u8);
        let mut out = vec![0x7E];
        for b in unescaped {
            if mode == ApiMode::Escaped && [0x7E, 0x7D, 0x11, 0x13].contains(&b) {
                out.extend_from_slice(&[0x7D, b ^ 0x20]);
            } else {
                out.push(b);
            }
        }
        out
    }

    /// Parses one API frame (the whole of `bytes`) independently of the deframer: returns the
    /// frame data after checking the length and checksum.
    fn parse_api_frame(mode: ApiMode, bytes: &[u8]) -> Vec<u8> {
        assert_eq!(bytes[0], 0x7E);
        let mut unescaped = Vec::new();
        let mut it = bytes[1..].iter();
        while let Some(&b) = it.next() {
            if mode == ApiMode::Escaped {
                assert!(
                    ![0x7E, 0x11, 0x13].contains(&b),
                    "unescaped 7E, XON or XOFF"
                );
                if b == 0x7D {
                    unescaped.push(it.next().unwrap() ^ 0x20);
                    continue;
                }
            }
            unescaped.push(b);
        }
        let len = usize::from(u16::from_be_bytes([unescaped[0], unescaped[1]]));
        assert_eq!(unescaped.len(), len + 3);
        let sum: u32 = unescaped[2..].iter().map(|&b| u32::from(b)).sum();
        assert_eq!(sum & 0xFF, 0xFF, "checksum");
        unescaped[2..2 + len].to_vec()
    }

    const NODE: RadioAddr = RadioAddr::new(0x0013_A200_40A1_B2C3, 0x1234);

    /// A 0x90 Receive Packet from NODE (options 01, acknowledged) carrying `02 17`, API mode 1.
    /// Length: 1 type + 8 + 2 addresses + 1 options + 2 data = 14 = 0x0E.
    /// Sum: 90+00+13+A2+00+40+A1+B2+C3+12+34+01+02+17 = 0x3FB; checksum FF - FB = 0x04.
    const RX_02_17: &[u8] = &[
        0x7E, 0x00, 0x0E, 0x90, 0x00, 0x13, 0xA2, 0x00, 0x40, 0xA1, 0xB2, 0xC3, 0x12, 0x34, 0x01,
        0x02, 0x17, 0x04,
    ];
    /// The same in API mode 2: the 13 of Digi's OUI 0013A2 is XOFF, sent as 7D 33.
    const RX_02_17_MODE2: &[u8] = &[
        0x7E, 0x00, 0x0E, 0x90, 0x00, 0x7D, 0x33, 0xA2, 0x00, 0x40, 0xA1, 0xB2, 0xC3, 0x12, 0x34,
        0x01, 0x02, 0x17, 0x04,
    ];

    fn rx_02_17(mode: ApiMode) -> &'static [u8] {
        match mode {
            ApiMode::Unescaped => RX_02_17,
            ApiMode::Escaped => RX_02_17_MODE2,
        }
    }

    /// Digi's Receive Packet example: "RxData" from 0013A20040522BAA / 7D84, options 01.
    /// Sum 0x5F2, checksum FF - F2 = 0x0D. The 16-bit address contains 7D.
    const DIGI_RX_MODE1: &[u8] = &[
        0x7E, 0x00, 0x12, 0x90, 0x00, 0x13, 0xA2, 0x00, 0x40, 0x52, 0x2B, 0xAA, 0x7D, 0x84, 0x01,
        0x52, 0x78, 0x44, 0x61, 0x74, 0x61, 0x0D,
    ];
    /// The same in API mode 2: 13 is sent as 7D 33, 7D as 7D 5D.
    const DIGI_RX_MODE2: &[u8] = &[
        0x7E, 0x00, 0x12, 0x90, 0x00, 0x7D, 0x33, 0xA2, 0x00, 0x40, 0x52, 0x2B, 0xAA, 0x7D, 0x5D,
        0x84, 0x01, 0x52, 0x78, 0x44, 0x61, 0x74, 0x61, 0x0D,
    ];
    const DIGI_NODE: RadioAddr = RadioAddr::new(0x0013_A200_4052_2BAA, 0x7D84);

    /// A Receive Packet from NODE whose payload `7E 7D 11 13 81` holds every special octet.
    /// Length 12 + 5 = 17 = 0x11 (escaped as 7D 31). Sum: the header 90+00+13+A2+00+40+A1+B2+
    /// C3+12+34+01 = 0x3E2, the payload 7E+7D+11+13+81 = 0x1A0, total 0x582; checksum FF - 82 =
    /// 0x7D (escaped as 7D 5D). The 13 of the address is escaped as 7D 33.
    const SPECIAL_PAYLOAD: &[u8] = &[0x7E, 0x7D, 0x11, 0x13, 0x81];
    const SPECIAL_MODE2: &[u8] = &[
        0x7E, 0x00, 0x7D, 0x31, 0x90, 0x00, 0x7D, 0x33, 0xA2, 0x00, 0x40, 0xA1, 0xB2, 0xC3, 0x12,
        0x34, 0x01, 0x7D, 0x5E, 0x7D, 0x5D, 0x7D, 0x31, 0x7D, 0x33, 0x81, 0x7D, 0x5D,
    ];
    /// The same in API mode 1: nothing escaped, 7E inside the frame.
    const SPECIAL_MODE1: &[u8] = &[
        0x7E, 0x00, 0x11, 0x90, 0x00, 0x13, 0xA2, 0x00, 0x40, 0xA1, 0xB2, 0xC3, 0x12, 0x34, 0x01,
        0x7E, 0x7D, 0x11, 0x13, 0x81, 0x7D,
    ];

    /// Digi's Transmit Status example: frame id 01 delivered to 7D84, no retries, success,
    /// no discovery overhead. Sum 8B+01+7D+84+00+00+01 = 0x18E, checksum FF - 8E = 0x71.
    const TX_STATUS_MODE1: &[u8] = &[
        0x7E, 0x00, 0x07, 0x8B, 0x01, 0x7D, 0x84, 0x00, 0x00, 0x01, 0x71,
    ];
    const TX_STATUS_MODE2: &[u8] = &[
        0x7E, 0x00, 0x07, 0x8B, 0x01, 0x7D, 0x5D, 0x84, 0x00, 0x00, 0x01, 0x71,
    ];
    const TX_STATUS_ITEM: Received = Received::TxStatus {
        frame_id: 1,
        addr16: 0x7D84,
        retries: 0,
        delivery: 0,
        discovery: 1,
    };

    /// Modem Status 06, coordinator started: 8A + 06 = 0x90, checksum FF - 90 = 0x6F.
    const MODEM_STARTED: &[u8] = &[0x7E, 0x00, 0x02, 0x8A, 0x06, 0x6F];

    /// Digi's escaping example in API mode 2: frame type 0x23 with data 11, sent as 7D 31;
    /// checksum FF - (23 + 11) = 0xCB.
    const DIGI_ESCAPED_0X23: &[u8] = &[0x7E, 0x00, 0x02, 0x23, 0x7D, 0x31, 0xCB];

    /// Digi's Transmit Request example: frame id 01 to 0013A200400A0127 / FFFE, radius 0,
    /// options 0, RF data "TxData0A". Length 14 + 8 = 0x16. Sum 0x5EC, checksum FF - EC = 0x13.
    const DIGI_TX_MODE1: &[u8] = &[
        0x7E, 0x00, 0x16, 0x10, 0x01, 0x00, 0x13, 0xA2, 0x00, 0x40, 0x0A, 0x01, 0x27, 0xFF, 0xFE,
        0x00, 0x00, 0x54, 0x78, 0x44, 0x61, 0x74, 0x61, 0x30, 0x41, 0x13,
    ];

    #[test]
    fn the_test_helper_agrees_with_the_hand_computed_frames() {
        let rx = |addr: RadioAddr, options: u8, payload: &[u8]| {
            let mut d = vec![0x90];
            d.extend_from_slice(&addr.addr64.to_be_bytes());
            d.extend_from_slice(&addr.addr16.to_be_bytes());
            d.push(options);
            d.extend_from_slice(payload);
            d
        };
        assert_eq!(
            api_frame(ApiMode::Unescaped, &rx(NODE, 1, &[0x02, 0x17])),
            RX_02_17
        );
        assert_eq!(
            api_frame(ApiMode::Escaped, &rx(NODE, 1, &[0x02, 0x17])),
            RX_02_17_MODE2
        );
        assert_eq!(
            api_frame(ApiMode::Unescaped, &rx(DIGI_NODE, 1, b"RxData")),
            DIGI_RX_MODE1
        );
        assert_eq!(
            api_frame(ApiMode::Unescaped, &rx(NODE, 1, SPECIAL_PAYLOAD)),
            SPECIAL_MODE1
        );
        assert_eq!(
            api_frame(ApiMode::Escaped, &rx(DIGI_NODE, 1, b"RxData")),
            DIGI_RX_MODE2
        );
        assert_eq!(
            api_frame(ApiMode::Escaped, &rx(NODE, 1, SPECIAL_PAYLOAD)),
            SPECIAL_MODE2
        );
        assert_eq!(
            parse_api_frame(ApiMode::Escaped, SPECIAL_MODE2),
            rx(NODE, 1, SPECIAL_PAYLOAD)
        );
    }

    #[test]
    fn api_mode_from_setting() {
        assert_eq!(ApiMode::try_from(1), Ok(ApiMode::Unescaped));
        assert_eq!(ApiMode::try_from(2), Ok(ApiMode::Escaped));
        assert_eq!(ApiMode::try_from(0), Err(InvalidApiMode(0)));
    }

    #[test]
    fn known_frames_in_api_mode_1_at_every_split() {
        let stream = [
            RX_02_17,
            DIGI_RX_MODE1,
            SPECIAL_MODE1,
            TX_STATUS_MODE1,
            MODEM_STARTED,
            DIGI_TX_MODE1,
        ]
        .concat();
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Unescaped), &stream),
            vec![
                frame(NODE, &[0x02, 0x17]),
                frame(DIGI_NODE, b"RxData"),
                frame(NODE, SPECIAL_PAYLOAD),
                TX_STATUS_ITEM,
                Received::ModemStatus(6),
                dropped(DropReason::Unsupported { frame_type: 0x10 }),
            ]
        );
    }

    #[test]
    fn known_frames_in_api_mode_2_at_every_split() {
        let stream = [
            RX_02_17_MODE2,
            DIGI_RX_MODE2,
            SPECIAL_MODE2,
            TX_STATUS_MODE2,
            MODEM_STARTED,
            DIGI_ESCAPED_0X23,
        ]
        .concat();
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Escaped), &stream),
            vec![
                frame(NODE, &[0x02, 0x17]),
                frame(DIGI_NODE, b"RxData"),
                frame(NODE, SPECIAL_PAYLOAD),
                TX_STATUS_ITEM,
                Received::ModemStatus(6),
                dropped(DropReason::Unsupported { frame_type: 0x23 }),
            ]
        );
    }

    #[test]
    fn explicit_rx_indicator() {
        // 0x91 from NODE: source endpoint E8, destination endpoint E8, cluster 0011, profile
        // C105, options 01, RF data 02 16.
        let mut data = vec![0x91];
        data.extend_from_slice(&NODE.addr64.to_be_bytes());
        data.extend_from_slice(&NODE.addr16.to_be_bytes());
        data.extend_from_slice(&[0xE8, 0xE8, 0x00, 0x11, 0xC1, 0x05, 0x01, 0x02, 0x16]);
        for mode in MODES {
            let items = feed_all_splits(&XbeeCodec::new(mode), &api_frame(mode, &data));
            assert_eq!(items, vec![frame(NODE, &[0x02, 0x16])]);
        }
    }

    #[test]
    fn short_frames_are_malformed() {
        for mode in MODES {
            let stream = [
                // A Receive Packet with no RF data.
                api_frame(mode, &RX_02_17[3..15]),
                // A 0x91 cut inside its header.
                api_frame(mode, &[0x91, 0x00, 0x13]),
                api_frame(mode, &[0x8B, 0x01, 0xFF, 0xFE]),
                api_frame(mode, &[0x8A]),
            ]
            .concat();
            assert_eq!(
                feed_all_splits(&XbeeCodec::new(mode), &stream),
                vec![
                    dropped(DropReason::Malformed { frame_type: 0x90 }),
                    dropped(DropReason::Malformed { frame_type: 0x91 }),
                    dropped(DropReason::Malformed { frame_type: 0x8B }),
                    dropped(DropReason::Malformed { frame_type: 0x8A }),
                ]
            );
        }
    }

    #[test]
    fn garbage_before_and_between_frames() {
        for mode in MODES {
            let stream = [
                &[0x11, 0x22, 0x33][..],
                rx_02_17(mode),
                &[0x44, 0x55],
                MODEM_STARTED,
            ]
            .concat();
            assert_eq!(
                feed_all_splits(&XbeeCodec::new(mode), &stream),
                vec![
                    garbage(3),
                    frame(NODE, &[0x02, 0x17]),
                    garbage(2),
                    Received::ModemStatus(6)
                ]
            );
        }
    }

    #[test]
    fn a_bad_checksum_in_api_mode_1_rescans_the_frame() {
        // The last payload octet 17 corrupted to 18.
        let mut bad = RX_02_17.to_vec();
        bad[16] = 0x18;
        let stream = [&bad[..], MODEM_STARTED].concat();
        // The 17 octets after the bad frame's delimiter contain no 7E: they are garbage.
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Unescaped), &stream),
            vec![
                dropped(DropReason::BadChecksum),
                garbage(17),
                Received::ModemStatus(6)
            ]
        );
    }

    #[test]
    fn a_corrupted_length_in_api_mode_1_does_not_lose_the_next_frame() {
        // RX_02_17 with its length grown from 0x0E to 0x10: the candidate runs 2 octets into
        // the modem status frame, fails its checksum, and the rescan finds that frame.
        let mut bad = RX_02_17.to_vec();
        bad[2] = 0x10;
        let stream = [&bad[..], MODEM_STARTED].concat();
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Unescaped), &stream),
            vec![
                dropped(DropReason::BadChecksum),
                garbage(17),
                Received::ModemStatus(6)
            ]
        );
    }

    #[test]
    fn a_bad_checksum_in_api_mode_2_skips_the_frame() {
        // The last payload octet 17 corrupted to 18.
        let mut bad = RX_02_17_MODE2.to_vec();
        bad[17] = 0x18;
        let stream = [&bad[..], MODEM_STARTED].concat();
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Escaped), &stream),
            vec![dropped(DropReason::BadChecksum), Received::ModemStatus(6)]
        );
    }

    #[test]
    fn noise_inside_a_frame() {
        // Two octets of noise after the frame type: the length ends the frame 2 octets early,
        // so its checksum fails (02 where 90+AA+BB+00+13+A2+...+01 = 0x547 needs B8).
        let mut bad = RX_02_17.to_vec();
        bad.splice(4..4, [0xAA, 0xBB]);
        let stream = [&bad[..], MODEM_STARTED].concat();
        // Mode 1 rescans all 19 octets after the delimiter.
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Unescaped), &stream),
            vec![
                dropped(DropReason::BadChecksum),
                garbage(19),
                Received::ModemStatus(6)
            ]
        );
        // Mode 2 drops the octets it took as the frame, and the last 2 (17 04) are garbage.
        let mut bad = RX_02_17_MODE2.to_vec();
        bad.splice(4..4, [0xAA, 0xBB]);
        let stream = [&bad[..], MODEM_STARTED].concat();
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Escaped), &stream),
            vec![
                dropped(DropReason::BadChecksum),
                garbage(2),
                Received::ModemStatus(6)
            ]
        );
    }

    #[test]
    fn a_frame_cut_short_in_api_mode_2_is_garbage() {
        // 7E 00 0E 90 00 7D, then a new start delimiter.
        let stream = [&RX_02_17_MODE2[..6], RX_02_17_MODE2].concat();
        assert_eq!(
            feed_all_splits(&XbeeCodec::new(ApiMode::Escaped), &stream),
            vec![garbage(6), frame(NODE, &[0x02, 0x17])]
        );
    }

    #[test]
    fn zero_and_oversize_lengths() {
        for mode in MODES {
            // 7E 00 00: length 0, garbage with the 7E. 7E 7F FF: 32767 octets, above the
            // maximum; the 7F FF after it are garbage.
            let rx = rx_02_17(mode);
            let stream = [&[0x7E, 0x00, 0x00][..], rx, &[0x7E, 0x7F, 0xFF], rx].concat();
            assert_eq!(
                feed_all_splits(&XbeeCodec::new(mode), &stream),
                vec![
                    garbage(3),
                    frame(NODE, &[0x02, 0x17]),
                    dropped(DropReason::Oversize { len: 0x7FFF }),
                    garbage(2),
                    frame(NODE, &[0x02, 0x17]),
                ]
            );
        }
        // A configured maximum below the frame's 14 octets.
        let codec = XbeeCodec::new(ApiMode::Unescaped).with_max_len(13);
        let items = feed(codec, &[RX_02_17, MODEM_STARTED].concat());
        assert_eq!(
            items,
            vec![
                dropped(DropReason::Oversize { len: 14 }),
                garbage(17),
                Received::ModemStatus(6)
            ]
        );
    }

    #[test]
    fn a_long_run_of_garbage_is_reported_in_pieces() {
        let limit = super::super::GARBAGE_REPORT_LIMIT;
        let stream = [&vec![0x55; limit + 3][..], MODEM_STARTED].concat();
        for mode in MODES {
            assert_eq!(
                feed_all_splits(&XbeeCodec::new(mode), &stream),
                vec![garbage(limit), garbage(3), Received::ModemStatus(6)]
            );
        }
    }

    #[test]
    fn encodes_digi_transmit_request_example() {
        let to = RadioAddr::from_addr64(0x0013_A200_400A_0127);
        let mut c = XbeeCodec::new(ApiMode::Unescaped);
        let mut out = BytesMut::new();
        c.encode(b"TxData0A", Some(to), &mut out).unwrap();
        assert_eq!(&out[..], DIGI_TX_MODE1);
        assert_eq!(c.last_frame_id(), Some(1));
        // In API mode 2 the 13 of the address and the checksum 0x13 (XOFF) are escaped as 7D 33.
        let mut c = XbeeCodec::new(ApiMode::Escaped);
        let mut out = BytesMut::new();
        c.encode(b"TxData0A", Some(to), &mut out).unwrap();
        assert_eq!(
            &out[..],
            [
                0x7E, 0x00, 0x16, 0x10, 0x01, 0x00, 0x7D, 0x33, 0xA2, 0x00, 0x40, 0x0A, 0x01, 0x27,
                0xFF, 0xFE, 0x00, 0x00, 0x54, 0x78, 0x44, 0x61, 0x74, 0x61, 0x30, 0x41, 0x7D, 0x33
            ]
        );
    }

    #[test]
    fn encodes_broadcasts() {
        // Frame id 01, 64-bit 000000000000FFFF, 16-bit FFFE, radius 0, options 0, data 02 16.
        // Length 14 + 2 = 0x10. Sum 10+01+FF+FF+FF+FE+02+16 = 0x424, checksum FF - 24 = 0xDB.
        let mut c = XbeeCodec::new(ApiMode::Unescaped);
        let mut out = BytesMut::new();
        c.encode(&[0x02, 0x16], None, &mut out).unwrap();
        assert_eq!(
            &out[..],
            [
                0x7E, 0x00, 0x10, 0x10, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF,
                0xFE, 0x00, 0x00, 0x02, 0x16, 0xDB
            ]
        );
    }

    #[test]
    fn frame_ids_roll_over_skipping_zero() {
        let mut c = XbeeCodec::new(ApiMode::Escaped);
        let mut out = BytesMut::new();
        let mut ids = Vec::new();
        for _ in 0..600 {
            out.clear();
            c.encode(&[0x02, 0x16], None, &mut out).unwrap();
            let data = parse_api_frame(ApiMode::Escaped, &out);
            assert_eq!(Some(data[1]), c.last_frame_id());
            ids.push(data[1]);
        }
        let expected: Vec<u8> = (1..=255u8).cycle().take(600).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn payload_limit() {
        let mut c = XbeeCodec::new(ApiMode::Unescaped);
        let mut out = BytesMut::new();
        assert_eq!(c.payload_limit(), DEFAULT_PAYLOAD_LIMIT);
        c.encode(&[0; DEFAULT_PAYLOAD_LIMIT], None, &mut out)
            .unwrap();
        out.clear();
        assert_eq!(
            c.encode(&[0; DEFAULT_PAYLOAD_LIMIT + 1], None, &mut out),
            Err(EncodeError::TooLong {
                len: DEFAULT_PAYLOAD_LIMIT + 1,
                max: DEFAULT_PAYLOAD_LIMIT
            })
        );
        assert_eq!(c.encode(&[], None, &mut out), Err(EncodeError::Empty));
        assert!(out.is_empty());
        // A failed encode does not use up a frame id.
        assert_eq!(c.last_frame_id(), Some(1));
        let mut c = XbeeCodec::new(ApiMode::Unescaped).with_payload_limit(usize::MAX);
        assert_eq!(c.payload_limit(), 65521);
        c.encode(&vec![0; 65521], None, &mut out).unwrap();
        assert_eq!(&out[1..3], [0xFF, 0xFF]);
    }

    #[test]
    fn encodes_receive_packets_as_a_coordinator_does() {
        // The hand-computed Receive Packets above all carry options 01, as the encoder writes.
        for (from, payload, mode1, mode2) in [
            (NODE, &[0x02, 0x17][..], RX_02_17, RX_02_17_MODE2),
            (DIGI_NODE, &b"RxData"[..], DIGI_RX_MODE1, DIGI_RX_MODE2),
            (NODE, SPECIAL_PAYLOAD, SPECIAL_MODE1, SPECIAL_MODE2),
        ] {
            for (mode, expected) in [(ApiMode::Unescaped, mode1), (ApiMode::Escaped, mode2)] {
                let mut out = BytesMut::new();
                encode_rx_packet(mode, from, payload, &mut out).unwrap();
                assert_eq!(&out[..], expected, "{mode:?}");
            }
        }
        let mut out = BytesMut::new();
        let mode = ApiMode::Unescaped;
        assert_eq!(
            encode_rx_packet(mode, NODE, &[], &mut out),
            Err(EncodeError::Empty)
        );
        // 12 header octets plus 65523 fill the length field.
        assert_eq!(
            encode_rx_packet(mode, NODE, &vec![0; 65524], &mut out),
            Err(EncodeError::TooLong {
                len: 65524,
                max: 65523
            })
        );
        assert!(out.is_empty());
        encode_rx_packet(mode, NODE, &vec![0; 65523], &mut out).unwrap();
        assert_eq!(&out[1..3], [0xFF, 0xFF]);
    }

    #[test]
    fn transmit_requests_decode_on_the_radios_side() {
        let digi = TxRequest {
            to: RadioAddr::from_addr64(0x0013_A200_400A_0127),
            payload: Bytes::from_static(b"TxData0A"),
        };
        // Digi's example, written independently of the encoder.
        let mut d = TxRequestDeframer::new(ApiMode::Unescaped);
        d.push(DIGI_TX_MODE1);
        assert_eq!(d.next(), Some(digi.clone()));
        assert_eq!(d.next(), None);

        let long = vec![0x7E; 600];
        for mode in MODES {
            let mut c = XbeeCodec::new(mode).with_payload_limit(1000);
            let mut stream = BytesMut::from(&[0x11, 0x22][..]); // line noise
            c.encode(b"TxData0A", Some(digi.to), &mut stream).unwrap();
            // A Receive Packet and a Modem Status: frames a host never sends.
            stream.extend_from_slice(rx_02_17(mode));
            stream.extend_from_slice(MODEM_STARTED);
            // A request with no RF data.
            let empty = [0x10, 0x05, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFE, 0, 0];
            stream.extend_from_slice(&api_frame(mode, &empty));
            c.encode(&[0x02, 0x16], None, &mut stream).unwrap();
            // Longer than the gateway's deframer accepts by default.
            c.encode(&long, Some(NODE), &mut stream).unwrap();
            let expected = vec![
                digi.clone(),
                TxRequest {
                    to: RadioAddr::BROADCAST,
                    payload: Bytes::from_static(&[0x02, 0x16]),
                },
                TxRequest {
                    to: NODE,
                    payload: Bytes::from(long.clone()),
                },
            ];
            for split in 0..=stream.len() {
                let mut d = TxRequestDeframer::new(mode);
                let mut got = Vec::new();
                for chunk in [&stream[..split], &stream[split..]] {
                    d.push(chunk);
                    got.extend(&mut d);
                }
                assert_eq!(got, expected, "{mode:?}, split at {split}");
            }
        }
    }

    fn radio_addr() -> impl Strategy<Value = RadioAddr> {
        (any::<u64>(), any::<u16>()).prop_map(|(a, b)| RadioAddr::new(a, b))
    }

    /// Octets biased towards those that need escaping.
    fn octet() -> impl Strategy<Value = u8> {
        prop_oneof![
            Just(0x7E),
            Just(0x7D),
            Just(0x11),
            Just(0x13),
            Just(0x00),
            any::<u8>()
        ]
    }

    fn mode() -> impl Strategy<Value = ApiMode> {
        prop_oneof![Just(ApiMode::Unescaped), Just(ApiMode::Escaped)]
    }

    /// A Receive Packet from `addr` with the given options and payload.
    fn rx_packet(mode: ApiMode, addr: RadioAddr, options: u8, payload: &[u8]) -> Vec<u8> {
        let mut d = vec![0x90];
        d.extend_from_slice(&addr.addr64.to_be_bytes());
        d.extend_from_slice(&addr.addr16.to_be_bytes());
        d.push(options);
        d.extend_from_slice(payload);
        api_frame(mode, &d)
    }

    proptest! {
        #[test]
        fn receive_packets_round_trip(
            packets in proptest::collection::vec(
                (radio_addr(), octet(), proptest::collection::vec(octet(), 1..100)),
                0..6,
            ),
            mode in mode(),
            cut in any::<prop::sample::Index>(),
        ) {
            let stream: Vec<u8> = packets
                .iter()
                .flat_map(|(addr, options, payload)| rx_packet(mode, *addr, *options, payload))
                .collect();
            let at = cut.index(stream.len() + 1);
            let mut d = XbeeCodec::new(mode);
            let items = feed_chunks(&mut d, &[&stream[..at], &stream[at..]]);
            let expected: Vec<Received> = packets
                .iter()
                .map(|(addr, _, payload)| frame(*addr, payload))
                .collect();
            prop_assert_eq!(items, expected);
        }

        #[test]
        fn transmit_requests_round_trip(
            requests in proptest::collection::vec(
                (proptest::option::of(radio_addr()), proptest::collection::vec(octet(), 1..=72)),
                1..6,
            ),
            mode in mode(),
        ) {
            let mut c = XbeeCodec::new(mode);
            for (to, payload) in &requests {
                let mut out = BytesMut::new();
                c.encode(payload, *to, &mut out).unwrap();
                let data = parse_api_frame(mode, &out);
                let dest = to.unwrap_or(RadioAddr::BROADCAST);
                prop_assert_eq!(data[0], 0x10);
                prop_assert_eq!(Some(data[1]), c.last_frame_id());
                prop_assert_eq!(&data[2..10], &dest.addr64.to_be_bytes()[..]);
                prop_assert_eq!(&data[10..12], &dest.addr16.to_be_bytes()[..]);
                prop_assert_eq!(&data[12..14], &[0u8, 0][..]);
                prop_assert_eq!(&data[14..], &payload[..]);
            }
        }

        #[test]
        fn frames_survive_garbage_between_them(
            packets in proptest::collection::vec(
                (radio_addr(), proptest::collection::vec(octet(), 1..40)),
                1..6,
            ),
            noise in proptest::collection::vec(proptest::collection::vec(octet(), 0..30), 6),
            mode in mode(),
        ) {
            // In API mode 2 any noise is survivable, since a 7E always starts a frame. In mode
            // 1 noise containing 7E can make a false frame wait for octets that never come at
            // the end of a stream, so that noise has none.
            let mut stream = Vec::new();
            for ((addr, payload), n) in packets.iter().zip(&noise) {
                if mode == ApiMode::Escaped {
                    stream.extend_from_slice(n);
                } else {
                    stream.extend(n.iter().filter(|&&b| b != 0x7E));
                }
                stream.extend(rx_packet(mode, *addr, 0x01, payload));
            }
            let items = feed(XbeeCodec::new(mode), &stream);
            let sent: Vec<Vec<u8>> = packets.iter().map(|(_, p)| p.clone()).collect();
            prop_assert!(is_subsequence(&sent, &payloads(&items)));
        }

        #[test]
        fn random_streams_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(octet(), 0..200), 0..20),
            mode in mode(),
            max_len in 0usize..64,
        ) {
            let mut d = XbeeCodec::new(mode).with_max_len(max_len);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            // feed_chunks asserts the buffer cap after every push.
            feed_chunks(&mut d, &refs);
        }
    }

    proptest! {
        #[test]
        fn receive_packets_from_the_radios_side_reach_the_gateway(
            packets in proptest::collection::vec(
                (radio_addr(), proptest::collection::vec(octet(), 1..100)),
                0..6,
            ),
            mode in mode(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut stream = BytesMut::new();
            for (from, payload) in &packets {
                encode_rx_packet(mode, *from, payload, &mut stream).unwrap();
            }
            let at = cut.index(stream.len() + 1);
            let mut d = XbeeCodec::new(mode);
            let items = feed_chunks(&mut d, &[&stream[..at], &stream[at..]]);
            let expected: Vec<Received> = packets
                .iter()
                .map(|(from, payload)| frame(*from, payload))
                .collect();
            prop_assert_eq!(items, expected);
        }

        #[test]
        fn transmit_requests_from_the_gateway_reach_the_radios_side(
            requests in proptest::collection::vec(
                (proptest::option::of(radio_addr()), proptest::collection::vec(octet(), 1..=72)),
                0..6,
            ),
            mode in mode(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut c = XbeeCodec::new(mode);
            let mut stream = BytesMut::new();
            for (to, payload) in &requests {
                c.encode(payload, *to, &mut stream).unwrap();
            }
            let at = cut.index(stream.len() + 1);
            let mut d = TxRequestDeframer::new(mode);
            d.push(&stream[..at]);
            let mut got: Vec<TxRequest> = d.by_ref().collect();
            d.push(&stream[at..]);
            got.extend(&mut d);
            let expected: Vec<TxRequest> = requests
                .iter()
                .map(|(to, payload)| TxRequest {
                    to: to.unwrap_or(RadioAddr::BROADCAST),
                    payload: Bytes::copy_from_slice(payload),
                })
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
