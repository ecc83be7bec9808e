//! One peer's DTLS state: a dimpl server instance and what the listener knows about it
//! (phase, identity, deadlines), plus the dimpl configurations that all associations of a
//! listener share and the PSK resolver that tells the listener which identity a client used.
//!
//! Why the extra round trip. The listener answers a first ClientHello with its own stateless
//! HelloVerifyRequest, so nothing is kept for a client that has not shown it receives at its
//! address. dimpl cannot simply take over after that. With its cookie check off it starts a
//! handshake only from a ClientHello at message_seq 0, but the client's second one is at 1;
//! rewriting that would put the wrong message_seq into the Finished transcript and make dimpl
//! answer at message_seq 0 where the client expects 1. With its check on, dimpl only accepts
//! its own cookie, made with a per-instance secret that cannot be set. So a new association's
//! dimpl server is first given synthetic cookie-less ClientHellos at message_seq 0..n-1, whose
//! HelloVerifyRequests are thrown away; the client's real ClientHello then arrives at the
//! message_seq dimpl expects, dimpl finds our cookie is not its own and answers with a second
//! HelloVerifyRequest (message_seq n), and the client's next ClientHello, with dimpl's cookie,
//! starts the handshake proper (the transcript restarts with it on both sides). RFC 6347
//! allows repeated cookie exchanges and OpenSSL and mbedTLS clients follow them; dimpl's own
//! client does not (it accepts one HelloVerifyRequest only), so dimpl clients cannot connect.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use dimpl::crypto::{CryptoProvider, Dtls12CipherSuite, SupportedDtls12CipherSuite};
use dimpl::{Config, Dtls, Output, PskResolver};

use super::hello::{self, AuthMode};
use super::psk::PskTable;
use super::{DtlsSettings, Identity};

/// The most dimpl queues of incoming datagrams per association (its default). Also sizes the
/// poll buffer: a client certificate cannot be larger than what fits in the queue.
pub(crate) const MAX_QUEUE_RX: usize = 30;
/// The largest plaintext of one record (RFC 6347 §4.1: 2^14 bytes), so the largest frame.
pub(crate) const MAX_FRAME: usize = 1 << 14;
/// Datagrams larger than this are dropped unread: one record of the largest frame, with its
/// header, explicit nonce, tag and room to spare.
pub(crate) const MAX_DATAGRAM: usize = MAX_FRAME + 2048;
/// dimpl's output buffer: one record's plaintext, for a PSK-only listener.
pub(crate) const POLL_BUFFER: usize = MAX_DATAGRAM;
/// With certificates: dimpl copies a peer certificate into the poll buffer and asserts that it
/// fits (it does not ask for a bigger buffer as it does for other outputs), so the buffer must
/// hold the largest certificate the receive queue can deliver.
pub(crate) const POLL_BUFFER_CERTIFICATES: usize = MAX_DATAGRAM * (MAX_QUEUE_RX + 2);
/// A ClientHello carrying our cookie at a message_seq above this is dropped: a real client
/// is at 1 (or 2 or 3 after lost HelloVerifyRequests), and each step costs a synthetic hello.
pub(crate) const MAX_HELLO_SEQ: u16 = 4;
/// Outputs taken from dimpl per call, a guard against a loop in the engine.
const MAX_OUTPUTS: usize = 512;

/// The PSK identity dimpl asked the resolver for during the last call into an association.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    /// The table's name for it, `None` if the table has no such identity.
    pub name: Option<Arc<str>>,
    /// A printable, shortened form of what the client sent, for failure reasons.
    pub shown: String,
    /// The table the key came from.
    pub table: Arc<PskTable>,
}

/// What the resolver shares with its listener: the table in force (swapped on reload, so
/// that even handshakes in flight use the new one from their next key lookup on) and a note
/// of the last identity asked for.
struct ResolverState {
    table: Arc<PskTable>,
    asked: Option<Asked>,
}

type Shared = Arc<Mutex<ResolverState>>;

fn lock(shared: &Shared) -> MutexGuard<'_, ResolverState> {
    // Nothing panics while holding it; a poisoned lock still holds a usable value.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Looks keys up in the PSK table and notes which identity was asked for. dimpl calls it
