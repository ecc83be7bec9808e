//! Hostile input at random: sequences of valid, mutated and random frames from several devices,
//! random bytes and connection drops from the broker, and jumps in time, never panic the engine,
//! and afterwards a well-behaved device is still served.

use mqttsn_gateway::config::Config;
use mqttsn_gateway::engine::{ConnId, Destination, Gateway, PeerAddr, UpstreamEvent};
use mqttsn_gateway::hash::HashSeed;
use mqttsn_gateway::mqtt_v4::MQTT_V4;
use mqttsn_gateway::time::Instant;
use proptest::prelude::*;

use mqttsn_gateway::transcript::samples::{broker_pool, pool};

#[derive(Debug, Clone)]
enum Step {
    Device {
        peer: u8,
        pick: prop::sample::Index,
        mutate: Option<(prop::sample::Index, u8)>,
    },
    Garbage {
        peer: u8,
        bytes: Vec<u8>,
    },
    Broker {
        pick: prop::sample::Index,
    },
    BrokerGarbage(Vec<u8>),
    BrokerDown,
    BrokerUp,
    /// The driver reports the broker connection's queue congested (true) or drained.
    BrokerCongested(bool),
    Wait(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0u8..4, any::<prop::sample::Index>(), proptest::option::of((any::<prop::sample::Index>(), any::<u8>())))
            .prop_map(|(peer, pick, mutate)| Step::Device { peer, pick, mutate }),
        1 => (0u8..4, proptest::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(peer, bytes)| Step::Garbage { peer, bytes }),
        3 => any::<prop::sample::Index>().prop_map(|pick| Step::Broker { pick }),
        1 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(Step::BrokerGarbage),
        1 => Just(Step::BrokerDown),
        1 => Just(Step::BrokerUp),
        1 => any::<bool>().prop_map(Step::BrokerCongested),
        2 => (0u32..30_000).prop_map(Step::Wait),
    ]
}

fn peer(i: u8) -> PeerAddr {
    PeerAddr::udp(([10, 0, 0, i], 5000).into())
}

fn drain(gw: &mut Gateway) -> Vec<(Destination, Vec<u8>)> {
    while gw.poll_upstream().is_some() {}
    while gw.poll_event().is_some() {}
    let mut out = Vec::new();
    while let Some(t) = gw.poll_transmit() {
        out.push((t.to, t.bytes));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_input_never_stops_the_gateway(steps in proptest::collection::vec(step(), 1..80)) {
        let device_frames = pool();
        let broker_frames = broker_pool();
        let mut config = Config::default();
        config.sleep.max_messages = 3;
        // Small enough that the total bound is reached and enforced in many runs.
        config.sleep.max_total_bytes = 12;
        let mut gw = Gateway::new(config.engine_settings(HashSeed(1, 2)), &MQTT_V4);
        let mut now = 0u64;
        gw.handle_upstream(Instant::ZERO, ConnId::GATEWAY, UpstreamEvent::Connected);
        gw.handle_upstream(Instant::ZERO, ConnId::GATEWAY, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
        for step in steps {
            let t = Instant::from_millis(now);
            match step {
                Step::Device { peer: p, pick, mutate } => {
                    let mut bytes = pick.get(&device_frames).clone();
                    if let Some((at, value)) = mutate {
                        let i = at.index(bytes.len());
                        bytes[i] = value;
                    }
                    gw.handle_frame(t, peer(p), &bytes);
                }
                Step::Garbage { peer: p, bytes } => gw.handle_frame(t, peer(p), &bytes),
                Step::Broker { pick } => {
                    let bytes: &Vec<u8> = pick.get(&broker_frames);
                    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Data(bytes))
                }
                Step::BrokerGarbage(bytes) => {
                    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Data(&bytes))
                }
                Step::BrokerDown => gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Disconnected),
                Step::BrokerUp => {
                    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Connected);
                    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
                }
                Step::BrokerCongested(true) => gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Congested),
                Step::BrokerCongested(false) => gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Drained),
                Step::Wait(ms) => {
                    now += u64::from(ms);
                    gw.handle_timeout(Instant::from_millis(now));
                }
            }
            drain(&mut gw);
            // The running total of held bytes is what the sessions hold, and within its bound.
            prop_assert_eq!(gw.held_bytes(), gw.held_bytes_recounted());
            prop_assert!(gw.held_bytes() <= 12, "{} bytes held", gw.held_bytes());
        }
        // Afterwards a well-behaved device is served: reconnect the broker, then CONNECT.
        let t = Instant::from_millis(now);
        gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Disconnected);
        gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Connected);
        gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
        drain(&mut gw);
        let newcomer = PeerAddr::udp(([10, 0, 0, 200], 5000).into());
        gw.handle_frame(t, newcomer, &device_frames[0]);
        let out = drain(&mut gw);
        prop_assert!(
            out.iter().any(|(to, b)| *to == Destination::Peer(newcomer) && b == &[3, 5, 0]),
            "newcomer not accepted: {out:?}"
        );
    }
}
