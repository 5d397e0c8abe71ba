//! The reconnecting client through an HTTP proxy (`CONNECT`), against a real wshub server and a
//! small real proxy, over real sockets.
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::time::Duration;

use wshub::client::{ClientConfig, ClientError, Event, Proxy, ProxyError};
use wshub::{Hub, Json, Message};

use support::client::{next_event, start};
use support::proxy::TestProxy;
use support::{eventually, TestServer};

fn fast() -> ClientConfig {
    ClientConfig::default()
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn the_client_reaches_the_server_through_an_http_proxy_tunnel() {
    let server = TestServer::start(Hub::new()).await;
    let proxy = TestProxy::start("200 Connection established").await;
    let proxy_url = proxy.url.replace("http://", "http://alice:s%3Acret@");
    let (client, mut events) = start(fast().proxy(Proxy::Url(proxy_url)), &server.ws_url());
    assert_eq!(client.subscribe("news"), Ok(true));
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    eventually("subscribed", || {
        server.hub.channel_subscriber_count("news") == 1
    })
    .await;
    let msg = Message::new("event").with_data(Json::string("via proxy"));
    server.hub.publish("news", &msg).await.unwrap();
    match next_event(&mut events).await {
        Event::Message(m) => assert!(m.text().unwrap().contains(r#""data":"via proxy""#)),
        other => panic!("expected the message, got {other:?}"),
    }
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let addr = server
        .ws_url()
        .trim_start_matches("ws://")
        .replace("/ws", "");
    assert!(
        heads[0].starts_with(&format!("CONNECT {addr} HTTP/1.1\r\nHost: {addr}\r\n")),
        "{}",
        heads[0]
    );
    // base64("alice:s:cret")
    assert!(
        heads[0].contains("\r\nProxy-Authorization: Basic YWxpY2U6czpjcmV0\r\n"),
        "{}",
        heads[0]
    );
    client.close();
    client.closed().await.expect("closed cleanly");
    server.stop().await;
}

#[tokio::test]
async fn a_proxy_that_refuses_the_tunnel_is_a_failed_dial_with_its_status() {
    let proxy = TestProxy::start("407 Proxy Authentication Required").await;
    // The server is never reached; any address will do.
    let (client, mut events) = start(
        fast().proxy(Proxy::Url(proxy.url.clone())),
        "ws://203.0.113.7:9/ws",
    );
    match next_event(&mut events).await {
        Event::ConnectFailed { error, .. } => {
            assert!(
                matches!(error, ClientError::Proxy(ProxyError::Status(407))),
                "{error:?}"
            );
            assert_eq!(
                error.to_string(),
                "proxy tunnel failed: the proxy answered CONNECT with HTTP 407"
            );
        }
        other => panic!("expected a failed dial, got {other:?}"),
    }
    assert!(proxy.heads()[0].starts_with("CONNECT 203.0.113.7:9 HTTP/1.1\r\n"));
    client.close();
    client.closed().await.expect("closed cleanly");
}
