//! Raw framing: MQTT-SN frames back to back, delimited only by their own Length field, as the
//! mqtt-sn-tools serial bridge sends them.
//!
//! There is no checksum and no delimiter, so after line noise the deframer can only guess where
//! the next frame starts: it discards one byte at a time until the bytes at the front look like a
//! frame header (a valid Length for its form, a defined MsgType, a length within the maximum),
//! and reports each run of discarded bytes once as
//! [`DropReason::Garbage`](super::DropReason::Garbage). A corrupted length
//! that still looks plausible swallows the frames after it; that is the price of this framing,
//! and why SLIP with a CRC or XBee API frames are preferable on noisy lines.
//!
//! A forwarder-encapsulated frame (§5.5, MsgType 0xFE) is one frame: its Length covers only the
//! encapsulation header, so its size is that header plus the Length of the message inside.

use super::{
    Deframer, EncodeError, Encoder, GarbageRun, RadioAddr, Received, RxFrame, DEFAULT_MAX_FRAME_LEN,
};
use crate::codec::wire;
use crate::codec::MsgType;
use bytes::{Buf, Bytes, BytesMut};

/// The smallest maximum frame length accepted: a long-form header with its MsgType is 4 octets,
/// and a smaller limit would leave headers undecidable within the buffer cap.
const MIN_MAX_LEN: usize = 4;
/// Smallest encapsulation header: Len, 0xFE, Ctrl (the wireless node id may be empty).
const MIN_ENCAP_HEADER: usize = 3;
/// Smallest message: Length and MsgType.
const MIN_MESSAGE: usize = 2;

/// The raw framing codec. Clone it to use the deframer and the encoder from separate tasks.
#[derive(Debug, Clone)]
pub struct RawCodec {
    max_len: usize,
    /// Unconsumed bytes; always starts at the next byte to examine.
    input: BytesMut,
    garbage: GarbageRun,
}

impl Default for RawCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl RawCodec {
    /// A codec accepting frames up to [`DEFAULT_MAX_FRAME_LEN`] octets.
    pub fn new() -> Self {
        RawCodec {
            max_len: DEFAULT_MAX_FRAME_LEN,
            input: BytesMut::new(),
            garbage: GarbageRun::default(),
        }
    }

    /// Sets the largest frame, in octets, the deframer accepts and the encoder sends (at least
    /// 4; smaller values are raised to 4).
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = max_len.max(MIN_MAX_LEN);
        self
    }

    /// The largest frame accepted, in octets.
    pub fn max_len(&self) -> usize {
        self.max_len
    }
}

/// What the bytes at the front of the buffer are.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// Cannot tell yet.
    NeedMore,
    /// Not the start of a frame.
    Invalid,
    /// A frame of this many octets starts here.
    Frame(usize),
}

/// A plain message header: total length and type, as far as the bytes present tell.
fn message_header(buf: &[u8]) -> Result<(usize, MsgType), Header> {
    let len = match wire::peek_length(buf) {
        Ok(Some(len)) => len,
        Ok(None) => return Err(Header::NeedMore),
        Err(_) => return Err(Header::Invalid),
    };
    let Some(&code) = buf.get(len.field_len) else {
        return Err(Header::NeedMore);
    };
    match MsgType::from_u8(code) {
        Some(msg_type) => Ok((len.total, msg_type)),
        None => Err(Header::Invalid),
    }
}

/// Decides whether a frame of at most `max` octets starts at the front of `buf`. The verdict
/// depends only on the bytes, never on how many are present beyond what it needs, so the
/// deframer's output does not depend on how the stream was split.
fn frame_len(buf: &[u8], max: usize) -> Header {
    // The length is checked against the maximum as soon as it is known, before the type octet,
    // so that a huge length is rejected without waiting for more bytes.
    match wire::peek_length(buf) {
        Ok(Some(len)) if len.total > max => return Header::Invalid,
        Ok(_) => {}
        Err(_) => return Header::Invalid,
    }
    let (total, msg_type) = match message_header(buf) {
        Ok(header) => header,
        Err(verdict) => return verdict,
    };
    if msg_type != MsgType::Encapsulated {
        return Header::Frame(total);
    }
    // Only the 1-octet form introduces an encapsulation (a 0x01 Length octet announces the
    // 3-octet form); the header needs Len, 0xFE and Ctrl, and room for a message after it.
    if buf[0] == 0x01 || total < MIN_ENCAP_HEADER || total + MIN_MESSAGE > max {
        return Header::Invalid;
    }
    let inner = buf.get(total..).unwrap_or(&[]);
    match wire::peek_length(inner) {
        Ok(Some(len)) if total + len.total > max => return Header::Invalid,
        Ok(_) => {}
        Err(_) => return Header::Invalid,
    }
    match message_header(inner) {
        // Forwarders do not nest encapsulations.
        Ok((_, MsgType::Encapsulated)) => Header::Invalid,
        Ok((inner_total, _)) => Header::Frame(total + inner_total),
        Err(verdict) => verdict,
    }
}

