//! Several wshub nodes over a real Redis (each test starts its own `redis-server` on a free
//! port): cross-node delivery exactly once and in order, broadcasts, interest-based Redis
//! subscriptions, sharding over two Redis instances, outage and recovery, late joiners.

mod support;

use std::time::Duration;

use support::redis_server::RedisServer;
use support::*;
use wshub::{Hub, Json, Message, PublishError, RedisConfig};

async fn node(urls: &[String]) -> TestServer {
    let config = RedisConfig::new(urls.to_vec()).timeout(Duration::from_millis(500));
    let hub = Hub::builder()
        .redis(config)
        .connect()
        .await
        .expect("connect to Redis");
    TestServer::start(hub).await
}

/// A node whose clients may publish to `chat:*`; `chat:h*` channels keep history.
async fn chat_node(urls: &[String]) -> TestServer {
    let config = wshub::HubConfig::default()
        .client_publish(vec!["chat:*".parse().unwrap()])
        .history(vec!["chat:h*".parse().unwrap()]);
    let hub = Hub::builder()
        .config(config)
        .redis(RedisConfig::new(urls.to_vec()).timeout(Duration::from_millis(500)))
        .connect()
        .await
        .expect("connect to Redis");
    TestServer::start(hub).await
}

fn numbered(i: usize) -> Message {
    Message::new("event").with_data(Json::parse(i.to_string()).unwrap())
}

/// Receives `n` messages and returns their `data` numbers.
async fn numbers(ws: &mut Ws, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            recv_json(ws).await["data"]
                .as_u64()
                .expect("numbered message"),
        );
    }
    out
}

/// Three nodes over `urls`, each with one client, subscribed to `channel` when given (else
/// only synced, so that it is registered).
async fn three_nodes_one_client_each(
    urls: &[String],
    channel: Option<&str>,
) -> ([TestServer; 3], Vec<Ws>) {
    let nodes = [node(urls).await, node(urls).await, node(urls).await];
    let mut clients = Vec::new();
    for n in &nodes {
        let mut ws = n.connect().await;
        match channel {
            Some(c) => subscribe(&mut ws, c).await,
            None => sync(&mut ws).await,
        }
        clients.push(ws);
    }
    (nodes, clients)
}

