//! Replaying a transcript against the gateway engine on virtual time, and rewriting ("blessing")
//! a fixture's expected lines from what the engine actually did.
//!
//! # How a replay walks time
//! The harness owns the clock. It first drains [`Replayable::poll_output`] once at time 0, for
//! what the engine wants done as it starts (typically `!open` of its broker connection). Before
//! each input line at time `t` it fires every deadline the engine reports (via
//! [`Replayable::poll_timeout`]) that is `<= t`, in order, calling
//! [`Replayable::handle_timeout`] with the deadline as `now` (a deadline already in the past
//! fires at the current time, so time never goes backwards); then it feeds the input at `t`
//! (a frame, or a control entry `!up`/`!down`, as a [`ReplayInput`]). After every call it drains
//! [`Replayable::poll_output`]; each output is stamped with the `now` of that call. After the
//! last line, timers keep firing up to `@end` (or the last line's time).
//!
//! # How outputs are compared
//! The actual outputs ([`ReplayOutput`]: frames, and control entries `!open`, `!close`,
//! `!abort`) are compared with the expected (`gw > ...`) lines in order. An output matches a line
//! when it goes to the same peer, its bytes match the pattern (`??` matches any byte) or it is
//! the same control, and the times differ by at most the tolerance (`@tolerance`, default
//! [`DEFAULT_TOLERANCE`]). Sequences are aligned like a diff, so one unexpected or missing frame
//! is reported as [`Difference::Extra`] or [`Difference::Missing`] rather than as every later
//! line being different. Inputs take effect at exactly their time, so
//! the tolerance only matters for timer-driven outputs of recordings, whose real timers fired a
//! little after the computed instant; set `@tolerance 0` for exact fixtures. The first
//! difference is reported together with the whole actual transcript (see [`ReplayMismatch`]).
//!
//! An output to a destination no declared peer is at gets a made-up peer, declared in the actual
//! transcript (and by blessing): `brokerN` (`@peer brokerN broker [CLIENT]`) for a broker
//! connection, `undeclaredN` for anything else. A broker connection for a `CLIENT` that is not a
//! declared device peer cannot be declared that way; blessing then reports that the rewritten
//! text does not parse.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::write::{entry_line, peer_line};
use super::{
    Control, Direction, Entry, FramePattern, Payload, Peer, PeerKind, Transcript, TranscriptError,
};
use crate::time::{Duration, Instant};

/// Allowed distance between an output's actual and expected time when the transcript has no
/// `@tolerance`.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_millis(100);

/// Environment variable that makes [`replay_file`] rewrite expectations instead of failing
/// (`MQTTSN_BLESS=1`).
pub const BLESS_ENV: &str = "MQTTSN_BLESS";

/// Timer firings at one instant, or outputs drained after one call, beyond which the engine is
/// taken to be looping (a replay must end even when the engine under test is broken).
const RUNAWAY_LIMIT: usize = 10_000;

/// One input line as fed to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayInput<'a> {
    /// An MQTT-SN frame from a device (encapsulated for [`PeerKind::Forwarded`] peers) or MQTT
    /// bytes from a [`PeerKind::Broker`] connection.
    Frame(&'a [u8]),
    /// What happened to a [`PeerKind::Broker`] connection: one of the controls for which
    /// [`Control::is_input`] holds (the parser allows no other on an input line).
    Control(Control),
}

/// One thing the engine wants done, as [`Replayable::poll_output`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReplayOutput {
    /// A frame to send: MQTT-SN to a device (encapsulated for [`PeerKind::Forwarded`] peers) or
    /// MQTT bytes to a [`PeerKind::Broker`] connection.
    Frame(Vec<u8>),
    /// A request about a [`PeerKind::Broker`] connection: [`Control::Open`], [`Control::Close`]
    /// or [`Control::Abort`].
    Control(Control),
}