impl Deframer for RawCodec {
    fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Option<Received> {
        if let Some(item) = self.garbage.ready() {
            return Some(item);
        }
        loop {
            match frame_len(&self.input, self.max_len) {
                Header::NeedMore => return None,
                Header::Invalid => {
                    self.input.advance(1);
                    self.garbage.add(1);
                    if let Some(item) = self.garbage.ready() {
                        return Some(item);
                    }
                }
                Header::Frame(total) => {
                    if self.input.len() < total {
                        return None;
                    }
                    // A copy rather than `split_to`: the frame may outlive the read buffer (sleep
                    // buffers), and an unshared buffer can be compacted in place by `reserve`.
                    let payload = Bytes::copy_from_slice(&self.input[..total]);
                    self.input.advance(total);
                    let frame = Received::Frame(RxFrame {
                        source: None,
                        payload,
                    });
                    return Some(self.garbage.emit(frame));
                }
            }
        }
    }

    fn buffered(&self) -> usize {
        self.input.len()
    }

    /// `max_len + 1`: the deframer waits either for the rest of a frame (shorter than the
    /// maximum) or for the inner header of an encapsulated frame, whose header is at most
    /// `max_len - 2` octets and whose inner Length and MsgType take at most 4 more.
    fn buffer_cap(&self) -> usize {
        self.max_len + 1
    }
}

