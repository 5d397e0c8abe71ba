//! Heartbeat pings and the pong timeout, with short durations configured in `HubConfig`.

mod support;

use std::time::Duration;

use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wshub::{DisconnectReason, Hub, HubConfig};

const HEARTBEAT: Duration = Duration::from_millis(50);
const PONG_TIMEOUT: Duration = Duration::from_millis(300);

fn config() -> HubConfig {
    HubConfig::default()
        .heartbeat_interval(HEARTBEAT)
        .pong_timeout(PONG_TIMEOUT)
}

async fn server() -> (TestServer, DisconnectLog) {
    let log = DisconnectLog::default();
    let hub = log
        .install(Hub::builder())
        .config(config())
        .build()
        .unwrap();
    (TestServer::start(hub).await, log)
}

#[tokio::test]
async fn a_custom_heartbeat_makes_the_client_see_pings() {
    let (server, _log) = server().await;
    let mut ws = server.connect().await;
    let start = Instant::now();
    let mut pings = 0;
    while pings < 3 {
        match next(&mut ws).await.expect("open") {
            WsMessage::Ping(payload) => {
                assert!(payload.is_empty());
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Three pings at a 50 ms interval cannot come sooner than ~150 ms.
    assert!(start.elapsed() >= HEARTBEAT * 2, "{:?}", start.elapsed());
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_outlives_the_pong_timeout() {
    let (server, log) = server().await;
    let (mut ws, id) = server.connect_client().await;
    // tungstenite answers every ping while it is being polled; keep polling for well over
    // twice the pong timeout, counting pings.
    let until = Instant::now() + PONG_TIMEOUT * 2 + HEARTBEAT;
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, next(&mut ws)).await {
            Err(_) => break,
            Ok(Some(WsMessage::Ping(_))) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 5, "pings seen: {pings}");
    sync(&mut ws).await;
    assert!(log.reasons_for(id).is_empty(), "still connected");
    assert_eq!(server.hub.client_count(), 1);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_the_pong_timeout() {
    let (server, log) = server().await;
    let start = Instant::now();
    let (mut raw, id) = server.raw_client().await;
    // The raw client reads but never answers the pings.
    let mut pings = 0;
    loop {
        match raw.read_frame().await {
            Some((OP_PING, _)) => pings += 1,
            Some((op, payload)) => panic!("unexpected frame {op}: {payload:?}"),
            None => break,
        }
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= PONG_TIMEOUT,
        "disconnected too early: {elapsed:?}"
    );
    assert!(pings >= 3, "pings before the timeout: {pings}");
    assert_eq!(log.wait_for(id).await, DisconnectReason::PongTimeout);
    eventually("client removed", || server.hub.client_count() == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn any_traffic_from_the_client_keeps_it_alive() {
    let (server, log) = server().await;
    let (mut raw, id) = server.raw_client().await;
    // Answer pings with pongs, by hand, for over twice the pong timeout.
    let until = Instant::now() + PONG_TIMEOUT * 2;
    while Instant::now() < until {
        match raw.read_frame().await {
            Some((OP_PING, payload)) => raw.frame(OP_PONG, true, 0, &payload).await,
            Some((op, payload)) => panic!("unexpected frame {op}: {payload:?}"),
            None => panic!("disconnected although it answered every ping"),
        }
    }
    assert!(raw.sync().await.is_empty());
    assert!(log.reasons_for(id).is_empty());
    drop(raw);
    assert_eq!(log.wait_for(id).await, DisconnectReason::ConnectionLost);
    server.stop().await;
}

#[test]
fn heartbeat_configuration_is_validated() {
    let bad = [
        HubConfig::default().pong_timeout(Duration::from_secs(30)),
        HubConfig::default().pong_timeout(Duration::from_secs(10)),
        HubConfig::default().heartbeat_interval(Duration::ZERO),
        HubConfig::default().write_timeout(Duration::ZERO),
        HubConfig::default().close_timeout(Duration::ZERO),
        HubConfig::default().max_queued_bytes(0),
        HubConfig::default().max_queued_frames(0),
        HubConfig::default().max_subscriptions(0),
        HubConfig::default().max_channel_name_len(0),
    ];
    for config in bad {
        let err = Hub::builder().config(config.clone()).build().unwrap_err();
        assert!(!err.field().is_empty(), "{config:?}: {err}");
    }
    let err = Hub::builder()
        .config(HubConfig::default().pong_timeout(Duration::from_secs(30)))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "pong_timeout");
    let defaults = HubConfig::default();
    assert_eq!(defaults.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(defaults.pong_timeout, Duration::from_secs(60));
    assert_eq!(defaults.write_timeout, Duration::from_secs(10));
    assert_eq!(defaults.max_message_size, 64 * 1024);
    assert_eq!(defaults.max_queued_bytes, 1024 * 1024);
    assert_eq!(defaults.max_subscriptions, 1024);
    assert!(config().validate().is_ok());
}
