//! The sans-IO frame codec: encoding a server frame once, decoding masked client frames,
//! and unmasking.

use std::hint::black_box;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wshub::frame::{apply_mask, encode, encode_masked, Decoder, OpCode, Role};

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in [64usize, 1024, 64 * 1024] {
        let payload = vec![b'a'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &payload, |b, p| {
            b.iter(|| black_box(encode(OpCode::Text, black_box(p))));
        });
        let wire = encode_masked(1, true, 0, &payload, [1, 2, 3, 4]);
        group.bench_with_input(BenchmarkId::new("decode_text", size), &wire, |b, wire| {
            let mut decoder = Decoder::new(Role::Server, 1 << 20);
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                black_box(decoder.decode(&mut buf).unwrap().unwrap());
            });
        });
        let mut data = payload.clone();
        group.bench_with_input(BenchmarkId::new("mask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut data), [1, 2, 3, 4], 0));
        });
    }
    group.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
