//! The hub: clients, channels, publish and broadcast.
//!
//! There is no central event loop. A publish looks the channel up and loads its membership
//! snapshot without locking, encodes the message once, and pushes a reference to the same
//! bytes into each subscriber's bounded queue; it never waits for any client.

pub(crate) mod client;
pub(crate) mod history;
pub(crate) mod members;
pub(crate) mod registry;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::task::TaskTracker;

#[cfg(feature = "redis")]
use crate::broker::RedisConfig;
use crate::broker::{Broker, BrokerCounters, ClusterStats};
use crate::config::HubConfig;
use crate::error::{ChannelNameError, ConfigError, PublishError, SubscribeError};
use crate::frame::{self, close_code};
use crate::http::Handshake;
use crate::message::channel::{validate_channel_name, ChannelName};
use crate::message::{Json, Message};
use crate::session::outbox::{Enqueue, Outbox};
use crate::session::{self, DisconnectReason};
pub use client::Client;
use client::{ClientShared, Subscriptions};
use history::{HistoryStore, RemoteHistory};
use members::{MemberSet, Snapshot};
use registry::Registry;

/// Close reason sent with 1012 to the subscribers of a channel on which this node missed
/// publications from the broker.
const GAP_REASON: &str = "missed publications: reconnect and resume to recover them";
/// The close reason when a subscribe on a history channel cannot be answered.
const UNAVAILABLE_REASON: &str = "history unavailable: reconnect later and resume";
/// Closes `client` with `code` and `reason` after what is already queued, so that it
/// reconnects and resumes.
fn close_to_resume(client: &ClientShared, code: u16, reason: &'static str) {
    client.outbox.request_close(
        frame::close_frame(code, reason),
        false,
        DisconnectReason::Closed {
            code,
            reason: reason.to_owned(),
        },
    );
}

/// Closes `client` with 1012: it missed publications on a broker-history channel and
/// recovers them when it resumes.
fn close_for_gap(client: &ClientShared) {
    close_to_resume(client, close_code::SERVICE_RESTART, GAP_REASON);
}

/// Closes a client whose subscribe on a history channel cannot be answered (1013).
fn close_unavailable(client: &ClientShared) {
    close_to_resume(client, close_code::TRY_AGAIN_LATER, UNAVAILABLE_REASON);
}

/// After the broker re-subscribed, how long publications already on their way get to arrive
/// before this node compares its position with the stored one.
#[cfg(feature = "redis")]
const GAP_SETTLE: Duration = Duration::from_millis(500);

/// After the broker re-subscribed, how often this node tries to read a channel's stored
/// position, and how long it waits between tries.
#[cfg(feature = "redis")]
const READ_ATTEMPTS: u32 = 3;
#[cfg(feature = "redis")]
const READ_RETRY: Duration = Duration::from_millis(100);

/// Work a session waits for before reading its client's next request (e.g. a broker
/// subscription being confirmed).
pub(crate) type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The outcome of [`Hub::subscribe_shared`].
pub(crate) struct Subscribed {
    /// The client was not subscribed yet.
    pub(crate) added: bool,
    /// The local channel instance joined (0 when already subscribed).
    pub(crate) instance: u64,
    /// Resolves once the channel's broker subscription is active (`None`: it is, or there is
    /// no broker).
    pub(crate) pending: Option<Pending>,
}

type ConnectHook = Arc<dyn Fn(&Client) + Send + Sync>;
type DisconnectHook = Arc<dyn Fn(&Client, &DisconnectReason) + Send + Sync>;
type MessageHook = Arc<dyn Fn(&Client, IncomingMessage) + Send + Sync>;
type AuthHook = Arc<dyn Fn(&Handshake<'_>) -> Result<String, String> + Send + Sync>;
type ChannelHook = Arc<dyn Fn(&Client, &str, ChannelAction) -> bool + Send + Sync>;

#[derive(Default, Clone)]
struct Hooks {
    on_connect: Option<ConnectHook>,
    on_disconnect: Option<DisconnectHook>,
    on_message: Option<MessageHook>,
    authenticate: Option<AuthHook>,
    authorize_channel: Option<ChannelHook>,
}

/// What a client asks to do with a channel, for
/// [`HubBuilder::authorize_channel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelAction {
    /// `{"type":"subscribe",...}`
    Subscribe,
    /// `{"type":"publish",...}` (already allowed by [`HubConfig::client_publish`]).
    Publish,
}

/// A message from a client that the hub does not handle itself: an unknown `type` in the
/// go-ws protocol, or every message when [`HubConfig::raw_messages`] is set.
#[derive(Clone)]
pub struct IncomingMessage {
    payload: Bytes,
    binary: bool,
    kind: Option<String>,
}

impl IncomingMessage {
    pub(crate) fn new(payload: Bytes, binary: bool, kind: Option<String>) -> Self {
        IncomingMessage {
            payload,
            binary,
            kind,
        }
    }

    /// The message payload, exactly as received (unmasked, fragments joined).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Whether it arrived in a binary frame (otherwise text, and valid UTF-8).
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The payload as text, for text frames.
    pub fn text(&self) -> Option<&str> {
        if self.binary {
            return None;
        }
        std::str::from_utf8(&self.payload).ok()
    }

    /// The JSON `type` field (`None` in raw mode).
    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

impl fmt::Debug for IncomingMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingMessage")
            .field("kind", &self.kind)
            .field("binary", &self.binary)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// What one publish did on this node: every subscriber at the moment of the publish is in
/// exactly one of the three counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PublishReport {
    /// Clients the message was queued for.
    pub enqueued: usize,
    /// Clients that did not get it because their queue was full
    /// ([`SlowConsumerPolicy::Drop`](crate::SlowConsumerPolicy::Drop)).
    pub dropped: usize,
    /// Clients that did not get it because they are disconnecting: already closing, or
    /// disconnected by this publish as slow consumers.
    pub disconnected: usize,
}

impl PublishReport {
    /// All clients the publish addressed.
    pub fn recipients(&self) -> usize {
        self.enqueued + self.dropped + self.disconnected
    }
}

/// Client and channel counts; serialises as go-ws does: `{"clients":N,"channels":M}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Connected clients.
    pub clients: usize,
    /// Channels with at least one subscriber.
    pub channels: usize,
}

/// Cumulative counters since the hub was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Counters {
    /// Messages this node delivered to its subscribers: publishes, broadcasts and messages
    /// from other nodes (one per message, not per recipient).
    pub published: u64,
    /// Messages queued for clients (one per recipient).
    pub delivered: u64,
    /// Messages dropped for slow consumers (policy `Drop`).
    pub dropped: u64,
    /// Clients disconnected as slow consumers (policy `Disconnect`).
    pub slow_consumer_disconnects: u64,
    /// Connections accepted.
    pub connections: u64,
    /// Connections ended.
    pub disconnections: u64,
    /// Connections closed for a protocol violation (1002, 1007, 1009).
    pub protocol_errors: u64,
    /// Hook calls that panicked (each was contained).
    pub hook_panics: u64,
    /// Vectored writes to client sockets.
    pub socket_writes: u64,
    /// Frames those writes completed (`frames_written / socket_writes` is the batching).
    pub frames_written: u64,
    /// Times this node found it had missed publications on a channel whose history the broker
    /// keeps (its broker subscription was lost for a while) and closed that channel's
    /// subscribers with 1012, so that they resume and recover them.
    pub history_gaps: u64,
    /// Subscribes on a channel whose history the broker keeps that could not be answered
    /// because the history could not be read (the broker was unreachable): each closed its
    /// connection with 1013, to resume later.
    pub history_unavailable: u64,
    /// Messages from the broker that this node would have delivered but did not, because no
    /// wshub node could have sent them: not UTF-8, or larger than a client's queue bound. On a
    /// channel with history such a message keeps its offset (a resume across it is answered
    /// `recovered: false`).
    pub remote_rejected: u64,
    /// The broker's counters (all zero without a broker).
    pub broker: BrokerCounters,
}

#[derive(Default)]
struct AtomicCounters {
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    slow_consumer_disconnects: AtomicU64,
    connections: AtomicU64,
    disconnections: AtomicU64,
    protocol_errors: AtomicU64,
    hook_panics: AtomicU64,
    socket_writes: AtomicU64,
    frames_written: AtomicU64,
    history_gaps: AtomicU64,
    history_unavailable: AtomicU64,
    remote_rejected: AtomicU64,
}

/// A page of a channel's history ([`Hub::history`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct History {
    /// The channel's current epoch ("" when it has no history yet).
    pub epoch: String,
    /// Offset of the channel's last publication (0 when none).
    pub offset: u64,
    /// The publications, oldest first, each the exact JSON text clients received.
    pub publications: Vec<String>,
}

