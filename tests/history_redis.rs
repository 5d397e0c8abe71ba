//! History and recovery with the Redis broker: the history lives in Redis (a stream per
//! channel), so any node can serve a resume; offsets are assigned by Redis and every node
//! delivers in offset order.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::history::{
    a_repeated_subscribe_is_answered_without_replay, numbered, race_resumes, subscribe_at,
};
use support::redis_server::RedisServer;
use support::*;
use wshub::{ChannelPattern, Hub, HubConfig, RedisConfig};

/// `feed:*` keeps `size` publications; queues large enough for any replay here.
fn config(size: usize) -> HubConfig {
    HubConfig::default()
        .history(vec![ChannelPattern::new("feed:*").unwrap()])
        .history_size(size)
        .max_queued_frames(1 << 20)
        .max_queued_bytes(64 << 20)
}

async fn node(redis: &RedisServer, size: usize) -> TestServer {
    node_with(redis, config(size)).await
}

/// A node whose Redis commands may wait `timeout` (for tests that hold them in Redis).
async fn node_with_timeout(redis: &RedisServer, timeout: Duration) -> TestServer {
    node_on(&[redis], config(100), timeout).await
}

async fn node_on(shards: &[&RedisServer], config: HubConfig, timeout: Duration) -> TestServer {
    let hub = Hub::builder()
        .config(config)
        .redis(RedisConfig::new(shards.iter().map(|r| r.url())).timeout(timeout))
        .connect()
        .await
        .expect("connect to Redis");
    TestServer::start(hub).await
}

async fn node_with(redis: &RedisServer, config: HubConfig) -> TestServer {
    let hub = Hub::builder()
        .config(config)
        .redis(RedisConfig::new([redis.url()]).timeout(Duration::from_secs(1)))
        .connect()
        .await
        .expect("connect to Redis");
    TestServer::start(hub).await
}

#[tokio::test]
async fn publications_get_redis_offsets_and_the_local_report_is_exact() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis, 100).await, node(&redis, 100).await);
    let mut on_a = a.connect().await;
    let mut on_b = b.connect().await;
    let epoch = subscribe_at(&mut on_a, "feed:x", None).await["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(epoch, "", "nothing published yet: no epoch");
    subscribe_at(&mut on_b, "feed:x", None).await;
    for i in 1..=20 {
        let report = b.hub.publish("feed:x", &numbered(i)).await.unwrap();
        assert_eq!(
            report.enqueued, 1,
            "the origin's own subscriber, delivered in offset order"
        );
    }
    let mut epochs = Vec::new();
    for ws in [&mut on_a, &mut on_b] {
        for i in 1..=20 {
            let v = recv_json(ws).await;
            assert_eq!(
                (v["offset"].as_u64(), v["data"].as_u64()),
                (Some(i), Some(i))
            );
            epochs.push(v["epoch"].as_str().unwrap().to_owned());
        }
        expect_silence(ws, Duration::from_millis(100)).await;
    }
    epochs.dedup();
    assert_eq!(epochs.len(), 1, "one epoch on every node");
    close(on_a).await;
    close(on_b).await;
    a.stop().await;
    b.stop().await;
}

