//! The engine on virtual time: every transcript in `tests/fixtures/engine/` is replayed against
//! a fresh [`Gateway`] configured by the transcript's `@config` lines. Set `MQTTSN_BLESS=1` to
//! rewrite a transcript's expected lines from the engine's actual output (then review the diff).
//!
//! Conventions of these transcripts: the broker peer without a client (`@peer brk broker`) is
//! the gateway's own connection; `@peer brk-X broker X` is client X's connection in transparent
//! mode; broadcasts (ADVERTISE, GWINFO) go to the UDP peer `255.255.255.255:1884`.

mod chaos;
mod purity;

use mqttsn_gateway::config::Config;
use mqttsn_gateway::engine::{
    ConnId, Destination, Gateway, Link, PeerAddr, UpstreamCommand, UpstreamEvent,
};
use mqttsn_gateway::record::snlog::mqtt_packet_len;
use mqttsn_gateway::time::Instant;
use mqttsn_gateway::transcript::replay::{
    replay_file, ReplayInput, ReplayOutcome, ReplayOutput, Replayable,
};
use mqttsn_gateway::transcript::{Control, Peer, PeerKind, Transcript};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where broadcasts appear in transcripts.
pub fn broadcast_addr() -> SocketAddr {
    "255.255.255.255:1884".parse().unwrap()
}

/// A [`Gateway`] wired to the replay harness.
pub struct Harness {
    pub gw: Gateway,
    /// Serial port names in order of first use: their index is the engine's port number.
    serial_ports: Vec<String>,
    /// The transcript's peers, to name the owner of a transparent-mode connection.
    peers: Vec<Peer>,
    /// Device peer name owning each transparent-mode connection (learned when opened).
    conn_owner: HashMap<ConnId, Option<String>>,
    pending: VecDeque<(PeerKind, ReplayOutput)>,
}

impl Harness {
    pub fn new(transcript: &Transcript) -> Harness {
        let config = Config::from_toml_str(&transcript.config_toml(), "@config")
            .unwrap_or_else(|e| panic!("transcript @config: {e}"));
        Harness {
            gw: Gateway::new(&config),
            serial_ports: Vec::new(),
            peers: transcript.peers.clone(),
            conn_owner: HashMap::new(),
            pending: VecDeque::new(),
        }
    }

    fn port_index(&mut self, port: &str) -> u16 {
        match self.serial_ports.iter().position(|p| p == port) {
            Some(i) => i as u16,
            None => {
                self.serial_ports.push(port.to_string());
                (self.serial_ports.len() - 1) as u16
            }
        }
    }

    fn peer_addr(&mut self, kind: &PeerKind) -> Option<PeerAddr> {
        Some(match kind {
            PeerKind::Udp(addr) => PeerAddr::udp(*addr),
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
        match (peer.link, peer.node) {
            (Link::Udp(via), Some(node)) => PeerKind::Forwarded {
                via,
                node_id: node.as_bytes().to_vec(),
            },
            (Link::Udp(addr), None) => PeerKind::Udp(addr),
            (Link::Serial { port, radio }, _) => PeerKind::Serial {
                port: self
                    .serial_ports
                    .get(usize::from(port))
                    .cloned()
                    .unwrap_or_default(),
                radio: (radio != 0).then(|| radio.to_be_bytes().to_vec()),
            },
        }
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

    /// Moves the engine's outputs into `pending`, in the order the engine produced them.
    fn collect(&mut self) {
        while let Some(cmd) = self.gw.poll_upstream() {
            let conn = match &cmd {
                UpstreamCommand::Open(c)
                | UpstreamCommand::Send(c, _)
                | UpstreamCommand::Close(c)
                | UpstreamCommand::Abort(c) => *c,
            };
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
            let out = match cmd {
                UpstreamCommand::Open(_) => ReplayOutput::Control(Control::Open),
                UpstreamCommand::Send(_, bytes) => {
                    // One MQTT packet per transcript line, as the recorder writes them.
                    let mut rest = &bytes[..];
                    while let Some(len) = mqtt_packet_len(rest) {
                        self.pending
                            .push_back((kind.clone(), ReplayOutput::Frame(rest[..len].to_vec())));
                        rest = &rest[len..];
                    }
                    continue;
                }
                UpstreamCommand::Close(_) => ReplayOutput::Control(Control::Close),
                UpstreamCommand::Abort(_) => ReplayOutput::Control(Control::Abort),
            };
            self.pending.push_back((kind, out));
        }
        while let Some(t) = self.gw.poll_transmit() {
            let kind = match t.to {
                Destination::Peer(peer) => self.kind_of(peer),
                Destination::Broadcast { .. } => PeerKind::Udp(broadcast_addr()),
            };
            self.pending.push_back((kind, ReplayOutput::Frame(t.bytes)));
        }
        while self.gw.poll_event().is_some() {}
    }
}

impl Replayable for Harness {
    fn input(&mut self, now: Instant, from: &Peer, input: ReplayInput<'_>) {
        match (&from.kind, input) {
            (PeerKind::Broker { client }, input) => {
                let conn = self.conn_for(client);
                let event = match input {
                    ReplayInput::Frame(bytes) => UpstreamEvent::Data(bytes),
                    ReplayInput::Control(Control::Up) => UpstreamEvent::Connected,
                    ReplayInput::Control(_) => UpstreamEvent::Disconnected,
                };
                self.gw.handle_upstream(now, conn, event);
            }
            (kind, ReplayInput::Frame(bytes)) => {
                if let Some(peer) = self.peer_addr(kind) {
                    self.gw.handle_frame(now, peer, bytes);
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
        self.pending.pop_front()
    }
}

fn transcripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "snlog"))
        .collect();
    files.sort();
    files
}

#[test]
fn engine_transcripts() {
    let files = transcripts();
    assert!(!files.is_empty());
    let mut failures = Vec::new();
    for path in &files {
        match replay_file(path, Harness::new) {
            Ok(ReplayOutcome::Passed) => {}
            Ok(ReplayOutcome::Blessed) => eprintln!("blessed {}", path.display()),
            Err(e) => failures.push(format!("{}:\n{e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
