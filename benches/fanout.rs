//! In-process publish path: fan-out to N subscribers (the enqueue path: encode once, one
//! refcount per recipient), join storms on one channel, and subscribe/unsubscribe churn.
//!
//! Clients are *detached* (registered in the hub, no socket); the frames a publish queued are
//! drained outside the timed section, as a writer would.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wshub::{Client, Hub, HubConfig, Json, Message};

fn hub() -> Hub {
    Hub::builder()
        .config(
            HubConfig::default()
                .max_queued_frames(1 << 20)
                .max_queued_bytes(1 << 30),
        )
        .build()
        .unwrap()
}

fn clients(hub: &Hub, n: usize) -> Vec<Client> {
    (0..n).map(|_| hub.detached_client()).collect()
}

fn message() -> Message {
    // 64-byte-class payload, like the perf suite's default.
    Message::new("event").with_data(Json::string("0123456789abcdef0123456789abcdef"))
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_fanout");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [10usize, 100, 1_000, 10_000, 50_000] {
        let hub = hub();
        let subs = clients(&hub, n);
        for s in &subs {
            s.subscribe("room").unwrap();
        }
        let msg = message();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let report = hub.publish_local("room", &msg).unwrap();
                    total += t.elapsed();
                    assert_eq!(report.enqueued, n);
                    for s in &subs {
                        s.drain_detached();
                    }
                }
                total
            });
        });
        for s in &subs {
            s.disconnect_detached();
        }
    }
    group.finish();
}

/// One channel × 50k subscribers vs 50 channels × 1k: the same deliveries.
fn hot_channel(c: &mut Criterion) {
    let mut group = c.benchmark_group("hot_channel");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(50_000));
    for (channels, per) in [(1usize, 50_000usize), (50, 1_000)] {
        let hub = hub();
        let subs = clients(&hub, channels * per);
        for (i, s) in subs.iter().enumerate() {
            s.subscribe(&format!("ch{}", i % channels)).unwrap();
        }
        let names: Vec<String> = (0..channels).map(|i| format!("ch{i}")).collect();
        let msg = message();
        let id = format!("{channels}x{per}");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    for name in &names {
                        hub.publish_local(name, &msg).unwrap();
                    }
                    total += t.elapsed();
                    for s in &subs {
                        s.drain_detached();
                    }
                }
                total
            });
        });
        for s in &subs {
            s.disconnect_detached();
        }
    }
    group.finish();
}

/// A storm bench: for each size `n`, on a fresh hub each time, `run` does its work and returns
/// how long the measured part took (setup and teardown are not measured).
fn storm(
    c: &mut Criterion,
    group: &str,
    id: &str,
    sizes: &[usize],
    seconds: u64,
    run: impl Fn(&Hub, usize) -> Duration,
) {
    let mut group = c.benchmark_group(group);
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(seconds));
    for &n in sizes {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new(id, n), &n, |b, &n| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&hub(), n)).sum());
        });
    }
    group.finish();
}

/// 50,000 clients joining one channel (the design card: well under a second, not O(n²)).
fn join_storm(c: &mut Criterion) {
    storm(
        c,
        "join_storm",
        "one_channel",
        &[10_000, 50_000],
        5,
        |hub, n| {
            let subs = clients(hub, n);
            let t = Instant::now();
            for s in &subs {
                s.subscribe("storm").unwrap();
            }
            let took = t.elapsed();
            assert_eq!(hub.channel_subscriber_count("storm"), n);
            for s in &subs {
                s.disconnect_detached();
            }
            took
        },
    );
}

/// N clients each joining a channel of its own (personal channels): every join creates a
/// channel, so this is the channel map's storm, as `join_storm` is the member set's.
fn channel_storm(c: &mut Criterion) {
    storm(
        c,
        "channel_storm",
        "own_channel",
        &[10_000, 100_000],
        5,
        |hub, n| {
            let subs = clients(hub, n);
            let names: Vec<String> = (0..n).map(|i| format!("user:{i}")).collect();
            let t = Instant::now();
            for (s, name) in subs.iter().zip(&names) {
                s.subscribe(name).unwrap();
            }
            let took = t.elapsed();
            assert_eq!(hub.channel_count(), n);
            for s in &subs {
                s.disconnect_detached();
            }
            took
        },
    );
}

/// N clients connecting (registering in the set of all clients), then disconnecting: the
/// member set's cost per change at sizes past one page of segments.
fn connection_storm(c: &mut Criterion) {
    let sizes = [50_000, 200_000];
    storm(
        c,
        "connection_storm",
        "connect_disconnect",
        &sizes,
        10,
        |hub, n| {
            let t = Instant::now();
            let subs = clients(hub, n);
            for s in &subs {
                s.disconnect_detached();
            }
            let took = t.elapsed();
            assert_eq!(hub.client_count(), 0);
            took
        },
    );
}

/// Subscribe + unsubscribe of one client on a channel that has 10k members.
fn churn(c: &mut Criterion) {
    let mut group = c.benchmark_group("churn");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let hub = hub();
    let members = clients(&hub, 10_000);
    for m in &members {
        m.subscribe("busy").unwrap();
    }
    let visitor = hub.detached_client();
    group.throughput(Throughput::Elements(1));
    group.bench_function("subscribe_unsubscribe_10k_channel", |b| {
        b.iter(|| {
            visitor.subscribe("busy").unwrap();
            visitor.unsubscribe("busy").unwrap();
        });
    });
    group.finish();
}

criterion_group!(
    benches,
    fanout,
    hot_channel,
    join_storm,
    channel_storm,
    connection_storm,
    churn
);
criterion_main!(benches);
