//! Frames from devices: connect and will handshake, registration, publishing, subscribing,
//! pings, sleep and disconnect. Each frame gets a defined reaction in every state.

use super::auth::{Identity, Refusal};
use super::client::{PendingSub, State, UpFlight, UpStage, Will};
use super::gateway::Gateway;
use super::peer::{Link, PeerAddr};
use super::topic;
use super::{ClientKey, ConnId, Event};
use crate::codec::wire::split_header;
use crate::codec::{
    Connect, DecodeError, Message, MsgType, PubAck, Publish, QoS, RegAck, ReturnCode, SubAck,
    Subscribe, TopicFilter, TopicRef, Unsubscribe, WillTopic,
};
use crate::settings::Mode;
use crate::time::Instant;
use bytes::Bytes;
use std::sync::Arc;

/// Packs a client session and a device MsgId into the token an upstream request carries, so
/// the answer finds its way back (and is ignored if the session has since been replaced).
pub(super) fn token(key: ClientKey, generation: u16, msg_id: u16) -> u64 {
    (u64::from(key.0) << 32) | (u64::from(generation) << 16) | u64::from(msg_id)
}

/// Unpacks [`token`].
pub(super) fn untoken(token: u64) -> (ClientKey, u16, u16) {
    (
        ClientKey((token >> 32) as u32),
        (token >> 16) as u16,
        token as u16,
    )
}

/// The token of requests the gateway makes on its own behalf (restoring subscriptions, wills).
pub(super) const INTERNAL: u64 = u64::MAX;

/// Address slots of the SEARCHGW rate limit (`timers.gwinfo_interval`).
const GWINFO_SLOTS: usize = 256;

impl Gateway {
    /// A decoded frame of `len` bytes from `peer`.
    pub(super) fn on_message(
        &mut self,
        now: Instant,
        peer: PeerAddr,
        msg: Message<'_>,
        len: usize,
    ) {
        // CONNECT and a PINGREQ naming a ClientId decide about the session they name
        // themselves; any other frame belongs to the session at its address only if it comes
        // from that session's holder.
        let named = matches!(
            msg,
            Message::Connect(_) | Message::PingReq { client_id: Some(_) }
        );
        let key = match self.by_peer.get(&peer).copied() {
            Some(k) if !named && !self.holds_session(k, peer) => {
                self.counters.not_authorized += 1;
                None
            }
            other => other,
        };
        match msg {
            Message::Connect(connect) => return self.on_connect(now, peer, connect, len),
            Message::SearchGw { .. } => {
                if !self.broker_up {
                    return;
                }
                // One answer per interval for each of a fixed number of address slots: a flood
                // from one address (or a few) gets one GWINFO a second, while devices elsewhere
                // (other slots: other listeners, ports, forwarders) are still answered, and the
                // table never grows.
                use std::hash::BuildHasher;
                let slot = (self.settings.hash_seed.hash_one(peer) as usize) % GWINFO_SLOTS;
                let interval = self.settings.gwinfo_interval;
                let slots = self
                    .gwinfo_at
                    .get_or_insert_with(|| vec![None; GWINFO_SLOTS].into_boxed_slice());
                if slots[slot].is_some_and(|at| now.saturating_since(at) < interval) {
                    // The GWINFO of a moment ago reached the devices near it.
                    self.counters.searchgw_unanswered += 1;
                    return;
                }
                slots[slot] = Some(now);
                let gwinfo = Message::GwInfo(crate::codec::GwInfo {
                    gw_id: self.settings.gw_id,
                    gw_addr: &[],
                });
                if peer.node.is_some() {
                    // Behind a forwarder: only an encapsulated reply reaches the node.
                    self.send(peer, gwinfo);
                } else {
                    self.broadcast(Some(peer), gwinfo);
                }
                return;
            }
            // Other gateways' announcements, and answers meant for clients: not for us.
            Message::Advertise(_) | Message::GwInfo(_) => return,
            Message::Publish(p) if p.qos == QoS::MinusOne => {
                return self.on_publish_minus1(peer, key, p)
            }
            Message::PingReq {
                client_id: Some(id),
            } => {
                if let Some(&k) = self.by_client_id.get(id) {
                    return self.on_ping_with_id(now, peer, k);
                }
            }
            _ => {}
        }
        let Some(key) = key else {
            // §5.4.21: a client the gateway does not know is told to reconnect.
            self.drop_frame(peer, format!("{} from an unknown client", msg.msg_type()));
            return self.send(peer, Message::Disconnect { duration: None });
        };
        self.credit_in(key, len);
        let Some(client) = self.client_mut(key) else {
            return;
        };
        // A departed device's kept session ages from its departure: frames from its old
        // address (which only get DISCONNECT) must not hold it past `sessions.expiry`.
        if client.state != State::Disconnected {
            client.last_seen = now;
        }
        let state = client.state;
        match (state, msg) {
            (State::WillTopic, Message::WillTopic(will)) => self.on_will_topic(now, key, will),
            (State::WillMsg, Message::WillMsg { msg }) => self.on_will_msg(now, key, msg),
            (s, Message::Register(r)) if s.is_connected() => {
                self.on_register(key, r.msg_id, r.topic_name)
            }
            (s, Message::Publish(p)) if s.is_connected() => self.on_publish(key, p),
            (s, Message::PubRel { msg_id }) if s.is_connected() => self.on_pubrel(key, msg_id),
            (s, Message::Subscribe(sub)) if s.is_connected() => self.on_subscribe(now, key, sub),
            (s, Message::Unsubscribe(u)) if s.is_connected() => self.on_unsubscribe(now, key, u),
            (s, Message::PubAck(ack)) if s.is_connected() => self.on_device_puback(now, key, ack),
            (s, Message::PubRec { msg_id }) if s.is_connected() => {
                self.on_device_pubrec(now, key, msg_id)
            }
            (s, Message::PubComp { msg_id }) if s.is_connected() => {
                self.on_device_pubcomp(now, key, msg_id)
            }
            (s, Message::RegAck(ack)) if s.is_connected() => self.on_device_regack(now, key, ack),
            // A sleeper waking with a bare PINGREQ (some clients omit the ClientId) is served
            // like one that names itself.
            (State::Asleep | State::Awake, Message::PingReq { .. }) => {
                self.on_ping_with_id(now, peer, key)
            }
            (s, Message::PingReq { .. }) if s.is_connected() => {
                self.send(peer, Message::PingResp);
                self.verify_return_path(now, key);
            }
            (s, Message::Disconnect { duration }) if s != State::Disconnected => {
                self.on_disconnect(now, key, duration)
            }
            (State::Active | State::Awake, Message::WillTopicUpd(will)) => {
                self.on_will_topic_update(key, will)
            }
            (State::Active | State::Awake, Message::WillMsgUpd { msg }) => {
                self.on_will_msg_update(key, msg)
            }
            (State::Disconnected, _) => {
                // A device whose session ended but which still talks: make it reconnect.
                self.drop_frame(peer, format!("{} after DISCONNECT", msg.msg_type()));
                self.send(peer, Message::Disconnect { duration: None });
            }
            (state, msg) => self.drop_frame(
                peer,
                format!("{} makes no sense in state {state:?}", msg.msg_type()),
            ),
        }
    }