/// Closes every client, then stops every node.
async fn close_all(clients: Vec<Ws>, nodes: impl IntoIterator<Item = TestServer>) {
    for ws in clients {
        close(ws).await;
    }
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_every_node_exactly_once_in_order() {
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut on_a = a.connect().await;
    let mut on_b = b.connect().await;
    subscribe(&mut on_a, "room").await;
    subscribe(&mut on_b, "room").await;
    for i in 0..300 {
        let report = b.hub.publish("room", &numbered(i)).await.unwrap();
        assert_eq!(report.enqueued, 1, "the local report counts this node only");
    }
    let expected: Vec<u64> = (0..300).collect();
    assert_eq!(
        numbers(&mut on_a, 300).await,
        expected,
        "remote node: all, in order"
    );
    assert_eq!(
        numbers(&mut on_b, 300).await,
        expected,
        "origin node: all, once"
    );
    // Nothing is delivered twice.
    expect_silence(&mut on_a, Duration::from_millis(200)).await;
    expect_silence(&mut on_b, Duration::from_millis(50)).await;
    assert_eq!(a.hub.counters().broker.received, 300);
    assert_eq!(
        b.hub.counters().broker.received,
        0,
        "a node ignores its own messages"
    );
    close_all(vec![on_a, on_b], [a, b]).await;
}

#[tokio::test]
async fn client_publish_and_http_publish_cross_nodes_too() {
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let a = chat_node(&urls).await;
    let b = node(&urls).await;
    let mut listener = b.connect().await;
    subscribe(&mut listener, "chat:1").await;
    let mut talker = a.connect().await;
    send(
        &mut talker,
        r#"{"type":"publish","channel":"chat:1","data":"hi"}"#,
    )
    .await;
    sync(&mut talker).await;
    assert_eq!(
        mask_timestamp(&recv(&mut listener).await),
        r#"{"type":"event","channel":"chat:1","data":"hi","timestamp":"TS"}"#
    );
    let (status, body) = http(
        a.addr,
        "POST",
        "/api/publish",
        &[],
        br#"{"channel":"chat:1","data":2}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"enqueued":0,"dropped":0,"disconnected":0}"#)
    );
    assert_eq!(recv_json(&mut listener).await["data"], 2);
    close(listener).await;
    close(talker).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_broadcast_reaches_clients_on_all_three_nodes() {
    let redis = RedisServer::start().await;
    let (nodes, mut clients) = three_nodes_one_client_each(&[redis.url()], None).await;
    nodes[1]
        .hub
        .send_event("deploy", &Json::string("v2"))
        .await
        .unwrap();
    for ws in &mut clients {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","data":{"data":"v2","event":"deploy"},"timestamp":"TS"}"#
        );
    }
    // Once each, the origin's own client included (its node delivers locally and drops the
    // copy Redis sends back).
    for ws in &mut clients {
        expect_silence(ws, Duration::from_millis(300)).await;
    }
    close_all(clients, nodes).await;
}

#[tokio::test]
async fn publishers_on_two_nodes_each_keep_their_order_for_subscribers_on_three() {
    const EACH: u64 = 200;
    let redis = RedisServer::start().await;
    let (nodes, mut clients) = three_nodes_one_client_each(&[redis.url()], Some("mixed")).await;
    // Node 0 and node 1 publish at the same time, each its own numbered sequence.
    let publish = |hub: Hub, who: &'static str| async move {
        for i in 1..=EACH {
            let m =
                Message::new("event").with_data(Json::parse(format!(r#"["{who}",{i}]"#)).unwrap());
            hub.publish("mixed", &m).await.unwrap();
        }
    };
    tokio::join!(
        publish(nodes[0].hub.clone(), "a"),
        publish(nodes[1].hub.clone(), "b")
    );
    for (n, ws) in clients.iter_mut().enumerate() {
        let mut next = [1, 1];
        for _ in 0..2 * EACH {
            let v: serde_json::Value = serde_json::from_str(&recv(ws).await).unwrap();
            let who = usize::from(v["data"][0] == "b");
            assert_eq!(v["data"][1].as_u64(), Some(next[who]), "node {n}: {v}");
            next[who] += 1;
        }
        expect_silence(ws, Duration::from_millis(300)).await;
    }
    close_all(clients, nodes).await;
}

/// A node that died without shutting down stops being counted once its record expires, and
/// the expired record is removed from Redis.
#[tokio::test]
async fn a_dead_nodes_clients_leave_the_cluster_count_when_its_record_expires() {
    let redis = RedisServer::start().await;
    let a = node(&[redis.url()]).await;
    let on_a = a.connect().await;
    // A record as a node that died 5.5 s after its last report would have left (it lives
    // 6 s): 7 clients, expiring in half a second by Redis's clock.
    let redis::Value::Array(time) = redis.query(&["TIME"]).await.unwrap() else {
        panic!("TIME reply");
    };
    let secs: u64 = redis::from_redis_value(time[0].clone()).unwrap();
    let micros: u64 = redis::from_redis_value(time[1].clone()).unwrap();
    let expires = (secs * 1000 + micros / 1000 + 500).to_string();
    redis
        .query(&["ZADD", "wshub:nodes", &expires, "dead"])
        .await
        .unwrap();
    redis
        .query(&["HSET", "wshub:clients", "dead", "7"])
        .await
        .unwrap();
    assert_eq!(a.hub.cluster_stats().await.unwrap().unwrap().clients, 8);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.hub.cluster_stats().await.unwrap().unwrap().clients, 1);
    let left = redis.query(&["HEXISTS", "wshub:clients", "dead"]).await;
    assert_eq!(left.unwrap(), redis::Value::Int(0));
    close(on_a).await;
    a.stop().await;
}

#[tokio::test]
async fn cluster_stats_count_nodes_channels_and_clients_over_every_node() {
    let (r1, r2) = (RedisServer::start().await, RedisServer::start().await);
    let urls = [r1.url(), r2.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut on_a = a.connect().await;
    let mut on_b = b.connect().await;
    for ch in ["shared", "a-only"] {
        subscribe(&mut on_a, ch).await;
    }
    for ch in ["shared", "b-only", "b-too"] {
        subscribe(&mut on_b, ch).await;
    }
    // Each node reports a change of its client count within a quarter of a second.
    let deadline = tokio::time::Instant::now() + WAIT;
    let stats = loop {
        let stats = a.hub.cluster_stats().await.unwrap().expect("a broker");
        if stats.clients == 2 || tokio::time::Instant::now() >= deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (stats.nodes, stats.channels, stats.clients),
        (2, 4, 2),
        "{stats:?}"
    );
    assert_eq!(a.hub.stats().channels, 2, "this node's own count");
    // The HTTP API reports both.
    let resp = http_full(b.addr, "GET", "/api/stats", &[], b"").await;
    let v = resp.json();
    assert_eq!(v["channels"], 3, "{v}");
    assert_eq!(
        v["cluster"],
        serde_json::json!({"nodes": 2, "channels": 4, "clients": 2}),
        "{v}"
    );
    // ... and so does /metrics.
    let metrics = http_full(b.addr, "GET", "/metrics", &[], b"").await;
    let text = &metrics.body;
    for line in [
        "wshub_cluster_nodes 2",
        "wshub_cluster_channels 4",
        "wshub_cluster_clients 2",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    // More clients on b: b's own share is exact at once, and a sees them after b's report.
    let more_on_b = [b.connect().await, b.connect().await];
    eventually("b counts its new clients", || b.hub.client_count() == 3).await;
    assert_eq!(b.hub.cluster_stats().await.unwrap().unwrap().clients, 4);
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.hub.cluster_stats().await.unwrap().unwrap().clients != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "b's new clients not reported"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A node that goes away (shuts down) leaves the counts at once.
    close(on_b).await;
    for ws in more_on_b {
        close(ws).await;
    }
    b.stop().await;
    // Sooner than the 6 s that the record of a node that died without shutting down lives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let s = a.hub.cluster_stats().await.unwrap().unwrap();
        if (s.nodes, s.channels, s.clients) == (1, 2, 1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node b still counted: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Without a broker there are no cluster counts.
    let single = TestServer::start(Hub::new()).await;
    assert_eq!(single.hub.cluster_stats().await.unwrap(), None);
    let v = http_full(single.addr, "GET", "/api/stats", &[], b"")
        .await
        .json();
    assert!(v.get("cluster").is_none(), "{v}");
    close(on_a).await;
    a.stop().await;
    single.stop().await;
}

#[tokio::test]
async fn redis_subscriptions_follow_local_interest() {
    let redis = RedisServer::start().await;
    let a = node(&[redis.url()]).await;
    assert_eq!(
        redis.channels().await,
        ["wshub:b"],
        "only the broadcast channel at start"
    );
    let mut c1 = a.connect().await;
    let mut c2 = a.connect().await;
    subscribe(&mut c1, "news").await;
    // The subscribe completed only after Redis confirmed it.
    assert_eq!(redis.channels().await, ["wshub:b", "wshub:c:news"]);
    subscribe(&mut c2, "news").await;
    unsubscribe(&mut c1, "news").await;
    assert_eq!(
        redis.channels().await,
        ["wshub:b", "wshub:c:news"],
        "one local subscriber left"
    );
    close(c2).await; // the last local subscriber leaves by disconnecting
    let mut last = Vec::new();
    for _ in 0..200 {
        last = redis.channels().await;
        if last == ["wshub:b"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        last,
        ["wshub:b"],
        "the last local leave unsubscribes in Redis"
    );
    // Join, leave and join again in quick succession: the node ends up subscribed.
    for _ in 0..20 {
        subscribe(&mut c1, "flap").await;
        unsubscribe(&mut c1, "flap").await;
    }
    subscribe(&mut c1, "flap").await;
    assert!(redis.channels().await.contains(&"wshub:c:flap".to_owned()));
    let b = node(&[redis.url()]).await;
    b.hub.publish("flap", &numbered(7)).await.unwrap();
    assert_eq!(numbers(&mut c1, 1).await, [7]);
    close(c1).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn broker_messages_no_node_could_send_are_counted_and_not_delivered() {
    let redis = RedisServer::start().await;
    let a = node(&[redis.url()]).await;
    let mut ws = a.connect().await;
    subscribe(&mut ws, "news").await;
    // Another node's id (8 bytes), then a payload that is not UTF-8: clients would get an
    // invalid text frame and fail the connection with 1007.
    let mut bad = b"other-nd".to_vec();
    bad.extend_from_slice(b"{\"data\":\"\xff\xfe\"}");
    redis
        .query_bytes(&[b"PUBLISH", b"wshub:c:news", &bad])
        .await
        .unwrap();
    // Larger than a client's queue (1 MiB by default).
    let mut huge = b"other-nd".to_vec();
    huge.resize(8 + (1 << 20) + 1, b' ');
    redis
        .query_bytes(&[b"PUBLISH", b"wshub:c:news", &huge])
        .await
        .unwrap();
    eventually("both are counted", || a.hub.counters().remote_rejected == 2).await;
    // The subscriber got neither, stays connected and gets the next real publication.
    let b = node(&[redis.url()]).await;
    b.hub.publish("news", &numbered(1)).await.unwrap();
    assert_eq!(numbers(&mut ws, 1).await, [1]);
    assert_eq!(a.hub.counters().slow_consumer_disconnects, 0);
    let (status, metrics) = http(a.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("\nwshub_remote_rejected_total 2\n"),
        "{metrics}"
    );
    close(ws).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_two_redis_shards_every_channel_works() {
    let (r1, r2) = (RedisServer::start().await, RedisServer::start().await);
    let urls = [r1.url(), r2.url()];
    let (a, b) = (chat_node(&urls).await, chat_node(&urls).await);
    let mut ws = a.connect().await;
    // 40 plain channels and 10 with history (kept on whichever shard their name maps to).
    let plain: Vec<String> = (0..40).map(|i| format!("shard-test-{i}")).collect();
    let history: Vec<String> = (0..10).map(|i| format!("chat:h{i}")).collect();
    for c in &plain {
        subscribe(&mut ws, c).await;
    }
    for c in &history {
        send(
            &mut ws,
            &format!(r#"{{"type":"subscribe","channel":"{c}"}}"#),
        )
        .await;
        assert_eq!(recv_json(&mut ws).await["type"], "subscribed");
    }
    let (n1, n2) = (r1.channels().await.len(), r2.channels().await.len());
    assert_eq!(n1 + n2, 51, "50 channels plus the broadcast channel");
    assert!(
        n1 > 5 && n2 > 5,
        "channels are spread over both shards: {n1} / {n2}"
    );
    for (i, c) in plain.iter().chain(&history).enumerate() {
        b.hub.publish(c, &numbered(i)).await.unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..50 {
        let v = recv_json(&mut ws).await;
        let (channel, n) = (v["channel"].as_str().unwrap(), v["data"].as_u64().unwrap());
        if channel.starts_with("chat:h") {
            assert_eq!(v["offset"], 1, "{v}");
        }
        got.push(n);
    }
    got.sort_unstable();
    assert_eq!(got, (0..50).collect::<Vec<u64>>());
    let mut streams = Vec::new();
    for r in [&r1, &r2] {
        match r.query(&["KEYS", "wshub:s:*"]).await.unwrap() {
            redis::Value::Array(keys) => streams.push(keys.len()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(streams.iter().sum::<usize>(), 10, "{streams:?}");
    assert!(
        streams.iter().all(|&n| n > 0),
        "history on both shards: {streams:?}"
    );
    // A broadcast goes through the first shard and reaches the other node's client.
    b.hub.broadcast(&numbered(99)).await.unwrap();
    assert_eq!(numbers(&mut ws, 1).await, [99]);
    close(ws).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn nodes_survive_a_redis_restart_and_outage_publishes_fail_loudly() {
    let mut redis = RedisServer::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut on_a = a.connect().await;
    let mut on_b = b.connect().await;
    subscribe(&mut on_a, "live").await;
    subscribe(&mut on_b, "live").await;
    b.hub.publish("live", &numbered(1)).await.unwrap();
    assert_eq!(numbers(&mut on_a, 1).await, [1]);
    assert_eq!(numbers(&mut on_b, 1).await, [1]);

    redis.kill();
    // During the outage: local delivery continues, and the publisher is told the message did
    // not reach other nodes.
    let err = loop {
        match b.hub.publish("live", &numbered(2)).await {
            Err(e) => break e,
            // The connection loss may not be noticed by the very first publish.
            Ok(_) => assert_eq!(numbers(&mut on_b, 1).await, [2]),
        }
    };
    match &err {
        PublishError::Broker { local, .. } => assert_eq!(local.enqueued, 1),
        other => panic!("expected a broker error, got {other:?}"),
    }
    assert_eq!(
        numbers(&mut on_b, 1).await,
        [2],
        "delivered locally despite the outage"
    );
    let (status, body) = http(
        b.addr,
        "POST",
        "/api/publish",
        &[],
        br#"{"channel":"live","data":3}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(numbers(&mut on_b, 1).await, [3]);
    // The operator sees the outage in the stats and the metrics.
    let broker = |node: &TestServer| {
        let addr = node.addr;
        async move {
            let v = http_full(addr, "GET", "/api/stats", &[], b"").await.json();
            v["counters"]["broker"].clone()
        }
    };
    let stats = broker(&b).await;
    assert!(stats["publish_errors"].as_u64() >= Some(2), "{stats}");
    assert_eq!(stats["shards"], 1, "{stats}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker(&b).await["connected_shards"] != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outage never showed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    redis.restart().await;
    // Both nodes reconnect and re-subscribe; then delivery across nodes works again.
    eventually("both nodes re-subscribed", || {
        a.hub.counters().broker.reconnects >= 1 && b.hub.counters().broker.reconnects >= 1
    })
    .await;
    let mut i = 100;
    loop {
        match b.hub.publish("live", &numbered(i)).await {
            Ok(_) => {
                assert_eq!(numbers(&mut on_b, 1).await, [i as u64]);
                break;
            }
            Err(PublishError::Broker { .. }) => {
                // The publishing connection is still reconnecting: delivered locally only.
                assert_eq!(numbers(&mut on_b, 1).await, [i as u64]);
                i += 1;
                assert!(i < 500, "the publisher never reconnected");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        numbers(&mut on_a, 1).await,
        [i as u64],
        "cross-node delivery is back"
    );
    assert!(b.hub.counters().broker.publish_errors >= 1);
    let metrics = http_full(b.addr, "GET", "/metrics", &[], b"").await.body;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    assert!(value("wshub_broker_publish_errors_total") >= 2.0);
    assert!(value("wshub_broker_reconnects_total") >= 1.0);
    assert_eq!(value("wshub_broker_connected_shards"), 1.0);
    close_all(vec![on_a, on_b], [a, b]).await;
}

#[tokio::test]
async fn a_node_joining_late_gets_only_what_is_published_after_it_subscribed() {
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let a = node(&urls).await;
    let mut early = a.connect().await;
    subscribe(&mut early, "feed").await;
    for i in 0..5 {
        a.hub.publish("feed", &numbered(i)).await.unwrap();
    }
    let late_node = node(&urls).await;
    let mut late = late_node.connect().await;
    subscribe(&mut late, "feed").await;
    for i in 5..10 {
        a.hub.publish("feed", &numbered(i)).await.unwrap();
    }
    assert_eq!(numbers(&mut early, 10).await, (0..10).collect::<Vec<u64>>());
    assert_eq!(numbers(&mut late, 5).await, (5..10).collect::<Vec<u64>>());
    expect_silence(&mut late, Duration::from_millis(100)).await;
    close(early).await;
    close(late).await;
    a.stop().await;
    late_node.stop().await;
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_a_clear_error() {
    let port = free_addr().port();
    let config =
        RedisConfig::new([format!("redis://127.0.0.1:{port}")]).timeout(Duration::from_millis(300));
    let err = Hub::builder().redis(config).connect().await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cannot connect") && text.contains(&port.to_string()),
        "{text}"
    );
    assert!(matches!(err, wshub::Error::Broker(_)));
    // `build` refuses a Redis configuration instead of silently ignoring it.
    let config = RedisConfig::new(["redis://127.0.0.1:1"]);
    assert!(Hub::builder().redis(config).build().is_err());
}

#[tokio::test]
async fn pipelined_client_publishes_keep_their_order_and_replies_keep_request_order() {
    let mut redis = RedisServer::start().await;
    let urls = [redis.url()];
    let a = chat_node(&urls).await;
    let b = node(&urls).await;
    let mut listener = b.connect().await;
    subscribe(&mut listener, "chat:1").await;
    let mut talker = a.connect().await;
    // A burst (more than the 64 a connection may have in flight, within the rate limit's
    // burst of 200): many publishes wait for Redis at once, and still arrive in order, once each.
    for i in 0..150 {
        send(
            &mut talker,
            &format!(r#"{{"type":"publish","channel":"chat:1","data":{i}}}"#),
        )
        .await;
    }
    sync(&mut talker).await;
    let expected: Vec<u64> = (0..150).collect();
    assert_eq!(numbers(&mut listener, 150).await, expected);
    expect_silence(&mut listener, Duration::from_millis(100)).await;

    // With Redis gone, a publish fails after the broker's timeout, while the next requests
    // could be answered at once: their replies still come in request order.
    redis.kill();
    eventually("node A lost Redis", || {
        a.hub.counters().broker.connected_shards == 0
    })
    .await;
    send(
        &mut talker,
        r#"{"type":"publish","channel":"chat:1","data":"lost"}"#,
    )
    .await;
    send(
        &mut talker,
        r#"{"type":"publish","channel":"news","data":"refused"}"#,
    )
    .await;
    send(&mut talker, r#"{"type":"ping"}"#).await;
    let first = recv_json(&mut talker).await;
    assert_eq!(first["type"], "error", "{first}");
    assert!(
        first["data"].as_str().unwrap().contains("Redis"),
        "the broker failure first: {first}"
    );
    let second = recv_json(&mut talker).await;
    assert!(
        second["data"].as_str().unwrap().contains("not allowed"),
        "then the refused publish: {second}"
    );
    assert_eq!(
        recv_json(&mut talker).await["type"],
        "pong",
        "then the pong"
    );
    close(listener).await;
    close(talker).await;
    a.stop().await;
    b.stop().await;
}

/// Sends `{"type":"publish","channel":C,"data":i}` for each `i`, without waiting.
async fn publish_burst(ws: &mut Ws, channel: &str, range: std::ops::Range<u64>) {
    for i in range {
        send(
            ws,
            &format!(r#"{{"type":"publish","channel":"{channel}","data":{i}}}"#),
        )
        .await;
    }
}

#[tokio::test]
async fn publishes_sent_right_before_a_close_frame_still_reach_other_nodes() {
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let (a, b) = (chat_node(&urls).await, node(&urls).await);
    let mut listener = b.connect().await;
    subscribe(&mut listener, "chat:1").await;
    for round in 0..5u64 {
        let mut talker = a.connect().await;
        publish_burst(&mut talker, "chat:1", round * 100..round * 100 + 60).await;
        // The close frame is read while the publishes may still wait for Redis: they are
        // carried out first, then the close handshake completes.
        close(talker).await;
        let expected: Vec<u64> = (round * 100..round * 100 + 60).collect();
        assert_eq!(numbers(&mut listener, 60).await, expected, "round {round}");
    }
    expect_silence(&mut listener, Duration::from_millis(100)).await;
    close(listener).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn history_publishes_from_one_client_stay_in_order_across_script_reloads() {
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let (a, b) = (chat_node(&urls).await, chat_node(&urls).await);
    let mut listener = b.connect().await;
    send(&mut listener, r#"{"type":"subscribe","channel":"chat:h1"}"#).await;
    let answer = sync_collect(&mut listener).await;
    assert!(
        answer[0].starts_with(r#"{"type":"subscribed""#),
        "{answer:?}"
    );
    let mut talker = a.connect().await;
    for round in 0..5u64 {
        // With the script gone, the first publish is refused (NOSCRIPT), loads the script and
        // retries: a later publish must not overtake it.
        redis.query(&["SCRIPT", "FLUSH"]).await.unwrap();
        // Spread over about a Redis round trip, so that later publishes would reach Redis
        // between the first one's refusal and its retry.
        for i in round * 20..round * 20 + 20 {
            publish_burst(&mut talker, "chat:h1", i..i + 1).await;
            tokio::time::sleep(Duration::from_micros(50 * (i % 4))).await;
        }
        sync(&mut talker).await;
        let expected: Vec<u64> = (round * 20..round * 20 + 20).collect();
        assert_eq!(numbers(&mut listener, 20).await, expected, "round {round}");
    }
    close(talker).await;
    close(listener).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn every_subscriber_waits_for_the_channels_redis_subscription_not_only_the_first() {
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let mut first = a.connect().await;
    let mut second = a.connect().await;
    // Redis holds every command for a while: node A's SUBSCRIBE too.
    redis
        .query(&["CLIENT", "PAUSE", "500", "ALL"])
        .await
        .unwrap();
    let paused = tokio::time::Instant::now();
    send(&mut first, r#"{"type":"subscribe","channel":"slow"}"#).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // the channel exists now
    subscribe(&mut second, "slow").await; // answered (its ping) once the subscription is active
    assert!(
        paused.elapsed() >= Duration::from_millis(400),
        "the second subscriber was answered before Redis confirmed ({:?})",
        paused.elapsed()
    );
    sync(&mut first).await;
    // Both are subscribed in Redis now: a publish on another node reaches both.
    b.hub.publish("slow", &numbered(1)).await.unwrap();
    assert_eq!(numbers(&mut first, 1).await, [1]);
    assert_eq!(numbers(&mut second, 1).await, [1]);
    close(first).await;
    close(second).await;
    a.stop().await;
    b.stop().await;
}

/// Clients on node A join and leave a channel over and over (so A subscribes and unsubscribes
/// the channel in Redis again and again, first joins racing last leaves) while node B
/// publishes numbered messages all the time: every client gets, in order and without a gap,
/// every message published after its subscribe was answered, until its unsubscribe was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_racing_on_one_node_lose_nothing_published_meanwhile() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let redis = RedisServer::start().await;
    let urls = [redis.url()];
    let (a, b) = (node(&urls).await, node(&urls).await);
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, published, stop) = (b.hub.clone(), published.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                i += 1;
                hub.publish("flap", &numbered(i)).await.unwrap();
                published.store(i as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..8u64 {
        let (url, published) = (a.ws_url(), published.clone());
        clients.spawn(async move {
            let mut ws = connect(&url).await;
            for round in 0..10u64 {
                send(&mut ws, r#"{"type":"subscribe","channel":"flap"}"#).await;
                // Before the pong: only messages that may have been on their way.
                let early = sync_collect(&mut ws).await;
                let after = published.load(Ordering::SeqCst);
                let mut got: Vec<u64> = early
                    .iter()
                    .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap()["data"].as_u64().unwrap())
                    .collect();
                for _ in 0..3 {
                    got.push(recv_json(&mut ws).await["data"].as_u64().unwrap());
                }
                send(&mut ws, r#"{"type":"unsubscribe","channel":"flap"}"#).await;
                for t in sync_collect(&mut ws).await {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    got.push(v["data"].as_u64().unwrap());
                }
                let first = got[0];
                assert!(
                    first <= after + 1,
                    "client {c} round {round}: first message {first}, but {after} were published before the answer"
                );
                let expected: Vec<u64> = (first..first + got.len() as u64).collect();
                assert_eq!(got, expected, "client {c} round {round}: a gap or a duplicate");
                // Out of the channel for a moment, so that the last leave happens often.
                tokio::time::sleep(Duration::from_millis(1 + (c + round) % 4)).await;
            }
            close(ws).await;
        });
    }
    while let Some(r) = clients.join_next().await {
        r.expect("client task");
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    a.stop().await;
    b.stop().await;
}
