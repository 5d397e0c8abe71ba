//! Subscribe, unsubscribe, limits and the cleanup of clients and channels, through real sockets.

mod support;

use std::time::Duration;

use futures_util::SinkExt;

use support::*;
use wshub::{ChannelNameError, Client, Hub, HubConfig, Json, Message, SubscribeError};

// Static guarantees: the handles can be shared and moved across tasks.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_clone<T: Clone>() {}
    assert_send_sync::<Hub>();
    assert_send_sync::<Client>();
    assert_send_sync::<Message>();
    assert_send_sync::<Json>();
    assert_clone::<Hub>();
    assert_clone::<Client>();
};

#[tokio::test]
async fn subscribe_and_unsubscribe_update_the_counts() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let (mut a, a_id) = server.connect_client().await;
    let (mut b, _) = server.connect_client().await;
    let stats = hub.stats();
    assert_eq!((stats.clients, stats.channels), (2, 0));

    subscribe(&mut a, "news").await;
    assert_eq!(hub.channel_subscriber_count("news"), 1);
    assert_eq!(hub.channel_count(), 1);
    // go-ws form: the channel name as a JSON string in `data`.
    send(&mut b, r#"{"type":"subscribe","data":"news"}"#).await;
    sync(&mut b).await;
    assert_eq!(hub.channel_subscriber_count("news"), 2);
    subscribe(&mut b, "sports").await;
    assert_eq!(hub.channel_count(), 2);
    assert_eq!(
        serde_json::to_string(&hub.stats()).unwrap(),
        r#"{"clients":2,"channels":2}"#
    );
    let counts: Vec<(String, usize)> = hub
        .channel_subscriber_counts()
        .into_iter()
        .map(|(name, n)| (name.to_string(), n))
        .collect();
    assert_eq!(counts, [("news".to_owned(), 2), ("sports".to_owned(), 1)]);
    let client_a = hub.client(a_id).expect("client a");
    assert_eq!(subscriptions(&client_a), ["news"]);
    assert!(client_a.is_subscribed("news"));
    assert!(!client_a.is_subscribed("sports"));

    unsubscribe(&mut a, "news").await;
    assert_eq!(hub.channel_subscriber_count("news"), 1);
    // go-ws form again.
    send(&mut b, r#"{"type":"unsubscribe","data":"news"}"#).await;
    sync(&mut b).await;
    assert_eq!(hub.channel_subscriber_count("news"), 0);
    assert_eq!(hub.channel_count(), 1, "the emptied channel is deleted");
    assert!(client_a.subscriptions().is_empty());
    drop((a, b));
    server.stop().await;
}

#[tokio::test]
async fn double_subscribe_is_idempotent() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let (mut ws, id) = server.connect_client().await;
    subscribe(&mut ws, "news").await;
    subscribe(&mut ws, "news").await;
    assert_eq!(hub.channel_subscriber_count("news"), 1);
    let client = hub.client(id).unwrap();
    assert_eq!(subscriptions(&client), ["news"]);
    // The library API says whether anything changed.
    assert_eq!(client.subscribe("news"), Ok(false));
    assert_eq!(hub.subscribe(&client, "other"), Ok(true));
    assert_eq!(hub.subscribe(&client, "other"), Ok(false));
    assert_eq!(client.unsubscribe("other"), Ok(true));
    assert_eq!(client.unsubscribe("other"), Ok(false));
    // Unsubscribing from a channel never joined is not an error either.
    unsubscribe(&mut ws, "never-joined").await;
    assert_eq!(hub.channel_count(), 1);

    // Delivered once, not twice.
    let report = hub.publish("news", &Message::new("event")).await.unwrap();
    assert_eq!(report.enqueued, 1);
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"event","channel":"news","timestamp":"TS"}"#
    );
    expect_silence(&mut ws, Duration::from_millis(50)).await;
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn partial_leave_keeps_the_channel() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    subscribe(&mut a, "room").await;
    subscribe(&mut b, "room").await;
    subscribe(&mut a, "solo").await;
    unsubscribe(&mut a, "room").await;
    assert_eq!(hub.channel_subscriber_count("room"), 1);
    assert_eq!(hub.channel_count(), 2);
    let report = hub.publish("room", &Message::new("event")).await.unwrap();
    assert_eq!(report.enqueued, 1);
    assert!(recv(&mut b).await.contains(r#""channel":"room""#));
    // Nothing for `a` on the channel it left.
    sync(&mut a).await;
    drop((a, b));
    server.stop().await;
}

#[tokio::test]
async fn disconnect_leaves_every_channel_and_deletes_empty_ones() {
    let log = DisconnectLog::default();
    let hub = log.install(Hub::builder()).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    let (mut a, a_id) = server.connect_client().await;
    let (mut b, _) = server.connect_client().await;
    for ch in ["a1", "a2", "shared"] {
        subscribe(&mut a, ch).await;
    }
    subscribe(&mut b, "shared").await;
    assert_eq!(hub.channel_count(), 3);
    let handle = hub.client(a_id).unwrap();

    // The TCP connection goes away without a close frame.
    drop(a);
    let reason = log.wait_for(a_id).await;
    assert_eq!(reason, wshub::DisconnectReason::ConnectionLost);
    eventually("a is removed", || hub.client_count() == 1).await;
    assert_eq!(hub.channel_count(), 1);
    assert_eq!(hub.channel_subscriber_count("a1"), 0);
    assert_eq!(hub.channel_subscriber_count("a2"), 0);
    assert_eq!(hub.channel_subscriber_count("shared"), 1);
    assert!(hub.client(a_id).is_none());
    // The old handle is inert.
    assert!(handle.is_closed());
    assert_eq!(handle.subscribe("x"), Err(SubscribeError::ClientClosed));
    assert!(handle.send(&Message::new("event")).is_err());
    assert_eq!(hub.channel_count(), 1);

    // And a client that closes properly.
    close(b).await;
    eventually("all clients gone", || {
        hub.client_count() == 0 && hub.channel_count() == 0
    })
    .await;
    assert!(hub.channel_subscriber_counts().is_empty());
    assert_eq!(log.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn ping_gets_a_pong_with_a_timestamp() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    let before = std::time::SystemTime::now();
    send(&mut ws, r#"{"type":"ping"}"#).await;
    let pong = recv(&mut ws).await;
    assert_eq!(mask_timestamp(&pong), r#"{"type":"pong","timestamp":"TS"}"#);
    let ts = timestamp_of(&pong);
    assert!(ts.ends_with('Z') && ts.len() >= 20, "{ts}");
    assert!(
        ts.as_str() >= rfc3339_seconds(before).as_str(),
        "{ts} is now"
    );
    drop(ws);
    server.stop().await;
}

/// `YYYY-MM-DDTHH:MM:SS` of `t` in UTC (for a lexicographic lower bound).
fn rfc3339_seconds(t: std::time::SystemTime) -> String {
    let mut out = Vec::new();
    wshub::internals::write_timestamp(&mut out, t);
    String::from_utf8(out[1..20].to_vec()).unwrap()
}

#[tokio::test]
async fn malformed_requests_get_an_error_and_the_connection_stays() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut ws = server.connect().await;
    // Another client, subscribed where the bad requests point: the errors are not its business.
    let mut bystander = server.connect().await;
    subscribe(&mut bystander, "x").await;
    for bad in [
        "not json",
        "[1,2]",
        "{}",
        r#"{"type":1}"#,
        r#"{"type":"subscribe"}"#,
        r#"{"type":"subscribe","data":42}"#,
        r#"{"type":"subscribe","data":{"channel":"x"}}"#,
        r#"{"type":"unsubscribe","data":null}"#,
        r#"{"type":"subscribe","channel":5}"#,
        r#"{"type":"subscribe","channel":["a"]}"#,
    ] {
        send(&mut ws, bad).await;
        let reason = recv_error(&mut ws).await;
        assert!(reason.starts_with("invalid message"), "{bad}: {reason}");
    }
    // Non-string subscribe data names no channel: nothing was subscribed.
    assert_eq!(hub.channel_subscriber_count("x"), 1, "only the bystander");
    assert!(
        sync_collect(&mut bystander).await.is_empty(),
        "the errors went to the sender alone"
    );
    close(bystander).await;
    eventually("the bystander's channel is gone", || {
        hub.channel_count() == 0
    })
    .await;
    // Binary frames carry requests too.
    ws.send(tokio_tungstenite::tungstenite::Message::binary(
        br#"{"type":"subscribe","channel":"bin"}"#.to_vec(),
    ))
    .await
    .unwrap();
    sync(&mut ws).await;
    assert_eq!(hub.channel_subscriber_count("bin"), 1);
    assert_eq!(hub.client_count(), 1, "still connected");
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn invalid_channel_names_are_refused_with_an_error() {
    let config = HubConfig::default().max_channel_name_len(16);
    let server = TestServer::with_config(config).await;
    let hub = &server.hub;
    let (mut ws, id) = server.connect_client().await;
    for (name, expected) in [
        ("", "invalid channel name: empty"),
        ("has space", "invalid channel name: character ' '"),
        ("a*", "invalid channel name: character '*'"),
        ("caf\u{e9}", "invalid channel name: character '\u{e9}'"),
        (
            "x".repeat(17).as_str(),
            "invalid channel name: longer than 16",
        ),
    ]
    .map(|(n, e)| (n.to_owned(), e))
    {
        let req = serde_json::json!({"type": "subscribe", "channel": name}).to_string();
        send(&mut ws, &req).await;
        let reason = recv_error(&mut ws).await;
        assert!(reason.starts_with(expected), "{name:?}: {reason}");
        let req = serde_json::json!({"type": "unsubscribe", "data": name}).to_string();
        send(&mut ws, &req).await;
        let reason = recv_error(&mut ws).await;
        assert!(reason.starts_with(expected), "{name:?}: {reason}");
    }
    // Every allowed character, at the configured maximum length.
    subscribe(&mut ws, "Az09_.:-process:").await;
    assert_eq!(hub.channel_count(), 1);
    // The library API refuses the same names.
    let client = hub.client(id).unwrap();
    assert_eq!(
        client.subscribe("a b"),
        Err(SubscribeError::ChannelName(ChannelNameError::InvalidChar {
            found: ' '
        }))
    );
    assert!(matches!(
        hub.publish("a b", &Message::new("event")).await,
        Err(wshub::PublishError::ChannelName(_))
    ));
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn the_subscription_limit_is_enforced_per_client() {
    let server = TestServer::with_config(HubConfig::default().max_subscriptions(3)).await;
    let hub = &server.hub;
    let (mut ws, id) = server.connect_client().await;
    for ch in ["c1", "c2", "c3"] {
        subscribe(&mut ws, ch).await;
    }
    send(&mut ws, r#"{"type":"subscribe","channel":"c4"}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        "too many subscriptions (limit 3)"
    );
    assert_eq!(hub.channel_count(), 3);
    assert_eq!(hub.channel_subscriber_count("c4"), 0);
    // Re-subscribing to a channel already held is still fine at the limit.
    subscribe(&mut ws, "c2").await;
    let client = hub.client(id).unwrap();
    assert_eq!(
        client.subscribe("c4"),
        Err(SubscribeError::TooManySubscriptions { limit: 3 })
    );
    // Leaving one makes room.
    unsubscribe(&mut ws, "c1").await;
    subscribe(&mut ws, "c4").await;
    assert_eq!(subscriptions(&client), ["c2", "c3", "c4"]);
    // The limit is per client: another client has its own.
    let mut other = server.connect().await;
    for ch in ["c1", "c2", "c3"] {
        subscribe(&mut other, ch).await;
    }
    assert_eq!(hub.channel_count(), 4);
    drop((ws, other));
    server.stop().await;
}

#[tokio::test]
async fn the_default_subscription_limit_is_1024() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    assert_eq!(hub.config().max_subscriptions, 1024);
    let (mut ws, id) = server.connect_client().await;
    let client = hub.client(id).unwrap();
    for i in 0..1023 {
        assert_eq!(client.subscribe(&format!("ch:{i}")), Ok(true));
    }
    // The 1024th through the socket succeeds, the 1025th is refused.
    subscribe(&mut ws, "ch:1023").await;
    send(&mut ws, r#"{"type":"subscribe","channel":"ch:1024"}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        "too many subscriptions (limit 1024)"
    );
    assert_eq!(hub.channel_count(), 1024);
    drop(ws);
    eventually("channels cleaned up", || hub.channel_count() == 0).await;
    server.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "news").await;
    hub.publish(
        "news",
        &Message::new("event").with_data(Json::string("one")),
    )
    .await
    .unwrap();
    assert!(recv(&mut ws).await.contains(r#""data":"one""#));
    unsubscribe(&mut ws, "news").await;
    let report = hub
        .publish(
            "news",
            &Message::new("event").with_data(Json::string("two")),
        )
        .await
        .unwrap();
    assert_eq!(report.recipients(), 0);
    // The pong follows anything queued before it: "two" was never queued.
    sync(&mut ws).await;
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_clients_without_subscriptions() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut subscribed = server.connect().await;
    let mut unsubscribed = server.connect().await;
    subscribe(&mut subscribed, "news").await;
    sync(&mut unsubscribed).await;
    let report = hub
        .broadcast(&Message::new("event").with_data(Json::string("all")))
        .await
        .unwrap();
    assert_eq!(report.enqueued, 2);
    for ws in [&mut subscribed, &mut unsubscribed] {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","data":"all","timestamp":"TS"}"#
        );
    }
    drop((subscribed, unsubscribed));
    server.stop().await;
}

#[tokio::test]
async fn client_handles_list_subscriptions_sorted() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let (mut ws, id) = server.connect_client().await;
    for ch in ["zeta", "alpha", "mid"] {
        subscribe(&mut ws, ch).await;
    }
    let client = hub.client(id).unwrap();
    assert_eq!(client.id(), id);
    assert_eq!(subscriptions(&client), ["alpha", "mid", "zeta"]);
    assert_eq!(hub.clients().len(), 1);
    assert_eq!(hub.clients()[0].id(), id);
    assert!(!client.is_closed());
    drop(ws);
    server.stop().await;
}