    /// A message that does not decode. Most are dropped; those whose only fault is text that
    /// is not UTF-8 get the spec's refusal instead of silence, so that the device stops
    /// retrying: CONNECT (a ClientId) gets CONNACK "not supported"; from a connected client,
    /// REGISTER gets REGACK and SUBSCRIBE gets SUBACK "not supported", UNSUBSCRIBE gets its
    /// UNSUBACK (nothing can be subscribed under such a name), WILLTOPICUPD gets WILLTOPICRESP
    /// "not supported"; WILLTOPIC in the will handshake ends it with CONNACK "not supported";
    /// a PINGREQ naming a ClientId that cannot exist gets DISCONNECT, as an unknown client
    /// would, unless a session is at its address (then it is only dropped).
    pub(super) fn on_undecodable(&mut self, peer: PeerAddr, bytes: &[u8], error: DecodeError) {
        if let Some(&key) = self.by_peer.get(&peer) {
            self.credit_in(key, bytes.len());
        }
        let DecodeError::InvalidUtf8 { msg_type, .. } = error else {
            return self.drop_frame(peer, error.to_string());
        };
        if msg_type == MsgType::Connect {
            return self.reject_connect(peer, ReturnCode::NotSupported, "client id is not UTF-8");
        }
        let key = self.by_peer.get(&peer).copied();
        if msg_type == MsgType::PingReq {
            self.drop_frame(peer, error.to_string());
            if key.is_none() {
                self.send(peer, Message::Disconnect { duration: None });
            }
            return;
        }
        let state = key.and_then(|k| self.client(k)).map(|c| c.state);
        // The MsgId of REGISTER (after its TopicId), SUBSCRIBE and UNSUBSCRIBE (after their
        // flags); the decoder has checked the lengths before it looked at the text.
        let msg_id_at = |at: usize| {
            split_header(bytes)
                .ok()
                .and_then(|(_, body)| body.get(at..at + 2))
                .map(|id| u16::from_be_bytes([id[0], id[1]]))
        };
        let connected = state.is_some_and(State::is_connected);
        let reply = match (msg_type, connected) {
            (MsgType::Register, true) => msg_id_at(2).map(|msg_id| {
                Message::RegAck(RegAck {
                    topic_id: 0,
                    msg_id,
                    return_code: ReturnCode::NotSupported,
                })
            }),
            (MsgType::Subscribe, true) => msg_id_at(1).map(|msg_id| {
                Message::SubAck(SubAck {
                    qos: QoS::Zero,
                    topic_id: 0,
                    msg_id,
                    return_code: ReturnCode::NotSupported,
                })
            }),
            (MsgType::Unsubscribe, true) => msg_id_at(1).map(|msg_id| Message::UnsubAck { msg_id }),
            (MsgType::WillTopicUpd, true) => Some(Message::WillTopicResp {
                return_code: ReturnCode::NotSupported,
            }),
            (MsgType::WillTopic, _) if state == Some(State::WillTopic) => {
                if let Some(key) = key {
                    self.refuse_will(key, "will topic is not UTF-8");
                }
                return;
            }
            _ => None,
        };
        match reply {
            Some(reply) => self.send(peer, reply),
            None => self.drop_frame(peer, error.to_string()),
        }
    }

