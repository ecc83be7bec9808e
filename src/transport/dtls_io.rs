//! The `[[dtls]]` listeners' sockets around the sans-IO [`DtlsListener`]s: binds them, reads
//! datagrams in the driver's loop (no task, no queue, as for plain UDP), writes what the
//! listeners want sent, and hands the decrypted frames to the driver with the identity each
//! association proved, in the engine's terms ([`Identity`]).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;

use thiserror::Error;
use tokio::net::UdpSocket;

use super::dtls::{
    ClientRoots, DtlsEvent, DtlsListener, DtlsSettings, PskTable, ServerCertificate,
};
use crate::config::DtlsConfig;
use crate::engine::auth::Identity;

/// Datagrams read from one socket before the others (and the engine) get a turn.
const READ_BURST: usize = 64;
/// Longest datagram read (DTLS records of MQTT-SN frames are far shorter).
const MAX_DATAGRAM: usize = 4096;

/// Why a DTLS listener could not be set up.
#[derive(Debug, Error)]
#[error("dtls {bind}: {what}")]
pub struct DtlsSetupError {
    /// The configured address.
    pub bind: SocketAddr,
    /// What failed (file, key or socket), never a key itself.
    pub what: String,
}

struct Endpoint {
    socket: UdpSocket,
    listener: DtlsListener,
    config: DtlsConfig,
    local: SocketAddr,
    /// The identities of the PSK table in force.
    identities: Vec<Arc<str>>,
}

/// A frame that came out of an association.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecuredFrame {
    /// The device's UDP address.
    pub peer: SocketAddr,
    /// What its association proved (`None`: a certificate-mode client without a certificate,
    /// let in because no CA is configured).
    pub identity: Option<Identity>,
    /// The decrypted MQTT-SN frame.
    pub frame: Vec<u8>,
}

/// The PSK tables of every listener, read but not yet in force.
pub struct PskTables(Vec<PskTable>);

impl PskTables {
    /// Every identity in them.
    pub fn identities(&self) -> Vec<Arc<str>> {
        self.0.iter().flat_map(identities).collect()
    }
}

/// Every `[[dtls]]` listener.
pub struct DtlsTransport {
    endpoints: Vec<Endpoint>,
    /// Which listener holds the association of a peer, and its identity in the engine's terms
    /// (converted once, at the handshake). Bounded by the listeners' `max_associations`.
    peers: HashMap<SocketAddr, (usize, Option<Identity>)>,
    buf: Vec<u8>,
    /// Sends the socket refused (full buffer, unreachable).
    pub send_errors: u64,
    /// Datagrams longer than any record a device sends, dropped unread.
    pub too_long: u64,
}

fn setup_error(bind: SocketAddr, what: impl std::fmt::Display) -> DtlsSetupError {
    DtlsSetupError {
        bind,
        what: what.to_string(),
    }
}

fn psk_table(config: &DtlsConfig) -> Result<PskTable, DtlsSetupError> {
    match &config.psk_file {
        Some(path) => PskTable::load(path).map_err(|e| setup_error(config.bind, e)),
        None => PskTable::parse("").map_err(|e| setup_error(config.bind, e)),
    }
}

fn identities(table: &PskTable) -> Vec<Arc<str>> {
    table.identities().map(Arc::from).collect()
}

fn settings(config: &DtlsConfig, psk: PskTable) -> Result<DtlsSettings, DtlsSetupError> {
    let mut settings = DtlsSettings::psk_only(Arc::new(psk));
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        settings.certificate =
            Some(ServerCertificate::load(cert, key).map_err(|e| setup_error(config.bind, e))?);
    }
    if let Some(ca) = &config.ca_file {
        settings.client_roots =
            Some(ClientRoots::load(ca).map_err(|e| setup_error(config.bind, e))?);
    }
    settings.require_certificate = config.require_certificate;
    settings.max_associations = config.max_associations;
    settings.max_handshakes = config.max_handshakes;
    settings.handshake_timeout =
        std::time::Duration::from_millis(config.handshake_timeout.as_millis());
    settings.idle_timeout = std::time::Duration::from_millis(config.idle_timeout.as_millis());
    Ok(settings)
}

