//! Writing transcripts: the canonical text of a whole [`Transcript`] (its `Display`) and a
//! streaming [`TranscriptWriter`] for `--record`, which learns peers as they appear. Both write
//! the same line formats, so a recording parses like a hand-written fixture.

use std::fmt;
use std::io;

use super::{Entry, Payload, Peer, PeerKind, Transcript};
use crate::engine::auth::Identity;
use crate::time::{Duration, Instant};

/// Width of the time column: `1234.567` and two spaces.
const TIME_WIDTH: usize = 8;
/// Bytes column width before a comment when nothing better is known (12 bytes).
const DEFAULT_BYTES_WIDTH: usize = 12 * 3 - 1;
/// Frames longer than this (16 bytes) do not push every comment of a file further right.
const MAX_BYTES_WIDTH: usize = 16 * 3 - 1;
/// `name > gw` for a short name, the direction column's minimum width.
const MIN_DIRECTION_WIDTH: usize = 9;

/// Seconds with millisecond precision, as transcripts write times and durations.
fn seconds(millis: u64) -> String {
    Instant::from_millis(millis).to_string()
}

/// Comments are one line: line breaks would start lines the parser reads as something else.
fn one_line(comment: &str) -> String {
    comment.replace(['\r', '\n'], " ").trim().to_string()
}

/// Hex without separators, except the conventional `64-bit:16-bit` split of a 10-octet XBee
/// address.
fn compact_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2 + 1);
    for (i, b) in bytes.iter().enumerate() {
        if bytes.len() == 10 && i == 8 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// The `@peer` line declaring `peer`.
pub(super) fn peer_line(peer: &Peer) -> String {
    let kind = match &peer.kind {
        PeerKind::Udp(addr) => format!("udp {addr}"),
        PeerKind::Dtls(addr) => match &peer.identity {
            Some(Identity::Psk(id)) => format!("dtls {addr} psk {id}"),
            Some(Identity::Certificate(names)) => format!("dtls {addr} cert {}", names.join(",")),
            None => format!("dtls {addr}"),
        },
        PeerKind::Forwarded { via, node_id } => {
            format!("udp {via} via-forwarder {}", compact_hex(node_id))
        }
        PeerKind::Serial { port, radio: None } => format!("serial {port}"),
        PeerKind::Serial {
            port,
            radio: Some(radio),
        } => format!("serial {port} {}", compact_hex(radio)),
        PeerKind::Broker { client: None } => "broker".to_string(),
        PeerKind::Broker {
            client: Some(client),
        } => format!("broker {client}"),
    };
    format!("@peer {} {kind}", peer.name)
}

/// A frame or control line with aligned columns; the bytes column is padded only when a comment
/// follows, so lines never end in spaces.
pub(super) fn entry_line(entry: &Entry, direction_width: usize, bytes_width: usize) -> String {
    let time = entry.at.to_string();
    let direction = entry.direction.to_string();
    let bytes = entry.payload.to_string();
    let mut line = format!("{time:<TIME_WIDTH$}  {direction:<direction_width$}  ");
    match entry.comment.as_deref().map(one_line) {
        Some(comment) if !comment.is_empty() => {
            line.push_str(&format!("{bytes:<bytes_width$}  # {comment}"));
        }
        _ => line.push_str(&bytes),
    }
    line
}

fn config_line(key: &str, value: &str) -> String {
    format!("@config {key} = {value}")
}

fn direction_width_for(name: &str) -> usize {
    // `name > gw` and `gw > name` have the same length.
    name.len() + 5
}

/// Width of the bytes column's text: `02 16` or `!open`.
fn payload_text_width(payload: &Payload) -> usize {
    match payload {
        Payload::Frame(pattern) => (pattern.len() * 3).saturating_sub(1),
        Payload::Control(control) => control.keyword().len() + 1,
    }
}

impl fmt::Display for Transcript {
    /// The canonical text: peers, config, tolerance, a blank line, aligned entries, `@end`. It
    /// parses back to an equal transcript.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for peer in &self.peers {
            writeln!(f, "{}", peer_line(peer))?;
        }
        for (key, value) in &self.config {
            writeln!(f, "{}", config_line(key, value))?;
        }
        if let Some(tolerance) = self.tolerance {
            writeln!(f, "@tolerance {}", seconds(tolerance.as_millis()))?;
        }
        let has_header =
            !self.peers.is_empty() || !self.config.is_empty() || self.tolerance.is_some();
        if has_header && !self.entries.is_empty() {
            writeln!(f)?;
        }
        let direction_width = self
            .entries
            .iter()
            .map(|e| direction_width_for(e.peer()))
            .max()
            .unwrap_or(0)
            .max(MIN_DIRECTION_WIDTH);
        let bytes_width = self
            .entries
            .iter()
            .filter(|e| e.comment.is_some())
            .map(|e| payload_text_width(&e.payload))
            .filter(|&w| w <= MAX_BYTES_WIDTH)
            .max()
            .unwrap_or(0);
        for entry in &self.entries {
            writeln!(f, "{}", entry_line(entry, direction_width, bytes_width))?;
        }
        if let Some(end) = self.end {
            writeln!(f, "@end {end}")?;
        }
        Ok(())
    }
}