    /// Answers a CONNECT with `return_code`, counted and reported as `reason`.
    pub(super) fn reject_connect(
        &mut self,
        peer: PeerAddr,
        return_code: ReturnCode,
        reason: &'static str,
    ) {
        self.counters.connects_rejected += 1;
        self.events
            .push_back(Event::ClientRejected { peer, reason });
        self.send(peer, Message::ConnAck { return_code });
    }

    fn on_connect(&mut self, now: Instant, peer: PeerAddr, c: Connect<'_>, len: usize) {
        if c.client_id.is_empty() || c.client_id.len() > self.settings.client_id_max_len {
            return self.reject_connect(peer, ReturnCode::NotSupported, "client id length");
        }
        // Before anything changes: a CONNECT that does not prove the ClientId's identity, or
        // the identity of the session it would take over or push aside, leaves every session
        // as it was.
        let identity = self.inbound_identity.clone();
        let existing = self.by_client_id.get(c.client_id).copied();
        let other = self
            .by_peer
            .get(&peer)
            .copied()
            .filter(|&o| Some(o) != existing);
        let proof = self
            .auth
            .authenticate(c.client_id, &peer, identity.as_ref())
            .and_then(|()| match existing {
                Some(key) => self.proves_session(key, &peer, identity.as_ref()),
                None => Ok(()),
            })
            .and_then(|()| match other {
                Some(key) => self.may_supersede(key, &peer, identity.as_ref()),
                None => Ok(()),
            });
        if let Err(refusal) = proof {
            self.counters.not_authorized += 1;
            return self.reject_connect(peer, ReturnCode::NotSupported, refusal.reason());
        }
        if !self.broker_up {
            return self.reject_connect(peer, ReturnCode::Congestion, "broker unreachable");
        }
        // Another session at this address is superseded by this one: the device there
        // restarted as someone else, the old one is gone for good.
        if let Some(other) = other {
            self.lose_client(other, "another client connected from its address");
        }
        let key = match self.by_client_id.get(c.client_id).copied() {
            Some(key) => {
                self.move_client(key, peer);
                key
            }
            None => {
                // A kept session of a device that is gone gives way to a device that is here.
                if self.clients.len() >= self.settings.max_clients {
                    if let Some(idle) = self.oldest_disconnected() {
                        self.remove_client(idle);
                    }
                }
                if self.clients.len() >= self.settings.max_clients {
                    return self.reject_connect(
                        peer,
                        ReturnCode::Congestion,
                        "max_clients reached",
                    );
                }
                self.insert_client(Arc::from(c.client_id), peer, now)
            }
        };
        // A session reconnecting from the address that proved itself keeps the proof (the
        // address is what the check is about); from a new address it starts unproven
        // (`move_client`).
        self.credit_in(key, len);
        let (wiped, released) = {
            let Some(client) = self.client_mut(key) else {
                return;
            };
            let resumed = client.state == State::Asleep || client.state == State::Awake;
            client.identity = identity;
            client.last_seen = now;
            client.keep_alive_secs = c.duration;
            let wipe = c.clean_session && !resumed;
            let held = client.queued_bytes();
            if wipe {
                client.wipe();
            }
            client.clean_session = c.clean_session;
            if c.will {
                client.will = None;
                client.state = State::WillTopic;
            }
            (wipe, if wipe { held } else { 0 })
        };
        self.held_bytes = self.held_bytes.saturating_sub(released);
        if wiped && self.settings.mode == Mode::Aggregating {
            for change in self.subscriptions.remove_client(key) {
                self.apply_upstream_change(change);
            }
        }
        self.supervise(key);
        if c.will {
            self.send(peer, Message::WillTopicReq);
        } else {
            self.finish_connect(now, key);
        }
    }

