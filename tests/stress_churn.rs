//! Connection churn: 10,000 cycles, many at a time (clean closes, abrupt drops, refused
//! upgrades and abandoned handshakes), end with zero clients, zero channels, and the
//! process's live heap back at its baseline (measured with a counting global allocator).
//!
//! Run in release (CI does): `cargo test --release --test stress_churn -- --ignored`.

mod support;

use std::alloc::System;
use std::time::Duration;

use cap::Cap;
use support::*;
use tokio::io::AsyncWriteExt;
use wshub::{Hub, HubConfig};

/// Counts live heap bytes.
#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const CYCLES: usize = 10_000;
const CONCURRENCY: usize = 100;

/// `n` cycles over [`CONCURRENCY`] workers; each cycle is one of four kinds, in turn: a clean
/// close, an abrupt drop of the TCP connection (no close frame), an upgrade refused with 426,
/// and a handshake abandoned halfway through the request head. Returns how many cycles
/// became WebSocket connections.
async fn cycles(server: &TestServer, n: usize) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..CONCURRENCY {
        let (url, addr) = (server.ws_url(), server.addr);
        let share = n / CONCURRENCY + usize::from(worker < n % CONCURRENCY);
        tasks.spawn(async move {
            let mut connected = 0;
            for i in 0..share {
                let room = format!("room-{}", (worker + i) % 50);
                match (worker + i) % 4 {
                    0 => {
                        let mut ws = connect(&url).await;
                        subscribe(&mut ws, &room).await;
                        close(ws).await;
                        connected += 1;
                    }
                    1 => {
                        let mut ws = connect(&url).await;
                        subscribe(&mut ws, &room).await;
                        drop(ws);
                        connected += 1;
                    }
                    2 => {
                        let request =
                            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close, Upgrade\r\n\
                            Upgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\
                            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
                        assert_eq!(http_raw(addr, request).await.status, 426);
                    }
                    _ => {
                        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                        let _ = tcp.write_all(b"GET /ws HTTP/1.1\r\nUpgr").await;
                    }
                }
            }
            connected
        });
    }
    let mut connected = 0;
    while let Some(r) = tasks.join_next().await {
        connected += r.expect("churn task");
    }
    connected
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
    let connected = cycles(&server, CYCLES).await;
    settle(&hub).await;
    let after = ALLOC.allocated() as isize;

    let c = hub.counters();
    assert_eq!(connected, CYCLES as u64 / 2);
    assert_eq!(c.connections - counters_before.connections, connected);
    assert_eq!(c.disconnections - counters_before.disconnections, connected);
    assert_eq!((hub.client_count(), hub.channel_count()), (0, 0));
    let growth = after - baseline;
    eprintln!("live heap: baseline {baseline} B, after {CYCLES} cycles {after} B ({growth:+} B)");
    assert!(
        growth < 512 * 1024,
        "live heap grew by {growth} bytes over {CYCLES} connection cycles"
    );
    server.stop().await;
}
