//! History and recovery on the in-memory hub: positions on history channels only, resume
//! after server-side cuts with nothing lost or doubled, `recovered:false` beyond the window
//! and after a restart, the racing publish at the switch-over, and the HTTP history API.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::history::{
    a_repeated_subscribe_is_answered_without_replay, numbered, race_resumes, subscribe_at,
};
use support::*;
use wshub::{ChannelPattern, HubConfig};

fn config(size: usize) -> HubConfig {
    HubConfig::default()
        .history(vec![ChannelPattern::new("feed:*").unwrap()])
        .history_size(size)
        .max_queued_frames(1 << 20)
        .max_queued_bytes(64 << 20)
}

#[tokio::test]
async fn publications_on_history_channels_carry_offset_and_epoch() {
    let server = TestServer::with_config(config(100)).await;
    let mut ws = server.connect().await;
    let answer = subscribe_at(&mut ws, "feed:a", None).await;
    assert_eq!(answer["offset"], 0);
    assert!(
        answer.get("recovered").is_none(),
        "a plain subscribe recovers nothing"
    );
    let epoch = answer["epoch"].as_str().unwrap().to_owned();
    assert_eq!(epoch.len(), 16);
    subscribe(&mut ws, "news").await;
    for i in 1..=3 {
        server.hub.publish("feed:a", &numbered(i)).await.unwrap();
    }
    server.hub.publish("news", &numbered(9)).await.unwrap();
    for i in 1..=3 {
        assert_eq!(
            mask_timestamp(&recv(&mut ws).await),
            format!(
                r#"{{"type":"event","channel":"feed:a","data":{i},"timestamp":"TS","offset":{i},"epoch":"{epoch}"}}"#
            )
        );
    }
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"event","channel":"news","data":9,"timestamp":"TS"}"#,
        "channels without history keep the go-ws format"
    );
    close(ws).await;
    server.stop().await;
}

