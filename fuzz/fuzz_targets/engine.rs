//! Fuzz target: the whole protocol core. The input is a little program: frames from four device
//! addresses (sample frames, mutated or raw), bytes and connection events from the broker, and
//! steps in time. The engine must never panic, its memory accounting must match what the
//! sessions hold and stay within its bound, and it must never tell a device that a QoS 1/2
//! message was accepted more often than the broker acknowledged one. Run: `cargo fuzz run engine`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqttsn_core::codec::{Message, PubAck, ReturnCode};
use mqttsn_core::engine::{ConnId, Gateway, PeerAddr, UpstreamEvent};
use mqttsn_core::time::Instant;
use mqttsn_core::transcript::samples::{broker_pool, pool};
use mqttsn_gateway::config::Config;
use mqttsn_gateway::hash::HashSeed;
use mqttsn_gateway::mqtt_v4::MQTT_V4;

/// Bytes held for sleeping and unproven devices together, small so that the bound is hit.
const MAX_HELD: usize = 64;

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

/// Takes the engine's output; counts accepted PUBACKs to devices and broker PUBACK/PUBREC
/// packets the gateway answered (each can acknowledge one device message at most).
fn drain(gw: &mut Gateway, accepted: &mut u64) {
    while gw.poll_upstream().is_some() {}
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
    config.limits.publish_rate = 50;
    config.limits.publish_burst = 5;
    let mut gw = Gateway::new(config.engine_settings(HashSeed(1, 2)), &MQTT_V4);
    let mut now = 0u64;
    let mut accepted = 0u64;
    let mut broker_acks = 0u64;
    let conn = ConnId::GATEWAY;
    gw.handle_upstream(Instant::ZERO, conn, UpstreamEvent::Connected);
    gw.handle_upstream(Instant::ZERO, conn, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
    drain(&mut gw, &mut accepted);
    let mut program = Program(data);
    while let Some(op) = program.byte() {
        let t = Instant::from_millis(now);
        match op % 8 {
            0 | 1 => {
                let (Some(from), Some(pick)) = (program.byte(), program.byte()) else {
                    break;
                };
                let mut frame = device[usize::from(pick) % device.len()].clone();
                if op % 8 == 1 {
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
                if matches!(packet.first(), Some(0x40 | 0x50)) {
                    broker_acks += 1;
                }
                gw.handle_upstream(t, conn, UpstreamEvent::Data(packet));
            }
            4 => {
                let Some(bytes) = program.bytes() else { break };
                // Raw broker bytes may hold acknowledgements too: count them all as possible.
                broker_acks += bytes.len() as u64;
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
            _ => {
                let (Some(hi), Some(lo)) = (program.byte(), program.byte()) else {
                    break;
                };
                now += u64::from(u16::from_be_bytes([hi, lo])) * 10;
                gw.handle_timeout(Instant::from_millis(now));
            }
        }
        drain(&mut gw, &mut accepted);
        assert_eq!(gw.held_bytes(), gw.held_bytes_recounted());
        assert!(gw.held_bytes() <= MAX_HELD, "{} bytes held", gw.held_bytes());
        assert!(
            accepted <= broker_acks,
            "{accepted} device messages acknowledged for {broker_acks} broker acknowledgements"
        );
    }
    // Whatever happened, the engine still has a bounded number of names.
    assert!(gw.interned_names() <= 4 * 1024 + 64);
});
