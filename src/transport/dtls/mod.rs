//! DTLS 1.2 for the `[[dtls]]` listeners: a sans-IO server-side demultiplexer that takes the
//! datagrams of many peers on one UDP socket and gives back decrypted MQTT-SN frames, each
//! tagged with the peer's authenticated identity, and the ciphertext to send. The DTLS engine
//! is `dimpl` (one server instance per association); this module adds what dimpl leaves to its
//! user: the stateless cookie exchange before any per-peer state, the bounds on associations
//! and half-open handshakes, handshake and idle timeouts, PSK identity binding, and client
//! certificate validation. No sockets, tasks or clock reads (one exception: the wall clock is
//! read once, to map the caller's `Instant`s to the dates that certificate validity needs).
//!
//! Call order, as for the engine: after every `handle_*`, `send`, `close` or `set_psk`, drain
//! `poll_transmit` (datagrams to send) and `poll_event`, then sleep until `poll_timeout` or the
//! next datagram.

mod association;
mod cert;
mod cookie;
mod hello;
mod listener;
mod psk;
mod timers;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use cert::{CertError, ClientRoots, ServerCertificate};
pub use listener::{DtlsListener, SendError, SetupError};
pub use psk::{PskFileError, PskTable};

/// What a `[[dtls]]` listener is configured with.
#[derive(Debug, Clone)]
pub struct DtlsSettings {
    /// Keys of the PSK clients; replaced at run time with [`DtlsListener::set_psk`].
    pub psk: Arc<PskTable>,
    /// With a certificate, ECDHE-ECDSA suites are offered besides the PSK suite.
    pub certificate: Option<ServerCertificate>,
    /// CA roots for client certificates (`ca_file`). With roots, certificate clients must
    /// present a certificate that chains to one of them (dimpl cannot ask for an optional one).
    pub client_roots: Option<ClientRoots>,
    /// Refuse certificate-mode clients without a valid certificate (PSK clients are not
    /// affected). Without roots this refuses every certificate-mode client.
    pub require_certificate: bool,
    /// Associations in total, half-open handshakes included.
    pub max_associations: usize,
    /// Half-open handshakes (cookie verified, handshake not complete).
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    /// An established association without an authenticated record from the peer for this
    /// long is closed.
    pub idle_timeout: Duration,
    /// The largest datagram the listener sends.
    pub mtu: usize,
}

impl DtlsSettings {
    /// Settings for PSK clients only, with defaults that a normal deployment never meets.
    pub fn psk_only(psk: Arc<PskTable>) -> Self {
        DtlsSettings {
            psk,
            certificate: None,
            client_roots: None,
            require_certificate: false,
            max_associations: 10_000,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            mtu: 1200,
        }
    }
}

/// Who the peer of an association proved to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The PSK identity the client authenticated with.
    Psk(Arc<str>),
    /// A certificate that chains to the configured roots: the subject CN first, then the
    /// DNS, e-mail, URI and IP subject alternative names.
    Certificate { names: Vec<Arc<str>> },
    /// A certificate-mode client that presented no certificate, allowed because neither
    /// `require_certificate` nor client roots are configured.
    Anonymous,
}

/// What happened, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsEvent {
    /// The handshake completed; frames from this peer follow.
    Established {
        peer: SocketAddr,
        identity: Arc<Identity>,
    },
    /// One decrypted record: one MQTT-SN frame.
    Frame {
        peer: SocketAddr,
        identity: Arc<Identity>,
        frame: Vec<u8>,
    },
    /// An established association ended (the listener forgot it).
    Closed {
        peer: SocketAddr,
        reason: &'static str,
    },
    /// A handshake that had passed the cookie exchange failed or timed out.
    HandshakeFailed { peer: SocketAddr, reason: String },
}

/// Counters and gauges, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DtlsCounters {
    /// Associations created (a ClientHello with a valid cookie).
    pub handshakes_started: u64,
    pub handshakes_completed: u64,
    /// Failed handshakes, timeouts included.
    pub handshakes_failed: u64,
    pub handshakes_timed_out: u64,
    pub hello_verify_sent: u64,
    /// ClientHellos with a cookie that was not ours, was for other parameters, or expired.
    pub cookies_rejected: u64,
    /// ClientHellos offering no suite this listener can negotiate.
    pub hellos_unacceptable: u64,
    /// Datagrams dropped: garbage, truncated, too large, for no association and not a
    /// ClientHello, and, for established associations, those that yielded nothing (dimpl
    /// silently drops undecryptable and replayed records).
    pub records_dropped: u64,
    /// Valid-cookie ClientHellos refused because `max_associations` was reached.
    pub associations_refused_full: u64,
    /// Valid-cookie ClientHellos refused because `max_handshakes` were half-open.
    pub handshakes_refused_busy: u64,
    pub idle_closed: u64,
    pub closed_by_peer: u64,
    /// Associations closed because a PSK reload removed their identity or changed its key.
    pub psk_revoked: u64,
    /// Established associations that failed in dimpl (each also reported as `Closed`).
    pub protocol_errors: u64,
    pub frames_received: u64,
    pub frames_sent: u64,
    /// Gauge: associations, half-open ones included.
    pub associations: u64,
    /// Gauge: half-open handshakes.
    pub handshaking: u64,
}

impl std::ops::AddAssign for DtlsCounters {
    /// Adds another listener's counters (totals over every `[[dtls]]` listener).
    fn add_assign(&mut self, other: DtlsCounters) {
        self.handshakes_started += other.handshakes_started;
        self.handshakes_completed += other.handshakes_completed;
        self.handshakes_failed += other.handshakes_failed;
        self.handshakes_timed_out += other.handshakes_timed_out;
        self.hello_verify_sent += other.hello_verify_sent;
        self.cookies_rejected += other.cookies_rejected;
        self.hellos_unacceptable += other.hellos_unacceptable;
        self.records_dropped += other.records_dropped;
        self.associations_refused_full += other.associations_refused_full;
        self.handshakes_refused_busy += other.handshakes_refused_busy;
        self.idle_closed += other.idle_closed;
        self.closed_by_peer += other.closed_by_peer;
        self.psk_revoked += other.psk_revoked;
        self.protocol_errors += other.protocol_errors;
        self.frames_received += other.frames_received;
        self.frames_sent += other.frames_sent;
        self.associations += other.associations;
        self.handshaking += other.handshaking;
    }
}