/// Concurrent publishers on two nodes: a node delivers its own publication at once when it is
/// the next one, and otherwise when its copy comes back from Redis; either way every
/// subscriber gets each offset once and in order, and each report counts exactly the node's
/// own subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_deliver_every_offset_once_in_order_with_exact_reports()
{
    const TASKS: u64 = 4;
    const EACH: u64 = 150;
    let redis = RedisServer::start().await;
    // A report waits for the copy from Redis at most the broker timeout: a generous one, so
    // that a loaded machine cannot make a report inexact.
    let timeout = Duration::from_secs(10);
    let a = node_on(&[&redis], config(10_000), timeout).await;
    let b = node_on(&[&redis], config(10_000), timeout).await;
    let mut sockets = Vec::new();
    for n in [&a, &a, &b, &b] {
        let mut ws = n.connect().await;
        subscribe_at(&mut ws, "feed:busy", None).await;
        sockets.push(ws);
    }
    let mut tasks = Vec::new();
    for (hub, first) in [(a.hub.clone(), 0), (b.hub.clone(), TASKS)] {
        for t in first..first + TASKS {
            let hub = hub.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let report = hub
                        .publish("feed:busy", &numbered(t * EACH + i))
                        .await
                        .unwrap();
                    assert_eq!(report.enqueued, 2, "the node's two subscribers");
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 2 * TASKS * EACH;
    for ws in &mut sockets {
        let mut last_of_task = vec![None::<u64>; 2 * TASKS as usize];
        for offset in 1..=total {
            let v = recv_json(ws).await;
            assert_eq!(v["offset"].as_u64(), Some(offset), "{v}");
            // Each publisher's own publications arrive in the order it made them.
            let data = v["data"].as_u64().unwrap();
            let task = usize::try_from(data / EACH).unwrap();
            assert!(last_of_task[task].is_none_or(|l| l < data), "{v}");
            last_of_task[task] = Some(data);
        }
        expect_silence(ws, Duration::from_millis(100)).await;
    }
    assert_eq!(
        a.hub.counters().history_gaps + b.hub.counters().history_gaps,
        0
    );
    for ws in sockets {
        close(ws).await;
    }
    a.stop().await;
    b.stop().await;
}

/// History publishes made while a script call is running queue up and go together in the next
/// call, in order; a publisher that gives up holds up nobody, and a publication that Redis
/// cannot store (another type of key under its channel's name) fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_history_publishes_go_out_together_in_order_and_fail_alone() {
    let redis = RedisServer::start().await;
    let a = node_with_timeout(&redis, Duration::from_secs(10)).await;
    let mut ws = a.connect().await;
    subscribe_at(&mut ws, "feed:q", None).await;
    a.hub.publish("feed:q", &numbered(1)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(1));
    redis
        .query(&["SET", "wshub:s:feed:bad", "x"])
        .await
        .unwrap();
    redis
        .query(&["CLIENT", "PAUSE", "60000", "WRITE"])
        .await
        .unwrap();
    let publish = |channel: &'static str, i: u64| {
        let hub = a.hub.clone();
        tokio::spawn(async move { hub.publish(channel, &numbered(i)).await })
    };
    // The first call (publication 2) waits in Redis; the rest queue up behind it.
    let first = publish("feed:q", 2);
    redis.wait_blocked(1).await;
    let mut queued = Vec::new();
    for (channel, i) in [("feed:q", 3), ("feed:bad", 0), ("feed:q", 4), ("feed:q", 5)] {
        queued.push((channel, publish(channel, i)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    redis.query(&["CLIENT", "UNPAUSE"]).await.unwrap();
    for (channel, q) in queued {
        let result = tokio::time::timeout(WAIT, q)
            .await
            .expect("a queued publish was left waiting")
            .unwrap();
        match channel {
            "feed:bad" => {
                let error = result.expect_err("not a stream").to_string();
                assert!(error.contains("WRONGTYPE"), "{error}");
            }
            _ => assert_eq!(result.expect("published").enqueued, 1),
        }
    }
    // The publication whose publisher gave up was sent already: Redis stored it first.
    for i in 2..=5 {
        let v = recv_json(&mut ws).await;
        assert_eq!(
            (v["offset"].as_u64(), v["data"].as_u64()),
            (Some(i), Some(i))
        );
    }
    // The channel's position was kept: the next publish follows.
    a.hub.publish("feed:q", &numbered(6)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(6));
    expect_silence(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
    a.stop().await;
}

#[tokio::test]
async fn a_client_cut_repeatedly_resumes_on_any_node_without_loss() {
    const TOTAL: u64 = 300;
    let redis = RedisServer::start().await;
    let nodes = [node(&redis, 1000).await, node(&redis, 1000).await];
    let publisher_node = node(&redis, 1000).await;
    let hub = publisher_node.hub.clone();
    let mut received = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let mut publisher = None;
    let mut round = 0usize;
    while received.last().copied() != Some(TOTAL) {
        let server = &nodes[round % 2];
        let (mut ws, id) = server.connect_client().await;
        let from = position.as_ref().map(|(o, e)| (*o, e.as_str()));
        let answer = subscribe_at(&mut ws, "feed:steady", from).await;
        if position.is_some() {
            assert_eq!(answer["recovered"], true, "round {round}: {answer}");
        }
        if publisher.is_none() {
            let hub = hub.clone();
            publisher = Some(tokio::spawn(async move {
                for i in 1..=TOTAL {
                    hub.publish("feed:steady", &numbered(i)).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        for _ in 0..(20 + round * 11) {
            let v = recv_json(&mut ws).await;
            let offset = v["offset"].as_u64().unwrap();
            assert_eq!(v["data"].as_u64(), Some(offset));
            received.push(offset);
            position = Some((offset, v["epoch"].as_str().unwrap().to_owned()));
            if offset == TOTAL {
                break;
            }
        }
        if received.last().copied() != Some(TOTAL) {
            server.hub.client(id).expect("connected").kill_connection();
        }
        round += 1;
    }
    publisher.expect("started").await.unwrap();
    assert!(round >= 4, "{round} rounds");
    assert_eq!(
        received,
        (1..=TOTAL).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    for n in nodes {
        n.stop().await;
    }
    publisher_node.stop().await;
}

#[tokio::test]
async fn the_subscribers_node_restarts_repeatedly_while_publishing_continues_elsewhere() {
    /// Publications made at a steady pace, before, during and after the restarts.
    const TOTAL: u64 = 600;
    /// The subscriber's node goes away after the client received these offsets.
    const CUTS: [u64; 3] = [50, 200, 350];
    let redis = RedisServer::start().await;
    let publisher_node = node(&redis, 1000).await;
    let mut server = node(&redis, 1000).await;
    let mut ws = server.connect().await;
    subscribe_at(&mut ws, "feed:restart", None).await;
    let hub = publisher_node.hub.clone();
    let publishing = tokio::spawn(async move {
        for i in 1..=TOTAL {
            hub.publish("feed:restart", &numbered(i)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut received = 0;
    let mut epoch = String::new();
    for cut in CUTS {
        while received < cut {
            let v = recv_json(&mut ws).await;
            received += 1;
            assert_eq!(v["offset"].as_u64(), Some(received), "gap or duplicate");
            epoch = v["epoch"].as_str().unwrap().to_owned();
        }
        drop(ws);
        server.stop().await; // the subscriber's node goes away while publishing goes on...
        server = node(&redis, 1000).await; // ...and a new one comes up
        ws = server.connect().await;
        let answer = subscribe_at(&mut ws, "feed:restart", Some((received, &epoch))).await;
        assert_eq!(
            answer["recovered"], true,
            "after offset {received}: {answer}"
        );
    }
    // Everything after each position, once each and in order, whether it was missed during a
    // restart, raced the resume or came live afterwards.
    while received < TOTAL {
        let v = recv_json(&mut ws).await;
        received += 1;
        assert_eq!(v["offset"].as_u64(), Some(received), "gap or duplicate");
    }
    publishing.await.unwrap();
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    close(ws).await;
    server.stop().await;
    publisher_node.stop().await;
}

#[tokio::test]
async fn beyond_the_window_the_client_is_told_not_recovered() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 5).await;
    for i in 1..=3 {
        a.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    let epoch = a.hub.history("feed:w", 0, 10).await.unwrap().epoch;
    for i in 4..=12 {
        a.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:w", Some((3, &epoch))).await;
    assert_eq!(answer["recovered"], false, "only 8..12 are kept: {answer}");
    assert_eq!(
        (answer["offset"].as_u64(), answer["epoch"].as_str()),
        (Some(12), Some(epoch.as_str()))
    );
    let answer = subscribe_at(&mut ws, "feed:w2", Some((3, &epoch))).await;
    assert_eq!(answer["recovered"], false, "another channel, no history");
    let mut again = a.connect().await;
    let answer = subscribe_at(&mut again, "feed:w", Some((9, &epoch))).await;
    assert_eq!(answer["recovered"], true);
    assert_eq!(
        answer["offset"].as_u64(),
        Some(9),
        "the offset it resumes from"
    );
    for i in 10..=12 {
        assert_eq!(recv_json(&mut again).await["offset"].as_u64(), Some(i));
    }
    // The HTTP API reads the same history.
    let (status, body) = http(
        a.addr,
        "GET",
        "/api/history?channel=feed:w&since=10",
        &[],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let offsets: Vec<u64> = v["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [11, 12]);
    close(ws).await;
    close(again).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_racing_publish_at_the_switch_over_is_never_lost_or_doubled_with_redis() {
    race_with_redis(false).await;
}

/// The same while another client keeps the node subscribed in Redis, so each resume takes
/// the path where the node is already receiving the channel live (no wait for Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_racing_publish_is_never_lost_or_doubled_on_a_node_already_subscribed() {
    race_with_redis(true).await;
}

async fn race_with_redis(anchored: bool) {
    const ROUNDS: usize = 60;
    let redis = RedisServer::start().await;
    let subscriber_node = node(&redis, 100_000).await;
    let publisher_node = node(&redis, 100_000).await;
    let mut anchor = None;
    if anchored {
        let mut ws = subscriber_node.connect().await;
        subscribe_at(&mut ws, "feed:race", None).await;
        anchor = Some(ws);
    }
    let racing = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    // Four publishers: each publish is a Redis round trip, and the resumes must race many.
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let hub = publisher_node.hub.clone();
            let (racing, done) = (Arc::clone(&racing), Arc::clone(&done));
            tokio::spawn(async move {
                let mut i = 0u64;
                while !done.load(Ordering::Relaxed) && i < 20_000 {
                    if racing.load(Ordering::Relaxed) {
                        i += 1;
                        hub.publish("feed:race", &numbered(i)).await.unwrap();
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
                i
            })
        })
        .collect();
    race_resumes(
        &subscriber_node,
        &publisher_node,
        "feed:race",
        ROUNDS,
        &racing,
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    assert!(
        published > 300,
        "the publishers raced the resumes ({published} publications)"
    );
    if let Some(mut ws) = anchor {
        // The anchor received everything (the numbered publications and three markers a
        // round), in order, once.
        let total = published + 3 * ROUNDS as u64;
        let mut expected = 1;
        while expected <= total {
            let v = recv_json(&mut ws).await;
            assert_eq!(v["offset"].as_u64(), Some(expected));
            expected += 1;
        }
        expect_silence(&mut ws, Duration::from_millis(100)).await;
        assert_eq!(subscriber_node.hub.counters().history_gaps, 0);
    }
    subscriber_node.stop().await;
    publisher_node.stop().await;
}

#[tokio::test]
async fn a_flushed_redis_changes_the_epoch_and_a_resume_is_not_recovered() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    for i in 1..=3 {
        a.hub.publish("feed:f", &numbered(i)).await.unwrap();
    }
    let old = a.hub.history("feed:f", 0, 10).await.unwrap().epoch;
    redis.query(&["FLUSHALL"]).await.unwrap();
    a.hub.publish("feed:f", &numbered(4)).await.unwrap();
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:f", Some((3, &old))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    let new = answer["epoch"].as_str().unwrap();
    assert!(!new.is_empty() && new != old, "{answer}");
    close(ws).await;
    a.stop().await;
}

/// The stream is the offset counter: when it is lost (evicted, or deleted by hand), the
/// channel has no position to offer, and its next publication starts a new epoch at offset 1
/// rather than reusing offsets under the old one, although the node remembers the old epoch.
#[tokio::test]
async fn a_lost_stream_starts_a_new_epoch_at_offset_1() {
    let (_redis, a, old) = publish_3_then_lose_the_stream("feed:l").await;
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:l", Some((3, &old))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    a.hub.publish("feed:l", &numbered(4)).await.unwrap();
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["offset"].as_u64(), v["data"].as_u64()),
        (Some(1), Some(4)),
        "{v}"
    );
    let new = v["epoch"].as_str().unwrap();
    assert!(!new.is_empty() && new != old, "{v}");
    let stored = a.hub.history("feed:l", 0, 10).await.unwrap();
    assert_eq!((stored.epoch.as_str(), stored.offset), (new, 1));
    // An offset far beyond the channel's (whatever a client sends) reads nothing, no error.
    let beyond = a
        .hub
        .history("feed:l", 100_000_000_000_000, 10)
        .await
        .unwrap();
    assert_eq!((beyond.offset, beyond.publications.len()), (1, 0));
    close(ws).await;
    a.stop().await;
}

/// A node that published 1 to 3 on `channel`, after which Redis lost the channel's stream;
/// the channel then has no position to offer. Returns the Redis server, the node and the
/// epoch from before.
async fn publish_3_then_lose_the_stream(channel: &str) -> (RedisServer, TestServer, String) {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    for i in 1..=3 {
        a.hub.publish(channel, &numbered(i)).await.unwrap();
    }
    let old = a.hub.history(channel, 0, 10).await.unwrap().epoch;
    redis
        .query(&["DEL", &format!("wshub:s:{channel}")])
        .await
        .unwrap();
    let gone = a.hub.history(channel, 0, 10).await.unwrap();
    assert_eq!((gone.epoch.as_str(), gone.offset), ("", 0));
    (redis, a, old)
}

/// A node remembers each channel's epoch between publishes; when another node started a new
/// epoch meanwhile (the stream was lost), the node's next publication follows that epoch
/// instead of its own.
#[tokio::test]
async fn a_node_that_remembers_an_old_epoch_follows_the_one_another_node_started() {
    let (redis, a, old) = publish_3_then_lose_the_stream("feed:o").await;
    let b = node(&redis, 100).await;
    let mut ws = b.connect().await;
    subscribe_at(&mut ws, "feed:o", None).await;
    b.hub.publish("feed:o", &numbered(4)).await.unwrap();
    a.hub.publish("feed:o", &numbered(5)).await.unwrap();
    let (v4, v5) = (recv_json(&mut ws).await, recv_json(&mut ws).await);
    let new = v4["epoch"].as_str().unwrap();
    assert!(!new.is_empty() && new != old, "{v4}");
    assert_eq!(
        (v4["offset"].as_u64(), v4["data"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(
        (
            v5["offset"].as_u64(),
            v5["data"].as_u64(),
            v5["epoch"].as_str()
        ),
        (Some(2), Some(5), Some(new)),
        "{v5}"
    );
    close(ws).await;
    b.stop().await;
    a.stop().await;
}

/// The other way round: the stream now holds an epoch older than the one the node remembers
/// (a Redis clock that went back, or a stream written by hand). The node's next publication
/// neither joins the older epoch nor reuses an offset of its own: it starts a new epoch,
/// greater than both, at offset 1.
#[tokio::test]
async fn an_older_epoch_in_the_stream_gives_way_to_a_new_one() {
    let (redis, a, old) = publish_3_then_lose_the_stream("feed:m").await;
    // The tag of this Redis process, as every entry it stores carries it.
    a.hub.publish("feed:other", &numbered(1)).await.unwrap();
    let top: Vec<(String, Vec<(String, String)>)> = match redis
        .query(&["XREVRANGE", "wshub:s:feed:other", "+", "-", "COUNT", "1"])
        .await
    {
        Ok(v) => redis::from_redis_value(v).unwrap(),
        Err(e) => panic!("XREVRANGE: {e}"),
    };
    let tag = top[0].1.iter().find(|(k, _)| k == "r").unwrap().1.clone();
    let head = r#"{"type":"event","channel":"feed:m","data":0,"timestamp":"2026-11-27T00:00:00Z""#;
    let ms = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .unwrap()
        .as_millis()
        .to_string();
    redis
        .query(&[
            "XADD",
            "wshub:s:feed:m",
            "1-1",
            "d",
            head,
            "t",
            &ms,
            "r",
            &tag,
        ])
        .await
        .unwrap();
    let stored = a.hub.history("feed:m", 0, 10).await.unwrap();
    assert_eq!((stored.epoch.as_str(), stored.offset), ("1", 1));
    a.hub.publish("feed:m", &numbered(4)).await.unwrap();
    let stored = a.hub.history("feed:m", 0, 10).await.unwrap();
    assert_eq!(stored.offset, 1, "{stored:?}");
    let new: u64 = stored.epoch.parse().unwrap();
    assert!(new > old.parse().unwrap(), "{stored:?} after {old}");
    assert_eq!(stored.publications.len(), 1, "{stored:?}");
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:m", Some((3, &old))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_eq!(answer["epoch"], stored.epoch.as_str(), "{answer}");
    close(ws).await;
    a.stop().await;
}

/// A channel whose stream was replaced by a key of another type fails with Redis's error,
/// although the node remembers the channel's epoch; other channels go on, and once the key is
/// gone the channel starts a new epoch.
#[tokio::test]
async fn a_channel_whose_key_changed_type_fails_alone_then_starts_a_new_epoch() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    for i in 1..=2 {
        a.hub.publish("feed:w", &numbered(i)).await.unwrap();
    }
    let old = a.hub.history("feed:w", 0, 10).await.unwrap().epoch;
    redis.query(&["DEL", "wshub:s:feed:w"]).await.unwrap();
    redis.query(&["SET", "wshub:s:feed:w", "x"]).await.unwrap();
    let error = a
        .hub
        .publish("feed:w", &numbered(3))
        .await
        .expect_err("not a stream")
        .to_string();
    assert!(error.contains("WRONGTYPE"), "{error}");
    let read = a
        .hub
        .history("feed:w", 0, 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(read.contains("WRONGTYPE"), "{read}");
    a.hub.publish("feed:v", &numbered(1)).await.unwrap();
    redis.query(&["DEL", "wshub:s:feed:w"]).await.unwrap();
    a.hub.publish("feed:w", &numbered(4)).await.unwrap();
    let stored = a.hub.history("feed:w", 0, 10).await.unwrap();
    assert_eq!(stored.offset, 1, "{stored:?}");
    assert!(
        !stored.epoch.is_empty() && stored.epoch != old,
        "{stored:?}"
    );
    a.stop().await;
}

#[tokio::test]
async fn a_repeated_subscribe_is_answered_with_the_position_and_replays_nothing_with_redis() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    a_repeated_subscribe_is_answered_without_replay(&a, "feed:again").await;
    a.stop().await;
}

/// A subscribe whose history read fails gets no made-up position (neither `recovered:false`
/// nor an empty epoch): the connection is closed with 1013, and a resume once the history is
/// readable again recovers what was missed.
#[tokio::test]
async fn a_resume_the_broker_cannot_answer_is_closed_with_1013_and_recovers_later() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    let (ws, epoch) = subscribed_through_3(&a, "feed:u").await;
    close(ws).await;
    a.hub.publish("feed:u", &numbered(4)).await.unwrap();
    // The stream is moved aside: every read of it fails with WRONGTYPE.
    redis
        .query(&["RENAME", "wshub:s:feed:u", "aside"])
        .await
        .unwrap();
    redis.query(&["SET", "wshub:s:feed:u", "x"]).await.unwrap();
    for since in [Some((3, epoch.as_str())), None] {
        let mut ws = a.connect().await;
        let mut request = serde_json::json!({"type": "subscribe", "channel": "feed:u"});
        if let Some((offset, epoch)) = since {
            request["offset"] = offset.into();
            request["epoch"] = epoch.into();
        }
        send(&mut ws, &request.to_string()).await;
        let (code, reason) = recv_close(&mut ws).await;
        assert_eq!(
            (code, reason.as_str()),
            (1013, "history unavailable: reconnect later and resume"),
            "{since:?}"
        );
    }
    assert_eq!(a.hub.counters().history_unavailable, 2);
    redis
        .query(&["RENAME", "aside", "wshub:s:feed:u"])
        .await
        .unwrap();
    resume_recovers(&a, "feed:u", &epoch, &[]).await;
    assert_eq!(a.hub.counters().history_unavailable, 2);
    a.stop().await;
}

/// A channel's stream lives at least the TTL after its last publication and at most one and a
/// half: a node pushes its expiry back when half a TTL has passed since it last did, and a
/// node that never did pushes it back with its first publication.
#[tokio::test]
async fn publishing_pushes_the_streams_expiry_back_every_half_ttl() {
    let redis = RedisServer::start().await;
    let config = || config(100).history_ttl(Duration::from_secs(2));
    let (a, b) = (
        node_with(&redis, config()).await,
        node_with(&redis, config()).await,
    );
    let pttl = || async {
        match redis.query(&["PTTL", "wshub:s:feed:x"]).await.unwrap() {
            redis::Value::Int(ms) => ms,
            other => panic!("PTTL: {other:?}"),
        }
    };
    a.hub.publish("feed:x", &numbered(1)).await.unwrap();
    let first = pttl().await;
    assert!((2_000..=3_000).contains(&first), "{first} ms");
    // Within half a TTL, A leaves the expiry alone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.hub.publish("feed:x", &numbered(2)).await.unwrap();
    assert!(pttl().await <= first - 250, "pushed back too early");
    // B never pushed it back: its first publication does.
    b.hub.publish("feed:x", &numbered(3)).await.unwrap();
    assert!(pttl().await > first - 100, "B did not push it back");
    // After half a TTL, A pushes it back again.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let before = pttl().await;
    a.hub.publish("feed:x", &numbered(4)).await.unwrap();
    let after = pttl().await;
    assert!(
        after > before + 500 && after <= 3_000,
        "{before} -> {after} ms"
    );
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn redis_history_older_than_the_ttl_is_gone() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, config(1000).history_ttl(Duration::from_secs(1))).await;
    for i in 1..=3 {
        a.hub.publish("feed:t", &numbered(i)).await.unwrap();
    }
    let epoch = a.hub.history("feed:t", 0, 10).await.unwrap().epoch;
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:t", Some((1, &epoch))).await;
    assert_eq!(answer["recovered"], true, "within the TTL: {answer}");
    for i in 2..=3 {
        assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(i));
    }
    close(ws).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:t", Some((1, &epoch))).await;
    assert_eq!(answer["recovered"], false, "after the TTL: {answer}");
    close(ws).await;
    a.stop().await;
}

/// Stores publication `data` in `channel`'s Redis history as the broker does (the JSON without
/// its closing brace, which readers complete with the position), but without sending it
/// through pub/sub: exactly what a node sees when its subscription was lost while
/// another node published.
async fn store_without_delivery(redis: &RedisServer, channel: &str, data: u64) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    store_without_delivery_on(&mut conn, channel, data).await;
}

/// [`store_without_delivery`] on a given connection.
async fn store_without_delivery_on(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    data: u64,
) {
    let head = format!(
        r#"{{"type":"event","channel":"{channel}","data":{data},"timestamp":"2026-11-27T00:00:00Z""#
    );
    store_on(conn, channel, head.as_bytes(), false).await;
}

/// Stores `head` as the next entry of the epoch on top of `channel`'s stream, written as by
/// the same Redis process, and with `publish` also publishes it as another node would.
/// Returns its offset.
async fn store_on(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    head: &[u8],
    publish: bool,
) -> String {
    const STORE: &str = r#"
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local epoch, fields = string.match(top[1], '^(%d+)-'), top[2]
local r
for i = 1, #fields, 2 do
  if fields[i] == 'r' then r = fields[i + 1] end
end
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id = redis.call('XADD', KEYS[1], epoch .. '-*', 'd', ARGV[1], 't', ms, 'r', r)
local offset = string.sub(id, #epoch + 2)
if ARGV[2] ~= '' then
  redis.call('PUBLISH', ARGV[2], 'other-nd' .. offset .. ' ' .. epoch .. ' ' .. ARGV[1])
end
return offset
"#;
    let pubsub = if publish {
        format!("wshub:c:{channel}")
    } else {
        String::new()
    };
    redis::cmd("EVAL")
        .arg(STORE)
        .arg(1)
        .arg(format!("wshub:s:{channel}"))
        .arg(head)
        .arg(pubsub)
        .query_async(conn)
        .await
        .expect("store a publication")
}

/// Redis drops every pub/sub connection; returns once `node` has reconnected its subscriber.
async fn lose_subscription_until_back(redis: &RedisServer, node: &TestServer) {
    redis
        .query(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    eventually("the node re-subscribed", || {
        node.hub.counters().broker.reconnects >= 1
    })
    .await;
}

/// Waits until Redis has forgotten `channel`'s history (its TTL ran out).
async fn history_expired(redis: &RedisServer, channel: &str) {
    let stream = format!("wshub:s:{channel}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis.query(&["EXISTS", &stream]).await.unwrap() != redis::Value::Int(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the history never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes on `node`, receives publications 1..=3 published there, and returns the socket
/// and the epoch.
async fn subscribed_through_3(node: &TestServer, channel: &str) -> (Ws, String) {
    let mut ws = node.connect().await;
    subscribe_at(&mut ws, channel, None).await;
    for i in 1..=3 {
        node.hub.publish(channel, &numbered(i)).await.unwrap();
    }
    let mut epoch = String::new();
    for i in 1..=3 {
        let v = recv_json(&mut ws).await;
        assert_eq!(v["offset"].as_u64(), Some(i), "{v}");
        epoch = v["epoch"].as_str().unwrap().to_owned();
    }
    (ws, epoch)
}

/// After the 1012, a resume from offset 3 recovers 4 (never delivered live) and then `more`.
async fn resume_recovers(node: &TestServer, channel: &str, epoch: &str, more: &[u64]) {
    let mut ws = node.connect().await;
    let answer = subscribe_at(&mut ws, channel, Some((3, epoch))).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    for &i in [4].iter().chain(more) {
        let v = recv_json(&mut ws).await;
        assert_eq!(
            (v["offset"].as_u64(), v["data"].as_u64()),
            (Some(i), Some(i))
        );
    }
    expect_silence(&mut ws, Duration::from_millis(200)).await;
    close(ws).await;
}

#[tokio::test]
async fn a_history_publication_no_node_could_send_keeps_its_offset_but_is_not_delivered() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    let channel = "feed:bad";
    let (mut ws, epoch) = subscribed_through_3(&a, channel).await;
    // Offset 4 stored and published as a node would, except that it is not UTF-8.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let bad = b"{\"type\":\"event\",\"data\":\"\xff\"";
    assert_eq!(store_on(&mut conn, channel, bad, true).await, "4");
    eventually("counted", || a.hub.counters().remote_rejected == 1).await;
    // The next publication follows without a gap: delivered, nobody closed.
    a.hub.publish(channel, &numbered(5)).await.unwrap();
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["offset"].as_u64(), v["data"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(a.hub.counters().history_gaps, 0);
    // A resume over 4 cannot be complete; one after it is.
    let mut again = a.connect().await;
    let answer = subscribe_at(&mut again, channel, Some((3, &epoch))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    let mut after = a.connect().await;
    let answer = subscribe_at(&mut after, channel, Some((4, &epoch))).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(recv_json(&mut after).await["offset"].as_u64(), Some(5));
    for w in [ws, again, after] {
        close(w).await;
    }
    a.stop().await;
}

#[tokio::test]
async fn a_node_that_missed_a_publication_closes_its_subscribers_who_resume_and_recover_it() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    let (mut ws, epoch) = subscribed_through_3(&a, "feed:gap").await;
    store_without_delivery(&redis, "feed:gap", 4).await;
    // Publication 5 arrives live: the node sees that it never got 4.
    a.hub.publish("feed:gap", &numbered(5)).await.unwrap();
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1012, "{reason}");
    assert!(reason.contains("missed publications"), "{reason}");
    assert_eq!(a.hub.counters().history_gaps, 1);
    resume_recovers(&a, "feed:gap", &epoch, &[5]).await;
    a.stop().await;
}

/// A publication this node never got while a client was recovering (right after the stored
/// history the client read) closes that client with 1012, whether the node notices the hole
/// in the channel's live stream or in what it held for the client; its next resume recovers
/// the missed one.
#[tokio::test]
async fn a_publication_missed_while_a_client_recovers_closes_it_and_its_resume_recovers_it() {
    // Two shards: the channel lives on the second, whose Redis the test pauses; the nodes'
    // client counts go to the first.
    let (r1, r2) = (RedisServer::start().await, RedisServer::start().await);
    let timeout = Duration::from_secs(10);
    let a = node_on(&[&r1, &r2], config(100), timeout).await;
    let b = node_on(&[&r1, &r2], config(100), timeout).await;
    let mut channel = String::new();
    for k in 0.. {
        channel = format!("feed:hole{k}");
        b.hub.publish(&channel, &numbered(1)).await.unwrap();
        let stream = format!("wshub:s:{channel}");
        if r2.query(&["EXISTS", &stream]).await.unwrap() == redis::Value::Int(1) {
            break;
        }
    }
    for i in 2..=3 {
        b.hub.publish(&channel, &numbered(i)).await.unwrap();
    }
    let epoch = b.hub.history(&channel, 0, 10).await.unwrap().epoch;
    // Redis holds back scripts and writes (subscriptions go through), then runs them in the
    // order they came: A's history read for the resuming client, publication 4 stored
    // without delivery, publication 5 published from B.
    r2.query(&["CLIENT", "PAUSE", "60000", "WRITE"])
        .await
        .unwrap();
    let mut ws = a.connect().await;
    send(
        &mut ws,
        &format!(r#"{{"type":"subscribe","channel":"{channel}","offset":1,"epoch":"{epoch}"}}"#),
    )
    .await;
    r2.wait_blocked(1).await;
    let store = {
        let (url, channel) = (r2.url(), channel.clone());
        tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            conn.set_response_timeout(WAIT);
            store_without_delivery_on(&mut conn, &channel, 4).await;
        })
    };
    r2.wait_blocked(2).await;
    let publish = {
        let (hub, channel) = (b.hub.clone(), channel.clone());
        tokio::spawn(async move { hub.publish(&channel, &numbered(5)).await })
    };
    r2.wait_blocked(3).await;
    r2.query(&["CLIENT", "UNPAUSE"]).await.unwrap();
    let answer = recv_json(&mut ws).await;
    assert_eq!(answer["recovered"], true, "{answer}");
    for i in 2..=3 {
        assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(i));
    }
    let (code, reason) = recv_close(&mut ws).await;
    assert_eq!(code, 1012, "{reason}");
    expect_end(&mut ws).await;
    store.await.unwrap();
    publish.await.unwrap().unwrap();
    resume_recovers(&a, &channel, &epoch, &[5]).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn after_a_lost_redis_subscription_a_node_finds_missed_publications_without_new_ones() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    let (mut ws, epoch) = subscribed_through_3(&a, "feed:quiet").await;
    store_without_delivery(&redis, "feed:quiet", 4).await;
    // Nothing more is published; the node re-subscribes and compares positions.
    redis
        .query(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .await
        .unwrap();
    let (code, reason) = tokio::time::timeout(Duration::from_secs(10), recv_close(&mut ws))
        .await
        .expect("the subscriber is told within the settle time");
    assert_eq!(code, 1012, "{reason}");
    assert_eq!(a.hub.counters().history_gaps, 1);
    assert!(a.hub.counters().broker.reconnects >= 1);
    resume_recovers(&a, "feed:quiet", &epoch, &[]).await;
    a.stop().await;
}

#[tokio::test]
async fn a_lost_redis_subscription_that_missed_nothing_disturbs_nobody() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    let (mut ws, _) = subscribed_through_3(&a, "feed:calm").await;
    lose_subscription_until_back(&redis, &a).await;
    expect_silence(&mut ws, Duration::from_secs(1)).await;
    a.hub.publish("feed:calm", &numbered(4)).await.unwrap();
    assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(4));
    assert_eq!(a.hub.counters().history_gaps, 0);
    close(ws).await;
    a.stop().await;
}

#[tokio::test]
async fn a_restarted_redis_without_its_data_closes_the_subscribers_who_are_told_not_recovered() {
    let mut redis = RedisServer::start().await;
    let (a, b) = (node(&redis, 100).await, node(&redis, 100).await);
    let (mut ws, epoch) = subscribed_through_3(&a, "feed:restart").await;
    redis.restart().await; // no persistence: the history and its epoch are gone
    eventually("both nodes re-subscribed", || {
        [&a, &b]
            .iter()
            .all(|n| n.hub.counters().broker.reconnects >= 1)
    })
    .await;
    let mut published = None;
    for _ in 0..100 {
        // The publishing connection may take a moment to come back.
        match b.hub.publish("feed:restart", &numbered(100)).await {
            Ok(_) => {
                published = Some(());
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    published.expect("publishing works again after the restart");
    // Node A sees a publication of another epoch: it closes its subscriber, whose resume
    // from its old position is answered plainly.
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1012);
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:restart", Some((3, &epoch))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_ne!(answer["epoch"], epoch.as_str());
    assert_eq!(answer["offset"], 1);
    close(ws).await;
    a.stop().await;
    b.stop().await;
}

/// Publishes on `node` until the broker takes it again (after a Redis restart).
async fn publish_when_back(node: &TestServer, channel: &str, i: u64) {
    for _ in 0..200 {
        if node.hub.publish(channel, &numbered(i)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("publishing did not come back after the restart");
}

#[tokio::test]
async fn a_redis_restored_from_an_older_snapshot_starts_a_new_epoch_and_reuses_no_offset() {
    let mut redis = RedisServer::start_persistent().await;
    let a = node(&redis, 100).await;
    let (mut ws, epoch) = subscribed_through_3(&a, "feed:snap").await;
    redis.query(&["SAVE"]).await.unwrap(); // the snapshot holds offsets 1 to 3
    for i in 4..=5 {
        a.hub.publish("feed:snap", &numbered(i)).await.unwrap();
        assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(i));
    }
    redis.restart().await; // a crash: 4 and 5 are lost, the old epoch comes back
    publish_when_back(&a, "feed:snap", 6).await;
    let (code, _) = recv_close(&mut ws).await;
    assert_eq!(code, 1012, "a publication of a new epoch shows the loss");
    // A client that had seen only 1 to 3 must not be told it recovered 4 and 5: offsets of
    // the old epoch were not handed out again.
    let mut ws = a.connect().await;
    let answer = subscribe_at(&mut ws, "feed:snap", Some((3, &epoch))).await;
    assert_eq!(answer["recovered"], false, "{answer}");
    assert_ne!(answer["epoch"], epoch.as_str());
    assert_eq!(answer["offset"], 1);
    expect_silence(&mut ws, Duration::from_millis(100)).await;
    close(ws).await;
    a.stop().await;
}

/// A Redis that was a replica meanwhile (and took an older copy of the history from its
/// master) keeps its run id, but its replication id changes when it is promoted again: the
/// stored publications then count as another process's, and the next publication starts a
/// new epoch instead of handing out offsets 4 and 5 again.
#[tokio::test]
async fn a_master_that_was_a_replica_meanwhile_starts_a_new_epoch() {
    let (a, b) = (RedisServer::start().await, RedisServer::start().await);
    for redis in [&a, &b] {
        // Full syncs in memory: nothing is written into the working directory.
        redis
            .query(&["CONFIG", "SET", "repl-diskless-load", "swapdb"])
            .await
            .unwrap();
        redis
            .query(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"])
            .await
            .unwrap();
    }
    let node = node(&a, 100).await;
    for i in 1..=3 {
        node.hub.publish("feed:p", &numbered(i)).await.unwrap();
    }
    let old = node.hub.history("feed:p", 0, 10).await.unwrap().epoch;
    replicate(&b, &a).await; // B holds 1 to 3
    b.query(&["REPLICAOF", "NO", "ONE"]).await.unwrap();
    for i in 4..=5 {
        node.hub.publish("feed:p", &numbered(i)).await.unwrap();
    }
    replicate(&a, &b).await; // A, same run id, holds 1 to 3 again
    let error = node.hub.publish("feed:p", &numbered(0)).await.unwrap_err();
    assert!(error.to_string().contains("READONLY"), "{error}");
    a.query(&["REPLICAOF", "NO", "ONE"]).await.unwrap();
    node.hub.publish("feed:p", &numbered(6)).await.unwrap();
    let stored = node.hub.history("feed:p", 0, 10).await.unwrap();
    assert_eq!(stored.offset, 1, "{stored:?}");
    assert!(
        !stored.epoch.is_empty() && stored.epoch != old,
        "{stored:?}"
    );
    assert_eq!(stored.publications.len(), 1, "{stored:?}");
    node.stop().await;
}

/// Makes `replica` a replica of `master` and waits until it holds the master's data.
async fn replicate(replica: &RedisServer, master: &RedisServer) {
    let port = master.port.to_string();
    replica
        .query(&["REPLICAOF", "127.0.0.1", &port])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = replica.info("replication").await;
        if info.contains("master_link_status:up") && !info.contains("master_sync_in_progress:1") {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica never synced: {info}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn history_that_expires_while_a_node_listens_is_no_gap() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, config(100).history_ttl(Duration::from_secs(1))).await;
    let (mut ws, epoch) = subscribed_through_3(&a, "feed:ttl").await;
    // Quiet for longer than the TTL: Redis forgets the channel's history and epoch.
    history_expired(&redis, "feed:ttl").await;
    a.hub.publish("feed:ttl", &numbered(4)).await.unwrap();
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["offset"].as_u64(), v["data"].as_u64()),
        (Some(1), Some(4))
    );
    assert_ne!(
        v["epoch"],
        epoch.as_str(),
        "a new epoch, and the subscriber stays"
    );
    assert_eq!(a.hub.counters().history_gaps, 0);
    close(ws).await;
    a.stop().await;
}

#[tokio::test]
async fn a_channel_subscribed_again_through_the_library_is_no_gap() {
    let redis = RedisServer::start().await;
    let a = node(&redis, 100).await;
    let b = node(&redis, 100).await;
    let (mut first, _) = subscribed_through_3(&a, "feed:again").await;
    // The last local subscriber leaves; the node unsubscribes; publishing goes on elsewhere.
    send(
        &mut first,
        r#"{"type":"unsubscribe","channel":"feed:again"}"#,
    )
    .await;
    sync(&mut first).await;
    for i in 4..=6 {
        b.hub.publish("feed:again", &numbered(i)).await.unwrap();
    }
    // A new subscriber through the library (no stored position read).
    let (mut ws, id) = a.connect_client().await;
    a.hub.client(id).unwrap().subscribe("feed:again").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !redis
        .channels()
        .await
        .iter()
        .any(|c| c.ends_with("c:feed:again"))
    {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 7..=8 {
        b.hub.publish("feed:again", &numbered(i)).await.unwrap();
        assert_eq!(recv_json(&mut ws).await["offset"].as_u64(), Some(i));
    }
    assert_eq!(a.hub.counters().history_gaps, 0);
    close(ws).await;
    close(first).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn history_that_expires_after_a_reconnect_that_missed_nothing_is_no_gap() {
    let redis = RedisServer::start().await;
    let a = node_with(&redis, config(100).history_ttl(Duration::from_secs(2))).await;
    let (mut ws, _) = subscribed_through_3(&a, "feed:ttl2").await;
    lose_subscription_until_back(&redis, &a).await;
    history_expired(&redis, "feed:ttl2").await;
    // A new epoch, through the new connection, after a check that found nothing missed.
    a.hub.publish("feed:ttl2", &numbered(4)).await.unwrap();
    let v = recv_json(&mut ws).await;
    assert_eq!(
        (v["offset"].as_u64(), v["data"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(a.hub.counters().history_gaps, 0);
    close(ws).await;
    a.stop().await;
}
