//! Where frames come from and go to: a link (a UDP address or a serial radio address) plus,
//! when a forwarder relays the device, its wireless node id (§5.5).

use std::fmt;
use std::net::SocketAddr;

/// Longest wireless node id the engine tracks inline (8 bytes: room for a 64-bit radio
/// address; longer ones are rejected as malformed).
pub const MAX_NODE_ID: usize = 8;

/// The transport-level address of a device or forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// A UDP peer.
    Udp(SocketAddr),
    /// A UDP peer whose frames travel inside a DTLS association (`[[dtls]]` listeners): its
    /// frames come with the identity the association proved.
    Dtls(SocketAddr),
    /// A device behind serial port number `port` (index into `[[serial]]`); `radio` is the
    /// radio's source address where the framing has one (XBee 64-bit address), else 0.
    Serial {
        /// Index of the serial port in the configuration.
        port: u16,
        /// Radio source address (0 for framings without addresses).
        radio: u64,
    },
}

/// A wireless node id behind a forwarder, stored inline so peer addresses stay `Copy`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    len: u8,
    bytes: [u8; MAX_NODE_ID],
}

impl NodeId {
    /// A node id, or `None` if longer than [`MAX_NODE_ID`].
    pub fn new(id: &[u8]) -> Option<NodeId> {
        let mut bytes = [0; MAX_NODE_ID];
        bytes.get_mut(..id.len())?.copy_from_slice(id);
        Some(NodeId {
            len: id.len() as u8,
            bytes,
        })
    }

    /// The id's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", crate::hex::format_compact(self.as_bytes()))
    }
}

/// A device's address as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// The link the frames travel on.
    pub link: Link,
    /// Set when a forwarder on `link` relays the device.
    pub node: Option<NodeId>,
}

impl PeerAddr {
    /// A device reached directly over `link`.
    pub fn direct(link: Link) -> Self {
        PeerAddr { link, node: None }
    }

    /// A UDP device at `addr`.
    pub fn udp(addr: SocketAddr) -> Self {
        Self::direct(Link::Udp(addr))
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.link {
            Link::Udp(addr) => write!(f, "udp:{addr}")?,
            Link::Dtls(addr) => write!(f, "dtls:{addr}")?,
            Link::Serial { port, radio } => write!(f, "serial{port}:{radio:016X}")?,
        }
        if let Some(node) = &self.node {
            write!(f, "/{}", crate::hex::format_compact(node.as_bytes()))?;
        }
        Ok(())
    }
}

/// Where a frame the engine produced must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One device.
    Peer(PeerAddr),
    /// The broadcast (or multicast) address of every transport that has one (ADVERTISE), or,
    /// with `near`, of the transport `near` is on, falling back to `near` itself when that
    /// transport has no broadcast address (GWINFO answering a SEARCHGW).
    Broadcast {
        /// The device whose request this answers, if any.
        near: Option<PeerAddr>,
    },
}

/// One frame for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub to: Destination,
    /// The encoded frame, forwarder encapsulation included.
    pub bytes: Vec<u8>,
    /// It tells the device that a change a restart must keep has been made (CONNACK, SUBACK,
    /// UNSUBACK, REGACK, the will answers, PUBREC of its QoS 2 publish, DISCONNECT of its
    /// sleep, a QoS 2 delivery): with a store, the driver sends it only once that change is
    /// committed. Other frames may go out before the commit (a QoS 0 or 1 delivery, PUBACK,
    /// PINGRESP, REGISTER): a crash in between costs at most a duplicate, since nothing is
    /// acknowledged to the broker before the commit.
    pub after_commit: bool,
}