impl ReplayOutput {
    /// The entry payload saying exactly this.
    pub fn to_payload(&self) -> Payload {
        match self {
            ReplayOutput::Frame(bytes) => Payload::Frame(FramePattern::exact(bytes)),
            ReplayOutput::Control(control) => Payload::Control(*control),
        }
    }
}

impl From<Vec<u8>> for ReplayOutput {
    fn from(bytes: Vec<u8>) -> Self {
        ReplayOutput::Frame(bytes)
    }
}

impl From<&[u8]> for ReplayOutput {
    fn from(bytes: &[u8]) -> Self {
        ReplayOutput::Frame(bytes.to_vec())
    }
}

impl From<Control> for ReplayOutput {
    fn from(control: Control) -> Self {
        ReplayOutput::Control(control)
    }
}

/// Whether `output` is what `payload` expects (`??` matching any byte).
fn payload_matches(payload: &Payload, output: &ReplayOutput) -> bool {
    match (payload, output) {
        (Payload::Frame(pattern), ReplayOutput::Frame(bytes)) => pattern.matches(bytes),
        (Payload::Control(want), ReplayOutput::Control(got)) => want == got,
        _ => false,
    }
}

/// What the replay harness needs from the gateway engine. The engine's own API (`handle_frame`,
/// `handle_upstream`, `poll_transmit`, `poll_upstream`, ...) maps onto this in a small adapter.
///
/// Call order, as the harness uses it: `poll_output` until it returns `None` before anything
/// else (outputs at start, stamped 0); then any number of `input`/`handle_timeout` calls with
/// non-decreasing `now`, each followed by `poll_output` until it returns `None`;
/// `poll_timeout` before deciding whether to fire a timer.
pub trait Replayable {
    /// Feeds one input line from `from` at `now`: a frame, or a control entry of a
    /// [`PeerKind::Broker`] connection (`!up`, `!down`).
    fn input(&mut self, now: Instant, from: &Peer, input: ReplayInput<'_>);

    /// Lets the engine act on its timers; `now` is the deadline being fired (or later).
    fn handle_timeout(&mut self, now: Instant);

    /// The engine's earliest deadline, if it has one.
    fn poll_timeout(&self) -> Option<Instant>;

    /// The next frame the engine wants sent, or control it wants applied to a broker
    /// connection (`!open`, `!close`, `!abort`), with its destination in the same terms as the
    /// peers' [`PeerKind`] (the harness resolves it to the declared peer with that kind).
    fn poll_output(&mut self) -> Option<(PeerKind, ReplayOutput)>;
}

impl<T: Replayable + ?Sized> Replayable for &mut T {
    fn input(&mut self, now: Instant, from: &Peer, input: ReplayInput<'_>) {
        (**self).input(now, from, input);
    }

    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }

    fn poll_output(&mut self) -> Option<(PeerKind, ReplayOutput)> {
        (**self).poll_output()
    }
}

/// A frame the engine sent, or a control it asked for, during a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActualOutput {
    /// When it was sent (the `now` of the call that produced it).
    pub at: Instant,
    /// The destination peer's name (`brokerN` or `undeclaredN` for a destination no peer is
    /// declared at).
    pub to: String,
    /// The frame or control.
    pub output: ReplayOutput,
}

impl ActualOutput {
    /// The output as a `gw > ...` entry.
    pub fn to_entry(&self) -> Entry {
        Entry {
            at: self.at,
            direction: Direction::Output {
                to: self.to.clone(),
            },
            payload: self.output.to_payload(),
            comment: None,
            line: 0,
        }
    }
}

/// The first way a replay departed from the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// An output came where this line expects another one, and neither fits further on.
    Different {
        /// The expected line.
        line: usize,
        /// What it expects.
        expected: Entry,
        /// What came instead.
        actual: ActualOutput,
    },
    /// This expected line's frame (or control) never came.
    Missing {
        /// The expected line.
        line: usize,
        /// What it expects.
        expected: Entry,
    },
    /// The engine sent a frame (or asked for a control) that no expected line accounts for.
    Extra {
        /// The line it would follow.
        after_line: usize,
        /// The output.
        actual: ActualOutput,
    },
    /// An input names a peer the transcript does not declare (only possible for transcripts
    /// built in code; the parser rejects it).
    UnknownPeer {
        /// The input's line.
        line: usize,
        /// The undeclared name.
        name: String,
    },
    /// The engine kept asking for timers at one instant, or kept producing outputs, and the
    /// replay was cut short.
    Runaway {
        /// Virtual time when it was stopped.
        at: Instant,
        /// What did not stop.
        what: &'static str,
    },
}