/// Why [`Hub::history`] failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// The channel name is invalid.
    ChannelName(ChannelNameError),
    /// The channel matches no [`HubConfig::history`] pattern.
    NotEnabled,
    /// The broker (Redis) could not be read.
    Broker(String),
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ChannelName(e) => e.fmt(f),
            HistoryError::NotEnabled => f.write_str("channel has no history"),
            HistoryError::Broker(e) => write!(f, "history unavailable: {e}"),
        }
    }
}

impl std::error::Error for HistoryError {}

impl From<ChannelNameError> for HistoryError {
    fn from(e: ChannelNameError) -> Self {
        HistoryError::ChannelName(e)
    }
}

/// What [`Hub::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Clients connected when the shutdown began.
    pub clients: usize,
    /// Clients still connected at the deadline, dropped without finishing the close handshake.
    pub forced: usize,
}

struct HubInner {
    config: HubConfig,
    hooks: Hooks,
    channels: Registry,
    clients: MemberSet,
    next_id: AtomicU64,
    shutting_down: AtomicBool,
    /// Every session (and pending upgrade), so shutdown can wait for them.
    tracker: TaskTracker,
    /// Connections accepted by `upgrade` and not yet ended (bounded by `max_connections`).
    open: AtomicUsize,
    counters: AtomicCounters,
    /// Set once, right after construction, when a broker is configured.
    broker: OnceLock<Arc<dyn Broker>>,
    /// Logs of the channels with history (in-memory hub).
    history: HistoryStore,
    /// Node-local state of history channels kept by the broker.
    remote_history: RemoteHistory,
}

/// The WebSocket hub. Cheap to clone: every clone is the same hub.
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use wshub::{Hub, Json, Message};
///
/// let hub = Hub::new();
/// let report = hub.publish("news", &Message::new("event").with_data(Json::string("hi"))).await.unwrap();
/// assert_eq!(report.recipients(), 0); // nobody subscribed yet: not an error
/// assert_eq!(hub.stats().clients, 0);
/// # }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

/// Builds a [`Hub`] from a [`HubConfig`] and hooks.
///
/// Hooks run on the task of the client they concern, never on a publisher's path, and a
/// panicking hook is contained (and counted). They are called inline: a hook that blocks holds
/// up the runtime worker thread it runs on, so hand slow work to `tokio::spawn` or
/// `tokio::task::spawn_blocking`.
#[must_use]
pub struct HubBuilder {
    config: HubConfig,
    hooks: Hooks,
    #[cfg(feature = "redis")]
    redis: Option<RedisConfig>,
}

impl HubBuilder {
    /// Uses `config` (the default is [`HubConfig::default`]).
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Called when a client connects, before any of its messages is read.
    pub fn on_connect(mut self, hook: impl Fn(&Client) + Send + Sync + 'static) -> Self {
        self.hooks.on_connect = Some(Arc::new(hook));
        self
    }

    /// Called once when a client's connection ends, whatever the reason. The client no longer
    /// accepts messages, but [`Client::subscriptions`] still lists its channels.
    pub fn on_disconnect(
        mut self,
        hook: impl Fn(&Client, &DisconnectReason) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_disconnect = Some(Arc::new(hook));
        self
    }

    /// Called for each application message (see [`IncomingMessage`]). The hook may reply with
    /// [`Client::send`], [`Client::send_text`] or [`Client::send_binary`]. Without this hook,
    /// an unknown message type gets an `error` reply.
    pub fn on_message(
        mut self,
        hook: impl Fn(&Client, IncomingMessage) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.on_message = Some(Arc::new(hook));
        self
    }

