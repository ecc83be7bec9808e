//! The protocol state of one upstream MQTT 3.1.1 connection, bytes in and bytes out: CONNECT and
//! CONNACK, packet ids, QoS 1/2 in flight in both directions, keep-alive, and resending what was
//! in flight after a reconnect.
//!
//! Boundary: the driver moves bytes between a TCP/TLS socket and the engine and reports the
//! transport coming up or going down; the engine decides what to publish and subscribe and owns
//! an [`MqttSession`] per broker connection. This module never touches a socket or a clock. Packet
//! layouts are behind the [`wire::MqttWire`] trait (the gateway implements it on rumqttc's codec),
//! so MQTT 5 can come as a second implementation.
//!
//! What the engine must know:
//! - **Tokens** are the engine's correlation ids, passed to [`MqttSession::publish`],
//!   [`MqttSession::subscribe`] and [`MqttSession::unsubscribe`] and echoed in
//!   [`MqttEvent::Published`], [`MqttEvent::Received`], [`MqttEvent::Subscribed`] and
//!   [`MqttEvent::Unsubscribed`]. Packet ids towards the broker are this module's business.
//! - **Packet ids of broker messages** come in [`MqttEvent::Message`]; the engine hands them back
//!   to [`MqttSession::ack_message`] once it has taken responsibility for the message.
//! - **Reconnecting** resends only what this session had in flight (QoS 1/2 PUBLISH or PUBREL,
//!   SUBSCRIBE, UNSUBSCRIBE). Restoring every subscription after a clean-session reconnect is the
//!   engine's job, since it knows them; a SUBSCRIBE that was pending at the disconnect is sent
//!   again as well, which brokers treat as idempotent.

pub mod wire;

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};
use tracing::debug;

use crate::engine::topic::{self, TopicError};
use crate::time::{Duration, Instant};
use wire::{
    Incoming, MqttWire, Outgoing as Packet, PublishPacket, SubscribePacket, UnsubscribePacket,
    MAX_PACKET_SIZE,
};

/// Quality of service of an MQTT message (MQTT has no QoS -1; that is MQTT-SN only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// QoS 0: at most once.
    AtMostOnce = 0,
    /// QoS 1: at least once.
    AtLeastOnce = 1,
    /// QoS 2: exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// The MQTT QoS for an MQTT-SN one; `None` for QoS -1, which has no MQTT equivalent (the
    /// engine decides what a QoS -1 publish becomes upstream).
    pub fn from_sn(qos: crate::codec::QoS) -> Option<QoS> {
        match qos {
            crate::codec::QoS::MinusOne => None,
            crate::codec::QoS::Zero => Some(QoS::AtMostOnce),
            crate::codec::QoS::One => Some(QoS::AtLeastOnce),
            crate::codec::QoS::Two => Some(QoS::ExactlyOnce),
        }
    }
}

impl From<QoS> for crate::codec::QoS {
    fn from(qos: QoS) -> Self {
        match qos {
            QoS::AtMostOnce => crate::codec::QoS::Zero,
            QoS::AtLeastOnce => crate::codec::QoS::One,
            QoS::ExactlyOnce => crate::codec::QoS::Two,
        }
    }
}

/// The message the broker publishes for us if the connection is lost without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Topic name (no wildcards).
    pub topic: String,
    /// Message body, at most 65535 bytes.
    pub payload: Bytes,
    /// QoS the broker publishes it with.
    pub qos: QoS,
    /// Whether the broker retains it.
    pub retain: bool,
}

/// What goes into CONNECT, plus the session's own limits.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// MQTT client identifier; may be empty only with `clean_session`.
    pub client_id: String,
    /// Ask the broker to discard any previous session state.
    pub clean_session: bool,
    /// Keep-alive interval, a whole number of seconds up to 65535; zero turns keep-alive off.
    pub keep_alive: Duration,
    /// User name; `Some("")` is the same as `None` (rumqttc omits empty credentials).
    pub username: Option<String>,
    /// Password; needs a non-empty `username`.
    pub password: Option<String>,
    /// Last will.
    pub will: Option<LastWill>,
    /// How long to wait for CONNACK after the transport comes up before reporting
    /// [`MqttEvent::ConnectTimeout`]; zero waits forever.
    pub connect_timeout: Duration,
    /// Largest remaining length (variable header plus payload) accepted from the broker; a
    /// larger packet is a [`MqttEvent::ProtocolError`], detected from its fixed header before it
    /// is buffered.
    pub max_packet_size: usize,
}

impl ConnectOptions {
    /// Default for [`ConnectOptions::max_packet_size`]: 256 KiB. An MQTT-SN PUBLISH carries at
    /// most 65535 bytes, so anything much larger cannot reach a device anyway, while this still
    /// leaves room for long topics and over-sized retained messages without letting a broker
    /// make the gateway buffer hundreds of megabytes per connection.
    pub const DEFAULT_MAX_PACKET_SIZE: usize = 256 * 1024;