/// A replay that did not go as the transcript says: the first difference, and the whole actual
/// transcript so that it can be pasted into the fixture (or written by blessing).
///
/// In the actual transcript, an output that matched its expected line keeps that line's pattern
/// (wildcards) and comment, so it reads like the fixture; everything else is as it happened.
#[derive(Debug, Clone)]
pub struct ReplayMismatch {
    /// The first difference.
    pub difference: Difference,
    /// Inputs as given and outputs as produced, in the order they happened.
    pub actual: Transcript,
    /// The time tolerance that was applied.
    pub tolerance: Duration,
}

impl std::error::Error for ReplayMismatch {}

fn seconds(d: Duration) -> String {
    Instant::from_millis(d.as_millis()).to_string()
}

fn distance(a: Instant, b: Instant) -> Duration {
    if a >= b {
        a - b
    } else {
        b - a
    }
}

impl fmt::Display for ReplayMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both lines of a comparison share the column widths, and drop comments, so that the
        // bytes sit exactly above each other.
        let pair_width = |a: &Entry, b: &Entry| a.peer().len().max(b.peer().len()) + 5;
        let bare = |e: &Entry| Entry {
            comment: None,
            ..e.clone()
        };
        match &self.difference {
            Difference::Different {
                line,
                expected,
                actual,
            } => {
                let actual_entry = actual.to_entry();
                let width = pair_width(expected, &actual_entry);
                // Where the bytes first differ, when both are frames.
                let byte_difference = match (&expected.payload, &actual.output) {
                    (Payload::Frame(pattern), ReplayOutput::Frame(bytes)) => pattern
                        .first_difference(bytes)
                        .map(|offset| (offset, pattern.len(), bytes.len())),
                    _ => None,
                };
                let reason = if expected.peer() != actual.to {
                    format!("sent to {} instead of {}", actual.to, expected.peer())
                } else if let Some((offset, want, got)) = byte_difference {
                    if want != got && offset == want.min(got) {
                        format!("{got} bytes instead of {want}")
                    } else {
                        format!("byte {offset} differs")
                    }
                } else if !payload_matches(&expected.payload, &actual.output) {
                    let describe = |payload: &Payload| match payload {
                        Payload::Frame(_) => "a frame".to_string(),
                        Payload::Control(control) => format!("`{control}`"),
                    };
                    format!(
                        "{} instead of {}",
                        describe(&actual.output.to_payload()),
                        describe(&expected.payload)
                    )
                } else {
                    format!(
                        "sent at {} instead of {} (tolerance {})",
                        actual.at,
                        expected.at,
                        seconds(self.tolerance)
                    )
                };
                writeln!(
                    f,
                    "line {line}: the gateway's output differs from the expected one: {reason}"
                )?;
                writeln!(f, "  expected: {}", entry_line(&bare(expected), width, 0))?;
                writeln!(f, "  actual:   {}", entry_line(&actual_entry, width, 0))?;
                if let Some((offset, _, _)) = byte_difference {
                    // "  actual:   " + time column + 2 + direction + 2, then 3 characters a byte.
                    let column = 12 + 8 + 2 + width + 2 + offset * 3;
                    writeln!(f, "{:column$}^^", "")?;
                }
            }
            Difference::Missing { line, expected } => {
                writeln!(f, "line {line}: this expected output never came")?;
                let width = expected.peer().len() + 5;
                writeln!(f, "  expected: {}", entry_line(&bare(expected), width, 0))?;
            }
            Difference::Extra { after_line, actual } => {
                writeln!(f, "after line {after_line}: an output that no line expects")?;
                let width = actual.to.len() + 5;
                writeln!(
                    f,
                    "  actual:   {}",
                    entry_line(&actual.to_entry(), width, 0)
                )?;
            }
            Difference::UnknownPeer { line, name } => {
                writeln!(f, "line {line}: input from undeclared peer {name:?}")?;
            }
            Difference::Runaway { at, what } => {
                writeln!(
                    f,
                    "at {at}: the engine {what} without end (more than {RUNAWAY_LIMIT} times); replay stopped"
                )?;
            }
        }
        writeln!(
            f,
            "\nactual transcript (paste it into the fixture, or rerun with {BLESS_ENV}=1 to rewrite the expected lines):"
        )?;
        write!(f, "{}", self.actual)
    }
}

