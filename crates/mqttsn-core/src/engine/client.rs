//! One device's session: where it is, what state it is in, its will, its topic ids, and the
//! messages in flight in each direction.

use super::admission::{Budget, OverdraftShare};
use super::peer::PeerAddr;
use super::registry::TopicRegistry;
use super::sleep::{PushOutcome, SleepBuffer, SleepLimits};
use super::ConnId;
use crate::codec::QoS;
use crate::time::Instant;
use bytes::Bytes;
use std::sync::Arc;

/// Where a session is in its life (§6.14 plus the connect handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// CONNECT with Will: WILLTOPICREQ sent, waiting for WILLTOPIC.
    WillTopic,
    /// WILLMSGREQ sent, waiting for WILLMSG.
    WillMsg,
    /// Transparent mode: waiting for the broker to accept this device's connection.
    Connecting,
    /// Connected and awake.
    Active,
    /// Asleep: messages are buffered.
    Asleep,
    /// Woke up with PINGREQ: buffered messages are being delivered.
    Awake,
    /// Gone, but the session (subscriptions, ids, buffered messages) is kept for CleanSession=0.
    Disconnected,
}

impl State {
    /// Frames other than CONNECT are only accepted in these states.
    pub fn is_connected(self) -> bool {
        matches!(self, State::Active | State::Awake | State::Asleep)
    }

    /// Messages are delivered (not only buffered) in these states.
    pub fn delivers(self) -> bool {
        matches!(self, State::Active | State::Awake)
    }
}

/// A will, as the device set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The topic.
    pub topic: Arc<str>,
    /// The message (empty until WILLMSG arrives).
    pub payload: Bytes,
    /// QoS to publish it with.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
}

/// A message waiting to be delivered to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Down {
    /// Topic name; the topic id is looked up (or REGISTERed) just before sending.
    pub topic: Arc<str>,
    /// The payload.
    pub payload: Bytes,
    /// Delivery QoS (0..=2).
    pub qos: QoS,
    /// The retain flag as the broker delivered it.
    pub retain: bool,
}

impl Down {
    /// What a held message is charged against `sleep.max_bytes` and `sleep.max_total_bytes`:
    /// its payload (a copy of its own) and its topic name.
    pub fn size(&self) -> usize {
        self.payload.len() + self.topic.len()
    }
}

/// The one unacknowledged message the gateway has sent to a device.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// What is awaited.
    pub kind: InflightKind,
    /// The MsgId of the message sent.
    pub msg_id: u16,
    /// Retransmissions so far.
    pub retries: u8,
    /// When to retransmit next.
    pub retry_at: Instant,
}

/// What kind of gateway-to-device exchange is in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflightKind {
    /// REGISTER of `topic` as `topic_id`, awaiting REGACK.
    Register {
        /// The topic.
        topic: Arc<str>,
        /// The id proposed.
        topic_id: u16,
    },
    /// PUBLISH (QoS 1 awaiting PUBACK, QoS 2 awaiting PUBREC); the encoded frame is kept so a
    /// retransmission only flips the DUP bit.
    Publish {
        /// The frame as first sent.
        frame: Vec<u8>,
        /// Its QoS.
        qos: QoS,
    },
    /// PUBREL sent for a QoS 2 delivery, awaiting PUBCOMP.
    PubRel,
}

/// Where a device's QoS 1/2 PUBLISH stands on its way to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpStage {
    /// Forwarded, awaiting PUBACK (QoS 1) or PUBREC (QoS 2) from the broker.
    Forwarded,
    /// QoS 2: the broker has it (PUBREC) and PUBREC went to the device.
    Received,
    /// Forwarded before the gateway restarted: the broker's answer went to the connection
    /// that is gone, so the device's retransmission is forwarded again.
    Restored,
}

