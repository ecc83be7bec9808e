//! Transcripts (`.snlog`): timestamped frames between the gateway and named peers, and the life
//! cycle of the gateway's upstream broker connections, as text that people read and diff, that
//! the gateway writes while it runs (`--record`), and that tests replay on virtual time
//! ([`replay`]).
//!
//! This module owns the format only: the data model, the parser ([`Transcript::parse`]), the
//! writers ([`Transcript`]'s `Display` and the streaming [`TranscriptWriter`]) and the replay
//! harness. It knows nothing about MQTT-SN or MQTT beyond bytes; the engine plugs in through
//! [`replay::Replayable`].
//!
//! # Format
//! ```text
//! # a comment line
//! @peer dev1 udp 10.0.0.7:50000
//! @peer dev2 udp [fd00::7]:40000
//! @peer node1 serial /dev/ttyUSB0 0013A20040A1B2C3:FFFE   # with the radio source address
//! @peer n5 udp 10.0.0.9:1884 via-forwarder 0005           # node 0005 behind a forwarder
//! @peer brk broker                                        # the shared upstream connection
//! @peer brk-dev1 broker dev1                              # dev1's own upstream connection
//! @config gateway.mode = "transparent"
//! @tolerance 0.100
//! 0.000    gw > brk     !open                     # the gateway asks for a connection
//! 0.000    dev1 > gw    08 04 04 01 00 3C 73 31   # CONNECT "s1" keep-alive 60
//! 0.000    gw > dev1    03 05 00                  # CONNACK accepted
//! 0.020    brk > gw     !up                       # the driver reports it up
//! 0.020    gw > brk     10 0E 00 04 4D 51 54 54 04 02 00 3C 00 02 67 77   # MQTT CONNECT
//! 12.000   gw > dev1    07 0B ?? ?? 00 01 00      # a byte that may vary
//! 20.000   brk > gw     !down                     # the connection dropped
//! @end 30.000
//! ```
//!
//! Line by line (blank lines are ignored; `#` starts a comment everywhere except inside a TOML
//! string of `@config`):
//!
//! - **`# text`**: a comment. Full-line comments are not part of the data model (the writer does
//!   not reproduce them; blessing a file keeps them).
//! - **`@peer NAME KIND`** declares a peer before its first use. `NAME` is an ASCII letter
//!   followed by letters, digits, `_`, `.` or `-`; `gw` is reserved for the gateway. Names and
//!   addresses are unique. `KIND` is one of
//!   - `udp ADDR`: a device at a UDP socket address (`10.0.0.7:50000`, `[fd00::7]:40000`);
//!     broadcast and multicast destinations are ordinary `udp` peers;
//!   - `udp ADDR via-forwarder NODEID`: a device behind the forwarder at `ADDR`, with the
//!     wireless node id `NODEID` (hex, 1 to 252 octets). **Lines of such a peer carry the whole
//!     encapsulated frame** (`Len FE Ctrl NodeId... | inner message`), exactly as on the wire;
//!   - `serial PORT [RADIO]`: a device on a serial port (no whitespace or `#` in `PORT`),
//!     optionally with its radio source address in hex (`0013A20040A1B2C3:FFFE`; `:` and `-`
//!     may separate bytes);
//!   - `broker [CLIENT]`: an upstream MQTT connection; without `CLIENT` the shared one
//!     (aggregating mode), with it the connection the gateway opened for the device peer named
//!     `CLIENT` (transparent mode; `CLIENT` must be declared earlier). Broker lines carry MQTT
//!     bytes or control entries.
//! - **`@config KEY = VALUE`**: a setting applied on top of the defaults for the replay; `KEY` is
//!   a dotted TOML key, `VALUE` one TOML value on the same line (kept as raw text, checked to be
//!   valid TOML). Each key at most once; the position in the file does not matter.
//! - **`@tolerance SECONDS`**: how far an output's time may be from the expected line's time
//!   (default [`replay::DEFAULT_TOLERANCE`], 0.100).
//! - **`@end SECONDS`**: keep running the gateway's timers until this time after the last line
//!   (not before the last line's time). Without it, timers run until the last line's time.
//! - **`TIME FROM > TO BYTES [# comment]`**: a frame. `TIME` is seconds since the start with up to
//!   three decimals (`12`, `12.5`, `12.345`), never decreasing through the file. Exactly one of
//!   `FROM`/`TO` is `gw`, the other a declared peer. `PEER > gw` lines are inputs fed to the
//!   gateway; `gw > PEER` lines are the outputs expected from it, in order. `BYTES` are hex bytes
//!   (`08 04`, also `0804` or `0x08`); on `gw >` lines only, `??` stands for one byte that may
//!   legitimately vary. A trailing comment is kept with the frame (the writer puts a decoded
//!   summary there).
//! - **`TIME FROM > TO !CONTROL [# comment]`**: a control entry ([`Control`]), only on broker
//!   peers, with no bytes. Inputs report what happened to the connection: `BRK > gw !up` (the
//!   TCP connection to the broker is up), `BRK > gw !down` (it dropped). Outputs are what the
//!   gateway asks of it: `gw > BRK !open` (connect), `gw > BRK !close` (flush, then close
//!   gracefully), `gw > BRK !abort` (drop at once, without an MQTT DISCONNECT). Times, order and
//!   comments work as for frames, and expected control outputs are compared like frames.
//!
//! The canonical form ([`Transcript`]'s `Display`) writes peers, config, tolerance, a blank line,
//! the entries in aligned columns and then `@end`; it parses back to an equal transcript.