/// Replays `transcript` against `engine` on virtual time (see the module docs) and compares the
/// outputs with the expected lines. The mismatch is boxed: it carries a whole transcript.
pub fn replay<E: Replayable + ?Sized>(
    transcript: &Transcript,
    engine: &mut E,
) -> Result<(), Box<ReplayMismatch>> {
    let run = run(transcript, engine);
    let (difference, matched) = compare(transcript, &run);
    match difference {
        None => Ok(()),
        Some(difference) => Err(Box::new(ReplayMismatch {
            difference,
            actual: actual_transcript(transcript, &run, &matched),
            tolerance: tolerance(transcript),
        })),
    }
}

fn tolerance(transcript: &Transcript) -> Duration {
    transcript.tolerance.unwrap_or(DEFAULT_TOLERANCE)
}

/// What [`replay_file_with`] does on a mismatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Fail with the mismatch.
    Check,
    /// Rewrite the file's expected lines with the actual outputs.
    Bless,
}

impl ReplayMode {
    /// [`ReplayMode::Bless`] if `MQTTSN_BLESS=1` is set, else [`ReplayMode::Check`].
    // The one environment read in the core: a switch for the test harness, never engine input.
    #[allow(clippy::disallowed_methods)]
    pub fn from_env() -> Self {
        if std::env::var(BLESS_ENV).is_ok_and(|v| v == "1") {
            ReplayMode::Bless
        } else {
            ReplayMode::Check
        }
    }
}

/// How a file replay ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// The engine did what the file says.
    Passed,
    /// The engine did something else, and the file now says what it did.
    Blessed,
}