    /// Points the session at a new address (NAT rebinding, or a device that moved).
    fn move_client(&mut self, key: ClientKey, peer: PeerAddr) {
        let there = self.address_frame_budget(peer);
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut client.peer, peer);
        if old != peer {
            // A new address has to show again that it receives.
            client.verified = false;
            client.credit = 0;
            // The frame budget belongs to the addresses: the new one's is taken over, and the
            // old one keeps what it spent.
            let spent = client.frame_budget;
            client.frame_budget = spent.later(there);
            if self.by_peer.get(&old) == Some(&key) {
                self.by_peer.remove(&old);
                let seed = self.settings.hash_seed;
                self.sessionless_frames.remember(&seed, old, spent);
            }
            self.by_peer.insert(peer, key);
        }
    }

    fn on_will_topic(&mut self, now: Instant, key: ClientKey, will: Option<WillTopic<'_>>) {
        let Some(w) = will else {
            // An empty WILLTOPIC: no will after all.
            return self.finish_connect(now, key);
        };
        if topic::validate_topic_name(w.topic).is_err() {
            return self.refuse_will(key, "invalid will topic");
        }
        if w.topic.len() > self.settings.limits.max_will_bytes {
            return self.refuse_will(key, "will topic over limits.max_will_bytes");
        }
        if !self.may_publish(key, w.topic) {
            return self.refuse_will(key, "not authorized: the ACL does not allow the will topic");
        }
        let topic = self.interner.intern(w.topic);
        let Some(client) = self.client_mut(key) else {
            return;
        };
        client.will = Some(Box::new(Will {
            topic,
            payload: Bytes::new(),
            qos: w.qos.max(QoS::Zero),
            retain: w.retain,
        }));
        client.state = State::WillMsg;
        let peer = client.peer;
        self.send(peer, Message::WillMsgReq);
    }

    fn on_will_msg(&mut self, now: Instant, key: ClientKey, msg: &[u8]) {
        let max = self.settings.limits.max_will_bytes;
        let Some(will) = self.client_mut(key).and_then(|c| c.will.as_mut()) else {
            return self.finish_connect(now, key);
        };
        if will.topic.len() + msg.len() > max {
            return self.refuse_will(key, "will over limits.max_will_bytes");
        }
        will.payload = Bytes::copy_from_slice(msg);
        self.finish_connect(now, key);
    }

    /// Ends a CONNECT whose will is not acceptable: CONNACK "not supported". A clean session
    /// goes; a kept one (CleanSession=0) stays as it was, disconnected, without the will.
    fn refuse_will(&mut self, key: ClientKey, reason: &'static str) {
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let (peer, kept) = (client.peer, !client.clean_session);
        if kept {
            client.will = None;
            client.state = State::Disconnected;
            client.supervision_at = None;
        }
        self.reject_connect(peer, ReturnCode::NotSupported, reason);
        if kept {
            self.supervise(key);
        } else {
            self.remove_client(key);
        }
    }

    /// Whether `key` may subscribe to `filter`: it holds it already, or holds fewer than
    /// `limits.max_filters_per_client`.
    fn has_room_for_filter(&self, key: ClientKey, filter: &str) -> bool {
        let max = self.settings.limits.max_filters_per_client;
        match self.settings.mode {
            Mode::Aggregating => {
                self.subscriptions.granted(key, filter).is_some()
                    || self.subscriptions.client_filter_count(key) < max
            }
            Mode::Transparent => self.client(key).is_some_and(|c| {
                c.filters().iter().any(|(f, _)| &**f == filter) || c.filters().len() < max
            }),
        }
    }

    fn on_will_topic_update(&mut self, key: ClientKey, will: Option<WillTopic<'_>>) {
        let rc = if self.settings.mode == Mode::Transparent {
            // MQTT 3.1.1 cannot change a will without reconnecting to the broker.
            ReturnCode::NotSupported
        } else if let Some(w) = will {
            let payload_len = self
                .client(key)
                .and_then(|c| c.will.as_ref())
                .map_or(0, |w| w.payload.len());
            if topic::validate_topic_name(w.topic).is_err()
                || w.topic.len() + payload_len > self.settings.limits.max_will_bytes
                || !self.may_publish(key, w.topic)
            {
                ReturnCode::NotSupported
            } else {
                let topic = self.interner.intern(w.topic);
                if let Some(client) = self.client_mut(key) {
                    let payload = client.will.take().map(|w| w.payload).unwrap_or_default();
                    client.will = Some(Box::new(Will {
                        topic,
                        payload,
                        qos: w.qos.max(QoS::Zero),
                        retain: w.retain,
                    }));
                }
                ReturnCode::Accepted
            }
        } else {
            if let Some(client) = self.client_mut(key) {
                client.will = None;
            }
            ReturnCode::Accepted
        };
        if let Some(peer) = self.client(key).map(|c| c.peer) {
            self.send(peer, Message::WillTopicResp { return_code: rc });
        }
    }

    fn on_will_msg_update(&mut self, key: ClientKey, msg: &[u8]) {
        let rc = if self.settings.mode == Mode::Transparent {
            ReturnCode::NotSupported
        } else {
            let max = self.settings.limits.max_will_bytes;
            match self.client_mut(key).and_then(|c| c.will.as_mut()) {
                Some(will) if will.topic.len() + msg.len() > max => ReturnCode::NotSupported,
                Some(will) => {
                    will.payload = Bytes::copy_from_slice(msg);
                    ReturnCode::Accepted
                }
                // A will message without a will topic cannot be published.
                None => ReturnCode::NotSupported,
            }
        };
        if let Some(peer) = self.client(key).map(|c| c.peer) {
            self.send(peer, Message::WillMsgResp { return_code: rc });
        }
    }

    fn on_register(&mut self, key: ClientKey, msg_id: u16, name: &str) {
        // The limit is on the names a device registers itself; the ids the gateway assigns
        // for its own REGISTERs (wildcard subscriptions) stay within the registry's range.
        let max = self.settings.max_topics_per_client;
        let known = self.client(key).is_some_and(|c| c.registry.contains(name));
        let room = known || self.client(key).is_some_and(|c| c.registry.len() < max);
        let (topic_id, rc) = if topic::validate_topic_name(name).is_err() {
            (0, ReturnCode::NotSupported)
        } else if !self.may_publish(key, name) {
            // REGISTER asks for an id to publish with.
            (0, ReturnCode::NotSupported)
        } else if !room {
            // Refused before the name is interned: a full registry stores nothing more.
            (0, ReturnCode::Congestion)
        } else if !known
            && self
                .admit(Some(key), None, self.conn_of(key), name.len(), false)
                .is_err()
        {
            (0, ReturnCode::Congestion)
        } else {
            let name = self.interner.intern(name);
            match self.client_mut(key).map(|c| c.registry.register(&name)) {
                Some(Ok(id)) => (id, ReturnCode::Accepted),
                _ => (0, ReturnCode::Congestion),
            }
        };
        if let Some(peer) = self.client(key).map(|c| c.peer) {
            self.send(
                peer,
                Message::RegAck(RegAck {
                    topic_id,
                    msg_id,
                    return_code: rc,
                }),
            );
        }
    }

    /// The topic name a device's PUBLISH refers to, if the device may use it.
    fn resolve_topic(
        &mut self,
        client_id: Option<&str>,
        key: Option<ClientKey>,
        t: TopicRef<'_>,
    ) -> Option<Arc<str>> {
        match t {
            TopicRef::Id(id) => key
                .and_then(|k| self.client(k))
                .and_then(|c| c.registry.name(id).cloned()),
            TopicRef::Predefined(id) => self.predefined.name(client_id.unwrap_or(""), id).cloned(),
            TopicRef::Short(name) => {
                let name = std::str::from_utf8(&name).ok()?;
                topic::validate_topic_name(name).ok()?;
                Some(self.interner.intern(name))
            }
            TopicRef::LongName(name) => {
                topic::validate_topic_name(name).ok()?;
                Some(self.interner.intern(name))
            }
        }
    }

    fn on_publish_minus1(&mut self, peer: PeerAddr, key: Option<ClientKey>, p: Publish<'_>) {
        // QoS -1 (§6.8): predefined ids and short names only (or the long-name form when
        // enabled); never answered.
        let client_id = key
            .and_then(|k| self.client(k))
            .map(|c| c.client_id.clone());
        let topic = match p.topic {
            TopicRef::Id(_) => None,
            t => self.resolve_topic(client_id.as_deref(), key, t),
        };
        let Some(topic) = topic else {
            return self.drop_frame(peer, "QoS -1 PUBLISH on an unknown topic".into());
        };
        // A connected client has proven who it is; anything else is connectionless.
        let connected = key.filter(|&k| self.client(k).is_some_and(|c| c.state.is_connected()));
        let allowed = match connected {
            Some(key) => self.may_publish(key, &topic),
            None => {
                let ok = self.auth.allows_qos_minus1_from(&peer)
                    && self.auth.may_publish_anonymously(&topic);
                if !ok {
                    self.counters.acl_refused += 1;
                }
                ok
            }
        };
        if !allowed {
            return self.drop_frame(peer, "not authorized: QoS -1 PUBLISH refused".into());
        }
        let conn = key.map_or(ConnId::GATEWAY, |k| self.conn_of(k));
        if self
            .admit(key, Some(peer), conn, p.data.len() + topic.len(), true)
            .is_ok()
        {
            self.publish_upstream(conn, &topic, p.data, QoS::Zero, p.retain, 0);
        }
    }

    fn on_publish(&mut self, key: ClientKey, p: Publish<'_>) {
        let Some(client) = self.client(key) else {
            return;
        };
        let (peer, generation, client_id) =
            (client.peer, client.generation, client.client_id.clone());
        let topic_id = match p.topic {
            TopicRef::Id(id) | TopicRef::Predefined(id) => id,
            TopicRef::Short(name) => u16::from_be_bytes(name),
            TopicRef::LongName(_) => 0,
        };
        let refuse = |gw: &mut Gateway, rc| {
            gw.send(
                peer,
                Message::PubAck(PubAck {
                    topic_id,
                    msg_id: p.msg_id,
                    return_code: rc,
                }),
            )
        };
        let Some(topic) = self.resolve_topic(Some(&client_id), Some(key), p.topic) else {
            // §6.6: an unknown topic id is answered at every QoS.
            return refuse(self, ReturnCode::InvalidTopicId);
        };
        if !self.may_publish(key, &topic) {
            return refuse(self, ReturnCode::NotSupported);
        }
        let conn = self.conn_of(key);
        let size = p.data.len() + topic.len();
        if p.qos == QoS::Zero {
            if self.admit(Some(key), None, conn, size, true).is_ok() {
                self.publish_upstream(conn, &topic, p.data, QoS::Zero, p.retain, 0);
            }
            return;
        }
        // QoS 1/2: a retransmission of a message already on its way is not forwarded again.
        if let Some(up) = self
            .client(key)
            .and_then(|c| c.up().iter().find(|u| u.msg_id == p.msg_id).copied())
        {
            match up.stage {
                UpStage::Received => self.send(peer, Message::PubRec { msg_id: p.msg_id }),
                UpStage::Forwarded => {}
                UpStage::Restored => {
                    // The broker's answer went to a connection of before the restart: send it
                    // again (the broker may get it twice; QoS 2 state of that connection was
                    // not kept).
                    if let Some(client) = self.client_mut(key) {
                        client.extras_mut().up.retain(|u| u.msg_id != p.msg_id);
                    }
                }
            }
            if up.stage != UpStage::Restored {
                return;
            }
        }
        if self.admit(Some(key), None, conn, size, false).is_err() {
            // §6.13 / §5.4.13: the device waits T_WAIT and tries again.
            return refuse(self, ReturnCode::Congestion);
        }
        let tok = token(key, generation, p.msg_id);
        let Some(pid) = self.publish_upstream(conn, &topic, p.data, p.qos, p.retain, tok) else {
            // Not accepted upstream (no packet id free): say so rather than stay silent.
            return refuse(self, ReturnCode::Congestion);
        };
        if let Some(client) = self.client_mut(key) {
            client.extras_mut().up.push(UpFlight {
                msg_id: p.msg_id,
                topic_id,
                qos: p.qos,
                stage: UpStage::Forwarded,
                pid,
            });
        }
    }

    fn on_pubrel(&mut self, key: ClientKey, msg_id: u16) {
        // The broker already holds the message (it sent PUBREC), so the exchange with the
        // device can complete; PUBREL upstream is handled by the MQTT session.
        let Some(client) = self.client_mut(key) else {
            return;
        };
        client.extras_mut().up.retain(|u| u.msg_id != msg_id);
        client.tidy();
        let peer = client.peer;
        self.send(peer, Message::PubComp { msg_id });
    }

    fn on_subscribe(&mut self, now: Instant, key: ClientKey, s: Subscribe<'_>) {
        let Some(client) = self.client(key) else {
            return;
        };
        let (peer, generation, client_id) =
            (client.peer, client.generation, client.client_id.clone());
        let qos = s.qos.clamp(QoS::Zero, QoS::Two);
        let suback = |gw: &mut Gateway, topic_id, rc| {
            gw.send(
                peer,
                Message::SubAck(SubAck {
                    qos,
                    topic_id,
                    msg_id: s.msg_id,
                    return_code: rc,
                }),
            )
        };
        let size = match s.topic {
            TopicFilter::Name(name) => name.len(),
            _ => 2,
        };
        // A retransmission of a SUBSCRIBE already on its way is not refused: the broker's
        // answer to the first one will come.
        let retransmitted = self
            .client(key)
            .and_then(|c| c.extras())
            .is_some_and(|e| e.pending_subs.iter().any(|p| p.msg_id == s.msg_id));
        if !retransmitted
            && self
                .admit(Some(key), None, self.conn_of(key), size, false)
                .is_err()
        {
            return suback(self, 0, ReturnCode::Congestion);
        }
        let (filter, topic_id) = match s.topic {
            TopicFilter::Name(name) => {
                if topic::validate_topic_filter(name).is_err() {
                    return suback(self, 0, ReturnCode::NotSupported);
                }
                if !self.has_room_for_filter(key, name) {
                    // Refused before the filter is interned or registered.
                    return suback(self, 0, ReturnCode::Congestion);
                }
                let filter = self.interner.intern(name);
                if topic::is_wildcard(name) {
                    (filter, 0)
                } else {
                    match self.client_mut(key).map(|c| c.registry.register(&filter)) {
                        Some(Ok(id)) => (filter, id),
                        _ => return suback(self, 0, ReturnCode::Congestion),
                    }
                }
            }
            TopicFilter::Predefined(id) => match self.predefined.name(&client_id, id).cloned() {
                Some(name) => (name, id),
                None => return suback(self, id, ReturnCode::InvalidTopicId),
            },
            TopicFilter::Short(name) => match std::str::from_utf8(&name) {
                Ok(text) if topic::validate_topic_name(text).is_ok() => {
                    (self.interner.intern(text), 0)
                }
                _ => return suback(self, 0, ReturnCode::InvalidTopicId),
            },
        };
        // A name was checked before it was interned; the other forms only now have one.
        if !matches!(s.topic, TopicFilter::Name(_)) && !self.has_room_for_filter(key, &filter) {
            return suback(self, topic_id, ReturnCode::Congestion);
        }
        if !self.auth.may_subscribe(&client_id, &filter) {
            self.counters.acl_refused += 1;
            return suback(self, 0, ReturnCode::NotSupported);
        }
        let transparent = self.settings.mode == Mode::Transparent;
        if let Some(client) = self.client_mut(key) {
            let extras = client.extras_mut();
            extras.pending_subs.retain(|p| p.msg_id != s.msg_id);
            extras.pending_subs.push(PendingSub {
                filter: filter.clone(),
                msg_id: s.msg_id,
                topic_id,
                qos,
            });
            // Aggregating mode keeps subscriptions in the shared table instead.
            if transparent {
                if let Some(entry) = extras.filters.iter_mut().find(|(f, _)| *f == filter) {
                    entry.1 = qos;
                } else {
                    extras.filters.push((filter.clone(), qos));
                }
            }
        }
        let tok = token(key, generation, s.msg_id);
        let (conn, upstream_qos) = match self.settings.mode {
            Mode::Transparent => (self.conn_of(key), qos),
            Mode::Aggregating => {
                let _ = self.subscriptions.subscribe(key, &filter, qos);
                // Always (re)subscribe upstream: the broker then sends this filter's retained
                // messages, which a new subscriber expects. The broker subscription keeps the
                // highest QoS any device asked for.
                (
                    ConnId::GATEWAY,
                    self.subscriptions.max_qos(&filter).unwrap_or(qos),
                )
            }
        };
        if !self.upstream_subscribe(now, conn, &filter, upstream_qos, tok) {
            if let Some(client) = self.client_mut(key) {
                client
                    .extras_mut()
                    .pending_subs
                    .retain(|p| p.msg_id != s.msg_id);
                client.tidy();
            }
            self.undo_subscription(key, &filter);
            suback(self, topic_id, ReturnCode::Congestion);
        }
    }

    /// Takes back a subscription the broker did not grant, so that the device gets nothing
    /// for a SUBSCRIBE it was told failed.
    pub(super) fn undo_subscription(&mut self, key: ClientKey, filter: &Arc<str>) {
        if let Some(client) = self.client_mut(key) {
            client.extras_mut().filters.retain(|(f, _)| f != filter);
            client.tidy();
        }
        if self.settings.mode == Mode::Aggregating {
            if let Some(change) = self.subscriptions.unsubscribe(key, filter) {
                self.apply_upstream_change(change);
            }
        }
    }

    fn on_unsubscribe(&mut self, now: Instant, key: ClientKey, u: Unsubscribe<'_>) {
        let Some(client) = self.client(key) else {
            return;
        };
        let (peer, client_id) = (client.peer, client.client_id.clone());
        let filter: Option<Arc<str>> = match u.topic {
            TopicFilter::Name(name) => Some(self.interner.intern(name)),
            TopicFilter::Predefined(id) => self.predefined.name(&client_id, id).cloned(),
            TopicFilter::Short(name) => std::str::from_utf8(&name)
                .ok()
                .map(|n| self.interner.intern(n)),
        };
        if let Some(filter) = filter {
            if let Some(client) = self.client_mut(key) {
                client.extras_mut().filters.retain(|(f, _)| *f != filter);
                client.tidy();
            }
            match self.settings.mode {
                Mode::Transparent => {
                    let conn = self.conn_of(key);
                    self.upstream_unsubscribe(now, conn, &filter);
                }
                Mode::Aggregating => {
                    if let Some(change) = self.subscriptions.unsubscribe(key, &filter) {
                        self.apply_upstream_change(change);
                    }
                }
            }
        }
        // UNSUBACK carries no return code: unsubscribing from nothing is not an error.
        self.send(peer, Message::UnsubAck { msg_id: u.msg_id });
    }

    fn on_ping_with_id(&mut self, now: Instant, peer: PeerAddr, key: ClientKey) {
        if let Some(refusal) = self.refuse_move(key, peer) {
            return self.drop_frame(peer, format!("PINGREQ with a ClientId: {refusal}"));
        }
        let identity = self.inbound_identity.clone();
        let Some(client) = self.client_mut(key) else {
            return;
        };
        if client.peer != peer {
            client.identity = identity;
        }
        client.last_seen = now;
        // A PINGREQ proves its own address only; one naming the ClientId from elsewhere moves
        // the session there, and the new address has to prove itself.
        let same_address = client.peer == peer;
        match client.state {
            State::Asleep | State::Awake => {
                client.state = State::Awake;
                let client_id = client.client_id.clone();
                self.move_client(key, peer);
                if same_address {
                    if let Some(client) = self.client_mut(key) {
                        client.verified = true;
                    }
                }
                self.events.push_back(Event::ClientAwake { client_id });
                self.resume_inflight(now, key);
                self.pump(now, key);
            }
            s if s.is_connected() => {
                self.move_client(key, peer);
                self.send(peer, Message::PingResp);
                if same_address {
                    self.verify_return_path(now, key);
                }
            }
            _ => {
                self.drop_frame(peer, "PINGREQ from a client that is not connected".into());
                self.send(peer, Message::Disconnect { duration: None });
            }
        }
    }

    /// Why a frame naming `key`'s ClientId from `peer` may not move the session there: the
    /// address does not prove the identity, or another session lives there (it would be cut
    /// off from its own address).
    fn refuse_move(&mut self, key: ClientKey, peer: PeerAddr) -> Option<&'static str> {
        let client = self.client(key)?;
        if client.peer == peer {
            // The same address, but over DTLS perhaps another association by now.
            if self.holds_session(key, peer) {
                return None;
            }
            self.counters.not_authorized += 1;
            return Some("another DTLS identity at the session's address");
        }
        if self.by_peer.get(&peer).is_some_and(|&other| other != key) {
            return Some("another session is at that address");
        }
        let identity = self.inbound_identity.clone();
        match self.proves_session(key, &peer, identity.as_ref()) {
            Ok(()) => None,
            Err(refusal) => {
                self.counters.not_authorized += 1;
                Some(refusal.reason())
            }
        }
    }

    /// Whether a sender at `peer` with `identity` proves the identity of `key`'s session:
    /// the policy lets it use the ClientId, and, for a device nobody listed, it is the same
    /// DTLS identity the session was opened with (a session opened over DTLS is never taken
    /// over from plain UDP, nor by another identity; one restored after a restart, whose
    /// identity was not kept, only over DTLS).
    pub(super) fn proves_session(
        &self,
        key: ClientKey,
        peer: &PeerAddr,
        identity: Option<&Identity>,
    ) -> Result<(), Refusal> {
        let Some(client) = self.client(key) else {
            return Ok(());
        };
        self.auth.authenticate(&client.client_id, peer, identity)?;
        if self.auth.entry(&client.client_id).is_some() {
            // The operator's entry says which proofs count.
            return Ok(());
        }
        match (&client.identity, identity) {
            (Some(old), Some(new)) if old == new => Ok(()),
            (Some(_), _) => Err(Refusal::IdentityMismatch),
            (None, None) if matches!(client.peer.link, Link::Dtls(_)) => Err(Refusal::WrongProof),
            _ => Ok(()),
        }
    }

    /// Whether a CONNECT for another ClientId from `peer` may push `key`'s session there
    /// aside: only an unlisted device's, and only by a sender that proves its identity too.
    fn may_supersede(
        &self,
        key: ClientKey,
        peer: &PeerAddr,
        identity: Option<&Identity>,
    ) -> Result<(), Refusal> {
        let listed = self
            .client(key)
            .is_some_and(|c| self.auth.entry(&c.client_id).is_some());
        if listed {
            return Err(Refusal::WrongProof);
        }
        self.proves_session(key, peer, identity)
    }

    /// Whether a frame from `peer` comes from the holder of `key`'s session: over DTLS, the
    /// association must have proved the session's identity (another association at the same
    /// address, after the first one ended, is somebody else until it proves it). A session
    /// restored without its identity takes the first proof that fits.
    fn holds_session(&mut self, key: ClientKey, peer: PeerAddr) -> bool {
        if !matches!(peer.link, Link::Dtls(_)) {
            return true;
        }
        let inbound = self.inbound_identity.clone();
        let Some(client) = self.client(key) else {
            return false;
        };
        match (&client.identity, &inbound) {
            (Some(held), Some(now)) => held == now,
            (None, Some(now)) => {
                let fits = self
                    .auth
                    .authenticate(&client.client_id, &peer, Some(now))
                    .is_ok();
                if fits {
                    if let Some(client) = self.client_mut(key) {
                        client.identity = inbound;
                    }
                }
                fits
            }
            // A certificate-mode client without a certificate (no ca_file): as anonymous
            // as the session it opened.
            (None, None) => true,
            (Some(_), None) => false,
        }
    }

    /// Whether `key`'s device may publish to `topic` (ACL); a refusal is counted.
    fn may_publish(&mut self, key: ClientKey, topic: &str) -> bool {
        let allowed = self
            .client(key)
            .is_some_and(|c| self.auth.may_publish(&c.client_id, topic));
        if !allowed {
            self.counters.acl_refused += 1;
        }
        allowed
    }

    fn on_disconnect(&mut self, now: Instant, key: ClientKey, duration: Option<u16>) {
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let peer = client.peer;
        match duration {
            Some(d) if d > 0 && client.state.is_connected() => {
                client.state = State::Asleep;
                client.sleep_secs = d;
                client.supervision_at = None;
                let client_id = client.client_id.clone();
                self.send(peer, Message::Disconnect { duration: None });
                self.events.push_back(Event::ClientAsleep {
                    client_id,
                    duration: d,
                });
                self.supervise(key);
            }
            _ => {
                self.send(peer, Message::Disconnect { duration: None });
                self.end_session(now, key, true);
            }
        }
    }

    /// Ends a device's connection. `graceful`: it said DISCONNECT (no will); otherwise it was
    /// superseded. Sessions with CleanSession=0 are kept, disconnected.
    pub(super) fn end_session(&mut self, _now: Instant, key: ClientKey, graceful: bool) {
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let client_id = client.client_id.clone();
        let clean = client.clean_session;
        client.state = State::Disconnected;
        client.supervision_at = None;
        let conn = client.conn.take();
        if let Some(conn) = conn {
            self.close_upstream(conn, graceful);
        }
        self.events
            .push_back(Event::ClientDisconnected { client_id });
        if clean {
            self.remove_client(key);
        } else {
            // Kept, but not for ever: `sessions.expiry` from now.
            self.supervise(key);
        }
    }

    /// The broker connection a client's traffic goes over.
    pub(super) fn conn_of(&self, key: ClientKey) -> ConnId {
        match self.settings.mode {
            Mode::Aggregating => ConnId::GATEWAY,
            Mode::Transparent => self
                .client(key)
                .and_then(|c| c.conn)
                .unwrap_or(ConnId::GATEWAY),
        }
    }
}
