//! Per-client shared state and the public [`Client`] handle.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::{SendError, SubscribeError};
use crate::frame::{self, OpCode};
use crate::hub::Hub;
use crate::message::channel::ChannelName;
use crate::message::Message;
use crate::session::outbox::{Enqueue, Outbox};
use crate::session::DisconnectReason;

/// The channels a client is subscribed to.
#[derive(Default)]
pub(crate) struct Subscriptions {
    pub(crate) channels: HashSet<ChannelName>,
    /// Set once the client is unregistered; no subscription may be added after that.
    pub(crate) closed: bool,
}

/// State shared by the client's session, the membership snapshots and every [`Client`] handle.
pub(crate) struct ClientShared {
    /// Unique within the hub, never reused.
    pub(crate) id: u64,
    /// Outbound queue, written by publishers, drained by the session.
    pub(crate) outbox: Outbox,
    /// Who the authentication hook said this client is.
    pub(crate) identity: Option<Arc<str>>,
    /// Lock order: a client's `subscriptions` before any registry lock.
    subscriptions: Mutex<Subscriptions>,
}

impl ClientShared {
    pub(crate) fn new(id: u64, outbox: Outbox, identity: Option<Arc<str>>) -> Arc<Self> {
        Arc::new(ClientShared {
            id,
            outbox,
            identity,
            subscriptions: Mutex::default(),
        })
    }

    pub(crate) fn subscriptions(&self) -> MutexGuard<'_, Subscriptions> {
        // Every critical section leaves the set consistent before it can panic.
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a frame for this client only.
    pub(crate) fn send_frame(&self, frame: Bytes) -> Result<(), SendError> {
        let limit = self.outbox.max_bytes();
        if frame.len() > limit {
            // It could never be queued: refused, rather than a slow-consumer disconnect.
            return Err(SendError::TooLarge {
                size: frame.len(),
                limit,
            });
        }
        match self.outbox.push_data(frame) {
            Enqueue::Queued => Ok(()),
            Enqueue::Dropped => Err(SendError::Dropped),
            Enqueue::SlowConsumer => Err(SendError::SlowConsumer),
            Enqueue::Closed => Err(SendError::Closed),
        }
    }

    #[cfg(test)]
    pub(crate) fn for_test(id: u64) -> Arc<Self> {
        Self::new(
            id,
            Outbox::new(1 << 20, 1 << 10, crate::SlowConsumerPolicy::Disconnect),
            None,
        )
    }
}

/// A handle to one connected client. Cheap to clone; stays valid (but inert) after the client
/// disconnects.
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
    hub: Hub,
}

impl Client {
    pub(crate) fn new(shared: Arc<ClientShared>, hub: Hub) -> Self {
        Client { shared, hub }
    }

    pub(crate) fn shared(&self) -> &Arc<ClientShared> {
        &self.shared
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The client's id, unique within its hub.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The identity the hub's authentication hook returned for this client
    /// ([`HubBuilder::authenticate`](crate::HubBuilder::authenticate)); `None` without one.
    pub fn identity(&self) -> Option<&str> {
        self.shared.identity.as_deref()
    }

    /// The channels the client is subscribed to, sorted.
    pub fn subscriptions(&self) -> Vec<ChannelName> {
        let mut v: Vec<_> = self
            .shared
            .subscriptions()
            .channels
            .iter()
            .cloned()
            .collect();
        v.sort_unstable();
        v
    }

    /// Whether the client is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.shared.subscriptions().channels.contains(channel)
    }

    /// Subscribes the client to `channel`; see [`Hub::subscribe`].
    ///
    /// # Errors
    /// See [`Hub::subscribe`].
    pub fn subscribe(&self, channel: &str) -> Result<bool, SubscribeError> {
        self.hub.subscribe(self, channel)
    }

    /// Unsubscribes the client from `channel`; see [`Hub::unsubscribe`].
    ///
    /// # Errors
    /// See [`Hub::unsubscribe`].
    pub fn unsubscribe(&self, channel: &str) -> Result<bool, SubscribeError> {
        self.hub.unsubscribe(self, channel)
    }

    /// Sends `message` to this client only (timestamped now).
    ///
    /// # Errors
    /// [`SendError`] when the client is closed, its queue is full (then the hub's
    /// slow-consumer policy applies, as for a publish), or the frame is larger than the
    /// queue's bound ([`SendError::TooLarge`]; nothing else happens).
    pub fn send(&self, message: &Message) -> Result<(), SendError> {
        self.shared
            .send_frame(message.encode_frame(None, SystemTime::now()))
    }

    /// Sends a raw text frame to this client only (no JSON envelope).
    ///
    /// # Errors
    /// As [`Client::send`].
    pub fn send_text(&self, text: &str) -> Result<(), SendError> {
        self.shared
            .send_frame(frame::encode(OpCode::Text, text.as_bytes()))
    }

    /// Sends a raw binary frame to this client only.
    ///
    /// # Errors
    /// As [`Client::send`].
    pub fn send_binary(&self, data: &[u8]) -> Result<(), SendError> {
        self.shared.send_frame(frame::encode(OpCode::Binary, data))
    }

    /// Closes the connection: what is already queued is sent, then a close frame with `code`
    /// and `reason` (truncated to 123 bytes). Does nothing if the client is already closing.
    ///
    /// # Errors
    /// [`SendError::InvalidCloseCode`] if `code` may not be sent on the wire (RFC 6455 §7.4:
    /// 1000–1003, 1007–1014 and 3000–4999 may); [`SendError::Closed`] if the client is already
    /// closing.
    pub fn close(&self, code: u16, reason: &str) -> Result<(), SendError> {
        if !frame::is_valid_close_code(code) {
            return Err(SendError::InvalidCloseCode(code));
        }
        if !self.shared.outbox.is_open() {
            return Err(SendError::Closed);
        }
        self.shared.outbox.request_close(
            frame::close_frame(code, reason),
            false,
            DisconnectReason::Closed {
                code,
                reason: reason.to_owned(),
            },
        );
        Ok(())
    }

    /// Whether the client no longer accepts messages (closing or disconnected).
    pub fn is_closed(&self) -> bool {
        !self.shared.outbox.is_open()
    }

    /// Bytes queued for the client and not yet written to its socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.outbox.queued_bytes()
    }

    /// Messages dropped for this client by [`SlowConsumerPolicy::Drop`](crate::SlowConsumerPolicy::Drop).
    pub fn dropped_messages(&self) -> u64 {
        self.shared.outbox.dropped_total()
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}