/// Why a file replay failed.
#[derive(Debug, Error)]
pub enum ReplayError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The blessed file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
    /// The file is not a valid transcript.
    #[error(transparent)]
    Parse(#[from] TranscriptError),
    /// The engine did not do what the file says.
    #[error("{}: {mismatch}", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The first difference and the actual transcript.
        mismatch: Box<ReplayMismatch>,
    },
    /// Blessing could not produce a file that replays cleanly (an engine whose output changes
    /// from run to run, or one that never settles); the file is left as it was.
    #[error("{}: cannot bless: {reason}", path.display())]
    Bless {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Replays the transcript file at `path` against an engine built by `make` from the parsed
/// transcript (its `@config`, its peers). With `MQTTSN_BLESS=1` in the environment a mismatch
/// rewrites the file's expected lines instead of failing (see [`replay_file_with`]).
pub fn replay_file<E, F>(path: impl AsRef<Path>, make: F) -> Result<ReplayOutcome, ReplayError>
where
    E: Replayable,
    F: FnMut(&Transcript) -> E,
{
    replay_file_with(path, ReplayMode::from_env(), make)
}

/// [`replay_file`] with an explicit mode. Blessing replaces the expected (`gw > ...`) lines with
/// the actual outputs, each placed after the input it followed; comments, directives, inputs and
/// matched lines stay as written, and peers for undeclared destinations are declared before the
/// first frame. The blessed text is then replayed against a fresh engine from `make`, and only
/// written if that passes.
pub fn replay_file_with<E, F>(
    path: impl AsRef<Path>,
    mode: ReplayMode,
    mut make: F,
) -> Result<ReplayOutcome, ReplayError>
where
    E: Replayable,
    F: FnMut(&Transcript) -> E,
{
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    let transcript = Transcript::parse(&text, &origin)?;
    let mut engine = make(&transcript);
    let run = run(&transcript, &mut engine);
    let (difference, matched) = compare(&transcript, &run);
    let Some(difference) = difference else {
        return Ok(ReplayOutcome::Passed);
    };
    let mismatch = || ReplayError::Mismatch {
        path: path.to_path_buf(),
        mismatch: Box::new(ReplayMismatch {
            difference: difference.clone(),
            actual: actual_transcript(&transcript, &run, &matched),
            tolerance: tolerance(&transcript),
        }),
    };
    let bless_error = |reason: String| ReplayError::Bless {
        path: path.to_path_buf(),
        reason,
    };
    if mode == ReplayMode::Check || matches!(difference, Difference::Runaway { .. }) {
        return Err(mismatch());
    }
    let blessed = bless_text(&text, &transcript, &run, &matched);
    let reparsed = Transcript::parse(&blessed, &origin)
        .map_err(|e| bless_error(format!("the rewritten text does not parse: {e}")))?;
    if let Err(again) = replay(&reparsed, &mut make(&reparsed)) {
        return Err(bless_error(format!(
            "a second run differs from the first, so there is nothing stable to write:\n{again}"
        )));
    }
    std::fs::write(path, blessed).map_err(|source| ReplayError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    eprintln!("{BLESS_ENV}: rewrote the expected lines of {origin}");
    Ok(ReplayOutcome::Blessed)
}

/// One output the engine produced, with where it happened relative to the inputs.
struct Produced {
    output: ActualOutput,
    /// Index in `transcript.entries` of the last input fed before it.
    after_input: Option<usize>,
}

enum Event {
    Input(usize),
    Output(usize),
}

#[derive(Default)]
struct Run {
    produced: Vec<Produced>,
    /// Inputs (entry indices) and outputs (indices into `produced`) in the order they happened.
    events: Vec<Event>,
    /// Peers made up for destinations no declared peer is at.
    extra_peers: Vec<Peer>,
    /// Set when the replay was cut short.
    stopped: Option<Difference>,
}

struct Runner<'a, E: ?Sized> {
    transcript: &'a Transcript,
    engine: &'a mut E,
    now: Instant,
    last_input: Option<usize>,
    run: Run,
}

fn run<E: Replayable + ?Sized>(transcript: &Transcript, engine: &mut E) -> Run {
    let mut runner = Runner {
        transcript,
        engine,
        now: Instant::ZERO,
        last_input: None,
        run: Run::default(),
    };
    runner.walk();
    runner.run
}

impl<E: Replayable + ?Sized> Runner<'_, E> {
    fn walk(&mut self) {
        let transcript = self.transcript;
        // What the engine does as it starts, before any input or timer.
        if !self.drain() {
            return;
        }
        for (index, entry) in transcript.entries.iter().enumerate() {
            let Direction::Input { from } = &entry.direction else {
                continue;
            };
            if !self.fire_timers_until(entry.at) {
                return;
            }
            let Some(peer) = transcript.peer(from) else {
                self.run.stopped = Some(Difference::UnknownPeer {
                    line: entry.line,
                    name: from.clone(),
                });
                return;
            };
            self.now = self.now.max(entry.at);
            match &entry.payload {
                Payload::Frame(pattern) => {
                    // The parser keeps wildcards out of inputs; a hand-built one sends 00 there.
                    let bytes: Vec<u8> =
                        pattern.positions().iter().map(|b| b.unwrap_or(0)).collect();
                    self.engine
                        .input(self.now, peer, ReplayInput::Frame(&bytes));
                }
                Payload::Control(control) => {
                    self.engine
                        .input(self.now, peer, ReplayInput::Control(*control));
                }
            }
            self.run.events.push(Event::Input(index));
            self.last_input = Some(index);
            if !self.drain() {
                return;
            }
        }
        let last = transcript.entries.last().map_or(Instant::ZERO, |e| e.at);
        let end = transcript.end.map_or(last, |end| end.max(last));
        self.fire_timers_until(end);
    }

    /// Fires every deadline up to `limit`; false if the engine ran away.
    fn fire_timers_until(&mut self, limit: Instant) -> bool {
        let mut same_instant = 0;
        while let Some(deadline) = self.engine.poll_timeout() {
            if deadline > limit {
                break;
            }
            let at = deadline.max(self.now);
            if at == self.now {
                same_instant += 1;
                if same_instant > RUNAWAY_LIMIT {
                    self.run.stopped = Some(Difference::Runaway {
                        at,
                        what: "asked for a timer at the same instant",
                    });
                    return false;
                }
            } else {
                same_instant = 0;
            }
            self.now = at;
            self.engine.handle_timeout(at);
            if !self.drain() {
                return false;
            }
        }
        true
    }

    /// Collects everything the engine wants sent now; false if it ran away.
    fn drain(&mut self) -> bool {
        let mut count = 0;
        while let Some((kind, output)) = self.engine.poll_output() {
            count += 1;
            if count > RUNAWAY_LIMIT {
                self.run.stopped = Some(Difference::Runaway {
                    at: self.now,
                    what: "produced outputs",
                });
                return false;
            }
            let to = self.name_for(kind);
            self.run.events.push(Event::Output(self.run.produced.len()));
            self.run.produced.push(Produced {
                output: ActualOutput {
                    at: self.now,
                    to,
                    output,
                },
                after_input: self.last_input,
            });
        }
        true
    }

    /// The name of the peer at `kind`, making one up if none is declared (`broker1`, ... for a
    /// broker connection, `undeclared1`, ... for anything else), so that the actual transcript
    /// can still say where the output went.
    fn name_for(&mut self, kind: PeerKind) -> String {
        if let Some(peer) = self.transcript.peer_at(&kind) {
            return peer.name.clone();
        }
        if let Some(peer) = self.run.extra_peers.iter().find(|p| p.kind == kind) {
            return peer.name.clone();
        }
        let taken = |name: &str| {
            self.transcript.peer(name).is_some()
                || self.run.extra_peers.iter().any(|p| p.name == name)
        };
        let is_broker = |kind: &PeerKind| matches!(kind, PeerKind::Broker { .. });
        let prefix = if is_broker(&kind) {
            "broker"
        } else {
            "undeclared"
        };
        let mut n = self
            .run
            .extra_peers
            .iter()
            .filter(|p| is_broker(&p.kind) == is_broker(&kind))
            .count()
            + 1;
        let name = loop {
            let candidate = format!("{prefix}{n}");
            if !taken(&candidate) {
                break candidate;
            }
            n += 1;
        };
        self.run.extra_peers.push(Peer {
            name: name.clone(),
            kind,
            identity: None,
        });
        name
    }
}