    /// Default for [`ConnectOptions::keep_alive`].
    pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(60);

    /// Default for [`ConnectOptions::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Options with the given client id, a clean session, the defaults above, no credentials
    /// and no will.
    pub fn new(client_id: impl Into<String>) -> Self {
        ConnectOptions {
            client_id: client_id.into(),
            clean_session: true,
            keep_alive: Self::DEFAULT_KEEP_ALIVE,
            username: None,
            password: None,
            will: None,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            max_packet_size: Self::DEFAULT_MAX_PACKET_SIZE,
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    // Hand-written so that logging the options never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("will", &self.will)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_packet_size", &self.max_packet_size)
            .finish()
    }
}

/// Why the broker refused the connection (CONNACK return codes 1 to 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectRefusal {
    /// 1: the broker does not speak MQTT 3.1.1.
    UnacceptableProtocolVersion,
    /// 2: the client id is not allowed.
    IdentifierRejected,
    /// 3: the broker is up but the MQTT service is not available.
    ServerUnavailable,
    /// 4: malformed user name or password.
    BadUserNameOrPassword,
    /// 5: not authorized.
    NotAuthorized,
}

impl ConnectRefusal {
    /// The CONNACK return code.
    pub fn code(self) -> u8 {
        match self {
            ConnectRefusal::UnacceptableProtocolVersion => 1,
            ConnectRefusal::IdentifierRejected => 2,
            ConnectRefusal::ServerUnavailable => 3,
            ConnectRefusal::BadUserNameOrPassword => 4,
            ConnectRefusal::NotAuthorized => 5,
        }
    }
}

/// What happened on the connection, drained with [`MqttSession::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MqttEvent {
    /// The broker accepted CONNECT; in-flight packets have been queued for resending.
    Connected {
        /// The broker resumed a stored session (only possible without `clean_session`).
        session_present: bool,
    },
    /// The broker refused CONNECT: the connection is unusable and should be closed.
    Rejected {
        /// The broker's reason.
        reason: ConnectRefusal,
    },
    /// Our QoS 1 PUBLISH got PUBACK, or our QoS 2 PUBLISH got PUBCOMP.
    Published {
        /// The token given to [`MqttSession::publish`].
        token: u64,
    },
    /// Our QoS 2 PUBLISH got PUBREC: the broker owns the message (PUBREL is sent automatically;
    /// [`MqttEvent::Published`] follows on PUBCOMP).
    Received {
        /// The token given to [`MqttSession::publish`].
        token: u64,
    },
    /// The broker delivered a message. At QoS 1 and 2 the engine acknowledges it with
    /// [`MqttSession::ack_message`] and `pid`.
    ///
    /// A QoS 1 message the broker sends again (DUP) before the engine acknowledged it is
    /// delivered again: QoS 1 is at-least-once, and the engine may have lost the first copy. A QoS
    /// 2 message is delivered once per packet id until the broker releases it (PUBREL).
    Message {
        /// Topic name.
        topic: String,
        /// Body. It shares the receive buffer's allocation; copy it if it is kept for long
        /// (for example for a sleeping device) so that it does not pin a large buffer.
        payload: Bytes,
        /// QoS the broker delivered it with.
        qos: QoS,
        /// The broker's retained message, sent because of a new subscription.
        retain: bool,
        /// The broker's packet id; `None` at QoS 0.
        pid: Option<u16>,
        /// The broker marked it as a redelivery.
        dup: bool,
    },
    /// SUBACK for our SUBSCRIBE.
    Subscribed {
        /// The token given to [`MqttSession::subscribe`].
        token: u64,
        /// One entry per filter, in order: the granted QoS, or `None` for failure (0x80).
        granted: Vec<Option<QoS>>,
    },
    /// UNSUBACK for our UNSUBSCRIBE.
    Unsubscribed {
        /// The token given to [`MqttSession::unsubscribe`].
        token: u64,
    },
    /// The broker sent a PUBLISH larger than [`ConnectOptions::max_packet_size`]: it was
    /// skipped (and acknowledged at QoS 1/2), and the connection goes on.
    TooLarge {
        /// The packet's size.
        size: usize,
    },
    /// The broker sent something malformed, oversize, or out of place. The stream cannot be
    /// trusted any more: the engine closes the connection. Further input is ignored until
    /// [`MqttSession::handle_disconnected`].
    ProtocolError(String),
    /// No CONNACK within [`ConnectOptions::connect_timeout`]: the engine closes the connection.
    ConnectTimeout,
    /// No PINGRESP in time: the engine closes the connection.
    KeepAliveTimeout,
}

