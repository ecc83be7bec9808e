//! The gateway engine as a [`Replayable`]: transcript peers mapped to engine addresses and
//! connections, and the engine's outputs mapped back to transcript lines. Also the mapping from
//! upstream commands and events to transcript control words, shared with the recorder, so that a
//! recording and a replay write the same lines.
//!
//! Conventions: the broker peer without a client (`@peer brk broker`) is the gateway's own
//! connection; `@peer brk-X broker X` is device X's connection in transparent mode; broadcasts
//! (ADVERTISE, GWINFO) appear as the UDP peer [`BROADCAST`]; serial ports are numbered in the
//! order the transcript first uses them.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::replay::{ReplayInput, ReplayOutput, Replayable};
use super::{Control, Peer, PeerKind, Transcript};
use crate::engine::mqtt::wire::packet_len;
use crate::engine::persist::MemoryStore;
use crate::engine::{ConnId, Destination, Gateway, Link, PeerAddr, UpstreamCommand, UpstreamEvent};
use crate::time::Instant;

/// Where broadcasts appear in transcripts.
pub const BROADCAST: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::BROADCAST), 1884);

impl UpstreamCommand {
    /// The connection the command is for.
    pub fn conn(&self) -> ConnId {
        match self {
            UpstreamCommand::Open(c)
            | UpstreamCommand::Send(c, _)
            | UpstreamCommand::Close(c)
            | UpstreamCommand::Abort(c) => *c,
        }
    }

    /// The transcript control word for the command (`!open`, `!close`, `!abort`); `None` for
    /// bytes to send.
    pub fn control(&self) -> Option<Control> {
        match self {
            UpstreamCommand::Open(_) => Some(Control::Open),
            UpstreamCommand::Send(..) => None,
            UpstreamCommand::Close(_) => Some(Control::Close),
            UpstreamCommand::Abort(_) => Some(Control::Abort),
        }
    }
}

impl UpstreamEvent<'_> {
    /// The transcript control word for the event (`!up`, `!down`, ...); `None` for bytes
    /// received.
    pub fn control(&self) -> Option<Control> {
        match self {
            UpstreamEvent::Connected => Some(Control::Up),
            UpstreamEvent::Data(_) => None,
            UpstreamEvent::Disconnected => Some(Control::Down),
            UpstreamEvent::Congested => Some(Control::Congested),
            UpstreamEvent::Drained => Some(Control::Drained),
        }
    }

    /// The event a transcript input line stands for.
    pub fn from_input<'a>(input: ReplayInput<'a>) -> UpstreamEvent<'a> {
        match input {
            ReplayInput::Frame(bytes) => UpstreamEvent::Data(bytes),
            ReplayInput::Control(Control::Up) => UpstreamEvent::Connected,
            ReplayInput::Control(Control::Congested) => UpstreamEvent::Congested,
            ReplayInput::Control(Control::Drained) => UpstreamEvent::Drained,
            ReplayInput::Control(_) => UpstreamEvent::Disconnected,
        }
    }
}

/// The transcript's view of a device address; `port_name` names serial port number `port`.
/// Shared by the harness and the recorder, so that both write the same peers.
pub fn device_kind(peer: PeerAddr, port_name: impl FnOnce(u16) -> String) -> PeerKind {
    match (peer.link, peer.node) {
        (Link::Udp(via), Some(node)) => PeerKind::Forwarded {
            via,
            node_id: node.as_bytes().to_vec(),
        },
        (Link::Udp(addr), None) => PeerKind::Udp(addr),
        (Link::Dtls(addr), _) => PeerKind::Dtls(addr),
        (Link::Serial { port, radio }, _) => PeerKind::Serial {
            port: port_name(port),
            radio: (radio != 0).then(|| radio.to_be_bytes().to_vec()),
        },
    }
}

/// Calls `line` with each whole MQTT packet in `bytes`, as transcripts write one packet per line.
/// A malformed or cut-off tail is given whole, so that nothing goes unseen.
pub fn for_each_packet(mut bytes: &[u8], mut line: impl FnMut(&[u8])) {
    while !bytes.is_empty() {
        let len = match packet_len(bytes) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => bytes.len(),
        };
        line(&bytes[..len]);
        bytes = &bytes[len..];
    }
}