fn engine_identity(identity: &super::dtls::Identity) -> Option<Identity> {
    match identity {
        super::dtls::Identity::Psk(id) => Some(Identity::Psk(id.clone())),
        super::dtls::Identity::Certificate { names } => {
            Some(Identity::Certificate(names.iter().cloned().collect()))
        }
        super::dtls::Identity::Anonymous => None,
    }
}

impl DtlsTransport {
    /// Loads every listener's keys and certificates and binds its socket.
    ///
    /// # Errors
    /// [`DtlsSetupError`] naming the listener and what failed.
    pub fn bind(configs: &[DtlsConfig]) -> Result<DtlsTransport, DtlsSetupError> {
        let mut endpoints = Vec::with_capacity(configs.len());
        for config in configs {
            let psk = psk_table(config)?;
            let identities = identities(&psk);
            let listener = DtlsListener::new(settings(config, psk)?, random_secret())
                .map_err(|e| setup_error(config.bind, e))?;
            // The plain listeners' socket setup: large kernel buffers, so that a burst of
            // handshakes is not dropped while the loop is busy.
            let std_socket = super::udp::open(&crate::config::UdpConfig {
                bind: config.bind,
                broadcast: None,
                multicast_interface: None,
                max_frame: MAX_DATAGRAM,
            })
            .map_err(|e| setup_error(config.bind, e))?;
            let socket =
                UdpSocket::from_std(std_socket).map_err(|e| setup_error(config.bind, e))?;
            let local = socket
                .local_addr()
                .map_err(|e| setup_error(config.bind, e))?;
            endpoints.push(Endpoint {
                socket,
                listener,
                config: config.clone(),
                local,
                identities,
            });
        }
        Ok(DtlsTransport {
            endpoints,
            peers: HashMap::new(),
            buf: vec![0; MAX_DATAGRAM + 1],
            send_errors: 0,
            too_long: 0,
        })
    }

