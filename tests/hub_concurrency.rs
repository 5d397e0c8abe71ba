//! Many tasks connecting, subscribing and publishing at once lose nothing (multi-threaded
//! runtime, real sockets).

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use support::*;
use tokio::sync::Barrier;
use wshub::{ChannelPattern, Hub, HubConfig, Json, Message};

fn numbered(i: usize) -> Message {
    Message::new("event").with_data(Json::parse(i.to_string()).unwrap())
}

fn number_of(text: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["data"]
        .as_u64()
        .unwrap_or_else(|| panic!("numbered: {text}")) as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_connects_and_fifty_concurrent_broadcasts_lose_nothing() {
    let server = TestServer::start(Hub::new()).await;
    let url = server.ws_url();
    let connects: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                sync(&mut ws).await;
                ws
            })
        })
        .collect();
    let mut clients = Vec::new();
    for c in connects {
        clients.push(c.await.unwrap());
    }
    assert_eq!(server.hub.client_count(), 50);

    let broadcasts: Vec<_> = (0..50)
        .map(|i| {
            let hub = server.hub.clone();
            tokio::spawn(async move { hub.broadcast(&numbered(i)).await.unwrap() })
        })
        .collect();
    for b in broadcasts {
        let report = b.await.unwrap();
        assert_eq!(
            (report.enqueued, report.dropped, report.disconnected),
            (50, 0, 0)
        );
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut got = BTreeSet::new();
                for _ in 0..50 {
                    assert!(got.insert(number_of(&recv(&mut ws).await)), "no duplicates");
                }
                sync(&mut ws).await;
                got
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), (0..50).collect::<BTreeSet<_>>());
    }
    assert_eq!(server.hub.counters().delivered, 50 * 50);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_connecting_during_a_broadcast_stream_miss_nothing_after_joining() {
    // Bounds what a client that is not reading yet must hold: 10,000 small messages, far
    // below the queue bound configured here.
    const MAX_BROADCASTS: usize = 10_000;
    let server = TestServer::with_config(HubConfig::default().max_queued_bytes(8 << 20)).await;
    let hub = server.hub.clone();
    let url = server.ws_url();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One broadcaster numbers its messages; the order of its broadcasts is total.
    let broadcaster = tokio::spawn({
        let (hub, stop) = (hub.clone(), stop.clone());
        async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) && i < MAX_BROADCASTS {
                hub.broadcast(&numbered(i)).await.unwrap();
                i += 1;
                if i % 4 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            i
        }
    });
    // Three waves of ten concurrent connects, all while the broadcasts stream.
    let mut connected = Vec::new();
    for _wave in 0..3 {
        let clients: Vec<_> = (0..10)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut ws = connect(&url).await;
                    // Read (and keep) everything up to the pong: the client is registered.
                    let early = sync_collect(&mut ws).await;
                    (ws, early)
                })
            })
            .collect();
        for c in clients {
            connected.push(c.await.unwrap());
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = broadcaster.await.unwrap();
    // A final marker reaches everyone.
    hub.broadcast(&numbered(total)).await.unwrap();
    let readers: Vec<_> = connected
        .into_iter()
        .map(|(mut ws, early)| {
            tokio::spawn(async move {
                let mut got: Vec<usize> = early.iter().map(|t| number_of(t)).collect();
                loop {
                    let n = number_of(&recv(&mut ws).await);
                    got.push(n);
                    if n == total {
                        break;
                    }
                }
                drop(ws);
                got
            })
        })
        .collect();
    for r in readers {
        let got = r.await.unwrap();
        // From its first message on, a client gets every later broadcast, in order.
        let first = got[0];
        assert_eq!(got, (first..=total).collect::<Vec<_>>());
    }
    server.stop().await;
}