    /// Authenticates each WebSocket upgrade request before it is accepted: the hook sees the
    /// whole request ([`Handshake`]: headers, query string, cookies) and returns the client's
    /// identity (visible to every hook as [`Client::identity`]) or a reason, which refuses the
    /// upgrade with HTTP 401 and `{"error":"<reason>"}`. Browsers cannot set `Authorization` on
    /// a WebSocket, so accept a token from the query string or a cookie as well
    /// ([`Handshake::token`] looks in all three).
    ///
    /// # Examples
    /// ```
    /// let hub = wshub::Hub::builder()
    ///     .authenticate(|req| match req.token().as_deref() {
    ///         Some("s3cret") => Ok("alice".to_owned()),
    ///         _ => Err("missing or invalid token".to_owned()),
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # drop(hub);
    /// ```
    pub fn authenticate(
        mut self,
        hook: impl Fn(&Handshake<'_>) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        self.hooks.authenticate = Some(Arc::new(hook));
        self
    }

    /// Decides whether a client may subscribe to, or publish to, a channel (for requests sent
    /// by clients; the library's own [`Hub::subscribe`] and [`Hub::publish`] are not checked).
    /// A refusal gets `{"type":"error","data":"not allowed to subscribe to \"C\""}` (or
    /// `publish to`) and the connection stays.
    pub fn authorize_channel(
        mut self,
        hook: impl Fn(&Client, &str, ChannelAction) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.hooks.authorize_channel = Some(Arc::new(hook));
        self
    }

    /// Validates the configuration and builds the hub.
    ///
    /// # Errors
    /// [`ConfigError`] from [`HubConfig::validate`].
    ///
    /// A hub with a Redis broker needs a connection: build it with [`HubBuilder::connect`].
    pub fn build(self) -> Result<Hub, ConfigError> {
        #[cfg(feature = "redis")]
        if self.redis.is_some() {
            return Err(ConfigError::new(
                "redis",
                "a hub with a Redis broker is built with `HubBuilder::connect().await`",
            ));
        }
        self.build_unconnected()
    }

    fn build_unconnected(self) -> Result<Hub, ConfigError> {
        self.config.validate()?;
        let history = HistoryStore::new(self.config.history_size, self.config.history_ttl);
        Ok(Hub {
            inner: Arc::new(HubInner {
                config: self.config,
                hooks: self.hooks,
                channels: Registry::new(),
                clients: MemberSet::new(),
                next_id: AtomicU64::new(1),
                shutting_down: AtomicBool::new(false),
                tracker: TaskTracker::new(),
                open: AtomicUsize::new(0),
                counters: AtomicCounters::default(),
                broker: OnceLock::new(),
                history,
                remote_history: RemoteHistory::default(),
            }),
        })
    }

    /// Uses a Redis broker, so that publishes on any node reach subscribers on every node
    /// (see the [`broker`](crate::broker) module for the guarantees). Build the hub with
    /// [`HubBuilder::connect`].
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, config: RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// Validates the configuration, connects the broker (if one is configured) and builds the
    /// hub. Without a broker this is [`HubBuilder::build`].
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an invalid configuration;
    /// [`Error::Broker`](crate::Error::Broker) when Redis cannot be reached (no retry at
    /// start: a node that cannot reach its broker should not pretend to serve).
    pub async fn connect(self) -> Result<Hub, crate::Error> {
        #[cfg(feature = "redis")]
        if let Some(redis) = self.redis.clone() {
            redis.validate()?;
            let hub = HubBuilder {
                redis: None,
                ..self
            }
            .build_unconnected()?;
            let weak = Arc::downgrade(&hub.inner);
            let deliver: crate::broker::Deliver =
                Arc::new(move |channel, own, generation, payload| {
                    if let Some(inner) = weak.upgrade() {
                        Hub { inner }.deliver_remote(channel, own, generation, payload);
                    }
                });
            let weak = Arc::downgrade(&hub.inner);
            let resubscribed: crate::broker::Resubscribed =
                Arc::new(move |channels, generation| {
                    if let Some(inner) = weak.upgrade() {
                        Hub { inner }.broker_resubscribed(channels, generation);
                    }
                });
            let weak = Arc::downgrade(&hub.inner);
            let clients: crate::broker::ClientCount = Arc::new(move || {
                let inner = weak.upgrade()?;
                let hub = Hub { inner };
                (!hub.is_shutting_down()).then(|| hub.client_count())
            });
            let history = !hub.inner.config.history.is_empty();
            let broker = crate::broker::redis::RedisBroker::connect(
                &redis,
                history,
                deliver,
                resubscribed,
                clients,
            )
            .await
            .map_err(crate::Error::Broker)?;
            let _ = hub.inner.broker.set(Arc::new(broker));
            return Ok(hub);
        }
        Ok(self.build()?)
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("config", &self.config)
            .field("on_connect", &self.hooks.on_connect.is_some())
            .field("on_disconnect", &self.hooks.on_disconnect.is_some())
            .field("on_message", &self.hooks.on_message.is_some())
            .field("authenticate", &self.hooks.authenticate.is_some())
            .field("authorize_channel", &self.hooks.authorize_channel.is_some())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    /// A hub with the default configuration and no hooks.
    pub fn new() -> Hub {
        Hub::builder()
            .build()
            .unwrap_or_else(|e| unreachable!("default config is valid: {e}"))
    }

    /// A builder for a configured hub with hooks.
    ///
    /// # Examples
    /// ```
    /// use wshub::{Hub, HubConfig};
    /// let hub = Hub::builder()
    ///     .config(HubConfig::default().max_subscriptions(16))
    ///     .on_connect(|client| println!("client {} connected", client.id()))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(hub.config().max_subscriptions, 16);
    /// ```
    pub fn builder() -> HubBuilder {
        HubBuilder {
            config: HubConfig::default(),
            hooks: Hooks::default(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    // ----- publishing -------------------------------------------------------------------

    /// Publishes `message` to every subscriber of `channel` (go-ws `SendToChannel`): the
    /// message's `channel` field is set to `channel`. No subscribers is not an error.
    ///
    /// The message is queued for every local subscriber at once (it never waits for a
    /// client) and the report says exactly what happened on this node. With a broker, the
    /// message is then handed to the broker for the other nodes and the future resolves once
    /// the broker accepted it.
    ///
    /// On a channel with history and a broker, the broker assigns the offset first and every
    /// node, this one included, delivers in offset order; the report is what this node
    /// delivered (see [`HubConfig::history`]).
    ///
    /// # Errors
    /// [`PublishError`] for an invalid channel name or a hub that is shutting down (then no
    /// client got the message), or [`PublishError::Broker`] when the broker did not accept
    /// it: this node's subscribers got it (the error carries the local report), other nodes
    /// did not. On a channel with history and a broker, nobody got it, except after a
    /// timeout: the broker may still store and deliver it (everywhere, in offset order).
    ///
    /// # Cancel safety
    /// Local delivery happens in the first poll. Dropping the future later may leave the
    /// message undelivered to other nodes. On a channel with history and a broker, a
    /// publish dropped before it resolves may or may not have been stored and delivered
    /// (everywhere, this node included, in offset order).
    pub async fn publish(
        &self,
        channel: &str,
        message: &Message,
    ) -> Result<PublishReport, PublishError> {
        let Some(broker) = self.inner.broker.get() else {
            return self.publish_local(channel, message);
        };
        self.accepting()?;
        validate_channel_name(channel, self.inner.config.max_channel_name_len)?;
        if self.inner.config.has_history(channel) {
            return self
                .publish_broker_history(broker.as_ref(), channel, message)
                .await;
        }
        let frame = self.encode(message, Some(channel))?;
        let local = self.publish_frame(Some(channel), &frame);
        broker
            .publish(Some(channel), frame::payload(&frame))
            .await
            .map_err(|reason| PublishError::Broker { reason, local })?;
        Ok(local)
    }

    /// Like [`Hub::publish`], synchronously, to this node's subscribers only.
    ///
    /// # Errors
    /// As [`Hub::publish`].
    pub fn publish_local(
        &self,
        channel: &str,
        message: &Message,
    ) -> Result<PublishReport, PublishError> {
        self.check_publish(channel)?;
        let config = &self.inner.config;
        // With a broker, history lives in the broker: a local-only publish is not part of it.
        if config.has_history(channel) && !self.has_broker() {
            return self.publish_with_history(channel, message);
        }
        let frame = self.encode(message, Some(channel))?;
        let Some(ch) = self.inner.channels.get(channel) else {
            self.inner
                .counters
                .published
                .fetch_add(1, Ordering::Relaxed);
            return Ok(PublishReport::default());
        };
        Ok(self.deliver_to(&ch.members.load(), &frame))
    }

    /// Whether a client's publish on `channel` may join a batch ([`crate::session`]): it is
    /// delivered on this node only, without a position.
    pub(crate) fn batches(&self, channel: &str) -> bool {
        !self.has_broker() && !self.inner.config.has_history(channel)
    }

    /// What [`Hub::publish_local`] checks before it encodes a message.
    pub(crate) fn check_publish(&self, channel: &str) -> Result<(), PublishError> {
        self.accepting()?;
        validate_channel_name(channel, self.inner.config.max_channel_name_len)?;
        Ok(())
    }

    /// Whether `other` is a handle to this hub.
    pub(crate) fn same_hub(&self, other: &Hub) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Delivers the frames of a batch of publishes on `channel` (`frames`, each ending at its
    /// offset in `ends`) to this node's subscribers, exactly as publishing them one by one
    /// would, with one chunk per subscriber when they fit its queue.
    pub(crate) fn deliver_batch(&self, channel: &str, frames: &Bytes, ends: &[u32]) {
        self.inner
            .counters
            .published
            .fetch_add(ends.len() as u64, Ordering::Relaxed);
        let Some(ch) = self.inner.channels.get(channel) else {
            return;
        };
        let (mut delivered, mut dropped, mut slow) = (0, 0, 0);
        for client in ch.members.load().iter() {
            let outcome = client.outbox.push_batch(frames, ends);
            delivered += outcome.queued as u64;
            dropped += outcome.dropped as u64;
            slow += u64::from(outcome.slow_consumer);
        }
        self.count_fan_out(delivered, dropped, slow);
    }

    /// A publish on a channel whose history the broker keeps: the broker assigns the offset,
    /// stores it and sends it to every node in offset order, this one included; the report
    /// is what this node delivered when it came back. During a broker outage nothing is
    /// delivered (offsets cannot be assigned) and the error says so.
    async fn publish_broker_history(
        &self,
        broker: &dyn Broker,
        channel: &str,
        message: &Message,
    ) -> Result<PublishReport, PublishError> {
        let config = &self.inner.config;
        let name = ChannelName::with_max_len(channel, config.max_channel_name_len)?;
        let head = message.json_head(Some(channel), SystemTime::now());
        // The position the broker adds, `,"offset":N,"epoch":"E"}`, is at most 62 bytes: N
        // and the epoch (a number the broker makes) have at most 20 digits each.
        self.check_size(frame::server_frame_len(head.len() + 62))?;
        let (offset, epoch) = broker
            .publish_history(channel, &head, config.history_size, config.history_ttl)
            .await
            .map_err(|reason| PublishError::Broker {
                reason,
                local: PublishReport::default(),
            })?;
        let Some(ch) = self.inner.channels.get(channel) else {
            return Ok(PublishReport::default());
        };
        #[cfg(feature = "redis")]
        if let Some(report) = self.deliver_own_history(&ch, &name, &head, offset, &epoch) {
            return Ok(report);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (ch, epoch);
        let report = self
            .inner
            .remote_history
            .report(&name, offset, broker.timeout())
            .await;
        Ok(report.unwrap_or_default())
    }

    /// A publish on a channel with history: the next offset, the log entry and the delivery
    /// to current subscribers all happen under the channel's log lock (see `history`).
    fn publish_with_history(
        &self,
        channel: &str,
        message: &Message,
    ) -> Result<PublishReport, PublishError> {
        let now = tokio::time::Instant::now();
        let history = &self.inner.history;
        let ch = self.inner.channels.get(channel);
        let log = match &ch {
            // The channel keeps its log: no second lookup.
            Some(ch) => Arc::clone(ch.history.get_or_init(|| history.log(channel, now))),
            None => history.log(channel, now),
        };
        let mut st = log.lock();
        history.renew_if_idle(&mut st, now);
        let frame = st.append(now, |p| {
            let at = Some((p.offset, &*p.epoch));
            let frame = message.encode_frame_at(Some(channel), SystemTime::now(), at);
            self.check_size(frame.len()).map(|()| frame)
        })?;
        history.trim(&mut st, now);
        // Members are read under the log lock. A channel is deleted only once empty and
        // nobody joins it after, so members found mean it is still the channel; an empty one
        // may have been replaced by a new channel (whose subscribers joined under this lock,
        // expecting this publication live), so it is looked up again.
        let members = ch.as_ref().map(|ch| ch.members.load());
        Ok(match members {
            Some(members) if members.len() > 0 => self.deliver_to(&members, &frame),
            _ => self.publish_frame(Some(channel), &frame),
        })
    }

    /// Subscribes `client` to a channel with history and queues the answer
    /// `{"type":"subscribed",...}` with the channel's position (a successful resume: the
    /// offset it resumes from); with `since` (an offset and
    /// its epoch) also every publication after it, when the history still holds all of them
    /// and they fit into the client's queue (`"recovered":true`), or none
    /// (`"recovered":false`: the client must resync). Never a partial recovery.
    pub(crate) fn subscribe_with_history(
        &self,
        client: &Arc<ClientShared>,
        channel: &str,
        since: Option<(u64, &str)>,
    ) -> Result<(), SubscribeError> {
        validate_channel_name(channel, self.inner.config.max_channel_name_len)?;
        // A refused subscribe creates no log.
        self.may_join(&client.subscriptions(), channel)?;
        let now = tokio::time::Instant::now();
        let log = self.inner.history.log(channel, now);
        let mut st = log.lock();
        self.inner.history.refresh(&mut st, now);
        let position = st.position();
        // Already subscribed: it is receiving live publications; replaying would duplicate.
        let already = client.subscriptions().channels.contains(channel);
        let recovered = match since {
            Some((offset, epoch)) if !already => st
                .since(epoch, offset)
                .filter(|frames| client.outbox.has_room_for(frames)),
            _ => None,
        };
        // Joining under the log lock: no publication can fall between the recovered ones and
        // the live ones.
        self.subscribe_shared(client, channel)?;
        if let Some(ch) = self.inner.channels.get(channel) {
            // The channel holds its log while it has subscribers, so the store keeps it.
            ch.history.get_or_init(|| Arc::clone(&log));
        }
        let resume = since.map(|(from, _)| (from, recovered.is_some()));
        let _ = client.outbox.push_data(crate::message::subscribed_frame(
            channel,
            resume,
            &position.epoch,
            position.offset,
        ));
        for frame in recovered.into_iter().flatten() {
            let _ = client.outbox.push_data(frame);
        }
        drop(st);
        Ok(())
    }

    /// The history of `channel`: its position and up to `limit` publications after offset
    /// `since` (each the exact JSON text clients received). With the Redis broker, a stored
    /// entry no wshub node could have written (not UTF-8) is left out, so a page may be
    /// shorter than `limit` although more follow: continue after the last offset received.
    ///
    /// # Errors
    /// [`HistoryError`] for an invalid channel name or a channel without history.
    pub async fn history(
        &self,
        channel: &str,
        since: u64,
        limit: usize,
    ) -> Result<History, HistoryError> {
        let config = &self.inner.config;
        validate_channel_name(channel, config.max_channel_name_len)?;
        if !config.has_history(channel) {
            return Err(HistoryError::NotEnabled);
        }
        if let Some(broker) = self.inner.broker.get() {
            let stored = broker
                .read_history(
                    channel,
                    since,
                    limit,
                    config.history_size,
                    config.history_ttl,
                )
                .await
                .map_err(HistoryError::Broker)?;
            return Ok(History {
                epoch: stored.epoch.unwrap_or_default(),
                offset: stored.offset,
                publications: stored
                    .entries
                    .iter()
                    .map(|(_, json)| String::from_utf8_lossy(json).into_owned())
                    .collect(),
            });
        }
        let Some(log) = self
            .inner
            .history
            .existing(channel, tokio::time::Instant::now())
        else {
            return Ok(History::default());
        };
        let st = log.lock();
        let position = st.position();
        let publications = st
            .page(since, limit)
            .iter()
            .map(|f| String::from_utf8_lossy(frame::payload(f)).into_owned())
            .collect();
        Ok(History {
            epoch: position.epoch.to_string(),
            offset: position.offset,
            publications,
        })
    }

    /// Delivers an encoded frame to this node's subscribers of `channel` (every client for
    /// `None`).
    fn publish_frame(&self, channel: Option<&str>, frame: &Bytes) -> PublishReport {
        match channel {
            Some(c) => match self.inner.channels.get(c) {
                Some(ch) => self.deliver_to(&ch.members.load(), frame),
                None => {
                    self.inner
                        .counters
                        .published
                        .fetch_add(1, Ordering::Relaxed);
                    PublishReport::default()
                }
            },
            None => self.deliver_to(&self.inner.clients.load(), frame),
        }
    }

    #[cfg(feature = "redis")]
    /// A message from another node (through the broker): framed once, delivered locally.
    ///
    /// `own` messages were published here: already delivered, except on history channels,
    /// whose publications every node (this one included) delivers in the broker's offset
    /// order.
    pub(crate) fn deliver_remote(
        &self,
        channel: Option<&str>,
        own: bool,
        generation: u64,
        payload: &[u8],
    ) {
        if let Some(c) = channel.filter(|c| self.inner.config.has_history(c)) {
            self.deliver_remote_history(c, own, generation, payload);
            return;
        }
        if !own && self.remote_payload_ok(payload, frame::server_frame_len(payload.len())) {
            let frame = frame::encode_with(frame::OpCode::Text, payload.len(), |buf| {
                buf.put_slice(payload)
            });
            self.publish_frame(channel, &frame);
        }
    }

    /// A message from the broker is sent to clients as a text frame: its JSON must be UTF-8
    /// (what another node sent always is) and its frame (of `frame_len` bytes) must fit a
    /// client's queue. Anything else is not from a wshub node; it is counted and not
    /// delivered.
    #[cfg(feature = "redis")]
    fn remote_payload_ok(&self, json: &[u8], frame_len: usize) -> bool {
        let ok = std::str::from_utf8(json).is_ok() && self.check_size(frame_len).is_ok();
        if !ok {
            self.inner
                .counters
                .remote_rejected
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                len = json.len(),
                "dropped a broker message that is not UTF-8 or too large for a client's queue"
            );
        }
        ok
    }

    /// This node's state for a channel whose history the broker keeps.
    fn remote_state(&self, name: &ChannelName) -> Arc<std::sync::Mutex<history::RemoteState>> {
        self.inner
            .remote_history
            .channel(name, |c| self.inner.channels.get(c).is_some())
    }

    /// Counts a subscribe closed with 1013 because the history could not be read.
    fn count_unavailable(&self) {
        self.inner
            .counters
            .history_unavailable
            .fetch_add(1, Ordering::Relaxed);
    }

    /// This node missed publications on `channel` (a broker-history channel): its
    /// subscribers get what is already queued, then close code 1012, and resume from their
    /// last offset on reconnect, which recovers the missed publications from the stored
    /// history (or tells them plainly that it cannot). Called under the channel's remote-state
    /// lock, so no live publication slips in before the closes.
    #[cfg(feature = "redis")]
    fn history_gap(&self, channel: &str, st: &mut history::RemoteState) {
        self.inner
            .counters
            .history_gaps
            .fetch_add(1, Ordering::Relaxed);
        st.recovering.clear();
        st.caught_up_to.clear();
        let Some(ch) = self.inner.channels.get(channel) else {
            return;
        };
        tracing::warn!(
            channel,
            subscribers = ch.members.len(),
            "missed publications from the broker; closing the channel's subscribers so they resume"
        );
        for client in ch.members.load().iter() {
            close_for_gap(client);
        }
    }

    /// The broker re-subscribed `channels` after losing its subscriptions: on those with
    /// history, compare (after a moment for publications already on their way) the stored
    /// position with the one this node reached, and close the subscribers of each channel
    /// that moved on meanwhile ([`Hub::history_gap`]). Without this, a channel that sees no
    /// further publication would never show the gap.
    #[cfg(feature = "redis")]
    fn broker_resubscribed(&self, channels: Vec<String>, generation: u64) {
        let Some(broker) = self.inner.broker.get().cloned() else {
            return;
        };
        let config = &self.inner.config;
        let channels: Vec<String> = channels
            .into_iter()
            .filter(|c| config.has_history(c) && self.inner.channels.get(c).is_some())
            .collect();
        if channels.is_empty() {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            let (size, ttl) = (hub.inner.config.history_size, hub.inner.config.history_ttl);
            let mut stored = Vec::with_capacity(channels.len());
            for channel in channels {
                // The first command on a connection that broke fails (and the broker then
                // reconnects it): the subscriber's connection may be back before the others.
                for attempt in 0..READ_ATTEMPTS {
                    if attempt > 0 {
                        tokio::time::sleep(READ_RETRY).await;
                    }
                    if let Ok(h) = broker.read_history(&channel, 0, 0, size, ttl).await {
                        stored.push((channel, h));
                        break;
                    }
                }
            }
            tokio::time::sleep(GAP_SETTLE).await;
            for (channel, h) in stored {
                let (Some(epoch), Ok(name)) =
                    (h.epoch, ChannelName::with_max_len(&channel, usize::MAX))
                else {
                    continue;
                };
                let state = hub.remote_state(&name);
                let mut st = state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let Some(ch) = hub.inner.channels.get(&channel) else {
                    continue;
                };
                // Without a position for this channel instance (nobody read the stored one,
                // nothing arrived live) there is nothing to compare with.
                let Some(last) = st.last.as_ref().filter(|l| l.instance == ch.instance) else {
                    continue;
                };
                if *last.epoch != *epoch || last.offset < h.offset {
                    st.set_last(history::LivePosition::new(
                        &epoch,
                        h.offset,
                        generation,
                        ch.instance,
                        false,
                    ));
                    hub.history_gap(&channel, &mut st);
                } else if let Some(last) = &mut st.last {
                    // Nothing missed: the position now stands for the new connection too (a
                    // new epoch starting on it later is no gap).
                    last.generation = last.generation.max(generation);
                }
            }
        });
    }

    #[cfg(feature = "redis")]
    /// A publication on a broker-history channel (`"<offset> <epoch> <JSON head>"`, completed
    /// here with its position): delivered under the channel's node-local lock, held back for
    /// clients still recovering. If it shows that this node missed publications, the
    /// channel's subscribers are closed instead, so that they resume from the stored history
    /// (see [`Hub::history_gap`]).
    ///
    /// The node's position ([`history::RemoteState::last`]) belongs to one instance of the
    /// local channel and starts once the channel's broker subscription is active (before
    /// that, what arrives may still come from an earlier subscription). After it, within one
    /// epoch, offsets must follow each other; a new epoch is no gap only when it starts at
    /// offset 1 and came through the same unbroken broker connection (the history expired or
    /// was flushed while this node was listening).
    fn deliver_remote_history(&self, channel: &str, own: bool, generation: u64, payload: &[u8]) {
        let mut fields = payload.splitn(3, |&b| b == b' ');
        let (Some(offset), Some(epoch), Some(head)) = (fields.next(), fields.next(), fields.next())
        else {
            return;
        };
        let (Some(offset), Ok(epoch)) = (
            std::str::from_utf8(offset)
                .ok()
                .and_then(|s| s.parse::<u64>().ok()),
            std::str::from_utf8(epoch),
        ) else {
            return;
        };
        let Ok(name) = ChannelName::with_max_len(channel, usize::MAX) else {
            return;
        };
        let state = self.remote_state(&name);
        let mut guard = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = &mut *guard;
        let ch = self.inner.channels.get(channel);
        let tracked = ch
            .as_ref()
            .filter(|ch| ch.activation.as_ref().is_none_or(|a| a.is_done()));
        if let Some(ch) = tracked {
            if own && st.skip_direct(ch.instance, epoch, offset) {
                return; // its publisher delivered it (`Hub::deliver_own_history`)
            }
            // Same instance: within the epoch offsets must follow; a new epoch must start at
            // offset 1 on the same connection. Another instance (or none yet): a fresh start.
            let (gap, newer) = match &st.last {
                Some(last) if last.instance == ch.instance => {
                    if *last.epoch == *epoch {
                        (offset > last.offset.saturating_add(1), offset > last.offset)
                    } else {
                        (offset != 1 || generation != last.generation, true)
                    }
                }
                _ => (false, true),
            };
            match &mut st.last {
                // The usual case: the next offset of the same epoch, updated in place.
                Some(last) if last.instance == ch.instance && *last.epoch == *epoch => {
                    if newer {
                        last.offset = offset;
                    }
                    // The live stream is in order: nothing up to here is still on its way.
                    last.live |= offset >= last.offset;
                    last.generation = generation;
                }
                _ => st.set_last(history::LivePosition::new(
                    epoch,
                    offset,
                    generation,
                    ch.instance,
                    true,
                )),
            }
            if gap {
                self.history_gap(channel, st);
                drop(guard);
                if own {
                    self.inner
                        .remote_history
                        .delivered(&name, offset, PublishReport::default());
                }
                return;
            }
        }
        let report = match &ch {
            // Framed only now: a copy that is skipped, or shows a gap, is not delivered. One no
            // node could have sent is not delivered either, but it keeps its place in the
            // offsets (the next one is no gap); a client resuming over it is told
            // `recovered: false`, as the stored entry is left out too.
            Some(ch) => {
                let frame = crate::message::history_frame(head, offset, epoch);
                let ok = self.remote_payload_ok(head, frame.len());
                self.deliver_positioned(st, ch, offset, epoch, ok.then_some(&frame))
            }
            None => PublishReport::default(),
        };
        drop(guard);
        if own {
            self.inner.remote_history.delivered(&name, offset, report);
        }
    }

    /// This node's own publication on a broker-history channel, delivered by its publisher
    /// as soon as the broker assigned its offset, when that is the next one this node's
    /// subscribers get (everything before it came through the live stream): it saves waiting
    /// for the copy, which is then skipped. `None` when the copy must be waited for (an
    /// earlier publication is still on its way, the channel's subscription is not active
    /// yet, or the epoch changed).
    #[cfg(feature = "redis")]
    fn deliver_own_history(
        &self,
        ch: &registry::Channel,
        name: &ChannelName,
        head: &[u8],
        offset: u64,
        epoch: &str,
    ) -> Option<PublishReport> {
        if !ch.activation.as_ref().is_none_or(|a| a.is_done()) {
            return None;
        }
        let state = self.remote_state(name);
        let mut guard = state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let st = &mut *guard;
        let last = st.last.as_mut()?;
        if last.instance != ch.instance
            || *last.epoch != *epoch
            || !last.live
            || last.offset.saturating_add(1) != offset
            || st.direct.len() >= history::DIRECT_MAX
        {
            return None;
        }
        last.offset = offset;
        st.direct.push_back(offset);
        let frame = crate::message::history_frame(head, offset, epoch);
        Some(self.deliver_positioned(st, ch, offset, epoch, Some(&frame)))
    }

    /// Delivers a broker-history publication to `ch`'s subscribers, under the channel's
    /// remote-state lock: held back for clients still recovering, skipped for those that read
    /// it from the stored history already.
    #[cfg(feature = "redis")]
    fn deliver_positioned(
        &self,
        st: &mut history::RemoteState,
        ch: &registry::Channel,
        offset: u64,
        epoch: &str,
        frame: Option<&Bytes>,
    ) -> PublishReport {
        // Clients that read the stored history further than this node's live stream has got:
        // done once a newer publication arrives.
        let mut skip: Vec<u64> = Vec::new();
        st.caught_up_to.retain(|&(client, upto)| {
            if offset <= upto {
                skip.push(client);
            }
            offset < upto
        });
        let mut held_epoch: Option<Arc<str>> = None;
        let Some(frame) = frame else {
            // Not delivered, but clients still recovering must see its offset go by.
            for r in &mut st.recovering {
                let epoch = held_epoch.get_or_insert_with(|| Arc::from(epoch));
                r.held.push((offset, Arc::clone(epoch), None));
            }
            return PublishReport::default();
        };
        if st.recovering.is_empty() && skip.is_empty() {
            return self.deliver_to(&ch.members.load(), frame);
        }
        self.deliver_except(&ch.members.load(), frame, |client| {
            if skip.contains(&client.id) {
                return true; // it has this one already
            }
            match st.recovering.iter_mut().find(|r| r.client == client.id) {
                Some(r) => {
                    let epoch = held_epoch.get_or_insert_with(|| Arc::from(epoch));
                    r.held
                        .push((offset, Arc::clone(epoch), Some(frame.clone())));
                    true
                }
                None => false,
            }
        })
    }

    /// A client's subscribe on a broker-history channel (see [`Hub::subscribe_with_history`]
    /// for the in-memory one): join while marked as recovering, wait until the broker
    /// delivers the channel here, read the stored history, then queue the answer, the
    /// recovered publications and the live ones held meanwhile, without gap or duplicate
    /// (offsets decide). Resolves to an error reply, if any.
    pub(crate) async fn subscribe_with_broker_history(
        self,
        client: Arc<ClientShared>,
        channel: String,
        since: Option<(u64, String)>,
    ) -> Option<String> {
        let Some(broker) = self.inner.broker.get().cloned() else {
            return Some("no broker".to_owned());
        };
        let config = &self.inner.config;
        let name = match ChannelName::with_max_len(&channel, config.max_channel_name_len) {
            Ok(n) => n,
            Err(e) => return Some(e.to_string()),
        };
        let state = self.remote_state(&name);
        let lock = || {
            state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        let joined = {
            let mut st = lock();
            let joined = self.subscribe_shared(&client, &channel);
            if joined.as_ref().is_ok_and(|j| j.added) {
                st.recovering.push(history::Recovering {
                    client: client.id,
                    held: Vec::new(),
                });
            }
            joined
        };
        let (wait, instance) = match joined {
            Err(e) => return Some(e.to_string()),
            Ok(j) if !j.added => {
                // Already subscribed and receiving live: nothing to recover or hold (replaying
                // would duplicate). Answered as the in-memory hub does: the channel's position,
                // and `recovered:false` to a resume, since nothing is replayed. The position is
                // what this client has been sent: the live one, or further if its recovery
                // read went further; answered under the channel's lock, so no live delivery
                // falls between them. Only without a live position yet is it read.
                let resume = since.as_ref().map(|(from, _)| (*from, false));
                {
                    let st = lock();
                    if let Some(last) = st
                        .last
                        .as_ref()
                        .filter(|l| l.live && l.instance == j.instance)
                    {
                        let caught = st
                            .caught_up_to
                            .iter()
                            .find(|(c, _)| *c == client.id)
                            .map_or(0, |&(_, offset)| offset);
                        let _ = client.outbox.push_data(crate::message::subscribed_frame(
                            &channel,
                            resume,
                            &last.epoch,
                            last.offset.max(caught),
                        ));
                        return None;
                    }
                }
                let read = broker
                    .read_history(&channel, 0, 0, config.history_size, config.history_ttl)
                    .await;
                return match read {
                    Ok(stored) => {
                        let epoch = stored.epoch.unwrap_or_default();
                        let _ = client.outbox.push_data(crate::message::subscribed_frame(
                            &channel,
                            resume,
                            &epoch,
                            stored.offset,
                        ));
                        None
                    }
                    Err(e) => {
                        self.count_unavailable();
                        close_unavailable(&client);
                        Some(format!("history unavailable: {e}"))
                    }
                };
            }
            Ok(j) => (j.pending, j.instance),
        };
        // If this future is dropped while waiting (the connection ended), the client must not
        // stay marked as recovering: that would keep the channel off its fast path for good.
        let _unmark = history::UnmarkRecovering {
            state: Arc::clone(&state),
            client: client.id,
        };
        // Every joiner waits until the channel's broker subscription is active, not only the
        // one that created the channel: what is read next must be followed by every later
        // publication, live.
        if let Some(wait) = wait {
            wait.await;
        }
        let (from, limit) = match &since {
            Some((offset, _)) => (*offset, config.history_size),
            None => (0, 0),
        };
        let generation = broker.generation(&channel);
        let read = broker
            .read_history(
                &channel,
                from,
                limit,
                config.history_size,
                config.history_ttl,
            )
            .await;
        let mut st = lock();
        let held = match st.recovering.iter().position(|r| r.client == client.id) {
            Some(i) => st.recovering.swap_remove(i).held,
            None => Vec::new(),
        };
        let (stored, error) = match read {
            Ok(stored) => (stored, None),
            Err(e) => (
                crate::broker::StoredHistory::default(),
                Some(format!("history unavailable: {e}")),
            ),
        };
        let current = self.inner.channels.get(&channel);
        if error.is_none() && current.is_some_and(|ch| ch.instance == instance) {
            // Without a position for this channel instance yet, the stored one (of the
            // connection that was up when the read started) becomes it: live publications up to
            // its offset may still arrive and are no gap. An existing position stays: raising
            // it could hide a gap it has not shown yet.
            if st.last.as_ref().is_none_or(|l| l.instance != instance) {
                let stored_epoch = stored.epoch.as_deref().unwrap_or_default();
                st.set_last(history::LivePosition::new(
                    stored_epoch,
                    stored.offset,
                    generation,
                    instance,
                    false,
                ));
                #[cfg(feature = "redis")]
                {
                    let now = broker.generation(&channel);
                    if now != generation {
                        // The read may predate an outage whose check found no position to
                        // compare: compare this channel now.
                        self.broker_resubscribed(vec![channel.clone()], now);
                    }
                }
            }
        }
        let epoch = stored.epoch.clone().unwrap_or_default();
        let recovered = since.as_ref().and_then(|(offset, wanted)| {
            let entries = &stored.entries;
            let same_epoch = stored.epoch.as_deref() == Some(wanted.as_str());
            let complete = *offset == stored.offset
                || (*offset < stored.offset
                    && entries.first().map(|e| e.0) == Some(offset + 1)
                    && entries.last().map(|e| e.0) == Some(stored.offset)
                    && entries
                        .windows(2)
                        .all(|w| Some(w[1].0) == w[0].0.checked_add(1)));
            (same_epoch && complete).then_some(entries)
        });
        let frames: Vec<Bytes> = recovered
            .into_iter()
            .flatten()
            .map(|(_, json)| {
                frame::encode_with(frame::OpCode::Text, json.len(), |b| b.put_slice(json))
            })
            .collect();
        if let Some(reason) = &error {
            // No position to answer with: neither `recovered:false` (the history may be
            // intact) nor a made-up epoch and offset. The client reconnects and resumes later.
            tracing::debug!(channel, client = client.id, "{reason}");
            self.count_unavailable();
            close_unavailable(&client);
            return error;
        }
        let recovered_ok = client.outbox.has_room_for(&frames);
        let resume = since
            .as_ref()
            .map(|(from, _)| (*from, recovered_ok && recovered.is_some()));
        let _ = client.outbox.push_data(crate::message::subscribed_frame(
            &channel,
            resume,
            &epoch,
            stored.offset,
        ));
        let mut last = stored.offset;
        if resume.is_some_and(|(_, recovered)| recovered) {
            if let (Some((offset, _)), Some(entries)) = (&since, recovered) {
                last = entries.last().map_or(*offset, |e| e.0);
            }
            for f in frames {
                let _ = client.outbox.push_data(f);
            }
        }
        // The live publications held meanwhile must continue what the client has: a hole
        // (this node's broker connection dropped during the read) or another epoch means it
        // missed some, and it is closed to resume (see `history_gap`).
        let mut epoch_now: Arc<str> = Arc::from(epoch.as_str());
        for (offset, held_epoch, frame) in held {
            let fresh = epoch_now.is_empty() && offset == 1; // the channel's first publication
            if !fresh && (held_epoch != epoch_now || offset > last.saturating_add(1)) {
                self.inner
                    .counters
                    .history_gaps
                    .fetch_add(1, Ordering::Relaxed);
                close_for_gap(&client);
                break;
            }
            if offset > last || fresh {
                if let Some(frame) = frame {
                    let _ = client.outbox.push_data(frame);
                }
                last = offset;
                epoch_now = held_epoch;
            }
        }
        // The stored history may be ahead of this node's live stream: publications up to
        // `last` can still arrive live, and this client has them already.
        // An entry goes at the first newer publication; on a quiet channel entries of clients
        // that left are dropped once they outnumber the members.
        st.caught_up_to.retain(|&(c, _)| c != client.id);
        st.caught_up_to.push((client.id, last));
        if let Some(ch) = self.inner.channels.get(&channel) {
            if st.caught_up_to.len() > 2 * ch.members.len() + 16 {
                st.caught_up_to
                    .retain(|&(c, _)| ch.members.get(c).is_some());
            }
        }
        drop(st);
        error
    }

    /// Sends `message` to every connected client (go-ws `Broadcast`), unchanged.
    ///
    /// # Errors
    /// [`PublishError::ShuttingDown`].
    ///
    /// # Cancel safety
    /// Cancel safe, as [`Hub::publish`].
    pub async fn broadcast(&self, message: &Message) -> Result<PublishReport, PublishError> {
        self.accepting()?;
        let frame = self.encode(message, None)?;
        let local = self.publish_frame(None, &frame);
        if let Some(broker) = self.inner.broker.get() {
            broker
                .publish(None, frame::payload(&frame))
                .await
                .map_err(|reason| PublishError::Broker { reason, local })?;
        }
        Ok(local)
    }

    /// Like [`Hub::broadcast`], synchronously, to this node's clients only.
    ///
    /// # Errors
    /// As [`Hub::broadcast`].
    pub fn broadcast_local(&self, message: &Message) -> Result<PublishReport, PublishError> {
        self.accepting()?;
        let frame = self.encode(message, None)?;
        Ok(self.publish_frame(None, &frame))
    }

    /// go-ws `SendProcessOutput`: publishes [`Message::process_output`] to `process:<id>`.
    ///
    /// # Errors
    /// As [`Hub::publish`] (an `id` that makes an invalid channel name is refused).
    pub async fn send_process_output(
        &self,
        id: &str,
        line: &str,
    ) -> Result<PublishReport, PublishError> {
        let msg = Message::process_output(id, line);
        self.publish(msg.channel(), &msg).await
    }

    /// go-ws `SendProcessStatus`: publishes [`Message::process_status`] to `process:<id>`.
    ///
    /// # Errors
    /// As [`Hub::publish`].
    pub async fn send_process_status(
        &self,
        id: &str,
        status: &str,
        exit_code: i64,
    ) -> Result<PublishReport, PublishError> {
        let msg = Message::process_status(id, status, exit_code);
        self.publish(msg.channel(), &msg).await
    }

    /// go-ws `SendEvent`: broadcasts [`Message::event`].
    ///
    /// # Errors
    /// As [`Hub::broadcast`].
    pub async fn send_event(&self, name: &str, data: &Json) -> Result<PublishReport, PublishError> {
        self.broadcast(&Message::event(name, data)).await
    }

    /// go-ws `SendError`: broadcasts [`Message::error`].
    ///
    /// # Errors
    /// As [`Hub::broadcast`].
    pub async fn send_error(&self, text: &str) -> Result<PublishReport, PublishError> {
        self.broadcast(&Message::error(text)).await
    }

    /// Encodes and frames `message` once, now, for `channel` (or a broadcast).
    ///
    /// # Errors
    /// [`PublishError::TooLarge`], see [`Hub::check_size`].
    fn encode(&self, message: &Message, channel: Option<&str>) -> Result<Bytes, PublishError> {
        let frame = message.encode_frame(channel, SystemTime::now());
        self.check_size(frame.len()).map(|()| frame)
    }

    /// Refuses a frame of `size` bytes that no client's queue could hold
    /// (`max_queued_bytes`): queued, it would disconnect (or be dropped for) every recipient
    /// as a slow consumer.
    pub(crate) fn check_size(&self, size: usize) -> Result<(), PublishError> {
        let limit = self.inner.config.max_queued_bytes;
        if size > limit {
            return Err(PublishError::TooLarge { size, limit });
        }
        Ok(())
    }

    fn accepting(&self) -> Result<(), PublishError> {
        if self.is_shutting_down() {
            return Err(PublishError::ShuttingDown);
        }
        Ok(())
    }

    /// Queues one shared frame for every member of `members`.
    fn deliver_to(&self, members: &Snapshot, frame: &Bytes) -> PublishReport {
        self.deliver_except(members, frame, |_| false)
    }

    /// Like `deliver_to`, except for the members `hold` takes care of itself (they count as
    /// enqueued).
    fn deliver_except(
        &self,
        members: &Snapshot,
        frame: &Bytes,
        mut hold: impl FnMut(&Arc<ClientShared>) -> bool,
    ) -> PublishReport {
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        let mut report = PublishReport::default();
        let mut slow = 0;
        for client in members.iter() {
            if hold(client) {
                report.enqueued += 1;
                continue;
            }
            match client.outbox.push_data(frame.clone()) {
                Enqueue::Queued => report.enqueued += 1,
                Enqueue::Dropped => report.dropped += 1,
                Enqueue::SlowConsumer => {
                    slow += 1;
                    report.disconnected += 1;
                }
                Enqueue::Closed => report.disconnected += 1,
            }
        }
        self.count_fan_out(report.enqueued as u64, report.dropped as u64, slow);
        report
    }

    /// Counts what one fan-out did: frames queued, frames dropped, clients disconnected as
    /// slow consumers.
    fn count_fan_out(&self, delivered: u64, dropped: u64, slow: u64) {
        let c = &self.inner.counters;
        c.delivered.fetch_add(delivered, Ordering::Relaxed);
        if dropped > 0 {
            c.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if slow > 0 {
            c.slow_consumer_disconnects
                .fetch_add(slow, Ordering::Relaxed);
        }
    }

    // ----- membership -------------------------------------------------------------------

    /// Subscribes `client` to `channel`. Idempotent: `Ok(false)` if it already was.
    ///
    /// # Errors
    /// [`SubscribeError`]: invalid channel name, the client's subscription limit
    /// ([`HubConfig::max_subscriptions`]) reached, or the client is closed.
    ///
    /// With a broker, the first subscriber of a channel on this node also subscribes the node
    /// in the broker; messages other nodes publish reach it once the broker confirmed that
    /// (clients that subscribe with a `subscribe` message get no reply before then).
    pub fn subscribe(&self, client: &Client, channel: &str) -> Result<bool, SubscribeError> {
        self.subscribe_shared(client.shared(), channel)
            .map(|joined| joined.added)
    }

    /// Unsubscribes `client` from `channel`. Idempotent: `Ok(false)` if it was not
    /// subscribed. A channel whose last subscriber leaves is deleted.
    ///
    /// # Errors
    /// [`SubscribeError::ChannelName`] for an invalid name.
    pub fn unsubscribe(&self, client: &Client, channel: &str) -> Result<bool, SubscribeError> {
        self.unsubscribe_shared(client.shared(), channel)
    }

    /// Subscribes; with a broker, while the channel's broker subscription is not active yet
    /// (the channel was just created, by this join or a recent one), also returns a future
    /// that resolves once the broker delivers the channel to this node.
    pub(crate) fn subscribe_shared(
        &self,
        client: &Arc<ClientShared>,
        channel: &str,
    ) -> Result<Subscribed, SubscribeError> {
        let config = &self.inner.config;
        let name = ChannelName::with_max_len(channel, config.max_channel_name_len)?;
        let mut subs = client.subscriptions();
        if !self.may_join(&subs, channel)? {
            return Ok(Subscribed {
                added: false,
                instance: 0,
                pending: None,
            });
        }
        let broker = self.inner.broker.get();
        let joined = self
            .inner
            .channels
            .join(&name, client, || broker.map(|b| b.subscribe(&name)));
        subs.channels.insert(name);
        Ok(Subscribed {
            added: joined.added,
            instance: joined.instance,
            pending: joined.pending.map(|a| -> Pending { Box::pin(a.wait()) }),
        })
    }

    /// Whether a client with subscriptions `subs` would join `channel` (`false`: it is in it
    /// already).
    ///
    /// # Errors
    /// The client is closed, or at [`HubConfig::max_subscriptions`].
    fn may_join(&self, subs: &Subscriptions, channel: &str) -> Result<bool, SubscribeError> {
        if subs.closed {
            return Err(SubscribeError::ClientClosed);
        }
        if subs.channels.contains(channel) {
            return Ok(false);
        }
        let limit = self.inner.config.max_subscriptions;
        if subs.channels.len() >= limit {
            return Err(SubscribeError::TooManySubscriptions { limit });
        }
        Ok(true)
    }

    /// Removes client `id` from `channel`; the last local subscriber unsubscribes the broker.
    fn leave_channel(&self, channel: &str, id: u64) {
        let broker = self.inner.broker.get();
        self.inner.channels.leave(channel, id, || {
            if let Some(b) = broker {
                b.unsubscribe(channel);
            }
        });
    }

    pub(crate) fn unsubscribe_shared(
        &self,
        client: &Arc<ClientShared>,
        channel: &str,
    ) -> Result<bool, SubscribeError> {
        validate_channel_name(channel, self.inner.config.max_channel_name_len)?;
        let mut subs = client.subscriptions();
        if !subs.channels.remove(channel) {
            return Ok(false);
        }
        self.leave_channel(channel, client.id);
        Ok(true)
    }

    /// The connected client with this id.
    pub fn client(&self, id: u64) -> Option<Client> {
        self.inner
            .clients
            .get(id)
            .map(|c| Client::new(c, self.clone()))
    }

    /// Every connected client.
    pub fn clients(&self) -> Vec<Client> {
        self.inner
            .clients
            .load()
            .iter()
            .map(|c| Client::new(Arc::clone(c), self.clone()))
            .collect()
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.inner.clients.len()
    }

    /// Number of channels with at least one subscriber.
    pub fn channel_count(&self) -> usize {
        self.inner.channels.len()
    }

    /// Number of subscribers of `channel` (0 for an unknown channel).
    pub fn channel_subscriber_count(&self, channel: &str) -> usize {
        self.inner
            .channels
            .get(channel)
            .map_or(0, |c| c.members.len())
    }

    /// Every channel with its subscriber count, sorted by name.
    pub fn channel_subscriber_counts(&self) -> Vec<(ChannelName, usize)> {
        self.inner.channels.subscriber_counts()
    }

    /// Client and channel counts (go-ws `Stats`).
    pub fn stats(&self) -> Stats {
        Stats {
            clients: self.client_count(),
            channels: self.channel_count(),
        }
    }

    /// Counts over every node that shares this hub's broker: the nodes connected to it, the
    /// channels with a subscriber on any node, and the clients connected to any node (see
    /// [`ClusterStats::clients`] for how fresh other nodes' counts are). `Ok(None)` without a
    /// broker (a single node: [`Hub::stats`] is the whole picture).
    ///
    /// # Errors
    /// [`Error::Broker`](crate::Error::Broker) when the broker cannot be asked.
    pub async fn cluster_stats(&self) -> Result<Option<ClusterStats>, crate::Error> {
        match self.inner.broker.get() {
            None => Ok(None),
            Some(broker) => broker
                .cluster(self.client_count())
                .await
                .map(Some)
                .map_err(crate::Error::Broker),
        }
    }

    /// Cumulative counters.
    pub fn counters(&self) -> Counters {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            published: get(&c.published),
            delivered: get(&c.delivered),
            dropped: get(&c.dropped),
            slow_consumer_disconnects: get(&c.slow_consumer_disconnects),
            connections: get(&c.connections),
            disconnections: get(&c.disconnections),
            protocol_errors: get(&c.protocol_errors),
            hook_panics: get(&c.hook_panics),
            socket_writes: get(&c.socket_writes),
            frames_written: get(&c.frames_written),
            history_gaps: get(&c.history_gaps),
            history_unavailable: get(&c.history_unavailable),
            remote_rejected: get(&c.remote_rejected),
            broker: self
                .inner
                .broker
                .get()
                .map(|b| b.counters())
                .unwrap_or_default(),
        }
    }

    // ----- connections ------------------------------------------------------------------

    /// Serves one WebSocket connection whose handshake is already done (server side), until
    /// it ends. [`Hub::upgrade`] does this for hyper requests; use `serve` for streams upgraded
    /// by other means. The hub's [`shutdown`](Hub::shutdown) waits for it.
    ///
    /// # Cancel safety
    /// Dropping the future drops the connection; the client is unregistered and the disconnect
    /// hook fires.
    pub async fn serve<S>(&self, io: S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.serve_as(io, None).await;
    }

    /// Like [`Hub::serve`], for a client your own code authenticated: `identity` is what
    /// [`Client::identity`] returns. [`HubConfig::max_connections`] is enforced by
    /// [`Hub::upgrade`], not here.
    ///
    /// # Cancel safety
    /// As [`Hub::serve`].
    pub async fn serve_as<S>(&self, io: S, identity: Option<String>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let identity = identity.map(Arc::from);
        let session = session::serve(self.clone(), io, identity);
        self.inner.tracker.track_future(session).await;
    }

    pub(crate) fn tracker(&self) -> &TaskTracker {
        &self.inner.tracker
    }

    /// Whether [`Hub::shutdown`] has begun.
    pub fn is_shutting_down(&self) -> bool {
        // SeqCst pairs with the store in `shutdown`: a client registered after shutdown read
        // the client list is guaranteed to see the flag.
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Shuts the hub down: new connections and publishes are refused, every client receives
    /// what was already queued for it and then close code 1001 "going away". Clients still
    /// connected at `deadline` are dropped. Every disconnect hook has run when this returns,
    /// and no client or channel remains. With Redis, the node then leaves the cluster's
    /// client count ([`Hub::cluster_stats`]).
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future leaves clients closing without the deadline.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let members = self.inner.clients.load();
        let clients = members.len();
        for c in members.iter() {
            c.outbox.request_close(
                frame::close_frame(close_code::GOING_AWAY, "going away"),
                false,
                DisconnectReason::Shutdown,
            );
        }
        drop(members);
        let tracker = &self.inner.tracker;
        tracker.close();
        let mut forced = 0;
        if tokio::time::timeout(deadline, tracker.wait())
            .await
            .is_err()
        {
            let members = self.inner.clients.load();
            forced = members.len();
            for c in members.iter() {
                c.outbox.abort(DisconnectReason::Shutdown);
            }
            drop(members);
            let grace = self.inner.config.close_timeout;
            let _ = tokio::time::timeout(grace, tracker.wait()).await;
        }
        if let Some(broker) = self.inner.broker.get() {
            broker.leave().await;
        }
        ShutdownReport { clients, forced }
    }

    /// Registers a new client (its session is starting).
    pub(crate) fn register(&self, identity: Option<Arc<str>>) -> Arc<ClientShared> {
        let inner = &self.inner;
        let config = &inner.config;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Outbox::new(
            config.max_queued_bytes,
            config.max_queued_frames,
            config.slow_consumer,
        );
        let client = ClientShared::new(id, outbox, identity);
        inner.clients.insert(&client);
        inner.counters.connections.fetch_add(1, Ordering::Relaxed);
        if self.is_shutting_down() {
            client.outbox.request_close(
                frame::close_frame(close_code::GOING_AWAY, "going away"),
                false,
                DisconnectReason::Shutdown,
            );
        }
        if let Some(hook) = &inner.hooks.on_connect {
            let handle = Client::new(Arc::clone(&client), self.clone());
            self.guarded(|| hook(&handle));
        }
        client
    }

    /// Unregisters a client whose session ended: no more messages, hook, then removal from
    /// every channel (emptied channels are deleted) and from the client list.
    pub(crate) fn unregister(&self, client: &Arc<ClientShared>, reason: &DisconnectReason) {
        let inner = &self.inner;
        client.outbox.close();
        client.subscriptions().closed = true;
        if let Some(hook) = &inner.hooks.on_disconnect {
            let handle = Client::new(Arc::clone(client), self.clone());
            self.guarded(|| hook(&handle, reason));
        }
        let channels = std::mem::take(&mut client.subscriptions().channels);
        for channel in &channels {
            self.leave_channel(channel, client.id);
        }
        inner.clients.remove(client.id);
        inner
            .counters
            .disconnections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Reserves a connection slot for an upgrade; `None` at [`HubConfig::max_connections`].
    pub(crate) fn reserve_slot(&self) -> Option<Slot> {
        let open = &self.inner.open;
        // AcqRel keeps the count exact under concurrent upgrades; it guards nothing else.
        if open.fetch_add(1, Ordering::AcqRel) >= self.inner.config.max_connections {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot { hub: self.clone() })
    }

    /// Runs the authentication hook: `Ok(None)` without one.
    pub(crate) fn authenticate(&self, handshake: &Handshake<'_>) -> Result<Option<String>, String> {
        match &self.inner.hooks.authenticate {
            None => Ok(None),
            Some(hook) => match catch_unwind(AssertUnwindSafe(|| hook(handshake))) {
                Ok(result) => result.map(Some),
                Err(_) => {
                    self.inner
                        .counters
                        .hook_panics
                        .fetch_add(1, Ordering::Relaxed);
                    Err("authentication failed".to_owned())
                }
            },
        }
    }

    /// Runs the channel authoriser (allowing everything without one; a panic refuses).
    pub(crate) fn channel_allowed(
        &self,
        client: &Arc<ClientShared>,
        channel: &str,
        action: ChannelAction,
    ) -> bool {
        let Some(hook) = &self.inner.hooks.authorize_channel else {
            return true;
        };
        let handle = Client::new(Arc::clone(client), self.clone());
        let mut allowed = false;
        self.guarded(|| allowed = hook(&handle, channel, action));
        allowed
    }

    pub(crate) fn has_channel_authoriser(&self) -> bool {
        self.inner.hooks.authorize_channel.is_some()
    }

    pub(crate) fn has_broker(&self) -> bool {
        self.inner.broker.get().is_some()
    }

    pub(crate) fn has_message_hook(&self) -> bool {
        self.inner.hooks.on_message.is_some()
    }

    pub(crate) fn call_message_hook(&self, client: &Arc<ClientShared>, message: IncomingMessage) {
        if let Some(hook) = &self.inner.hooks.on_message {
            let handle = Client::new(Arc::clone(client), self.clone());
            self.guarded(|| hook(&handle, message));
        }
    }

    /// One vectored write completed `frames` frames.
    pub(crate) fn count_write(&self, frames: usize) {
        let c = &self.inner.counters;
        c.socket_writes.fetch_add(1, Ordering::Relaxed);
        c.frames_written.fetch_add(frames as u64, Ordering::Relaxed);
    }

    pub(crate) fn count_protocol_error(&self) {
        self.inner
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a hook, containing (and counting) a panic.
    fn guarded(&self, hook: impl FnOnce()) {
        if catch_unwind(AssertUnwindSafe(hook)).is_err() {
            self.inner
                .counters
                .hook_panics
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!("a wshub hook panicked; the panic was contained");
        }
    }
}

/// A connection slot reserved by [`Hub::reserve_slot`], released when dropped.
pub(crate) struct Slot {
    hub: Hub,
}

impl Slot {
    /// The hub the slot belongs to.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.inner.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.client_count())
            .field("channels", &self.channel_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Waker;

    use super::*;

    #[tokio::test]
    async fn every_recipient_gets_the_same_bytes_not_a_copy() {
        let hub = Hub::new();
        let clients: Vec<_> = (0..3).map(|_| hub.register(None)).collect();
        for c in &clients {
            hub.subscribe_shared(c, "news").unwrap();
        }
        let report = hub
            .publish("news", &Message::new("event").with_data(Json::string("hi")))
            .await
            .unwrap();
        assert_eq!(report.enqueued, 3);
        let frames: Vec<Bytes> = clients
            .iter()
            .map(|c| {
                let mut out = VecDeque::new();
                c.outbox.take(&mut out, false, Waker::noop(), false);
                assert_eq!(out.len(), 1);
                out.pop_front().unwrap().bytes
            })
            .collect();
        // One encoding: the three handles point into the same buffer.
        assert!(frames.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()));
        assert!(frames.windows(2).all(|w| w[0] == w[1]));
        for c in &clients {
            hub.unregister(c, &DisconnectReason::ConnectionLost);
        }
    }
}