/// Why a request was refused. None of these touch the connection; the request had no effect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// A QoS 0 message while the transport is down (or closing): dropped.
    #[error("not connected to the broker")]
    NotConnected,
    /// Every packet id 1..=65535 is in flight.
    #[error("all 65535 packet ids are in flight")]
    PacketIdsExhausted,
    /// Too many QoS 0 messages are waiting for CONNACK.
    #[error("{0} QoS 0 messages already wait for CONNACK")]
    QueueFull(usize),
    /// The topic name is empty, too long, contains NUL or a wildcard.
    #[error("invalid topic name: {0}")]
    InvalidTopic(TopicError),
    /// The topic filter is empty, too long, contains NUL or misplaces a wildcard.
    #[error("invalid topic filter: {0}")]
    InvalidFilter(TopicError),
    /// The packet would exceed MQTT's maximum size.
    #[error("packet of {size} bytes exceeds the MQTT maximum")]
    PacketTooLarge {
        /// Size the packet would have.
        size: usize,
    },
    /// [`ConnectOptions`] that cannot be encoded or that a broker must refuse.
    #[error("invalid connect options: {0}")]
    InvalidOptions(&'static str),
    /// The codec refused a packet that passed validation (a bug, reported rather than panicking).
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// Most QoS 0 messages held while waiting for CONNACK; past that, publishing fails with
/// [`MqttError::QueueFull`] rather than growing memory against a broker that never answers.
pub const MAX_QUEUED_QOS0: usize = 1024;

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No transport.
    Down,
    /// CONNECT queued, waiting for CONNACK (until `deadline`, if any).
    AwaitingConnAck { deadline: Option<Instant> },
    /// CONNACK accepted.
    Connected,
    /// DISCONNECT queued: nothing more is sent or processed.
    Closing,
    /// A fatal event was reported; waiting for the engine to close the transport.
    Failed,
}

/// Progress of one of our QoS 1/2 PUBLISH packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PubState {
    /// QoS 1, waiting for PUBACK.
    Qos1,
    /// QoS 2, waiting for PUBREC.
    Qos2,
    /// QoS 2 received by the broker, PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// One of our packets holding a packet id.
#[derive(Debug)]
enum OutKind {
    Publish {
        packet: PublishPacket,
        state: PubState,
    },
    Subscribe {
        packet: SubscribePacket,
    },
    Unsubscribe {
        packet: UnsubscribePacket,
    },
}

#[derive(Debug)]
struct Outgoing {
    token: u64,
    /// Written to some transport at least once, so a resend carries DUP.
    sent: bool,
    kind: OutKind,
}

/// What we still owe the broker for one of its QoS 1/2 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InState {
    /// QoS 1 delivered to the engine, PUBACK waits for [`MqttSession::ack_message`].
    Qos1Delivered,
    /// QoS 2 delivered to the engine, PUBREC waits for [`MqttSession::ack_message`].
    Qos2Delivered,
    /// QoS 2 accepted (PUBREC sent or owed), waiting for PUBREL.
    Qos2Accepted,
}

/// The state of one upstream MQTT 3.1.1 connection; it outlives individual TCP connections so
/// that what was in flight is resent after a reconnect.
///
/// # Call order
/// 1. [`MqttSession::new`] once per broker connection slot.
/// 2. Transport up: [`MqttSession::handle_connected`] (queues CONNECT).
/// 3. Bytes read from the socket: [`MqttSession::handle_bytes`].
/// 4. At [`MqttSession::poll_timeout`]: [`MqttSession::handle_timeout`].
/// 5. Transport down, or after [`MqttEvent::Rejected`], [`MqttEvent::ProtocolError`],
///    [`MqttEvent::ConnectTimeout`] or [`MqttEvent::KeepAliveTimeout`] (close it then):
///    [`MqttSession::handle_disconnected`]; then again from 2.
///
/// After every input (including `publish`, `subscribe`, `unsubscribe`, `ack_message` and
/// `disconnect`) drain [`MqttSession::poll_event`] and [`MqttSession::poll_transmit`] and re-read
/// [`MqttSession::poll_timeout`]. Nothing but CONNECT is sent before CONNACK.
///
/// Keep-alive: every packet we queue counts as sent at the `now` of the call that queued it, so
/// the driver should write queued bytes promptly.
#[derive(Debug)]
pub struct MqttSession {
    /// Validated when the session was made; encoded on every (re)connection.
    connect: ConnectOptions,
    wire: &'static dyn MqttWire,
    keep_alive: Duration,
    ping_grace: Duration,
    connect_timeout: Duration,
    max_packet_size: usize,
    state: State,
    /// Received bytes not yet forming a whole packet; reused across reads.
    rx: BytesMut,
    /// Bytes still to come of a PUBLISH too large to take, discarded as they arrive.
    skip: usize,
    /// Bytes queued for the socket; handed out whole by `poll_transmit`.
    tx: BytesMut,
    events: VecDeque<MqttEvent>,
    /// When we last queued a packet (the keep-alive idle timer).
    last_sent: Instant,
    /// A PINGREQ is out and PINGRESP is due by then.
    ping_deadline: Option<Instant>,
    /// Next packet id to try.
    next_pid: u16,
    /// Order of our in-flight packets: resent in this order after a reconnect.
    next_seq: u64,
    outgoing: BTreeMap<u64, Outgoing>,
    /// Packet id to `outgoing` key. BTreeMaps rather than HashMaps: no random seeds in the core.
    pids: BTreeMap<u16, u64>,
    /// QoS 0 messages published while waiting for CONNACK.
    queued_qos0: VecDeque<PublishPacket>,
    /// Broker QoS 1/2 messages not yet completed, by the broker's packet id.
    incoming: BTreeMap<u16, InState>,
}