/// (from, seq) of a client-published event.
fn parse_from_seq(text: &str) -> (usize, usize) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(v["type"], "event", "{text}");
    let from = v["data"]["from"].as_u64().unwrap() as usize;
    let seq = v["data"]["seq"].as_u64().unwrap() as usize;
    (from, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_subscribe_and_client_publish_lose_nothing() {
    const CLIENTS: usize = 20;
    const MESSAGES: usize = 20;
    let config = HubConfig::default().client_publish(vec![ChannelPattern::new("room").unwrap()]);
    let server = TestServer::with_config(config).await;
    let url = server.ws_url();
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|me| {
            let (url, barrier) = (url.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut ws = connect(&url).await;
                sync(&mut ws).await;
                barrier.wait().await;
                // Everyone subscribes and publishes at once: some publishes race with other
                // clients' subscriptions.
                send(&mut ws, r#"{"type":"subscribe","channel":"room"}"#).await;
                for seq in 0..MESSAGES {
                    let req = format!(
                        r#"{{"type":"publish","channel":"room","data":{{"from":{me},"seq":{seq}}}}}"#
                    );
                    send(&mut ws, &req).await;
                }
                // Wait until every client has subscribed (and published everything), then one
                // last message each, which every client must receive.
                let mut received: Vec<(usize, usize)> = Vec::new();
                for text in sync_collect(&mut ws).await {
                    received.push(parse_from_seq(&text));
                }
                barrier.wait().await;
                let last = format!(
                    r#"{{"type":"publish","channel":"room","data":{{"from":{me},"seq":{MESSAGES}}}}}"#
                );
                send(&mut ws, &last).await;
                let mut finals = 0;
                while finals < CLIENTS {
                    let (from, seq) = parse_from_seq(&recv(&mut ws).await);
                    received.push((from, seq));
                    if seq == MESSAGES {
                        finals += 1;
                    }
                }
                (me, received, ws)
            })
        })
        .collect();
    let mut total_received = 0;
    let mut sockets = Vec::new();
    for t in tasks {
        let (me, received, ws) = t.await.unwrap();
        sockets.push(ws);
        total_received += received.len();
        let mut by_sender: HashMap<usize, Vec<usize>> = HashMap::new();
        for (from, seq) in received {
            by_sender.entry(from).or_default().push(seq);
        }
        assert_eq!(by_sender.len(), CLIENTS, "client {me} hears every sender");
        for (from, seqs) in by_sender {
            // From each sender: a gapless, in-order run ending with its final message. The
            // client's own messages all arrive (it subscribed before publishing).
            let first = seqs[0];
            assert_eq!(
                seqs,
                (first..=MESSAGES).collect::<Vec<_>>(),
                "client {me} from {from}"
            );
            if from == me {
                assert_eq!(first, 0, "client {me} gets all of its own messages");
            }
        }
    }
    // Every delivery the hub counted was received, exactly once.
    assert_eq!(server.hub.counters().delivered, total_received as u64);
    assert_eq!(server.hub.channel_subscriber_count("room"), CLIENTS);
    drop(sockets);
    eventually("all gone", || {
        server.hub.client_count() == 0 && server.hub.channel_count() == 0
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_churn_from_many_tasks_stays_consistent() {
    const CLIENTS: usize = 16;
    const CHANNELS: usize = 8;
    let server = TestServer::start(Hub::new()).await;
    let hub = server.hub.clone();
    let mut sockets = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..CLIENTS {
        let (ws, id) = server.connect_client().await;
        sockets.push(ws);
        ids.push(id);
    }
    // Publishers hammer the channels while the membership changes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishers: Vec<_> = (0..2)
        .map(|p| {
            let (hub, stop) = (hub.clone(), stop.clone());
            tokio::spawn(async move {
                // Capped, so that the clients (which do not read) stay far below their bound.
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && n < 2_000 {
                    let ch = format!("ch{}", n as usize % CHANNELS);
                    let report = hub.publish(&ch, &Message::new("event")).await.unwrap();
                    assert_eq!(report.dropped + report.disconnected, 0, "publisher {p}");
                    n += 1;
                    if n % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    // Each task toggles its client's subscriptions many times, ending subscribed to the
    // channels whose index has the same parity as the client's index.
    let churners: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let client = hub.client(id).unwrap();
                for round in 0..50 {
                    for c in 0..CHANNELS {
                        let ch = format!("ch{c}");
                        if (round + c + k) % 2 == 0 {
                            client.subscribe(&ch).unwrap();
                        } else {
                            client.unsubscribe(&ch).unwrap();
                        }
                    }
                    tokio::task::yield_now().await;
                }
                for c in 0..CHANNELS {
                    let ch = format!("ch{c}");
                    if c % 2 == k % 2 {
                        client.subscribe(&ch).unwrap();
                    } else {
                        client.unsubscribe(&ch).unwrap();
                    }
                }
            })
        })
        .collect();
    for c in churners {
        c.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for p in publishers {
        p.await.unwrap();
    }
    for c in 0..CHANNELS {
        let expected = (0..CLIENTS).filter(|k| k % 2 == c % 2).count();
        assert_eq!(hub.channel_subscriber_count(&format!("ch{c}")), expected);
    }
    assert_eq!(hub.channel_count(), CHANNELS);
    for (k, &id) in ids.iter().enumerate() {
        let subs = subscriptions(&hub.client(id).unwrap());
        let expected: Vec<String> = (0..CHANNELS)
            .filter(|c| c % 2 == k % 2)
            .map(|c| format!("ch{c}"))
            .collect();
        assert_eq!(subs, expected);
    }
    // Every client is still healthy; a final publish reaches exactly the expected clients.
    let report = hub.publish("ch0", &numbered(7)).await.unwrap();
    assert_eq!(report.enqueued, CLIENTS / 2);
    drop(sockets);
    eventually("all gone", || {
        hub.client_count() == 0 && hub.channel_count() == 0
    })
    .await;
    server.stop().await;
}
