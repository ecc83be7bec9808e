//! Engine cost on the hot paths (criterion, virtual time, no IO): one QoS 0 PUBLISH from a
//! connected device to its upstream command, and one broker message fanned out to 100 subscribed
//! devices. Run with `cargo bench --bench engine`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqttsn_gateway::codec::{
    Connect, Message, Publish, QoS, Register, Subscribe, TopicFilter, TopicRef,
};
use mqttsn_gateway::config::Config;
use mqttsn_gateway::engine::{ConnId, Gateway, PeerAddr, UpstreamEvent};
use mqttsn_gateway::hash::HashSeed;
use mqttsn_gateway::mqtt_v4::MQTT_V4;
use mqttsn_gateway::time::Instant;
use std::hint::black_box;

fn frame(msg: Message<'_>) -> Vec<u8> {
    msg.to_vec().expect("fits")
}

fn drain(gw: &mut Gateway) -> usize {
    let mut n = 0;
    while gw.poll_upstream().is_some() {
        n += 1;
    }
    while gw.poll_transmit().is_some() {
        n += 1;
    }
    while gw.poll_event().is_some() {}
    n
}

/// A gateway whose broker connection is up (CONNACK received).
fn gateway_with_broker() -> Gateway {
    let mut gw = Gateway::new(Config::default().engine_settings(HashSeed(1, 2)), &MQTT_V4);
    let t = Instant::ZERO;
    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Connected);
    gw.handle_upstream(t, ConnId::GATEWAY, UpstreamEvent::Data(&[0x20, 2, 0, 0]));
    drain(&mut gw);
    gw
}

fn device(i: u32) -> PeerAddr {
    let ip = [10, (i >> 16) as u8, (i >> 8) as u8, i as u8];
    PeerAddr::udp((ip, 40000).into())
}

fn connect(gw: &mut Gateway, peer: PeerAddr, id: &str) {
    let msg = Message::Connect(Connect {
        will: false,
        clean_session: true,
        duration: 600,
        client_id: id,
    });
    gw.handle_frame(Instant::ZERO, peer, &frame(msg));
}

fn qos0_publish(c: &mut Criterion) {
    let mut gw = gateway_with_broker();
    let peer = device(1);
    connect(&mut gw, peer, "bench-1");
    let reg = Message::Register(Register {
        topic_id: 0,
        msg_id: 1,
        topic_name: "sensors/bench/temperature",
    });
    gw.handle_frame(Instant::ZERO, peer, &frame(reg));
    drain(&mut gw);
    let publish = frame(Message::Publish(Publish {
        dup: false,
        qos: QoS::Zero,
        retain: false,
        topic: TopicRef::Id(1),
        msg_id: 0,
        data: &[0x42; 32],
    }));
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut now = 1u64;
    group.bench_function("qos0_publish_to_upstream", |b| {
        b.iter(|| {
            now += 1;
            gw.handle_frame(Instant::from_millis(now), peer, black_box(&publish));
            drain(&mut gw)
        })
    });
    group.finish();
}

fn fan_out_100(c: &mut Criterion) {
    let mut gw = gateway_with_broker();
    for i in 0..100 {
        let peer = device(i);
        connect(&mut gw, peer, &format!("fan-{i}"));
        let sub = Message::Subscribe(Subscribe {
            dup: false,
            qos: QoS::Zero,
            msg_id: 1,
            topic: TopicFilter::Name("alerts/all"),
        });
        gw.handle_frame(Instant::ZERO, peer, &frame(sub));
        // The broker's SUBACK for this device's SUBSCRIBE (packet ids 1, 2, ...).
        let pid = (i + 1) as u16;
        let suback = [0x90, 3, (pid >> 8) as u8, pid as u8, 0];
        gw.handle_upstream(Instant::ZERO, ConnId::GATEWAY, UpstreamEvent::Data(&suback));
        drain(&mut gw);
    }
    // MQTT PUBLISH QoS 0 "alerts/all" with a 32-byte payload.
    let mut publish = vec![0x30, 2 + 10 + 32, 0, 10];
    publish.extend_from_slice(b"alerts/all");
    publish.extend_from_slice(&[0x21; 32]);
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(1));
    let mut now = 1u64;
    group.bench_function("broker_message_fan_out_100", |b| {
        b.iter(|| {
            now += 1;
            gw.handle_upstream(
                Instant::from_millis(now),
                ConnId::GATEWAY,
                UpstreamEvent::Data(black_box(&publish)),
            );
            let sent = drain(&mut gw);
            assert_eq!(sent, 100);
            sent
        })
    });
    group.finish();
}

criterion_group!(benches, qos0_publish, fan_out_100);
criterion_main!(benches);