pub mod harness;
mod parse;
pub mod replay;
pub mod samples;
mod write;

use std::fmt;
use std::net::SocketAddr;

use crate::engine::auth::Identity;
use crate::time::{Duration, Instant};

pub use parse::{TranscriptError, TranscriptErrorKind};
pub use write::TranscriptWriter;

/// The name that stands for the gateway itself on frame lines.
pub const GATEWAY: &str = "gw";

/// A parsed transcript: declared peers, replay settings and the entries in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Transcript {
    /// Declared peers, in declaration order.
    pub peers: Vec<Peer>,
    /// `@config` settings as (dotted key, raw TOML value text), in file order.
    pub config: Vec<(String, String)>,
    /// Frame and control entries in file order (times never decrease).
    pub entries: Vec<Entry>,
    /// `@end`: how long to keep firing timers after the last frame.
    pub end: Option<Instant>,
    /// `@tolerance`: allowed distance between an output's actual and expected time.
    pub tolerance: Option<Duration>,
}

/// A named party the gateway exchanges frames with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The name used on frame lines.
    pub name: String,
    /// Where the peer is, as the gateway sees it.
    pub kind: PeerKind,
    /// For a DTLS peer: what its association proved (`psk ID` or `cert NAME` on the line).
    pub identity: Option<Identity>,
}

/// A peer's address, in the terms the gateway's transports and upstream connections use. The
/// replay harness maps an engine's output destination back to a peer by comparing these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// A device reached over UDP at this address.
    Udp(SocketAddr),
    /// A device reached over DTLS at this UDP address; the frames are the decrypted ones.
    Dtls(SocketAddr),
    /// A device on a serial link, optionally identified by its radio source address.
    Serial {
        /// The serial port (device path).
        port: String,
        /// The radio source address (e.g. XBee 64-bit + 16-bit), when the link has one.
        radio: Option<Vec<u8>>,
    },
    /// A device behind an MQTT-SN forwarder (§5.5); its frames are encapsulated.
    Forwarded {
        /// The forwarder's UDP address.
        via: SocketAddr,
        /// The wireless node id in the encapsulation header.
        node_id: Vec<u8>,
    },
    /// An upstream MQTT connection to the broker.
    Broker {
        /// `None` for the shared connection (aggregating mode); otherwise the name of the
        /// device peer this connection belongs to (transparent mode).
        client: Option<String>,
    },
}

/// One frame or control line.
///
/// Equality ignores [`Entry::line`]: two entries are equal when they say the same thing,
/// wherever they were written.
#[derive(Debug, Clone, Eq)]
pub struct Entry {
    /// When the frame was sent (or the control event happened).
    pub at: Instant,
    /// Input to the gateway or output from it, and the peer on the other side.
    pub direction: Direction,
    /// What was sent: frame bytes (wildcards only in outputs) or a control event.
    pub payload: Payload,
    /// The trailing comment, without `#` and surrounding spaces.
    pub comment: Option<String>,
    /// 1-based line in the source text; 0 for entries not read from text.
    pub line: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
            && self.direction == other.direction
            && self.payload == other.payload
            && self.comment == other.comment
    }
}

