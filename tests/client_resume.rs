//! The reconnecting client resumes channels with history over real sockets, against a real
//! wshub hub: exactly-once delivery across repeated server-side kills under a steady publisher,
//! a long cut replayed before live publications, a cut longer than the window, a server
//! restart (new epoch), and resuming from a saved position with `subscribe_from`.
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use wshub::client::{ClientConfig, ClientError, Event, Events, ReconnectingClient};
use wshub::{ChannelPattern, Hub, HubConfig, Json, Message};

use support::client::next_event;
use support::{FixedServer, TestServer, WAIT};

/// Channels matching `feed:*` keep the last `size` publications.
fn config(size: usize) -> HubConfig {
    HubConfig::default()
        .history(vec![ChannelPattern::new("feed:*").unwrap()])
        .history_size(size)
        .max_queued_frames(1 << 16)
        .max_queued_bytes(16 << 20)
}

/// Quick retries, so that a reconnect after a refused dial stays fast.
fn fast() -> ClientConfig {
    ClientConfig::default()
        .initial_backoff(Duration::from_millis(10))
        .max_backoff(Duration::from_millis(50))
        .connect_timeout(Duration::from_secs(5))
}

fn start(url: &str) -> (ReconnectingClient, Events) {
    support::client::start(fast(), url)
}

/// A publication whose data is `i`; on a fresh channel its offset is `i` too.
fn numbered(i: u64) -> Message {
    Message::new("event").with_data(Json::parse(i.to_string()).unwrap())
}

/// A hub with `config` whose upgrades are refused while the gate is shut, so a test can keep
/// the client away while it publishes.
fn gated_hub(config: HubConfig) -> (Hub, Arc<AtomicBool>) {
    let open = Arc::new(AtomicBool::new(true));
    let gate = Arc::clone(&open);
    let hub = Hub::builder()
        .config(config)
        .authenticate(move |_| {
            if gate.load(Ordering::SeqCst) {
                Ok("subscriber".to_owned())
            } else {
                Err("gate shut".to_owned())
            }
        })
        .build()
        .expect("valid hub config");
    (hub, open)
}

/// Drops the newest connection's socket on the server side, as a network failure would.
fn kill_newest(hub: &Hub) {
    hub.clients()
        .into_iter()
        .max_by_key(|c| c.id())
        .expect("a connected client")
        .kill_connection();
}

/// Skips failed dials until the next event of another kind.
async fn next_non_dial_event(events: &mut Events) -> Event {
    loop {
        match next_event(events).await {
            Event::ConnectFailed { .. } => continue,
            other => return other,
        }
    }
}

/// A received publication: its channel, epoch and offset. Its data must equal its offset
/// plus `shift`.
fn publication(event: Event, shift: i64) -> (String, String, u64) {
    let Event::Message(message) = event else {
        panic!("expected a publication, got {event:?}");
    };
    let text = message.text().expect("text");
    let v: serde_json::Value = serde_json::from_str(text).expect("JSON");
    assert_eq!(
        v["type"], "event",
        "only publications reach the application: {text}"
    );
    let offset = v["offset"].as_u64().expect("an offset");
    assert_eq!(
        v["data"].as_i64(),
        Some(offset as i64 + shift),
        "data and offset agree: {text}"
    );
    (
        v["channel"].as_str().expect("a channel").to_owned(),
        v["epoch"].as_str().expect("an epoch").to_owned(),
        offset,
    )
}

/// The next event, which must be a publication on `channel` in `epoch`; returns its offset.
async fn next_offset(events: &mut Events, channel: &str, epoch: &str) -> u64 {
    let (c, e, offset) = publication(next_event(events).await, 0);
    assert_eq!((c.as_str(), e.as_str()), (channel, epoch));
    offset
}

