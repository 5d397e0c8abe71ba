//! The `hub_ops` check: an arbitrary sequence of hub operations, applied to a real [`Hub`]
//! (with detached clients, `wshub::internals`) and to a simple model.
//!
//! The input is a [`Setup`] (slow-consumer policy, a small byte and frame bound per client, a
//! subscription limit) followed by [`Op`]s, both decoded with `arbitrary`. After every
//! operation the model and the hub must agree on: each publish/broadcast/send result
//! (enqueued, dropped, disconnected), every frame each drained client receives, in order and
//! byte for byte (including the "dropped N messages" notice and the 1008 "slow consumer"
//! close frame, as `session/outbox.rs` specifies them), each client's closed state, queued
//! bytes, dropped count and subscriptions, the client list, `client_count`, `channel_count`,
//! `channel_subscriber_count(s)` and the hub's counters. At the end everybody disconnects and
//! the hub must hold no client and no channel.
//!
//! Frames carry the time they were encoded, so their length is not known in advance. To model
//! the byte bound exactly, every publish or broadcast that has recipients also goes to a probe
//! client (a fresh detached client that subscribes just before and disconnects just after;
//! the model counts it as one more recipient that always has room): the probe's copy gives the
//! exact frame, which is checked byte for byte (timestamp within the publish's time window).
//! The one length the model cannot know is that of a "dropped N messages" notice the outbox
//! builds (with its own timestamp) when its fit is decided: where that decision depends on the
//! timestamp's length, the model accepts the hub's choice only if some valid timestamp length
//! leads to it, and takes the notice's real length from the queue once it is queued.
//!
//! Shared by `fuzz_targets/hub_ops.rs` and the main crate's `tests/fuzz_replay.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use wshub::{
    Client, Hub, HubConfig, Json, Message, PublishError, PublishReport, SendError,
    SlowConsumerPolicy, SubscribeError,
};

/// Channel names the operations pick from; the last four are invalid (empty, space,
/// non-ASCII, over [`MAX_NAME`]).
pub(crate) const CHANNELS: [&str; 9] = [
    "a",
    "b",
    "news",
    "process:1",
    "x.y-z_0",
    "",
    "bad name",
    "é",
    "seventeen-chars-x",
];

/// `max_channel_name_len` of the hub under test.
const MAX_NAME: usize = 16;

/// Operations run per input at most.
const MAX_OPS: usize = 300;

/// The hub configuration, from the first bytes of the input.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Setup {
    /// `SlowConsumerPolicy::Drop` if set, else `Disconnect`.
    pub(crate) drop_policy: bool,
    /// `max_queued_bytes` = 256 + 4 × this.
    pub(crate) queued_bytes: u8,
    /// `max_queued_frames` = 1 + this % 12 when below 200, else 16,384.
    pub(crate) queued_frames: u8,
    /// `max_subscriptions` = 1 + this % 4.
    pub(crate) max_subscriptions: u8,
}

/// One operation. `client` indexes every client connected so far (disconnected ones
/// included), modulo their number; `channel` indexes [`CHANNELS`].
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// A new detached client.
    Connect,
    Subscribe {
        client: u8,
        channel: u8,
    },
    Unsubscribe {
        client: u8,
        channel: u8,
    },
    /// `Hub::publish_local` of an `event` whose data is a string of about `pad % 64` bytes,
    /// or `(pad - 224) × 48` from 224 on (so that some frames exceed the queue bound).
    Publish {
        channel: u8,
        pad: u8,
    },
    /// `Hub::broadcast_local` of a `note` message.
    Broadcast {
        pad: u8,
    },
    /// `Client::send_text` of `1 + len` bytes (refused when its frame exceeds the queue bound).
    SendText {
        client: u8,
        len: u8,
    },
    /// A slow reader is skipped by `DrainAll`, so its queue fills up.
    SlowReader {
        client: u8,
        slow: bool,
    },
    /// Takes everything queued for one client, as its writer would.
    Drain {
        client: u8,
    },
    /// Drains every connected client that is not a slow reader.
    DrainAll,
    /// `Client::close` with a valid or invalid code.
    Close {
        client: u8,
        code: u8,
    },
    /// The client's connection drops (`Client::disconnect_detached`).
    Disconnect {
        client: u8,
    },
    /// `Hub::publish_batch_local` (what a session does with publishes read together) of
    /// `1 + count % 8` events with data strings of about `pad % 48` bytes, as many as a fresh
    /// queue holds. With the `Drop` policy (whose notices have lengths the model cannot know
    /// in a row of pushes) it is one `Publish` instead.
    PublishBatch {
        channel: u8,
        count: u8,
        pad: u8,
    },
}

