//! Messages to devices: queueing (the same bounded queue is the sleeping buffer), topic id
//! resolution with gateway REGISTER first where needed, one QoS 1/2 PUBLISH or REGISTER in
//! flight per device, retransmission, and the device's acknowledgements.

use super::client::{Down, Inflight, InflightKind, State};
use super::gateway::{Gateway, Timer};
use super::sleep::PushOutcome;
use super::{ClientKey, Event};
use crate::codec::{Message, PubAck, Publish, QoS, RegAck, Register, ReturnCode, TopicRef};
use crate::time::Instant;

impl Gateway {
    /// Takes a message that left a client's queue off the total held for all clients.
    pub(super) fn release(&mut self, down: Option<&Down>) {
        if let Some(down) = down {
            self.held_bytes = self.held_bytes.saturating_sub(down.size());
        }
    }

    /// Queues a message for a device and sends what can be sent now.
    pub(super) fn deliver(&mut self, now: Instant, key: ClientKey, down: Down) {
        let mut limits = self.settings.sleep;
        let free = self
            .settings
            .sleep_max_total
            .saturating_sub(self.held_bytes);
        let Some(client) = self.client_mut(key) else {
            return;
        };
        // Every client that holds messages (asleep, gone with a kept session, connecting)
        // stays within `sleep.max_total_bytes` together: it may use its own bytes plus what is
        // free in total, and its drop policy decides what gives way. A device taking messages
        // now is bounded by its own buffer only, so held sessions cannot starve live ones.
        if !client.state.delivers() || !client.verified {
            limits.max_bytes = limits.max_bytes.min(client.queued_bytes() + free);
        }
        let size = down.size();
        let outcome = client.push_down(down, size, &limits);
        let client_id = client.client_id.clone();
        let (dropped, released) = match &outcome {
            PushOutcome::Stored => (0, 0),
            PushOutcome::StoredAfterDropping(old) => {
                (old.len(), old.iter().map(Down::size).sum::<usize>())
            }
            PushOutcome::Refused(_) => (1, size),
        };
        self.held_bytes = (self.held_bytes + size).saturating_sub(released);
        if dropped > 0 {
            self.counters.messages_dropped += dropped as u64;
            for _ in 0..dropped {
                self.events.push_back(Event::MessageDropped {
                    client_id: client_id.clone(),
                    reason: "buffer full",
                });
            }
        }
        self.pump(now, key);
    }

    /// Sends queued messages while the device can take them: QoS 0 back to back, then at most
    /// one QoS 1/2 PUBLISH or REGISTER awaiting its answer. An awake sleeper whose queue is
    /// empty gets its PINGRESP and goes back to sleep.
    pub(super) fn pump(&mut self, now: Instant, key: ClientKey) {
        loop {
            let Some(client) = self.client_mut(key) else {
                return;
            };
            if !client.state.delivers() || client.inflight.is_some() {
                return;
            }
            let Some(front) = client.front_down() else {
                break;
            };
            let topic = front.topic.clone();
            let client_id = client.client_id.clone();
            if client.refuses(&topic) {
                let dropped = client.pop_down();
                self.release(dropped.as_ref());
                self.counters.messages_dropped += 1;
                self.events.push_back(Event::MessageDropped {
                    client_id,
                    reason: "topic refused by the device",
                });
                continue;
            }
            // The id the device knows: predefined, registered (the SUBACK of a plain name
            // announced it), a short name, or else one to REGISTER first.
            let registered = self.client(key).and_then(|c| c.registry.id(&topic));
            let topic_ref = match (self.predefined.id_for(&client_id, &topic), registered) {
                (Some(id), _) => TopicRef::Predefined(id),
                (None, Some(id)) => TopicRef::Id(id),
                (None, None) => match topic.as_bytes() {
                    [a, b] => TopicRef::Short([*a, *b]),
                    _ => return self.register_topic(now, key, topic),
                },
            };
            let Some(front) = self.client(key).and_then(|c| c.front_down()) else {
                return;
            };
            let len = Message::Publish(Publish {
                dup: false,
                qos: front.qos,
                retain: front.retain,
                topic: topic_ref,
                msg_id: 0,
                data: &front.payload,
            })
            .encoded_len()
                + self.client(key).map_or(0, |c| peer_overhead(&c.peer));
            if !self.may_send(key, len) {
                // Waits for the device to show it receives; a REGISTER of the topic it already
                // knows asks it to (its REGACK is the proof, one round trip).
                if let TopicRef::Id(topic_id) = topic_ref {
                    self.send_register(now, key, topic, topic_id);
                }
                return;
            }
            let Some(client) = self.client_mut(key) else {
                return;
            };
            let Some(down) = client.pop_down() else {
                return;
            };
            let peer = client.peer;
            let msg_id = if down.qos == QoS::Zero {
                0
            } else {
                self.client_mut(key).map_or(1, |c| c.next_msg_id())
            };
            self.release(Some(&down));
            let publish = Message::Publish(Publish {
                dup: false,
                qos: down.qos,
                retain: down.retain,
                topic: topic_ref,
                msg_id,
                data: &down.payload,
            });
            let Some(frame) = self.encode_for(peer, publish) else {
                continue;
            };
            self.counters.delivered_down += 1;
            if down.qos == QoS::Zero {
                self.send_bytes(peer, frame, false);
                continue;
            }
            // Exactly once: a QoS 2 delivery waits for the commit of its being in flight (else a
            // crash would deliver it again under a new MsgId).
            self.send_bytes(peer, frame.clone(), down.qos == QoS::Two);
            self.start_inflight(
                now,
                key,
                InflightKind::Publish {
                    frame,
                    qos: down.qos,
                },
                msg_id,
            );
            return;
        }
        // Queue empty, nothing in flight.
        let Some(client) = self.client_mut(key) else {
            return;
        };
        if client.state == State::Awake {
            client.state = State::Asleep;
            client.last_seen = now;
            let peer = client.peer;
            self.send(peer, Message::PingResp);
            self.supervise(key);
        }
    }

