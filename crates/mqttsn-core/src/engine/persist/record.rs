//! The byte layout of stored sessions and held messages: versioned, length-prefixed, decoded
//! without trusting a single length (a damaged record is an error, never a panic or a huge
//! allocation).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;

use crate::codec::QoS;
use crate::engine::client::{Down, Inflight, InflightKind, State, UpFlight, UpStage, Will};
use crate::engine::peer::{Link, NodeId, PeerAddr};

/// The layout version written in the first byte of every session record. A record of another
/// version is refused rather than misread; a new layout gets a new number and a migration.
pub const SESSION_FORMAT: u8 = 1;

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The record ends before its fields do.
    #[error("record truncated")]
    Truncated,
    /// Bytes left over after the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
    /// A layout version this build does not read.
    #[error("record format {0}, this build reads {SESSION_FORMAT}")]
    Version(u8),
    /// A field holds a value no writer produces.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A session as stored: everything a restart must keep (see [`super`] for what is left out).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionImage {
    /// Active, Asleep or Disconnected (an Awake sleeper is stored as Asleep: it asks again).
    pub state: State,
    /// CleanSession of its CONNECT.
    pub clean_session: bool,
    /// Its address had shown that it receives.
    pub verified: bool,
    /// Keep-alive in seconds.
    pub keep_alive_secs: u16,
    /// Sleep duration in seconds.
    pub sleep_secs: u16,
    /// The last MsgId the gateway used towards it.
    pub last_msg_id: u16,
    /// Where it was.
    pub peer: PeerAddr,
    /// Its will.
    pub will: Option<Will>,
    /// Its normal topic ids in id order, with whether each is still pending (gateway REGISTER
    /// not yet accepted).
    pub topics: Vec<(Arc<str>, bool)>,
    /// Topics it refused in REGACK.
    pub refused: Vec<Arc<str>>,
    /// Its subscriptions with their granted QoS.
    pub filters: Vec<(Arc<str>, QoS)>,
    /// Its QoS 2 publishes the broker has not completed with it.
    pub up: Vec<UpFlight>,
    /// The one gateway-to-device exchange awaiting its answer.
    pub inflight: Option<(InflightKind, u16)>,
}

/// Appends the stored form of a session to `out`.
pub(crate) fn encode_session(
    out: &mut Vec<u8>,
    client: &crate::engine::client::Client,
    filters: &[(Arc<str>, QoS)],
) {
    let mut w = Writer(out);
    w.u8(SESSION_FORMAT);
    w.u8(match client.state {
        State::Active => 0,
        State::Asleep | State::Awake => 1,
        // Half-way through a CONNECT (only written for a kept session): what is kept is the
        // session of a device that is not connected until the handshake completes.
        State::Disconnected | State::WillTopic | State::WillMsg | State::Connecting => 2,
    });
    w.u8(u8::from(client.clean_session) | u8::from(client.verified) << 1);
    w.u16(client.keep_alive_secs);
    w.u16(client.sleep_secs);
    w.u16(client.last_msg_id);
    w.peer(&client.peer);
    match &client.will {
        None => w.u8(0),
        Some(will) => {
            w.u8(1);
            w.str(&will.topic);
            w.bytes(&will.payload);
            w.u8(qos_code(will.qos));
            w.u8(u8::from(will.retain));
        }
    }
    w.count(client.registry.len());
    for (id, name) in client.registry.iter() {
        w.u8(u8::from(client.registry.is_pending(id)));
        w.str(name);
    }
    let refused = client.extras().map_or(&[][..], |e| &e.refused[..]);
    w.count(refused.len());
    for name in refused {
        w.str(name);
    }
    w.count(filters.len());
    for (filter, qos) in filters {
        w.str(filter);
        w.u8(qos_code(*qos));
    }
    // Only QoS 2 needs its state across a restart (to recognise the device's duplicate); a
    // QoS 1 publish is simply sent again by the device and forwarded again, as QoS 1 allows.
    let up: Vec<&UpFlight> = client.up().iter().filter(|u| u.qos == QoS::Two).collect();
    w.count(up.len());
    for flight in up {
        w.u16(flight.msg_id);
        w.u16(flight.topic_id);
        w.u16(flight.pid);
        w.u8(match flight.stage {
            UpStage::Received => 1,
            UpStage::Forwarded | UpStage::Restored => 0,
        });
    }
    match client.inflight.as_deref() {
        None => w.u8(0),
        Some(Inflight { kind, msg_id, .. }) => {
            match kind {
                InflightKind::Register { topic, topic_id } => {
                    w.u8(1);
                    w.u16(*topic_id);
                    w.str(topic);
                }
                InflightKind::Publish { frame, qos } => {
                    w.u8(2);
                    w.u8(qos_code(*qos));
                    w.bytes(frame);
                }
                InflightKind::PubRel => w.u8(3),
            }
            w.u16(*msg_id);
        }
    }
    // The held messages are records of their own (numbered from `Client::queue_head`), so a
    // message passing through the queue does not change this record.
}

