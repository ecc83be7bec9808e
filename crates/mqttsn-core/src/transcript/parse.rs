//! The `.snlog` parser: text to [`Transcript`], checking everything a replay relies on (declared
//! peers, one side `gw`, time order, wildcards only in expected outputs, control entries only on
//! broker peers and in their direction) so that the harness never has to. Total: any input gives a transcript or an error naming the line, never a panic.

use crate::engine::auth::Identity;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;

use super::{
    Control, Direction, Entry, FramePattern, Payload, Peer, PeerKind, Transcript, GATEWAY,
};
use crate::hex::{self, HexError};
use crate::time::{Duration, Instant};

/// Longest wireless node id that fits the one-octet encapsulation length (3 + id ≤ 255).
const MAX_NODE_ID_LEN: usize = 252;

const PEER_USAGE: &str = "`@peer NAME udp ADDR [via-forwarder NODEID]`, `@peer NAME dtls ADDR psk|cert IDENTITY`, `@peer NAME serial PORT [RADIO]` or `@peer NAME broker [CLIENT]`";

/// Why a transcript does not parse, and where: `origin:line[:column]: what is wrong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptError {
    /// The name given to [`Transcript::parse`] (usually the file path).
    pub origin: String,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in characters) of the offending token, when there is one.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub kind: TranscriptErrorKind,
}

impl fmt::Display for TranscriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.origin, self.line)?;
        if let Some(column) = self.column {
            write!(f, "{column}:")?;
        }
        write!(f, " {}", self.kind)
    }
}

impl std::error::Error for TranscriptError {}