    fn register_topic(&mut self, now: Instant, key: ClientKey, topic: std::sync::Arc<str>) {
        let Some(client) = self.client_mut(key) else {
            return;
        };
        let topic_id = match client.registry.propose(&topic) {
            Ok(id) => id,
            Err(_) => {
                // No id left for this device: the message cannot be delivered.
                let dropped = client.pop_down();
                let client_id = client.client_id.clone();
                self.release(dropped.as_ref());
                self.counters.messages_dropped += 1;
                self.events.push_back(Event::MessageDropped {
                    client_id,
                    reason: "no topic id left",
                });
                return self.pump(now, key);
            }
        };
        self.send_register(now, key, topic, topic_id);
    }

    /// Sends REGISTER of `topic` as `topic_id` and awaits its REGACK. To an unproven address
    /// it is sent only if it fits what the address sent (else the message waits for a PINGREQ).
    fn send_register(
        &mut self,
        now: Instant,
        key: ClientKey,
        topic: std::sync::Arc<str>,
        topic_id: u16,
    ) {
        let Some(peer) = self.client(key).map(|c| c.peer) else {
            return;
        };
        let Some(msg_id) = self.client_mut(key).map(|c| c.next_msg_id()) else {
            return;
        };
        let register = Message::Register(Register {
            topic_id,
            msg_id,
            topic_name: &topic,
        });
        let Some(frame) = self.encode_for(peer, register) else {
            return;
        };
        if !self.may_send(key, frame.len()) {
            return;
        }
        self.send_bytes(peer, frame, false);
        self.start_inflight(now, key, InflightKind::Register { topic, topic_id }, msg_id);
    }

    fn start_inflight(&mut self, now: Instant, key: ClientKey, kind: InflightKind, msg_id: u16) {
        let retry_at = now + self.settings.t_retry;
        let Some(client) = self.client_mut(key) else {
            return;
        };
        client.inflight = Some(Box::new(Inflight {
            kind,
            msg_id,
            retries: 0,
            retry_at,
        }));
        let generation = client.generation;
        self.schedule(retry_at, Timer::Retry(key, generation));
    }

    /// Sends the in-flight message again (DUP set on PUBLISH) and schedules the next retry;
    /// false if it was not sent.
    fn retransmit(&mut self, now: Instant, key: ClientKey) -> bool {
        let retry_at = now + self.settings.t_retry;
        let Some(client) = self.client_mut(key) else {
            return false;
        };
        let peer = client.peer;
        let generation = client.generation;
        let Some(inflight) = client.inflight.as_mut() else {
            return false;
        };
        inflight.retry_at = retry_at;
        let msg_id = inflight.msg_id;
        let resend: Option<Vec<u8>> = match &mut inflight.kind {
            InflightKind::Publish { frame, .. } => {
                // The flags octet follows the header (and any forwarder encapsulation).
                let header = if crate::codec::Frame::is_encapsulated(frame) {
                    usize::from(frame[0])
                } else {
                    0
                };
                let flags_at = header
                    + if frame.get(header) == Some(&0x01) {
                        4
                    } else {
                        2
                    };
                if let Some(flags) = frame.get_mut(flags_at) {
                    *flags |= 0x80;
                }
                Some(frame.clone())
            }
            InflightKind::Register { .. } | InflightKind::PubRel => None,
        };
        let kind = match &inflight.kind {
            InflightKind::Register { topic, topic_id } => Some((topic.clone(), *topic_id)),
            _ => None,
        };
        self.schedule(retry_at, Timer::Retry(key, generation));
        let frame = match (resend, kind) {
            (Some(frame), _) => Some(frame),
            (None, Some((topic, topic_id))) => self.encode_for(
                peer,
                Message::Register(Register {
                    topic_id,
                    msg_id,
                    topic_name: &topic,
                }),
            ),
            (None, None) => self.encode_for(peer, Message::PubRel { msg_id }),
        };
        // To an unproven address only within what it sent; a retransmission that does not fit
        // is skipped and does not count, so a device that lost one datagram is not given up on
        // for being unproven (its keep-alive still supervises it).
        match frame {
            Some(frame) if self.may_send(key, frame.len()) => {
                self.counters.retransmissions += 1;
                self.send_bytes(peer, frame, false);
                true
            }
            _ => false,
        }
    }