/// Reads a session record as the engine writes it.
pub fn decode_session(bytes: &[u8]) -> Result<SessionImage, RecordError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if version != SESSION_FORMAT {
        return Err(RecordError::Version(version));
    }
    let state = match r.u8()? {
        0 => State::Active,
        1 => State::Asleep,
        2 => State::Disconnected,
        _ => return Err(RecordError::Invalid("state")),
    };
    let flags = r.u8()?;
    let keep_alive_secs = r.u16()?;
    let sleep_secs = r.u16()?;
    let last_msg_id = r.u16()?;
    let peer = r.peer()?;
    let will = match r.u8()? {
        0 => None,
        1 => Some(Will {
            topic: r.str()?,
            payload: Bytes::from(r.bytes()?.to_vec()),
            qos: qos_from(r.u8()?)?,
            retain: r.u8()? != 0,
        }),
        _ => return Err(RecordError::Invalid("will")),
    };
    let mut topics = Vec::new();
    for _ in 0..r.u16()? {
        let pending = r.u8()? != 0;
        topics.push((r.str()?, pending));
    }
    let mut refused = Vec::new();
    for _ in 0..r.u16()? {
        refused.push(r.str()?);
    }
    let mut filters = Vec::new();
    for _ in 0..r.u16()? {
        filters.push((r.str()?, qos_from(r.u8()?)?));
    }
    let mut up = Vec::new();
    for _ in 0..r.u16()? {
        up.push(UpFlight {
            msg_id: r.u16()?,
            topic_id: r.u16()?,
            pid: r.u16()?,
            qos: QoS::Two,
            stage: match r.u8()? {
                0 => UpStage::Restored,
                1 => UpStage::Received,
                _ => return Err(RecordError::Invalid("publish stage")),
            },
        });
    }
    let kind = match r.u8()? {
        0 => None,
        1 => {
            let topic_id = r.u16()?;
            Some(InflightKind::Register {
                topic_id,
                topic: r.str()?,
            })
        }
        2 => {
            let qos = qos_from(r.u8()?)?;
            Some(InflightKind::Publish {
                qos,
                frame: r.bytes()?.to_vec(),
            })
        }
        3 => Some(InflightKind::PubRel),
        _ => return Err(RecordError::Invalid("exchange in flight")),
    };
    let inflight = match kind {
        Some(kind) => Some((kind, r.u16()?)),
        None => None,
    };
    let image = SessionImage {
        state,
        clean_session: flags & 1 != 0,
        verified: flags & 2 != 0,
        keep_alive_secs,
        sleep_secs,
        last_msg_id,
        peer,
        will,
        topics,
        refused,
        filters,
        up,
        inflight,
    };
    r.end()?;
    Ok(image)
}

/// Appends the stored form of a held message to `out`.
pub(crate) fn encode_message(out: &mut Vec<u8>, down: &Down) {
    let mut w = Writer(out);
    w.str(&down.topic);
    w.u8(qos_code(down.qos));
    w.u8(u8::from(down.retain));
    w.bytes(&down.payload);
}

