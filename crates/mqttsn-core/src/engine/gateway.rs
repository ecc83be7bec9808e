//! The [`Gateway`] itself: the session table, the timer queue, the output queues, and the
//! public `handle_*`/`poll_*` interface. The protocol handlers live in `device.rs` (frames from
//! devices), `broker.rs` (events from upstream connections) and `delivery.rs` (messages to
//! devices).

use super::admission::AddressBudgets;
use super::auth::{AuthPolicy, Identity};
use super::client::{Client, State};
use super::mqtt::wire::MqttWire;
use super::mqtt::{ConnectOptions, LastWill, MqttError, MqttSession};
use super::peer::{Destination, Link, PeerAddr, Transmit};
use super::registry::{PredefinedTopics, TopicInterner};
use super::slab::Slab;
use super::subscriptions::SubscriptionTable;
use super::{ClientKey, ConnId, Event, UpstreamCommand};
use crate::codec::{Forwarder, Frame, Message};
use crate::hash::HashMap;
use crate::settings::{Mode, Settings};
use crate::time::{Duration, Instant};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

/// What a timer entry is for. Entries are not removed when plans change; a popped entry is
/// checked against the current state and ignored if stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    /// Keep-alive or sleep supervision of a client.
    Supervision(ClientKey, u16),
    /// Retransmission to a client.
    Retry(ClientKey, u16),
    /// Next ADVERTISE broadcast.
    Advertise,
    /// Keep-alive of an upstream MQTT connection.
    Upstream(ConnId),
}

/// Running totals, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from devices.
    pub frames_in: u64,
    /// Frames sent to devices.
    pub frames_out: u64,
    /// Frames that did not decode, or made no sense in the sender's state.
    pub frames_dropped: u64,
    /// PUBLISH frames from devices forwarded to the broker.
    pub published_up: u64,
    /// Messages from the broker delivered (sent) to devices.
    pub delivered_down: u64,
    /// Messages for devices dropped (full buffer, refused topic, lost client).
    pub messages_dropped: u64,
    /// Retransmissions to devices.
    pub retransmissions: u64,
    /// Clients declared lost.
    pub clients_lost: u64,
    /// CONNECTs refused.
    pub connects_rejected: u64,
    /// Kept (CleanSession=0) sessions deleted after `sessions.expiry` without their device.
    pub sessions_expired: u64,
    /// Broker messages too large for any device (over the session's size limit), dropped
    /// without dropping the broker connection.
    pub too_large_dropped: u64,
    /// Datagrams dropped unread for being longer than their transport accepts
    /// (`udp.max_frame`); also counted in `frames_dropped`.
    pub frames_too_long: u64,
    /// Frames dropped before decoding because their sender (a device, or an address without a
    /// session) went over its frame budget (`limits.frame_rate`, `limits.frame_burst`).
    pub frames_over_budget: u64,
    /// Device requests refused (QoS 1/2 with "rejected: congestion") or dropped (QoS 0) because
    /// the client went over its own budget (`limits.publish_rate`, `limits.publish_burst`).
    pub over_budget: u64,
    /// QoS 1/2 PUBLISH, REGISTER and SUBSCRIBE answered "rejected: congestion" because the
    /// broker connection was congested.
    pub congestion_refused: u64,
    /// QoS 0 and -1 PUBLISH dropped because the broker connection was congested.
    pub congestion_dropped: u64,
    /// Times a message for a device waited because its address had not yet shown that it
    /// receives (the return-path check: no more bytes out than in until then).
    pub return_path_waits: u64,
    /// SEARCHGW left unanswered because GWINFO went out less than `timers.gwinfo_interval`
    /// ago.
    pub searchgw_unanswered: u64,
    /// CONNECTs and wake-ups refused because the device did not prove the ClientId's
    /// identity (`[auth]`: not listed, wrong network, radio or DTLS identity); the session of
    /// that ClientId, if any, is untouched. Also counted in `connects_rejected` for CONNECT.
    pub not_authorized: u64,
    /// PUBLISH, REGISTER, SUBSCRIBE and wills refused by the ACL (return code 0x03), QoS -1
    /// publishes from outside `auth.qos_minus1_from`, and broker messages a device may not
    /// receive.
    pub acl_refused: u64,
}

