//! `wss://`: the reconnecting client against a real hub behind a local TLS endpoint (rustls
//! with a certificate made in the test by rcgen, hyper and `Hub::upgrade` behind it).
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use wshub::client::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use wshub::client::{rustls, ClientConfig, ClientError, Event, Events, Proxy, ReconnectingClient};
use wshub::{Hub, Json, Message};

const WAIT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves `hub` over TLS on 127.0.0.1:0 with a fresh self-signed certificate for
/// `localhost`; returns the address and the certificate.
async fn tls_server(hub: Hub) -> (SocketAddr, CertificateDer<'static>) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
    let cert = certified.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .expect("server certificate");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, hub) = (acceptor.clone(), hub.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let hub = hub.clone();
                    async move { Ok::<_, Infallible>(hub.upgrade(&mut req)) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(tls), service);
                let _ = conn.with_upgrades().await;
            });
        }
    });
    (addr, cert)
}

/// A rustls client configuration that trusts only `cert`.
fn trusting(cert: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("add root");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

async fn next_event(events: &mut Events) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the event stream is open")
}

#[tokio::test]
async fn wss_works_with_a_trusted_certificate() {
    let hub = Hub::new();
    let (addr, cert) = tls_server(hub.clone()).await;
    let config = ClientConfig::default().tls(trusting(cert));
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (client, mut events) = ReconnectingClient::builder()
        .config(config)
        .connect(&url)
        .unwrap();
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
    let (addr, cert) = tls_server(hub.clone()).await;
    let proxy = support::proxy::TestProxy::start("200 Connection established").await;
    let config = ClientConfig::default()
        .tls(trusting(cert))
        .proxy(Proxy::Url(proxy.url.clone()));
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (client, mut events) = ReconnectingClient::builder()
        .config(config)
        .connect(&url)
        .unwrap();
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
    let (addr, cert) = tls_server(Hub::new()).await;
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
        let (client, _events) = ReconnectingClient::builder()
            .config(config)
            .connect(&url)
            .unwrap();
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
