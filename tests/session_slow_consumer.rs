//! A client that never reads: it never delays the others, it is handled by the configured
//! slow-consumer policy, and the memory held for it stays within the configured bound.

mod support;

use std::time::Duration;

use support::*;
use wshub::{DisconnectReason, Hub, HubConfig, Json, Message, PublishReport, SlowConsumerPolicy};

/// Per-client queue bound used by these tests.
const BOUND: usize = 64 * 1024;
/// Payload size of each published message (a few fit in the bound).
const PAYLOAD: usize = 8 * 1024;
/// Upper limit on publishes before the policy must have kicked in: far more than the kernel
/// buffers of a 4 KiB receive window plus the bound can hold.
const MAX_PUBLISHES: usize = 4_000;

fn payload(i: usize) -> Message {
    let mut text = format!("{i:06}:");
    text.extend(std::iter::repeat_n('x', PAYLOAD - text.len()));
    Message::new("event").with_data(Json::string(&text))
}

/// The sequence number of a message built by [`payload`].
fn seq_of(text: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
    let data = v["data"].as_str().expect("string data");
    data[..6].parse().expect("sequence number")
}

struct Setup {
    server: TestServer,
    log: DisconnectLog,
    fast: Ws,
    slow: Raw,
    slow_id: u64,
}