/// synchronously inside `handle_packet` of the association being driven, and the listener
/// drives one association at a time, so the note after a call belongs to that association.
/// (A dimpl `Config` per handshake would avoid the shared note, but building a `Config`
/// runs dimpl's provider self-tests: about 4 ms with the full RustCrypto provider.)
struct TableResolver {
    shared: Shared,
}

impl PskResolver for TableResolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        let shown: String = String::from_utf8_lossy(identity)
            .chars()
            .take(64)
            .flat_map(char::escape_debug)
            .collect();
        let mut state = lock(&self.shared);
        let table = state.table.clone();
        state.asked = Some(Asked {
            name: table.identity(identity),
            shown,
            table: table.clone(),
        });
        table.key(identity).map(<[u8]>::to_vec)
    }
}

/// dimpl's RustCrypto provider cut down to what one mode negotiates. dimpl runs self-tests
/// over every suite and key exchange group of a provider when a `Config` is built; without
/// the unused ones (for PSK: all of ECDHE) a listener is built in microseconds, not ms.
fn provider(mode: AuthMode) -> CryptoProvider {
    static PSK_SUITES: OnceLock<Vec<&'static dyn SupportedDtls12CipherSuite>> = OnceLock::new();
    static ECDHE_SUITES: OnceLock<Vec<&'static dyn SupportedDtls12CipherSuite>> = OnceLock::new();
    let mut provider = dimpl::crypto::rust_crypto::default_provider();
    let all = provider.cipher_suites;
    let pick = |psk: bool| -> Vec<&'static dyn SupportedDtls12CipherSuite> {
        all.iter()
            .copied()
            .filter(|suite| suite.suite().is_psk() == psk)
            .collect()
    };
    match mode {
        AuthMode::Psk => {
            provider.cipher_suites = PSK_SUITES.get_or_init(|| pick(true));
            provider.kx_groups = &[];
        }
        AuthMode::Certificate => {
            provider.cipher_suites = ECDHE_SUITES.get_or_init(|| pick(false));
        }
    }
    provider
}

/// The dimpl configurations shared by a listener's associations.
pub(crate) struct Engines {
    pub psk: Arc<Config>,
    pub certificate: Option<Arc<Config>>,
    shared: Shared,
}

fn base(settings: &DtlsSettings, mode: AuthMode) -> dimpl::ConfigBuilder {
    Config::builder()
        .with_crypto_provider(provider(mode))
        .mtu(settings.mtu)
        .max_queue_rx(MAX_QUEUE_RX)
        .handshake_timeout(settings.handshake_timeout)
        // The association's first step is always a (thrown away) HelloVerifyRequest.
        .use_server_cookie(true)
        .dtls13_cipher_suites(&[])
}

impl Engines {
    pub fn new(settings: &DtlsSettings) -> Result<Engines, dimpl::Error> {
        let shared = Arc::new(Mutex::new(ResolverState {
            table: settings.psk.clone(),
            asked: None,
        }));
        let resolver = TableResolver {
            shared: shared.clone(),
        };
        let psk = Arc::new(
            base(settings, AuthMode::Psk)
                .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
                .require_client_certificate(false)
                .with_psk_server(None, Arc::new(resolver))
                .build()?,
        );
        let certificate = match settings.certificate {
            None => None,
            Some(_) => Some(Arc::new(
                base(settings, AuthMode::Certificate)
                    .dtls12_cipher_suites(&[
                        Dtls12CipherSuite::ECDHE_ECDSA_AES128_GCM_SHA256,
                        Dtls12CipherSuite::ECDHE_ECDSA_AES256_GCM_SHA384,
                        Dtls12CipherSuite::ECDHE_ECDSA_CHACHA20_POLY1305_SHA256,
                    ])
                    // dimpl requests a certificate only when it requires one.
                    .require_client_certificate(
                        settings.require_certificate || settings.client_roots.is_some(),
                    )
                    .build()?,
            )),
        };
        Ok(Engines {
            psk,
            certificate,
            shared,
        })
    }

    /// Key lookups use `table` from now on.
    pub fn set_psk(&self, table: &Arc<PskTable>) {
        lock(&self.shared).table = table.clone();
    }