/// Which way a frame goes, named by the peer on the other side of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `FROM > gw`: fed to the gateway.
    Input {
        /// The sending peer's name.
        from: String,
    },
    /// `gw > TO`: expected from the gateway.
    Output {
        /// The receiving peer's name.
        to: String,
    },
}

impl Direction {
    /// The peer on the other side of the gateway.
    pub fn peer(&self) -> &str {
        match self {
            Direction::Input { from } => from,
            Direction::Output { to } => to,
        }
    }

    /// Whether this is a frame fed to the gateway.
    pub fn is_input(&self) -> bool {
        matches!(self, Direction::Input { .. })
    }
}

impl fmt::Display for Direction {
    /// `dev1 > gw` or `gw > dev1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Direction::Input { from } => write!(f, "{from} > {GATEWAY}"),
            Direction::Output { to } => write!(f, "{GATEWAY} > {to}"),
        }
    }
}

/// Frame bytes in which some positions may be wildcards (`??`, any byte).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FramePattern(Vec<Option<u8>>);

impl FramePattern {
    /// A pattern that matches exactly `bytes`.
    pub fn exact(bytes: &[u8]) -> Self {
        FramePattern(bytes.iter().copied().map(Some).collect())
    }

    /// A pattern from positions, `None` being a wildcard.
    pub fn from_positions(positions: Vec<Option<u8>>) -> Self {
        FramePattern(positions)
    }

    /// The positions, `None` being a wildcard.
    pub fn positions(&self) -> &[Option<u8>] {
        &self.0
    }

    /// Number of bytes the pattern matches.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the pattern has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether any position is a wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.0.iter().any(Option::is_none)
    }

    /// The bytes, or `None` if the pattern has wildcards.
    pub fn exact_bytes(&self) -> Option<Vec<u8>> {
        self.0.iter().copied().collect()
    }

    /// Whether `bytes` has the same length and equals the pattern at every non-wildcard position.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        self.first_difference(bytes).is_none()
    }

    /// The offset of the first byte where `bytes` does not match (the shorter length if only the
    /// lengths differ), or `None` if it matches.
    pub fn first_difference(&self, bytes: &[u8]) -> Option<usize> {
        let differing = self
            .0
            .iter()
            .zip(bytes)
            .position(|(want, got)| want.is_some_and(|w| w != *got));
        match differing {
            Some(offset) => Some(offset),
            None if self.0.len() != bytes.len() => Some(self.0.len().min(bytes.len())),
            None => None,
        }
    }
}

impl From<&[u8]> for FramePattern {
    fn from(bytes: &[u8]) -> Self {
        FramePattern::exact(bytes)
    }
}

impl From<Vec<u8>> for FramePattern {
    fn from(bytes: Vec<u8>) -> Self {
        FramePattern::exact(&bytes)
    }
}

impl fmt::Display for FramePattern {
    /// Upper-case hex bytes separated by single spaces, `??` for wildcards.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, position) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match position {
                Some(b) => write!(f, "{b:02X}")?,
                None => f.write_str("??")?,
            }
        }
        Ok(())
    }
}

/// A control entry: an event in the life cycle of an upstream broker connection, between the
/// gateway engine and the driver that owns the sockets. Only broker peers have them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// `BRK > gw !up`: the TCP connection to the broker is up (input).
    Up,
    /// `BRK > gw !down`: the connection dropped (input).
    Down,
    /// `BRK > gw !congested`: the connection's send queue is over its bound; the broker reads
    /// slower than the gateway writes (input).
    Congested,
    /// `BRK > gw !drained`: the send queue is back under half its bound (input).
    Drained,
    /// `brk > gw !restart`: the gateway process is killed and started again (input). The
    /// harness has the engine persist, as the driver does after every batch, then drops it and
    /// restores a new one from what was stored; every broker connection is gone with the old
    /// process.
    Restart,
    /// `gw > BRK !open`: the gateway asks for a connection to be opened (output).
    Open,
    /// `gw > BRK !close`: the gateway asks for a graceful close: flush what was sent, then close
    /// (output).
    Close,
    /// `gw > BRK !abort`: the gateway asks for the connection to be dropped at once, without an
    /// MQTT DISCONNECT (output).
    Abort,
}