/// Writes a transcript as it happens (the gateway's `--record`): declare each peer with
/// [`write_peer`](Self::write_peer) before its first frame, then [`write_entry`](Self::write_entry)
/// per frame or control entry (`gw > brk !open`, ...), in time order. Columns are aligned for the peers declared so far.
///
/// The writer does not buffer; wrap the sink in a `BufWriter` and [`flush`](Self::flush) when
/// appropriate.
#[derive(Debug)]
pub struct TranscriptWriter<W: io::Write> {
    out: W,
    direction_width: usize,
    bytes_width: usize,
}

impl<W: io::Write> TranscriptWriter<W> {
    /// A writer to `out`, with nothing written yet.
    pub fn new(out: W) -> Self {
        TranscriptWriter {
            out,
            direction_width: MIN_DIRECTION_WIDTH,
            bytes_width: DEFAULT_BYTES_WIDTH,
        }
    }

    /// Writes `text` as comment lines (`# ...`), one per line of `text`.
    pub fn write_comment(&mut self, text: &str) -> io::Result<()> {
        for line in text.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                writeln!(self.out, "#")?;
            } else {
                writeln!(self.out, "# {line}")?;
            }
        }
        Ok(())
    }

    /// Declares a peer (`@peer ...`); later frame lines align to the longest name so far.
    pub fn write_peer(&mut self, peer: &Peer) -> io::Result<()> {
        self.direction_width = self.direction_width.max(direction_width_for(&peer.name));
        writeln!(self.out, "{}", peer_line(peer))
    }

    /// Writes `@config key = value` (`value` is raw TOML).
    pub fn write_config(&mut self, key: &str, value: &str) -> io::Result<()> {
        writeln!(self.out, "{}", config_line(key, value))
    }

    /// Writes `@tolerance SECONDS`.
    pub fn write_tolerance(&mut self, tolerance: Duration) -> io::Result<()> {
        writeln!(self.out, "@tolerance {}", seconds(tolerance.as_millis()))
    }

    /// Writes one frame or control line.
    pub fn write_entry(&mut self, entry: &Entry) -> io::Result<()> {
        writeln!(
            self.out,
            "{}",
            entry_line(entry, self.direction_width, self.bytes_width)
        )
    }

    /// Writes `@end SECONDS`.
    pub fn write_end(&mut self, end: Instant) -> io::Result<()> {
        writeln!(self.out, "@end {end}")
    }

    /// Writes an empty line (between the declarations and the frames, say).
    pub fn write_blank_line(&mut self) -> io::Result<()> {
        writeln!(self.out)
    }

    /// Flushes the sink.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The sink.
    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// The sink, mutably (writing to it directly may break the line structure).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// The sink, giving up the writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_lines_are_aligned_and_have_no_trailing_spaces() {
        let e = Entry::input(Instant::from_millis(200), "dev1", &[2, 0x16]);
        assert_eq!(entry_line(&e, 9, 11), "0.200     dev1 > gw  02 16");
        let e = e.with_comment("PINGREQ\nsecond line");
        assert_eq!(
            entry_line(&e, 12, 11),
            "0.200     dev1 > gw     02 16        # PINGREQ second line"
        );
        let c = Entry::output_control(Instant::from_millis(1), "brk", super::super::Control::Close);
        assert_eq!(entry_line(&c, 9, 11), "0.001     gw > brk   !close");
        let c = c.with_comment("flush");
        assert_eq!(
            entry_line(&c, 9, 11),
            "0.001     gw > brk   !close       # flush"
        );
    }

    #[test]
    fn radio_addresses_keep_the_xbee_split() {
        assert_eq!(
            compact_hex(&[0, 0x13, 0xA2, 0, 0x40, 0xA1, 0xB2, 0xC3, 0xFF, 0xFE]),
            "0013A20040A1B2C3:FFFE"
        );
        assert_eq!(compact_hex(&[0, 5]), "0005");
    }
}
