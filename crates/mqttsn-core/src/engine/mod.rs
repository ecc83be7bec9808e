//! The gateway engine: a deterministic MQTT-SN <-> MQTT state machine. No sockets, no clock
//! reads, no tokio: inputs carry `now`, outputs are drained by polling.
//!
//! Call order, for the driver: feed inputs with [`Gateway::handle_frame`],
//! [`Gateway::handle_upstream`] and [`Gateway::handle_timeout`] (spurious calls are harmless);
//! after each, drain [`Gateway::poll_transmit`], [`Gateway::poll_upstream`] and
//! [`Gateway::poll_event`] until they return `None`, then sleep until [`Gateway::poll_timeout`].

pub mod acl;
pub mod admission;
pub mod auth;
mod broker;
mod client;
mod delivery;
mod device;
mod gateway;
pub mod mqtt;
pub mod peer;
pub mod persist;
pub mod registry;
mod return_path;
mod slab;
pub mod sleep;
pub mod subscriptions;
pub mod topic;

pub use gateway::{Counters, Gateway};
pub use peer::{Destination, Link, NodeId, PeerAddr, Transmit};

use bytes::Bytes;
use std::sync::Arc;

/// Identifies one client session inside the engine (an index into its session table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub u32);

/// Identifies one upstream (broker) connection. [`ConnId::GATEWAY`] is the gateway's own
/// connection: the shared one in aggregating mode, the one for QoS -1 traffic in transparent mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The gateway's own broker connection.
    pub const GATEWAY: ConnId = ConnId(0);
}

/// What happened on an upstream connection, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamEvent<'a> {
    /// The TCP (or TLS) connection is up; the engine now sends MQTT CONNECT.
    Connected,
    /// Bytes arrived from the broker.
    Data(&'a [u8]),
    /// The connection is gone (refused, reset, closed). The driver keeps trying to reopen it
    /// until told to close it.
    Disconnected,
    /// The connection's send queue is over its bound: the broker reads slower than the engine
    /// writes. The engine slows the devices behind it (congestion return codes, QoS 0 dropped)
    /// instead of writing more, until [`UpstreamEvent::Drained`].
    Congested,
    /// The send queue is back under half its bound (after [`UpstreamEvent::Congested`]).
    Drained,
}

/// What the engine wants done with an upstream connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamCommand {
    /// Open a connection to the broker (and keep reopening it, with backoff, if it drops).
    Open(ConnId),
    /// Write these bytes.
    Send(ConnId, Bytes),
    /// Flush what was sent, then close for good.
    Close(ConnId),
    /// Drop the connection at once without an MQTT DISCONNECT, so the broker publishes the
    /// client's will (transparent mode, client lost).
    Abort(ConnId),
}

/// Something a user would want in the log or in metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A device completed CONNECT.
    ClientConnected {
        /// Its ClientId.
        client_id: Arc<str>,
        /// Where it is.
        peer: PeerAddr,
    },
    /// A CONNECT was refused.
    ClientRejected {
        /// Where it came from.
        peer: PeerAddr,
        /// Why.
        reason: &'static str,
    },
    /// A device went to sleep for `duration` seconds.
    ClientAsleep {
        /// Its ClientId.
        client_id: Arc<str>,
        /// Sleep duration in seconds.
        duration: u16,
    },
    /// A sleeping device woke up to fetch its messages.
    ClientAwake {
        /// Its ClientId.
        client_id: Arc<str>,
    },
    /// A device disconnected.
    ClientDisconnected {
        /// Its ClientId.
        client_id: Arc<str>,
    },
    /// A kept session was deleted: its device did not come back within `sessions.expiry`.
    SessionExpired {
        /// Its ClientId.
        client_id: Arc<str>,
    },
    /// A device was declared lost (its will, if any, fires).
    ClientLost {
        /// Its ClientId.
        client_id: Arc<str>,
        /// Why.
        reason: &'static str,
    },
    /// The gateway published a device's will (aggregating mode).
    WillPublished {
        /// Its ClientId.
        client_id: Arc<str>,
        /// The will topic.
        topic: Arc<str>,
    },
    /// A message for a device was dropped.
    MessageDropped {
        /// Its ClientId.
        client_id: Arc<str>,
        /// Why.
        reason: &'static str,
    },
    /// A broker message too large for any device was dropped (reported at the 1st, 2nd,
    /// 4th, 8th, ... such message).
    MessageTooLarge {
        /// Its size in bytes.
        size: usize,
        /// How many have been dropped so far.
        total: u64,
    },
    /// A datagram longer than its transport accepts (`udp.max_frame`) was dropped unread
    /// (reported at the 1st, 2nd, 4th, 8th, ... such datagram).
    FrameTooLong {
        /// The latest sender.
        peer: PeerAddr,
        /// The transport's limit in bytes.
        limit: usize,
        /// How many have been dropped so far.
        total: u64,
    },
    /// Device frames or requests were refused or dropped because of the load: a sender over its
    /// frame budget, a client over its publish budget, or a congested broker connection. Reported at the first refusal and then at most
    /// every [`admission::REPORT_INTERVAL`], with the totals so far.
    Overload {
        /// Frames dropped before decoding, over their sender's frame budget.
        frames_over_budget: u64,
        /// Requests refused (or QoS 0 messages dropped) over a client's own budget.
        over_budget: u64,
        /// QoS 1/2 PUBLISH, REGISTER and SUBSCRIBE answered "rejected: congestion".
        congestion_refused: u64,
        /// QoS 0 and -1 PUBLISH dropped for congestion.
        congestion_dropped: u64,
    },
    /// A frame from a device was dropped without an answer.
    FrameDropped {
        /// Where it came from.
        peer: PeerAddr,
        /// Why.
        reason: String,
    },
    /// The broker accepted the gateway's connection.
    BrokerUp,
    /// The gateway's broker connection is gone.
    BrokerDown,
    /// The broker refused a connection, or one could not be set up.
    BrokerError {
        /// What went wrong, for the log.
        reason: String,
    },
}
