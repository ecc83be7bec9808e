//! Fuzz target: the whole protocol core. The input is a little program: frames from four device
//! addresses (sample frames, mutated or raw), bytes and connection events from the broker,
//! broker acknowledgements of what the gateway really sent, and steps in time. The engine must
//! never panic, its memory accounting must match what the sessions hold and stay within its
//! bounds, and it must never tell a device that a QoS 1 message was accepted more often than the
//! broker acknowledged one. It persists after every step, as the driver does, and a step can
//! restart it from what it stored: every stored session must restore, and restoring must not
//! change what is stored. Run: `cargo fuzz run engine`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttsn_core::codec::{Message, PubAck, ReturnCode};
use mqttsn_core::engine::mqtt::wire::{fixed_header, packet_len};
use mqttsn_core::engine::persist::MemoryStore;
use mqttsn_core::engine::{ConnId, Gateway, PeerAddr, UpstreamCommand, UpstreamEvent};
use mqttsn_core::time::Instant;
use mqttsn_core::transcript::samples::{broker_pool, pool};
use mqttsn_gateway::config::Config;
use mqttsn_gateway::hash::HashSeed;
use mqttsn_gateway::mqtt_v4::MQTT_V4;

/// Bytes held for sleeping and unproven devices together, small so that the bound is hit.
const MAX_HELD: usize = 64;
/// Bytes one device may hold (`sleep.max_bytes`). A device that takes messages now is held to
/// this alone, and at most one per address (four) takes messages at once.
const MAX_HELD_EACH: usize = 16;

fn peer(i: u8) -> PeerAddr {
    PeerAddr::udp(([10, 0, 0, i % 4], 5000).into())
}

/// Reads the program.
struct Program<'a>(&'a [u8]);

impl<'a> Program<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.byte()?).min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }
}

