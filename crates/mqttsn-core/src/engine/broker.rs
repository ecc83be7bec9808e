//! The broker side: upstream connection events, MQTT session events (acknowledgements, messages,
//! subscription results), keep-alive of upstream connections, finishing device connects, wills
//! and discovery broadcasts.

use super::client::{Client, State, UpStage};
use super::device::{untoken, INTERNAL};
use super::gateway::{Gateway, Timer};
use super::mqtt::{self, LastWill, MqttEvent};
use super::subscriptions::UpstreamChange;
use super::{ClientKey, ConnId, Event, UpstreamCommand, UpstreamEvent};
use crate::codec::{Advertise, Message, PubAck, QoS, ReturnCode, SubAck};
use crate::settings::Mode;
use crate::time::Instant;
use bytes::Bytes;
use std::sync::Arc;

impl Gateway {
    pub(super) fn on_upstream(&mut self, now: Instant, conn: ConnId, event: UpstreamEvent<'_>) {
        let Some(up) = self.upstreams.get_mut(&conn) else {
            return; // a connection the engine has already let go of
        };
        match event {
            UpstreamEvent::Connected => {
                up.session.handle_connected(now);
                self.set_congested(conn, false);
            }
            UpstreamEvent::Data(bytes) => up.session.handle_bytes(now, bytes),
            UpstreamEvent::Disconnected => self.session_down(conn),
            UpstreamEvent::Congested => self.set_congested(conn, true),
            UpstreamEvent::Drained => self.set_congested(conn, false),
        }
        self.drain_session(now, conn);
    }

    /// The transport of `conn` is gone (or is being dropped): the session forgets it, and the
    /// loss of the gateway's own connection is reported once.
    fn session_down(&mut self, conn: ConnId) {
        if let Some(up) = self.upstreams.get_mut(&conn) {
            up.session.handle_disconnected();
        }
        // Whatever was queued is gone with it; the next connection starts uncongested (also
        // when the engine itself aborts and reopens it).
        self.set_congested(conn, false);
        if conn == ConnId::GATEWAY && self.broker_up {
            self.broker_up = false;
            self.events.push_back(Event::BrokerDown);
        }
    }

    pub(super) fn on_upstream_timer(&mut self, now: Instant, conn: ConnId, at: Instant) {
        let Some(up) = self.upstreams.get_mut(&conn) else {
            return;
        };
        if up.scheduled == Some(at) {
            up.scheduled = None;
        }
        up.session.handle_timeout(now);
        self.drain_session(now, conn);
    }

