//! Internals exposed for the fuzz targets and benchmarks; not a stable API.
//!
//! A *detached* client is registered in the hub like a connected one but has no socket and no
//! session: what the hub queues for it stays in its outbox until [`Client::drain_detached`]
//! takes it, exactly as a session's writer would.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;

use crate::hub::{Client, Hub};
use crate::message::Message;
use crate::session::outbox::Take;
use crate::session::DisconnectReason;
use crate::PublishError;

pub use crate::message::json::{canonicalize, write_string, write_timestamp};
pub use crate::message::parse::{parse as parse_request, ParseError, Request};

impl Hub {
    /// Registers a client with no connection (the connect hook fires).
    #[doc(hidden)]
    pub fn detached_client(&self) -> Client {
        Client::new(self.register(None), self.clone())
    }

    /// Publishes `messages` on `channel` as a session publishes what one client sent in one
    /// read (`session/batch.rs`): each checked as [`Hub::publish_local`] checks it, the
    /// accepted ones framed into one buffer and queued as one chunk where it fits. Returns
    /// each message's result.
    #[doc(hidden)]
    pub fn publish_batch_local(
        &self,
        channel: &str,
        messages: &[Message],
    ) -> Vec<Result<(), PublishError>> {
        let results = messages
            .iter()
            .map(|m| crate::session::batch::publish(self, u64::MAX, channel, m))
            .collect();
        crate::session::batch::flush();
        results
    }
}

impl Client {
    /// Takes every frame queued for a detached client, as its writer would, and counts them
    /// as written. Returns the frames and whether a close frame was among them.
    #[doc(hidden)]
    pub fn drain_detached(&self) -> (Vec<Bytes>, bool) {
        let outbox = &self.shared().outbox;
        let mut out = VecDeque::new();
        let closed = matches!(
            outbox.take(&mut out, false, Waker::noop(), false),
            Take::Close(_)
        );
        let bytes = out.iter().map(|c| c.len()).sum();
        let frames = out.iter().map(|c| c.frames as usize).sum();
        outbox.written(bytes, frames);
        // A chunk of several frames (published together) is split into its frames.
        let mut split = Vec::with_capacity(frames);
        for chunk in out {
            let mut rest = chunk.bytes;
            while !rest.is_empty() {
                split.push(rest.split_to(crate::frame::first_frame_len(&rest)));
            }
        }
        (split, closed)
    }

    /// Drops the client's connection at once, without a close frame (as a network failure
    /// would); for tests of reconnection and recovery.
    #[doc(hidden)]
    pub fn kill_connection(&self) {
        self.shared().outbox.abort(DisconnectReason::ConnectionLost);
    }

    /// Ends a detached client as if its connection dropped (the disconnect hook fires).
    #[doc(hidden)]
    pub fn disconnect_detached(&self) {
        self.hub()
            .unregister(self.shared(), &DisconnectReason::ConnectionLost);
    }
}