/// A device's QoS 1/2 PUBLISH not yet acknowledged to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpFlight {
    /// The device's MsgId.
    pub msg_id: u16,
    /// The topic id to echo in PUBACK.
    pub topic_id: u16,
    /// QoS 1 or 2.
    pub qos: QoS,
    /// Progress.
    pub stage: UpStage,
    /// The packet id it went upstream with (kept across a restart for QoS 2, see
    /// [`super::mqtt::MqttSession::resume_release`]).
    pub pid: u16,
}

/// A SUBSCRIBE waiting for the broker's SUBACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSub {
    /// The filter subscribed to.
    pub filter: Arc<str>,
    /// The device's MsgId.
    pub msg_id: u16,
    /// The topic id to report in SUBACK.
    pub topic_id: u16,
    /// QoS granted if the broker accepts.
    pub qos: QoS,
}

/// One device's session.
#[derive(Debug)]
pub struct Client {
    /// Distinguishes this session from earlier ones in the same slot (stale tokens).
    pub generation: u16,
    /// The ClientId.
    pub client_id: Arc<str>,
    /// Where the device is now.
    pub peer: PeerAddr,
    /// Life-cycle state.
    pub state: State,
    /// CleanSession of the last CONNECT.
    pub clean_session: bool,
    /// Keep-alive from CONNECT, in seconds (as on the wire: 16 bits).
    pub keep_alive_secs: u16,
    /// Sleep duration from DISCONNECT, in seconds.
    pub sleep_secs: u16,
    /// Last frame from the device.
    pub last_seen: Instant,
    /// The keep-alive deadline currently in the timer queue, if any.
    pub supervision_at: Option<Instant>,
    /// The will, if set.
    pub will: Option<Box<Will>>,
    /// Normal topic ids.
    pub registry: TopicRegistry,
    /// Messages waiting for delivery (bounded; the sleeping buffer while asleep). Boxed and
    /// only present while not empty: most sessions have nothing queued most of the time.
    queue: Option<Box<SleepBuffer<Down>>>,
    /// Sequence number of the oldest queued message (the next ones follow it); only ever
    /// grows, so that the store can tell which held messages are new and which are gone.
    pub queue_head: u64,
    /// The one unacknowledged gateway-to-device exchange.
    pub inflight: Option<Box<Inflight>>,
    /// Last MsgId the gateway used towards this device.
    pub last_msg_id: u16,
    /// Transparent mode: this device's own broker connection.
    pub conn: Option<ConnId>,
    /// Frames of any kind the device may still send ([`super::admission`]).
    pub frame_budget: Budget,
    /// What the device may still send upstream.
    pub budget: Budget,
    /// What it was let through while its broker connection was congested.
    pub overdraft_share: OverdraftShare,
    /// The device at `peer` has shown it receives what the gateway sends (it sent PINGREQ, or
    /// acknowledged a gateway PUBLISH, PUBREL or REGISTER). Until then it gets no more bytes
    /// than it sent, so that a forged source address cannot be flooded through the gateway.
    pub verified: bool,
    /// What the DTLS association it connected over proved (not stored: after a restart a
    /// device shakes hands again).
    pub identity: Option<super::auth::Identity>,
    /// While not verified: bytes received from `peer` less bytes sent to it.
    pub credit: u32,
    /// Changed since the engine last persisted (listed once in its changed-sessions list).
    pub unpersisted: bool,
    /// State most devices never need, allocated on first use, so an idle session stays small.
    extras: Option<Box<Extras>>,
}

/// The parts of a session that are empty for most devices most of the time.
#[derive(Debug, Default)]
pub struct Extras {
    /// Topics the device refused in REGACK: not delivered again.
    pub refused: Vec<Arc<str>>,
    /// Device-to-broker QoS 1/2 publishes not yet acknowledged to the device.
    pub up: Vec<UpFlight>,
    /// SUBSCRIBEs awaiting the broker.
    pub pending_subs: Vec<PendingSub>,
    /// Transparent mode: this device's subscriptions, restored after a broker reconnect.
    pub filters: Vec<(Arc<str>, QoS)>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.refused.is_empty()
            && self.up.is_empty()
            && self.pending_subs.is_empty()
            && self.filters.is_empty()
    }
}