impl MqttSession {
    /// A session that is not connected yet, speaking through `wire`. Fails if the options
    /// cannot be put into a valid CONNECT packet.
    pub fn new(options: ConnectOptions, wire: &'static dyn MqttWire) -> Result<Self, MqttError> {
        validate_connect(&options)?;
        let ping_grace = Duration::from_millis((options.keep_alive.as_millis() / 2).max(1000));
        Ok(MqttSession {
            wire,
            keep_alive: options.keep_alive,
            ping_grace,
            connect_timeout: options.connect_timeout,
            max_packet_size: options.max_packet_size,
            state: State::Down,
            rx: BytesMut::new(),
            skip: 0,
            tx: BytesMut::new(),
            events: VecDeque::new(),
            last_sent: Instant::ZERO,
            ping_deadline: None,
            next_pid: 1,
            next_seq: 0,
            outgoing: BTreeMap::new(),
            pids: BTreeMap::new(),
            queued_qos0: VecDeque::new(),
            incoming: BTreeMap::new(),
            connect: options,
        })
    }

    /// The transport is up: queues CONNECT. Calling it again without
    /// [`MqttSession::handle_disconnected`] starts over as if the transport had been replaced.
    pub fn handle_connected(&mut self, now: Instant) {
        self.reset_transport();
        put(
            self.wire,
            &mut self.tx,
            &mut self.last_sent,
            now,
            Packet::Connect(&self.connect),
        );
        self.state = State::AwaitingConnAck {
            deadline: (self.connect_timeout > Duration::ZERO).then(|| now + self.connect_timeout),
        };
    }

    /// The transport is down: forgets partial input and unsent bytes and stops the timers.
    /// Our unacknowledged QoS 1/2 PUBLISH and PUBREL and pending SUBSCRIBE/UNSUBSCRIBE are kept
    /// and resent after the next CONNACK; QoS 0 messages waiting for CONNACK are dropped. Broker
    /// QoS 1 messages the engine has not acknowledged are forgotten (the broker redelivers them
    /// to a persistent session; a late `ack_message` for them is ignored); broker QoS 2 state is
    /// kept so that redeliveries are still recognised, unless the next CONNACK says the broker
    /// has no session.
    pub fn handle_disconnected(&mut self) {
        self.reset_transport();
        self.state = State::Down;
        self.incoming
            .retain(|_, state| *state != InState::Qos1Delivered);
    }

