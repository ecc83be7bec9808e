//! SLIP framing (RFC 1055), optionally with a CRC-16 trailer, as radio bridges in the field use.
//!
//! A frame is its payload with END (0xC0) sent as ESC ESC_END (0xDB 0xDC) and ESC (0xDB) as
//! ESC ESC_ESC (0xDB 0xDD), followed by END. The encoder also sends END before each frame, as
//! RFC 1055 recommends, so that line noise received before it ends up in a separate (empty or
//! invalid) frame instead of corrupting this one; the deframer ignores empty frames.
//!
//! With the CRC enabled, the two octets before the END are a CRC-16/CCITT-FALSE of the payload
//! (width 16, polynomial 0x1021, initial value 0xFFFF, input and output not reflected, no final
//! XOR; check value 0x29B1 for "123456789"), sent big-endian and escaped like the payload.
//!
//! Errors drop one frame and the deframer resynchronises at the next END: a bad CRC
//! ([`DropReason::BadCrc`]), an ESC followed by anything other than ESC_END or ESC_ESC
//! ([`DropReason::BadEscape`]; RFC 1055's sample code passes such bytes through, but on a serial
//! line they mean corruption), a frame longer than the maximum ([`DropReason::Oversize`]), and,
//! with the CRC enabled, a frame too short to hold a CRC and a payload octet
//! ([`DropReason::Garbage`]).

use super::{
    Deframer, DropReason, EncodeError, Encoder, RadioAddr, Received, RxFrame, DEFAULT_MAX_FRAME_LEN,
};
use bytes::{Buf, Bytes, BytesMut};

/// Frame delimiter.
pub const END: u8 = 0xC0;
/// Escape octet.
pub const ESC: u8 = 0xDB;
/// ESC ESC_END stands for a payload END.
pub const ESC_END: u8 = 0xDC;
/// ESC ESC_ESC stands for a payload ESC.
pub const ESC_ESC: u8 = 0xDD;

/// Octets of the CRC trailer.
const CRC_LEN: usize = 2;

/// Lookup table for [`crc16`], one entry per value of the octet shifted in.
const CRC_TABLE: [u16; 256] = crc_table();

