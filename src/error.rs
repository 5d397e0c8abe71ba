//! Error types.
//!
//! [`Error`] is the one error type that every fallible operation converts into; the small
//! per-operation errors ([`PublishError`], [`SubscribeError`], [`SendError`], ...) tell the caller
//! exactly what went wrong for that operation and carry the data it needs.

use std::fmt;

use crate::message::json::JsonError;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error wshub can report.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid. Terminal for the builder that produced it.
    Config(ConfigError),
    /// A channel name is invalid.
    ChannelName(ChannelNameError),
    /// A subscribe or unsubscribe request failed.
    Subscribe(SubscribeError),
    /// A publish failed; nothing was delivered.
    Publish(PublishError),
    /// A message for one client was not queued.
    Send(SendError),
    /// JSON handed in by the caller is invalid.
    Json(JsonError),
    /// An I/O error (binding a listener, accepting, ...).
    Io(std::io::Error),
    /// The broker (Redis) could not be reached or refused a request.
    Broker(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => write!(f, "invalid configuration: {e}"),
            Error::ChannelName(e) => e.fmt(f),
            Error::Subscribe(e) => e.fmt(f),
            Error::Publish(e) => e.fmt(f),
            Error::Send(e) => e.fmt(f),
            Error::Json(e) => e.fmt(f),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Broker(e) => write!(f, "broker error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::ChannelName(e) => Some(e),
            Error::Subscribe(e) => Some(e),
            Error::Publish(e) => Some(e),
            Error::Send(e) => Some(e),
            Error::Json(e) => Some(e),
            Error::Io(e) => Some(e),
            Error::Broker(_) => None,
        }
    }
}

macro_rules! from_error {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::$variant(e)
            }
        })*
    };
}
from_error!(
    Config(ConfigError),
    ChannelName(ChannelNameError),
    Subscribe(SubscribeError),
    Publish(PublishError),
    Send(SendError),
    Json(JsonError),
    Io(std::io::Error),
);

/// A configuration value is out of range or inconsistent with another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        ConfigError {
            field,
            reason: reason.into(),
        }
    }

    /// The name of the offending field, e.g. `"pong_timeout"`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// A channel name does not satisfy the hub's naming rule
/// (by default 1–256 characters of `[A-Za-z0-9_.:-]`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelNameError {
    /// The name is empty.
    Empty,
    /// The name is longer than the configured maximum (in bytes).
    TooLong {
        /// The configured maximum.
        max: usize,
    },
    /// The name contains a character outside `[A-Za-z0-9_.:-]`.
    InvalidChar {
        /// The first offending character.
        found: char,
    },
}

impl fmt::Display for ChannelNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelNameError::Empty => f.write_str("invalid channel name: empty"),
            ChannelNameError::TooLong { max } => {
                write!(f, "invalid channel name: longer than {max} characters")
            }
            ChannelNameError::InvalidChar { found } => write!(
                f,
                "invalid channel name: character {found:?} is not one of A-Z a-z 0-9 _ . : -"
            ),
        }
    }
}

impl std::error::Error for ChannelNameError {}

/// Why a subscribe or unsubscribe was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The channel name is invalid.
    ChannelName(ChannelNameError),
    /// The client already holds the configured maximum number of subscriptions.
    TooManySubscriptions {
        /// The configured maximum.
        limit: usize,
    },
    /// The client has disconnected (or is disconnecting); its subscriptions are gone.
    ClientClosed,
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::ChannelName(e) => e.fmt(f),
            SubscribeError::TooManySubscriptions { limit } => {
                write!(f, "too many subscriptions (limit {limit})")
            }
            SubscribeError::ClientClosed => f.write_str("client is closed"),
        }
    }
}

impl std::error::Error for SubscribeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubscribeError::ChannelName(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ChannelNameError> for SubscribeError {
    fn from(e: ChannelNameError) -> Self {
        SubscribeError::ChannelName(e)
    }
}

/// Why a publish was refused. When a publish fails, no client received the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The channel name is invalid.
    ChannelName(ChannelNameError),
    /// The hub is shutting down and accepts no new messages.
    ShuttingDown,
    /// The message's frame is larger than a client's queue may hold
    /// ([`HubConfig::max_queued_bytes`](crate::HubConfig::max_queued_bytes)): no client could
    /// ever take it, so nobody gets it (queueing it would count every subscriber as a slow
    /// consumer).
    TooLarge {
        /// The frame's size in bytes (on a channel whose history a broker keeps, the largest
        /// it can be once the broker adds the position).
        size: usize,
        /// The queue bound in bytes.
        limit: usize,
    },
    /// The broker (Redis) did not accept the message: this node's subscribers got it (as
    /// `local` reports), other nodes did not.
    Broker {
        /// What the broker said.
        reason: String,
        /// What was delivered on this node.
        local: crate::PublishReport,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::ChannelName(e) => e.fmt(f),
            PublishError::ShuttingDown => f.write_str("hub is shutting down"),
            PublishError::TooLarge { size, limit } => write!(
                f,
                "message too large: its frame is {size} bytes, a client's queue holds at most {limit}"
            ),
            PublishError::Broker { reason, local } => write!(
                f,
                "not sent to other nodes ({reason}); delivered to {} local subscribers",
                local.enqueued
            ),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::ChannelName(e) => Some(e),
            PublishError::ShuttingDown
            | PublishError::TooLarge { .. }
            | PublishError::Broker { .. } => None,
        }
    }
}

impl From<ChannelNameError> for PublishError {
    fn from(e: ChannelNameError) -> Self {
        PublishError::ChannelName(e)
    }
}

/// Why a message for one client was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The client's connection is closed or closing. Terminal.
    Closed,
    /// The client's queue is full and the hub's policy is
    /// [`SlowConsumerPolicy::Drop`](crate::SlowConsumerPolicy::Drop): this message was dropped
    /// (and counted); the client will be told how many it missed.
    Dropped,
    /// The client's queue is full and the hub's policy is
    /// [`SlowConsumerPolicy::Disconnect`](crate::SlowConsumerPolicy::Disconnect): the client is
    /// being disconnected with close code 1008 "slow consumer". Terminal.
    SlowConsumer,
    /// [`Client::close`](crate::Client::close) was given a code that may not be sent on the
    /// wire (RFC 6455 §7.4: 1000–1003, 1007–1014 and 3000–4999 may).
    InvalidCloseCode(u16),
    /// The frame is larger than the client's queue may hold
    /// ([`HubConfig::max_queued_bytes`](crate::HubConfig::max_queued_bytes)): not sent, and
    /// the client stays connected.
    TooLarge {
        /// The frame's size in bytes.
        size: usize,
        /// The queue bound in bytes.
        limit: usize,
    },
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Closed => f.write_str("client connection is closed"),
            SendError::Dropped => f.write_str("client queue is full: message dropped"),
            SendError::SlowConsumer => {
                f.write_str("client queue is full: client disconnected as a slow consumer")
            }
            SendError::InvalidCloseCode(code) => write!(f, "close code {code} may not be sent"),
            SendError::TooLarge { size, limit } => write!(
                f,
                "message too large: its frame is {size} bytes, the client's queue holds at most {limit}"
            ),
        }
    }
}

impl std::error::Error for SendError {}
