//! `HubConfig::write_delay`: a connection holds its next write back for the delay, and what
//! is queued meanwhile goes out in the same write; a queue at half its bound, or a close,
//! ends the delay at once.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::AsyncReadExt;
use wshub::{Client, Hub, HubConfig, Json, Message};

/// A server whose clients hold writes back for `delay`, and one raw client subscribed to
/// "feed" through its handle (a subscribe request's reply would itself be held back).
async fn setup(config: HubConfig) -> (TestServer, Raw, Client) {
    let server = TestServer::with_config(config).await;
    let raw = server.raw().await;
    eventually("the client is registered", || {
        server.hub.clients().len() == 1
    })
    .await;
    let client = server.hub.clients().remove(0);
    assert!(client.subscribe("feed").unwrap());
    (server, raw, client)
}

fn numbered(i: usize, size: usize) -> Message {
    let mut text = format!("{i:04}:");
    text.extend(std::iter::repeat_n('x', size.saturating_sub(text.len())));
    Message::new("event").with_data(Json::string(&text))
}

/// Every complete frame in `buf` as (opcode, payload).
fn frames_in(mut buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while let Some((op, payload, used)) = parse_server_frame(buf) {
        frames.push((op, payload));
        buf = &buf[used..];
    }
    frames
}

#[tokio::test]
async fn frames_queued_during_the_delay_arrive_together_after_it() {
    const DELAY: Duration = Duration::from_millis(300);
    let (server, mut raw, _client) = setup(HubConfig::default().write_delay(DELAY)).await;
    let first = Instant::now();
    for i in 0..5 {
        let report = server.hub.publish("feed", &numbered(i, 64)).await.unwrap();
        assert_eq!(report.enqueued, 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        first.elapsed() < DELAY,
        "the machine was too slow for this test"
    );
    // The first read returns one write: all five frames, not before the delay.
    assert!(raw.buf.is_empty());
    raw.buf.reserve(64 * 1024);
    let n = tokio::time::timeout(WAIT, raw.tcp.read_buf(&mut raw.buf))
        .await
        .expect("the frames in time")
        .unwrap();
    let waited = first.elapsed();
    assert!(
        waited >= DELAY,
        "written after {waited:?}, before the delay"
    );
    let frames = frames_in(&raw.buf[..n]);
    assert_eq!(frames.len(), 5, "one write carries every frame: {frames:?}");
    for (i, (op, payload)) in frames.iter().enumerate() {
        assert_eq!(*op, OP_TEXT);
        let text = String::from_utf8_lossy(payload);
        assert!(text.contains(&format!("\"data\":\"{i:04}:")), "{text}");
    }
}

#[tokio::test]
async fn a_queue_at_half_its_bound_is_written_without_waiting_for_the_delay() {
    const DELAY: Duration = Duration::from_secs(8);
    const BOUND: usize = 64 * 1024;
    let config = HubConfig::default()
        .write_delay(DELAY)
        .max_queued_bytes(BOUND);
    let (server, mut raw, _client) = setup(config).await;
    let start = Instant::now();
    // Four 10 KiB messages: the first starts the delay, the fourth takes the queue past
    // 32 KiB.
    for i in 0..4 {
        let report = server
            .hub
            .publish("feed", &numbered(i, 10 * 1024))
            .await
            .unwrap();
        assert_eq!(report.enqueued, 1, "message {i}: {report:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..4 {
        let text = raw.read_text().await;
        assert!(text.contains(&format!("\"data\":\"{i:04}:")), "{i}");
    }
    assert!(
        start.elapsed() < DELAY / 2,
        "the half-full queue waited for the delay ({:?})",
        start.elapsed()
    );
    assert_eq!(server.hub.clients().len(), 1, "no slow-consumer disconnect");
}

#[tokio::test]
async fn closing_a_client_ends_its_delay_at_once() {
    const DELAY: Duration = Duration::from_secs(8);
    let (server, mut raw, client) = setup(HubConfig::default().write_delay(DELAY)).await;
    let start = Instant::now();
    let report = server.hub.publish("feed", &numbered(7, 64)).await.unwrap();
    assert_eq!(report.enqueued, 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close(4000, "bye").unwrap();
    let text = raw.read_text().await;
    assert!(text.contains("\"data\":\"0007:"), "{text}");
    assert_eq!(raw.read_close_frame().await, (Some(4000), "bye".to_owned()));
    assert!(
        start.elapsed() < DELAY / 2,
        "the close waited for the delay ({:?})",
        start.elapsed()
    );
}

#[test]
fn a_delay_not_below_the_write_timeout_is_refused() {
    let config = HubConfig::default()
        .write_timeout(Duration::from_secs(2))
        .write_delay(Duration::from_secs(2));
    let err = config.validate().unwrap_err();
    assert!(err.to_string().contains("write_delay"), "{err}");
    assert!(Hub::builder().config(config).build().is_err());
    let ok = HubConfig::default().write_delay(Duration::from_millis(1));
    assert!(ok.validate().is_ok());
}