/// Decodes an input into its setup and operations.
pub(crate) fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u).unwrap_or(Setup {
        drop_policy: false,
        queued_bytes: 0,
        queued_frames: 0,
        max_subscriptions: 0,
    });
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    (setup, ops)
}

/// Runs the check on one fuzz input.
pub(crate) fn check(data: &[u8]) {
    let (setup, ops) = decode(data);
    let mut model = Model::new(setup);
    for op in ops {
        model.apply(op);
        model.verify();
    }
    model.disconnect_everybody();
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

/// A frame expected in a client's queue.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    /// These exact bytes.
    Exact(Bytes),
    /// A "dropped `count` messages" error message of `len` bytes (its timestamp is unknown).
    Notice { count: u64, len: usize },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Exact(b) => b.len(),
            Item::Notice { len, .. } => *len,
        }
    }
}

/// The outbox's phase (`Phase` in outbox.rs, without abort).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Open,
    /// A close was requested; `abandon` drops queued data (slow consumer).
    Closing {
        frame: Bytes,
        abandon: bool,
    },
    /// The writer took the close frame.
    CloseTaken,
    /// Disconnected.
    Closed,
}

/// Outcome of queueing one data frame (`Enqueue` in outbox.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Queued,
    Dropped,
    SlowConsumer,
    Closed,
}

struct ModelClient {
    handle: Client,
    /// Still in the hub (not disconnected).
    registered: bool,
    /// Skipped by `DrainAll`.
    slow: bool,
    phase: Phase,
    /// Queued, not yet taken.
    data: Vec<Item>,
    /// Bytes and frames queued or taken and not yet written (outbox.rs counts both).
    bytes: usize,
    frames: usize,
    pending_drops: u64,
    dropped_total: u64,
    subs: BTreeSet<&'static str>,
}

impl ModelClient {
    /// The "dropped N messages" notice of `len` bytes was queued: it reports and resets the
    /// drops counted so far.
    fn queue_notice(&mut self, len: usize) {
        self.data.push(Item::Notice {
            count: self.pending_drops,
            len,
        });
        self.bytes += len;
        self.frames += 1;
        self.pending_drops = 0;
    }
}

/// The hub's counters this check can predict.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counters {
    published: u64,
    delivered: u64,
    dropped: u64,
    slow_consumer_disconnects: u64,
    connections: u64,
    disconnections: u64,
}

struct Model {
    hub: Hub,
    max_bytes: usize,
    max_frames: usize,
    drop_policy: bool,
    max_subscriptions: usize,
    clients: Vec<ModelClient>,
    counters: Counters,
    /// Makes every message distinct.
    seq: u64,
}

impl Model {
    fn new(setup: Setup) -> Model {
        let max_bytes = 256 + 4 * usize::from(setup.queued_bytes);
        let max_frames = if setup.queued_frames < 200 {
            1 + usize::from(setup.queued_frames % 12)
        } else {
            16_384
        };
        let max_subscriptions = 1 + usize::from(setup.max_subscriptions % 4);
        let policy = if setup.drop_policy {
            SlowConsumerPolicy::Drop
        } else {
            SlowConsumerPolicy::Disconnect
        };
        let config = HubConfig::default()
            .slow_consumer(policy)
            .max_queued_bytes(max_bytes)
            .max_queued_frames(max_frames)
            .max_subscriptions(max_subscriptions)
            .max_channel_name_len(MAX_NAME);
        let hub = Hub::builder().config(config).build().expect("valid config");
        Model {
            hub,
            max_bytes,
            max_frames,
            drop_policy: setup.drop_policy,
            max_subscriptions,
            clients: Vec::new(),
            counters: Counters::default(),
            seq: 0,
        }
    }