    pub fn take_asked(&self) -> Option<Asked> {
        lock(&self.shared).asked.take()
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Phase {
    Handshaking,
    Established(Arc<Identity>),
}

/// One peer.
pub(crate) struct Association {
    /// Unique per listener: tells a timer entry for this association from a stale one for an
    /// earlier association of the same address.
    pub id: u64,
    pub dtls: Dtls,
    pub mode: AuthMode,
    /// From the ClientHello that created the association: a ClientHello with another random
    /// is a new handshake, not a retransmission.
    pub client_random: [u8; 32],
    pub phase: Phase,
    /// The identity dimpl asked for, and the table that had (or lacked) its key.
    pub asked: Option<Asked>,
    /// Names from a validated client certificate.
    pub peer_names: Option<Vec<Arc<str>>>,
    pub handshake_deadline: Option<Instant>,
    /// The last authenticated record from the peer (or the handshake's completion).
    pub last_activity: Instant,
    pub dimpl_deadline: Option<Instant>,
    /// Where this association sits in the timer table.
    pub scheduled: Option<Instant>,
}

/// What one drain of dimpl's outputs produced.
#[derive(Debug, Default)]
pub(crate) struct Drained {
    pub packets: Vec<Vec<u8>>,
    pub frames: Vec<Vec<u8>>,
    pub connected: bool,
    pub close_notify: bool,
    pub peer_cert: Option<Vec<u8>>,
}

impl Association {
    /// A new association for a ClientHello with a valid cookie, its dimpl server brought to
    /// the ClientHello's message_seq (see the module documentation).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        now: Instant,
        mode: AuthMode,
        hello: &hello::ClientHello<'_>,
        engines: &Engines,
        settings: &DtlsSettings,
        buf: &mut Vec<u8>,
    ) -> Result<Association, String> {
        let dtls = match (mode, &engines.certificate, &settings.certificate) {
            (AuthMode::Certificate, Some(config), Some(certificate)) => {
                Dtls::new_12(config.clone(), certificate.to_dimpl(), now)
            }
            (AuthMode::Certificate, _, _) => return Err("no server certificate".to_owned()),
            (AuthMode::Psk, _, _) => Dtls::new_12_psk(engines.psk.clone(), now),
        };
        let mut client_random = [0u8; 32];
        client_random.copy_from_slice(hello.random);
        let mut association = Association {
            id,
            dtls,
            mode,
            client_random,
            phase: Phase::Handshaking,
            asked: None,
            peer_names: None,
            handshake_deadline: now.checked_add(settings.handshake_timeout),
            last_activity: now,
            dimpl_deadline: None,
            scheduled: None,
        };
        // dimpl sets its server random on the first handle_timeout; it must come first.
        association
            .dtls
            .handle_timeout(now)
            .map_err(|e| e.to_string())?;
        for seq in 0..hello.message_seq {
            association
                .dtls
                .handle_packet(&hello::synthetic_client_hello(seq))
                .map_err(|e| e.to_string())?;
            // The HelloVerifyRequest to a ClientHello the client never sent.
            let _discarded = association.drain(buf);
        }
        Ok(association)
    }

    /// Takes every output dimpl has, up to its `Timeout`.
    pub fn drain(&mut self, buf: &mut Vec<u8>) -> Drained {
        let mut drained = Drained::default();
        for _ in 0..MAX_OUTPUTS {
            match self.dtls.poll_output(buf) {
                Output::Packet(packet) => drained.packets.push(packet.to_vec()),
                Output::BufferTooSmall { needed } => {
                    if needed > POLL_BUFFER_CERTIFICATES {
                        break;
                    }
                    buf.resize(needed, 0);
                }
                Output::Timeout(at) => {
                    self.dimpl_deadline = Some(at);
                    break;
                }
                Output::Connected => drained.connected = true,
                Output::PeerCert(der) => drained.peer_cert = Some(der.to_vec()),
                Output::ApplicationData(data) => drained.frames.push(data.to_vec()),
                Output::CloseNotify => drained.close_notify = true,
                // SRTP keying material, and whatever later dimpl versions add.
                _ => {}
            }
        }
        drained
    }

    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established(_))
    }

    /// When the listener must next look at this association.
    pub fn next_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        let own = match self.phase {
            Phase::Handshaking => self.handshake_deadline,
            Phase::Established(_) => self.last_activity.checked_add(idle_timeout),
        };
        match (own, self.dimpl_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