/// Takes the engine's output; counts accepted PUBACKs to devices, and notes the packet ids of
/// the QoS 1 PUBLISHes the gateway sent upstream, for the broker to acknowledge.
fn drain(gw: &mut Gateway, accepted: &mut u64, sent_ids: &mut Vec<u16>) {
    while let Some(command) = gw.poll_upstream() {
        if let UpstreamCommand::Send(_, bytes) = command {
            let mut rest = &bytes[..];
            while let Ok(Some(len)) = packet_len(rest) {
                let (packet, tail) = rest.split_at(len);
                rest = tail;
                // PUBLISH at QoS 1: topic length, topic, then the packet id.
                if packet[0] & 0xF6 == 0x32 {
                    let Ok(Some(h)) = fixed_header(packet) else {
                        continue;
                    };
                    let body = &packet[h.packet_len() - h.remaining..];
                    let topic_len = match body {
                        [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
                        _ => continue,
                    };
                    if let Some(&[a, b]) = body.get(2 + topic_len..4 + topic_len) {
                        sent_ids.push(u16::from_be_bytes([a, b]));
                    }
                }
            }
        }
    }
    while gw.poll_event().is_some() {}
    while let Some(t) = gw.poll_transmit() {
        if let Ok(Message::PubAck(PubAck {
            return_code: ReturnCode::Accepted,
            ..
        })) = Message::decode(&t.bytes)
        {
            *accepted += 1;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let device = pool();
    let broker = broker_pool();
    let mut config = Config::default();
    config.sleep.max_messages = 3;
    config.sleep.max_total_bytes = MAX_HELD;
    config.sleep.max_bytes = MAX_HELD_EACH;
    config.limits.publish_rate = 50;
    config.limits.publish_burst = 5;
    config.storage.dir = Some("state".into());
    let settings = config.engine_settings(HashSeed(1, 2));
    let mut gw = Gateway::new(settings.clone(), &MQTT_V4);
    // Persisting after every step, as the driver does; op 6 restarts from what was stored.
    gw.enable_persistence();
    let mut store = MemoryStore::new();
    let mut now = 0u64;
    let mut accepted = 0u64;
    let mut broker_acks = 0u64;
    let mut sent_ids: Vec<u16> = Vec::new();
    let conn = ConnId::GATEWAY;
    gw.handle_upstream(Instant::ZERO, conn, UpstreamEvent::Connected);
    gw.handle_upstream(Instant::ZERO, conn, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
    drain(&mut gw, &mut accepted, &mut sent_ids);
    let mut program = Program(data);
    while let Some(op) = program.byte() {
        let t = Instant::from_millis(now);
        match op % 9 {
            0 | 1 => {
                let (Some(from), Some(pick)) = (program.byte(), program.byte()) else {
                    break;
                };
                let mut frame = device[usize::from(pick) % device.len()].clone();
                if op % 9 == 1 {
                    // One byte changed: near-valid frames reach the decoder's edges.
                    let (Some(at), Some(value)) = (program.byte(), program.byte()) else {
                        break;
                    };
                    let at = usize::from(at) % frame.len();
                    frame[at] = value;
                }
                gw.handle_frame(t, peer(from), &frame);
            }
            2 => {
                let (Some(from), Some(bytes)) = (program.byte(), program.bytes()) else {
                    break;
                };
                gw.handle_frame(t, peer(from), bytes);
            }
            3 => {
                let Some(pick) = program.byte() else { break };
                let packet = &broker[usize::from(pick) % broker.len()];
                // Only acknowledgements of QoS 1 can lead to an accepted PUBACK (QoS 2 ends
                // with PUBCOMP to the device); the samples' ids may or may not be in flight.
                if packet.first() == Some(&0x40) {
                    broker_acks += 1;
                }
                gw.handle_upstream(t, conn, UpstreamEvent::Data(packet));
            }
            4 => {
                // The broker acknowledges a QoS 1 PUBLISH the gateway really sent (in order,
                // or the oldest again: a duplicate).
                let Some(which) = program.byte() else { break };
                if sent_ids.is_empty() {
                    continue;
                }
                let i = usize::from(which) % sent_ids.len();
                let id = sent_ids[i];
                if which & 0x80 == 0 {
                    sent_ids.remove(i);
                }
                broker_acks += 1;
                let [hi, lo] = id.to_be_bytes();
                gw.handle_upstream(t, conn, UpstreamEvent::Data(&[0x40, 2, hi, lo]));
            }
            7 => {
                let Some(bytes) = program.bytes() else { break };
                // Raw broker bytes: PUBACKs in them count as possible acknowledgements.
                broker_acks += bytes.windows(2).filter(|w| w == &[0x40, 2]).count() as u64;
                gw.handle_upstream(t, conn, UpstreamEvent::Data(bytes));
            }
            5 => {
                let Some(which) = program.byte() else { break };
                let event = match which % 4 {
                    0 => UpstreamEvent::Disconnected,
                    1 => UpstreamEvent::Connected,
                    2 => UpstreamEvent::Congested,
                    _ => UpstreamEvent::Drained,
                };
                gw.handle_upstream(t, conn, event);
                if which % 4 == 1 {
                    gw.handle_upstream(t, conn, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
                }
            }
            6 => {
                // kill -9 and a start from the store: every session the engine stored must
                // restore, and the restored engine must store exactly the same again.
                gw = Gateway::new(settings.clone(), &MQTT_V4);
                gw.enable_persistence();
                let report = gw.restore(t, store.load());
                assert!(report.skipped.is_empty(), "{:?}", report.skipped);
                let mut again = MemoryStore::new();
                gw.write_snapshot(&mut again).expect("memory store");
                assert_eq!(store.load(), again.load(), "a restore changed what is stored");
                sent_ids.clear();
                gw.handle_upstream(t, conn, UpstreamEvent::Connected);
                gw.handle_upstream(t, conn, UpstreamEvent::Data(&[0x20, 2, 1, 0]));
            }
            _ => {
                let (Some(hi), Some(lo)) = (program.byte(), program.byte()) else {
                    break;
                };
                now += u64::from(u16::from_be_bytes([hi, lo])) * 10;
                gw.handle_timeout(Instant::from_millis(now));
            }
        }
        gw.persist(&mut store).expect("memory store");
        drain(&mut gw, &mut accepted, &mut sent_ids);
        assert_eq!(gw.held_bytes(), gw.held_bytes_recounted());
        assert!(
            gw.held_bytes() <= MAX_HELD + 4 * MAX_HELD_EACH,
            "{} bytes held",
            gw.held_bytes()
        );
        assert!(
            accepted <= broker_acks,
            "{accepted} device messages acknowledged for {broker_acks} broker acknowledgements"
        );
    }
});
