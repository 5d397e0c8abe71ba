//! Connect, message and disconnect hooks; client publish; server-side close; panics contained.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::SinkExt;
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use wshub::{
    ChannelPattern, DisconnectReason, Hub, HubConfig, IncomingMessage, Message, SendError,
};

fn patterns(list: &[&str]) -> Vec<ChannelPattern> {
    list.iter()
        .map(|p| ChannelPattern::new(p).unwrap())
        .collect()
}

#[tokio::test]
async fn client_publish_is_delivered_to_subscribers_when_allowed() {
    let config = HubConfig::default().client_publish(patterns(&["chat:*", "news"]));
    let server = TestServer::with_config(config).await;
    let mut sender = server.connect().await;
    let mut other = server.connect().await;
    let mut outsider = server.connect().await;
    subscribe(&mut sender, "chat:lobby").await;
    subscribe(&mut other, "chat:lobby").await;
    subscribe(&mut outsider, "chat:other").await;

    send(
        &mut sender,
        r#"{"type":"publish","channel":"chat:lobby","data":{"text":"hi <b>","n":1.10}}"#,
    )
    .await;
    let expected = r#"{"type":"event","channel":"chat:lobby","data":{"n":1.10,"text":"hi \u003cb\u003e"},"timestamp":"TS"}"#;
    // The sender is subscribed, so it gets its own message (before the pong of its sync).
    let own: Vec<String> = sync_collect(&mut sender)
        .await
        .iter()
        .map(|t| mask_timestamp(t))
        .collect();
    assert_eq!(own, [expected]);
    assert_eq!(mask_timestamp(&recv(&mut other).await), expected);
    sync(&mut outsider).await;

    // A sender that is not subscribed may still publish; it does not get the message.
    send(
        &mut outsider,
        r#"{"type":"publish","channel":"news","data":"x"}"#,
    )
    .await;
    sync(&mut outsider).await;
    let report = server.hub.publish("news", &Message::new("event")).await;
    assert_eq!(report.unwrap().recipients(), 0);

    // Publish without data: the event has no data field.
    send(&mut other, r#"{"type":"publish","channel":"chat:lobby"}"#).await;
    assert_eq!(
        mask_timestamp(&recv(&mut other).await),
        r#"{"type":"event","channel":"chat:lobby","timestamp":"TS"}"#
    );
    assert_eq!(
        mask_timestamp(&recv(&mut sender).await),
        r#"{"type":"event","channel":"chat:lobby","timestamp":"TS"}"#
    );
    drop((sender, other, outsider));
    server.stop().await;
}

#[tokio::test]
async fn client_publish_is_refused_outside_the_patterns_and_by_default() {
    let config = HubConfig::default().client_publish(patterns(&["chat:*"]));
    let server = TestServer::with_config(config).await;
    let mut ws = server.connect().await;
    let mut listener = server.connect().await;
    subscribe(&mut ws, "news").await;
    subscribe(&mut listener, "news").await;
    send(&mut ws, r#"{"type":"publish","channel":"news","data":1}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        r#"not allowed to publish to "news""#
    );
    // No channel: refused as a malformed request.
    send(&mut ws, r#"{"type":"publish","data":1}"#).await;
    assert!(recv_error(&mut ws).await.starts_with("invalid message"));
    // An allowed prefix with an invalid name is still refused.
    send(
        &mut ws,
        r#"{"type":"publish","channel":"chat:a b","data":1}"#,
    )
    .await;
    assert!(recv_error(&mut ws)
        .await
        .starts_with("invalid channel name"));
    sync(&mut listener).await;
    drop((ws, listener));
    server.stop().await;

    // Off by default.
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "chat:x").await;
    send(&mut ws, r#"{"type":"publish","channel":"chat:x","data":1}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        r#"not allowed to publish to "chat:x""#
    );
    sync(&mut ws).await;
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn unknown_types_get_an_error_without_a_message_hook() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    send(&mut ws, r#"{"type":"hello","data":[1]}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        r#"unsupported message type "hello""#
    );
    sync(&mut ws).await;
    drop(ws);
    server.stop().await;
}

/// What the message hook saw: (kind, binary, payload).
type Seen = (Option<String>, bool, Vec<u8>);

#[tokio::test]
async fn unknown_types_go_to_the_message_hook_which_can_reply() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let seen2 = seen.clone();
    let hub = Hub::builder()
        .on_message(move |client, msg: IncomingMessage| {
            seen2.lock().unwrap().push((
                msg.kind().map(str::to_owned),
                msg.is_binary(),
                msg.payload().to_vec(),
            ));
            if msg.kind() == Some("hello") {
                let reply = Message::new("hello_back")
                    .with_data(wshub::Json::parse(msg.payload()).unwrap());
                client.send(&reply).unwrap();
            }
        })
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let mut ws = server.connect().await;
    send(&mut ws, r#"{"type":"hello","data":[1]}"#).await;
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"hello_back","data":{"data":[1],"type":"hello"},"timestamp":"TS"}"#
    );
    ws.send(WsMessage::binary(br#"{"type":"blob"}"#.to_vec()))
        .await
        .unwrap();
    // Known types are still handled by the hub, not the hook.
    subscribe(&mut ws, "news").await;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (
                Some("hello".to_owned()),
                false,
                br#"{"type":"hello","data":[1]}"#.to_vec()
            ),
            (
                Some("blob".to_owned()),
                true,
                br#"{"type":"blob"}"#.to_vec()
            ),
        ]
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn raw_messages_mode_builds_an_echo_server() {
    let hub = Hub::builder()
        .config(HubConfig::default().raw_messages(true))
        .on_message(|client, msg| {
            let _ = match msg.text() {
                Some(text) => client.send_text(text),
                None => client.send_binary(msg.payload()),
            };
        })
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let mut ws = server.connect().await;
    // Not interpreted: even a ping request is echoed, not answered.
    for text in [r#"{"type":"ping"}"#, "plain text", "", "\u{1F600}"] {
        send(&mut ws, text).await;
        assert_eq!(next(&mut ws).await, Some(WsMessage::text(text)));
    }
    let blob: Vec<u8> = (0..=255).collect();
    ws.send(WsMessage::binary(blob.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Some(WsMessage::binary(blob)));
    let big = "x".repeat(60_000);
    send(&mut ws, &big).await;
    assert_eq!(next(&mut ws).await, Some(WsMessage::text(big)));
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn panicking_hooks_are_contained() {
    let calls = Arc::new(AtomicUsize::new(0));
    let disconnects = Arc::new(Mutex::new(Vec::new()));
    let d2 = disconnects.clone();
    let (c1, c2) = (calls.clone(), calls.clone());
    let hub = Hub::builder()
        .on_connect(move |_| {
            c1.fetch_add(1, Ordering::SeqCst);
            panic!("connect hook panics");
        })
        .on_message(move |_, _| {
            c2.fetch_add(1, Ordering::SeqCst);
            panic!("message hook panics");
        })
        .on_disconnect(move |client, reason| {
            d2.lock().unwrap().push((client.id(), reason.clone()));
            panic!("disconnect hook panics");
        })
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();

    // The connect hook panicked, yet the client is registered and served.
    let (mut a, a_id) = server.connect_client().await;
    let (mut b, _) = server.connect_client().await;
    assert_eq!(hub.counters().hook_panics, 2);
    subscribe(&mut a, "room").await;
    subscribe(&mut b, "room").await;

    // The message hook panics; the connection stays and keeps working.
    send(&mut a, r#"{"type":"custom"}"#).await;
    sync(&mut a).await;
    assert_eq!(hub.counters().hook_panics, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let report = hub.publish("room", &Message::new("event")).await.unwrap();
    assert_eq!(report.enqueued, 2);
    for ws in [&mut a, &mut b] {
        assert!(recv(ws).await.contains(r#""channel":"room""#));
    }

    // The disconnect hook panics; cleanup still happens and the other client is unaffected.
    drop(a);
    eventually("a cleaned up", || {
        hub.client_count() == 1 && hub.channel_subscriber_count("room") == 1
    })
    .await;
    assert_eq!(hub.counters().hook_panics, 4);
    assert_eq!(
        *disconnects.lock().unwrap(),
        [(a_id, DisconnectReason::ConnectionLost)]
    );
    hub.publish("room", &Message::new("event")).await.unwrap();
    assert!(recv(&mut b).await.contains(r#""channel":"room""#));
    sync(&mut b).await;
    drop(b);
    eventually("b cleaned up", || hub.client_count() == 0).await;
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.counters().hook_panics, 5);
    server.stop().await;
}

#[tokio::test]
async fn connect_hook_runs_before_messages_and_sees_the_client() {
    let hub = Hub::builder()
        .on_connect(|client| {
            client.subscribe("welcome").unwrap();
            client
                .send(&Message::new("hello").with_data(wshub::Json::string("first")))
                .unwrap();
        })
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let mut ws = server.connect().await;
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"hello","data":"first","timestamp":"TS"}"#
    );
    assert_eq!(server.hub.channel_subscriber_count("welcome"), 1);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn disconnect_hook_fires_once_per_client_with_the_reason() {
    let log = DisconnectLog::default();
    let hub = log
        .install(Hub::builder())
        .config(HubConfig::default().max_message_size(200))
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();

    let (ws, lost) = server.connect_client().await;
    drop(ws);
    let (closing, client_closed) = server.connect_client().await;
    close(closing).await;
    let (mut kicked, kicked_id) = server.connect_client().await;
    hub.client(kicked_id)
        .unwrap()
        .close(4001, "kicked")
        .unwrap();
    assert_eq!(recv_close(&mut kicked).await, (4001, "kicked".to_owned()));
    expect_end(&mut kicked).await;
    let (mut violator, violator_id) = server.raw_client().await;
    violator.send_text(&"x".repeat(201)).await;
    assert_eq!(violator.read_close().await, Some(1009));
    let (mut at_shutdown, shutdown_id) = server.connect_client().await;

    assert_eq!(log.wait_for(lost).await, DisconnectReason::ConnectionLost);
    assert_eq!(
        log.wait_for(client_closed).await,
        DisconnectReason::ClientClosed {
            code: Some(1000),
            reason: "bye".to_owned()
        }
    );
    assert_eq!(
        log.wait_for(kicked_id).await,
        DisconnectReason::Closed {
            code: 4001,
            reason: "kicked".to_owned()
        }
    );
    assert!(matches!(
        log.wait_for(violator_id).await,
        DisconnectReason::ProtocolError { code: 1009, .. }
    ));
    let stop = tokio::spawn(server.stop());
    assert_eq!(
        recv_close(&mut at_shutdown).await,
        (1001, "going away".to_owned())
    );
    expect_end(&mut at_shutdown).await;
    stop.await.unwrap();
    assert_eq!(log.wait_for(shutdown_id).await, DisconnectReason::Shutdown);
    // Exactly one entry per client.
    assert_eq!(log.len(), 5);
    assert_eq!(hub.counters().disconnections, 5);
}

#[tokio::test]
async fn client_close_sends_queued_data_then_the_close_code() {
    let log = DisconnectLog::default();
    let hub = log.install(Hub::builder()).build().unwrap();
    let server = TestServer::start(hub).await;
    let hub = server.hub.clone();
    let (mut ws, id) = server.connect_client().await;
    subscribe(&mut ws, "news").await;
    let client = hub.client(id).unwrap();
    // Queued in the same poll as the close: none of it has been written yet.
    for i in 0..50 {
        hub.publish_local(
            "news",
            &Message::new("event").with_data(wshub::Json::parse(i.to_string()).unwrap()),
        )
        .unwrap();
    }
    client.send_text("direct").unwrap();
    client.close(4000, "bye now").unwrap();
    assert!(client.is_closed());
    // Nothing is accepted after the close.
    assert_eq!(client.send_text("late"), Err(SendError::Closed));
    assert_eq!(client.close(4000, "again"), Err(SendError::Closed));
    let report = hub.publish("news", &Message::new("event")).await.unwrap();
    assert_eq!((report.enqueued, report.disconnected), (0, 1));

    let (texts, frame) = recv_until_close(&mut ws).await;
    assert_eq!(texts.len(), 51);
    for (i, text) in texts[..50].iter().enumerate() {
        assert!(text.contains(&format!(r#""data":{i},"#)), "{i}: {text}");
    }
    assert_eq!(texts[50], "direct");
    let frame = frame.expect("close code");
    assert_eq!(u16::from(frame.code), 4000);
    assert_eq!(frame.reason.as_str(), "bye now");
    expect_end(&mut ws).await;
    assert_eq!(
        log.wait_for(id).await,
        DisconnectReason::Closed {
            code: 4000,
            reason: "bye now".to_owned()
        }
    );
    eventually("client removed", || hub.client_count() == 0).await;
    assert_eq!(hub.channel_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn client_close_refuses_codes_that_may_not_be_sent() {
    let server = TestServer::start(Hub::new()).await;
    let (ws, id) = server.connect_client().await;
    let client = server.hub.client(id).unwrap();
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
        assert_eq!(
            client.close(code, ""),
            Err(SendError::InvalidCloseCode(code))
        );
    }
    assert!(!client.is_closed());
    drop(ws);
    server.stop().await;
}
