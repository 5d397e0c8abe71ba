//! Helpers for the history and recovery tests (in memory and over Redis).

use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use wshub::{Json, Message};

use super::{close, expect_silence, recv_json, send, TestServer, Ws};

/// An event whose `data` is `i`.
pub fn numbered(i: u64) -> Message {
    Message::new("event").with_data(Json::parse(i.to_string()).unwrap())
}

/// A subscribe for a channel the connection already has is answered with the channel's
/// position and replays nothing: `recovered:false` to a resume, no `recovered` otherwise
/// (the same with every broker).
pub async fn a_repeated_subscribe_is_answered_without_replay(server: &TestServer, channel: &str) {
    let mut ws = server.connect().await;
    subscribe_at(&mut ws, channel, None).await;
    let mut epoch = String::new();
    for i in 1..=2 {
        server.hub.publish(channel, &numbered(i)).await.unwrap();
        let v = recv_json(&mut ws).await;
        assert_eq!(v["data"], i);
        epoch = v["epoch"].as_str().unwrap().to_owned();
    }
    let again = subscribe_at(&mut ws, channel, Some((0, &epoch))).await;
    assert_eq!(
        (&again["recovered"], &again["epoch"], &again["offset"]),
        (
            &Value::Bool(false),
            &Value::from(epoch.as_str()),
            &Value::from(2)
        ),
        "{again}"
    );
    let plain = subscribe_at(&mut ws, channel, None).await;
    assert_eq!(
        (plain.get("recovered"), &plain["offset"]),
        (None, &Value::from(2))
    );
    expect_silence(&mut ws, std::time::Duration::from_millis(200)).await;
    server.hub.publish(channel, &numbered(3)).await.unwrap();
    let live = recv_json(&mut ws).await;
    assert_eq!(
        (&live["data"], &live["offset"]),
        (&Value::from(3), &Value::from(3))
    );
    expect_silence(&mut ws, std::time::Duration::from_millis(100)).await;
    close(ws).await;
}

/// Sends a subscribe (resuming from `from` when given) and returns the `subscribed` answer.
pub async fn subscribe_at(ws: &mut Ws, channel: &str, from: Option<(u64, &str)>) -> Value {
    let request = match from {
        Some((offset, epoch)) => format!(
            r#"{{"type":"subscribe","channel":"{channel}","offset":{offset},"epoch":"{epoch}"}}"#
        ),
        None => format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#),
    };
    send(ws, &request).await;
    let answer = recv_json(ws).await;
    assert_eq!(answer["type"], "subscribed", "{answer}");
    assert_eq!(answer["channel"], channel);
    answer
}

/// Resumes a client of `subscriber` on `channel` `rounds` times, raising `racing` around each
/// connect and resume (publishers elsewhere publish while it is up), then reads through three
/// markers published on `marker_node`, and kills the connection. Asserts every resume is
/// recovered and the offsets the client sees never skip or repeat.
pub async fn race_resumes(
    subscriber: &TestServer,
    marker_node: &TestServer,
    channel: &str,
    rounds: usize,
    racing: &AtomicBool,
) {
    let mut last: Option<(u64, String)> = None;
    for round in 0..rounds {
        racing.store(true, Ordering::Relaxed);
        let (mut ws, id) = subscriber.connect_client().await;
        let from = last.as_ref().map(|(o, e)| (*o, e.as_str()));
        let answer = subscribe_at(&mut ws, channel, from).await;
        racing.store(false, Ordering::Relaxed);
        if last.is_some() {
            assert_eq!(answer["recovered"], true, "round {round}: {answer}");
        }
        let mut expected = match &last {
            Some((o, _)) => o + 1,
            None => answer["offset"].as_u64().unwrap() + 1,
        };
        // Three markers from here; read everything up to them, through the switch-over.
        for _ in 0..3 {
            marker_node
                .hub
                .publish(channel, &Message::new("marker"))
                .await
                .unwrap();
        }
        let mut markers = 0;
        while markers < 3 {
            let v = recv_json(&mut ws).await;
            assert_eq!(
                v["offset"].as_u64(),
                Some(expected),
                "round {round}: gap or duplicate"
            );
            markers += usize::from(v["type"] == "marker");
            last = Some((expected, v["epoch"].as_str().unwrap().to_owned()));
            expected += 1;
        }
        subscriber
            .hub
            .client(id)
            .expect("connected")
            .kill_connection();
    }
}
