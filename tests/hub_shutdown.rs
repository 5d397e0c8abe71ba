//! Graceful shutdown: queued messages are flushed, then close 1001, state cleaned, hooks fired.

mod support;

use std::time::Duration;

use support::*;
use wshub::{DisconnectReason, Hub, HubConfig, Json, Message, PublishError};

#[tokio::test]
async fn shutdown_flushes_queued_messages_then_sends_1001() {
    let log = DisconnectLog::default();
    let hub = log.install(Hub::builder()).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    let mut ids = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (mut ws, id) = server.connect_client().await;
        subscribe(&mut ws, "news").await;
        ids.push(id);
        // Each client reads everything until the close frame, in its own task.
        readers.push(tokio::spawn(async move {
            let (texts, close) = recv_until_close(&mut ws).await;
            expect_end(&mut ws).await;
            (texts, close)
        }));
    }
    // This test runs on a single-threaded runtime: the sessions cannot run between these
    // publishes and the start of the shutdown, so all 200 messages are still queued in the
    // hub when it begins.
    for i in 0..200 {
        let msg = Message::new("event").with_data(Json::parse(i.to_string()).unwrap());
        assert_eq!(hub.publish_local("news", &msg).unwrap().enqueued, 3);
    }
    assert!(hub.clients().iter().all(|c| c.queued_bytes() > 0));
    let report = hub.shutdown(WAIT).await;
    assert_eq!((report.clients, report.forced), (3, 0));

    for reader in readers {
        let (texts, close) = reader.await.unwrap();
        assert_eq!(
            texts.len(),
            200,
            "every queued message arrives before the close"
        );
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(
                mask_timestamp(text),
                format!(r#"{{"type":"event","channel":"news","data":{i},"timestamp":"TS"}}"#)
            );
        }
        let close = close.expect("close code");
        assert_eq!(u16::from(close.code), 1001);
        assert_eq!(close.reason.as_str(), "going away");
    }
    // All state is gone and every disconnect hook ran, before `shutdown` returned.
    assert_eq!(hub.client_count(), 0);
    assert_eq!(hub.channel_count(), 0);
    assert!(hub.channel_subscriber_counts().is_empty());
    assert_eq!(log.len(), 3);
    for id in ids {
        assert_eq!(log.reasons_for(id), [DisconnectReason::Shutdown]);
    }
    assert!(hub.is_shutting_down());

    // The server's own shutdown finds nothing left to do.
    let report = server.stop().await;
    assert_eq!(report.forced, 0);
}

#[tokio::test]
async fn publishing_after_shutdown_is_refused() {
    let server = TestServer::start(Hub::new()).await;
    let hub = server.hub.clone();
    let report = server.stop().await;
    assert_eq!((report.clients, report.forced), (0, 0));
    let msg = Message::new("event");
    assert_eq!(
        hub.publish("news", &msg).await,
        Err(PublishError::ShuttingDown)
    );
    assert_eq!(hub.broadcast(&msg).await, Err(PublishError::ShuttingDown));
    assert_eq!(
        hub.send_process_output("p1", "line").await,
        Err(PublishError::ShuttingDown)
    );
    assert_eq!(
        hub.send_event("e", &Json::null()).await,
        Err(PublishError::ShuttingDown)
    );
    assert_eq!(hub.send_error("x").await, Err(PublishError::ShuttingDown));
    assert_eq!(
        hub.publish_local("news", &msg),
        Err(PublishError::ShuttingDown)
    );
}

#[tokio::test]
async fn server_stop_closes_every_client_with_1001() {
    let log = DisconnectLog::default();
    let hub = log.install(Hub::builder()).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    let mut clients = Vec::new();
    for i in 0..5 {
        let (mut ws, id) = server.connect_client().await;
        subscribe(&mut ws, &format!("c{i}")).await;
        clients.push((ws, id));
    }
    let stop = tokio::spawn(server.stop());
    for (ws, _) in &mut clients {
        assert_eq!(recv_close(ws).await, (1001, "going away".to_owned()));
        expect_end(ws).await;
    }
    let report = stop.await.unwrap();
    assert_eq!((report.clients, report.forced), (5, 0));
    assert_eq!(hub.stats().clients, 0);
    assert_eq!(hub.stats().channels, 0);
    for (_, id) in &clients {
        assert_eq!(log.reasons_for(*id), [DisconnectReason::Shutdown]);
    }
}

#[tokio::test]
async fn clients_that_ignore_the_close_are_forced_at_the_deadline() {
    let log = DisconnectLog::default();
    let config = HubConfig::default().close_timeout(Duration::from_millis(100));
    let hub = log.install(Hub::builder()).config(config).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    // A raw client that never answers the close frame.
    let (mut raw, id) = server.raw_client().await;
    let start = tokio::time::Instant::now();
    let report = hub.shutdown(Duration::from_millis(50)).await;
    let elapsed = start.elapsed();
    assert_eq!((report.clients, report.forced), (1, 1));
    assert!(elapsed < WAIT, "bounded by the deadline: {elapsed:?}");
    assert_eq!(raw.read_close().await, Some(1001));
    raw.expect_eof().await;
    assert_eq!(log.reasons_for(id), [DisconnectReason::Shutdown]);
    assert_eq!(hub.client_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn connections_during_shutdown_are_refused() {
    let server = TestServer::start(Hub::new()).await;
    let hub = server.hub.clone();
    let (mut ws, _) = server.connect_client().await;
    // Start shutting down; the client holds the shutdown open until it answers the close.
    let shutdown = tokio::spawn({
        let hub = hub.clone();
        async move { hub.shutdown(WAIT).await }
    });
    eventually("shutting down", || hub.is_shutting_down()).await;
    // The listener is still up (only the hub is shutting down): upgrades get 503, and the
    // health check says so.
    let (status, _) = http(
        server.addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    )
    .await;
    assert_eq!(status, 503);
    let (status, body) = http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"status":"shutting down"}"#)
    );
    let (status, body) = http(server.addr, "POST", "/api/broadcast", &[], br#"{"data":1}"#).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(recv_close(&mut ws).await.0, 1001);
    expect_end(&mut ws).await;
    let report = shutdown.await.unwrap();
    assert_eq!((report.clients, report.forced), (1, 0));
    server.stop().await;
}
