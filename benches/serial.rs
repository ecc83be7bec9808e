//! Frames per second through the serial deframers (criterion): a stream of 1,000 PUBLISH frames
//! (32-byte payloads) in raw framing and in XBee API frames (0x90, mode 1 and mode 2), fed in
//! 64-byte reads as a UART would deliver them. Run with `cargo bench --bench serial`.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mqttsn_gateway::codec::{Message, Publish, QoS, TopicRef};
use mqttsn_gateway::transport::serial::framing::raw::RawCodec;
use mqttsn_gateway::transport::serial::framing::slip::SlipCodec;
use mqttsn_gateway::transport::serial::framing::xbee::{ApiMode, XbeeCodec};
use mqttsn_gateway::transport::serial::framing::{Deframer, Encoder, RadioAddr, Received};

const FRAMES: usize = 1000;

fn frame() -> Vec<u8> {
    Message::Publish(Publish {
        dup: false,
        qos: QoS::Zero,
        retain: false,
        topic: TopicRef::Id(1),
        msg_id: 0,
        data: &[0x7E; 32], // worst case for API mode 2: every payload byte is escaped
    })
    .to_vec()
    .expect("fits")
}

/// A 0x90 receive packet per frame, as a coordinator sends them (API mode 1 or 2 escaping).
fn xbee_stream(mode: ApiMode) -> Vec<u8> {
    // The transmit encoder produces 0x10 frames; build 0x90 by hand for the receive side.
    let payload = frame();
    let mut data = vec![0x90];
    data.extend_from_slice(&0x0013_A200_40A1_B2C3u64.to_be_bytes());
    data.extend_from_slice(&0x1234u16.to_be_bytes());
    data.push(0x01);
    data.extend_from_slice(&payload);
    let sum = data.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    let mut body = vec![(data.len() >> 8) as u8, data.len() as u8];
    body.extend_from_slice(&data);
    body.push(0xFF - sum);
    let mut one = vec![0x7E];
    for b in body {
        if mode == ApiMode::Escaped && matches!(b, 0x7E | 0x7D | 0x11 | 0x13) {
            one.extend_from_slice(&[0x7D, b ^ 0x20]);
        } else {
            one.push(b);
        }
    }
    one.repeat(FRAMES)
}

fn run<D: Deframer>(mut deframer: D, stream: &[u8]) -> usize {
    let mut frames = 0;
    for chunk in stream.chunks(64) {
        deframer.push(chunk);
        while let Some(item) = deframer.next() {
            if matches!(item, Received::Frame(_)) {
                frames += 1;
            }
        }
    }
    assert_eq!(frames, FRAMES);
    frames
}

fn deframers(c: &mut Criterion) {
    let raw_stream = frame().repeat(FRAMES);
    let mut slip_stream = BytesMut::new();
    let mut slip = SlipCodec::new(true);
    for _ in 0..FRAMES {
        slip.encode(&frame(), None::<RadioAddr>, &mut slip_stream)
            .expect("encodes");
    }
    let mode1 = xbee_stream(ApiMode::Unescaped);
    let mode2 = xbee_stream(ApiMode::Escaped);
    let mut group = c.benchmark_group("deframe_1000_publish");
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("raw", |b| b.iter(|| run(RawCodec::new(), &raw_stream)));
    group.bench_function("slip_crc", |b| {
        b.iter(|| run(SlipCodec::new(true), &slip_stream))
    });
    group.bench_function("xbee_api1", |b| {
        b.iter(|| run(XbeeCodec::new(ApiMode::Unescaped), &mode1))
    });
    group.bench_function("xbee_api2", |b| {
        b.iter(|| run(XbeeCodec::new(ApiMode::Escaped), &mode2))
    });
    group.finish();
}

criterion_group!(benches, deframers);
criterion_main!(benches);