/// How far ahead [`align`] looks for a resynchronisation point.
const ALIGN_WINDOW: usize = 64;

/// One step of the alignment of expected lines (`i` into the expected list) with produced
/// outputs (`j` into `run.produced`).
#[derive(Debug, Clone, Copy)]
enum Step {
    Match(usize, usize),
    Different(usize, usize),
    Missing(usize),
    Extra(usize),
}

/// Aligns expected outputs with produced ones, in order. A greedy diff: equal heads match; on a
/// difference, look a little ahead on both sides for the nearest point where they agree again
/// and call what is skipped missing or extra; if there is none, the two heads are different.
/// That way one inserted or lost frame is reported as such instead of shifting every later
/// comparison, and lines after it still count as matched (and keep their text when blessing).
fn align(expected: &[&Entry], produced: &[Produced], tolerance: Duration) -> Vec<Step> {
    let same = |want: &Entry, got: &ActualOutput| {
        want.peer() == got.to
            && payload_matches(&want.payload, &got.output)
            && distance(want.at, got.at) <= tolerance
    };
    let (mut i, mut j) = (0, 0);
    let mut steps = Vec::with_capacity(expected.len().max(produced.len()));
    while i < expected.len() && j < produced.len() {
        if same(expected[i], &produced[j].output) {
            steps.push(Step::Match(i, j));
            i += 1;
            j += 1;
            continue;
        }
        let extra = (j + 1..produced.len().min(j + ALIGN_WINDOW))
            .find(|&k| same(expected[i], &produced[k].output));
        let missing = (i + 1..expected.len().min(i + ALIGN_WINDOW))
            .find(|&l| same(expected[l], &produced[j].output));
        match (extra, missing) {
            (Some(k), Some(l)) if k - j <= l - i => {
                steps.extend((j..k).map(Step::Extra));
                j = k;
            }
            (Some(k), None) => {
                steps.extend((j..k).map(Step::Extra));
                j = k;
            }
            (_, Some(l)) => {
                steps.extend((i..l).map(Step::Missing));
                i = l;
            }
            (None, None) => {
                steps.push(Step::Different(i, j));
                i += 1;
                j += 1;
            }
        }
    }
    steps.extend((i..expected.len()).map(Step::Missing));
    steps.extend((j..produced.len()).map(Step::Extra));
    steps
}

