//! The listener: routes each datagram to its peer's association or, for a peer without one,
//! through the stateless cookie exchange; turns dimpl's outputs into events and datagrams;
//! enforces the bounds and timeouts. See the parent module for the call order.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rustls::pki_types::UnixTime;
use tracing::debug;

use super::association::{
    Association, Drained, Engines, Phase, MAX_DATAGRAM, MAX_FRAME, MAX_HELLO_SEQ, POLL_BUFFER,
    POLL_BUFFER_CERTIFICATES,
};
use super::cookie::CookieJar;
use super::hello::{self, AuthMode, ClientHello};
use super::psk::PskTable;
use super::timers::TimerTable;
use super::{DtlsCounters, DtlsEvent, DtlsSettings, Identity};

/// Datagrams queued for sending beyond which HelloVerifyRequests are no longer queued: a
/// caller that stops draining must not let a flood of ClientHellos grow memory.
const MAX_QUEUED_TRANSMITS: usize = 16_384;

/// Why [`DtlsListener::send`] sent nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no established DTLS association with {0}")]
    NotConnected(SocketAddr),
    /// Larger than one record can carry (dimpl would send it anyway, and the peer refuse it).
    #[error("a {len}-byte frame does not fit in one DTLS record (at most {MAX_FRAME} bytes)")]
    TooLarge { len: usize },
}

/// Settings that dimpl refuses (an MTU below 64 bytes, a zero handshake timeout).
#[derive(Debug, thiserror::Error)]
#[error("invalid DTLS settings: {0}")]
pub struct SetupError(String);

/// The DTLS side of one `[[dtls]]` listener socket.
pub struct DtlsListener {
    settings: DtlsSettings,
    engines: Engines,
    cookies: CookieJar,
    associations: HashMap<SocketAddr, Association>,
    handshaking: usize,
    timers: TimerTable,
    next_id: u64,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DtlsEvent>,
    counters: DtlsCounters,
    /// dimpl's output buffer, shared by all associations.
    buf: Vec<u8>,
    /// The first `Instant` seen and the wall clock then: certificate validity is checked
    /// against dates, and this keeps them consistent with the caller's clock.
    wall: Option<(Instant, SystemTime)>,
}

