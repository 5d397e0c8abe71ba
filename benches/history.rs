//! The cost of history: publishing on a channel with history against the same channel
//! without, in memory (1 and 1,000 detached subscribers, the enqueue path) and through the
//! Redis broker (a local `redis-server` on a free port, started by the bench when it is on
//! PATH; one local subscriber, delivered in offset order: at once when the publication is the
//! next one, else when its copy comes back from Redis). The Redis part also prints the CPU
//! time per publish of this process (the node) and of redis-server, from `/proc`: medians of
//! rounds that alternate plain and history publishes.

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
    for subscribers in [1, 1000] {
        let mut group = c.benchmark_group(format!("history_memory_{subscribers}_subscribers"));
        group
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Elements(subscribers));
        let hub = Hub::builder().config(config()).build().unwrap();
        let clients: Vec<_> = (0..subscribers).map(|_| hub.detached_client()).collect();
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
                        assert_eq!(report.enqueued as u64, subscribers);
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
        if pong(port) {
            return Some((redis, port));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Redis answers `PING` on `port` (a connect alone can reach the socket itself on a free port).
fn pong(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    tcp.write_all(b"PING\r\n").is_ok()
        && tcp.read_exact(&mut answer).is_ok()
        && &answer == b"+PONG\r\n"
}

/// CPU seconds (user + system) of process `pid` so far, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn through_redis(c: &mut Criterion) {
    let Some((redis, port)) = start_redis() else {
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
    let subscriber = hub.detached_client();
    let msg = message();
    rt.block_on(async {
        for channel in ["plain", "hist:a"] {
            subscriber.subscribe(channel).unwrap();
        }
        // The history channel's subscription in Redis is active once a publish comes back.
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.publish("hist:a", &msg).await.unwrap().enqueued != 1 {
            assert!(
                Instant::now() < deadline,
                "the Redis subscription never came up"
            );
        }
        subscriber.drain_detached();
    });
    let mut group = c.benchmark_group("history_redis_publish_1_subscriber");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(1));
    for channel in ["plain", "hist:a"] {
        group.bench_function(BenchmarkId::from_parameter(channel), |b| {
            b.iter_custom(|iters| {
                let (hub, msg, subscriber) = (hub.clone(), msg.clone(), subscriber.clone());
                rt.block_on(rt.spawn(async move {
                    let t0 = Instant::now();
                    for _ in 0..iters {
                        let report = hub.publish(channel, &msg).await.unwrap();
                        assert_eq!(report.enqueued, 1);
                        subscriber.drain_detached();
                    }
                    t0.elapsed()
                }))
                .unwrap()
            });
        });
    }
    group.finish();
    // CPU per publish, of this process (the node) and of redis-server, and the wall time: a
    // fixed number of publishes of each kind, one at a time and from 16 tasks at once,
    // alternating, in several rounds; medians.
    const N: u32 = 20_000;
    const ROUNDS: usize = 5;
    let per = |s: f64| s * 1e6 / f64::from(N);
    for tasks in [1u32, 16] {
        // Per kind: (wall, node CPU, redis-server CPU) of each round, in µs per publish.
        let mut rounds: [Vec<[f64; 3]>; 2] = Default::default();
        for _ in 0..ROUNDS {
            for (kind, channel) in ["plain", "hist:a"].into_iter().enumerate() {
                let (node0, redis0, t0) = (
                    cpu_seconds(std::process::id()),
                    cpu_seconds(redis.0.id()),
                    Instant::now(),
                );
                rt.block_on(async {
                    let workers: Vec<_> = (0..tasks)
                        .map(|_| {
                            let (hub, msg) = (hub.clone(), msg.clone());
                            tokio::spawn(async move {
                                for _ in 0..N / tasks {
                                    hub.publish(channel, &msg).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for w in workers {
                        w.await.unwrap();
                    }
                    subscriber.drain_detached();
                });
                let wall = t0.elapsed().as_secs_f64();
                if let (Some(n0), Some(r0), Some(n1), Some(r1)) = (
                    node0,
                    redis0,
                    cpu_seconds(std::process::id()),
                    cpu_seconds(redis.0.id()),
                ) {
                    rounds[kind].push([per(wall), per(n1 - n0), per(r1 - r0)]);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let mut totals = [0.0; 2];
        for (kind, channel) in ["plain", "hist:a"].into_iter().enumerate() {
            let column = |i: usize| rounds[kind].iter().map(|r| r[i]).collect::<Vec<_>>();
            let (wall, node, redis) = (
                median(&mut column(0)),
                median(&mut column(1)),
                median(&mut column(2)),
            );
            totals[kind] = median(&mut rounds[kind].iter().map(|r| r[1] + r[2]).collect());
            eprintln!(
                "history_redis: {tasks:2} publishing task(s), {channel:6}: {wall:.1} µs wall, node CPU {node:.1} µs, redis-server CPU {redis:.1} µs per publish (medians of {ROUNDS})"
            );
        }
        eprintln!(
            "history_redis: {tasks:2} publishing task(s): node + redis-server CPU per publish {:.1} against {:.1} µs, {:.2}x",
            totals[1],
            totals[0],
            totals[1] / totals[0]
        );
    }
}

criterion_group!(benches, in_memory, through_redis);
criterion_main!(benches);
