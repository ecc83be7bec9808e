//! Serial line framings: how MQTT-SN frames are delimited on a byte stream (raw, SLIP, XBee API).
//!
//! Each framing is a pure codec, with no IO and no clock: the serial transport pushes whatever a
//! read returned into a [`Deframer`] and pulls every [`Received`] item it can recover, and writes
//! what an [`Encoder`] appends to a buffer. All three framings share these types so that the
//! transport treats them alike:
//!
//! - [`raw::RawCodec`]: MQTT-SN frames back to back, delimited only by their own Length field.
//! - [`slip::SlipCodec`]: RFC 1055 SLIP, optionally with a CRC-16/CCITT-FALSE trailer.
//! - [`xbee::XbeeCodec`]: Digi XBee API frames (API mode 1 or 2), which carry radio addresses.
//!
//! A codec implements both traits; clone it before use to read and write from separate tasks
//! (the receive state and the transmit frame id counter are independent).
//!
//! # Cost and memory
//! Deframing allocates nothing per byte: one [`Bytes`] per recovered frame. After
//! [`Deframer::next`] has returned `None`, a deframer holds at most [`Deframer::buffer_cap`]
//! bytes, a bound derived from its maximum frame length; bytes pushed but not yet pulled are on
//! top of that, so call `next` until it returns `None` after every `push`.

use bytes::{Bytes, BytesMut};
use std::fmt;
use thiserror::Error;

pub mod raw;
pub mod slip;
pub mod xbee;

/// Default largest frame, in octets, a deframer accepts. Serial radios carry small frames (about
/// 60 octets over ZigBee), so anything near this is line noise or a misconfigured peer.
pub const DEFAULT_MAX_FRAME_LEN: usize = 1024;

/// A run of discarded bytes longer than this is reported in pieces of this size, so that a line
/// carrying nothing but noise still shows up in the counters instead of waiting for a frame to
/// end the run.
pub const GARBAGE_REPORT_LIMIT: usize = 1024;

/// The address of a radio node: an XBee's 64-bit (IEEE) address and 16-bit network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RadioAddr {
    /// The 64-bit extended address, unique per module.
    pub addr64: u64,
    /// The 16-bit network address; it can change when the node rejoins, [`Self::ADDR16_UNKNOWN`]
    /// when not known.
    pub addr16: u16,
}

impl RadioAddr {
    /// The 16-bit address meaning "unknown": the module resolves it from the 64-bit address.
    pub const ADDR16_UNKNOWN: u16 = 0xFFFE;
    /// The 64-bit broadcast address.
    pub const ADDR64_BROADCAST: u64 = 0x0000_0000_0000_FFFF;
    /// The broadcast destination: every node of the network.
    pub const BROADCAST: RadioAddr = RadioAddr {
        addr64: Self::ADDR64_BROADCAST,
        addr16: Self::ADDR16_UNKNOWN,
    };

    /// An address with both parts known.
    pub const fn new(addr64: u64, addr16: u16) -> Self {
        RadioAddr { addr64, addr16 }
    }

    /// An address known only by its 64-bit part.
    pub const fn from_addr64(addr64: u64) -> Self {
        RadioAddr {
            addr64,
            addr16: Self::ADDR16_UNKNOWN,
        }
    }
}

impl fmt::Display for RadioAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}/{:04x}", self.addr64, self.addr16)
    }
}

/// A frame recovered from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The radio node it came from, when the framing carries addresses (XBee); `None` on a
    /// point-to-point link (raw, SLIP).
    pub source: Option<RadioAddr>,
    /// One MQTT-SN frame, possibly forwarder-encapsulated. Raw framing guarantees its Length
    /// field matches its size; the other framings pass on whatever the sender put in the frame.
    pub payload: Bytes,
}

/// One item recovered from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An MQTT-SN frame.
    Frame(RxFrame),
    /// An XBee Transmit Status (0x8B): the fate of an earlier transmit request.
    TxStatus {
        /// The frame id of the transmit request, as set by the encoder.
        frame_id: u8,
        /// The 16-bit address the module delivered to (0xFFFD when unknown, e.g. after a
        /// failure).
        addr16: u16,
        /// How many application retries the module made.
        retries: u8,
        /// Delivery status: 0x00 success, anything else a failure code from Digi's table.
        delivery: u8,
        /// Discovery status: how the route or address was found.
        discovery: u8,
    },
    /// An XBee Modem Status (0x8A), e.g. 0x00 hardware reset, 0x02 joined, 0x06 coordinator
    /// started.
    ModemStatus(u8),
    /// Bytes or a frame that were thrown away; the transport counts each.
    Dropped(DropReason),
}

