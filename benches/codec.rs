//! Codec cost per PUBLISH: decode, encode, and both, for a 32-byte payload (a typical sensor
//! reading) and a 1 KB one. Run with `cargo bench --bench codec`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use mqttsn_gateway::codec::{Frame, Message, Publish, QoS, TopicRef};
use std::hint::black_box;

fn publish(data: &[u8]) -> Message<'_> {
    Message::Publish(Publish {
        dup: false,
        qos: QoS::One,
        retain: false,
        topic: TopicRef::Id(1),
        msg_id: 42,
        data,
    })
}

fn bench_publish(c: &mut Criterion, size: usize) {
    let data = vec![0x5Au8; size];
    let wire = publish(&data).to_vec().expect("fits");
    let mut group = c.benchmark_group(format!("publish_{size}B"));
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode", |b| {
        b.iter(|| Frame::decode(black_box(&wire)).map(|f| f.message.encoded_len()))
    });
    let mut out = Vec::with_capacity(2048);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            publish(black_box(&data)).encode(&mut out)
        })
    });
    group.bench_function("decode_then_encode", |b| {
        b.iter_batched_ref(
            || Vec::with_capacity(2048),
            |out| {
                let frame = Frame::decode(black_box(&wire)).expect("valid");
                frame.encode(out)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_publish(c, 32);
    bench_publish(c, 1024);
}

criterion_group!(benches, codec);
criterion_main!(benches);