/// The ways a transcript can be wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TranscriptErrorKind {
    /// A time that is not seconds with at most three decimals.
    #[error(
        "bad time {text:?}: {reason}; expected seconds with at most 3 decimals, like 12 or 12.345"
    )]
    BadTime {
        /// The offending text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A frame earlier than the one before it.
    #[error("time {time} goes backwards (line {previous_line} is at {previous}); times must not decrease")]
    TimeBackwards {
        /// This line's time.
        time: Instant,
        /// The previous frame's time.
        previous: Instant,
        /// The previous frame's line.
        previous_line: usize,
    },
    /// A frame line without `FROM > TO`.
    #[error("expected `FROM > TO` after the time, found {found:?}")]
    MissingArrow {
        /// What was there instead.
        found: String,
    },
    /// A frame line between two peers.
    #[error("neither side of `{from} > {to}` is gw; every frame goes to or from the gateway")]
    NoGateway {
        /// The sending side.
        from: String,
        /// The receiving side.
        to: String,
    },
    /// `gw > gw`.
    #[error("both sides are gw; the other side must be a declared peer")]
    BothGateway,
    /// A frame naming a peer that was not declared (yet).
    #[error(
        "unknown peer {name:?} (declared peers: {}); declare it with @peer before its first use",
        list(declared)
    )]
    UnknownPeer {
        /// The undeclared name.
        name: String,
        /// The peers declared so far.
        declared: Vec<String>,
    },
    /// A frame byte that is neither hex nor `??`.
    #[error("bad frame byte {token:?}: {reason}; expected hex bytes like `08 04` (or `??` on gw > lines)")]
    BadHex {
        /// The offending token.
        token: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `??` in a frame fed to the gateway, which must be concrete.
    #[error(
        "wildcard `??` in a frame sent to the gateway; only expected outputs (gw > lines) may vary"
    )]
    WildcardInInput,
    /// A frame line without bytes.
    #[error("no frame bytes after `{direction}`; expected hex bytes like `02 16` (or, for a broker peer, a control entry like `!up`)")]
    EmptyFrame {
        /// The `FROM > TO` part.
        direction: String,
    },
    /// A `!word` that is not a control entry.
    #[error("unknown control entry {token:?}; expected `!up` or `!down` (BROKER > gw) or `!open`, `!close` or `!abort` (gw > BROKER)")]
    UnknownControl {
        /// The offending token.
        token: String,
    },
    /// A control entry on a peer that is not a broker connection.
    #[error("control entry `{control}` for {peer:?}, a {kind} peer; control entries are only for broker peers (`@peer NAME broker [CLIENT]`)")]
    ControlNotOnBroker {
        /// The control.
        control: Control,
        /// The peer's name.
        peer: String,
        /// The peer's kind as declared (`udp`, `udp via-forwarder`, `serial`).
        kind: &'static str,
    },
    /// An input control on a `gw >` line or an output control on a `> gw` line.
    #[error("`{control}` cannot go `{direction}`: `!up` and `!down` are inputs (BROKER > gw), `!open`, `!close` and `!abort` outputs (gw > BROKER)")]
    ControlWrongDirection {
        /// The control.
        control: Control,
        /// The `FROM > TO` part.
        direction: String,
    },
    /// Something other than a comment after a control.
    #[error("unexpected {found:?} after `{control}`; a control entry has no bytes (only a trailing `# comment`)")]
    BytesAfterControl {
        /// The control.
        control: Control,
        /// What follows it.
        found: String,
    },
    /// A peer name declared twice.
    #[error("peer {name:?} is already declared on line {first_line}")]
    DuplicatePeer {
        /// The name.
        name: String,
        /// Where it was first declared.
        first_line: usize,
    },
    /// Two peers at the same address.
    #[error("peer {name:?} has the same address as peer {other:?} (line {first_line}); each address is one peer")]
    DuplicateAddress {
        /// The peer being declared.
        name: String,
        /// The peer already at that address.
        other: String,
        /// Where that one was declared.
        first_line: usize,
    },
    /// A peer name that is not an identifier, or is `gw`.
    #[error("bad peer name {name:?}: expected an ASCII letter then letters, digits, `_`, `.` or `-` (and not `gw`, the gateway)")]
    BadPeerName {
        /// The offending name.
        name: String,
    },
    /// A malformed `@peer` line.
    #[error("bad @peer: {reason}; expected {PEER_USAGE}")]
    BadPeer {
        /// What is wrong.
        reason: String,
    },
    /// A directive other than `@peer`, `@config`, `@tolerance` or `@end`.
    #[error("unknown directive {name:?}; expected @peer, @config, @tolerance or @end")]
    UnknownDirective {
        /// The directive as written (with `@`).
        name: String,
    },
    /// A malformed `@config`, `@tolerance` or `@end` line.
    #[error("bad {directive}: {reason}; expected `{usage}`")]
    BadDirective {
        /// Which directive.
        directive: &'static str,
        /// What is wrong.
        reason: String,
        /// How it is written.
        usage: &'static str,
    },
    /// `@end` or `@tolerance` given twice.
    #[error("{directive} is already given on line {first_line}")]
    DuplicateDirective {
        /// Which directive.
        directive: &'static str,
        /// Where it was first given.
        first_line: usize,
    },
    /// The same `@config` key set twice.
    #[error("@config key {key:?} is already set on line {first_line}")]
    DuplicateConfig {
        /// The key.
        key: String,
        /// Where it was first set.
        first_line: usize,
    },
    /// `@end` earlier than the last frame.
    #[error("@end {end} is before the last frame at {last} (line {last_line})")]
    EndBeforeLastFrame {
        /// The `@end` time.
        end: Instant,
        /// The last frame's time.
        last: Instant,
        /// The last frame's line.
        last_line: usize,
    },
    /// A line that is none of comment, directive or frame.
    #[error("expected a frame line `TIME FROM > TO BYTES`, a directive (`@...`) or a comment (`#...`), found {found:?}")]
    Unrecognized {
        /// The line's first word.
        found: String,
    },
}

/// How a peer's kind is written in `@peer`, for messages.
fn kind_word(kind: &PeerKind) -> &'static str {
    match kind {
        PeerKind::Udp(_) => "udp",
        PeerKind::Dtls(_) => "dtls",
        PeerKind::Forwarded { .. } => "udp via-forwarder",
        PeerKind::Serial { .. } => "serial",
        PeerKind::Broker { .. } => "broker",
    }
}

/// At most the first 40 bytes of `text` (whole characters), for messages.
fn shorten(text: &str) -> &str {
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// Parses a whole transcript.
pub(super) fn parse(text: &str, origin: &str) -> Result<Transcript, TranscriptError> {
    let mut parser = Parser {
        origin,
        transcript: Transcript::default(),
        peer_lines: Vec::new(),
        config_lines: Vec::new(),
        end_line: None,
        tolerance_line: None,
        last_frame: None,
    };
    // A byte-order mark from an editor is not content.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        parser.line(raw, index + 1)?;
    }
    parser.finish()
}