    /// Bytes read from the transport: any number of whole or partial packets.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        if !matches!(self.state, State::AwaitingConnAck { .. } | State::Connected) {
            return;
        }
        let skipped = self.skip.min(bytes.len());
        self.skip -= skipped;
        self.rx.extend_from_slice(&bytes[skipped..]);
        loop {
            match self.wire.read(&mut self.rx, self.max_packet_size) {
                Ok(Some(packet)) => {
                    self.handle_packet(now, packet);
                    if self.state == State::Failed {
                        break;
                    }
                }
                Ok(None) => break,
                Err(message) => {
                    self.protocol_error(message);
                    break;
                }
            }
        }
    }

    /// Timers: sends PINGREQ when nothing was sent for the keep-alive interval, and reports
    /// [`MqttEvent::KeepAliveTimeout`] when PINGRESP is late (half the interval, at least 1 s)
    /// or [`MqttEvent::ConnectTimeout`] when CONNACK is. Calls before a deadline do nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitingConnAck {
                deadline: Some(deadline),
            } if now >= deadline => self.fail(MqttEvent::ConnectTimeout),
            State::Connected if self.keep_alive > Duration::ZERO => match self.ping_deadline {
                Some(deadline) if now >= deadline => self.fail(MqttEvent::KeepAliveTimeout),
                Some(_) => {}
                None if now >= self.last_sent + self.keep_alive => {
                    self.write(now, Packet::PingReq);
                    self.ping_deadline = Some(now + self.ping_grace);
                }
                None => {}
            },
            _ => {}
        }
    }

    /// The next instant [`MqttSession::handle_timeout`] has work to do, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingConnAck { deadline } => deadline,
            State::Connected if self.keep_alive > Duration::ZERO => Some(
                self.ping_deadline
                    .unwrap_or(self.last_sent + self.keep_alive),
            ),
            _ => None,
        }
    }

    /// The next event, in the order they happened.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<MqttEvent> {
        self.events.pop_front()
    }

    /// Everything queued for the socket, as one buffer; `None` when nothing is queued.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.tx.is_empty() {
            None
        } else {
            // `split` leaves the spare capacity behind, and the allocation is reclaimed once the
            // driver drops the returned bytes, so the buffer is reused rather than reallocated.
            Some(self.tx.split().freeze())
        }
    }

    /// CONNACK accepted and the transport still up.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Publishes a message; `token` comes back in [`MqttEvent::Published`] (QoS 1 and 2) and
    /// [`MqttEvent::Received`] (QoS 2).
    ///
    /// QoS 0 is sent at once when connected, held until CONNACK while connecting, and refused
    /// with [`MqttError::NotConnected`] otherwise. QoS 1 and 2 take a packet id (returned) and
    /// are kept until acknowledged: sent at once when connected, otherwise after the next
    /// CONNACK.
    pub fn publish(
        &mut self,
        now: Instant,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        token: u64,
    ) -> Result<Option<u16>, MqttError> {
        topic::validate_topic_name(topic).map_err(MqttError::InvalidTopic)?;
        let mut packet = PublishPacket {
            topic: topic.to_owned(),
            payload,
            qos,
            retain,
            dup: false,
            pid: 0,
        };
        self.check_size(Packet::Publish(&packet))?;
        if qos == QoS::AtMostOnce {
            match self.state {
                State::Connected => self.write(now, Packet::Publish(&packet)),
                State::AwaitingConnAck { .. } => {
                    if self.queued_qos0.len() >= MAX_QUEUED_QOS0 {
                        return Err(MqttError::QueueFull(self.queued_qos0.len()));
                    }
                    self.queued_qos0.push_back(packet);
                }
                State::Down | State::Closing | State::Failed => {
                    return Err(MqttError::NotConnected)
                }
            }
            return Ok(None);
        }
        packet.pid = self.allocate_pid()?;
        let pid = packet.pid;
        let state = if qos == QoS::AtLeastOnce {
            PubState::Qos1
        } else {
            PubState::Qos2
        };
        self.track(now, pid, token, OutKind::Publish { packet, state });
        Ok(Some(pid))
    }

    /// After a restart: a QoS 2 PUBLISH an earlier session sent under `pid` may still be held
    /// by the broker, waiting for PUBREL. PUBREL is sent after every CONNACK until PUBCOMP
    /// comes (then [`MqttEvent::Published`] with `token`), and `pid` is not reused meanwhile, so
    /// that a new message under the same id cannot be taken by the broker for a duplicate
    /// (MQTT 3.1.1 §4.3.3). A broker that does not hold it answers PUBCOMP all the same.
    pub fn resume_release(&mut self, now: Instant, pid: u16, token: u64) {
        if pid == 0 || self.pids.contains_key(&pid) {
            return;
        }
        let packet = PublishPacket {
            topic: String::new(),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: false,
            dup: true,
            pid,
        };
        let state = PubState::Released;
        self.track(now, pid, token, OutKind::Publish { packet, state });
    }

    /// Subscribes to one filter; `token` comes back in [`MqttEvent::Subscribed`]. Sent at once
    /// when connected, otherwise after the next CONNACK.
    pub fn subscribe(
        &mut self,
        now: Instant,
        filter: &str,
        qos: QoS,
        token: u64,
    ) -> Result<(), MqttError> {
        topic::validate_topic_filter(filter).map_err(MqttError::InvalidFilter)?;
        let mut packet = SubscribePacket {
            pid: 0,
            filters: vec![(filter.to_owned(), qos)],
        };
        self.check_size(Packet::Subscribe(&packet))?;
        packet.pid = self.allocate_pid()?;
        let pid = packet.pid;
        self.track(now, pid, token, OutKind::Subscribe { packet });
        Ok(())
    }

    /// Unsubscribes from one filter; `token` comes back in [`MqttEvent::Unsubscribed`]. Sent at
    /// once when connected, otherwise after the next CONNACK.
    pub fn unsubscribe(&mut self, now: Instant, filter: &str, token: u64) -> Result<(), MqttError> {
        topic::validate_topic_filter(filter).map_err(MqttError::InvalidFilter)?;
        let mut packet = UnsubscribePacket {
            pid: 0,
            filters: vec![filter.to_owned()],
        };
        self.check_size(Packet::Unsubscribe(&packet))?;
        packet.pid = self.allocate_pid()?;
        let pid = packet.pid;
        self.track(now, pid, token, OutKind::Unsubscribe { packet });
        Ok(())
    }

    /// The engine has taken responsibility for the broker's message `pid` (from
    /// [`MqttEvent::Message`]): sends PUBACK (QoS 1) or PUBREC (QoS 2; the broker's PUBREL is
    /// then answered with PUBCOMP automatically). Unknown ids are ignored. While disconnected a
    /// QoS 1 acknowledgement is dropped (the broker redelivers), and a QoS 2 one is remembered
    /// and answered when the broker redelivers.
    pub fn ack_message(&mut self, now: Instant, pid: u16) {
        match self.incoming.get(&pid).copied() {
            Some(InState::Qos1Delivered) => {
                self.incoming.remove(&pid);
                if self.state == State::Connected {
                    self.write(now, Packet::PubAck(pid));
                }
            }
            Some(InState::Qos2Delivered) => {
                self.incoming.insert(pid, InState::Qos2Accepted);
                if self.state == State::Connected {
                    self.write(now, Packet::PubRec(pid));
                }
            }
            Some(InState::Qos2Accepted) | None => {
                debug!(pid, "ack for a broker message not awaiting one; ignored");
            }
        }
    }

    /// Number of packet ids in use: our QoS 1/2 PUBLISH not yet completed plus SUBSCRIBE and
    /// UNSUBSCRIBE not yet acknowledged.
    pub fn inflight(&self) -> usize {
        self.outgoing.len()
    }

    /// Queues DISCONNECT for a clean close (the broker then discards the will). Only sent when
    /// connected; afterwards nothing more is sent or processed, and the engine closes the
    /// transport once the bytes are written. In-flight packets are kept for a later reconnect.
    pub fn disconnect(&mut self) {
        if self.state == State::Connected {
            // No `now` needed: keep-alive stops here.
            let now = self.last_sent;
            self.write(now, Packet::Disconnect);
            self.state = State::Closing;
        }
    }

    /// Clears what belongs to one transport.
    fn reset_transport(&mut self) {
        self.rx.clear();
        self.skip = 0;
        self.tx.clear();
        self.ping_deadline = None;
        self.queued_qos0.clear();
    }

    /// Appends one packet to the transmit buffer and restarts the keep-alive idle timer.
    fn write(&mut self, now: Instant, packet: Packet<'_>) {
        put(self.wire, &mut self.tx, &mut self.last_sent, now, packet);
    }

    /// Refuses a packet larger than MQTT allows, before it takes a packet id.
    fn check_size(&self, packet: Packet<'_>) -> Result<(), MqttError> {
        let size = self.wire.encoded_len(packet);
        if size > MAX_PACKET_SIZE {
            Err(MqttError::PacketTooLarge { size })
        } else {
            Ok(())
        }
    }

    /// Reports a fatal event and ignores input until the transport is replaced.
    fn fail(&mut self, event: MqttEvent) {
        self.events.push_back(event);
        self.state = State::Failed;
        self.rx.clear();
        self.ping_deadline = None;
    }

    fn protocol_error(&mut self, message: String) {
        debug!(%message, "protocol error from broker");
        self.fail(MqttEvent::ProtocolError(message));
    }

    /// The next free packet id after the last one handed out, wrapping from 65535 to 1.
    fn allocate_pid(&mut self) -> Result<u16, MqttError> {
        if self.pids.len() >= usize::from(u16::MAX) {
            return Err(MqttError::PacketIdsExhausted);
        }
        // Terminates: fewer than 65535 ids are taken.
        loop {
            let pid = self.next_pid;
            self.next_pid = if pid == u16::MAX { 1 } else { pid + 1 };
            if !self.pids.contains_key(&pid) {
                return Ok(pid);
            }
        }
    }

    /// Records a packet holding `pid` and sends it if connected.
    fn track(&mut self, now: Instant, pid: u16, token: u64, kind: OutKind) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut entry = Outgoing {
            token,
            sent: false,
            kind,
        };
        if self.state == State::Connected {
            self.send_outgoing(now, &mut entry);
        }
        self.pids.insert(pid, seq);
        self.outgoing.insert(seq, entry);
    }

    /// Writes (or rewrites) one of our in-flight packets: PUBLISH with DUP if it went out
    /// before, PUBREL for a QoS 2 message the broker already has (§4.4).
    fn send_outgoing(&mut self, now: Instant, entry: &mut Outgoing) {
        let dup = entry.sent;
        entry.sent = true;
        match &mut entry.kind {
            OutKind::Publish {
                packet,
                state: PubState::Released,
            } => {
                let pid = packet.pid;
                self.write(now, Packet::PubRel(pid));
            }
            OutKind::Publish { packet, .. } => {
                packet.dup = dup;
                self.write(now, Packet::Publish(packet));
            }
            OutKind::Subscribe { packet } => self.write(now, Packet::Subscribe(packet)),
            OutKind::Unsubscribe { packet } => self.write(now, Packet::Unsubscribe(packet)),
        }
    }

    /// After CONNACK: everything in flight in its original order, then the QoS 0 messages that
    /// waited for CONNACK.
    fn resend_all(&mut self, now: Instant) {
        let mut outgoing = std::mem::take(&mut self.outgoing);
        for entry in outgoing.values_mut() {
            self.send_outgoing(now, entry);
        }
        self.outgoing = outgoing;
        while let Some(packet) = self.queued_qos0.pop_front() {
            self.write(now, Packet::Publish(&packet));
        }
    }

    /// Looks up our in-flight packet by id.
    fn outgoing_mut(&mut self, pid: u16) -> Option<(u64, &mut Outgoing)> {
        let seq = *self.pids.get(&pid)?;
        self.outgoing.get_mut(&seq).map(|entry| (seq, entry))
    }

    /// Forgets a completed in-flight packet, freeing its id.
    fn complete(&mut self, pid: u16, seq: u64) -> Option<Outgoing> {
        self.pids.remove(&pid);
        self.outgoing.remove(&seq)
    }

    fn handle_packet(&mut self, now: Instant, packet: Incoming) {
        if let State::AwaitingConnAck { .. } = self.state {
            // §3.2.0-1: the first packet from the server is CONNACK.
            match packet {
                Incoming::ConnAck {
                    refused: Some(reason),
                    ..
                } => self.fail(MqttEvent::Rejected { reason }),
                Incoming::ConnAck {
                    session_present,
                    refused: None,
                } => {
                    self.state = State::Connected;
                    if !session_present {
                        // The broker kept nothing: no redelivery will come for these ids.
                        self.incoming.clear();
                    }
                    self.events
                        .push_back(MqttEvent::Connected { session_present });
                    self.resend_all(now);
                }
                other => self.protocol_error(format!("{} before CONNACK", other.name())),
            }
            return;
        }
        match packet {
            Incoming::ConnAck { .. } => self.protocol_error("second CONNACK".into()),
            Incoming::Publish {
                topic,
                payload,
                qos,
                retain,
                dup,
                pid,
            } => self.handle_publish(now, topic, payload, qos, retain, dup, pid),
            Incoming::PubAck(pid) => match self.outgoing_mut(pid) {
                Some((
                    seq,
                    Outgoing {
                        kind:
                            OutKind::Publish {
                                state: PubState::Qos1,
                                ..
                            },
                        ..
                    },
                )) => {
                    if let Some(entry) = self.complete(pid, seq) {
                        self.events
                            .push_back(MqttEvent::Published { token: entry.token });
                    }
                }
                _ => debug!(pid, "PUBACK for no QoS 1 PUBLISH in flight; ignored"),
            },
            Incoming::PubRec(pid) => {
                // Some(Some(token)): first PUBREC; Some(None): a repeat, answered again (§4.3.3).
                let received = match self.outgoing_mut(pid) {
                    Some((
                        _,
                        Outgoing {
                            token,
                            kind: OutKind::Publish { packet, state },
                            ..
                        },
                    )) => match *state {
                        PubState::Qos2 => {
                            *state = PubState::Released;
                            // Only the id is needed for PUBREL from now on.
                            packet.topic = String::new();
                            packet.payload = Bytes::new();
                            Some(Some(*token))
                        }
                        PubState::Released => Some(None),
                        PubState::Qos1 => None,
                    },
                    _ => None,
                };
                match received {
                    Some(token) => {
                        if let Some(token) = token {
                            self.events.push_back(MqttEvent::Received { token });
                        }
                        self.write(now, Packet::PubRel(pid));
                    }
                    None => debug!(pid, "PUBREC for no QoS 2 PUBLISH in flight; ignored"),
                }
            }
            Incoming::PubComp(pid) => match self.outgoing_mut(pid) {
                Some((
                    seq,
                    Outgoing {
                        kind:
                            OutKind::Publish {
                                state: PubState::Released,
                                ..
                            },
                        ..
                    },
                )) => {
                    if let Some(entry) = self.complete(pid, seq) {
                        self.events
                            .push_back(MqttEvent::Published { token: entry.token });
                    }
                }
                _ => debug!(pid, "PUBCOMP for no PUBREL in flight; ignored"),
            },
            Incoming::SubAck { pid, granted } => match self.outgoing_mut(pid) {
                Some((
                    seq,
                    Outgoing {
                        kind: OutKind::Subscribe { packet },
                        ..
                    },
                )) => {
                    let expected = packet.filters.len();
                    if granted.len() != expected {
                        self.protocol_error(format!(
                            "SUBACK with {} return codes for {expected} filters",
                            granted.len()
                        ));
                    } else if let Some(entry) = self.complete(pid, seq) {
                        self.events.push_back(MqttEvent::Subscribed {
                            token: entry.token,
                            granted,
                        });
                    }
                }
                _ => debug!(pid, "SUBACK for no SUBSCRIBE in flight; ignored"),
            },
            Incoming::UnsubAck(pid) => match self.outgoing_mut(pid) {
                Some((
                    seq,
                    Outgoing {
                        kind: OutKind::Unsubscribe { .. },
                        ..
                    },
                )) => {
                    if let Some(entry) = self.complete(pid, seq) {
                        self.events
                            .push_back(MqttEvent::Unsubscribed { token: entry.token });
                    }
                }
                _ => debug!(pid, "UNSUBACK for no UNSUBSCRIBE in flight; ignored"),
            },
            Incoming::PubRel(pid) => {
                if matches!(
                    self.incoming.get(&pid),
                    Some(InState::Qos2Delivered | InState::Qos2Accepted)
                ) {
                    self.incoming.remove(&pid);
                }
                // Answered even for an unknown id (§4.3.3): the broker may be retrying a
                // PUBREL whose PUBCOMP was lost, after we already forgot the id.
                self.write(now, Packet::PubComp(pid));
            }
            Incoming::PingResp => self.ping_deadline = None,
            Incoming::TooLarge {
                size,
                qos,
                pid,
                skip,
            } => {
                self.skip = skip;
                // Acknowledged, so the broker does not resend it forever: no device could take
                // it, and the engine counts it as dropped.
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.write(now, Packet::PubAck(pid)),
                    QoS::ExactlyOnce => {
                        self.incoming.insert(pid, InState::Qos2Accepted);
                        self.write(now, Packet::PubRec(pid));
                    }
                }
                self.events.push_back(MqttEvent::TooLarge { size });
            }
        }
    }

    #[allow(clippy::too_many_arguments)] // the fields of one PUBLISH, taken apart by the codec
    fn handle_publish(
        &mut self,
        now: Instant,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        dup: bool,
        pid: u16,
    ) {
        let deliver = match qos {
            QoS::AtMostOnce => true,
            QoS::AtLeastOnce => {
                self.incoming.insert(pid, InState::Qos1Delivered);
                true
            }
            QoS::ExactlyOnce => match self.incoming.get(&pid) {
                // Still with the engine: its ack will send PUBREC.
                Some(InState::Qos2Delivered) => false,
                // Already accepted: the broker missed our PUBREC; repeat it (§4.3.3).
                Some(InState::Qos2Accepted) => {
                    self.write(now, Packet::PubRec(pid));
                    false
                }
                Some(InState::Qos1Delivered) | None => {
                    self.incoming.insert(pid, InState::Qos2Delivered);
                    true
                }
            },
        };
        if deliver {
            self.events.push_back(MqttEvent::Message {
                topic,
                payload,
                qos,
                retain,
                pid: (qos != QoS::AtMostOnce).then_some(pid),
                dup,
            });
        }
    }
}