/// A [`Gateway`] wired to the replay harness.
pub struct GatewayHarness {
    /// The engine under test.
    pub gw: Gateway,
    /// Serial port names in order of first use: their index is the engine's port number.
    serial_ports: Vec<String>,
    /// The transcript's peers, to name the owner of a transparent-mode connection.
    peers: Vec<Peer>,
    /// Device peer name owning each transparent-mode connection (learned when opened).
    conn_owner: BTreeMap<ConnId, Option<String>>,
    pending: VecDeque<(PeerKind, ReplayOutput)>,
    /// Every output handed to the replay so far, in order (to compare runs).
    log: Vec<(PeerKind, ReplayOutput)>,
    /// Where the engine persists after every input, when the transcript restarts the gateway
    /// (`!restart`) or its configuration keeps state (`storage.dir`).
    store: Option<MemoryStore>,
    /// After every persist, check that an engine restored from the store would store exactly
    /// the same ([`GatewayHarness::check_restores`]).
    check_restores: bool,
}

impl GatewayHarness {
    /// Wraps `gw` for a replay of `transcript`.
    pub fn new(transcript: &Transcript, mut gw: Gateway) -> GatewayHarness {
        let restarts = transcript
            .entries
            .iter()
            .any(|e| e.control() == Some(Control::Restart));
        let store = (restarts || gw.settings().durable).then(|| {
            gw.enable_persistence();
            MemoryStore::new()
        });
        GatewayHarness {
            gw,
            serial_ports: Vec::new(),
            peers: transcript.peers.clone(),
            conn_owner: BTreeMap::new(),
            pending: VecDeque::new(),
            log: Vec::new(),
            store,
            check_restores: false,
        }
    }

    /// Persists after every input even without a restart in the transcript, and checks each
    /// time that an engine restored from the store holds the same: restoring loses nothing
    /// a store holds, at any moment of any exchange.
    pub fn check_restores(mut self) -> Self {
        if self.store.is_none() {
            self.gw.enable_persistence();
            self.store = Some(MemoryStore::new());
        }
        self.check_restores = true;
        self
    }

    /// What the engine has stored so far.
    pub fn store(&self) -> Option<&MemoryStore> {
        self.store.as_ref()
    }