async fn expect_connected(events: &mut Events) {
    match next_non_dial_event(events).await {
        Event::Connected => {}
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn expect_reconnected(events: &mut Events) {
    match next_non_dial_event(events).await {
        Event::Reconnected { .. } => {}
        other => panic!("expected Reconnected, got {other:?}"),
    }
}

async fn expect_disconnected(events: &mut Events) {
    match next_event(events).await {
        Event::Disconnected(_) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

/// The next event must be `Recovered` on `channel`; returns (epoch, offset).
async fn expect_recovered(events: &mut Events, channel: &str) -> (String, u64) {
    match next_event(events).await {
        Event::Recovered {
            channel: c,
            epoch,
            offset,
        } if c.as_str() == channel => (epoch, offset),
        other => panic!("expected Recovered on {channel}, got {other:?}"),
    }
}

/// The next event must be `NotRecovered` on `channel`; returns (epoch, offset).
async fn expect_not_recovered(events: &mut Events, channel: &str) -> (String, u64) {
    match next_event(events).await {
        Event::NotRecovered {
            channel: c,
            epoch,
            offset,
        } if c.as_str() == channel => (epoch, offset),
        other => panic!("expected NotRecovered on {channel}, got {other:?}"),
    }
}

/// Subscribes to `channel` and waits for the first connection and the `subscribed` answer;
/// returns the channel's epoch.
async fn connect_subscribed(
    client: &ReconnectingClient,
    events: &mut Events,
    channel: &str,
) -> String {
    client.subscribe(channel).unwrap();
    expect_connected(events).await;
    if client.position(channel).is_none() {
        // The connection was set up before the subscribe (the client task dials at once):
        // the subscribe is written before a later send, so its answer precedes the pong.
        client.send(r#"{"type":"ping"}"#).await.unwrap();
        match next_event(events).await {
            Event::Message(m) if m.text().unwrap().starts_with(r#"{"type":"pong""#) => {}
            other => panic!("expected the pong, got {other:?}"),
        }
    }
    let (epoch, offset) = client.position(channel).expect("a position once answered");
    assert_eq!(offset, 0, "nothing published yet");
    epoch
}

async fn close(client: ReconnectingClient, mut events: Events) {
    client.close();
    while let Some(event) = timeout(WAIT, events.recv()).await.expect("the stream ends") {
        assert!(
            matches!(event, Event::Disconnected(ClientError::Closed)),
            "unexpected event at close: {event:?}"
        );
    }
    client.closed().await.expect("closed cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_kills_under_a_steady_publisher_lose_and_double_nothing() {
    const TOTAL: u64 = 400;
    let server = TestServer::with_config(config(1000)).await;
    let (client, mut events) = start(&server.ws_url());
    let epoch = connect_subscribed(&client, &mut events, "feed:steady").await;
    let hub = server.hub.clone();
    let publisher = tokio::spawn(async move {
        for i in 1..=TOTAL {
            hub.publish("feed:steady", &numbered(i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });

    let mut received: Vec<u64> = Vec::new();
    let (mut cuts, mut recoveries) = (0usize, 0usize);
    // Cut after a few publications, a few more on each round, once the client is back: the
    // cuts depend on what was received, not on timing.
    let mut next_cut = 20;
    let mut live = true;
    while received.last() != Some(&TOTAL) {
        match next_event(&mut events).await {
            event @ Event::Message(_) => {
                let (channel, e, offset) = publication(event, 0);
                assert_eq!(
                    (channel.as_str(), e.as_str()),
                    ("feed:steady", epoch.as_str())
                );
                assert_eq!(offset, received.len() as u64 + 1, "no gap, no duplicate");
                received.push(offset);
                if live && received.len() >= next_cut && offset < TOTAL {
                    kill_newest(&server.hub);
                    live = false;
                    cuts += 1;
                    next_cut = received.len() + 20 + 7 * cuts;
                }
            }
            Event::Disconnected(why) => {
                assert!(!live, "only the test cuts the connection: {why}");
            }
            Event::Reconnected { .. } => live = true,
            Event::ConnectFailed { .. } => {}
            Event::Recovered {
                channel,
                epoch: e,
                offset,
            } => {
                assert_eq!(channel.as_str(), "feed:steady");
                assert_eq!(e, epoch);
                assert_eq!(
                    offset,
                    received.len() as u64,
                    "resumed from the last publication received"
                );
                recoveries += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    publisher.await.unwrap();
    assert!(
        cuts >= 6,
        "the test must cut the connection repeatedly ({cuts} cuts)"
    );
    assert_eq!(recoveries, cuts, "every cut is recovered");
    assert_eq!(received, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(client.position("feed:steady"), Some((epoch, TOTAL)));
    close(client, events).await;
    server.stop().await;
}

#[tokio::test]
async fn a_long_cut_is_replayed_in_order_before_live_publications() {
    // More missed publications than the client used to hold back before the confirmation.
    const MISSED: u64 = 3000;
    let (hub, gate) = gated_hub(config(5000));
    let server = TestServer::start(hub).await;
    let (client, mut events) = start(&server.ws_url());
    client.subscribe("news").unwrap();
    let epoch = connect_subscribed(&client, &mut events, "feed:long").await;
    server.hub.publish("feed:long", &numbered(1)).await.unwrap();
    assert_eq!(next_offset(&mut events, "feed:long", &epoch).await, 1);

    gate.store(false, Ordering::SeqCst);
    kill_newest(&server.hub);
    expect_disconnected(&mut events).await;
    // The client redials and is refused until the gate opens.
    match next_event(&mut events).await {
        Event::ConnectFailed { .. } => {}
        other => panic!("expected a refused dial, got {other:?}"),
    }
    for i in 2..=MISSED + 1 {
        server.hub.publish("feed:long", &numbered(i)).await.unwrap();
    }
    gate.store(true, Ordering::SeqCst);

    // Announced once the server has processed the resubscribes (its pong is consumed,
    // never delivered), then the resume, then every missed publication in order.
    expect_reconnected(&mut events).await;
    assert_eq!(
        expect_recovered(&mut events, "feed:long").await,
        (epoch.clone(), 1)
    );
    for expected in 2..=MISSED + 1 {
        assert_eq!(
            next_offset(&mut events, "feed:long", &epoch).await,
            expected
        );
    }
    // Then live ones, on both channels: the channel without history was resubscribed
    // (plainly) and produces no resume event.
    server.hub.publish("news", &numbered(0)).await.unwrap();
    server
        .hub
        .publish("feed:long", &numbered(MISSED + 2))
        .await
        .unwrap();
    let Event::Message(news) = next_event(&mut events).await else {
        panic!("expected the news publication");
    };
    assert!(
        news.text()
            .unwrap()
            .starts_with(r#"{"type":"event","channel":"news","data":0,"#),
        "{news:?}"
    );
    assert_eq!(
        next_offset(&mut events, "feed:long", &epoch).await,
        MISSED + 2
    );
    assert_eq!(client.position("news"), None, "no history, no position");
    assert_eq!(client.position("feed:long"), Some((epoch, MISSED + 2)));
    close(client, events).await;
    server.stop().await;
}

#[tokio::test]
async fn a_cut_longer_than_the_window_is_not_recovered_and_the_new_position_is_adopted() {
    let (hub, gate) = gated_hub(config(10));
    let server = TestServer::start(hub).await;
    let (client, mut events) = start(&server.ws_url());
    let epoch = connect_subscribed(&client, &mut events, "feed:w").await;
    for i in 1..=3 {
        server.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    for i in 1..=3 {
        assert_eq!(next_offset(&mut events, "feed:w", &epoch).await, i);
    }

    gate.store(false, Ordering::SeqCst);
    kill_newest(&server.hub);
    expect_disconnected(&mut events).await;
    // 4..=30: the window (10) no longer reaches publication 4.
    for i in 4..=30 {
        server.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    assert_eq!(client.position("feed:w"), Some((epoch.clone(), 3)));
    gate.store(true, Ordering::SeqCst);

    expect_reconnected(&mut events).await;
    assert_eq!(
        expect_not_recovered(&mut events, "feed:w").await,
        (epoch.clone(), 30),
        "the channel's current position"
    );
    assert_eq!(client.position("feed:w"), Some((epoch.clone(), 30)));
    // Nothing is replayed; live publications continue after the new position.
    server.hub.publish("feed:w", &numbered(31)).await.unwrap();
    assert_eq!(next_offset(&mut events, "feed:w", &epoch).await, 31);

    // A later cut within the window recovers from the adopted position.
    gate.store(false, Ordering::SeqCst);
    kill_newest(&server.hub);
    expect_disconnected(&mut events).await;
    for i in 32..=36 {
        server.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    gate.store(true, Ordering::SeqCst);
    expect_reconnected(&mut events).await;
    assert_eq!(
        expect_recovered(&mut events, "feed:w").await,
        (epoch.clone(), 31)
    );
    for i in 32..=36 {
        assert_eq!(next_offset(&mut events, "feed:w", &epoch).await, i);
    }
    close(client, events).await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_restart_changes_the_epoch_and_the_client_is_told() {
    // Take a free port from a throwaway server, then serve on it ourselves.
    let throwaway = TestServer::start(Hub::new()).await;
    let addr = throwaway.addr;
    throwaway.stop().await;
    let hub1 = support::hub(config(100));
    let server1 = FixedServer::start(hub1.clone(), addr).await;
    let (client, mut events) = start(&format!("ws://{addr}/ws"));
    let old_epoch = connect_subscribed(&client, &mut events, "feed:r").await;
    for i in 1..=2 {
        hub1.publish("feed:r", &numbered(i)).await.unwrap();
    }
    for i in 1..=2 {
        assert_eq!(next_offset(&mut events, "feed:r", &old_epoch).await, i);
    }

    server1.stop().await;
    expect_disconnected(&mut events).await;
    // A new in-memory hub on the same address: the history is gone.
    let hub2 = support::hub(config(100));
    let server2 = FixedServer::start(hub2.clone(), addr).await;
    expect_reconnected(&mut events).await;
    let (new_epoch, offset) = expect_not_recovered(&mut events, "feed:r").await;
    assert_ne!(new_epoch, old_epoch, "a new epoch");
    assert_eq!(offset, 0);
    assert_eq!(client.position("feed:r"), Some((new_epoch.clone(), 0)));
    hub2.publish("feed:r", &numbered(1)).await.unwrap();
    assert_eq!(next_offset(&mut events, "feed:r", &new_epoch).await, 1);
    close(client, events).await;
    server2.stop().await;
}

#[tokio::test]
async fn a_saved_position_is_resumed_with_subscribe_from() {
    let server = TestServer::with_config(config(100)).await;
    // A first run of the program receives 1..=5 and saves its position when its stream ends.
    let (first, mut events) = start(&server.ws_url());
    let epoch = connect_subscribed(&first, &mut events, "feed:p").await;
    for i in 1..=5 {
        server.hub.publish("feed:p", &numbered(i)).await.unwrap();
    }
    for i in 1..=5 {
        assert_eq!(next_offset(&mut events, "feed:p", &epoch).await, i);
    }
    let saved_client = first.clone();
    close(first, events).await;
    let saved = saved_client.position("feed:p").expect("a position");
    assert_eq!(saved, (epoch.clone(), 5));
    drop(saved_client);
    // Published while no program runs.
    for i in 6..=8 {
        server.hub.publish("feed:p", &numbered(i)).await.unwrap();
    }

    // The next run resumes from the saved position.
    let (client, mut events) = start(&server.ws_url());
    assert_eq!(client.subscribe_from("feed:p", &saved.0, saved.1), Ok(true));
    assert_eq!(
        client.subscribe_from("feed:p", "other", 1),
        Ok(false),
        "already subscribed: the position is unchanged"
    );
    expect_connected(&mut events).await;
    assert_eq!(
        expect_recovered(&mut events, "feed:p").await,
        (epoch.clone(), 5)
    );
    for i in 6..=8 {
        assert_eq!(next_offset(&mut events, "feed:p", &epoch).await, i);
    }
    server.hub.publish("feed:p", &numbered(9)).await.unwrap();
    assert_eq!(next_offset(&mut events, "feed:p", &epoch).await, 9);
    assert_eq!(client.position("feed:p"), Some((epoch.clone(), 9)));

    // While connected: unsubscribing and resuming from an earlier position at once replays
    // from there (the connection unsubscribes, then resumes).
    assert_eq!(client.unsubscribe("feed:p"), Ok(true));
    assert_eq!(
        client.position("feed:p"),
        None,
        "forgotten with the subscription"
    );
    assert_eq!(client.subscribe_from("feed:p", &epoch, 7), Ok(true));
    assert_eq!(
        expect_recovered(&mut events, "feed:p").await,
        (epoch.clone(), 7)
    );
    for i in 8..=9 {
        assert_eq!(next_offset(&mut events, "feed:p", &epoch).await, i);
    }

    // A position the server cannot resume (unknown epoch) is reported and replaced.
    server.hub.publish("feed:q", &numbered(1)).await.unwrap();
    client
        .subscribe_from("feed:q", "0000000000000000", 1)
        .unwrap();
    let (q_epoch, offset) = expect_not_recovered(&mut events, "feed:q").await;
    assert_ne!(q_epoch, "0000000000000000");
    assert_eq!(offset, 1);
    assert_eq!(client.position("feed:q"), Some((q_epoch.clone(), 1)));
    server.hub.publish("feed:q", &numbered(2)).await.unwrap();
    assert_eq!(next_offset(&mut events, "feed:q", &q_epoch).await, 2);
    close(client, events).await;
    server.stop().await;
}

/// With the Redis broker, a resume the server cannot answer (the channel's history cannot be
/// read) closes the connection with 1013; the client counts it as a failed dial, retries with
/// its backoff, and recovers everything once the history is readable again.
#[tokio::test]
async fn a_resume_closed_with_1013_is_retried_until_the_history_can_be_read() {
    let redis = support::redis_server::RedisServer::start().await;
    let hub = Hub::builder()
        .config(config(100))
        .redis(wshub::RedisConfig::new(vec![redis.url()]))
        .connect()
        .await
        .expect("connect to Redis");
    let server = TestServer::start(hub).await;
    let (client, mut events) = start(&server.ws_url());
    connect_subscribed(&client, &mut events, "feed:u").await;
    server.hub.publish("feed:u", &numbered(1)).await.unwrap();
    let (_, epoch, offset) = publication(next_event(&mut events).await, 0);
    assert_eq!(offset, 1);

    // The stream is moved aside: every read of it fails.
    let key = "wshub:s:feed:u";
    redis.query(&["RENAME", key, "aside"]).await.unwrap();
    redis.query(&["SET", key, "x"]).await.unwrap();
    kill_newest(&server.hub);
    expect_disconnected(&mut events).await;
    for _ in 0..2 {
        match next_event(&mut events).await {
            Event::ConnectFailed { error, .. } => {
                let text = error.to_string();
                assert!(text.contains("1013"), "{text}");
                assert!(text.contains("history unavailable"), "{text}");
            }
            other => panic!("expected a dial closed with 1013, got {other:?}"),
        }
    }
    redis.query(&["RENAME", "aside", key]).await.unwrap();
    server.hub.publish("feed:u", &numbered(2)).await.unwrap();
    // Reconnected, resumed from offset 1, then publication 2.
    expect_reconnected(&mut events).await;
    let recovered = expect_recovered(&mut events, "feed:u").await;
    assert_eq!(recovered, (epoch.clone(), 1));
    assert_eq!(next_offset(&mut events, "feed:u", &epoch).await, 2);
    close(client, events).await;
    server.stop().await;
}
