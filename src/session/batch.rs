//! Client publishes read together, framed into one buffer and delivered as one chunk.
//!
//! A client that publishes faster than its messages are read (one that pipelines, or any
//! client while the server is busy) has several publishes in one read. Those on the same
//! channel, in a row, are framed one after another into one buffer; every subscriber then gets
//! one chunk for all of them (one reference count, one lock of its queue, one wake-up), and its
//! writer sends them as one piece. Subscribers get exactly what publishing them one by one
//! would give them: the same frames, in the same order, within the same queue bounds (a batch
//! that does not fit a queue whole is queued frame by frame, each frame a copy, with the
//! slow-consumer policy applied to each frame). Two exceptions: with a channel authoriser hook
//! the session delivers the batch before each call of the hook (which may act on the client),
//! so nothing is batched; and a publisher subscribed to the channel gets its own copies at the
//! flush, so if they make it a slow consumer, the rest of that read is still published.
//!
//! The batch lives only while the session handles one read: it is delivered before the session
//! does anything else (another request, a reply, a close) and at the end of the read. So the
//! buffer is per thread, not per connection, and an idle connection keeps nothing.

use std::cell::RefCell;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};

use crate::hub::Hub;
use crate::message::Message;
use crate::PublishError;

/// A batch is delivered once it holds this many bytes.
const MAX_BATCH_BYTES: usize = 32 << 10;
/// The buffer keeps at most this much capacity between batches.
const KEEP_CAPACITY: usize = 256 << 10;

thread_local! {
    static BATCH: RefCell<Batch> = RefCell::new(Batch {
        hub: None,
        publisher: 0,
        channel: String::new(),
        frames: BytesMut::new(),
        ends: Vec::new(),
    });
}

struct Batch {
    /// The hub the frames are published in; `None` while the batch is empty.
    hub: Option<Hub>,
    /// The publishing client's id.
    publisher: u64,
    channel: String,
    /// The frames, one after another.
    frames: BytesMut,
    /// Where each frame ends in `frames`.
    ends: Vec<u32>,
}

impl Batch {
    fn deliver(&mut self) {
        let Some(hub) = self.hub.take() else {
            return;
        };
        // An exact copy: a chunk never keeps a larger buffer alive in a slow client's queue.
        let frames = Bytes::copy_from_slice(&self.frames);
        self.frames.clear();
        if self.frames.capacity() > KEEP_CAPACITY {
            self.frames = BytesMut::new();
        }
        hub.deliver_batch(&self.channel, &frames, &self.ends);
        self.ends.clear();
    }
}

/// Publishes `message` on `channel` for client `publisher` as [`Hub::publish_local`] does,
/// except that it joins this thread's batch, to be delivered by [`flush`] (or by the next
/// publish on another channel, by another client or in another hub, or once the batch is
/// large).
///
/// # Errors
/// As [`Hub::publish_local`]; a refused message is not part of the batch.
pub(crate) fn publish(
    hub: &Hub,
    publisher: u64,
    channel: &str,
    message: &Message,
) -> Result<(), PublishError> {
    BATCH.with(|batch| {
        let Ok(mut b) = batch.try_borrow_mut() else {
            // Only if delivering re-entered a publish on this thread: no batching.
            return hub.publish_local(channel, message).map(drop);
        };
        let joins = b.hub.as_ref().is_some_and(|h| h.same_hub(hub))
            && b.publisher == publisher
            && b.channel == channel
            && b.frames.len() < MAX_BATCH_BYTES;
        if !joins {
            b.deliver();
        }
        hub.check_publish(channel)?;
        let start = b.frames.len();
        let len = message.append_frame(&mut b.frames, Some(channel), SystemTime::now());
        if let Err(e) = hub.check_size(len) {
            b.frames.truncate(start);
            return Err(e);
        }
        let Ok(end) = u32::try_from(b.frames.len()) else {
            // Only for a frame of gigabytes: on its own.
            b.frames.truncate(start);
            b.deliver();
            return hub.publish_local(channel, message).map(drop);
        };
        if b.hub.is_none() {
            b.hub = Some(hub.clone());
            b.publisher = publisher;
            b.channel.clear();
            b.channel.push_str(channel);
        }
        b.ends.push(end);
        Ok(())
    })
}

/// Delivers this thread's batch, if there is one.
pub(crate) fn flush() {
    BATCH.with(|batch| {
        if let Ok(mut b) = batch.try_borrow_mut() {
            b.deliver();
        }
    });
}