const fn crc_table() -> [u16; 256] {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

/// CRC-16/CCITT-FALSE of `data`: polynomial 0x1021, initial value 0xFFFF, no reflection, no
/// final XOR (`crc16(b"123456789") == 0x29B1`).
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0xFFFF, |crc, &b| {
        (crc << 8) ^ CRC_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

/// The SLIP codec. Clone it to use the deframer and the encoder from separate tasks.
#[derive(Debug, Clone)]
pub struct SlipCodec {
    crc: bool,
    max_len: usize,
    /// Bytes pushed and not yet examined; `next` consumes all it examines.
    input: BytesMut,
    /// Decoded octets of the frame in progress (payload, then CRC); never longer than
    /// `max_len` plus the CRC.
    frame: Vec<u8>,
    /// The previous octet was ESC.
    escaped: bool,
    /// The frame in progress was dropped: skip to the next END.
    discarding: bool,
}

impl SlipCodec {
    /// A codec with or without the CRC-16 trailer, accepting payloads up to
    /// [`DEFAULT_MAX_FRAME_LEN`] octets.
    pub fn new(crc: bool) -> Self {
        SlipCodec {
            crc,
            max_len: DEFAULT_MAX_FRAME_LEN,
            input: BytesMut::new(),
            frame: Vec::new(),
            escaped: false,
            discarding: false,
        }
    }

    /// Sets the largest payload, in octets (CRC excluded), the deframer accepts and the encoder
    /// sends (at least 1).
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(1);
        self
    }

    /// The largest payload accepted, in octets.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Whether frames carry the CRC-16 trailer.
    pub fn crc(&self) -> bool {
        self.crc
    }

    fn crc_len(&self) -> usize {
        if self.crc {
            CRC_LEN
        } else {
            0
        }
    }
}

/// Turns the decoded octets of a frame that just ended into an item (`None` for an empty frame)
/// and clears them.
fn finish(frame: &mut Vec<u8>, crc: bool) -> Option<Received> {
    let n = frame.len();
    if n == 0 {
        // Back-to-back ENDs: the flush END before a frame, or a line idle between frames.
        return None;
    }
    let item = if !crc {
        frame_item(frame)
    } else if n <= CRC_LEN {
        Received::Dropped(DropReason::Garbage { bytes: n })
    } else {
        let (payload, trailer) = frame.split_at(n - CRC_LEN);
        if crc16(payload).to_be_bytes() == trailer {
            frame_item(payload)
        } else {
            Received::Dropped(DropReason::BadCrc)
        }
    };
    frame.clear();
    Some(item)
}

fn frame_item(payload: &[u8]) -> Received {
    Received::Frame(RxFrame {
        source: None,
        payload: Bytes::copy_from_slice(payload),
    })
}

impl Deframer for SlipCodec {
    fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Option<Received> {
        let limit = self.max_len + self.crc_len();
        let SlipCodec {
            crc,
            input,
            frame,
            escaped,
            discarding,
            ..
        } = self;
        let mut i = 0;
        let item = loop {
            let Some(&b) = input.get(i) else {
                break None;
            };
            if *discarding {
                match input[i..].iter().position(|&b| b == END) {
                    Some(at) => {
                        i += at + 1;
                        *discarding = false;
                        continue;
                    }
                    None => {
                        i = input.len();
                        break None;
                    }
                }
            }
            if *escaped {
                i += 1;
                *escaped = false;
                let decoded = match b {
                    ESC_END => END,
                    ESC_ESC => ESC,
                    _ => {
                        frame.clear();
                        // An END right after ESC still ends the frame: resynchronise on it
                        // rather than skipping the frame that follows.
                        *discarding = b != END;
                        break Some(Received::Dropped(DropReason::BadEscape));
                    }
                };
                if frame.len() == limit {
                    frame.clear();
                    *discarding = true;
                    break Some(Received::Dropped(DropReason::Oversize { len: limit + 1 }));
                }
                frame.push(decoded);
                continue;
            }
            // Copy runs of ordinary octets at once instead of byte by byte.
            let rest = &input[i..];
            let run = rest
                .iter()
                .position(|&b| b == END || b == ESC)
                .unwrap_or(rest.len());
            if run > 0 {
                let room = limit - frame.len();
                if run > room {
                    // Give up at the first octet beyond the limit, wherever reads split.
                    i += room + 1;
                    frame.clear();
                    *discarding = true;
                    break Some(Received::Dropped(DropReason::Oversize { len: limit + 1 }));
                }
                frame.extend_from_slice(&rest[..run]);
                i += run;
                continue;
            }
            i += 1;
            if b == ESC {
                *escaped = true;
            } else if let Some(item) = finish(frame, *crc) {
                break Some(item);
            }
        };
        input.advance(i);
        item
    }

    fn buffered(&self) -> usize {
        self.input.len() + self.frame.len()
    }

    /// `max_len` plus the CRC: `next` consumes all pushed bytes before returning `None`, and
    /// keeps only the decoded octets of the frame in progress.
    fn buffer_cap(&self) -> usize {
        self.max_len + self.crc_len()
    }
}

/// Appends `data` to `out` with END and ESC escaped.
fn put_escaped(data: &[u8], out: &mut BytesMut) {
    let mut rest = data;
    while let Some(at) = rest.iter().position(|&b| b == END || b == ESC) {
        out.extend_from_slice(&rest[..at]);
        let code = if rest[at] == END { ESC_END } else { ESC_ESC };
        out.extend_from_slice(&[ESC, code]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

impl Encoder for SlipCodec {
    /// Appends END, the escaped payload and CRC, and END. `to` is ignored.
    fn encode(
        &mut self,
        payload: &[u8],
        _to: Option<RadioAddr>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        super::check_payload(payload, self.max_len)?;
        // Worst case: every octet escaped, plus the two ENDs.
        out.reserve(2 * (payload.len() + self.crc_len()) + 2);
        out.extend_from_slice(&[END]);
        put_escaped(payload, out);
        if self.crc {
            put_escaped(&crc16(payload).to_be_bytes(), out);
        }
        out.extend_from_slice(&[END]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{
        feed, feed_all_splits, feed_chunks, is_subsequence, payloads,
    };
    use super::*;
    use proptest::prelude::*;

    fn frame(bytes: &[u8]) -> Received {
        Received::Frame(RxFrame {
            source: None,
            payload: Bytes::copy_from_slice(bytes),
        })
    }

    fn dropped(reason: DropReason) -> Received {
        Received::Dropped(reason)
    }

    fn encode(codec: &mut SlipCodec, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        codec.encode(payload, None, &mut out).unwrap();
        out.to_vec()
    }

    /// The CRC computed bit by bit from its definition, to check the table.
    fn crc16_bitwise(data: &[u8]) -> u16 {
        let mut crc: u16 = 0xFFFF;
        for &b in data {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn crc_check_values() {
        // The catalogue check value of CRC-16/CCITT-FALSE.
        assert_eq!(crc16(b"123456789"), 0x29B1);
        assert_eq!(crc16_bitwise(b"123456789"), 0x29B1);
        // No octets: the initial value, as there is no final XOR.
        assert_eq!(crc16(b""), 0xFFFF);
        assert_eq!(crc16(&[0x02, 0x16]), 0x099A);
        assert_eq!(crc16(&[0x05, 0x0C, 0xC0, 0xDB, 0x91]), 0x01DB);
    }

    /// PINGREQ `02 16`; its CRC is 0x099A.
    const PINGREQ_CRC: &[u8] = &[0xC0, 0x02, 0x16, 0x09, 0x9A, 0xC0];
    /// `05 0C C0 DB 91`, whose CRC 0x01DB ends in ESC: C0 -> DB DC, DB -> DB DD in the payload
    /// and in the CRC.
    const ESCAPED_CRC: &[u8] = &[
        0xC0, 0x05, 0x0C, 0xDB, 0xDC, 0xDB, 0xDD, 0x91, 0x01, 0xDB, 0xDD, 0xC0,
    ];

    #[test]
    fn encodes_known_frames() {
        let mut c = SlipCodec::new(true);
        assert_eq!(encode(&mut c, &[0x02, 0x16]), PINGREQ_CRC);
        assert_eq!(encode(&mut c, &[0x05, 0x0C, 0xC0, 0xDB, 0x91]), ESCAPED_CRC);
        let mut c = SlipCodec::new(false);
        assert_eq!(encode(&mut c, &[0x02, 0x16]), [0xC0, 0x02, 0x16, 0xC0]);
        assert_eq!(
            encode(&mut c, &[0xC0, 0xDB, 0xDC, 0xDD]),
            [0xC0, 0xDB, 0xDC, 0xDB, 0xDD, 0xDC, 0xDD, 0xC0]
        );
    }

    #[test]
    fn decodes_known_frames_at_every_split() {
        let stream = [PINGREQ_CRC, ESCAPED_CRC, PINGREQ_CRC].concat();
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![
                frame(&[0x02, 0x16]),
                frame(&[0x05, 0x0C, 0xC0, 0xDB, 0x91]),
                frame(&[0x02, 0x16])
            ]
        );
        // Without the CRC the trailer is part of the payload.
        assert_eq!(
            feed_all_splits(&SlipCodec::new(false), ESCAPED_CRC),
            vec![frame(&[0x05, 0x0C, 0xC0, 0xDB, 0x91, 0x01, 0xDB])]
        );
    }

    #[test]
    fn empty_frames_are_ignored_and_a_missing_leading_end_is_fine() {
        let stream = [&[0xC0, 0xC0, 0xC0][..], &PINGREQ_CRC[1..], &[0xC0, 0xC0]].concat();
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![frame(&[0x02, 0x16])]
        );
    }

    #[test]
    fn bad_crc_drops_one_frame() {
        let mut bad = PINGREQ_CRC.to_vec();
        bad[2] = 0x17;
        let stream = [&bad[..], PINGREQ_CRC].concat();
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![dropped(DropReason::BadCrc), frame(&[0x02, 0x16])]
        );
    }

    #[test]
    fn garbage_before_between_and_inside_frames() {
        let noise: &[u8] = &[0x13, 0x37, 0x42, 0x99];
        // Noise before the first END (a partial frame at start-up), noise between two frames,
        // and noise inside a frame (after its first payload octet).
        let mut corrupted = PINGREQ_CRC.to_vec();
        corrupted.splice(2..2, noise.iter().copied());
        let stream = [
            noise,
            PINGREQ_CRC,
            noise,
            ESCAPED_CRC,
            &corrupted,
            PINGREQ_CRC,
        ]
        .concat();
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![
                dropped(DropReason::BadCrc),
                frame(&[0x02, 0x16]),
                dropped(DropReason::BadCrc),
                frame(&[0x05, 0x0C, 0xC0, 0xDB, 0x91]),
                dropped(DropReason::BadCrc),
                frame(&[0x02, 0x16]),
            ]
        );
    }

    #[test]
    fn runts_are_garbage_with_crc_and_frames_without() {
        let stream = [0xC0, 0x41, 0xC0, 0x41, 0x42, 0xC0];
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![
                dropped(DropReason::Garbage { bytes: 1 }),
                dropped(DropReason::Garbage { bytes: 2 })
            ]
        );
        assert_eq!(
            feed_all_splits(&SlipCodec::new(false), &stream),
            vec![frame(&[0x41]), frame(&[0x41, 0x42])]
        );
    }

    #[test]
    fn invalid_escapes_drop_the_frame() {
        // ESC 0x41 inside a frame: the rest of it up to END is skipped.
        let stream = [
            &[0xC0, 0x02, 0xDB, 0x41, 0x16, 0x09, 0x9A, 0xC0][..],
            PINGREQ_CRC,
        ]
        .concat();
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![dropped(DropReason::BadEscape), frame(&[0x02, 0x16])]
        );
        // ESC END: the END still delimits, so the frame right after it (without a leading END)
        // is kept.
        let stream = [&[0xC0, 0x02, 0xDB][..], PINGREQ_CRC].concat();
        assert_eq!(
            feed_all_splits(&SlipCodec::new(true), &stream),
            vec![dropped(DropReason::BadEscape), frame(&[0x02, 0x16])]
        );
    }

    #[test]
    fn oversize_frames_are_dropped_and_the_next_end_resynchronises() {
        let codec = SlipCodec::new(true).with_max_len(4);
        let mut big = SlipCodec::new(true);
        let long = encode(&mut big, &[0x11; 10]);
        // An escaped octet crossing the limit, too: 4 payload + 2 CRC octets fit, the 7th fails.
        let long_escaped = encode(&mut big, &[0xC0; 10]);
        let stream = [&long[..], PINGREQ_CRC, &long_escaped, PINGREQ_CRC].concat();
        assert_eq!(
            feed_all_splits(&codec, &stream),
            vec![
                dropped(DropReason::Oversize { len: 7 }),
                frame(&[0x02, 0x16]),
                dropped(DropReason::Oversize { len: 7 }),
                frame(&[0x02, 0x16]),
            ]
        );
        // A line that never sends END is reported once and then skipped without buffering.
        let mut d = codec.clone();
        let items = feed_chunks(&mut d, &[&[0x55; 100], &[0x55; 100]]);
        assert_eq!(items, vec![dropped(DropReason::Oversize { len: 7 })]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn encode_errors() {
        let mut c = SlipCodec::new(true).with_max_len(4);
        let mut out = BytesMut::new();
        assert_eq!(c.encode(&[], None, &mut out), Err(EncodeError::Empty));
        assert_eq!(
            c.encode(&[0; 5], None, &mut out),
            Err(EncodeError::TooLong { len: 5, max: 4 })
        );
        assert!(out.is_empty());
        c.encode(&[0; 4], None, &mut out).unwrap();
    }

    proptest! {
        #[test]
        fn crc_table_matches_the_definition(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(crc16(&data), crc16_bitwise(&data));
        }

        #[test]
        fn encode_then_deframe_round_trips(
            frames in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(END), Just(ESC), Just(ESC_END), Just(ESC_ESC), any::<u8>()],
                    1..100,
                ),
                0..8,
            ),
            crc in any::<bool>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut c = SlipCodec::new(crc).with_max_len(100);
            let mut out = BytesMut::new();
            for f in &frames {
                c.encode(f, None, &mut out).unwrap();
            }
            let at = cut.index(out.len() + 1);
            let items = feed_chunks(&mut c.clone(), &[&out[..at], &out[at..]]);
            prop_assert!(items.iter().all(|i| matches!(i, Received::Frame(_))));
            prop_assert_eq!(payloads(&items), frames);
        }

        #[test]
        fn frames_survive_garbage_between_them(
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 1..6),
            noise in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(END), Just(ESC), any::<u8>()],
                    0..30,
                ),
                6,
            ),
        ) {
            let mut c = SlipCodec::new(true);
            let mut stream = BytesMut::new();
            for (f, n) in frames.iter().zip(&noise) {
                stream.extend_from_slice(n);
                c.encode(f, None, &mut stream).unwrap();
            }
            let items = feed(SlipCodec::new(true), &stream);
            // Noise may, very rarely, pass for a frame with a valid CRC; the frames sent are
            // all there, in order.
            prop_assert!(is_subsequence(&frames, &payloads(&items)));
        }

        #[test]
        fn random_streams_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![Just(END), Just(ESC), Just(ESC_END), any::<u8>()],
                    0..200,
                ),
                0..20,
            ),
            crc in any::<bool>(),
            max_len in 0usize..64,
        ) {
            let mut d = SlipCodec::new(crc).with_max_len(max_len);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            // feed_chunks asserts the buffer cap after every push.
            for item in feed_chunks(&mut d, &refs) {
                if let Received::Frame(f) = item {
                    prop_assert!(!f.payload.is_empty() && f.payload.len() <= d.max_len());
                }
            }
        }
    }
}