/// An upstream connection and the session state behind it.
pub(super) struct Upstream {
    pub session: MqttSession,
    /// Transparent mode: the client this connection belongs to.
    pub owner: Option<ClientKey>,
    /// The earliest keep-alive deadline already in the timer queue.
    pub scheduled: Option<Instant>,
    /// Listed in `dirty_conns`: its session may have bytes to send.
    pub dirty: bool,
    /// The driver reported its send queue over the bound ([`super::UpstreamEvent::Congested`]).
    pub congested: bool,
    /// Bytes of device requests let through since it became congested.
    pub overdraft: usize,
    /// How many times it has become congested ([`super::admission::OverdraftShare`]).
    pub episode: u32,
}

/// The MQTT-SN gateway engine. See the [module documentation](super) for the call order.
pub struct Gateway {
    pub(super) settings: Settings,
    /// The MQTT packet codec of every broker connection.
    pub(super) wire: &'static dyn MqttWire,
    pub(super) clients: Slab<Client>,
    pub(super) generation: u16,
    pub(super) by_client_id: HashMap<Arc<str>, ClientKey>,
    pub(super) by_peer: HashMap<PeerAddr, ClientKey>,
    pub(super) predefined: PredefinedTopics,
    pub(super) interner: TopicInterner,
    pub(super) subscriptions: SubscriptionTable,
    pub(super) upstreams: BTreeMap<ConnId, Upstream>,
    pub(super) next_conn: u64,
    pub(super) broker_up: bool,
    pub(super) timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    pub(super) advertise_at: Option<Instant>,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) commands: VecDeque<UpstreamCommand>,
    /// Connections whose sessions may have output not yet turned into a `Send`.
    pub(super) dirty_conns: Vec<ConnId>,
    pub(super) events: VecDeque<Event>,
    pub(super) counters: Counters,
    /// Aggregating mode: per filter, the client whose SUBSCRIBE the broker acknowledged last.
    /// A message with the retain flag on the shared connection is a retained message the broker
    /// sends right after such a SUBACK (MQTT 3.1.1 §3.3.1.3: forwarded messages have it
    /// cleared), so it goes to that client only, not again to every earlier subscriber.
    pub(super) retained_for: HashMap<Arc<str>, ClientKey>,
    /// Scratch space for subscription matching, reused to avoid an allocation per message.
    pub(super) scratch: Vec<(ClientKey, crate::codec::QoS)>,
    /// The latest time an input carried (for helpers deep in a call chain).
    pub(super) now: Instant,
    /// Bytes held in every client's queue together. `sleep.max_total_bytes` bounds what clients
    /// that are not taking messages now (asleep, gone, unproven) hold together; a client
    /// taking messages is bounded by its own `sleep.max_bytes`.
    pub(super) held_bytes: usize,
    /// When refusals were last reported ([`Event::Overload`]).
    pub(super) overload_reported_at: Option<Instant>,
    /// Publish budgets of QoS -1 senders without a session, per address slot
    /// ([`super::admission`]).
    pub(super) anonymous_budgets: AddressBudgets,
    /// Frame budgets of senders without a session, per address slot.
    pub(super) sessionless_frames: AddressBudgets,
    /// When SEARCHGW was last answered, per address slot (`timers.gwinfo_interval`);
    /// allocated at the first SEARCHGW.
    pub(super) gwinfo_at: Option<Box<[Option<Instant>]>>,
    /// What a restart must keep, when a store is in use ([`super::persist`]).
    pub(super) persist: Option<Box<super::persist::Persistence>>,
    /// Who may connect as whom, and the topic rules (`[auth]`).
    pub(super) auth: AuthPolicy,
    /// While a frame from a DTLS association is handled: what the association proved.
    pub(super) inbound_identity: Option<Identity>,
}