struct Parser<'a> {
    origin: &'a str,
    transcript: Transcript,
    /// Declaration line of each peer, parallel to `transcript.peers`.
    peer_lines: Vec<usize>,
    /// Line of each `@config`, parallel to `transcript.config`.
    config_lines: Vec<usize>,
    end_line: Option<usize>,
    tolerance_line: Option<usize>,
    /// Time and line of the latest frame, for the ordering check.
    last_frame: Option<(Instant, usize)>,
}

/// Where in `line` the subslice `part` starts, as a 1-based character column. `part` must come
/// from `line` (tokens do); anything else gives column 1 rather than a panic.
fn column_of(line: &str, part: &str) -> usize {
    let offset = (part.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize);
    line.get(..offset)
        .map_or(1, |before| before.chars().count() + 1)
}

/// Splits off a trailing `# comment`: the text before it (trimmed) and the comment (trimmed,
/// `None` if empty).
fn split_comment(text: &str) -> (&str, Option<String>) {
    match text.split_once('#') {
        Some((body, comment)) => {
            let comment = comment.trim();
            (
                body.trim_end(),
                (!comment.is_empty()).then(|| comment.to_string()),
            )
        }
        None => (text.trim_end(), None),
    }
}

/// Splits at the first whitespace: the first word and the (left-trimmed) rest.
fn first_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(i) => (&text[..i], text[i..].trim_start()),
        None => (text, ""),
    }
}

/// Parses `12`, `12.5` or `12.345` seconds into milliseconds.
pub(super) fn parse_seconds(text: &str) -> Result<u64, &'static str> {
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected digits before the decimal point");
    }
    let seconds: u64 = whole.parse().map_err(|_| "too large")?;
    let millis = match fraction {
        None => 0,
        Some(f) if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) => {
            return Err("expected digits after the decimal point")
        }
        Some(f) if f.len() > 3 => return Err("more precise than a millisecond"),
        Some(f) => {
            let digits: u64 = f
                .parse()
                .map_err(|_| "expected digits after the decimal point")?;
            // "5" is 500 ms, "05" is 50 ms.
            digits * 10u64.pow(3 - f.len() as u32)
        }
    };
    seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(millis))
        .ok_or("too large")
}

/// A peer name: an ASCII letter, then letters, digits, `_`, `.` or `-`; not `gw`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name != GATEWAY
}

/// A dotted TOML key of bare segments: `gateway.mode`, `topics.predefined.5`.
fn valid_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        })
}

/// Whether `text` has the shape of one TOML value: a closed string (basic, literal or
/// multi-line), `true`/`false`, `inf`/`nan`, a number or date-time token, or a balanced array or
/// inline table. Only the shape: the core has no TOML parser, and the gateway's configuration
/// loader checks the value itself when a replay builds its settings. The shape is what tells
/// where a trailing `# comment` begins.
fn is_toml_value(text: &str) -> bool {
    let text = text.trim();
    let Some(first) = text.chars().next() else {
        return false;
    };
    match first {
        '"' | '\'' => string_end(text).is_some_and(|end| end == text.len()),
        '[' | '{' => balanced(text),
        _ => matches!(text, "true" | "false" | "inf" | "nan") || is_number_or_date(text),
    }
}

/// A number (`10`, `-1.5`, `1e3`, `0x1F`, `+inf`) or a date-time, whose time may follow the
/// date after one space (`1979-05-27 07:32:00Z`).
fn is_number_or_date(text: &str) -> bool {
    let token = |t: &str| {
        t.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-'))
            && t.len() > usize::from(t.starts_with(['+', '-']))
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.' | ':'))
    };
    match text.split_once(' ') {
        Some((date, time)) => {
            date.len() == 10 && date.as_bytes().get(4) == Some(&b'-') && token(date) && token(time)
        }
        None => token(text),
    }
}

