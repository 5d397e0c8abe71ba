//! Publish, broadcast and membership through real sockets.

mod support;

use std::time::Duration;

use support::*;
use wshub::{Hub, Json, Message};

#[tokio::test]
async fn three_subscribers_all_receive_a_channel_message() {
    let server = TestServer::start(Hub::new()).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = server.connect().await;
        subscribe(&mut ws, "news").await;
        clients.push(ws);
    }
    let mut outsider = server.connect().await;
    sync(&mut outsider).await;
    let msg = Message::new("event").with_data(Json::parse(r#"{"n":1}"#).unwrap());
    let report = server.hub.publish("news", &msg).await.unwrap();
    assert_eq!(
        (report.enqueued, report.dropped, report.disconnected),
        (3, 0, 0)
    );
    for ws in &mut clients {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","channel":"news","data":{"n":1},"timestamp":"TS"}"#
        );
    }
    expect_silence(&mut outsider, Duration::from_millis(100)).await;
    server.stop().await;
}
