//! The measurement header at the start of every payload: when it was sent, by (or for) whom,
//! and its sequence number. The rest of the payload is zero padding up to `--payload` bytes.

/// Bytes of header: send time (8), device or client index (4), sequence number (4).
pub const HEADER: usize = 16;

/// The device index of messages a downstream publisher sends to the shared (fan-out) topic.
pub const SHARED: u32 = u32::MAX;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Nanoseconds since the process clock base when the message was created.
    pub sent_ns: u64,
    /// The sending device or client (upstream), or the target device (downstream).
    pub device: u32,
    /// Per device sequence number, from 0.
    pub seq: u32,
}

/// Writes the header into the first [`HEADER`] bytes of `buf` (which must be that long).
pub fn write(buf: &mut [u8], stamp: Stamp) {
    buf[0..8].copy_from_slice(&stamp.sent_ns.to_be_bytes());
    buf[8..12].copy_from_slice(&stamp.device.to_be_bytes());
    buf[12..16].copy_from_slice(&stamp.seq.to_be_bytes());
}

/// Reads the header; `None` if the payload is too short to carry one.
pub fn read(buf: &[u8]) -> Option<Stamp> {
    let head: &[u8; HEADER] = buf.get(..HEADER)?.try_into().ok()?;
    let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = *head;
    Some(Stamp {
        sent_ns: u64::from_be_bytes([a, b, c, d, e, f, g, h]),
        device: u32::from_be_bytes([i, j, k, l]),
        seq: u32::from_be_bytes([m, n, o, p]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 20];
        let s = Stamp {
            sent_ns: 0x0102_0304_0506_0708,
            device: 77,
            seq: 9,
        };
        write(&mut buf, s);
        assert_eq!(read(&buf), Some(s));
        assert_eq!(read(&buf[..15]), None);
    }
}
