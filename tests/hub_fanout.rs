//! Publish, broadcast and the go-ws helpers through real sockets.

mod support;

use std::time::Duration;

use support::*;
use wshub::{Hub, Json, Message, PublishError};

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
    assert_eq!(report.recipients(), 3);
    for ws in &mut clients {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","channel":"news","data":{"n":1},"timestamp":"TS"}"#
        );
    }
    expect_silence(&mut outsider, Duration::from_millis(100)).await;
    drop((clients, outsider));
    server.stop().await;
}

#[tokio::test]
async fn every_recipient_gets_the_same_timestamp() {
    let server = TestServer::start(Hub::new()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    subscribe(&mut a, "news").await;
    subscribe(&mut b, "news").await;
    server
        .hub
        .publish("news", &Message::new("event"))
        .await
        .unwrap();
    // The message is encoded once: both clients get identical bytes.
    assert_eq!(recv(&mut a).await, recv(&mut b).await);
    drop((a, b));
    server.stop().await;
}

#[tokio::test]
async fn publish_overrides_the_channel_field_and_needs_no_subscribers() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let report = hub.publish("nobody", &Message::new("event")).await.unwrap();
    assert_eq!(report.recipients(), 0);
    let mut ws = server.connect().await;
    subscribe(&mut ws, "real").await;
    let msg = Message::new("event").with_channel("ignored");
    hub.publish("real", &msg).await.unwrap();
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"event","channel":"real","timestamp":"TS"}"#
    );
    // A broadcast keeps the message's own channel field.
    hub.broadcast(&msg).await.unwrap();
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"event","channel":"ignored","timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn process_output_lines_arrive_in_order() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut ws = server.connect().await;
    let mut other_process = server.connect().await;
    subscribe(&mut ws, "process:build-1").await;
    subscribe(&mut other_process, "process:build-2").await;
    for i in 0..200 {
        let report = hub
            .send_process_output("build-1", &format!("line {i}"))
            .await
            .unwrap();
        assert_eq!(report.enqueued, 1);
    }
    for i in 0..200 {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["type"], "process_output");
        assert_eq!(v["channel"], "process:build-1");
        assert_eq!(v["processId"], "build-1");
        assert_eq!(v["data"], format!("line {i}"));
    }
    sync(&mut other_process).await;
    drop((ws, other_process));
    server.stop().await;
}

#[tokio::test]
async fn process_status_carries_the_exit_code() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "process:p7").await;
    hub.send_process_status("p7", "running", 0).await.unwrap();
    hub.send_process_status("p7", "exited", 137).await.unwrap();
    hub.send_process_status("p7", "failed", -1).await.unwrap();
    for (status, code) in [("running", 0), ("exited", 137), ("failed", -1)] {
        assert_eq!(
            mask_timestamp(&recv(&mut ws).await),
            format!(
                r#"{{"type":"process_status","channel":"process:p7","processId":"p7","data":{{"exitCode":{code},"status":"{status}"}},"timestamp":"TS"}}"#
            )
        );
    }
    // A process id that makes an invalid channel name is refused.
    assert!(matches!(
        hub.send_process_output("bad id", "x").await,
        Err(PublishError::ChannelName(_))
    ));
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn ten_rapid_broadcasts_all_arrive_in_order() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = server.connect().await;
        sync(&mut ws).await;
        clients.push(ws);
    }
    for i in 0..10 {
        let report = hub
            .send_event("tick", &Json::parse(i.to_string()).unwrap())
            .await
            .unwrap();
        assert_eq!(report.enqueued, 3);
    }
    for ws in &mut clients {
        for i in 0..10 {
            assert_eq!(
                mask_timestamp(&recv(ws).await),
                format!(
                    r#"{{"type":"event","data":{{"data":{i},"event":"tick"}},"timestamp":"TS"}}"#
                )
            );
        }
        sync(ws).await;
    }
    drop(clients);
    server.stop().await;
}

#[tokio::test]
async fn send_error_broadcasts_an_error_message() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    sync(&mut ws).await;
    server.hub.send_error("disk full").await.unwrap();
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"error","data":"disk full","timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn counters_count_publishes_and_deliveries() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    subscribe(&mut a, "c").await;
    sync(&mut b).await;
    let before = hub.counters();
    assert_eq!(before.connections, 2);
    hub.publish("c", &Message::new("event")).await.unwrap();
    hub.publish("empty", &Message::new("event")).await.unwrap();
    hub.broadcast(&Message::new("event")).await.unwrap();
    let after = hub.counters();
    assert_eq!(after.published - before.published, 3);
    assert_eq!(after.delivered - before.delivered, 3);
    assert_eq!(after.dropped, 0);
    assert_eq!(
        mask_timestamp(&recv(&mut a).await),
        r#"{"type":"event","channel":"c","timestamp":"TS"}"#
    );
    for ws in [&mut a, &mut b] {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","timestamp":"TS"}"#
        );
    }
    drop((a, b));
    eventually("disconnections counted", || {
        hub.counters().disconnections == 2
    })
    .await;
    server.stop().await;
}

/// The writer batches: frames queued while it was not running go out in one vectored write
/// (the test runtime has one thread, so all 50 are queued before the session runs).
#[tokio::test(flavor = "current_thread")]
async fn frames_queued_together_go_out_in_one_socket_write() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "news").await;
    let before = server.hub.counters();
    for i in 0..50 {
        let message = Message::new("event").with_data(Json::parse(i.to_string()).unwrap());
        server.hub.publish_local("news", &message).unwrap();
    }
    for i in 0..50 {
        assert_eq!(recv_json(&mut ws).await["data"], i);
    }
    let after = server.hub.counters();
    assert_eq!(after.frames_written - before.frames_written, 50);
    assert_eq!(after.socket_writes - before.socket_writes, 1, "one writev");
    server.stop().await;
}