/// Reads a held message record as the engine writes it.
pub fn decode_message(bytes: &[u8]) -> Result<Down, RecordError> {
    let mut r = Reader(bytes);
    let down = Down {
        topic: r.str()?,
        qos: qos_from(r.u8()?)?,
        retain: r.u8()? != 0,
        payload: Bytes::from(r.bytes()?.to_vec()),
    };
    r.end()?;
    Ok(down)
}

fn qos_code(qos: QoS) -> u8 {
    match qos {
        QoS::Zero => 0,
        QoS::One => 1,
        QoS::Two => 2,
        QoS::MinusOne => 3,
    }
}

fn qos_from(code: u8) -> Result<QoS, RecordError> {
    Ok(match code {
        0 => QoS::Zero,
        1 => QoS::One,
        2 => QoS::Two,
        3 => QoS::MinusOne,
        _ => return Err(RecordError::Invalid("QoS")),
    })
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    /// A list length; the engine's lists are far below 65535 entries (topic ids are 16 bits,
    /// filters are bounded by `limits.max_filters_per_client`).
    fn count(&mut self, n: usize) {
        self.u16(u16::try_from(n).unwrap_or(u16::MAX));
    }
    /// A name: topic names and filters are at most 65535 bytes (MQTT's own limit).
    fn str(&mut self, s: &str) {
        let len = s.len().min(usize::from(u16::MAX));
        self.u16(len as u16);
        self.0.extend_from_slice(&s.as_bytes()[..len]);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(u32::try_from(b.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(b);
    }
    fn peer(&mut self, peer: &PeerAddr) {
        // A DTLS device's address is a UDP address with its own tag (3 or 4 for 0 or 1).
        let (tag, addr) = match peer.link {
            Link::Udp(addr) => (0, Some(addr)),
            Link::Dtls(addr) => (3, Some(addr)),
            Link::Serial { .. } => (2, None),
        };
        match (addr, peer.link) {
            (Some(SocketAddr::V4(a)), _) => {
                self.u8(tag);
                self.0.extend_from_slice(&a.ip().octets());
                self.u16(a.port());
            }
            (Some(SocketAddr::V6(a)), _) => {
                self.u8(tag + 1);
                self.0.extend_from_slice(&a.ip().octets());
                self.u16(a.port());
                self.u32(a.flowinfo());
                self.u32(a.scope_id());
            }
            (_, Link::Serial { port, radio }) => {
                self.u8(2);
                self.u16(port);
                self.u64(radio);
            }
            (None, _) => {}
        }
        match &peer.node {
            None => self.u8(0xFF),
            Some(node) => {
                let id = node.as_bytes();
                self.u8(id.len() as u8);
                self.0.extend_from_slice(id);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<Arc<str>, RecordError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Arc::from)
            .map_err(|_| RecordError::Invalid("text"))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        // `take` checks the length against what is there before anything is allocated.
        let len = usize::try_from(self.u32()?).map_err(|_| RecordError::Truncated)?;
        self.take(len)
    }
    fn peer(&mut self) -> Result<PeerAddr, RecordError> {
        let tag = self.u8()?;
        let udp = |addr| {
            if tag >= 3 {
                Link::Dtls(addr)
            } else {
                Link::Udp(addr)
            }
        };
        let link = match tag {
            0 | 3 => {
                let ip = Ipv4Addr::from(self.array::<4>()?);
                udp(SocketAddr::new(IpAddr::V4(ip), self.u16()?))
            }
            1 | 4 => {
                let ip = Ipv6Addr::from(self.array::<16>()?);
                let port = self.u16()?;
                let flowinfo = self.u32()?;
                let scope = self.u32()?;
                udp(SocketAddr::V6(SocketAddrV6::new(ip, port, flowinfo, scope)))
            }
            2 => Link::Serial {
                port: self.u16()?,
                radio: self.u64()?,
            },
            _ => return Err(RecordError::Invalid("address")),
        };
        let node = match self.u8()? {
            0xFF => None,
            len => Some(
                NodeId::new(self.take(usize::from(len))?).ok_or(RecordError::Invalid("node id"))?,
            ),
        };
        Ok(PeerAddr { link, node })
    }
    fn end(&self) -> Result<(), RecordError> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(RecordError::Trailing(n)),
        }
    }
}