    /// The engine persists, as the driver does before it sends a batch's outputs.
    fn persist(&mut self, now: Instant) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = self.gw.persist(store) {
            panic!("the memory store failed: {e}");
        }
        if self.check_restores {
            let restored = self.restored(now);
            let mut again = MemoryStore::new();
            if let Err(e) = restored.write_snapshot(&mut again) {
                panic!("the memory store failed: {e}");
            }
            let stored = self.store.as_ref().map(MemoryStore::load);
            if stored.as_ref() != Some(&again.load()) {
                panic!(
                    "at {now}: a restored engine stores something else\nstored: {stored:?}\nrestored: {:?}",
                    again.load()
                );
            }
        }
    }

    /// A new engine with the same settings, restored from the store.
    fn restored(&self, now: Instant) -> Gateway {
        let mut gw = Gateway::new(self.gw.settings().clone(), self.gw.wire());
        gw.enable_persistence();
        if let Some(store) = &self.store {
            let report = gw.restore(now, store.load());
            assert!(
                report.skipped.is_empty(),
                "not restored: {:?}",
                report.skipped
            );
        }
        // As the driver does: the policy is applied to what was restored.
        let _ = gw.set_auth(now, self.gw.auth().clone());
        gw
    }

    /// `!restart`: what was stored is all the new engine knows; the old one's broker
    /// connections are gone with it.
    fn restart(&mut self, now: Instant) {
        self.persist(now);
        self.gw = self.restored(now);
        self.conn_owner.clear();
        self.collect();
    }

    /// Every output the engine produced so far, in order.
    pub fn outputs(&self) -> &[(PeerKind, ReplayOutput)] {
        &self.log
    }

    fn port_index(&mut self, port: &str) -> u16 {
        let index = match self.serial_ports.iter().position(|p| p == port) {
            Some(i) => i,
            None => {
                self.serial_ports.push(port.to_string());
                self.serial_ports.len() - 1
            }
        };
        u16::try_from(index).unwrap_or(u16::MAX)
    }

    fn peer_addr(&mut self, kind: &PeerKind) -> Option<PeerAddr> {
        Some(match kind {
            PeerKind::Udp(addr) => PeerAddr::udp(*addr),
            PeerKind::Dtls(addr) => PeerAddr::direct(Link::Dtls(*addr)),
            // The line carries the whole encapsulated frame; the engine reads the node id.
            PeerKind::Forwarded { via, .. } => PeerAddr::udp(*via),
            PeerKind::Serial { port, radio } => PeerAddr::direct(Link::Serial {
                port: self.port_index(port),
                radio: radio.as_deref().map_or(0, |r| {
                    r.iter().take(8).fold(0u64, |a, b| (a << 8) | u64::from(*b))
                }),
            }),
            PeerKind::Broker { .. } => return None,
        })
    }

    fn kind_of(&self, peer: PeerAddr) -> PeerKind {
        device_kind(peer, |port| {
            self.serial_ports
                .get(usize::from(port))
                .cloned()
                .unwrap_or_default()
        })
    }

    fn conn_for(&self, client: &Option<String>) -> ConnId {
        match client {
            None => ConnId::GATEWAY,
            Some(id) => self
                .conn_owner
                .iter()
                .filter(|(_, owner)| owner.as_deref() == Some(id.as_str()))
                .map(|(conn, _)| *conn)
                .max()
                .unwrap_or(ConnId(u64::MAX)),
        }
    }

    /// Moves the engine's outputs into `pending`, in the order the engine produced them (after
    /// persisting, as the driver does).
    fn collect(&mut self) {
        let now = self.gw.now();
        self.persist(now);
        while let Some(cmd) = self.gw.poll_upstream() {
            let conn = cmd.conn();
            if !self.conn_owner.contains_key(&conn) {
                let owner = self.gw.upstream_owner(conn).map(|(id, addr)| {
                    let kind = self.kind_of(addr);
                    self.peers
                        .iter()
                        .find(|p| p.kind == kind)
                        .map_or_else(|| id.to_string(), |p| p.name.clone())
                });
                self.conn_owner.insert(conn, owner);
            }
            let kind = PeerKind::Broker {
                client: self.conn_owner.get(&conn).cloned().flatten(),
            };
            match (cmd.control(), &cmd) {
                (Some(control), _) => self
                    .pending
                    .push_back((kind, ReplayOutput::Control(control))),
                (None, UpstreamCommand::Send(_, bytes)) => for_each_packet(bytes, |packet| {
                    self.pending
                        .push_back((kind.clone(), ReplayOutput::Frame(packet.to_vec())))
                }),
                (None, _) => {}
            }
        }
        while let Some(t) = self.gw.poll_transmit() {
            let kind = match t.to {
                Destination::Peer(peer) => self.kind_of(peer),
                Destination::Broadcast { .. } => PeerKind::Udp(BROADCAST),
            };
            self.pending.push_back((kind, ReplayOutput::Frame(t.bytes)));
        }
        while self.gw.poll_event().is_some() {}
    }
}

impl Replayable for GatewayHarness {
    fn input(&mut self, now: Instant, from: &Peer, input: ReplayInput<'_>) {
        match (&from.kind, input) {
            (_, ReplayInput::Control(Control::Restart)) => return self.restart(now),
            (PeerKind::Broker { client }, input) => {
                let conn = self.conn_for(client);
                self.gw
                    .handle_upstream(now, conn, UpstreamEvent::from_input(input));
            }
            (kind, ReplayInput::Frame(bytes)) => {
                if let Some(peer) = self.peer_addr(kind) {
                    match &from.identity {
                        Some(identity) => self.gw.handle_secured_frame(now, peer, identity, bytes),
                        None => self.gw.handle_frame(now, peer, bytes),
                    }
                }
            }
            (_, ReplayInput::Control(_)) => {}
        }
        self.collect();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gw.handle_timeout(now);
        self.collect();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.gw.poll_timeout()
    }

    fn poll_output(&mut self) -> Option<(PeerKind, ReplayOutput)> {
        if self.pending.is_empty() {
            self.collect();
        }
        let output = self.pending.pop_front()?;
        self.log.push(output.clone());
        Some(output)
    }
}