impl std::fmt::Debug for DtlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsListener")
            .field("associations", &self.associations.len())
            .field("handshaking", &self.handshaking)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl DtlsListener {
    /// A listener with `cookie_secret` (random, from the driver) as the key of its cookies.
    pub fn new(settings: DtlsSettings, cookie_secret: [u8; 32]) -> Result<Self, SetupError> {
        let engines = Engines::new(&settings).map_err(|e| SetupError(e.to_string()))?;
        let buffer = if settings.certificate.is_some() {
            POLL_BUFFER_CERTIFICATES
        } else {
            POLL_BUFFER
        };
        Ok(DtlsListener {
            settings,
            engines,
            cookies: CookieJar::new(cookie_secret),
            associations: HashMap::new(),
            handshaking: 0,
            timers: TimerTable::default(),
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            counters: DtlsCounters::default(),
            buf: vec![0; buffer],
            wall: None,
        })
    }

    /// One datagram from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.anchor(now);
        if datagram.len() > MAX_DATAGRAM {
            self.counters.records_dropped += 1;
            return;
        }
        let hello = hello::parse_client_hello(datagram);
        if let Some(association) = self.associations.get(&from) {
            match (&hello, &association.phase) {
                (None, _) => return self.feed(now, from, datagram),
                (Some(h), Phase::Handshaking) if h.random == association.client_random => {
                    // A retransmission, or the ClientHello answering dimpl's cookie.
                    return self.feed(now, from, datagram);
                }
                (Some(h), Phase::Established(_)) if h.random == association.client_random => {
                    // A late copy of the hello that started this association: dimpl would
                    // take it for renegotiation and fail the association.
                    self.counters.records_dropped += 1;
                    return;
                }
                // Another random: the client restarted. Only a valid cookie replaces the
                // association, so a spoofed hello cannot end it.
                (Some(_), _) => {}
            }
        }
        match hello {
            Some(hello) => self.stateless_hello(now, from, datagram.len(), &hello, datagram),
            None => self.counters.records_dropped += 1,
        }
    }

    /// Timers due at `now`: dimpl's retransmissions, handshake and idle timeouts.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.anchor(now);
        for (id, peer) in self.timers.take_due(now) {
            let Some(association) = self.associations.get_mut(&peer) else {
                continue;
            };
            if association.id != id {
                continue;
            }
            association.scheduled = None;
            match &association.phase {
                Phase::Handshaking if association.handshake_deadline.is_some_and(|d| now >= d) => {
                    self.counters.handshakes_timed_out += 1;
                    self.fail(peer, "handshake timed out".to_owned());
                    continue;
                }
                Phase::Established(_)
                    if association
                        .last_activity
                        .checked_add(self.settings.idle_timeout)
                        .is_some_and(|d| now >= d) =>
                {
                    self.counters.idle_closed += 1;
                    self.close_with_notify(peer, Some("idle timeout"));
                    continue;
                }
                _ => {}
            }
            if association.dimpl_deadline.is_some_and(|d| now >= d) {
                let result = association.dtls.handle_timeout(now);
                self.after_engine(now, peer, result, false);
            } else {
                self.schedule(peer);
            }
        }
    }

    /// The earliest instant at which `handle_timeout` has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.earliest()
    }

    /// The next datagram to send, with its destination.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    /// Sends one MQTT-SN frame as one record to an established peer.
    pub fn send(&mut self, to: SocketAddr, frame: &[u8]) -> Result<(), SendError> {
        let Some(association) = self.associations.get_mut(&to) else {
            return Err(SendError::NotConnected(to));
        };
        if !association.is_established() {
            return Err(SendError::NotConnected(to));
        }
        if frame.len() > MAX_FRAME {
            return Err(SendError::TooLarge { len: frame.len() });
        }
        if let Err(e) = association.dtls.send_application_data(frame) {
            debug!(peer = %to, error = %e, "DTLS send failed");
            self.counters.protocol_errors += 1;
            self.forget(to, Some("DTLS error while sending"));
            return Err(SendError::NotConnected(to));
        }
        self.counters.frames_sent += 1;
        let drained = association.drain(&mut self.buf);
        self.queue_packets(to, drained.packets);
        self.schedule(to);
        Ok(())
    }

    /// Sends close_notify (if established) and forgets the peer. No event: the caller asked.
    pub fn close(&mut self, peer: SocketAddr) {
        self.close_with_notify(peer, None);
    }

    /// Replaces the PSK table: new handshakes use it; established associations whose
    /// identity it no longer has, or whose key it changed, are closed (each a `Closed` event).
    pub fn set_psk(&mut self, psk: Arc<PskTable>) {
        self.engines.set_psk(&psk);
        self.settings.psk = psk.clone();
        let mut revoked: Vec<SocketAddr> = self
            .associations
            .iter()
            .filter(|(_, a)| match &a.phase {
                Phase::Established(identity) => match (&**identity, &a.asked) {
                    (Identity::Psk(name), Some(asked)) => !psk.same_key(&asked.table, name),
                    _ => false,
                },
                Phase::Handshaking => false,
            })
            .map(|(peer, _)| *peer)
            .collect();
        // In address order, not the map's.
        revoked.sort();
        for peer in revoked {
            self.counters.psk_revoked += 1;
            self.close_with_notify(peer, Some("PSK identity removed or its key changed"));
        }
    }

    #[must_use]
    pub fn counters(&self) -> DtlsCounters {
        DtlsCounters {
            associations: self.associations.len() as u64,
            handshaking: self.handshaking as u64,
            ..self.counters
        }
    }

    /// Associations, half-open ones included.
    #[must_use]
    pub fn associations(&self) -> usize {
        self.associations.len()
    }

    /// The identity of an established peer.
    #[must_use]
    pub fn identity(&self, peer: SocketAddr) -> Option<Arc<Identity>> {
        match &self.associations.get(&peer)?.phase {
            Phase::Established(identity) => Some(identity.clone()),
            Phase::Handshaking => None,
        }
    }

    fn anchor(&mut self, now: Instant) {
        if self.wall.is_none() {
            self.wall = Some((now, SystemTime::now()));
        }
    }

    /// `now` as a date, through the anchor taken at the first input.
    fn unix_time(&self, now: Instant) -> UnixTime {
        let (at, wall) = self.wall.unwrap_or((now, SystemTime::UNIX_EPOCH));
        let date = if now >= at {
            wall.checked_add(now - at)
        } else {
            wall.checked_sub(at - now)
        };
        let since_epoch = date
            .and_then(|d| d.duration_since(SystemTime::UNIX_EPOCH).ok())
            .unwrap_or_default();
        UnixTime::since_unix_epoch(since_epoch)
    }

    /// A ClientHello from a peer without an association (or starting over): without a valid
    /// cookie it gets a HelloVerifyRequest and nothing is kept; with one, an association.
    fn stateless_hello(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram_len: usize,
        hello: &ClientHello<'_>,
        datagram: &[u8],
    ) {
        let Some(mode) = hello.auth_mode(self.settings.certificate.is_some()) else {
            self.counters.hellos_unacceptable += 1;
            return;
        };
        if !self.cookies.verify(now, from, hello) {
            if !hello.cookie.is_empty() {
                self.counters.cookies_rejected += 1;
            }
            let cookie = self.cookies.issue(now, from, hello);
            let reply = hello::hello_verify_request(hello.record_seq, hello.message_seq, &cookie);
            // Never more bytes to an unverified address than it sent (no amplification).
            if reply.len() <= datagram_len && self.transmits.len() < MAX_QUEUED_TRANSMITS {
                self.counters.hello_verify_sent += 1;
                self.transmits.push_back((from, reply));
            } else {
                self.counters.records_dropped += 1;
            }
            return;
        }
        // A valid cookie can only come in a second (or later) ClientHello.
        if hello.message_seq == 0 || hello.message_seq > MAX_HELLO_SEQ {
            self.counters.records_dropped += 1;
            return;
        }
        let replaced_handshaking = self.associations.get(&from).map(|a| !a.is_established());
        if replaced_handshaking.is_none()
            && self.associations.len() >= self.settings.max_associations
        {
            self.counters.associations_refused_full += 1;
            return;
        }
        let busy = self
            .handshaking
            .saturating_sub(usize::from(replaced_handshaking == Some(true)));
        if busy >= self.settings.max_handshakes {
            self.counters.handshakes_refused_busy += 1;
            return;
        }
        match replaced_handshaking {
            Some(true) => self.fail(from, "the client started a new handshake".to_owned()),
            Some(false) => self.close_with_notify(from, Some("the client started a new handshake")),
            None => {}
        }

        let id = self.next_id;
        self.next_id += 1;
        let association = Association::new(
            id,
            now,
            mode,
            hello,
            &self.engines,
            &self.settings,
            &mut self.buf,
        );
        self.counters.handshakes_started += 1;
        match association {
            Ok(association) => {
                self.associations.insert(from, association);
                self.handshaking += 1;
                self.feed(now, from, datagram);
            }
            Err(reason) => {
                self.counters.handshakes_failed += 1;
                self.events
                    .push_back(DtlsEvent::HandshakeFailed { peer: from, reason });
            }
        }
    }

    /// A datagram for an existing association.
    fn feed(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Some(association) = self.associations.get_mut(&from) else {
            return;
        };
        // dimpl wants its clock moved before each packet.
        let result = association
            .dtls
            .handle_timeout(now)
            .and_then(|()| association.dtls.handle_packet(datagram));
        self.after_engine(now, from, result, true);
    }

    /// Everything that follows a call into an association's dimpl instance.
    fn after_engine(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        result: Result<(), dimpl::Error>,
        from_datagram: bool,
    ) {
        let asked = self.engines.take_asked();
        let Some(association) = self.associations.get_mut(&peer) else {
            return;
        };
        if asked.is_some() {
            association.asked = asked;
        }
        let drained = association.drain(&mut self.buf);
        if let Err(e) = result {
            // Fatal for this association only; a last alert dimpl queued still goes out.
            self.queue_packets(peer, drained.packets);
            match &self.associations.get(&peer).map(|a| a.phase.clone()) {
                Some(Phase::Handshaking) => {
                    let reason = if matches!(e, dimpl::Error::Timeout(_)) {
                        // dimpl gave up retransmitting before the listener's deadline.
                        self.counters.handshakes_timed_out += 1;
                        "handshake timed out".to_owned()
                    } else {
                        self.failure_reason(peer, &e)
                    };
                    self.fail(peer, reason);
                }
                _ => {
                    debug!(peer = %peer, error = %e, "DTLS association failed");
                    self.counters.protocol_errors += 1;
                    self.forget(peer, Some("DTLS protocol error"));
                }
            }
            return;
        }
        self.process(now, peer, drained, from_datagram);
    }

    fn failure_reason(&self, peer: SocketAddr, error: &dimpl::Error) -> String {
        let association = self.associations.get(&peer);
        match association.and_then(|a| a.asked.as_ref()) {
            Some(asked) if asked.name.is_none() => {
                format!("unknown PSK identity \"{}\"", asked.shown)
            }
            Some(asked) => format!("PSK handshake for \"{}\" failed: {error}", asked.shown),
            None => format!("handshake failed: {error}"),
        }
    }

    fn process(&mut self, now: Instant, peer: SocketAddr, drained: Drained, from_datagram: bool) {
        let Drained {
            packets,
            frames,
            connected,
            close_notify,
            peer_cert,
        } = drained;
        let Some(association) = self.associations.get_mut(&peer) else {
            return;
        };
        let produced = !packets.is_empty() || !frames.is_empty() || connected || close_notify;

        if let Some(der) = peer_cert {
            let verdict = match (&self.settings.client_roots, association.mode) {
                (_, AuthMode::Psk) => Err("certificate in a PSK handshake".to_owned()),
                (None, _) => Err("client certificates cannot be validated: no ca_file".to_owned()),
                (Some(roots), AuthMode::Certificate) => roots.verify(&der, self.unix_time(now)),
            };
            let Some(association) = self.associations.get_mut(&peer) else {
                return;
            };
            match verdict {
                Ok(names) => association.peer_names = Some(names),
                Err(reason) => {
                    // Not a word more to this client: its Finished is not answered.
                    self.fail(peer, reason);
                    return;
                }
            }
        }

        if connected {
            if let Err(reason) = self.establish(now, peer) {
                self.fail(peer, reason);
                return;
            }
        }
        self.queue_packets(peer, packets);

        let Some(association) = self.associations.get_mut(&peer) else {
            return;
        };
        if let Phase::Established(identity) = &association.phase {
            if !frames.is_empty() {
                association.last_activity = now;
            }
            let identity = identity.clone();
            for frame in frames {
                self.counters.frames_received += 1;
                self.events.push_back(DtlsEvent::Frame {
                    peer,
                    identity: identity.clone(),
                    frame,
                });
            }
            if from_datagram && !produced {
                // dimpl drops garbage, undecryptable and replayed records without a word.
                self.counters.records_dropped += 1;
            }
        }
        if close_notify {
            self.counters.closed_by_peer += 1;
            self.forget(peer, Some("the peer sent close_notify"));
            return;
        }
        self.schedule(peer);
    }

    /// The handshake is complete: decide who the peer is.
    fn establish(&mut self, now: Instant, peer: SocketAddr) -> Result<(), String> {
        let current = self.settings.psk.clone();
        let require_certificate = self.settings.require_certificate;
        let Some(association) = self.associations.get_mut(&peer) else {
            return Ok(());
        };
        if association.is_established() {
            return Ok(());
        }
        let identity = match association.mode {
            AuthMode::Psk => {
                let asked = association.asked.as_ref();
                match asked.and_then(|a| a.name.clone().map(|name| (name, &a.table))) {
                    // The table may have been reloaded after the key was looked up.
                    Some((name, table)) if current.same_key(table, &name) => Identity::Psk(name),
                    Some(_) => {
                        return Err(
                            "PSK identity removed or changed during the handshake".to_owned()
                        )
                    }
                    None => {
                        return Err("PSK handshake completed without a known identity".to_owned())
                    }
                }
            }
            AuthMode::Certificate => match association.peer_names.take() {
                Some(names) => Identity::Certificate { names },
                None if require_certificate => return Err("no client certificate".to_owned()),
                None => Identity::Anonymous,
            },
        };
        let identity = Arc::new(identity);
        association.phase = Phase::Established(identity.clone());
        association.last_activity = now;
        self.handshaking = self.handshaking.saturating_sub(1);
        self.counters.handshakes_completed += 1;
        self.events
            .push_back(DtlsEvent::Established { peer, identity });
        Ok(())
    }

    /// Ends a handshake that had passed the cookie exchange.
    fn fail(&mut self, peer: SocketAddr, reason: String) {
        if self.remove(peer).is_some() {
            debug!(peer = %peer, reason = %reason, "DTLS handshake failed");
            self.counters.handshakes_failed += 1;
            self.events
                .push_back(DtlsEvent::HandshakeFailed { peer, reason });
        }
    }

    /// close_notify (if established), then forget, with an event when `reason` is given.
    fn close_with_notify(&mut self, peer: SocketAddr, reason: Option<&'static str>) {
        let Some(association) = self.associations.get_mut(&peer) else {
            return;
        };
        if association.is_established() && association.dtls.close().is_ok() {
            let drained = association.drain(&mut self.buf);
            self.queue_packets(peer, drained.packets);
        }
        self.forget(peer, reason);
    }

    /// Forgets an association. With a `reason`, an event says so: `Closed` for an established
    /// one, `HandshakeFailed` for a half-open one; without, the caller asked and knows.
    fn forget(&mut self, peer: SocketAddr, reason: Option<&'static str>) {
        let Some(association) = self.remove(peer) else {
            return;
        };
        let Some(reason) = reason else {
            return;
        };
        if association.is_established() {
            self.events.push_back(DtlsEvent::Closed { peer, reason });
        } else {
            self.counters.handshakes_failed += 1;
            self.events.push_back(DtlsEvent::HandshakeFailed {
                peer,
                reason: reason.to_owned(),
            });
        }
    }

    fn remove(&mut self, peer: SocketAddr) -> Option<Association> {
        let association = self.associations.remove(&peer)?;
        self.timers
            .reschedule(association.id, peer, association.scheduled, None);
        if !association.is_established() {
            self.handshaking = self.handshaking.saturating_sub(1);
        }
        Some(association)
    }

    fn schedule(&mut self, peer: SocketAddr) {
        let idle = self.settings.idle_timeout;
        let Some(association) = self.associations.get_mut(&peer) else {
            return;
        };
        let next = association.next_deadline(idle);
        self.timers
            .reschedule(association.id, peer, association.scheduled, next);
        association.scheduled = next;
    }

    fn queue_packets(&mut self, peer: SocketAddr, packets: Vec<Vec<u8>>) {
        self.transmits
            .extend(packets.into_iter().map(|packet| (peer, packet)));
    }
}