/// Appends one packet to `tx` and restarts the keep-alive idle timer (a free function so that
/// CONNECT can be written from the options kept beside the buffer).
fn put(
    wire: &dyn MqttWire,
    tx: &mut BytesMut,
    last_sent: &mut Instant,
    now: Instant,
    packet: Packet<'_>,
) {
    match wire.write(packet, tx) {
        // `max`: a caller passing a stale `now` must not make the next PINGREQ come early.
        Ok(()) => *last_sent = (*last_sent).max(now),
        // Every packet is validated when it is built, so this is a bug, not a broker fault.
        Err(error) => tracing::error!(%error, "MQTT packet not encoded"),
    }
}

/// Refuses options that a codec would encode wrongly or that a broker must reject, so that a
/// bad configuration shows up at startup, not as a dropped connection.
fn validate_connect(options: &ConnectOptions) -> Result<(), MqttError> {
    const MAX_FIELD: usize = u16::MAX as usize;
    let invalid = MqttError::InvalidOptions;
    let millis = options.keep_alive.as_millis();
    if millis % 1000 != 0 {
        return Err(invalid("keep_alive must be a whole number of seconds"));
    }
    if millis / 1000 > u64::from(u16::MAX) {
        return Err(invalid("keep_alive exceeds 65535 s"));
    }
    if options.client_id.len() > MAX_FIELD {
        return Err(invalid("client_id longer than 65535 bytes"));
    }
    // §3.1.3-7: a zero-byte client id is only allowed with a clean session.
    if options.client_id.is_empty() && !options.clean_session {
        return Err(invalid("an empty client_id requires clean_session"));
    }
    // Empty credentials are left out, so an empty username is the same as none; a password
    // needs a username (§3.1.2-22) or the packet would be malformed.
    let username = options.username.as_deref().unwrap_or_default();
    let password = options.password.as_deref().unwrap_or_default();
    if username.len() > MAX_FIELD || password.len() > MAX_FIELD {
        return Err(invalid("username or password longer than 65535 bytes"));
    }
    if username.is_empty() && !password.is_empty() {
        return Err(invalid("a password requires a non-empty username"));
    }
    if let Some(will) = &options.will {
        topic::validate_topic_name(&will.topic).map_err(|_| invalid("invalid will topic"))?;
        if will.payload.len() > MAX_FIELD {
            return Err(invalid("will payload longer than 65535 bytes"));
        }
    }
    Ok(())
}