impl Client {
    /// A new session in `state`.
    pub fn new(generation: u16, client_id: Arc<str>, peer: PeerAddr, now: Instant) -> Self {
        Client {
            generation,
            client_id,
            peer,
            state: State::Active,
            clean_session: true,
            keep_alive_secs: 0,
            sleep_secs: 0,
            last_seen: now,
            supervision_at: None,
            will: None,
            registry: TopicRegistry::new(),
            queue: None,
            queue_head: 0,
            inflight: None,
            last_msg_id: 0,
            conn: None,
            frame_budget: Budget::default(),
            budget: Budget::default(),
            overdraft_share: OverdraftShare::default(),
            verified: false,
            identity: None,
            credit: 0,
            unpersisted: false,
            extras: None,
        }
    }

    /// The next MsgId for a message to the device (never 0).
    pub fn next_msg_id(&mut self) -> u16 {
        self.last_msg_id = self.last_msg_id.checked_add(1).unwrap_or(1);
        self.last_msg_id
    }

    /// Forgets everything a clean session discards.
    pub fn wipe(&mut self) {
        self.will = None;
        self.registry.clear();
        self.queue_head += self.queued() as u64;
        self.queue = None;
        self.inflight = None;
        self.extras = None;
    }

    /// Queues a message for delivery within `limits`.
    pub fn push_down(
        &mut self,
        down: Down,
        size: usize,
        limits: &SleepLimits,
    ) -> PushOutcome<Down> {
        let outcome = self
            .queue
            .get_or_insert_with(Default::default)
            .push(down, size, limits);
        if let PushOutcome::StoredAfterDropping(evicted) = &outcome {
            self.queue_head += evicted.len() as u64;
        }
        self.drop_empty_queue();
        outcome
    }

    /// The next message to deliver.
    pub fn front_down(&self) -> Option<&Down> {
        self.queue.as_ref()?.front()
    }

    /// Takes the next message to deliver.
    pub fn pop_down(&mut self) -> Option<Down> {
        let down = self.queue.as_mut()?.pop_front();
        if down.is_some() {
            self.queue_head += 1;
        }
        self.drop_empty_queue();
        down
    }

    /// Bytes the messages waiting are charged (see [`Down::size`]).
    pub fn queued_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.bytes())
    }

    /// The messages waiting, oldest first.
    pub fn queued_messages(&self) -> impl Iterator<Item = &Down> + '_ {
        self.queue.iter().flat_map(|q| q.iter())
    }

    /// Number of messages waiting.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    fn drop_empty_queue(&mut self) {
        if self.queue.as_ref().is_some_and(|q| q.is_empty()) {
            self.queue = None;
        }
    }

    /// The rarely used parts, for reading.
    pub fn extras(&self) -> Option<&Extras> {
        self.extras.as_deref()
    }

    /// The rarely used parts, for changing (allocated on first use).
    pub fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Default::default)
    }

    /// Frees the rarely used parts once they are empty again.
    pub fn tidy(&mut self) {
        if self.extras.as_ref().is_some_and(|e| e.is_empty()) {
            self.extras = None;
        }
    }

    /// Device-to-broker QoS 1/2 publishes in flight.
    pub fn up(&self) -> &[UpFlight] {
        self.extras().map_or(&[], |e| &e.up)
    }

    /// Whether the device refused `topic` in a REGACK.
    pub fn refuses(&self, topic: &str) -> bool {
        self.extras()
            .is_some_and(|e| e.refused.iter().any(|t| &**t == topic))
    }

    /// Transparent mode: the device's subscriptions.
    pub fn filters(&self) -> &[(Arc<str>, QoS)] {
        self.extras().map_or(&[], |e| &e.filters)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        eprintln!(
            "Client {} PeerAddr {} Option<Client> {} Down {}",
            std::mem::size_of::<super::Client>(),
            std::mem::size_of::<super::PeerAddr>(),
            std::mem::size_of::<Option<super::Client>>(),
            std::mem::size_of::<super::Down>()
        );
    }
}