/// Compares outputs with expected lines. Returns the first difference (a stopped replay is
/// reported first: everything after it is unreliable) and, per produced output, the index in
/// `transcript.entries` of the expected line it matched.
fn compare(transcript: &Transcript, run: &Run) -> (Option<Difference>, Vec<Option<usize>>) {
    let indices: Vec<usize> = transcript
        .entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.direction.is_input())
        .map(|(index, _)| index)
        .collect();
    let expected: Vec<&Entry> = indices.iter().map(|&i| &transcript.entries[i]).collect();
    let steps = align(&expected, &run.produced, tolerance(transcript));

    let mut matched = vec![None; run.produced.len()];
    let mut first = run.stopped.clone();
    // The last expected line dealt with, for placing an extra output.
    let mut last_expected_line = 0;
    for step in steps {
        match step {
            Step::Match(i, j) => {
                matched[j] = Some(indices[i]);
                last_expected_line = expected[i].line;
            }
            Step::Different(i, j) => {
                first.get_or_insert_with(|| Difference::Different {
                    line: expected[i].line,
                    expected: expected[i].clone(),
                    actual: run.produced[j].output.clone(),
                });
                last_expected_line = expected[i].line;
            }
            Step::Missing(i) => {
                first.get_or_insert_with(|| Difference::Missing {
                    line: expected[i].line,
                    expected: expected[i].clone(),
                });
                last_expected_line = expected[i].line;
            }
            Step::Extra(j) => {
                let got = &run.produced[j];
                let input_line = got
                    .after_input
                    .and_then(|k| transcript.entries.get(k))
                    .map_or(0, |e| e.line);
                first.get_or_insert_with(|| Difference::Extra {
                    after_line: last_expected_line.max(input_line),
                    actual: got.output.clone(),
                });
            }
        }
    }
    (first, matched)
}

/// The entry to show for a produced output: the matched expected entry (its pattern and
/// comment) at the actual time, or the bare output.
fn produced_entry(transcript: &Transcript, produced: &Produced, matched: Option<usize>) -> Entry {
    match matched.and_then(|index| transcript.entries.get(index)) {
        Some(expected) => Entry {
            at: produced.output.at,
            ..expected.clone()
        },
        None => produced.output.to_entry(),
    }
}

fn actual_transcript(transcript: &Transcript, run: &Run, matched: &[Option<usize>]) -> Transcript {
    let mut peers = transcript.peers.clone();
    peers.extend(run.extra_peers.iter().cloned());
    let entries = run
        .events
        .iter()
        .filter_map(|event| match *event {
            Event::Input(index) => transcript.entries.get(index).cloned(),
            Event::Output(index) => run
                .produced
                .get(index)
                .map(|p| produced_entry(transcript, p, matched.get(index).copied().flatten())),
        })
        .collect();
    Transcript {
        peers,
        config: transcript.config.clone(),
        entries,
        end: transcript.end,
        tolerance: transcript.tolerance,
    }
}