impl Gateway {
    /// A gateway configured by `settings`, speaking MQTT to the broker through `wire`; it
    /// immediately asks for its own broker connection.
    pub fn new(settings: Settings, wire: &'static dyn MqttWire) -> Self {
        let seed = settings.hash_seed;
        let mut gw = Gateway {
            predefined: PredefinedTopics::new(&settings.predefined, seed),
            settings,
            wire,
            clients: Slab::default(),
            generation: 0,
            by_client_id: HashMap::with_hasher(seed),
            by_peer: HashMap::with_hasher(seed),
            interner: TopicInterner::new(seed),
            subscriptions: SubscriptionTable::new(seed),
            upstreams: BTreeMap::new(),
            next_conn: 1,
            broker_up: false,
            timers: BinaryHeap::new(),
            advertise_at: None,
            transmits: VecDeque::new(),
            commands: VecDeque::new(),
            dirty_conns: Vec::new(),
            events: VecDeque::new(),
            counters: Counters::default(),
            retained_for: HashMap::with_hasher(seed),
            scratch: Vec::new(),
            now: Instant::ZERO,
            held_bytes: 0,
            overload_reported_at: None,
            gwinfo_at: None,
            anonymous_budgets: AddressBudgets::default(),
            sessionless_frames: AddressBudgets::default(),
            persist: None,
            auth: AuthPolicy::open(seed),
            inbound_identity: None,
        };
        let id = format!(
            "{}gateway-{}",
            gw.settings.client_id_prefix, gw.settings.gw_id
        );
        if let Err(e) = gw.open_upstream(
            ConnId::GATEWAY,
            // Durable: the broker keeps the gateway's session (its subscriptions and the QoS
            // 1/2 messages for it) while the gateway is down.
            gw.connect_options(id, !gw.settings.durable, None),
            None,
        ) {
            // Only a configuration the loader already rejects gets here (e.g. a password
            // without a user name); report it rather than panic.
            gw.events.push_back(Event::BrokerError {
                reason: format!("cannot open the broker connection: {e}"),
            });
        }
        gw
    }

    // ----- public interface -------------------------------------------------------------

    /// A frame arrived inside a DTLS association with `from` that proved `identity`: the
    /// ClientId it connects with must be that identity's ([`AuthPolicy::authenticate`]).
    pub fn handle_secured_frame(
        &mut self,
        now: Instant,
        from: PeerAddr,
        identity: &Identity,
        bytes: &[u8],
    ) {
        self.inbound_identity = Some(identity.clone());
        self.handle_frame(now, from, bytes);
        self.inbound_identity = None;
    }