impl Control {
    /// Every control, inputs first.
    pub const ALL: [Control; 8] = [
        Control::Up,
        Control::Down,
        Control::Congested,
        Control::Drained,
        Control::Restart,
        Control::Open,
        Control::Close,
        Control::Abort,
    ];

    /// The keyword without `!`: `up`, `down`, `congested`, `drained`, `open`, `close`, `abort`.
    pub fn keyword(self) -> &'static str {
        match self {
            Control::Up => "up",
            Control::Down => "down",
            Control::Congested => "congested",
            Control::Drained => "drained",
            Control::Restart => "restart",
            Control::Open => "open",
            Control::Close => "close",
            Control::Abort => "abort",
        }
    }

    /// The control written as `token` (`!up`, ...), if it is one.
    pub fn from_token(token: &str) -> Option<Control> {
        let keyword = token.strip_prefix('!')?;
        Control::ALL.into_iter().find(|c| c.keyword() == keyword)
    }

    /// Whether this control is reported to the gateway (`!up`, `!down`, `!congested`,
    /// `!drained`) rather than asked by it (`!open`, `!close`, `!abort`).
    pub fn is_input(self) -> bool {
        matches!(
            self,
            Control::Up | Control::Down | Control::Congested | Control::Drained | Control::Restart
        )
    }
}

impl fmt::Display for Control {
    /// `!up`, `!down`, `!congested`, `!drained`, `!open`, `!close` or `!abort`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "!{}", self.keyword())
    }
}

/// What an entry carries: frame bytes, or a control event of a broker connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payload {
    /// Frame bytes (MQTT-SN for devices, MQTT for brokers); wildcards only in outputs.
    Frame(FramePattern),
    /// A control entry (broker peers only).
    Control(Control),
}

impl Payload {
    /// The frame pattern, if this is a frame.
    pub fn frame(&self) -> Option<&FramePattern> {
        match self {
            Payload::Frame(pattern) => Some(pattern),
            Payload::Control(_) => None,
        }
    }

    /// The control, if this is a control entry.
    pub fn control(&self) -> Option<Control> {
        match self {
            Payload::Frame(_) => None,
            Payload::Control(control) => Some(*control),
        }
    }
}

impl From<FramePattern> for Payload {
    fn from(pattern: FramePattern) -> Self {
        Payload::Frame(pattern)
    }
}

impl From<Control> for Payload {
    fn from(control: Control) -> Self {
        Payload::Control(control)
    }
}

impl fmt::Display for Payload {
    /// The bytes as [`FramePattern`] writes them, or the control as `!open` etc.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Payload::Frame(pattern) => pattern.fmt(f),
            Payload::Control(control) => control.fmt(f),
        }
    }
}

impl Entry {
    /// A frame fed to the gateway by `from`.
    pub fn input(at: Instant, from: impl Into<String>, bytes: &[u8]) -> Self {
        Entry {
            at,
            direction: Direction::Input { from: from.into() },
            payload: Payload::Frame(FramePattern::exact(bytes)),
            comment: None,
            line: 0,
        }
    }

    /// A frame sent by the gateway to `to`.
    pub fn output(at: Instant, to: impl Into<String>, bytes: &[u8]) -> Self {
        Entry {
            at,
            direction: Direction::Output { to: to.into() },
            payload: Payload::Frame(FramePattern::exact(bytes)),
            comment: None,
            line: 0,
        }
    }

    /// A control reported to the gateway by the broker peer `from` (`!up`, `!down`).
    pub fn input_control(at: Instant, from: impl Into<String>, control: Control) -> Self {
        Entry {
            at,
            direction: Direction::Input { from: from.into() },
            payload: Payload::Control(control),
            comment: None,
            line: 0,
        }
    }

