//! The reconnecting client against a real wshub server over real sockets: connect, messages,
//! restart on the same address with resubscribe, max retries, cancel, close, send when down.
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use wshub::client::{
    Backoff, ClientConfig, ClientError, Event, Events, NotConnected, ReconnectingClient, State,
};
use wshub::{DisconnectReason, Hub, Json, Message};

use support::client::{next_event, start};
use support::{eventually, FixedServer, TestServer, WAIT};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Quick retries, so that tests that go through a reconnect stay fast.
fn fast() -> ClientConfig {
    ClientConfig::default()
        .initial_backoff(ms(20))
        .max_backoff(ms(200))
        .connect_timeout(Duration::from_secs(2))
}

/// The next event, which must be a message; returns its text.
async fn next_message(events: &mut Events) -> String {
    match next_event(events).await {
        Event::Message(message) => message.text().expect("a text message").to_owned(),
        other => panic!("expected a message, got {other:?}"),
    }
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

async fn expect_end(events: &mut Events) {
    while let Some(event) = timeout(WAIT, events.recv())
        .await
        .expect("the event stream ends in time")
    {
        assert!(
            matches!(event, Event::Disconnected(_)),
            "unexpected event before the end: {event:?}"
        );
    }
}

fn event(name: &str) -> Message {
    Message::new("event").with_data(Json::string(name))
}

/// An address on which nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test]
async fn connects_and_reports_state() {
    let server = TestServer::start(Hub::new()).await;
    let (client, mut events) = start(fast(), &server.ws_url());
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    assert_eq!(client.state(), State::Connected);
    assert!(client.is_connected());
    eventually("the hub sees the client", || server.hub.client_count() == 1).await;
    // The client answers `{"type":"ping"}` traffic like any go-ws client.
    client.send(r#"{"type":"ping"}"#).await.expect("send");
    let pong = next_message(&mut events).await;
    assert!(
        pong.starts_with(r#"{"type":"pong","timestamp":""#),
        "{pong}"
    );
    client.close();
    client.closed().await.expect("closed cleanly");
    server.stop().await;
}

#[tokio::test]
async fn received_messages_read_as_go_ws_envelopes() {
    let server = TestServer::start(Hub::new()).await;
    let (client, mut events) = start(fast(), &server.ws_url());
    assert_eq!(client.subscribe("process:7"), Ok(true));
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    server
        .hub
        .send_process_output("7", "line <1>")
        .await
        .unwrap();
    let message = match next_event(&mut events).await {
        Event::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    };
    let env = message.envelope().expect("a go-ws message");
    assert_eq!(env.kind, "process_output");
    assert_eq!(env.channel.as_deref(), Some("process:7"));
    assert_eq!(env.process_id.as_deref(), Some("7"));
    assert_eq!(env.data.map(|d| d.get()), Some(r#""line \u003c1\u003e""#));
    assert!(env.timestamp.as_deref().is_some_and(|t| t.ends_with('Z')));
    assert_eq!((env.offset, env.epoch.as_deref()), (None, None));
    // Or into a type of one's own.
    #[derive(serde::Deserialize)]
    struct Line {
        data: String,
    }
    assert_eq!(message.json::<Line>().unwrap().data, "line <1>");
    client.close();
    client.closed().await.expect("closed cleanly");
    server.stop().await;
}

#[tokio::test]
async fn the_state_is_connecting_while_a_handshake_is_under_way() {
    // A server that accepts TCP connections and never answers the upgrade request.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let (client, _events) = start(
        fast().connect_timeout(Duration::from_secs(30)),
        &format!("ws://{addr}/ws"),
    );
    let (_held, _) = timeout(WAIT, silent.accept())
        .await
        .expect("the client dials")
        .unwrap();
    eventually("the client waits in its handshake", || {
        client.state() == State::Connecting
    })
    .await;
    assert!(!client.is_connected());
    client.close();
    timeout(WAIT, client.closed())
        .await
        .expect("closing ends the pending dial")
        .expect("closed cleanly");
    assert_eq!(client.state(), State::Disconnected);
}

#[tokio::test]
async fn broadcasts_and_channel_messages_arrive() {
    let server = TestServer::start(Hub::new()).await;
    let (client, mut events) = start(fast(), &server.ws_url());
    // Subscribed before the first connection: the hub has the subscription by the time the
    // client announces the connection.
    assert_eq!(client.subscribe("news"), Ok(true));
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    assert_eq!(server.hub.channel_subscriber_count("news"), 1);

    server.hub.publish("news", &event("n1")).await.unwrap();
    let got = next_message(&mut events).await;
    assert!(
        got.starts_with(r#"{"type":"event","channel":"news","data":"n1","#),
        "{got}"
    );
    server.hub.broadcast(&event("all")).await.unwrap();
    let got = next_message(&mut events).await;
    assert!(got.starts_with(r#"{"type":"event","data":"all","#), "{got}");

    // Subscribing while connected: the subscribe is written before a later send, so the pong
    // to that send proves the hub has it.
    assert_eq!(client.subscribe("sport"), Ok(true));
    client.send(r#"{"type":"ping"}"#).await.unwrap();
    assert!(next_message(&mut events).await.contains(r#""type":"pong""#));
    assert_eq!(server.hub.channel_subscriber_count("sport"), 1);
    server.hub.publish("sport", &event("s1")).await.unwrap();
    assert!(next_message(&mut events).await.contains(r#""data":"s1""#));

    // Unsubscribing stops delivery: the broadcast after it is the next message.
    assert_eq!(client.unsubscribe("news"), Ok(true));
    assert_eq!(client.unsubscribe("news"), Ok(false));
    client.send(r#"{"type":"ping"}"#).await.unwrap();
    assert!(next_message(&mut events).await.contains(r#""type":"pong""#));
    assert_eq!(server.hub.channel_subscriber_count("news"), 0);
    server.hub.publish("news", &event("n2")).await.unwrap();
    server.hub.broadcast(&event("after")).await.unwrap();
    assert!(next_message(&mut events)
        .await
        .contains(r#""data":"after""#));

    let names: Vec<String> = client
        .subscriptions()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(names, ["sport"]);
    client.close();
    client.closed().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn restart_on_the_same_address_reconnects_and_resubscribes() {
    let addr = TestServer::start(Hub::new()).await;
    // Take a free port from a throwaway server, then serve on it ourselves.
    let fixed = addr.addr;
    addr.stop().await;
    let hub1 = Hub::new();
    let server1 = FixedServer::start(hub1.clone(), fixed).await;
    let url = format!("ws://{fixed}/ws");

    let (client, mut events) = start(fast(), &url);
    client.subscribe("process:7").unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    hub1.send_process_output("7", "before").await.unwrap();
    assert!(next_message(&mut events)
        .await
        .contains(r#""data":"before""#));

    server1.stop().await;
    match next_event(&mut events).await {
        Event::Disconnected(ClientError::ServerClosed { code, .. }) => {
            assert_eq!(code, Some(1001), "the hub says going away");
        }
        other => panic!("expected a disconnect, got {other:?}"),
    }
    assert_ne!(client.state(), State::Connected);
    assert_eq!(client.send("x").await, Err(NotConnected));

    // A new server (and a new hub that knows nothing of the client) on the same address.
    let hub2 = Hub::new();
    let server2 = FixedServer::start(hub2.clone(), fixed).await;
    match next_non_dial_event(&mut events).await {
        Event::Reconnected { attempt } => assert!(attempt >= 1, "attempt {attempt}"),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    assert_eq!(client.state(), State::Connected);
    // The test does not subscribe again: the client did, and the hub confirmed it before
    // the reconnect was announced.
    assert_eq!(hub2.channel_subscriber_count("process:7"), 1);
    hub2.send_process_output("7", "after").await.unwrap();
    let got = next_message(&mut events).await;
    assert!(
        got.starts_with(
            r#"{"type":"process_output","channel":"process:7","processId":"7","data":"after","#
        ),
        "{got}"
    );

    client.close();
    client.closed().await.unwrap();
    server2.stop().await;
}

#[tokio::test]
async fn max_retries_against_a_closed_port() {
    let addr = closed_port().await;
    let config = fast().max_retries(2);
    let started = Instant::now();
    let (client, mut events) = start(config, &format!("ws://{addr}/ws"));
    let result = timeout(WAIT, client.closed())
        .await
        .expect("gives up in time");
    let elapsed = started.elapsed();

    let err = result.expect_err("max retries is an error");
    let ClientError::MaxRetries { retries, last } = &err else {
        panic!("expected MaxRetries, got {err:?}");
    };
    assert_eq!(*retries, 2);
    assert!(matches!(**last, ClientError::Connect(_)), "{last:?}");
    assert_eq!(
        err.io_error().map(std::io::Error::kind),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(
        err.to_string()
            .starts_with("max retries (2) exceeded: connect failed:"),
        "{err}"
    );
    assert_eq!(client.state(), State::Disconnected);
    // N + 1 dials, with the backoff after each failure but the last: 20 ms + 40 ms.
    assert!(elapsed >= ms(60), "{elapsed:?}");

    let mut dials = Vec::new();
    while let Some(event) = timeout(WAIT, events.recv()).await.expect("stream ends") {
        match event {
            Event::ConnectFailed {
                attempt, retry_in, ..
            } => dials.push((attempt, retry_in)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(dials, [(1, Some(ms(20))), (2, Some(ms(40))), (3, None)]);
}

#[tokio::test]
async fn cancel_during_a_long_backoff_returns_promptly() {
    let addr = closed_port().await;
    let token = CancellationToken::new();
    let (client, mut events) = ReconnectingClient::builder()
        .config(
            ClientConfig::default()
                .initial_backoff(Duration::from_secs(60))
                .max_backoff(Duration::from_secs(60)),
        )
        .cancellation_token(token.clone())
        .connect(&format!("ws://{addr}/ws"))
        .unwrap();
    match next_event(&mut events).await {
        Event::ConnectFailed {
            attempt: 1,
            retry_in,
            ..
        } => assert_eq!(retry_in, Some(Duration::from_secs(60))),
        other => panic!("expected a failed dial, got {other:?}"),
    }
    assert_eq!(client.state(), State::Disconnected);
    let cancelled = Instant::now();
    token.cancel();
    timeout(Duration::from_secs(2), client.closed())
        .await
        .expect("returns promptly")
        .expect("cancellation is not an error");
    assert!(cancelled.elapsed() < Duration::from_secs(2));
    expect_end(&mut events).await;
    assert_eq!(client.state(), State::Disconnected);
    // The builder's token is the parent: closing the client does not cancel it, but
    // cancelling it closes the client.
    assert!(token.is_cancelled());
}

#[tokio::test]
async fn close_while_connected_ends_the_loop() {
    let disconnects = support::DisconnectLog::default();
    let hub = disconnects.install(Hub::builder()).build().unwrap();
    let server2 = TestServer::start(hub).await;

    let (client, mut events) = start(fast(), &server2.ws_url());
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    // The client may see the 101 before the hub has registered it.
    eventually("the hub sees the client", || {
        server2.hub.client_count() == 1
    })
    .await;
    let id = server2.hub.clients()[0].id();
    client.close();
    timeout(WAIT, client.closed())
        .await
        .expect("stops in time")
        .expect("closed cleanly");
    match next_event(&mut events).await {
        Event::Disconnected(ClientError::Closed) => {}
        other => panic!("expected Disconnected(Closed), got {other:?}"),
    }
    assert!(timeout(WAIT, events.recv()).await.unwrap().is_none());
    assert_eq!(client.state(), State::Disconnected);
    // The server saw a proper close handshake from the client.
    match disconnects.wait_for(id).await {
        DisconnectReason::ClientClosed { code, .. } => assert_eq!(code, Some(1000)),
        other => panic!("expected a client close, got {other:?}"),
    }
    assert_eq!(client.send("late").await, Err(NotConnected));
    server2.stop().await;
}

#[tokio::test]
async fn the_first_redial_after_a_drop_does_not_wait_for_the_backoff() {
    let server = TestServer::start(Hub::new()).await;
    // A backoff far longer than the test may take: only a failed dial may sleep it.
    let config = fast()
        .initial_backoff(Duration::from_secs(30))
        .max_backoff(Duration::from_secs(30));
    let (client, mut events) = start(config, &server.ws_url());
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    eventually("the hub sees the client", || server.hub.client_count() == 1).await;
    let dropped = Instant::now();
    server.hub.clients()[0].close(4000, "go away").unwrap();
    match next_event(&mut events).await {
        Event::Disconnected(ClientError::ServerClosed { code, .. }) => assert_eq!(code, Some(4000)),
        other => panic!("expected a server close, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::Reconnected { attempt } => assert_eq!(attempt, 1),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    assert!(
        dropped.elapsed() < Duration::from_secs(10),
        "the redial waited {:?}",
        dropped.elapsed()
    );
    client.close();
    server.stop().await;
}

#[tokio::test]
async fn send_when_down_is_not_connected() {
    let addr = closed_port().await;
    let config = ClientConfig::default()
        .initial_backoff(Duration::from_secs(60))
        .max_backoff(Duration::from_secs(60));
    let (client, mut events) = start(config, &format!("ws://{addr}/ws"));
    assert!(matches!(
        next_event(&mut events).await,
        Event::ConnectFailed { .. }
    ));
    assert_eq!(client.send(r#"{"type":"ping"}"#).await, Err(NotConnected));
    assert_eq!(client.send_binary(b"x").await, Err(NotConnected));
    assert_eq!(NotConnected.to_string(), "not connected");
    // Subscriptions are remembered while down.
    assert_eq!(client.subscribe("later"), Ok(true));
    client.close();
    client.closed().await.unwrap();
}

#[tokio::test]
async fn dropping_every_handle_stops_the_client() {
    let server = TestServer::start(Hub::new()).await;
    let (client, mut events) = start(fast(), &server.ws_url());
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    eventually("connected", || server.hub.client_count() == 1).await;
    drop(client);
    // The event stream still holds the client alive.
    server.hub.broadcast(&event("still")).await.unwrap();
    assert!(next_message(&mut events).await.contains("still"));
    drop(events);
    eventually("the client went away", || server.hub.client_count() == 0).await;
    server.stop().await;
}

#[test]
fn backoff_sequences() {
    let b = Backoff::new(ms(100), 2.0, ms(1000));
    let got: Vec<Duration> = [1, 2, 3, 4, 5, 10].iter().map(|&n| b.delay(n)).collect();
    assert_eq!(
        got,
        [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
    );

    let config = ClientConfig::default()
        .initial_backoff(ms(100))
        .backoff_multiplier(1.5)
        .max_backoff(ms(250));
    let b = config.backoff();
    let got: Vec<Duration> = (0..=5).map(|n| b.delay(n)).collect();
    assert_eq!(got, [ms(100), ms(100), ms(150), ms(225), ms(250), ms(250)]);
}

#[tokio::test]
async fn invalid_configuration_is_a_typed_error() {
    let err = ReconnectingClient::builder()
        .config(ClientConfig::default().max_backoff(ms(1)))
        .connect("ws://127.0.0.1:1/")
        .unwrap_err();
    assert_eq!(err.field(), "max_backoff");
    let err = ReconnectingClient::connect("ftp://127.0.0.1/").unwrap_err();
    assert_eq!(err.field(), "url");
}
