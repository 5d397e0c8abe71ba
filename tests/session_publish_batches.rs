//! Publishes that a client pipelines (several in one read) are framed into one buffer and
//! queued as one chunk per subscriber: subscribers still get exactly what publishing them one
//! by one gives, frame for frame, in order, within the same queue bounds.

mod support;

use support::*;
use wshub::frame::{encode_masked, OpCode};
use wshub::{ChannelPattern, HubConfig, SlowConsumerPolicy};

/// The masked frames of `texts`, one after another, for one socket write.
fn pipelined(texts: &[String]) -> Vec<u8> {
    texts
        .iter()
        .flat_map(|t| encode_masked(OpCode::Text as u8, true, 0, t.as_bytes(), [1, 2, 3, 4]))
        .collect()
}

fn publish(channel: &str, n: usize) -> String {
    format!(r#"{{"type":"publish","channel":"{channel}","data":{n}}}"#)
}

fn event(channel: &str, n: usize) -> String {
    format!(r#"{{"type":"event","channel":"{channel}","data":{n},"timestamp":"TS"}}"#)
}

fn config(max_queued_bytes: usize, policy: SlowConsumerPolicy) -> HubConfig {
    HubConfig::default()
        .client_publish(vec![ChannelPattern::new("*").unwrap()])
        .max_queued_bytes(max_queued_bytes)
        .slow_consumer(policy)
}

/// A server, a detached subscriber of "room" and a raw publisher, which sends `texts` in one
/// write and syncs (so they were all read and published).
async fn publish_to_detached(
    config: HubConfig,
    texts: &[String],
) -> (TestServer, wshub::Client, Raw, wshub::Counters) {
    let server = TestServer::with_config(config).await;
    let subscriber = server.hub.detached_client();
    server.hub.subscribe(&subscriber, "room").unwrap();
    let (mut publisher, _) = server.raw_client().await;
    let before = server.hub.counters();
    publisher.write(&pipelined(texts)).await;
    publisher.sync().await;
    (server, subscriber, publisher, before)
}

/// The payloads of drained frames, timestamps masked.
fn payloads(frames: &[bytes::Bytes]) -> Vec<String> {
    frames
        .iter()
        .map(|f| mask_timestamp(std::str::from_utf8(wshub::frame::payload(f)).unwrap()))
        .collect()
}

/// What one subscriber reads until the pong of its sync, timestamps masked.
async fn received(raw: &mut Raw) -> Vec<String> {
    raw.sync().await.iter().map(|t| mask_timestamp(t)).collect()
}

#[tokio::test(flavor = "current_thread")]
async fn pipelined_publishes_arrive_as_separate_frames_in_order_around_other_requests() {
    let server = TestServer::with_config(config(1 << 20, SlowConsumerPolicy::Disconnect)).await;
    let (mut publisher, _) = server.raw_client().await;
    let (mut both, _) = server.raw_client().await;
    let (mut other_only, _) = server.raw_client().await;
    for (raw, channels) in [
        (&mut publisher, &["room"][..]),
        (&mut both, &["room", "other"][..]),
        (&mut other_only, &["other"][..]),
    ] {
        for c in channels {
            raw.send_text(&format!(r#"{{"type":"subscribe","channel":"{c}"}}"#))
                .await;
        }
        raw.sync().await;
    }
    let before = server.hub.counters();

    // One write: runs of publishes on two channels, broken by a ping, an unknown request (an
    // error reply) and a refused publish (an invalid channel name).
    let mut texts: Vec<String> = (0..30).map(|n| publish("room", n)).collect();
    texts.push(r#"{"type":"ping"}"#.to_owned());
    texts.extend((30..40).map(|n| publish("other", n)));
    texts.extend((40..50).map(|n| publish("room", n)));
    texts.push(r#"{"type":"nonsense"}"#.to_owned());
    texts.extend((50..55).map(|n| publish("room", n)));
    texts.push(publish("bad channel", 99));
    texts.extend((55..60).map(|n| publish("room", n)));
    publisher.write(&pipelined(&texts)).await;

    let room = |r: std::ops::Range<usize>| r.map(|n| event("room", n)).collect::<Vec<_>>();
    let other = |r: std::ops::Range<usize>| r.map(|n| event("other", n)).collect::<Vec<_>>();

    // The publisher gets its own room messages, with its replies exactly where it asked.
    let mut expected = room(0..30);
    expected.push(r#"{"type":"pong","timestamp":"TS"}"#.to_owned());
    expected.extend(room(40..50));
    expected.push(
        r#"{"type":"error","data":"unsupported message type \"nonsense\"","timestamp":"TS"}"#
            .to_owned(),
    );
    expected.extend(room(50..55));
    let mut own = Vec::new();
    for _ in 0..expected.len() + 6 {
        own.push(mask_timestamp(&publisher.read_text().await));
    }
    assert_eq!(own[..expected.len()], expected[..]);
    assert!(
        own[expected.len()].starts_with(r#"{"type":"error","data":"invalid channel name"#),
        "{}",
        own[expected.len()]
    );
    assert_eq!(own[expected.len() + 1..], room(55..60)[..]);
    assert!(publisher.sync().await.is_empty(), "nothing more");

    // A subscriber of both channels gets both runs in publish order.
    let mut expected = room(0..30);
    expected.extend(other(30..40));
    expected.extend(room(40..60));
    assert_eq!(received(&mut both).await, expected);
    assert_eq!(received(&mut other_only).await, other(30..40));

    let after = server.hub.counters();
    assert_eq!(after.published - before.published, 60);
    // 50 room messages to two subscribers, 10 other messages to two.
    assert_eq!(after.delivered - before.delivered, 120);
    drop((publisher, both, other_only));
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn publishes_read_together_share_one_buffer_and_count_as_frames() {
    let texts: Vec<String> = (0..10).map(|n| publish("room", n)).collect();
    let config = config(1 << 20, SlowConsumerPolicy::Disconnect);
    let (server, subscriber, publisher, _) = publish_to_detached(config, &texts).await;

    let (frames, closed) = subscriber.drain_detached();
    assert!(!closed);
    assert_eq!(
        payloads(&frames),
        (0..10).map(|n| event("room", n)).collect::<Vec<_>>()
    );
    // Framed once, one after another in one buffer (read in one go, they are one batch).
    assert!(
        frames
            .windows(2)
            .all(|w| w[0].as_ptr().wrapping_add(w[0].len()) == w[1].as_ptr()),
        "the frames of one read are one buffer"
    );
    assert_eq!(server.hub.stats().clients, 2);
    drop(publisher);
    subscriber.disconnect_detached();
    server.stop().await;
}

/// Enough 100-byte publishes that a 2,000-byte queue holds only some of them.
fn overflowing() -> Vec<String> {
    (0..30)
        .map(|n| {
            format!(
                r#"{{"type":"publish","channel":"room","data":"{n:0>3}{}"}}"#,
                "x".repeat(40)
            )
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_that_overflows_a_queue_is_queued_frame_by_frame_under_the_drop_policy() {
    let config = config(2000, SlowConsumerPolicy::Drop);
    let (server, subscriber, publisher, before) = publish_to_detached(config, &overflowing()).await;

    let (frames, _) = subscriber.drain_detached();
    let texts = payloads(&frames);
    // The first ones, in order (frame by frame, not all or nothing), then the notice of the
    // rest, queued by the writer once there was room.
    let kept = frames.len() - 1;
    assert!((1..30).contains(&kept), "some fit, some not: {texts:?}");
    let total: usize = frames[..kept].iter().map(|f| f.len()).sum();
    assert!(total <= 2000, "within the bound: {total}");
    for (n, text) in texts[..kept].iter().enumerate() {
        assert!(text.contains(&format!(r#""data":"{n:0>3}x"#)), "{text}");
    }
    assert_eq!(
        texts[kept],
        format!(
            r#"{{"type":"error","data":"dropped {} messages","timestamp":"TS"}}"#,
            30 - kept
        )
    );
    let after = server.hub.counters();
    assert_eq!(after.published - before.published, 30);
    assert_eq!(after.delivered - before.delivered, kept as u64);
    assert_eq!(after.dropped - before.dropped, (30 - kept) as u64);
    assert_eq!(subscriber.dropped_messages(), (30 - kept) as u64);
    drop(publisher);
    subscriber.disconnect_detached();
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_batch_that_overflows_a_queue_disconnects_the_slow_consumer_once() {
    let config = config(2000, SlowConsumerPolicy::Disconnect);
    let (server, slow, publisher, before) = publish_to_detached(config, &overflowing()).await;

    // The frames that fitted are abandoned for the close 1008; one disconnect is counted,
    // however many frames the batch still had.
    let (frames, closed) = slow.drain_detached();
    assert!(closed);
    assert_eq!(frames.len(), 1, "only the close frame");
    assert_eq!(&frames[0][..4], &[0x88, 15, 0x03, 0xF0]);
    let after = server.hub.counters();
    assert_eq!(
        after.slow_consumer_disconnects - before.slow_consumer_disconnects,
        1
    );
    assert_eq!(after.published - before.published, 30);
    drop(publisher);
    slow.disconnect_detached();
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_rate_limit_close_comes_after_the_publishes_read_before_it() {
    let config = config(1 << 20, SlowConsumerPolicy::Disconnect)
        .rate_limit(Some(wshub::RateLimit::new(1, 1)));
    let server = TestServer::with_config(config).await;
    // No sync request: the bucket keeps its one token for the first publish.
    let mut publisher = server.raw().await;
    eventually("the publisher is registered", || {
        server.hub.clients().len() == 1
    })
    .await;
    let handle = server.hub.clients().remove(0);
    server.hub.subscribe(&handle, "room").unwrap();
    let other = server.hub.detached_client();
    server.hub.subscribe(&other, "room").unwrap();

    // The second publish is refused, and with a burst of 1 that first refusal closes (1008).
    publisher
        .write(&pipelined(&[publish("room", 1), publish("room", 2)]))
        .await;
    assert_eq!(
        mask_timestamp(&publisher.read_text().await),
        event("room", 1)
    );
    assert_eq!(publisher.read_close().await, Some(1008));
    let (frames, _) = other.drain_detached();
    assert_eq!(frames.len(), 1);
    other.disconnect_detached();
    drop(publisher);
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_channel_authoriser_sees_each_publish_after_the_ones_before_were_delivered() {
    // The hook acts on the client; with it, each publish is delivered before the next check.
    let hub = wshub::Hub::builder()
        .config(config(1 << 20, SlowConsumerPolicy::Disconnect))
        .authorize_channel(|client, channel, _| {
            client.send_text(&format!("checked {channel}")).unwrap();
            true
        })
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let (mut publisher, id) = server.raw_client().await;
    let handle = server
        .hub
        .clients()
        .into_iter()
        .find(|c| c.id() == id)
        .unwrap();
    server.hub.subscribe(&handle, "room").unwrap();
    publisher
        .write(&pipelined(&[publish("room", 1), publish("room", 2)]))
        .await;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(mask_timestamp(&publisher.read_text().await));
    }
    assert_eq!(
        got,
        [
            "checked room".to_owned(),
            event("room", 1),
            "checked room".to_owned(),
            event("room", 2)
        ]
    );
    drop(publisher);
    server.stop().await;
}