    /// The client an operation addresses, if any has connected.
    fn pick(&self, client: u8) -> Option<usize> {
        (!self.clients.is_empty()).then(|| usize::from(client) % self.clients.len())
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Connect => {
                let handle = self.hub.detached_client();
                self.counters.connections += 1;
                self.clients.push(ModelClient {
                    handle,
                    registered: true,
                    slow: false,
                    phase: Phase::Open,
                    data: Vec::new(),
                    bytes: 0,
                    frames: 0,
                    pending_drops: 0,
                    dropped_total: 0,
                    subs: BTreeSet::new(),
                });
            }
            Op::Subscribe { client, channel } => {
                let Some(i) = self.pick(client) else { return };
                let name = channel_name(channel);
                let real = self.clients[i].handle.subscribe(name);
                let max = self.max_subscriptions;
                let c = &mut self.clients[i];
                let expected = if !valid_name(name) {
                    Err("name")
                } else if !c.registered {
                    Err("closed")
                } else if c.subs.contains(name) {
                    Ok(false)
                } else if c.subs.len() >= max {
                    Err("too many")
                } else {
                    c.subs.insert(name);
                    Ok(true)
                };
                assert_eq!(subscribe_result(real, max), expected, "subscribe {name:?}");
            }
            Op::Unsubscribe { client, channel } => {
                let Some(i) = self.pick(client) else { return };
                let name = channel_name(channel);
                let real = self.clients[i].handle.unsubscribe(name);
                let c = &mut self.clients[i];
                let expected = if valid_name(name) {
                    Ok(c.subs.remove(name))
                } else {
                    Err("name")
                };
                assert_eq!(
                    subscribe_result(real, self.max_subscriptions),
                    expected,
                    "unsubscribe {name:?}"
                );
            }
            Op::Publish { channel, pad } => self.publish(Some(channel_name(channel)), pad),
            Op::PublishBatch {
                channel,
                count,
                pad,
            } => {
                if self.drop_policy {
                    self.publish(Some(channel_name(channel)), pad % 48);
                } else {
                    self.publish_batch(channel_name(channel), count, pad);
                }
            }
            Op::Broadcast { pad } => self.publish(None, pad),
            Op::SendText { client, len } => {
                let Some(i) = self.pick(client) else { return };
                self.seq += 1;
                let mut text = format!("t{}", self.seq);
                let len = 1 + usize::from(len);
                text.truncate(len);
                text.extend(std::iter::repeat_n('y', len - text.len()));
                let frame = text_frame(text.as_bytes());
                let real = self.clients[i].handle.send_text(&text);
                if frame.len() > self.max_bytes {
                    // No queue could hold it: refused, and nothing changes.
                    let expected = Err(SendError::TooLarge {
                        size: frame.len(),
                        limit: self.max_bytes,
                    });
                    assert_eq!(real, expected, "send_text of {len} bytes");
                    return;
                }
                let expected = match self.push(i, &frame) {
                    Outcome::Queued => Ok(()),
                    Outcome::Dropped => Err(SendError::Dropped),
                    Outcome::SlowConsumer => Err(SendError::SlowConsumer),
                    Outcome::Closed => Err(SendError::Closed),
                };
                assert_eq!(real, expected, "send_text of {len} bytes");
            }
            Op::SlowReader { client, slow } => {
                if let Some(i) = self.pick(client) {
                    self.clients[i].slow = slow;
                }
            }
            Op::Drain { client } => {
                if let Some(i) = self.pick(client) {
                    self.drain(i);
                }
            }
            Op::DrainAll => {
                for i in 0..self.clients.len() {
                    if self.clients[i].registered && !self.clients[i].slow {
                        self.drain(i);
                    }
                }
            }
            Op::Close { client, code } => {
                let Some(i) = self.pick(client) else { return };
                let code = [1000, 1001, 3000, 4999, 1005, 0][usize::from(code) % 6];
                let real = self.clients[i].handle.close(code, "bye");
                let c = &mut self.clients[i];
                let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                let expected = if !valid {
                    Err(SendError::InvalidCloseCode(code))
                } else if c.phase != Phase::Open {
                    Err(SendError::Closed)
                } else {
                    c.phase = Phase::Closing {
                        frame: close_frame(code, "bye"),
                        abandon: false,
                    };
                    Ok(())
                };
                assert_eq!(real, expected, "close with {code}");
            }
            Op::Disconnect { client } => {
                let Some(i) = self.pick(client) else { return };
                // A session unregisters its client once; so does this check.
                if self.clients[i].registered {
                    self.clients[i].handle.disconnect_detached();
                    self.unregister(i);
                }
            }
        }
    }

    /// The model side of `Hub::unregister`: the outbox is closed (its byte count stays),
    /// subscriptions are dropped.
    fn unregister(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.registered = false;
        c.phase = Phase::Closed;
        c.data.clear();
        c.subs.clear();
        self.counters.disconnections += 1;
    }

    /// Publishes to `channel` (or broadcasts, for `None`) and checks the report.
    fn publish(&mut self, channel: Option<&'static str>, pad: u8) {
        self.seq += 1;
        let mut data = format!("m{}", self.seq);
        let pad = if pad < 224 {
            usize::from(pad % 64)
        } else {
            usize::from(pad - 224) * 48
        };
        data.extend(std::iter::repeat_n('x', pad));
        let kind = if channel.is_some() { "event" } else { "note" };
        let message = Message::new(kind).with_data(Json::string(&data));
        let send = |hub: &Hub| match channel {
            Some(name) => hub.publish_local(name, &message),
            None => hub.broadcast_local(&message),
        };
        if let Some(name) = channel {
            if !valid_name(name) {
                let result = send(&self.hub);
                assert!(
                    matches!(result, Err(PublishError::ChannelName(_))),
                    "publish to {name:?}: {result:?}"
                );
                return;
            }
        }
        // The frame's size, up to the timestamp's length (RFC 3339 with trailing zeros of the
        // nanoseconds cut: 20 to 30 bytes).
        let mut bare = format!(r#"{{"type":"{kind}","#);
        if let Some(name) = channel {
            bare.push_str(&format!(r#""channel":"{name}","#));
        }
        bare.push_str(&format!(r#""data":"{data}","timestamp":""}}"#));
        let (shortest, longest) = (frame_len(bare.len() + 20), frame_len(bare.len() + 30));
        if longest > self.max_bytes {
            // Maybe too large for any queue: refused whole (nobody gets it, nothing counted),
            // exactly when the frame is over the bound.
            let probe = self.hub.detached_client();
            self.counters.connections += 1;
            if let Some(name) = channel {
                assert_eq!(probe.subscribe(name), Ok(true), "probe subscribes");
            }
            let result = send(&self.hub);
            let (frames, _) = probe.drain_detached();
            probe.disconnect_detached();
            self.counters.disconnections += 1;
            match result {
                Err(PublishError::TooLarge { size, limit }) => {
                    assert_eq!(limit, self.max_bytes, "TooLarge limit");
                    assert!(
                        size > limit && (shortest..=longest).contains(&size),
                        "TooLarge size {size} (frame {shortest}..={longest}, bound {limit})"
                    );
                    assert!(
                        frames.is_empty(),
                        "a refused publish delivered to the probe"
                    );
                    return;
                }
                Ok(report) => {
                    // It fitted after all (a short timestamp): the model delivers the frame
                    // the probe got and checks the report.
                    assert!(
                        shortest <= self.max_bytes,
                        "a frame over the bound was accepted"
                    );
                    assert_eq!(frames.len(), 1, "probe got {} frames", frames.len());
                    let frame = frames.into_iter().next().unwrap();
                    assert!(frame.len() <= self.max_bytes);
                    self.counters.published += 1;
                    let recipients = self.recipients(channel);
                    self.check_delivery(channel, recipients, &frame, report);
                    return;
                }
                Err(e) => panic!("publish of a {shortest}..={longest} byte frame: {e:?}"),
            }
        }
        self.counters.published += 1;
        let recipients = self.recipients(channel);
        if recipients.is_empty() {
            let report = send(&self.hub).expect("publish");
            assert_eq!(report, PublishReport::default(), "nobody to publish to");
            return;
        }

        let probe = self.hub.detached_client();
        self.counters.connections += 1;
        if let Some(name) = channel {
            assert_eq!(probe.subscribe(name), Ok(true), "probe subscribes");
        }
        let before = SystemTime::now();
        let report = send(&self.hub).expect("publish");
        let after = SystemTime::now();
        let (frames, closed) = probe.drain_detached();
        assert!(!closed, "probe closed");
        assert_eq!(frames.len(), 1, "probe got {} frames", frames.len());
        let frame = frames.into_iter().next().unwrap();
        let mut prefix = format!(r#"{{"type":"{kind}","#);
        if let Some(name) = channel {
            prefix.push_str(&format!(r#""channel":"{name}","#));
        }
        prefix.push_str(&format!(r#""data":"{data}","timestamp":"#));
        check_message_frame(&frame, &prefix, before, after);
        probe.disconnect_detached();
        self.counters.disconnections += 1;

        self.check_delivery(channel, recipients, &frame, report);
    }

    /// A batch of events on `name` (`Op::PublishBatch`), under the `Disconnect` policy. A
    /// probe subscriber (with an empty queue that holds the whole batch) gets the exact frames,
    /// which must be one buffer; every other subscriber's queue must take the batch whole
    /// when it fits, and otherwise frame by frame as `Outbox::push_data` would.
    fn publish_batch(&mut self, name: &'static str, count: u8, pad: u8) {
        let mut datas = Vec::new();
        let mut total_longest = 0;
        for k in 0..1 + usize::from(count % 8) {
            let mut data = format!("m{}", self.seq + 1 + k as u64);
            data.extend(std::iter::repeat_n(
                'x',
                usize::from(pad.wrapping_add(k as u8) % 48),
            ));
            // The frame at its longest (a 30-byte timestamp).
            let bare =
                format!(r#"{{"type":"event","channel":"{name}","data":"{data}","timestamp":""}}"#);
            let longest = frame_len(bare.len() + 30);
            if datas.len() >= self.max_frames || total_longest + longest > self.max_bytes {
                break;
            }
            total_longest += longest;
            datas.push(data);
        }
        self.seq += datas.len() as u64;
        let messages: Vec<Message> = datas
            .iter()
            .map(|d| Message::new("event").with_data(Json::string(d)))
            .collect();
        if !valid_name(name) {
            for result in self.hub.publish_batch_local(name, &messages) {
                assert!(
                    matches!(result, Err(PublishError::ChannelName(_))),
                    "batch to {name:?}: {result:?}"
                );
            }
            return;
        }
        let recipients = self.recipients(Some(name));
        let probe = self.hub.detached_client();
        self.counters.connections += 1;
        assert_eq!(probe.subscribe(name), Ok(true), "probe subscribes");
        let before = SystemTime::now();
        let results = self.hub.publish_batch_local(name, &messages);
        let after = SystemTime::now();
        assert!(results.iter().all(Result::is_ok), "batch: {results:?}");
        let (frames, closed) = probe.drain_detached();
        assert!(!closed, "probe closed");
        assert_eq!(
            frames.len(),
            datas.len(),
            "probe got {} frames",
            frames.len()
        );
        for (frame, data) in frames.iter().zip(&datas) {
            let prefix =
                format!(r#"{{"type":"event","channel":"{name}","data":"{data}","timestamp":"#);
            check_message_frame(frame, &prefix, before, after);
        }
        assert!(
            frames
                .windows(2)
                .all(|w| w[0].as_ptr().wrapping_add(w[0].len()) == w[1].as_ptr()),
            "a batch is one buffer"
        );
        probe.disconnect_detached();
        self.counters.disconnections += 1;
        self.counters.published += frames.len() as u64;
        self.counters.delivered += frames.len() as u64; // the probe

        let total: usize = frames.iter().map(Bytes::len).sum();
        for i in recipients {
            let c = &mut self.clients[i];
            if c.phase != Phase::Open {
                continue;
            }
            if c.bytes + total <= self.max_bytes && c.frames + frames.len() <= self.max_frames {
                c.data.extend(frames.iter().cloned().map(Item::Exact));
                c.bytes += total;
                c.frames += frames.len();
                self.counters.delivered += frames.len() as u64;
                continue;
            }
            for frame in &frames {
                match self.push(i, frame) {
                    Outcome::Queued => self.counters.delivered += 1,
                    Outcome::SlowConsumer => self.counters.slow_consumer_disconnects += 1,
                    Outcome::Closed => {}
                    Outcome::Dropped => unreachable!("the Disconnect policy drops nothing"),
                }
            }
        }
    }

    /// The model side of a publish's fan-out of `frame` to `recipients` (plus the probe,
    /// which got it): each push as `Outbox::push_data` would decide, the real `report`
    /// checked against it, the counters updated.
    fn check_delivery(
        &mut self,
        channel: Option<&str>,
        recipients: Vec<usize>,
        frame: &Bytes,
        report: PublishReport,
    ) {
        let mut expected = PublishReport::default();
        expected.enqueued = 1; // the probe
        let mut slow = 0;
        for i in recipients {
            match self.push(i, frame) {
                Outcome::Queued => expected.enqueued += 1,
                Outcome::Dropped => expected.dropped += 1,
                Outcome::SlowConsumer => {
                    expected.disconnected += 1;
                    slow += 1;
                }
                Outcome::Closed => expected.disconnected += 1,
            }
        }
        assert_eq!(report, expected, "publish report ({channel:?})");
        self.counters.delivered += expected.enqueued as u64;
        self.counters.dropped += expected.dropped as u64;
        self.counters.slow_consumer_disconnects += slow;
    }

    /// The registered clients a publish to `channel` (a broadcast for `None`) reaches.
    fn recipients(&self, channel: Option<&str>) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&i| {
                let c = &self.clients[i];
                c.registered && channel.is_none_or(|name| c.subs.contains(name))
            })
            .collect()
    }

    /// The model side of `Outbox::push_data`, called after the real push. The real queue's
    /// byte count is read only to learn the length of a notice queued by this push.
    fn push(&mut self, i: usize, frame: &Bytes) -> Outcome {
        let (max_bytes, max_frames) = (self.max_bytes, self.max_frames);
        let c = &mut self.clients[i];
        let observed = c.handle.queued_bytes();
        if c.phase != Phase::Open {
            return Outcome::Closed;
        }
        let f = frame.len();
        let fits = if c.pending_drops > 0 {
            // The notice goes first and must fit together with the frame.
            let (bytes, frames) = (c.bytes, c.frames);
            let fits_with = |n: usize| bytes + n + f <= max_bytes && frames + 2 <= max_frames;
            let lens = notice_lens(c.pending_drops);
            let queued = decide(&lens, fits_with, observed > bytes);
            if queued {
                let n = observed
                    .checked_sub(bytes + f)
                    .expect("queued bytes grew by less than the frame");
                assert!(
                    lens.contains(&n) && fits_with(n),
                    "notice of {n} bytes (possible: {lens:?})"
                );
                c.queue_notice(n);
            }
            queued
        } else {
            c.bytes + f <= max_bytes && c.frames < max_frames
        };
        if fits {
            c.data.push(Item::Exact(frame.clone()));
            c.bytes += f;
            c.frames += 1;
            Outcome::Queued
        } else if self.drop_policy {
            c.pending_drops += 1;
            c.dropped_total += 1;
            Outcome::Dropped
        } else {
            c.phase = Phase::Closing {
                frame: close_frame(1008, "slow consumer"),
                abandon: true,
            };
            c.bytes -= c.data.iter().map(Item::len).sum::<usize>();
            c.frames -= c.data.len();
            c.data.clear();
            Outcome::SlowConsumer
        }
    }

    /// Drains one client (`Client::drain_detached`: take, then count it all as written) and
    /// compares what came out with the model's `Outbox::take`.
    fn drain(&mut self, i: usize) {
        let (max_bytes, max_frames) = (self.max_bytes, self.max_frames);
        let c = &mut self.clients[i];
        let (real, real_closed) = c.handle.drain_detached();
        let mut out: Vec<Item> = Vec::new();
        let mut closed = false;
        match c.phase.clone() {
            Phase::Open => {
                if c.pending_drops > 0 {
                    // The writer queues the notice once it fits on its own.
                    let (bytes, frames) = (c.bytes, c.frames);
                    let fits = |n: usize| bytes + n <= max_bytes && frames < max_frames;
                    let lens = notice_lens(c.pending_drops);
                    let queued = decide(&lens, fits, real.len() == c.data.len() + 1);
                    if queued {
                        let n = real.last().map_or(0, Bytes::len);
                        assert!(
                            lens.contains(&n) && fits(n),
                            "notice of {n} bytes (possible: {lens:?})"
                        );
                        c.queue_notice(n);
                    }
                }
                out.append(&mut c.data);
            }
            Phase::Closing { frame, abandon } => {
                if abandon {
                    assert!(c.data.is_empty(), "abandoned data still queued");
                } else {
                    out.append(&mut c.data);
                }
                c.bytes += frame.len();
                c.frames += 1;
                out.push(Item::Exact(frame));
                c.phase = Phase::CloseTaken;
                closed = true;
            }
            Phase::CloseTaken | Phase::Closed => {}
        }
        let written: usize = out.iter().map(Item::len).sum();
        c.bytes = c.bytes.saturating_sub(written);
        c.frames = c.frames.saturating_sub(out.len());

        let id = c.handle.id();
        assert_eq!(
            real.len(),
            out.len(),
            "client {id} drained {} frames, expected {out:?}",
            real.len()
        );
        for (got, want) in real.iter().zip(&out) {
            match want {
                Item::Exact(bytes) => assert_eq!(got, bytes, "client {id}: frame differs"),
                Item::Notice { count, len } => {
                    assert_eq!(got.len(), *len, "client {id}: notice length");
                    let prefix = format!(
                        r#"{{"type":"error","data":"dropped {count} messages","timestamp":"#
                    );
                    check_message_frame(got, &prefix, UNIX_EPOCH, SystemTime::now());
                }
            }
        }
        assert_eq!(real_closed, closed, "client {id}: close frame taken");
    }

    /// Compares everything observable with the model.
    fn verify(&self) {
        let hub = &self.hub;
        let mut channels: BTreeMap<&str, usize> = BTreeMap::new();
        let mut registered = Vec::new();
        for c in &self.clients {
            let h = &c.handle;
            let id = h.id();
            assert_eq!(
                h.is_closed(),
                c.phase != Phase::Open,
                "client {id}: is_closed"
            );
            assert_eq!(h.queued_bytes(), c.bytes, "client {id}: queued bytes");
            assert_eq!(
                h.dropped_messages(),
                c.dropped_total,
                "client {id}: dropped"
            );
            let subs: Vec<String> = h.subscriptions().iter().map(|n| n.to_string()).collect();
            let expected: Vec<&str> = c.subs.iter().copied().collect();
            assert_eq!(subs, expected, "client {id}: subscriptions");
            assert_eq!(
                hub.client(id).is_some(),
                c.registered,
                "client {id}: listed"
            );
            if c.registered {
                registered.push(id);
                for name in &c.subs {
                    *channels.entry(name).or_default() += 1;
                }
            }
        }
        assert_eq!(hub.client_count(), registered.len(), "client_count");
        let mut ids: Vec<u64> = hub.clients().iter().map(Client::id).collect();
        ids.sort_unstable();
        assert_eq!(ids, registered, "clients()");
        assert_eq!(hub.channel_count(), channels.len(), "channel_count");
        let counts: Vec<(String, usize)> = hub
            .channel_subscriber_counts()
            .into_iter()
            .map(|(name, n)| (name.to_string(), n))
            .collect();
        let expected: Vec<(String, usize)> = channels
            .iter()
            .map(|(name, n)| ((*name).to_owned(), *n))
            .collect();
        assert_eq!(counts, expected, "channel_subscriber_counts");
        for name in CHANNELS {
            assert_eq!(
                hub.channel_subscriber_count(name),
                channels.get(name).copied().unwrap_or(0),
                "channel_subscriber_count({name:?})"
            );
        }
        let c = hub.counters();
        let real = Counters {
            published: c.published,
            delivered: c.delivered,
            dropped: c.dropped,
            slow_consumer_disconnects: c.slow_consumer_disconnects,
            connections: c.connections,
            disconnections: c.disconnections,
        };
        assert_eq!(real, self.counters, "counters");
    }

    /// Everybody leaves: the hub must be empty.
    fn disconnect_everybody(&mut self) {
        for i in 0..self.clients.len() {
            if self.clients[i].registered {
                self.clients[i].handle.disconnect_detached();
                self.unregister(i);
            }
        }
        self.verify();
        let hub = &self.hub;
        assert_eq!(hub.client_count(), 0);
        assert_eq!(hub.channel_count(), 0);
        assert!(hub.channel_subscriber_counts().is_empty());
        let counters = hub.counters();
        assert_eq!(counters.connections, counters.disconnections);
    }
}

/// Whether a notice of unknown length among `lens` is queued: forced when all or none of the
/// lengths fit, otherwise whatever the hub did (`observed`), which then has to be possible.
fn decide(lens: &[usize], fits: impl Fn(usize) -> bool, observed: bool) -> bool {
    let all = lens.iter().all(|&n| fits(n));
    let any = lens.iter().any(|&n| fits(n));
    if all || !any {
        all
    } else {
        observed
    }
}

fn subscribe_result(
    result: Result<bool, SubscribeError>,
    max: usize,
) -> Result<bool, &'static str> {
    match result {
        Ok(b) => Ok(b),
        Err(SubscribeError::ChannelName(_)) => Err("name"),
        Err(SubscribeError::TooManySubscriptions { limit }) => {
            assert_eq!(limit, max);
            Err("too many")
        }
        Err(SubscribeError::ClientClosed) => Err("closed"),
        Err(e) => panic!("unexpected {e:?}"),
    }
}

fn channel_name(channel: u8) -> &'static str {
    CHANNELS[usize::from(channel) % CHANNELS.len()]
}

/// The naming rule: 1..=[`MAX_NAME`] bytes of `[A-Za-z0-9_.:-]`.
fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The length of a server frame with a payload of `payload` bytes (under 64 KiB).
fn frame_len(payload: usize) -> usize {
    payload + if payload <= 125 { 2 } else { 4 }
}

/// An unmasked text frame (payloads under 64 KiB).
fn text_frame(payload: &[u8]) -> Bytes {
    let mut frame = vec![0x81];
    if payload.len() < 126 {
        frame.push(payload.len() as u8);
    } else {
        frame.push(126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(payload);
    frame.into()
}

/// An unmasked close frame.
fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut frame = vec![0x88, (2 + reason.len()) as u8];
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason.as_bytes());
    frame.into()
}

/// Lengths a timestamp can have: `"2026-11-18T11:06:40Z"` (22 bytes) or with a fraction of
/// 1 to 9 digits (24 to 32 bytes).
const TIMESTAMP_LENS: [usize; 10] = [22, 24, 25, 26, 27, 28, 29, 30, 31, 32];

/// Every possible frame length of a "dropped `count` messages" notice.
fn notice_lens(count: u64) -> Vec<usize> {
    let prefix = format!(r#"{{"type":"error","data":"dropped {count} messages","timestamp":"#);
    TIMESTAMP_LENS
        .iter()
        .map(|t| text_frame(&vec![b' '; prefix.len() + t + 1]).len())
        .collect()
}

/// Checks that `frame` is a text frame holding `prefix`, a Go timestamp between `from` and
/// `to`, and `}`.
fn check_message_frame(frame: &Bytes, prefix: &str, from: SystemTime, to: SystemTime) {
    let (header, len) = match frame.get(1) {
        Some(126) => (4, usize::from(u16::from_be_bytes([frame[2], frame[3]]))),
        Some(&n) if n < 126 => (2, usize::from(n)),
        other => panic!("unexpected length byte {other:?}"),
    };
    assert_eq!(frame[0], 0x81, "not a final text frame");
    assert_eq!(frame.len(), header + len, "frame length");
    let text = std::str::from_utf8(&frame[header..]).expect("UTF-8");
    let rest = text
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{text:?} does not start with {prefix:?}"));
    let ts = rest
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("{text:?} does not end with }}"));
    let at = parse_timestamp(ts).unwrap_or_else(|| panic!("bad timestamp {ts}"));
    assert!(from <= at && at <= to, "timestamp {ts} outside the publish");
}

/// Parses `"YYYY-MM-DDTHH:MM:SS[.fraction]Z"` as Go writes it (fraction without trailing
/// zeros).
fn parse_timestamp(ts: &str) -> Option<SystemTime> {
    let ts = ts.strip_prefix('"')?.strip_suffix("Z\"")?;
    let (main, fraction) = match ts.split_once('.') {
        Some((main, f)) => (main, Some(f)),
        None => (ts, None),
    };
    let b = main.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| main.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let nanos = match fraction {
        None => 0,
        Some(f) => {
            if f.is_empty() || f.len() > 9 || f.ends_with('0') {
                return None;
            }
            if !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32)
        }
    };
    // Days from 1970-01-01 (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}