/// The end (exclusive) of the string that starts `text`: `"…"` with `\` escapes, `'…'`, or their
/// triple-quoted multi-line forms.
fn string_end(text: &str) -> Option<usize> {
    let quote = text.chars().next()?;
    let triple = if quote == '"' { "\"\"\"" } else { "'''" };
    if let Some(body) = text.strip_prefix(triple) {
        return body.find(triple).map(|i| 3 + i + 3);
    }
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quote == '"' => escaped = true,
            c if c == quote => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Whether the brackets and braces of `text` close exactly at its end, strings skipped. A `#`
/// outside a string starts a comment, which a one-line value cannot contain.
fn balanced(text: &str) -> bool {
    let mut depth = 0usize;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match c {
            '"' | '\'' => match string_end(rest) {
                Some(end) => {
                    rest = &rest[end..];
                    continue;
                }
                None => return false,
            },
            '#' => return false,
            '[' | '{' => depth += 1,
            ']' | '}' => {
                depth = match depth.checked_sub(1) {
                    Some(d) => d,
                    None => return false,
                };
                if depth == 0 {
                    return rest.len() == 1;
                }
            }
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    false
}

impl Parser<'_> {
    fn error(
        &self,
        line: usize,
        column: Option<usize>,
        kind: TranscriptErrorKind,
    ) -> TranscriptError {
        TranscriptError {
            origin: self.origin.to_string(),
            line,
            column,
            kind,
        }
    }

    fn line(&mut self, raw: &str, line_no: usize) -> Result<(), TranscriptError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Ok(());
        }
        if let Some(directive) = trimmed.strip_prefix('@') {
            return self.directive(raw, directive, line_no);
        }
        if trimmed.starts_with(|c: char| c.is_ascii_digit()) {
            return self.frame(raw, trimmed, line_no);
        }
        let (word, _) = first_word(trimmed);
        Err(self.error(
            line_no,
            Some(column_of(raw, trimmed)),
            TranscriptErrorKind::Unrecognized {
                found: word.to_string(),
            },
        ))
    }

    fn frame(&mut self, raw: &str, trimmed: &str, line_no: usize) -> Result<(), TranscriptError> {
        let (body, comment) = split_comment(trimmed);
        let (time_text, rest) = first_word(body);
        let millis = parse_seconds(time_text).map_err(|reason| {
            self.error(
                line_no,
                Some(column_of(raw, time_text)),
                TranscriptErrorKind::BadTime {
                    text: time_text.to_string(),
                    reason,
                },
            )
        })?;
        let at = Instant::from_millis(millis);

        // `FROM > TO`, with or without spaces around `>`.
        let missing_arrow = |found: &str| {
            self.error(
                line_no,
                Some(column_of(raw, rest)),
                TranscriptErrorKind::MissingArrow {
                    found: found.to_string(),
                },
            )
        };
        let Some((from, after_arrow)) = rest.split_once('>') else {
            return Err(missing_arrow(rest));
        };
        let from = from.trim();
        let (to, bytes_text) = first_word(after_arrow);
        if from.is_empty() || from.contains(char::is_whitespace) || to.is_empty() {
            let shown = rest.get(..rest.len().min(40)).unwrap_or(rest);
            return Err(missing_arrow(shown));
        }
        let name_column = Some(column_of(raw, from));
        let (direction, peer_name, peer_column) = match (from == GATEWAY, to == GATEWAY) {
            (true, true) => {
                return Err(self.error(line_no, name_column, TranscriptErrorKind::BothGateway))
            }
            (false, false) => {
                return Err(self.error(
                    line_no,
                    name_column,
                    TranscriptErrorKind::NoGateway {
                        from: from.to_string(),
                        to: to.to_string(),
                    },
                ))
            }
            (false, true) => (
                Direction::Input {
                    from: from.to_string(),
                },
                from,
                name_column,
            ),
            (true, false) => (
                Direction::Output { to: to.to_string() },
                to,
                Some(column_of(raw, to)),
            ),
        };
        if self.transcript.peer(peer_name).is_none() {
            return Err(self.error(
                line_no,
                peer_column,
                TranscriptErrorKind::UnknownPeer {
                    name: peer_name.to_string(),
                    declared: self
                        .transcript
                        .peers
                        .iter()
                        .map(|p| p.name.clone())
                        .collect(),
                },
            ));
        }

        let payload = if bytes_text.starts_with('!') {
            Payload::Control(self.control(raw, bytes_text, &direction, peer_name, line_no)?)
        } else {
            let bytes = self.frame_bytes(raw, bytes_text, direction.is_input(), line_no)?;
            if bytes.is_empty() {
                return Err(self.error(
                    line_no,
                    Some(column_of(raw, to) + to.chars().count()),
                    TranscriptErrorKind::EmptyFrame {
                        direction: direction.to_string(),
                    },
                ));
            }
            Payload::Frame(bytes)
        };

        if let Some((previous, previous_line)) = self.last_frame {
            if at < previous {
                return Err(self.error(
                    line_no,
                    Some(column_of(raw, time_text)),
                    TranscriptErrorKind::TimeBackwards {
                        time: at,
                        previous,
                        previous_line,
                    },
                ));
            }
        }
        self.last_frame = Some((at, line_no));
        self.transcript.entries.push(Entry {
            at,
            direction,
            payload,
            comment,
            line: line_no,
        });
        Ok(())
    }

    /// A control entry: `text` (comment removed) starts with `!`; the peer is declared.
    fn control(
        &self,
        raw: &str,
        text: &str,
        direction: &Direction,
        peer_name: &str,
        line_no: usize,
    ) -> Result<Control, TranscriptError> {
        let (token, extra) = first_word(text);
        let at = |part: &str| Some(column_of(raw, part));
        let Some(control) = Control::from_token(token) else {
            return Err(self.error(
                line_no,
                at(token),
                TranscriptErrorKind::UnknownControl {
                    token: token.to_string(),
                },
            ));
        };
        if let Some(peer) = self
            .transcript
            .peer(peer_name)
            .filter(|p| !matches!(p.kind, PeerKind::Broker { .. }))
        {
            return Err(self.error(
                line_no,
                at(token),
                TranscriptErrorKind::ControlNotOnBroker {
                    control,
                    peer: peer.name.clone(),
                    kind: kind_word(&peer.kind),
                },
            ));
        }
        if control.is_input() != direction.is_input() {
            return Err(self.error(
                line_no,
                at(token),
                TranscriptErrorKind::ControlWrongDirection {
                    control,
                    direction: direction.to_string(),
                },
            ));
        }
        if !extra.is_empty() {
            return Err(self.error(
                line_no,
                at(extra),
                TranscriptErrorKind::BytesAfterControl {
                    control,
                    found: shorten(extra).to_string(),
                },
            ));
        }
        Ok(control)
    }

    fn frame_bytes(
        &self,
        raw: &str,
        text: &str,
        is_input: bool,
        line_no: usize,
    ) -> Result<FramePattern, TranscriptError> {
        let mut positions = Vec::new();
        for token in text.split_whitespace() {
            let column = column_of(raw, token);
            if token == "??" {
                if is_input {
                    return Err(self.error(
                        line_no,
                        Some(column),
                        TranscriptErrorKind::WildcardInInput,
                    ));
                }
                positions.push(None);
                continue;
            }
            let bad = |at: usize, reason: String| {
                self.error(
                    line_no,
                    Some(at),
                    TranscriptErrorKind::BadHex {
                        token: token.to_string(),
                        reason,
                    },
                )
            };
            match hex::parse(token) {
                Ok(bytes) if bytes.is_empty() => {
                    return Err(bad(column, "no hex digits".to_string()))
                }
                Ok(bytes) => positions.extend(bytes.into_iter().map(Some)),
                Err(HexError::InvalidChar { ch, column: within }) => {
                    let reason = if ch == '?' {
                        "`??` must stand alone, one wildcard byte per `??`".to_string()
                    } else if ch == '!' && within == 1 {
                        "a control entry (`!up`, `!open`, ...) stands alone, without bytes"
                            .to_string()
                    } else {
                        format!("{ch:?} is not a hex digit")
                    };
                    return Err(bad(column + within.saturating_sub(1), reason));
                }
                Err(HexError::OddDigits { .. }) => {
                    return Err(bad(
                        column,
                        "odd number of hex digits (each byte needs two)".to_string(),
                    ))
                }
            }
        }
        Ok(FramePattern::from_positions(positions))
    }

    fn directive(
        &mut self,
        raw: &str,
        directive: &str,
        line_no: usize,
    ) -> Result<(), TranscriptError> {
        let (name, args) = first_word(directive);
        match name {
            "peer" => self.peer(raw, args, line_no),
            "config" => self.config(raw, args, line_no),
            "end" | "tolerance" => self.time_directive(raw, name, args, line_no),
            _ => Err(self.error(
                line_no,
                Some(column_of(raw, directive).saturating_sub(1)),
                TranscriptErrorKind::UnknownDirective {
                    name: format!("@{name}"),
                },
            )),
        }
    }

    fn peer(&mut self, raw: &str, args: &str, line_no: usize) -> Result<(), TranscriptError> {
        let (body, _comment) = split_comment(args);
        let words: Vec<&str> = body.split_whitespace().collect();
        let column = |word: &str| Some(column_of(raw, word));
        let bad = |word: Option<&str>, reason: String| {
            self.error(
                line_no,
                word.map(|w| column_of(raw, w)),
                TranscriptErrorKind::BadPeer { reason },
            )
        };
        let Some(&name) = words.first() else {
            return Err(bad(None, "no peer name".to_string()));
        };
        if !valid_name(name) {
            return Err(self.error(
                line_no,
                column(name),
                TranscriptErrorKind::BadPeerName {
                    name: name.to_string(),
                },
            ));
        }
        if let Some(index) = self.transcript.peers.iter().position(|p| p.name == name) {
            return Err(self.error(
                line_no,
                column(name),
                TranscriptErrorKind::DuplicatePeer {
                    name: name.to_string(),
                    first_line: self.peer_lines.get(index).copied().unwrap_or(0),
                },
            ));
        }
        let Some(&kind_word) = words.get(1) else {
            return Err(bad(Some(name), "no kind after the name".to_string()));
        };
        let socket_addr = |word: &str| {
            word.parse::<SocketAddr>().map_err(|_| {
                bad(
                    Some(word),
                    format!("{word:?} is not a socket address (IPv4:PORT or [IPv6]:PORT)"),
                )
            })
        };
        let hex_id = |word: &str, what: &str| match hex::parse(word) {
            Ok(bytes) if !bytes.is_empty() => Ok(bytes),
            _ => Err(bad(Some(word), format!("{what} {word:?} is not hex bytes"))),
        };
        let mut identity = None;
        let (kind, used) = match kind_word {
            "udp" => {
                let Some(&addr) = words.get(2) else {
                    return Err(bad(Some(kind_word), "no address after udp".to_string()));
                };
                let addr = socket_addr(addr)?;
                match words.get(3) {
                    Some(&keyword) if keyword == "via-forwarder" => {
                        let Some(&node) = words.get(4) else {
                            return Err(bad(
                                Some(keyword),
                                "no node id after via-forwarder".to_string(),
                            ));
                        };
                        let node_id = hex_id(node, "node id")?;
                        if node_id.len() > MAX_NODE_ID_LEN {
                            return Err(bad(
                                Some(node),
                                format!(
                                    "node id of {} octets (at most {MAX_NODE_ID_LEN})",
                                    node_id.len()
                                ),
                            ));
                        }
                        (PeerKind::Forwarded { via: addr, node_id }, 5)
                    }
                    _ => (PeerKind::Udp(addr), 3),
                }
            }
            "dtls" => {
                let Some(&addr) = words.get(2) else {
                    return Err(bad(Some(kind_word), "no address after dtls".to_string()));
                };
                let addr = socket_addr(addr)?;
                identity = Some(match (words.get(3), words.get(4)) {
                    (Some(&"psk"), Some(&id)) => Identity::Psk(id.into()),
                    (Some(&"cert"), Some(&names)) => {
                        Identity::Certificate(names.split(',').map(Arc::from).collect())
                    }
                    (word, _) => {
                        return Err(bad(
                            word.copied(),
                            "a dtls peer needs `psk IDENTITY` or `cert NAME[,NAME...]`".into(),
                        ))
                    }
                });
                (PeerKind::Dtls(addr), 5)
            }
            "serial" => {
                let Some(&port) = words.get(2) else {
                    return Err(bad(Some(kind_word), "no port after serial".to_string()));
                };
                match words.get(3) {
                    Some(&radio) => {
                        let radio = hex_id(radio, "radio address")?;
                        (
                            PeerKind::Serial {
                                port: port.to_string(),
                                radio: Some(radio),
                            },
                            4,
                        )
                    }
                    None => (
                        PeerKind::Serial {
                            port: port.to_string(),
                            radio: None,
                        },
                        3,
                    ),
                }
            }
            "broker" => match words.get(2) {
                Some(&client) => {
                    let is_device = self
                        .transcript
                        .peer(client)
                        .is_some_and(|p| !matches!(p.kind, PeerKind::Broker { .. }));
                    if !is_device {
                        return Err(bad(
                            Some(client),
                            format!(
                                "{client:?} is not a declared device peer (declared: {})",
                                list(
                                    &self
                                        .transcript
                                        .peers
                                        .iter()
                                        .filter(|p| !matches!(p.kind, PeerKind::Broker { .. }))
                                        .map(|p| p.name.clone())
                                        .collect::<Vec<_>>()
                                )
                            ),
                        ));
                    }
                    (
                        PeerKind::Broker {
                            client: Some(client.to_string()),
                        },
                        3,
                    )
                }
                None => (PeerKind::Broker { client: None }, 2),
            },
            other => {
                return Err(bad(
                    Some(other),
                    format!("unknown kind {other:?} (expected udp, dtls, serial or broker)"),
                ))
            }
        };
        if let Some(&extra) = words.get(used) {
            return Err(bad(Some(extra), format!("unexpected {extra:?}")));
        }
        if let Some(index) = self.transcript.peers.iter().position(|p| p.kind == kind) {
            return Err(self.error(
                line_no,
                column(name),
                TranscriptErrorKind::DuplicateAddress {
                    name: name.to_string(),
                    other: self.transcript.peers[index].name.clone(),
                    first_line: self.peer_lines.get(index).copied().unwrap_or(0),
                },
            ));
        }
        self.transcript.peers.push(Peer {
            name: name.to_string(),
            kind,
            identity,
        });
        self.peer_lines.push(line_no);
        Ok(())
    }

    fn config(&mut self, raw: &str, args: &str, line_no: usize) -> Result<(), TranscriptError> {
        const USAGE: &str = "@config KEY = VALUE";
        let bad = |at: &str, reason: String| {
            self.error(
                line_no,
                Some(column_of(raw, at)),
                TranscriptErrorKind::BadDirective {
                    directive: "@config",
                    reason,
                    usage: USAGE,
                },
            )
        };
        let Some((key, value_text)) = args.split_once('=') else {
            return Err(bad(args, "no `=`".to_string()));
        };
        let key = key.trim();
        if !valid_config_key(key) {
            return Err(bad(
                args,
                format!("{key:?} is not a dotted key of letters, digits, `_` and `-`"),
            ));
        }
        // The value ends where a trailing comment starts, but `#` may also sit inside a TOML
        // string: take the shortest prefix ending before a `#` that is a whole TOML value, else
        // the whole rest of the line.
        let value = value_text
            .match_indices('#')
            .map(|(i, _)| &value_text[..i])
            .chain(std::iter::once(value_text))
            .find(|candidate| is_toml_value(candidate))
            .map(str::trim)
            .ok_or_else(|| {
                bad(
                    value_text.trim_start(),
                    format!("{:?} is not one TOML value", value_text.trim()),
                )
            })?;
        if let Some(index) = self.transcript.config.iter().position(|(k, _)| k == key) {
            return Err(self.error(
                line_no,
                Some(column_of(raw, key)),
                TranscriptErrorKind::DuplicateConfig {
                    key: key.to_string(),
                    first_line: self.config_lines.get(index).copied().unwrap_or(0),
                },
            ));
        }
        self.transcript
            .config
            .push((key.to_string(), value.to_string()));
        self.config_lines.push(line_no);
        Ok(())
    }

    fn time_directive(
        &mut self,
        raw: &str,
        name: &str,
        args: &str,
        line_no: usize,
    ) -> Result<(), TranscriptError> {
        let (directive, usage, seen) = if name == "end" {
            ("@end", "@end SECONDS", self.end_line)
        } else {
            ("@tolerance", "@tolerance SECONDS", self.tolerance_line)
        };
        if let Some(first_line) = seen {
            return Err(self.error(
                line_no,
                None,
                TranscriptErrorKind::DuplicateDirective {
                    directive,
                    first_line,
                },
            ));
        }
        let (body, _comment) = split_comment(args);
        let (word, extra) = first_word(body);
        let bad = |at: &str, reason: String| {
            self.error(
                line_no,
                Some(column_of(raw, at)),
                TranscriptErrorKind::BadDirective {
                    directive,
                    reason,
                    usage,
                },
            )
        };
        if word.is_empty() {
            return Err(self.error(
                line_no,
                None,
                TranscriptErrorKind::BadDirective {
                    directive,
                    reason: "no time".to_string(),
                    usage,
                },
            ));
        }
        if !extra.is_empty() {
            return Err(bad(extra, format!("unexpected {extra:?}")));
        }
        let millis = parse_seconds(word)
            .map_err(|reason| bad(word, format!("bad time {word:?}: {reason}")))?;
        if name == "end" {
            self.transcript.end = Some(Instant::from_millis(millis));
            self.end_line = Some(line_no);
        } else {
            self.transcript.tolerance = Some(Duration::from_millis(millis));
            self.tolerance_line = Some(line_no);
        }
        Ok(())
    }

    fn finish(self) -> Result<Transcript, TranscriptError> {
        if let (Some(end), Some((last, last_line)), Some(end_line)) =
            (self.transcript.end, self.last_frame, self.end_line)
        {
            if end < last {
                return Err(self.error(
                    end_line,
                    None,
                    TranscriptErrorKind::EndBeforeLastFrame {
                        end,
                        last,
                        last_line,
                    },
                ));
            }
        }
        Ok(self.transcript)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_with_up_to_millisecond_precision() {
        assert_eq!(parse_seconds("12"), Ok(12_000));
        assert_eq!(parse_seconds("12.5"), Ok(12_500));
        assert_eq!(parse_seconds("12.05"), Ok(12_050));
        assert_eq!(parse_seconds("12.345"), Ok(12_345));
        assert_eq!(parse_seconds("0.000"), Ok(0));
        assert!(parse_seconds("12.3456").is_err());
        assert!(parse_seconds(".5").is_err());
        assert!(parse_seconds("5.").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("+1").is_err());
        assert!(parse_seconds("1e3").is_err());
        assert!(parse_seconds("99999999999999999999").is_err());
        assert!(parse_seconds("18446744073709552").is_err());
    }

    #[test]
    fn names_and_keys() {
        assert!(valid_name("dev1"));
        assert!(valid_name("brk-dev1"));
        assert!(valid_name("n.5_x"));
        assert!(!valid_name("gw"));
        assert!(!valid_name("1dev"));
        assert!(!valid_name("dév"));
        assert!(!valid_name(""));
        assert!(valid_config_key("gateway.mode"));
        assert!(!valid_config_key("gateway..mode"));
        assert!(!valid_config_key("a b"));
    }

    #[test]
    fn comments_split_at_the_first_hash() {
        assert_eq!(
            split_comment("0.0 a > gw 02 16   #  PINGREQ # x "),
            ("0.0 a > gw 02 16", Some("PINGREQ # x".to_string()))
        );
        assert_eq!(split_comment("x #   "), ("x", None));
    }

    #[test]
    fn column_of_a_foreign_slice_does_not_panic() {
        // Wherever the two strings happen to be in memory, the answer is some column.
        assert!(column_of("abc", "zzz") >= 1);
        let line = "ab é cd";
        let cd = &line[line.len() - 2..];
        assert_eq!(column_of(line, cd), 6);
    }

    #[test]
    fn toml_value_shapes() {
        for ok in [
            "\"transparent\"",
            "'a#b'",
            "\"esc \\\" # still inside\"",
            "10",
            "-1.5",
            "1e3",
            "true",
            "false",
            "[1, \"]\", [2]]",
            "{ a = \"}\" }",
            "1979-05-27T07:32:00Z",
            "1979-05-27 07:32:00Z",
            "'''a'b'''",
            "\"\"\"x\"\"\"",
            "inf",
            "-nan",
            "0x1F",
        ] {
            assert!(is_toml_value(ok), "{ok}");
        }
        for bad in [
            "",
            "transparent",
            "\"open",
            "\"a\" \"b\"",
            "[1, 2",
            "[1] x",
            "]",
            "tru",
            "[1, #2]",
            "-",
            "a b",
        ] {
            assert!(!is_toml_value(bad), "{bad}");
        }
    }
}
