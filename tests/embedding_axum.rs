//! The hub mounted in an axum router, as `examples/axum.rs` does it: clients upgrade through
//! the router, receive what the application publishes, and a request that is not a GET
//! upgrade gets a clear refusal.

mod support;

use std::time::Duration;

use axum::extract::{Request, State};
use axum::routing::any;
use axum::Router;
use support::{connect, recv_json, subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::{Hub, Json, Message};

async fn ws(State(hub): State<Hub>, mut req: Request) -> axum::http::Response<wshub::Body> {
    hub.upgrade(&mut req)
}

/// Serves `hub` at `/ws` of an axum router (every method routed to the hub, so that the hub's
/// own answer to a wrong method is what the client sees). Returns the address.
async fn serve(hub: &Hub) -> std::net::SocketAddr {
    let app = Router::new().route("/ws", any(ws)).with_state(hub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends a raw HTTP/1.1 request and returns the response head and its body (as long as its
/// `content-length` says; a 101 has none).
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed early: {out:?}");
            out.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            let Some(head_end) = text.find("\r\n\r\n") else {
                continue;
            };
            let body_len = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if out.len() >= head_end + 4 + body_len {
                return text;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server answers")
}

#[tokio::test]
async fn a_hub_mounted_in_axum_delivers_what_the_application_publishes() {
    let hub = Hub::new();
    let addr = serve(&hub).await;
    let mut ws = connect(&format!("ws://{addr}/ws")).await;
    subscribe(&mut ws, "news").await;
    let msg = Message::new("event").with_data(Json::string("hello"));
    let report = hub.publish("news", &msg).await.unwrap();
    assert_eq!(report.enqueued, 1);
    let got = recv_json(&mut ws).await;
    assert_eq!(got["type"], "event");
    assert_eq!(got["channel"], "news");
    assert_eq!(got["data"], "hello");
    drop(ws);
    hub.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_upgrade_request_that_is_not_a_get_is_refused_with_405() {
    let hub = Hub::new();
    let addr = serve(&hub).await;
    let upgrade_headers = "Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Content-Length: 0\r\n\r\n";
    let resp = raw_request(addr, &format!("POST /ws HTTP/1.1\r\n{upgrade_headers}")).await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("allow: get"), "{resp}");
    assert!(
        resp.contains(r#"{"error":"a WebSocket upgrade must be a GET request"}"#),
        "{resp}"
    );
    assert_eq!(hub.client_count(), 0);
    // The same request as a GET is upgraded.
    let resp = raw_request(addr, &format!("GET /ws HTTP/1.1\r\n{upgrade_headers}")).await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    hub.shutdown(Duration::from_secs(5)).await;
}