    /// Puts a new [`AuthPolicy`] in force (at start, and on reload). Every session is checked
    /// against it: a connected device that may no longer be who it is gets DISCONNECT and is
    /// lost (its will is published); a kept session that may not come back goes. Returns
    /// the addresses of the devices it disconnected (their transports may close too).
    pub fn set_auth(&mut self, now: Instant, policy: AuthPolicy) -> Vec<PeerAddr> {
        self.now = self.now.max(now);
        self.auth = policy;
        let refused: Vec<ClientKey> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                // A DTLS session restored without its identity is checked when its device
                // proves one again (its next frame, over a new association).
                let unproven = c.identity.is_none() && matches!(c.peer.link, Link::Dtls(_));
                !unproven
                    && self
                        .auth
                        .authenticate(&c.client_id, &c.peer, c.identity.as_ref())
                        .is_err()
            })
            .map(|(key, _)| ClientKey(key))
            .collect();
        let mut disconnected = Vec::new();
        for key in refused {
            let Some((peer, state)) = self.client(key).map(|c| (c.peer, c.state)) else {
                continue;
            };
            self.counters.not_authorized += 1;
            if state == State::Disconnected {
                self.remove_client(key);
                continue;
            }
            self.send(peer, Message::Disconnect { duration: None });
            self.lose_client(key, "no longer authorized (configuration reloaded)");
            // A kept session would let it back in by its old proof; it is not coming back.
            if self.client(key).is_some() {
                self.remove_client(key);
            }
            disconnected.push(peer);
        }
        disconnected
    }

    /// The policy in force.
    pub fn auth(&self) -> &AuthPolicy {
        &self.auth
    }

    /// A datagram (or serial frame) arrived from `from` (a direct link address; the forwarder
    /// node id, if any, is read from the frame).
    pub fn handle_frame(&mut self, now: Instant, from: PeerAddr, bytes: &[u8]) {
        self.now = self.now.max(now);
        self.counters.frames_in += 1;
        // The sender on the link first: a forwarder counts as one sender for all its nodes
        // too, so that it cannot multiply its budget by inventing node ids.
        if !self.within_frame_budget(from) {
            return;
        }
        let (forwarder, inner) = match Frame::unwrap(bytes) {
            Ok(split) => split,
            Err(e) => return self.drop_frame(from, e.to_string()),
        };
        let peer = match forwarder {
            None => from,
            Some(fw) => match super::peer::NodeId::new(fw.node_id) {
                Some(node) => PeerAddr {
                    link: from.link,
                    node: Some(node),
                },
                None => return self.drop_frame(from, "forwarder node id too long".into()),
            },
        };
        if peer != from && !self.within_frame_budget(peer) {
            return;
        }
        match Message::decode_with(inner, &self.settings.decode) {
            Ok(message) => self.on_message(now, peer, message, bytes.len()),
            Err(e) => self.on_undecodable(peer, inner, e),
        }
    }

    /// A datagram longer than its transport accepts (`udp.max_frame`) arrived from `from`: it
    /// is counted and dropped unread.
    pub fn handle_too_long(&mut self, now: Instant, from: PeerAddr, limit: usize) {
        self.now = self.now.max(now);
        self.counters.frames_in += 1;
        if !self.within_frame_budget(from) {
            return;
        }
        self.counters.frames_too_long += 1;
        self.counters.frames_dropped += 1;
        let total = self.counters.frames_too_long;
        // Reported at 1, 2, 4, 8, ...: a device that keeps sending such frames cannot flood
        // the log, and an operator still learns of it (a limit set too low, or a device that
        // cannot be served).
        if total.is_power_of_two() {
            self.events.push_back(Event::FrameTooLong {
                peer: from,
                limit,
                total,
            });
        }
    }

    /// Something happened on upstream connection `conn`.
    pub fn handle_upstream(&mut self, now: Instant, conn: ConnId, event: super::UpstreamEvent<'_>) {
        self.now = self.now.max(now);
        self.on_upstream(now, conn, event);
    }

    /// Time passed: fire every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Supervision(key, generation) => {
                    self.on_supervision(now, key, generation, at)
                }
                Timer::Retry(key, generation) => self.on_retry(now, key, generation, at),
                Timer::Advertise => self.on_advertise(now, at),
                Timer::Upstream(conn) => self.on_upstream_timer(now, conn, at),
            }
        }
    }

    /// The next frame to send to a device.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to do with an upstream connection.
    #[must_use]
    pub fn poll_upstream(&mut self) -> Option<UpstreamCommand> {
        if self.commands.is_empty() {
            self.collect_session_output();
        }
        self.commands.pop_front()
    }

    /// The next event worth logging.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Gateway::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    /// Prepares a clean stop: every upstream connection says MQTT DISCONNECT and is closed
    /// (so the broker discards the devices' wills: the gateway is stopping, the devices are not
    /// lost). Drain [`Gateway::poll_upstream`] afterwards.
    pub fn shutdown(&mut self) {
        let conns: Vec<ConnId> = self.upstreams.keys().copied().collect();
        for conn in conns {
            self.close_upstream(conn, true);
        }
        self.broker_up = false;
    }

    /// What the engine was configured with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The MQTT packet codec of its broker connections.
    pub fn wire(&self) -> &'static dyn MqttWire {
        self.wire
    }

    /// The latest time an input carried.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Running totals.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Bytes of messages held for devices (sleeping, or not yet sent), all together.
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// [`Gateway::held_bytes`] counted afresh over every session: equal to it unless the
    /// accounting is wrong (for tests; O(sessions)).
    pub fn held_bytes_recounted(&self) -> usize {
        self.clients.iter().map(|(_, c)| c.queued_bytes()).sum()
    }

    /// Distinct topic names and filters held in memory for all sessions together.
    pub fn interned_names(&self) -> usize {
        self.interner.len()
    }

    /// Number of sessions (connected, sleeping, or kept for CleanSession=0).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// The ClientId and address of the device whose own broker connection `conn` is
    /// (transparent mode).
    pub fn upstream_owner(&self, conn: ConnId) -> Option<(&str, PeerAddr)> {
        let key = self.upstreams.get(&conn)?.owner?;
        self.client(key).map(|c| (&*c.client_id, c.peer))
    }

    // ----- helpers shared by the handlers -------------------------------------------------

    pub(super) fn client(&self, key: ClientKey) -> Option<&Client> {
        self.clients.get(key.0)
    }

    /// The one way to change a session, so that persistence sees every change.
    pub(super) fn client_mut(&mut self, key: ClientKey) -> Option<&mut Client> {
        let client = self.clients.get_mut(key.0)?;
        if let Some(persist) = self.persist.as_deref_mut() {
            persist.touch(key, client);
        }
        Some(client)
    }

    /// The client in `key` if it is still the session `generation` refers to.
    pub(super) fn client_gen_mut(
        &mut self,
        key: ClientKey,
        generation: u16,
    ) -> Option<&mut Client> {
        self.client_mut(key).filter(|c| c.generation == generation)
    }

    pub(super) fn insert_client(
        &mut self,
        client_id: Arc<str>,
        peer: PeerAddr,
        now: Instant,
    ) -> ClientKey {
        self.generation = self.generation.wrapping_add(1);
        let mut client = Client::new(self.generation, client_id.clone(), peer, now);
        client.frame_budget = self.address_frame_budget(peer);
        let key = ClientKey(self.clients.insert(client));
        if let (Some(persist), Some(client)) =
            (self.persist.as_deref_mut(), self.clients.get_mut(key.0))
        {
            persist.touch(key, client);
        }
        self.by_client_id.insert(client_id, key);
        self.by_peer.insert(peer, key);
        key
    }

    /// Removes a session entirely: its subscriptions, its addresses, its connection.
    pub(super) fn remove_client(&mut self, key: ClientKey) {
        let Some(client) = self.clients.remove(key.0) else {
            return;
        };
        if let Some(persist) = self.persist.as_deref_mut() {
            persist.forget(&client.client_id);
        }
        if self.by_client_id.get(&client.client_id) == Some(&key) {
            self.by_client_id.remove(&client.client_id);
        }
        if self.by_peer.get(&client.peer) == Some(&key) {
            self.by_peer.remove(&client.peer);
        }
        let seed = self.settings.hash_seed;
        self.sessionless_frames
            .remember(&seed, client.peer, client.frame_budget);
        if client.queued() > 0 {
            self.counters.messages_dropped += client.queued() as u64;
            self.held_bytes = self.held_bytes.saturating_sub(client.queued_bytes());
        }
        if self.settings.mode == Mode::Aggregating {
            if !self.retained_for.is_empty() {
                self.retained_for.retain(|_, k| *k != key);
            }
            for change in self.subscriptions.remove_client(key) {
                self.apply_upstream_change(change);
            }
        }
        if let Some(conn) = client.conn {
            // Its own broker connection must not linger (the driver would keep it open).
            self.close_upstream(conn, true);
        }
    }

    /// Encodes `msg` for `peer` (encapsulated if the peer is behind a forwarder) and queues it.
    pub(super) fn send(&mut self, peer: PeerAddr, msg: Message<'_>) {
        if let Some(bytes) = self.encode_for(peer, msg) {
            if let Some(&key) = self.by_peer.get(&peer) {
                self.charge_reply(key, bytes.len());
            }
            let after_commit = matches!(
                msg,
                Message::ConnAck { .. }
                    | Message::SubAck(_)
                    | Message::UnsubAck { .. }
                    | Message::RegAck(_)
                    | Message::WillTopicResp { .. }
                    | Message::WillMsgResp { .. }
                    | Message::PubRec { .. }
                    | Message::Disconnect { .. }
            );
            self.send_bytes(peer, bytes, after_commit);
        }
    }

    pub(super) fn encode_for(&mut self, peer: PeerAddr, msg: Message<'_>) -> Option<Vec<u8>> {
        let frame = Frame {
            forwarder: peer.node.as_ref().map(|node| Forwarder {
                radius: 0,
                node_id: node.as_bytes(),
            }),
            message: msg,
        };
        match frame.to_vec() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.events.push_back(Event::FrameDropped {
                    peer,
                    reason: format!("cannot encode {}: {e}", msg.msg_type()),
                });
                None
            }
        }
    }

    /// Queues an encoded frame for `peer` (see [`Transmit::after_commit`]).
    pub(super) fn send_bytes(&mut self, peer: PeerAddr, bytes: Vec<u8>, after_commit: bool) {
        self.counters.frames_out += 1;
        self.transmits.push_back(Transmit {
            to: Destination::Peer(peer),
            bytes,
            after_commit,
        });
    }

    pub(super) fn broadcast(&mut self, near: Option<PeerAddr>, msg: Message<'_>) {
        if let Ok(bytes) = msg.to_vec() {
            self.counters.frames_out += 1;
            self.transmits.push_back(Transmit {
                to: Destination::Broadcast { near },
                bytes,
                after_commit: false,
            });
        }
    }

    pub(super) fn drop_frame(&mut self, peer: PeerAddr, reason: String) {
        self.counters.frames_dropped += 1;
        self.events.push_back(Event::FrameDropped { peer, reason });
    }

    pub(super) fn schedule(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    /// How long a client in its current state may stay silent.
    pub(super) fn silence_allowed(&self, client: &Client) -> Option<Duration> {
        let secs = match client.state {
            State::Asleep | State::Awake => client.sleep_secs,
            // A kept session of a departed device: deleted after `session_expiry`.
            State::Disconnected => return Some(self.settings.session_expiry),
            _ => client.keep_alive_secs,
        };
        let handshake = matches!(
            client.state,
            State::WillTopic | State::WillMsg | State::Connecting
        );
        if handshake {
            // A CONNECT that is never completed must not hold a session for a whole keep-alive
            // (up to 18 hours), or a flood of them fills the table: allow the retransmissions
            // a device would make.
            let attempts = u64::from(self.settings.n_retry) + 1;
            let window =
                Duration::from_millis(self.settings.t_retry.as_millis().saturating_mul(attempts));
            let keep_alive = Duration::from_millis(
                (f64::from(secs) * 1000.0 * self.settings.keep_alive_tolerance) as u64,
            );
            return Some(if secs == 0 {
                window
            } else {
                window.min(keep_alive)
            });
        }
        if secs == 0 {
            // Keep-alive 0 asks for no supervision (§5.4.4); a session that can be opened for
            // free must still end some time, or a flood of them fills the table for good.
            return Some(self.settings.max_idle);
        }
        let ms = f64::from(secs) * 1000.0 * self.settings.keep_alive_tolerance;
        Some(Duration::from_millis(ms as u64))
    }

    /// The disconnected session (CleanSession=0, device gone) heard from longest ago, if any.
    /// Only looked for when the session table is full, so the scan is rare.
    pub(super) fn oldest_disconnected(&self) -> Option<ClientKey> {
        self.clients
            .iter()
            .filter(|(_, c)| c.state == State::Disconnected)
            .min_by_key(|(_, c)| c.last_seen)
            .map(|(key, _)| ClientKey(key))
    }

    /// Makes sure a supervision timer is pending for the client.
    pub(super) fn supervise(&mut self, key: ClientKey) {
        let Some(client) = self.client(key) else {
            return;
        };
        let Some(allowed) = self.silence_allowed(client) else {
            return;
        };
        let deadline = client.last_seen + allowed;
        let generation = client.generation;
        let pending = client.supervision_at;
        // An earlier pending entry re-checks and reschedules itself when it fires.
        if pending.is_some_and(|at| at <= deadline) {
            return;
        }
        if let Some(client) = self.client_mut(key) {
            client.supervision_at = Some(deadline);
        }
        self.schedule(deadline, Timer::Supervision(key, generation));
    }

    fn on_supervision(&mut self, now: Instant, key: ClientKey, generation: u16, at: Instant) {
        let Some(client) = self.client_gen_mut(key, generation) else {
            return;
        };
        if client.supervision_at != Some(at) {
            return; // superseded
        }
        client.supervision_at = None;
        let Some(allowed) = self.client(key).and_then(|c| self.silence_allowed(c)) else {
            return;
        };
        let last_seen = self.client(key).map_or(now, |c| c.last_seen);
        let departed = self
            .client(key)
            .is_some_and(|c| c.state == State::Disconnected);
        if last_seen + allowed > now {
            self.supervise(key);
        } else if departed {
            // Its device never came back: the kept session goes, held messages counted.
            self.counters.sessions_expired += 1;
            if let Some(client_id) = self.client(key).map(|c| c.client_id.clone()) {
                self.events.push_back(Event::SessionExpired { client_id });
            }
            self.remove_client(key);
        } else {
            self.lose_client(key, "no sign of life within keep-alive or sleep duration");
        }
    }

    // ----- upstream helpers ----------------------------------------------------------------

    pub(super) fn connect_options(
        &self,
        client_id: String,
        clean_session: bool,
        will: Option<LastWill>,
    ) -> ConnectOptions {
        ConnectOptions {
            clean_session,
            keep_alive: self.settings.upstream_keep_alive,
            username: self.settings.username.clone(),
            password: self.settings.password.clone(),
            will,
            ..ConnectOptions::new(client_id)
        }
    }

    /// Creates the session state for `conn` and asks the driver to connect it.
    pub(super) fn open_upstream(
        &mut self,
        conn: ConnId,
        options: ConnectOptions,
        owner: Option<ClientKey>,
    ) -> Result<(), MqttError> {
        let session = MqttSession::new(options, self.wire)?;
        self.upstreams.insert(
            conn,
            Upstream {
                session,
                owner,
                scheduled: None,
                dirty: false,
                congested: false,
                overdraft: 0,
                episode: 0,
            },
        );
        self.commands.push_back(UpstreamCommand::Open(conn));
        Ok(())
    }

    pub(super) fn new_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }
}