    pub(super) fn on_retry(&mut self, now: Instant, key: ClientKey, generation: u16, at: Instant) {
        let n_retry = self.settings.n_retry;
        let Some(client) = self.client_gen_mut(key, generation) else {
            return;
        };
        if !client.state.delivers() {
            return; // asleep: retried on wake-up
        }
        let Some(inflight) = client.inflight.as_mut() else {
            return;
        };
        if inflight.retry_at != at {
            return; // superseded
        }
        if inflight.retries >= n_retry {
            return self.lose_client(key, "no acknowledgement after N_retry retransmissions");
        }
        if self.retransmit(now, key) {
            if let Some(inflight) = self.client_mut(key).and_then(|c| c.inflight.as_mut()) {
                inflight.retries += 1;
            }
        }
    }

    /// After a wake-up or reconnect, the message that was in flight goes out again first, with
    /// its retransmissions counted afresh.
    pub(super) fn resume_inflight(&mut self, now: Instant, key: ClientKey) {
        if let Some(inflight) = self.client_mut(key).and_then(|c| c.inflight.as_mut()) {
            inflight.retries = 0;
            self.retransmit(now, key);
        }
    }

    fn take_inflight(
        &mut self,
        key: ClientKey,
        msg_id: u16,
        want: fn(&InflightKind) -> bool,
    ) -> Option<InflightKind> {
        let client = self.client_mut(key)?;
        let matches = client
            .inflight
            .as_ref()
            .is_some_and(|i| i.msg_id == msg_id && want(&i.kind));
        if matches {
            // Acknowledging what the gateway sent proves the address receives.
            client.verified = true;
            client.credit = 0;
            client.inflight.take().map(|i| i.kind)
        } else {
            None
        }
    }

    pub(super) fn on_device_puback(&mut self, now: Instant, key: ClientKey, ack: PubAck) {
        let taken = self.take_inflight(key, ack.msg_id, |k| {
            matches!(
                k,
                InflightKind::Publish { qos: QoS::One, .. }
                    | InflightKind::Publish { qos: QoS::Two, .. }
            )
        });
        if taken.is_none() {
            return;
        }
        if ack.return_code == ReturnCode::InvalidTopicId {
            // The device lost its registrations (e.g. it restarted): register again next time.
            if let Some(client) = self.client_mut(key) {
                client.registry.clear();
            }
        }
        self.pump(now, key);
    }

    pub(super) fn on_device_pubrec(&mut self, now: Instant, key: ClientKey, msg_id: u16) {
        let pubrel_pending = self
            .client(key)
            .and_then(|c| c.inflight.as_ref())
            .is_some_and(|i| i.msg_id == msg_id && matches!(i.kind, InflightKind::PubRel));
        let taken = self.take_inflight(key, msg_id, |k| {
            matches!(k, InflightKind::Publish { qos: QoS::Two, .. })
        });
        if taken.is_none() && !pubrel_pending {
            return;
        }
        if let Some(peer) = self.client(key).map(|c| c.peer) {
            self.send(peer, Message::PubRel { msg_id });
        }
        if taken.is_some() {
            self.start_inflight(now, key, InflightKind::PubRel, msg_id);
        }
    }

    pub(super) fn on_device_pubcomp(&mut self, now: Instant, key: ClientKey, msg_id: u16) {
        if self
            .take_inflight(key, msg_id, |k| matches!(k, InflightKind::PubRel))
            .is_some()
        {
            self.pump(now, key);
        }
    }

    pub(super) fn on_device_regack(&mut self, now: Instant, key: ClientKey, ack: RegAck) {
        // A client-initiated REGACK answers nothing of ours; only ours matter.
        let Some(InflightKind::Register { topic, topic_id }) =
            self.take_inflight(key, ack.msg_id, |k| {
                matches!(k, InflightKind::Register { .. })
            })
        else {
            return;
        };
        if let Some(client) = self.client_mut(key) {
            if ack.return_code == ReturnCode::Accepted {
                client.registry.confirm(topic_id);
            } else {
                // §6.10: a rejecting REGACK means the device does not want this topic.
                client.extras_mut().refused.push(topic);
            }
        }
        self.pump(now, key);
    }
}

/// Bytes the forwarder encapsulation adds for a device behind a forwarder.
fn peer_overhead(peer: &super::peer::PeerAddr) -> usize {
    peer.node
        .as_ref()
        .map_or(0, |node| 3 + node.as_bytes().len())
}