/// Why bytes were thrown away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// An XBee frame whose checksum does not match.
    BadChecksum,
    /// A SLIP frame whose CRC-16 trailer does not match.
    BadCrc,
    /// A SLIP frame with ESC followed by something other than ESC_END or ESC_ESC.
    BadEscape,
    /// Bytes that were not part of any frame (line noise, a partial frame at start-up, a frame
    /// cut short by the next start delimiter, a SLIP frame too short to hold its CRC). A run of
    /// consecutive discarded bytes is reported once, just before the item that ends it (and
    /// every [`GARBAGE_REPORT_LIMIT`] bytes while it lasts), so noise at the end of what was
    /// received shows up only once more bytes arrive.
    Garbage {
        /// How many octets were discarded.
        bytes: usize,
    },
    /// A frame longer than the configured maximum.
    Oversize {
        /// XBee: the declared frame data length. SLIP: the octets decoded when the frame was
        /// given up (the frame was at least this long; its end is not awaited, so a line that
        /// never sends END is still reported).
        len: usize,
    },
    /// An XBee API frame type this gateway does not handle.
    Unsupported {
        /// The API frame type octet.
        frame_type: u8,
    },
    /// An XBee API frame too short for the fixed fields of its type, or carrying no RF data.
    Malformed {
        /// The API frame type octet.
        frame_type: u8,
    },
}

impl DropReason {
    /// A short, stable name for counters and log fields.
    pub fn as_str(&self) -> &'static str {
        match self {
            DropReason::BadChecksum => "bad_checksum",
            DropReason::BadCrc => "bad_crc",
            DropReason::BadEscape => "bad_escape",
            DropReason::Garbage { .. } => "garbage",
            DropReason::Oversize { .. } => "oversize",
            DropReason::Unsupported { .. } => "unsupported",
            DropReason::Malformed { .. } => "malformed",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::BadChecksum => f.write_str("XBee frame with a bad checksum"),
            DropReason::BadCrc => f.write_str("SLIP frame with a bad CRC"),
            DropReason::BadEscape => f.write_str("SLIP frame with an invalid escape"),
            DropReason::Garbage { bytes } => write!(f, "{bytes} octets of line noise"),
            DropReason::Oversize { len } => write!(f, "oversize frame ({len} octets)"),
            DropReason::Unsupported { frame_type } => {
                write!(f, "unsupported XBee API frame type 0x{frame_type:02X}")
            }
            DropReason::Malformed { frame_type } => {
                write!(f, "malformed XBee API frame of type 0x{frame_type:02X}")
            }
        }
    }
}

/// Turns a byte stream into frames.
pub trait Deframer {
    /// Appends bytes read from the line; any split of the stream into pushes gives the same
    /// items.
    fn push(&mut self, bytes: &[u8]);

    /// The next item recoverable from the bytes pushed so far, or `None` when more bytes are
    /// needed. Call it until `None` after each push.
    fn next(&mut self) -> Option<Received>;

    /// Bytes currently held (pushed but not yet turned into items, plus partial frames).
    fn buffered(&self) -> usize;

    /// The most [`Self::buffered`] can be after `next` has returned `None`.
    fn buffer_cap(&self) -> usize;
}

