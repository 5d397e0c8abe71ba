//! Wire JSON: outbound encoding (Go byte-compatible, once per publish) against a naive
//! serde_json baseline, and inbound request parsing with serde_json (what wshub uses) against
//! simd-json.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wshub::internals::parse_request;
use wshub::{Json, Message};

fn outbound(c: &mut Criterion) {
    let mut group = c.benchmark_group("outbound_json");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let data = r#"{"user":"alice","text":"hello <world> & friends","n":42}"#;
    let msg = Message::new("event").with_data(Json::parse(data).unwrap());
    let now = SystemTime::now();
    group.throughput(Throughput::Elements(1));
    group.bench_function("wshub_go_compatible", |b| {
        b.iter(|| black_box(msg.to_json(Some("room"), now)));
    });
    #[derive(serde::Serialize)]
    struct Naive<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        channel: &'a str,
        data: &'a serde_json::Value,
        timestamp: String,
    }
    let value: serde_json::Value = serde_json::from_str(data).unwrap();
    group.bench_function("serde_json_naive", |b| {
        b.iter(|| {
            let ts = format!("{:?}", now); // a stand-in timestamp string
            black_box(
                serde_json::to_vec(&Naive {
                    kind: "event",
                    channel: "room",
                    data: &value,
                    timestamp: ts,
                })
                .unwrap(),
            )
        });
    });
    group.finish();
}

fn inbound(c: &mut Criterion) {
    let mut group = c.benchmark_group("inbound_parse");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let big = format!(
        r#"{{"type":"publish","channel":"chat:lobby","data":{{"text":"{}","n":1}}}}"#,
        "x".repeat(1000)
    );
    let cases: [(&str, &str); 4] = [
        ("ping", r#"{"type":"ping"}"#),
        (
            "subscribe",
            r#"{"type":"subscribe","channel":"process:1234"}"#,
        ),
        (
            "publish_small",
            r#"{"type":"publish","channel":"chat:lobby","data":{"text":"hi","n":1}}"#,
        ),
        ("publish_1k", &big),
    ];
    for (name, text) in cases {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::new("serde_json", name), text, |b, text| {
            b.iter(|| {
                let r = parse_request(black_box(text.as_bytes())).unwrap();
                black_box(&r);
            });
        });
        // simd-json parses in place: the copy is part of the cost (the payload is shared).
        let mut buffers = simd_json::Buffers::default();
        let mut scratch = Vec::with_capacity(text.len());
        group.bench_with_input(BenchmarkId::new("simd_json", name), text, |b, text| {
            b.iter(|| {
                scratch.clear();
                scratch.extend_from_slice(black_box(text.as_bytes()));
                let v =
                    simd_json::to_borrowed_value_with_buffers(&mut scratch, &mut buffers).unwrap();
                black_box(&v);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, outbound, inbound);
criterion_main!(benches);
