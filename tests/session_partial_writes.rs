//! A socket that takes only a few bytes per write: the session resumes every partly written
//! frame where it stopped, so the client receives each frame whole and in order.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wshub::{Hub, Json, Message};

#[tokio::test]
async fn frames_cut_by_partial_writes_arrive_whole_and_in_order() {
    const MESSAGES: usize = 60;
    let hub = Hub::new();
    // A pipe that holds 13 bytes: every vectored write is cut, inside headers and payloads.
    let (server_io, mut client_io) = tokio::io::duplex(13);
    let session = tokio::spawn({
        let hub = hub.clone();
        async move { hub.serve(server_io).await }
    });
    let subscribe = br#"{"type":"subscribe","channel":"c"}"#;
    client_io
        .write_all(&wshub::frame::encode_masked(
            OP_TEXT,
            true,
            0,
            subscribe,
            [1, 2, 3, 4],
        ))
        .await
        .unwrap();
    eventually("the client is subscribed", || {
        hub.channel_subscriber_count("c") == 1
    })
    .await;

    // Sizes that put frame boundaries everywhere, 7- and 16-bit lengths included, and frames
    // both under and over the size that the writer copies into one segment with its neighbours.
    let data: Vec<String> = (0..MESSAGES).map(|i| "x".repeat((i * 97) % 1100)).collect();
    let publisher = tokio::spawn({
        let hub = hub.clone();
        let data = data.clone();
        async move {
            for d in &data {
                let report = hub
                    .publish("c", &Message::new("event").with_data(Json::string(d)))
                    .await
                    .unwrap();
                assert_eq!(report.enqueued, 1);
            }
        }
    });
    let mut buf = Vec::new();
    let mut received = Vec::new();
    while received.len() < MESSAGES {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, client_io.read(&mut chunk))
            .await
            .expect("bytes in time")
            .unwrap();
        assert!(n > 0, "EOF after {} messages", received.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Some((op, payload, used)) = parse_server_frame(&buf) {
            buf.drain(..used);
            assert_eq!(op, OP_TEXT);
            let v: serde_json::Value = serde_json::from_slice(&payload).expect("whole JSON");
            received.push(v["data"].as_str().unwrap().to_owned());
        }
    }
    publisher.await.unwrap();
    assert_eq!(received, data);
    assert!(buf.is_empty());
    drop(client_io);
    tokio::time::timeout(WAIT, session)
        .await
        .expect("the session ends with the stream")
        .unwrap();
    assert_eq!(hub.client_count(), 0);
}