async fn setup(policy: SlowConsumerPolicy) -> Setup {
    let log = DisconnectLog::default();
    let config = HubConfig::default()
        .max_queued_bytes(BOUND)
        .slow_consumer(policy);
    let hub = log.install(Hub::builder()).config(config).build().unwrap();
    let server = TestServer::start(hub).await;
    let mut slow = Raw::connect_small_rcvbuf(server.addr, 4096).await;
    slow.send_text(r#"{"type":"subscribe","channel":"feed"}"#)
        .await;
    assert!(slow.sync().await.is_empty());
    let slow_id = server.hub.clients()[0].id();
    let mut fast = server.connect().await;
    subscribe(&mut fast, "feed").await;
    Setup {
        server,
        log,
        fast,
        slow,
        slow_id,
    }
}

/// Publishes numbered messages until `done(report)`; after each publish the fast client must
/// receive that very message (so it never lags) and the slow client's queue must stay within
/// the bound. Returns every report.
async fn publish_until(s: &mut Setup, done: impl Fn(&PublishReport) -> bool) -> Vec<PublishReport> {
    let hub = s.server.hub.clone();
    let mut reports = Vec::new();
    for i in 0..MAX_PUBLISHES {
        let report = hub.publish("feed", &payload(i)).await.unwrap();
        assert_eq!(report.recipients(), 2, "{report:?}");
        reports.push(report);
        // The fast client gets every message right away, whatever the slow one does.
        let text = recv(&mut s.fast).await;
        assert_eq!(seq_of(&text), i);
        if let Some(client) = hub.client(s.slow_id) {
            let queued = client.queued_bytes();
            assert!(queued <= BOUND, "queued {queued} bytes > bound {BOUND}");
        }
        if done(&report) {
            return reports;
        }
    }
    panic!("the slow client was never handled after {MAX_PUBLISHES} publishes");
}

#[tokio::test]
async fn disconnect_policy_drops_the_slow_client_and_spares_the_others() {
    let mut s = setup(SlowConsumerPolicy::Disconnect).await;
    let hub = s.server.hub.clone();
    let reports = publish_until(&mut s, |r| r.disconnected == 1).await;
    let last = *reports.last().unwrap();
    assert_eq!((last.enqueued, last.dropped, last.disconnected), (1, 0, 1));
    // Every earlier publish reached both clients.
    for r in &reports[..reports.len() - 1] {
        assert_eq!((r.enqueued, r.dropped, r.disconnected), (2, 0, 0));
    }
    assert_eq!(hub.counters().slow_consumer_disconnects, 1);
    // Later publishes no longer count it as enqueued while it goes away.
    let report = hub.publish("feed", &payload(reports.len())).await.unwrap();
    assert_eq!(report.enqueued, 1);
    assert_eq!(seq_of(&recv(&mut s.fast).await), reports.len());

    // Its queue is abandoned at once.
    let client = hub.client(s.slow_id);
    if let Some(client) = client {
        assert!(client.is_closed());
        assert!(client.queued_bytes() <= BOUND);
    }
    // The slow client finally reads: messages, then close 1008 "slow consumer", then EOF.
    // Everything it gets is an in-order prefix of what was published.
    let mut expected = 0;
    let close = loop {
        let (op, payload) = s.slow.read_frame().await.expect("close before EOF");
        match op {
            OP_TEXT => {
                let seq = seq_of(std::str::from_utf8(&payload).unwrap());
                assert_eq!(seq, expected, "in order, without gaps");
                expected += 1;
            }
            OP_CLOSE => break payload,
            OP_PING => {}
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert!(
        expected < reports.len(),
        "the message that overflowed was not sent"
    );
    assert_eq!(&close[..2], &1008u16.to_be_bytes());
    assert_eq!(&close[2..], b"slow consumer");
    // Like any client, it answers the close; the server then closes the TCP connection.
    s.slow.send_close(1008, "").await;
    s.slow.expect_eof().await;
    assert_eq!(
        s.log.wait_for(s.slow_id).await,
        DisconnectReason::SlowConsumer
    );
    eventually("slow client removed", || {
        hub.client_count() == 1 && hub.channel_subscriber_count("feed") == 1
    })
    .await;
    sync(&mut s.fast).await;
    drop(s.fast);
    s.server.stop().await;
}

#[tokio::test]
async fn drop_policy_skips_messages_and_tells_the_client_how_many() {
    let mut s = setup(SlowConsumerPolicy::Drop).await;
    let hub = s.server.hub.clone();
    // Publish until the slow client has missed a good number of messages.
    let slow_id = s.slow_id;
    let reports = publish_until(&mut s, |_| {
        hub.client(slow_id).unwrap().dropped_messages() >= 20
    })
    .await;
    let dropped: usize = reports.iter().map(|r| r.dropped).sum();
    assert!(dropped >= 20);
    for r in &reports {
        assert_eq!(r.disconnected, 0, "{r:?}");
        assert_eq!(r.enqueued + r.dropped, 2, "{r:?}");
    }
    let client = hub.client(s.slow_id).unwrap();
    assert_eq!(client.dropped_messages(), dropped as u64);
    assert_eq!(hub.counters().dropped, dropped as u64);
    assert!(!client.is_closed(), "still connected");

    // Now the slow client reads everything: every message it got, in order, plus "dropped N"
    // notices whose N add up to exactly what it missed. A final message marks the end.
    let total = reports.len();
    let mut got = Vec::new();
    let mut noticed = 0usize;
    let mut marker_sent = false;
    loop {
        if !marker_sent && client.queued_bytes() == 0 {
            // Once it has drained, one more publish must reach it (after any notice).
            // Its queue is empty, so this one fits, together with any pending notice.
            let report = hub.publish("feed", &payload(total)).await.unwrap();
            assert_eq!(report.enqueued, 2, "{report:?}");
            assert_eq!(seq_of(&recv(&mut s.fast).await), total);
            marker_sent = true;
        }
        let (op, payload) = s.slow.read_frame().await.expect("open");
        if op != OP_TEXT {
            continue;
        }
        let text = String::from_utf8(payload).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        if v["type"] == "error" {
            let data = v["data"].as_str().unwrap();
            let n: usize = data
                .strip_prefix("dropped ")
                .and_then(|d| d.strip_suffix(" messages"))
                .unwrap_or_else(|| panic!("unexpected error {data}"))
                .parse()
                .unwrap();
            assert!(n > 0);
            noticed += n;
            continue;
        }
        let seq = seq_of(&text);
        if seq == total {
            break;
        }
        if let Some(&prev) = got.last() {
            assert!(seq > prev, "in order: {seq} after {prev}");
        }
        got.push(seq);
    }
    assert_eq!(client.dropped_messages(), dropped as u64);
    assert_eq!(got.len() + dropped, total, "received + dropped = published");
    assert_eq!(noticed, dropped, "notices add up to every dropped message");
    assert!(s.slow.sync().await.is_empty());
    drop(s.slow);
    assert_eq!(
        s.log.wait_for(s.slow_id).await,
        DisconnectReason::ConnectionLost
    );
    drop(s.fast);
    s.server.stop().await;
}

#[tokio::test]
async fn a_stalled_socket_is_disconnected_after_the_write_timeout() {
    // A bound so large that the queue never overflows: only the write timeout can act.
    let log = DisconnectLog::default();
    let config = HubConfig::default()
        .max_queued_bytes(64 << 20)
        .write_timeout(Duration::from_millis(200));
    let hub = log.install(Hub::builder()).config(config).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    let (slow, slow_id) = {
        let mut raw = Raw::connect_small_rcvbuf(server.addr, 4096).await;
        raw.send_text(r#"{"type":"subscribe","channel":"feed"}"#)
            .await;
        assert!(raw.sync().await.is_empty());
        (raw, hub.clients()[0].id())
    };
    // Publish until data stays queued: the socket no longer takes it.
    let mut published = 0;
    eventually("the socket stalls", || {
        if hub.client(slow_id).is_some_and(|c| c.queued_bytes() > 0) {
            return true;
        }
        for _ in 0..64 {
            hub.publish_local("feed", &payload(published)).unwrap();
            published += 1;
        }
        false
    })
    .await;
    assert_eq!(log.wait_for(slow_id).await, DisconnectReason::WriteTimeout);
    eventually("removed", || hub.client_count() == 0).await;
    drop(slow.tcp);
    server.stop().await;
}

#[tokio::test]
async fn pings_from_a_client_that_never_reads_do_not_grow_its_queue() {
    // Drop policy and a write timeout long enough not to interfere: the client stays
    // connected with a full socket and a full queue, and floods pings.
    // No rate limit: this is about the pong bound, not about refusing the pings.
    let config = HubConfig::default()
        .max_queued_bytes(BOUND)
        .slow_consumer(SlowConsumerPolicy::Drop)
        .rate_limit(None);
    let server = TestServer::with_config(config).await;
    let hub = server.hub.clone();
    let mut slow = Raw::connect_small_rcvbuf(server.addr, 4096).await;
    slow.send_text(r#"{"type":"subscribe","channel":"feed"}"#)
        .await;
    assert!(slow.sync().await.is_empty());
    let client = hub.clients().pop().unwrap();
    let mut i = 0;
    while client.dropped_messages() == 0 {
        hub.publish("feed", &payload(i)).await.unwrap();
        i += 1;
        assert!(i < MAX_PUBLISHES, "the queue never filled");
        tokio::task::yield_now().await;
    }
    // Many thousands of pings, each asking for a 125-byte pong that cannot be written.
    let mut pings = Vec::new();
    for _ in 0..20_000 {
        pings.extend_from_slice(&wshub::frame::encode_masked(
            OP_PING,
            true,
            0,
            &[b'p'; 125],
            [1, 2, 3, 4],
        ));
    }
    // Then a request with a visible effect: once it is processed, so are the pings.
    pings.extend_from_slice(&wshub::frame::encode_masked(
        OP_TEXT,
        true,
        0,
        br#"{"type":"subscribe","channel":"marker"}"#,
        [1, 2, 3, 4],
    ));
    slow.write(&pings).await;
    eventually("the pings are processed", || {
        hub.channel_subscriber_count("marker") == 1
    })
    .await;
    // RFC 6455 lets an endpoint answer only the most recent pings: a few pending pongs (a
    // small fixed number) may be held on top of the bound, never one per ping.
    const SLACK: usize = 32 * 127;
    let queued = client.queued_bytes();
    assert!(
        queued <= BOUND + SLACK,
        "queued {queued} bytes for a client whose bound is {BOUND}"
    );
    assert!(!client.is_closed());
    drop(slow);
    server.stop().await;
}

#[tokio::test]
async fn the_frame_count_bound_applies_too() {
    // Plenty of bytes, but at most 16 frames queued per client.
    let log = DisconnectLog::default();
    let config = HubConfig::default()
        .max_queued_bytes(16 << 20)
        .max_queued_frames(16);
    let hub = log.install(Hub::builder()).config(config).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    let (mut ws, id) = server.connect_client().await;
    subscribe(&mut ws, "feed").await;
    // This runtime is single-threaded: the session cannot write between these publishes, so
    // they all stay queued and the 17th overflows.
    for i in 0..16 {
        let report = hub.publish_local("feed", &payload(i)).unwrap();
        assert_eq!(report.enqueued, 1, "message {i}");
    }
    let report = hub.publish_local("feed", &payload(16)).unwrap();
    assert_eq!((report.enqueued, report.disconnected), (0, 1));
    // The queue was abandoned: the client only gets the close.
    assert_eq!(
        recv_close(&mut ws).await,
        (1008, "slow consumer".to_owned())
    );
    expect_end(&mut ws).await;
    assert_eq!(log.wait_for(id).await, DisconnectReason::SlowConsumer);
    server.stop().await;
}

#[tokio::test]
async fn a_message_larger_than_any_queue_is_refused_and_nobody_is_disconnected() {
    let config = HubConfig::default()
        .max_queued_bytes(BOUND)
        .history(vec![wshub::ChannelPattern::new("feed:*").unwrap()]);
    let server = TestServer::with_config(config).await;
    let hub = &server.hub;
    let mut subscribers = Vec::new();
    for _ in 0..3 {
        let mut ws = server.connect().await;
        subscribe(&mut ws, "news").await;
        send(&mut ws, r#"{"type":"subscribe","channel":"feed:1"}"#).await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
        subscribers.push(ws);
    }
    // Go escaping makes `<` six bytes: this data is small, its frame is not.
    let data = "<".repeat(BOUND / 6 + 1);
    let big = Message::new("event").with_data(Json::string(&data));
    for channel in ["news", "feed:1"] {
        match hub.publish(channel, &big).await {
            Err(wshub::PublishError::TooLarge { size, limit }) => {
                assert!(size > BOUND, "{size}");
                assert_eq!(limit, BOUND);
            }
            other => panic!("{channel}: expected TooLarge, got {other:?}"),
        }
    }
    assert!(matches!(
        hub.broadcast(&big).await,
        Err(wshub::PublishError::TooLarge { .. })
    ));
    // To one client: refused the same way, and it stays connected.
    let one = hub.clients().into_iter().next().unwrap();
    assert!(matches!(
        one.send(&big),
        Err(wshub::SendError::TooLarge { limit: BOUND, .. })
    ));
    // Through the HTTP API: 413 with the reason.
    let body = serde_json::json!({"channel": "news", "data": data}).to_string();
    let (status, reply) = http(server.addr, "POST", "/api/publish", &[], body.as_bytes()).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("message too large"), "{reply}");
    // Nobody was disconnected, and the next message reaches everyone; on the history
    // channel the refused message took no offset.
    assert_eq!(hub.counters().slow_consumer_disconnects, 0);
    assert_eq!(hub.client_count(), 3);
    let small = Message::new("event").with_data(Json::string("after"));
    assert_eq!(hub.publish("news", &small).await.unwrap().enqueued, 3);
    assert_eq!(hub.publish("feed:1", &small).await.unwrap().enqueued, 3);
    for ws in &mut subscribers {
        let got = recv_json(ws).await;
        assert_eq!(
            (got["channel"].as_str(), got["data"].as_str()),
            (Some("news"), Some("after"))
        );
        let got = recv_json(ws).await;
        assert_eq!(got["channel"], "feed:1");
        assert_eq!(got["offset"], 1, "{got}");
    }
    drop(subscribers);
    server.stop().await;
}
