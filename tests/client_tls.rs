//! `wss://`: the reconnecting client against the wshub server serving TLS (rustls with a
//! certificate made in the test by rcgen, loaded from PEM files).
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::time::Duration;

use support::client::{next_event, start};
use support::tls::{tls_server, trusting};
use support::WAIT;
use tokio::time::timeout;
use wshub::client::{ClientConfig, ClientError, Event, Proxy};
use wshub::{Hub, Json, Message};

#[tokio::test]
async fn wss_works_with_a_trusted_certificate() {
    let hub = Hub::new();
    let (server, cert) = tls_server(hub.clone()).await;
    let addr = server.addr;
    let config = ClientConfig::default().tls(trusting(cert));
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (client, mut events) = start(config, &url);
    client.subscribe("secure").unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    assert_eq!(hub.channel_subscriber_count("secure"), 1);

    let msg = Message::new("event").with_data(Json::string("over tls"));
    hub.publish("secure", &msg).await.unwrap();
    match next_event(&mut events).await {
        Event::Message(m) => {
            let text = m.text().unwrap();
            assert!(
                text.starts_with(r#"{"type":"event","channel":"secure","data":"over tls","#),
                "{text}"
            );
        }
        other => panic!("expected a message, got {other:?}"),
    }
    client.send(r#"{"type":"ping"}"#).await.unwrap();
    match next_event(&mut events).await {
        Event::Message(m) => assert!(m.text().unwrap().contains(r#""type":"pong""#)),
        other => panic!("expected the pong, got {other:?}"),
    }
    client.close();
    timeout(WAIT, client.closed()).await.unwrap().unwrap();
    match next_event(&mut events).await {
        Event::Disconnected(ClientError::Closed) => {}
        other => panic!("expected Disconnected(Closed), got {other:?}"),
    }
}

#[tokio::test]
async fn wss_goes_through_an_http_proxy_tunnel_end_to_end() {
    let hub = Hub::new();
    let (server, cert) = tls_server(hub.clone()).await;
    let addr = server.addr;
    let proxy = support::proxy::TestProxy::start("200 Connection established").await;
    let config = ClientConfig::default()
        .tls(trusting(cert))
        .proxy(Proxy::Url(proxy.url.clone()));
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (client, mut events) = start(config, &url);
    client.subscribe("secure").unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    let msg = Message::new("event").with_data(Json::string("tunnelled"));
    hub.publish("secure", &msg).await.unwrap();
    match next_event(&mut events).await {
        Event::Message(m) => assert!(m.text().unwrap().contains(r#""data":"tunnelled""#)),
        other => panic!("expected a message, got {other:?}"),
    }
    // The proxy saw only the tunnel request; TLS (with the server's name) ran inside it.
    let heads = proxy.heads();
    assert_eq!(heads.len(), 1);
    let dest = format!("localhost:{}", addr.port());
    assert!(
        heads[0].starts_with(&format!("CONNECT {dest} HTTP/1.1\r\n")),
        "{}",
        heads[0]
    );
    client.close();
    timeout(WAIT, client.closed()).await.unwrap().unwrap();
}

#[tokio::test]
async fn untrusted_or_mismatched_certificates_are_tls_errors() {
    let (server, cert) = tls_server(Hub::new()).await;
    let addr = server.addr;
    let fast = ClientConfig::default()
        .initial_backoff(Duration::from_millis(5))
        .max_retries(1);
    let cases = [
        // The default roots (webpki-roots) do not know the test certificate.
        (fast.clone(), format!("wss://localhost:{}/ws", addr.port())),
        // A trusted certificate for another name.
        (
            fast.clone().tls(trusting(cert)),
            format!("wss://127.0.0.1:{}/ws", addr.port()),
        ),
    ];
    for (config, url) in cases {
        let (client, _events) = start(config, &url);
        let err = timeout(WAIT, client.closed())
            .await
            .expect("gives up in time")
            .unwrap_err();
        match &err {
            ClientError::MaxRetries { last, .. } => {
                assert!(matches!(**last, ClientError::Tls(_)), "{url}: {last:?}");
            }
            other => panic!("{url}: expected MaxRetries, got {other:?}"),
        }
        assert!(err.to_string().contains("TLS handshake failed"), "{err}");
    }
}