impl Encoder for RawCodec {
    /// Appends the frame as is, after checking that a receiver will find exactly this frame.
    fn encode(
        &mut self,
        payload: &[u8],
        _to: Option<RadioAddr>,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        super::check_payload(payload, self.max_len)?;
        if frame_len(payload, self.max_len) != Header::Frame(payload.len()) {
            return Err(EncodeError::NotAFrame);
        }
        out.extend_from_slice(payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{feed, feed_all_splits, feed_chunks, payloads};
    use super::super::{DropReason, GARBAGE_REPORT_LIMIT};
    use super::*;
    use proptest::prelude::*;

    fn garbage(bytes: usize) -> Received {
        Received::Dropped(DropReason::Garbage { bytes })
    }

    fn frame(bytes: &[u8]) -> Received {
        Received::Frame(RxFrame {
            source: None,
            payload: Bytes::copy_from_slice(bytes),
        })
    }

    const PINGREQ: &[u8] = &[0x02, 0x16];
    /// PUBLISH, flags 0, topic id 1, msg id 0, data "hi": 2 + 5 + 2 = 9 octets.
    const PUBLISH: &[u8] = &[0x09, 0x0C, 0x00, 0x00, 0x01, 0x00, 0x00, 0x68, 0x69];
    /// Encapsulation header Len 5 (Len, FE, Ctrl 01, node id AB CD), then PINGREQ.
    const ENCAP: &[u8] = &[0x05, 0xFE, 0x01, 0xAB, 0xCD, 0x02, 0x16];

    /// A long-form PUBLISH of `total` octets (`total` > 255).
    fn long_publish(total: usize) -> Vec<u8> {
        let mut f = vec![0x01];
        f.extend_from_slice(&(total as u16).to_be_bytes());
        f.extend_from_slice(&[0x0C, 0x00, 0x00, 0x01, 0x00, 0x00]);
        f.resize(total, 0xA5);
        f
    }

    #[test]
    fn frames_back_to_back_at_every_split() {
        let long = long_publish(300);
        let stream = [PINGREQ, PUBLISH, ENCAP, &long, PINGREQ].concat();
        let items = feed_all_splits(&RawCodec::new(), &stream);
        assert_eq!(
            items,
            vec![
                frame(PINGREQ),
                frame(PUBLISH),
                frame(ENCAP),
                frame(&long),
                frame(PINGREQ)
            ]
        );
    }

    #[test]
    fn garbage_before_and_between_frames_is_reported_once_per_run() {
        // With a 64-octet maximum: 00 is length 0; 07 03 has the reserved type 0x03; 03 FF the
        // reserved type 0xFF; FF 00 declares 255 octets; 00 again. The noise must end on a byte
        // that cannot start a frame, or it would swallow the frame after it: raw framing
        // cannot tell noise that looks like a header from a header.
        let noise = [0x00, 0x07, 0x03, 0xFF, 0x00];
        let stream = [&noise[..], PINGREQ, &noise, &noise, PUBLISH].concat();
        let items = feed_all_splits(&RawCodec::new().with_max_len(64), &stream);
        assert_eq!(
            items,
            vec![garbage(5), frame(PINGREQ), garbage(10), frame(PUBLISH)]
        );
    }

    #[test]
    fn a_frame_with_a_corrupted_type_is_skipped() {
        // A frame `04 1F 80 00` whose type octet became the reserved 0x1F. With a 64-octet
        // maximum: 04 1F is invalid, 1F 80 has the reserved type 0x80, 80 00 declares 128
        // octets, 00 is length 0; PINGREQ after it is recovered.
        let stream = [&[0x04, 0x1F, 0x80, 0x00][..], PINGREQ].concat();
        let items = feed_all_splits(&RawCodec::new().with_max_len(64), &stream);
        assert_eq!(items, vec![garbage(4), frame(PINGREQ)]);
    }

    #[test]
    fn lengths_below_the_minimum_are_garbage() {
        // 01 00 02: long form declaring 2 octets, below its 4-octet minimum; then 00 (length 0),
        // and `02 16` is a frame.
        let items = feed_all_splits(&RawCodec::new(), &[0x01, 0x00, 0x02, 0x16]);
        assert_eq!(items, vec![garbage(2), frame(PINGREQ)]);
    }

    #[test]
    fn oversize_lengths_are_garbage() {
        let codec = RawCodec::new().with_max_len(64);
        // 01 FF 00: 65280 octets; FF 00: 255 octets; both above 64. 00, 00, 00: length 0.
        let stream = [&[0x01, 0xFF, 0x00, 0x00, 0x00][..], PINGREQ].concat();
        assert_eq!(
            feed_all_splits(&codec, &stream),
            vec![garbage(5), frame(PINGREQ)]
        );
        // C8 00: 200 octets (type ADVERTISE) above 64.
        let stream = [&[0xC8, 0x00][..], PINGREQ].concat();
        assert_eq!(
            feed_all_splits(&codec, &stream),
            vec![garbage(2), frame(PINGREQ)]
        );
    }

    #[test]
    fn bad_encapsulations_are_garbage() {
        let codec = RawCodec::new().with_max_len(64);
        // 03 FE 01 | 02 FE: a nested encapsulation. Then FE 01 (254 octets), 01 02 FE (766
        // octets), 02 FE (an encapsulation header shorter than 3), FE 00 (254), 00, 00.
        let stream = [&[0x03, 0xFE, 0x01, 0x02, 0xFE, 0x00, 0x00][..], PINGREQ].concat();
        assert_eq!(
            feed_all_splits(&codec, &stream),
            vec![garbage(7), frame(PINGREQ)]
        );
        // An encapsulation whose inner message has a reserved type: 03 FE 00 | 02 03.
        let stream = [&[0x03, 0xFE, 0x00, 0x02, 0x03][..], PINGREQ].concat();
        // 03 FE 00 02 03: inner type 0x03 reserved; FE 00 (254 > 64); 00; 02 03 reserved; 03 02
        // then 16: `03 02 16` is a GWINFO-typed frame of 3 octets. Raw framing cannot tell.
        assert_eq!(
            feed_all_splits(&codec, &stream),
            vec![garbage(4), frame(&[0x03, 0x02, 0x16])]
        );
    }

    #[test]
    fn a_long_run_of_garbage_is_reported_in_pieces() {
        let stream = [&vec![0u8; 2 * GARBAGE_REPORT_LIMIT + 5][..], PINGREQ].concat();
        let items = feed_all_splits(&RawCodec::new(), &stream);
        assert_eq!(
            items,
            vec![
                garbage(GARBAGE_REPORT_LIMIT),
                garbage(GARBAGE_REPORT_LIMIT),
                garbage(5),
                frame(PINGREQ)
            ]
        );
    }

    #[test]
    fn incomplete_frames_wait() {
        let mut d = RawCodec::new();
        assert!(feed_chunks(&mut d, &[&PUBLISH[..5]]).is_empty());
        assert_eq!(d.buffered(), 5);
        assert_eq!(feed_chunks(&mut d, &[&PUBLISH[5..]]), vec![frame(PUBLISH)]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn encode_checks_the_frame() {
        let mut c = RawCodec::new().with_max_len(64);
        let mut out = BytesMut::new();
        c.encode(PUBLISH, None, &mut out).unwrap();
        c.encode(ENCAP, Some(RadioAddr::BROADCAST), &mut out)
            .unwrap();
        assert_eq!(&out[..], [PUBLISH, ENCAP].concat());
        let before = out.clone();
        assert_eq!(c.encode(&[], None, &mut out), Err(EncodeError::Empty));
        assert_eq!(
            c.encode(&PUBLISH[..8], None, &mut out),
            Err(EncodeError::NotAFrame)
        );
        assert_eq!(
            c.encode(&[0x02, 0x03], None, &mut out),
            Err(EncodeError::NotAFrame)
        );
        assert_eq!(
            c.encode(&long_publish(300), None, &mut out),
            Err(EncodeError::TooLong { len: 300, max: 64 })
        );
        assert_eq!(out, before);
    }

    /// A valid MQTT-SN frame: a defined type, a random body, both Length forms, sometimes
    /// encapsulated.
    fn mqttsn_frame() -> impl Strategy<Value = Vec<u8>> {
        let types: Vec<u8> = (0..=0xFDu8)
            .filter(|&t| MsgType::from_u8(t).is_some())
            .collect();
        (
            proptest::sample::select(types),
            proptest::collection::vec(any::<u8>(), 0..400),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        )
            .prop_map(|(msg_type, body, node_id)| {
                let total = wire::total_len(body.len());
                let mut f = Vec::with_capacity(total + 12);
                if let Some(id) = node_id {
                    f.push((MIN_ENCAP_HEADER + id.len()) as u8);
                    f.push(0xFE);
                    f.push(0x01);
                    f.extend_from_slice(&id);
                }
                if total <= wire::MAX_SHORT_LENGTH {
                    f.push(total as u8);
                } else {
                    f.push(0x01);
                    f.extend_from_slice(&(total as u16).to_be_bytes());
                }
                f.push(msg_type);
                f.extend_from_slice(&body);
                f
            })
    }

    proptest! {
        #[test]
        fn encode_then_deframe_round_trips(
            frames in proptest::collection::vec(mqttsn_frame(), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut c = RawCodec::new();
            let mut out = BytesMut::new();
            for f in &frames {
                c.encode(f, None, &mut out).unwrap();
            }
            let at = cut.index(out.len() + 1);
            let items = feed_chunks(&mut RawCodec::new(), &[&out[..at], &out[at..]]);
            prop_assert!(items.iter().all(|i| matches!(i, Received::Frame(_))));
            prop_assert_eq!(payloads(&items), frames);
        }

        #[test]
        fn random_streams_never_panic_and_stay_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
            max_len in 0usize..300,
        ) {
            let mut d = RawCodec::new().with_max_len(max_len);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            // feed_chunks asserts the buffer cap after every push.
            let items = feed_chunks(&mut d, &refs);
            for item in items {
                if let Received::Frame(f) = item {
                    prop_assert!(f.payload.len() <= d.max_len());
                }
            }
        }

        #[test]
        fn frames_after_zero_garbage_are_recovered(
            frames in proptest::collection::vec(mqttsn_frame(), 1..5),
            noise in 1usize..40,
        ) {
            // Zero octets are never a frame start (length 0), so each run is skipped whole.
            let mut stream = Vec::new();
            for f in &frames {
                stream.extend(std::iter::repeat_n(0u8, noise));
                stream.extend_from_slice(f);
            }
            let items = feed(RawCodec::new(), &stream);
            prop_assert_eq!(payloads(&items), frames);
            for item in &items {
                match item {
                    Received::Frame(_) => {}
                    other => prop_assert_eq!(other, &garbage(noise)),
                }
            }
        }
    }
}