/// Turns frames into bytes for the line.
pub trait Encoder {
    /// Appends `payload` (one MQTT-SN frame), framed, to `out`. `to` is the destination radio,
    /// `None` for a broadcast; framings without addresses (raw, SLIP: point-to-point links)
    /// ignore it. On error nothing is appended.
    fn encode(
        &mut self,
        payload: &[u8],
        to: Option<RadioAddr>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError>;
}

/// The checks every encoder makes before framing a payload: not empty, not over `max`.
pub(crate) fn check_payload(payload: &[u8], max: usize) -> Result<(), EncodeError> {
    if payload.is_empty() {
        return Err(EncodeError::Empty);
    }
    if payload.len() > max {
        return Err(EncodeError::TooLong {
            len: payload.len(),
            max,
        });
    }
    Ok(())
}

/// Why a frame cannot be sent with a framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The payload exceeds what the framing (or the radio) is configured to carry. The spec says
    /// to abort such a transmission silently; the transport logs and counts it instead.
    #[error("payload of {len} octets exceeds the {max}-octet limit of the serial framing")]
    TooLong {
        /// The payload length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// An empty payload: receivers ignore empty frames, so sending one is a bug.
    #[error("empty payload")]
    Empty,
    /// Raw framing only: the payload is not exactly one MQTT-SN frame (its Length field does not
    /// match its size, or its type is reserved), so the receiver would lose synchronisation.
    #[error("payload is not exactly one MQTT-SN frame")]
    NotAFrame,
}

/// Bookkeeping for runs of discarded bytes, shared by the deframers that resynchronise by
/// skipping bytes (raw, XBee). A run is reported once, just before the next item that ends it,
/// which makes the items independent of how the stream was split into pushes.
#[derive(Debug, Clone, Default)]
struct GarbageRun {
    /// Octets discarded since the last report.
    pending: usize,
    /// An item held back while the run before it is reported.
    held: Option<Received>,
}

impl GarbageRun {
    /// Counts `n` more discarded octets.
    fn add(&mut self, n: usize) {
        self.pending += n;
    }

    /// An item ready without looking at more input: a held-back item, or a full chunk of
    /// garbage ([`GARBAGE_REPORT_LIMIT`]).
    fn ready(&mut self) -> Option<Received> {
        if let Some(item) = self.held.take() {
            return Some(item);
        }
        if self.pending >= GARBAGE_REPORT_LIMIT {
            self.pending -= GARBAGE_REPORT_LIMIT;
            return Some(Received::Dropped(DropReason::Garbage {
                bytes: GARBAGE_REPORT_LIMIT,
            }));
        }
        None
    }

    /// Returns `item`, or first the pending run (holding `item` back for the next call).
    fn emit(&mut self, item: Received) -> Received {
        if self.pending == 0 {
            return item;
        }
        self.held = Some(item);
        let bytes = std::mem::take(&mut self.pending);
        Received::Dropped(DropReason::Garbage { bytes })
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers shared by the framing tests: feeding a stream in every possible split.

    use super::{Deframer, Received};

    /// Pushes `stream` in the given pieces, draining after each push, and checks the buffer cap.
    pub fn feed_chunks<D: Deframer>(d: &mut D, chunks: &[&[u8]]) -> Vec<Received> {
        let mut out = Vec::new();
        for chunk in chunks {
            d.push(chunk);
            while let Some(item) = d.next() {
                out.push(item);
            }
            assert!(
                d.buffered() <= d.buffer_cap(),
                "buffered {} > cap {}",
                d.buffered(),
                d.buffer_cap()
            );
        }
        out
    }

    /// All items recovered from `stream` pushed at once.
    pub fn feed<D: Deframer>(mut d: D, stream: &[u8]) -> Vec<Received> {
        feed_chunks(&mut d, &[stream])
    }

    /// Feeds `stream` whole, byte by byte, and in two parts at every split point; asserts that
    /// every way gives the same items and returns them.
    pub fn feed_all_splits<D: Deframer + Clone>(fresh: &D, stream: &[u8]) -> Vec<Received> {
        let whole = feed(fresh.clone(), stream);
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let mut d = fresh.clone();
        assert_eq!(feed_chunks(&mut d, &bytes), whole, "byte by byte");
        for split in 0..=stream.len() {
            let (a, b) = stream.split_at(split);
            let mut d = fresh.clone();
            assert_eq!(feed_chunks(&mut d, &[a, b]), whole, "split at {split}");
        }
        whole
    }

    /// The payloads of the frames among `items`.
    pub fn payloads(items: &[Received]) -> Vec<Vec<u8>> {
        items
            .iter()
            .filter_map(|item| match item {
                Received::Frame(f) => Some(f.payload.to_vec()),
                _ => None,
            })
            .collect()
    }

    /// True when `needle` appears in order (not necessarily contiguously) within `hay`.
    pub fn is_subsequence(needle: &[Vec<u8>], hay: &[Vec<u8>]) -> bool {
        let mut it = hay.iter();
        needle.iter().all(|n| it.any(|h| h == n))
    }
}