#[tokio::test]
async fn a_repeated_subscribe_is_answered_with_the_position_and_replays_nothing() {
    let server = TestServer::with_config(config(100)).await;
    a_repeated_subscribe_is_answered_without_replay(&server, "feed:again").await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_cut_repeatedly_receives_every_publication_exactly_once_in_order() {
    const TOTAL: u64 = 400;
    let server = TestServer::with_config(config(1000)).await;
    // The first connection subscribes before anything is published.
    let mut first = Some(server.connect_client().await);
    let hub = server.hub.clone();
    let mut publisher = None;
    let mut received: Vec<u64> = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let mut cuts = 0;
    while received.last().copied() != Some(TOTAL) {
        let (mut ws, id) = match first.take() {
            Some(conn) => conn,
            None => server.connect_client().await,
        };
        let from = position.as_ref().map(|(o, e)| (*o, e.as_str()));
        let answer = subscribe_at(&mut ws, "feed:steady", from).await;
        if position.is_some() {
            assert_eq!(
                answer["recovered"], true,
                "the cut is shorter than the window: {answer}"
            );
        }
        let epoch = answer["epoch"].as_str().unwrap().to_owned();
        if publisher.is_none() {
            let hub = hub.clone();
            publisher = Some(tokio::spawn(async move {
                for i in 1..=TOTAL {
                    hub.publish("feed:steady", &numbered(i)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        // Read a few messages (more on each round), then the server kills the socket.
        let batch = 17 + cuts * 13;
        for _ in 0..batch {
            let v = recv_json(&mut ws).await;
            let offset = v["offset"].as_u64().unwrap();
            assert_eq!(v["epoch"], epoch.as_str());
            assert_eq!(v["data"].as_u64(), Some(offset), "data and offset agree");
            received.push(offset);
            position = Some((offset, epoch.clone()));
            if offset == TOTAL {
                break;
            }
        }
        if received.last().copied() != Some(TOTAL) {
            server.hub.client(id).expect("connected").kill_connection();
            cuts += 1;
        }
    }
    publisher.expect("started").await.unwrap();
    assert!(
        cuts >= 3,
        "the test must actually cut the connection ({cuts} cuts)"
    );
    assert_eq!(
        received,
        (1..=TOTAL).collect::<Vec<_>>(),
        "no gap, no duplicate, in order"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_position_beyond_the_window_is_not_recovered() {
    let server = TestServer::with_config(config(10)).await;
    let mut ws = server.connect().await;
    let epoch = subscribe_at(&mut ws, "feed:w", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 1..=5 {
        server.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    for _ in 1..=5 {
        recv_json(&mut ws).await;
    }
    close(ws).await;
    for i in 6..=25 {
        server.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    let mut ws = server.connect().await;
    let answer = subscribe_at(&mut ws, "feed:w", Some((5, &epoch))).await;
    assert_eq!(
        answer["recovered"], false,
        "publications 6..15 are gone: {answer}"
    );
    assert_eq!(
        (answer["epoch"].as_str(), answer["offset"].as_u64()),
        (Some(epoch.as_str()), Some(25))
    );
    // Nothing is replayed; live publications continue from the current position.
    server.hub.publish("feed:w", &numbered(26)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["offset"], 26);
    // Within the window, the same channel recovers.
    let mut again = server.connect().await;
    let answer = subscribe_at(&mut again, "feed:w", Some((20, &epoch))).await;
    assert_eq!(answer["recovered"], true);
    // The answer to a resume carries the offset it resumes from.
    assert_eq!(
        (answer["offset"].as_u64(), answer["epoch"].as_str()),
        (Some(20), Some(epoch.as_str()))
    );
    let offsets: Vec<u64> = {
        let mut v = Vec::new();
        for _ in 21..=26 {
            v.push(recv_json(&mut again).await["offset"].as_u64().unwrap());
        }
        v
    };
    assert_eq!(offsets, (21..=26).collect::<Vec<_>>());
    // A wrong epoch or an offset from the future is not recovered either.
    let answer = subscribe_at(&mut again, "feed:other", Some((1, "nope"))).await;
    assert_eq!(answer["recovered"], false);
    let answer = subscribe_at(&mut again, "feed:new", Some((3, ""))).await;
    assert_eq!(
        (answer["recovered"].as_bool(), answer["offset"].as_u64()),
        (Some(false), Some(0))
    );
    close(ws).await;
    close(again).await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_restart_changes_the_epoch_and_the_client_is_told() {
    let first = TestServer::with_config(config(100)).await;
    let mut ws = first.connect().await;
    let epoch = subscribe_at(&mut ws, "feed:r", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    first.hub.publish("feed:r", &numbered(1)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["offset"], 1);
    close(ws).await;
    first.stop().await;

    let second = TestServer::with_config(config(100)).await;
    let mut ws = second.connect().await;
    let answer = subscribe_at(&mut ws, "feed:r", Some((1, &epoch))).await;
    assert_eq!(answer["recovered"], false);
    assert_ne!(
        answer["epoch"],
        epoch.as_str(),
        "memory history is gone: new epoch"
    );
    assert_eq!(answer["offset"], 0);
    close(ws).await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_racing_publish_at_the_switch_over_is_never_lost_or_doubled() {
    let server = TestServer::with_config(config(100_000)).await;
    let hub = server.hub.clone();
    // The publisher (on the other worker thread) publishes as fast as it can while a resume
    // is in progress, so publications land right at the switch-over, round after round.
    let racing = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (racing2, done2) = (Arc::clone(&racing), Arc::clone(&done));
    let publisher = tokio::spawn(async move {
        let mut i = 0u64;
        while !done2.load(Ordering::Relaxed) && i < 95_000 {
            if racing2.load(Ordering::Relaxed) {
                i += 1;
                hub.publish("feed:race", &numbered(i)).await.unwrap();
            } else {
                tokio::task::yield_now().await;
            }
        }
        i
    });
    race_resumes(&server, &server, "feed:race", 150, &racing).await;
    done.store(true, Ordering::Relaxed);
    let published = publisher.await.unwrap();
    assert!(
        published > 1000,
        "the publisher raced the resumes ({published} publications)"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_http_api_reads_a_channels_history() {
    let server = TestServer::with_config(config(100)).await;
    for i in 1..=5 {
        server.hub.publish("feed:h", &numbered(i)).await.unwrap();
    }
    let (status, body) = http(
        server.addr,
        "GET",
        "/api/history?channel=feed:h&since=2&limit=2",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["channel"], "feed:h");
    assert_eq!(v["offset"], 5);
    let pubs = v["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2);
    assert_eq!(
        (pubs[0]["offset"].as_u64(), pubs[1]["offset"].as_u64()),
        (Some(3), Some(4))
    );
    assert_eq!(pubs[0]["epoch"], v["epoch"]);
    let (status, _) = http(server.addr, "GET", "/api/history?channel=news", &[], b"").await;
    assert_eq!(status, 404, "no history on that channel");
    let (status, _) = http(
        server.addr,
        "GET",
        "/api/history?channel=feed:h&since=x",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(server.addr, "GET", "/api/history", &[], b"").await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn missed_publications_that_would_not_fit_the_queue_are_not_recovered() {
    // 8 publications of about 1 KiB against a 4 KiB queue: a replay would overflow it.
    let config = config(100).max_queued_bytes(4096);
    let server = TestServer::with_config(config).await;
    let mut ws = server.connect().await;
    let epoch = subscribe_at(&mut ws, "feed:big", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    close(ws).await;
    let big = wshub::Message::new("event").with_data(wshub::Json::string(&"x".repeat(1000)));
    for _ in 0..8 {
        server.hub.publish("feed:big", &big).await.unwrap();
    }
    let mut ws = server.connect().await;
    let answer = subscribe_at(&mut ws, "feed:big", Some((0, &epoch))).await;
    assert_eq!(
        (answer["recovered"].as_bool(), answer["offset"].as_u64()),
        (Some(false), Some(8)),
        "{answer}"
    );
    // Nothing was replayed, and the client was not disconnected as a slow consumer.
    sync(&mut ws).await;
    close(ws).await;
    server.stop().await;
}