/// The original text with the expected lines replaced by the actual outputs (see
/// [`replay_file_with`]). `transcript` must have been parsed from `original`.
fn bless_text(
    original: &str,
    transcript: &Transcript,
    run: &Run,
    matched: &[Option<usize>],
) -> String {
    let lines: Vec<&str> = original.lines().collect();
    let n = lines.len();
    // Indexed by 1-based line; slot n + 1 is the end of the file.
    let mut before: Vec<Vec<String>> = vec![Vec::new(); n + 2];
    let mut after: Vec<Vec<String>> = vec![Vec::new(); n + 2];
    let mut skip = vec![false; n + 2];

    let output_lines: Vec<usize> = transcript.expected_outputs().map(|e| e.line).collect();
    for &line in &output_lines {
        if let Some(slot) = skip.get_mut(line) {
            *slot = true;
        }
    }
    let first_output_in = |from: usize, to: usize| {
        output_lines
            .iter()
            .copied()
            .find(|&line| line > from && line < to)
    };
    let input_line = |index: usize| transcript.entries.get(index).map_or(n + 1, |e| e.line);
    let next_input_line = |index: usize| {
        transcript
            .entries
            .iter()
            .skip(index + 1)
            .find(|e| e.direction.is_input())
            .map_or(n + 1, |e| e.line)
    };
    let first_input_line = transcript.inputs().next().map_or(n + 1, |e| e.line);

    let direction_width = transcript
        .peers
        .iter()
        .chain(&run.extra_peers)
        .map(|p| p.name.len() + 5)
        .max()
        .unwrap_or(0)
        .max(9);
    let render = |index: usize, produced: &Produced| {
        let matched = matched.get(index).copied().flatten();
        let entry = produced_entry(transcript, produced, matched);
        let original_line = matched
            .and_then(|m| transcript.entries.get(m))
            .filter(|expected| expected.at == produced.output.at)
            .and_then(|expected| lines.get(expected.line.wrapping_sub(1)));
        match original_line {
            Some(text) => (*text).to_string(),
            None => entry_line(&entry, direction_width, 35),
        }
    };

    // Outputs go into the segment of the input they followed: where that segment's expected
    // lines were, else right after the input (or, before any input, right before the first).
    let mut index = 0;
    while index < run.produced.len() {
        let key = run.produced[index].after_input;
        let mut rendered = Vec::new();
        while index < run.produced.len() && run.produced[index].after_input == key {
            rendered.push(render(index, &run.produced[index]));
            index += 1;
        }
        match key {
            Some(k) => {
                let start = input_line(k);
                match first_output_in(start, next_input_line(k)) {
                    Some(line) => before[line].extend(rendered),
                    None => after[start.min(n + 1)].extend(rendered),
                }
            }
            None => match first_output_in(0, first_input_line) {
                Some(line) => before[line].extend(rendered),
                None => before[first_input_line.min(n + 1)].extend(rendered),
            },
        }
    }

    if !run.extra_peers.is_empty() {
        let first_entry_line = transcript
            .entries
            .iter()
            .map(|e| e.line)
            .min()
            .unwrap_or(n + 1)
            .min(n + 1);
        let declarations: Vec<String> = run.extra_peers.iter().map(peer_line).collect();
        before[first_entry_line].splice(0..0, declarations);
    }

    let mut out = String::with_capacity(original.len() + 64);
    for line in 1..=n + 1 {
        for text in &before[line] {
            out.push_str(text);
            out.push('\n');
        }
        if line <= n && !skip[line] {
            out.push_str(lines[line - 1]);
            out.push('\n');
        }
        for text in &after[line] {
            out.push_str(text);
            out.push('\n');
        }
    }
    out
}
