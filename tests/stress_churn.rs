//! Connection churn: 10,000 connect/subscribe/disconnect cycles, many at a time, end with zero
//! clients, zero channels, and the process's live heap back at its baseline (measured with a
//! counting global allocator).
//!
//! Run in release (CI does): `cargo test --release --test stress_churn -- --ignored`.

mod support;

use std::alloc::System;
use std::time::Duration;

use cap::Cap;
use support::*;
use wshub::{Hub, HubConfig};

/// Counts live heap bytes.
#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const CYCLES: usize = 10_000;
const CONCURRENCY: usize = 100;

async fn cycles(server: &TestServer, n: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let url = server.ws_url();
        let share = n / CONCURRENCY + usize::from(worker < n % CONCURRENCY);
        tasks.spawn(async move {
            for i in 0..share {
                let mut ws = connect(&url).await;
                subscribe(&mut ws, &format!("room-{}", (worker + i) % 50)).await;
                close(ws).await;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("churn task");
    }
}

async fn settle(hub: &Hub) {
    eventually("all clients gone", || {
        hub.client_count() == 0 && hub.channel_count() == 0
    })
    .await;
    // Session tasks finish their socket shutdown just after unregistering.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stress test: run in release with --ignored"]
async fn ten_thousand_connections_churn_without_leaking() {
    let hub = Hub::builder().config(HubConfig::default()).build().unwrap();
    let server = TestServer::start(hub.clone()).await;
    // Warm up lazily grown structures (runtime, registry shards, allocator caches).
    cycles(&server, 2 * CONCURRENCY).await;
    settle(&hub).await;
    let baseline = ALLOC.allocated() as isize;

    let counters_before = hub.counters();
    cycles(&server, CYCLES).await;
    settle(&hub).await;
    let after = ALLOC.allocated() as isize;

    let c = hub.counters();
    assert_eq!(c.connections - counters_before.connections, CYCLES as u64);
    assert_eq!(
        c.disconnections - counters_before.disconnections,
        CYCLES as u64
    );
    assert_eq!((hub.client_count(), hub.channel_count()), (0, 0));
    let growth = after - baseline;
    eprintln!("live heap: baseline {baseline} B, after {CYCLES} cycles {after} B ({growth:+} B)");
    assert!(
        growth < 512 * 1024,
        "live heap grew by {growth} bytes over {CYCLES} connection cycles"
    );
    server.stop().await;
}
