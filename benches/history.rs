//! The cost of history: publishing on a channel with history against the same channel
//! without, in memory (1,000 detached subscribers, the enqueue path) and through the Redis
//! broker (a local `redis-server` on a free port, started by the bench when it is on PATH;
//! publish round trips, no local subscribers).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wshub::{ChannelPattern, Hub, HubConfig, Json, Message, RedisConfig};

fn config() -> HubConfig {
    HubConfig::default()
        .history(vec![ChannelPattern::new("hist:*").unwrap()])
        .max_queued_frames(1 << 20)
        .max_queued_bytes(1 << 30)
}

fn message() -> Message {
    Message::new("event").with_data(Json::string("0123456789abcdef0123456789abcdef"))
}

fn in_memory(c: &mut Criterion) {
    let mut group = c.benchmark_group("history_memory_1k_subscribers");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1000));
    let hub = Hub::builder().config(config()).build().unwrap();
    let clients: Vec<_> = (0..1000).map(|_| hub.detached_client()).collect();
    for c in &clients {
        c.subscribe("hist:a").unwrap();
        c.subscribe("plain").unwrap();
    }
    let msg = message();
    for channel in ["plain", "hist:a"] {
        group.bench_function(BenchmarkId::from_parameter(channel), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let report = hub.publish_local(channel, &msg).unwrap();
                    total += t.elapsed();
                    assert_eq!(report.enqueued, 1000);
                    for c in &clients {
                        c.drain_detached();
                    }
                }
                total
            });
        });
    }
    group.finish();
}

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Redis, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let redis = Redis(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((redis, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn through_redis(c: &mut Criterion) {
    let Some((_redis, port)) = start_redis() else {
        eprintln!("history_redis: skipped (no redis-server on PATH)");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = rt.block_on(async {
        Hub::builder()
            .config(config())
            .redis(RedisConfig::new([format!("redis://127.0.0.1:{port}")]))
            .connect()
            .await
            .unwrap()
    });
    let mut group = c.benchmark_group("history_redis_publish");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    let msg = message();
    for channel in ["plain", "hist:a"] {
        group.bench_function(BenchmarkId::from_parameter(channel), |b| {
            b.to_async(&rt)
                .iter(|| async { hub.publish(channel, &msg).await.unwrap() });
        });
    }
    group.finish();
}

criterion_group!(benches, in_memory, through_redis);
criterion_main!(benches);