    /// A control the gateway asks of the broker peer `to` (`!open`, `!close`, `!abort`).
    pub fn output_control(at: Instant, to: impl Into<String>, control: Control) -> Self {
        Entry {
            at,
            direction: Direction::Output { to: to.into() },
            payload: Payload::Control(control),
            comment: None,
            line: 0,
        }
    }

    /// The same entry with a trailing comment.
    pub fn with_comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// The frame's bytes, or `None` if it has wildcards or is a control entry.
    pub fn exact_bytes(&self) -> Option<Vec<u8>> {
        self.payload.frame().and_then(FramePattern::exact_bytes)
    }

    /// The frame pattern, or `None` for a control entry.
    pub fn frame(&self) -> Option<&FramePattern> {
        self.payload.frame()
    }

    /// The control, or `None` for a frame.
    pub fn control(&self) -> Option<Control> {
        self.payload.control()
    }

    /// The peer on the other side of the gateway.
    pub fn peer(&self) -> &str {
        self.direction.peer()
    }
}

impl Transcript {
    /// Parses transcript text; `origin` names it in error messages (usually the file path).
    pub fn parse(text: &str, origin: &str) -> Result<Transcript, TranscriptError> {
        parse::parse(text, origin)
    }

    /// The declared peer called `name`.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.name == name)
    }

    /// The declared peer at `kind`.
    pub fn peer_at(&self, kind: &PeerKind) -> Option<&Peer> {
        self.peers.iter().find(|p| &p.kind == kind)
    }

    /// The `@config` settings as a TOML document of dotted keys (`gateway.mode = "transparent"`
    /// per line), for the harness to merge over the defaults.
    pub fn config_toml(&self) -> String {
        let mut out = String::new();
        for (key, value) in &self.config {
            out.push_str(key);
            out.push_str(" = ");
            out.push_str(value);
            out.push('\n');
        }
        out
    }

    /// The frames and controls the gateway is expected to send, in order.
    pub fn expected_outputs(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.direction.is_input())
    }

    /// The frames and controls fed to the gateway, in order.
    pub fn inputs(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.direction.is_input())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matching_and_first_difference() {
        let p = FramePattern::from_positions(vec![Some(7), Some(0x0B), None, None, Some(0)]);
        assert!(p.matches(&[7, 0x0B, 1, 2, 0]));
        assert!(!p.matches(&[7, 0x0B, 1, 2, 1]));
        assert_eq!(p.first_difference(&[7, 0x0B, 1, 2, 1]), Some(4));
        assert_eq!(p.first_difference(&[7, 0x0B, 1]), Some(3));
        assert_eq!(p.first_difference(&[7, 0x0B, 1, 2, 0, 9]), Some(5));
        assert_eq!(p.exact_bytes(), None);
        assert_eq!(p.to_string(), "07 0B ?? ?? 00");
        assert_eq!(
            FramePattern::exact(&[2, 0x17]).exact_bytes(),
            Some(vec![2, 0x17])
        );
    }

    #[test]
    fn entry_equality_ignores_the_source_line() {
        let mut a = Entry::input(Instant::from_millis(5), "dev1", &[2, 0x16]);
        let b = a.clone();
        a.line = 42;
        assert_eq!(a, b);
        assert_ne!(a, b.clone().with_comment("PINGREQ"));
        let up = Entry::input_control(Instant::from_millis(5), "dev1", Control::Up);
        assert_ne!(up, b);
        assert_eq!(up.exact_bytes(), None);
        assert_eq!(up.control(), Some(Control::Up));
    }

    #[test]
    fn controls_are_written_with_a_bang() {
        for control in Control::ALL {
            assert_eq!(Control::from_token(&control.to_string()), Some(control));
        }
        let inputs: Vec<Control> = Control::ALL.into_iter().filter(|c| c.is_input()).collect();
        assert_eq!(
            inputs,
            [
                Control::Up,
                Control::Down,
                Control::Congested,
                Control::Drained,
                Control::Restart
            ]
        );
        assert_eq!(Control::from_token("up"), None);
        assert_eq!(Control::from_token("!UP"), None);
        assert_eq!(Payload::from(Control::Abort).to_string(), "!abort");
    }
}