    /// Reacts to the events of the MQTT session of `conn`, and notes that it may have bytes to
    /// send: they are collected once per connection when the driver polls
    /// ([`Gateway::poll_upstream`]), so a burst of publishes becomes one write, not one each.
    pub(super) fn drain_session(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(up) = self.upstreams.get_mut(&conn) else {
                return;
            };
            let Some(event) = up.session.poll_event() else {
                break;
            };
            self.on_mqtt_event(now, conn, event);
        }
        let Some(up) = self.upstreams.get_mut(&conn) else {
            return;
        };
        if !up.dirty {
            up.dirty = true;
            self.dirty_conns.push(conn);
        }
        // Keep one timer entry per connection at its earliest deadline.
        if let Some(at) = up.session.poll_timeout() {
            if up.scheduled.is_none_or(|s| at < s) {
                up.scheduled = Some(at);
                self.schedule(at, Timer::Upstream(conn));
            }
        }
    }

    fn owner(&self, conn: ConnId) -> Option<ClientKey> {
        self.upstreams.get(&conn).and_then(|u| u.owner)
    }

    fn on_mqtt_event(&mut self, now: Instant, conn: ConnId, event: MqttEvent) {
        match event {
            MqttEvent::Connected { .. } => {
                if conn == ConnId::GATEWAY {
                    self.broker_up = true;
                    self.events.push_back(Event::BrokerUp);
                    self.restore_gateway_subscriptions(now);
                    if self.settings.advertise && self.advertise_at.is_none() {
                        self.on_advertise(now, now);
                    }
                } else if let Some(key) = self.owner(conn) {
                    self.on_client_conn_up(now, key, conn);
                }
            }
            MqttEvent::Rejected { reason } => {
                let connecting = self
                    .owner(conn)
                    .and_then(|k| self.client(k))
                    .is_some_and(|c| c.state == State::Connecting);
                if let (Some(key), false) = (self.owner(conn), connecting) {
                    // Refused on a reconnect: the device's broker session is gone.
                    self.lose_client(key, "the broker refused to reconnect it");
                } else if let Some(key) = self.owner(conn) {
                    // The broker refused this device (bad credentials, id in use, ...).
                    if let Some(peer) = self.client(key).map(|c| c.peer) {
                        self.reject_connect(
                            peer,
                            ReturnCode::NotSupported,
                            "refused by the broker",
                        );
                    }
                    self.remove_client(key);
                    self.commands.push_back(UpstreamCommand::Close(conn));
                } else {
                    self.events.push_back(Event::BrokerError {
                        reason: format!("the broker refused the gateway's connection: {reason:?}"),
                    });
                }
            }
            MqttEvent::Published { token } => self.on_published(token),
            MqttEvent::Received { token } => self.on_received(token),
            MqttEvent::Message {
                topic,
                payload,
                qos,
                retain,
                pid,
                ..
            } => self.on_broker_message(now, conn, &topic, payload, qos.into(), retain, pid),
            MqttEvent::Subscribed { token, granted } => {
                self.on_subscribed(token, granted.first().copied().flatten().map(Into::into))
            }
            MqttEvent::Unsubscribed { .. } => {}
            MqttEvent::TooLarge { size } => {
                self.counters.too_large_dropped += 1;
                let total = self.counters.too_large_dropped;
                // Reported at 1, 2, 4, 8, ...: a retained message too large for any device,
                // sent again on every subscribe, cannot flood the log.
                if total.is_power_of_two() {
                    self.events
                        .push_back(Event::MessageTooLarge { size, total });
                }
            }
            MqttEvent::ProtocolError(_)
            | MqttEvent::KeepAliveTimeout
            | MqttEvent::ConnectTimeout => {
                // Drop the connection; the driver reconnects and the session resends.
                self.session_down(conn);
                self.commands.push_back(UpstreamCommand::Abort(conn));
                self.commands.push_back(UpstreamCommand::Open(conn));
            }
        }
    }

    fn restore_gateway_subscriptions(&mut self, now: Instant) {
        let filters: Vec<(String, QoS)> = self
            .subscriptions
            .filters()
            .map(|(f, q)| (f.to_string(), q))
            .collect();
        for (filter, qos) in filters {
            self.upstream_subscribe(now, ConnId::GATEWAY, &filter, qos, INTERNAL);
        }
    }

    /// Transparent mode: the broker accepted the device's own connection.
    fn on_client_conn_up(&mut self, now: Instant, key: ClientKey, conn: ConnId) {
        let Some(client) = self.client(key) else {
            return;
        };
        let filters = client.filters().to_vec();
        for (filter, qos) in filters {
            self.upstream_subscribe(now, conn, &filter, qos, INTERNAL);
        }
        if self
            .client(key)
            .is_some_and(|c| c.state == State::Connecting)
        {
            self.accept_connect(now, key);
        }
    }

    /// The device's CONNECT (and will handshake) is complete on the device side.
    pub(super) fn finish_connect(&mut self, now: Instant, key: ClientKey) {
        if self.settings.mode == Mode::Aggregating {
            return self.accept_connect(now, key);
        }
        // Transparent: a fresh broker connection carrying the device's identity and will.
        let Some(client) = self.client(key) else {
            return;
        };
        let options = self.device_connect_options(client);
        let old = client.conn;
        if client.state == State::Connecting && old.is_some() {
            // A CONNECT repeated while the broker connection is still being set up: keep
            // waiting for it rather than starting over (a slow broker would never make it).
            return;
        }
        if let Some(old) = old {
            self.close_upstream(old, true);
        }
        let conn = self.new_conn_id();
        if let Some(client) = self.client_mut(key) {
            client.conn = Some(conn);
            client.state = State::Connecting;
        }
        let opened = self.open_upstream(conn, options, Some(key));
        if opened.is_ok() {
            // Its QoS 2 publishes of an earlier connection of its broker session.
            self.resume_releases(now, key);
        }
        if opened.is_err() {
            // The broker could not accept this identity (e.g. an invalid will topic).
            if let Some(peer) = self.client(key).map(|c| c.peer) {
                self.reject_connect(
                    peer,
                    ReturnCode::NotSupported,
                    "connection options the broker cannot accept",
                );
            }
            self.remove_client(key);
        }
    }

    /// Transparent mode: the CONNECT of a device's own broker connection, carrying its
    /// identity, clean flag and will.
    pub(super) fn device_connect_options(&self, client: &Client) -> mqtt::ConnectOptions {
        let client_id = format!("{}{}", self.settings.client_id_prefix, client.client_id);
        let will = client.will.as_ref().map(|w| LastWill {
            topic: w.topic.to_string(),
            payload: w.payload.clone(),
            qos: mqtt::QoS::from_sn(w.qos).unwrap_or(mqtt::QoS::AtMostOnce),
            retain: w.retain,
        });
        let mut options = self.connect_options(client_id, client.clean_session, will);
        // A listed device logs in to the broker with its own credentials, if it has them.
        if let Some(entry) = self.auth.entry(&client.client_id) {
            if entry.username.is_some() {
                options.username = entry.username.as_deref().map(str::to_owned);
                options.password = entry.password.as_deref().map(str::to_owned);
            }
        }
        options
    }

    fn accept_connect(&mut self, now: Instant, key: ClientKey) {
        let Some(client) = self.client_mut(key) else {
            return;
        };
        client.state = State::Active;
        let (peer, client_id) = (client.peer, client.client_id.clone());
        self.send(
            peer,
            Message::ConnAck {
                return_code: ReturnCode::Accepted,
            },
        );
        self.events
            .push_back(Event::ClientConnected { client_id, peer });
        self.supervise(key);
        self.resume_inflight(now, key);
        self.pump(now, key);
    }

    /// Turns what every session with pending output has queued into one `Send` each.
    pub(super) fn collect_session_output(&mut self) {
        for conn in std::mem::take(&mut self.dirty_conns) {
            if let Some(up) = self.upstreams.get_mut(&conn) {
                up.dirty = false;
                if let Some(bytes) = up.session.poll_transmit() {
                    self.commands.push_back(UpstreamCommand::Send(conn, bytes));
                }
            }
        }
    }

    /// Closes an upstream connection: with DISCONNECT (`graceful`, the will is discarded) or by
    /// dropping it (the broker publishes the will).
    pub(super) fn close_upstream(&mut self, conn: ConnId, graceful: bool) {
        let Some(mut up) = self.upstreams.remove(&conn) else {
            return;
        };
        if graceful {
            up.session.disconnect();
            while let Some(bytes) = up.session.poll_transmit() {
                self.commands.push_back(UpstreamCommand::Send(conn, bytes));
            }
            self.commands.push_back(UpstreamCommand::Close(conn));
        } else {
            self.commands.push_back(UpstreamCommand::Abort(conn));
        }
    }

    /// Publishes to the broker: `None` if the message could not be accepted, else its packet
    /// id (0 at QoS 0).
    pub(super) fn publish_upstream(
        &mut self,
        conn: ConnId,
        topic: &str,
        data: &[u8],
        qos: QoS,
        retain: bool,
        token: u64,
    ) -> Option<u16> {
        let up = self.upstreams.get_mut(&conn)?;
        let now = self.now;
        let qos = mqtt::QoS::from_sn(qos).unwrap_or(mqtt::QoS::AtMostOnce);
        let pid = up
            .session
            .publish(now, topic, Bytes::copy_from_slice(data), qos, retain, token)
            .ok()
            .map(|pid| pid.unwrap_or(0));
        if pid.is_some() {
            self.counters.published_up += 1;
        }
        self.drain_session(now, conn);
        pid
    }

    /// Subscribes upstream; false if the session could not take the request.
    pub(super) fn upstream_subscribe(
        &mut self,
        now: Instant,
        conn: ConnId,
        filter: &str,
        qos: QoS,
        token: u64,
    ) -> bool {
        let Some(up) = self.upstreams.get_mut(&conn) else {
            return false;
        };
        let qos = mqtt::QoS::from_sn(qos).unwrap_or(mqtt::QoS::AtMostOnce);
        let ok = up.session.subscribe(now, filter, qos, token).is_ok();
        self.drain_session(now, conn);
        ok
    }

    pub(super) fn upstream_unsubscribe(&mut self, now: Instant, conn: ConnId, filter: &str) {
        if let Some(up) = self.upstreams.get_mut(&conn) {
            // Failure (no packet id free) only leaves a subscription the broker keeps serving;
            // the gateway no longer routes its messages to this device.
            let _ = up.session.unsubscribe(now, filter, INTERNAL);
            self.drain_session(now, conn);
        }
    }

    pub(super) fn apply_upstream_change(&mut self, change: UpstreamChange) {
        let now = self.now;
        match change {
            UpstreamChange::Subscribe { filter, qos } => {
                self.upstream_subscribe(now, ConnId::GATEWAY, &filter, qos, INTERNAL);
            }
            UpstreamChange::Unsubscribe { filter } => {
                self.upstream_unsubscribe(now, ConnId::GATEWAY, &filter)
            }
        }
    }

    /// The broker acknowledged a device's QoS 1 PUBLISH (PUBACK) or QoS 2 one (PUBCOMP).
    fn on_published(&mut self, tok: u64) {
        let (key, generation, msg_id) = untoken(tok);
        let Some(client) = self.client_gen_mut(key, generation) else {
            return;
        };
        let Some(up) = client.up().iter().find(|u| u.msg_id == msg_id).copied() else {
            return; // QoS 2 already completed with the device at PUBREL
        };
        if up.qos != QoS::One {
            // QoS 2 completes with the device's PUBREL; upstream its packet id is free again,
            // and nothing is left to release after a restart.
            if let Some(flight) = client
                .extras_mut()
                .up
                .iter_mut()
                .find(|u| u.msg_id == msg_id)
            {
                flight.pid = 0;
            }
            return;
        }
        client.extras_mut().up.retain(|u| u.msg_id != msg_id);
        client.tidy();
        let peer = client.peer;
        self.send(
            peer,
            Message::PubAck(PubAck {
                topic_id: up.topic_id,
                msg_id,
                return_code: ReturnCode::Accepted,
            }),
        );
    }

    /// The broker holds a device's QoS 2 PUBLISH (PUBREC): pass PUBREC on.
    fn on_received(&mut self, tok: u64) {
        let (key, generation, msg_id) = untoken(tok);
        let Some(client) = self.client_gen_mut(key, generation) else {
            return;
        };
        let Some(up) = client
            .extras_mut()
            .up
            .iter_mut()
            .find(|u| u.msg_id == msg_id)
        else {
            client.tidy();
            return;
        };
        up.stage = UpStage::Received;
        let peer = client.peer;
        self.send(peer, Message::PubRec { msg_id });
    }

    fn on_subscribed(&mut self, tok: u64, granted: Option<QoS>) {
        if tok == INTERNAL {
            return;
        }
        let (key, generation, msg_id) = untoken(tok);
        let Some(client) = self.client_gen_mut(key, generation) else {
            return;
        };
        let subs = &mut client.extras_mut().pending_subs;
        let Some(i) = subs.iter().position(|p| p.msg_id == msg_id) else {
            client.tidy();
            return;
        };
        let pending = subs.remove(i);
        client.tidy();
        let peer = client.peer;
        if self.settings.mode == Mode::Aggregating && granted.is_some() {
            self.retained_for.insert(pending.filter.clone(), key);
        }
        if granted.is_none() {
            self.undo_subscription(key, &pending.filter);
        }
        let (qos, rc) = match granted {
            Some(q) => (pending.qos.min(q), ReturnCode::Accepted),
            None => (pending.qos, ReturnCode::NotSupported),
        };
        self.send(
            peer,
            Message::SubAck(SubAck {
                qos,
                topic_id: pending.topic_id,
                msg_id,
                return_code: rc,
            }),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_broker_message(
        &mut self,
        now: Instant,
        conn: ConnId,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        pid: Option<u16>,
    ) {
        let topic: Arc<str> = Arc::from(topic);
        let mut targets = std::mem::take(&mut self.scratch);
        targets.clear();
        match self.owner(conn) {
            Some(key) => targets.push((key, qos)),
            None => {
                self.subscriptions.matches(&topic, &mut targets);
                if retain {
                    // Only the client whose subscription brought it (see `retained_for`).
                    let wanted: Vec<ClientKey> = self
                        .retained_for
                        .iter()
                        .filter(|(filter, _)| super::topic::matches(filter, &topic))
                        .map(|(_, key)| *key)
                        .collect();
                    targets.retain(|(key, _)| wanted.contains(key));
                }
            }
        }
        if self.auth.has_acl() {
            // Subscriptions were checked when granted; this catches what a reloaded ACL took
            // away since, and a transparent-mode broker that sends more than was asked for.
            let before = targets.len();
            let (clients, auth) = (&self.clients, &self.auth);
            targets.retain(|&(key, _)| {
                clients
                    .get(key.0)
                    .is_some_and(|c| auth.may_receive(&c.client_id, &topic))
            });
            self.counters.acl_refused += (before - targets.len()) as u64;
        }
        // The payload arrives as a slice of the session's receive buffer: held for a sleeper,
        // it would pin the whole buffer (a 16-byte message kept 200 KB alive). If any target
        // will hold it rather than send it at once, one copy of its own, shared by every
        // target, makes what `sleep.max_bytes` counts the real memory. Sent at once, no copy.
        let held = targets.iter().any(|&(key, _)| {
            self.client(key)
                .is_some_and(|c| !c.state.delivers() || c.inflight.is_some() || c.queued() > 0)
        });
        let payload = if held {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        for &(key, granted) in &targets {
            let down = super::client::Down {
                topic: topic.clone(),
                payload: payload.clone(),
                qos: qos.min(granted),
                retain,
            };
            self.deliver(now, key, down);
        }
        self.scratch = targets;
        // Accepted: the message is queued (or buffered for a sleeper) for every subscriber.
        if let (Some(pid), Some(up)) = (pid, self.upstreams.get_mut(&conn)) {
            up.session.ack_message(now, pid);
            self.drain_session(now, conn);
        }
    }

    /// A device is lost: its will fires, and the session ends (kept if CleanSession=0).
    pub(super) fn lose_client(&mut self, key: ClientKey, reason: &'static str) {
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let client_id = client.client_id.clone();
        let will = client.will.take();
        let conn = client.conn.take();
        let clean = client.clean_session;
        client.state = State::Disconnected;
        client.supervision_at = None;
        // A kept session keeps its unacknowledged message: it goes out again on reconnect.
        if clean {
            client.inflight = None;
        }
        self.counters.clients_lost += 1;
        self.events.push_back(Event::ClientLost {
            client_id: client_id.clone(),
            reason,
        });
        match (self.settings.mode, conn) {
            // The broker holds the will of the device's own connection: dropping it fires it.
            (Mode::Transparent, Some(conn)) => self.close_upstream(conn, false),
            _ => {
                // Checked again as it fires: a reload may have narrowed the ACL since.
                let will = will.filter(|w| {
                    let allowed = self.auth.may_publish(&client_id, &w.topic);
                    if !allowed {
                        self.counters.acl_refused += 1;
                    }
                    allowed
                });
                if let Some(will) = will {
                    self.publish_upstream(
                        ConnId::GATEWAY,
                        &will.topic,
                        &will.payload,
                        will.qos,
                        will.retain,
                        INTERNAL,
                    );
                    self.events.push_back(Event::WillPublished {
                        client_id,
                        topic: will.topic.clone(),
                    });
                }
            }
        }
        if clean {
            self.remove_client(key);
        } else {
            // Kept, but not for ever: `sessions.expiry` from now.
            self.supervise(key);
        }
    }

    pub(super) fn on_advertise(&mut self, now: Instant, at: Instant) {
        if self.advertise_at.is_some_and(|a| a != at) {
            return; // stale entry
        }
        self.advertise_at = None;
        if !self.broker_up || !self.settings.advertise {
            return;
        }
        let duration = u16::try_from(self.settings.t_adv.as_millis() / 1000).unwrap_or(u16::MAX);
        self.broadcast(
            None,
            Message::Advertise(Advertise {
                gw_id: self.settings.gw_id,
                duration,
            }),
        );
        let next = now + self.settings.t_adv;
        self.advertise_at = Some(next);
        self.schedule(next, Timer::Advertise);
    }
}