    /// The addresses the listeners are bound to.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoints.iter().map(|e| e.local).collect()
    }

    /// The listener an established peer talks to (its local address), for the recorder.
    pub fn local_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        let (index, _) = self.peers.get(&peer)?;
        self.endpoints.get(*index).map(|e| e.local)
    }

    /// Every PSK identity of every listener: ClientIds only DTLS with that identity may use.
    pub fn psk_identities(&self) -> Vec<Arc<str>> {
        self.endpoints
            .iter()
            .flat_map(|e| e.identities.iter().cloned())
            .collect()
    }

    /// The key files of every listener (checked for permissions like other secrets).
    pub fn secret_files(&self) -> Vec<std::path::PathBuf> {
        secret_files(self.endpoints.iter().map(|e| &e.config))
    }

    /// Reads every `psk_file` again (for a reload), without putting anything in force.
    ///
    /// # Errors
    /// The first file that does not load.
    pub fn load_psk(&self) -> Result<PskTables, String> {
        let tables = self
            .endpoints
            .iter()
            .map(|e| psk_table(&e.config).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PskTables(tables))
    }

    /// Puts tables from [`DtlsTransport::load_psk`] in force: associations whose identity is
    /// gone or whose key changed are closed.
    pub fn apply_psk(&mut self, tables: PskTables) {
        for (endpoint, table) in self.endpoints.iter_mut().zip(tables.0) {
            endpoint.identities = identities(&table);
            endpoint.listener.set_psk(Arc::new(table));
        }
    }

    /// Waits until a listener's socket has a datagram (for ever if there are none).
    pub async fn readable(&self) {
        std::future::poll_fn(|cx| {
            for endpoint in &self.endpoints {
                if endpoint.socket.poll_recv_ready(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Reads what has arrived (a bounded burst per socket) into the listeners.
    pub fn recv(&mut self, now: std::time::Instant) -> usize {
        let mut taken = 0;
        for endpoint in &mut self.endpoints {
            for _ in 0..READ_BURST {
                match endpoint.socket.try_recv_from(&mut self.buf) {
                    Ok((n, from)) if n <= MAX_DATAGRAM => {
                        endpoint.listener.handle_datagram(now, from, &self.buf[..n]);
                        taken += 1;
                    }
                    // Longer than any record a device sends: not taken as one.
                    Ok(_) => {
                        self.too_long += 1;
                        taken += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        taken
    }

    /// The next frame from a device, after [`DtlsTransport::recv`] or a timeout.
    pub fn poll_frame(&mut self) -> Option<SecuredFrame> {
        for (index, endpoint) in self.endpoints.iter_mut().enumerate() {
            while let Some(event) = endpoint.listener.poll_event() {
                match event {
                    DtlsEvent::Established { peer, identity } => {
                        tracing::debug!(%peer, identity = ?identity, "dtls association established");
                        self.peers.insert(peer, (index, engine_identity(&identity)));
                    }
                    DtlsEvent::Frame {
                        peer,
                        identity,
                        frame,
                    } => {
                        // The cached conversion, if it is this listener's association (a
                        // device may talk to two listeners from one address).
                        let identity = match self.peers.get(&peer) {
                            Some((at, known)) if *at == index => known.clone(),
                            _ => {
                                let converted = engine_identity(&identity);
                                self.peers.insert(peer, (index, converted.clone()));
                                converted
                            }
                        };
                        return Some(SecuredFrame {
                            peer,
                            identity,
                            frame,
                        });
                    }
                    DtlsEvent::Closed { peer, reason } => {
                        tracing::debug!(%peer, reason, "dtls association closed");
                        if self.peers.get(&peer).is_some_and(|(at, _)| *at == index) {
                            self.peers.remove(&peer);
                        }
                    }
                    DtlsEvent::HandshakeFailed { peer, reason } => {
                        tracing::info!(%peer, %reason, "dtls handshake failed");
                    }
                }
            }
        }
        None
    }

    /// Encrypts a frame for `to` (dropped, counted, if it has no association any more).
    pub fn send(&mut self, to: SocketAddr, frame: &[u8]) {
        let Some(&(index, _)) = self.peers.get(&to) else {
            self.send_errors += 1;
            return;
        };
        if let Some(endpoint) = self.endpoints.get_mut(index) {
            if endpoint.listener.send(to, frame).is_err() {
                self.send_errors += 1;
            }
        }
        self.flush();
    }

    /// Closes the association with `peer` (the device lost its authorization).
    pub fn close(&mut self, peer: SocketAddr) {
        if let Some((index, _)) = self.peers.remove(&peer) {
            if let Some(endpoint) = self.endpoints.get_mut(index) {
                endpoint.listener.close(peer);
            }
        }
        self.flush();
    }

    /// Writes every datagram the listeners want sent. A datagram the socket cannot take now
    /// is dropped: DTLS retransmits handshakes, and MQTT-SN its own messages.
    pub fn flush(&mut self) {
        for endpoint in &mut self.endpoints {
            while let Some((to, datagram)) = endpoint.listener.poll_transmit() {
                if endpoint.socket.try_send_to(&datagram, to).is_err() {
                    self.send_errors += 1;
                }
            }
        }
    }

    /// The earliest retransmission or timeout of any listener.
    pub fn poll_timeout(&self) -> Option<std::time::Instant> {
        self.endpoints
            .iter()
            .filter_map(|e| e.listener.poll_timeout())
            .min()
    }

    /// Runs the listeners' timers that are due.
    pub fn handle_timeout(&mut self, now: std::time::Instant) {
        for endpoint in &mut self.endpoints {
            endpoint.listener.handle_timeout(now);
        }
    }

    /// The listeners' counters, added up.
    pub fn counters(&self) -> super::dtls::DtlsCounters {
        let mut total = super::dtls::DtlsCounters::default();
        for endpoint in &self.endpoints {
            total += endpoint.listener.counters();
        }
        total
    }
}

/// The files of these listeners that hold keys.
pub fn secret_files<'a>(configs: impl Iterator<Item = &'a DtlsConfig>) -> Vec<std::path::PathBuf> {
    configs
        .flat_map(|c| [c.psk_file.clone(), c.key_file.clone()])
        .flatten()
        .collect()
}

/// A cookie secret from the operating system's randomness (a fixed one only if the system
/// has none to give, which leaves the cookies forgeable but the handshakes still sound).
fn random_secret() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; 32];
    if ring::rand::SystemRandom::new().fill(&mut secret).is_err() {
        tracing::warn!("no system randomness for the DTLS cookie secret");
    }
    secret
}
