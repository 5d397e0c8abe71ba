//! A reconnecting WebSocket client for wshub and go-ws servers (feature `client`).
//!
//! [`ReconnectingClient`] is go-ws's `ReconnectingClient` in Rust, and more:
//!
//! - it dials `ws://` or `wss://` (rustls), with extra request headers such as
//!   `Authorization`, and reconnects with go-ws's backoff ([`Backoff`]) until it is closed
//!   or [`max_retries`](ClientConfig::max_retries) runs out;
//! - it remembers its subscriptions ([`subscribe`](ReconnectingClient::subscribe)) and
//!   subscribes again after every reconnect, and it announces a connection only once the
//!   server has confirmed those subscriptions (by answering a `ping` sent after them), so a
//!   message published after [`Event::Reconnected`] is not missed;
//! - on channels with history (wshub's `HubConfig::history`), it keeps the position of the
//!   last publication received and resumes from it after every reconnect: the server replays
//!   what was missed ([`Event::Recovered`]), or says it cannot ([`Event::NotRecovered`]); see
//!   [Resuming after a disconnect](#resuming-after-a-disconnect);
//! - it splits text frames on `\n`, so it reads go-ws's batched frames one message at a time;
//! - it pings the server and replaces a connection on which nothing arrives for
//!   [`keepalive_timeout`](ClientConfig::keepalive_timeout);
//! - a misbehaving server (bad handshake, bad frames, oversized messages) produces a typed
//!   [`ClientError`] in an event, then a reconnect; nothing panics.
//!
//! Everything the client observes arrives in order on one [`Events`] stream, which covers
//! go-ws's four callbacks:
//!
//! | go-ws callback | [`Event`] |
//! |---|---|
//! | `OnConnect` | [`Event::Connected`], the first connection |
//! | `OnReconnect(attempt)` | [`Event::Reconnected`]` { attempt }`, every later one (`attempt >= 1`) |
//! | `OnDisconnect(err)` | [`Event::Disconnected`]`(error)`, every time a connection ends |
//! | `OnMessage(msg)` | [`Event::Message`]`(message)`, one per message (per line) |
//! | (none: go-ws only logs) | [`Event::ConnectFailed`]` { attempt, error, retry_in }` |
//! | (none: go-ws has no history) | [`Event::Recovered`] and [`Event::NotRecovered`]` { channel, epoch, offset }` |
//!
//! # Examples
//! ```no_run
//! use futures_util::StreamExt;
//! use wshub::client::{Event, ReconnectingClient};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = ReconnectingClient::connect("ws://127.0.0.1:8080/ws")?;
//! client.subscribe("news")?; // remembered; sent now and after every reconnect
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(message) => println!("{}", message.text().unwrap_or_default()),
//!         Event::Connected | Event::Reconnected { .. } => {
//!             client.send(r#"{"type":"ping"}"#).await?;
//!         }
//!         Event::Disconnected(why) => eprintln!("disconnected: {why}"),
//!         Event::ConnectFailed { error, retry_in, .. } => eprintln!("{error}, retry in {retry_in:?}"),
//!         _ => {}
//!     }
//! }
//! // The stream ends when the client stops; `closed` says why.
//! client.closed().await?;
//! # Ok(()) }
//! ```
//!
//! # Resuming after a disconnect
//! On a wshub channel with history every publication carries its position,
//! `"offset":N,"epoch":"E"`, and a subscribe is answered with
//! `{"type":"subscribed","channel":C,"epoch":E,"offset":N,...}`. The client records, per
//! subscribed channel, the position of the last publication it put on the event stream (or
//! the one the answer gives), readable with [`ReconnectingClient::position`]. After a
//! reconnect it subscribes with that position,
//! `{"type":"subscribe","channel":C,"data":C,"offset":N,"epoch":E}`, and the server answers
//! `"recovered":true` or `false`:
//!
//! - `true`: [`Event::Recovered`], then every publication after N, in order and each once, as
//!   [`Event::Message`]s, then the live ones. Nothing is lost or doubled across the cut.
//! - `false` (the cut outlasted the history window or its publications would not fit the
//!   client's queue on the server, or the history was lost and the epoch changed, e.g. a
//!   server restart): [`Event::NotRecovered`] with the channel's current position, which the
//!   client adopts. Publications were missed: resync the application's state.
//!
//! These come after [`Event::Connected`] or [`Event::Reconnected`] and before the channel's
//! messages. The
//! `subscribed` answers to the client's own subscribes are consumed: they become positions and
//! these events, never [`Event::Message`]s. A program that persists its positions starts the
//! next run with [`ReconnectingClient::subscribe_from`]. Channels without history (and go-ws
//! servers) have no position and are simply subscribed again.
//!
//! ```no_run
//! use wshub::client::{Event, ReconnectingClient};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, mut events) = ReconnectingClient::connect("ws://127.0.0.1:8080/ws")?;
//! // Resume where the previous run stopped (offset 41 in epoch "e1"), if the server still can.
//! client.subscribe_from("feed:orders", "e1", 41)?;
//! while let Some(event) = events.recv().await {
//!     match event {
//!         Event::Message(message) => println!("{}", message.text().unwrap_or_default()),
//!         Event::Recovered { channel, offset, .. } => {
//!             eprintln!("{channel}: resumed after offset {offset}");
//!         }
//!         Event::NotRecovered { channel, .. } => eprintln!("{channel}: gap, resync"),
//!         _ => {}
//!     }
//! }
//! // Once the stream has ended, the position covers exactly the events delivered.
//! let saved = client.position("feed:orders"); // Some((epoch, offset)), to persist
//! # drop(saved);
//! # Ok(()) }
//! ```
//!
//! # Backpressure
//! The client reads from the socket only as fast as the application takes events: when
//! [`event_capacity`](ClientConfig::event_capacity) events wait, it stops reading, and the
//! server sees a slow consumer. Time spent waiting for the application does not count against
//! the keepalive timeout. Dropping the [`Events`] stream discards further events.
//!
//! # Cancel safety
//! [`ReconnectingClient::send`] is cancel safe: if it is dropped before it returns, the
//! message was not queued. [`ReconnectingClient::closed`] and [`Events::recv`] are cancel
//! safe. Closing the client (or cancelling its token) sends a close frame and ends the task
//! within [`close_timeout`](ClientConfig::close_timeout).

use std::collections::BTreeMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

mod config;
mod connection;
mod error;
mod handshake;
mod proxy;

pub use config::{Backoff, ClientBuilder, ClientConfig};
pub use error::{ClientError, HandshakeError, NotConnected, ProxyError};
pub use proxy::Proxy;
/// The rustls crate, for [`ClientConfig::tls`].
pub use tokio_rustls::rustls;

use crate::error::{ChannelNameError, ConfigError};
use crate::frame::OpCode;
use crate::message::channel::ChannelName;
use handshake::Target;

/// Where the client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// No connection: waiting before the next dial, or stopped.
    Disconnected,
    /// Dialing, in the handshake, or waiting for the server to confirm the subscriptions.
    Connecting,
    /// Connected: [`ReconnectingClient::send`] works.
    Connected,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            2 => State::Connected,
            1 => State::Connecting,
            _ => State::Disconnected,
        }
    }
}

/// Something the client observed, in order. See the [module docs](self) for how these map to
/// go-ws's callbacks.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The first connection is up: handshake done, subscriptions confirmed, `send` works.
    Connected,
    /// A later connection is up. `attempt` (at least 1) is the number of dials it took since
    /// the previous connection ended: 1 when the immediate redial succeeded.
    Reconnected {
        /// Dials since the previous connection ended, this one included.
        attempt: u32,
    },
    /// A message from the server: a binary message, a text message, or one line of a text
    /// message (see [`ClientConfig::split_lines`]).
    Message(ReceivedMessage),
    /// An established connection ended, and why. [`ClientError::Closed`] means the
    /// application closed the client; otherwise the client redials at once.
    Disconnected(ClientError),
    /// The server resumed a subscription from the client's position on a channel with
    /// history (it answered `"recovered":true`): the publications the client missed follow,
    /// in order and each once, as [`Event::Message`]s, before the live ones. `epoch` and
    /// `offset` are the position the client resumed from, so the next publication on
    /// `channel` has offset `offset + 1`.
    ///
    /// Sent after [`Event::Reconnected`] for each channel with a known position, and after a
    /// [`subscribe_from`](ReconnectingClient::subscribe_from).
    Recovered {
        /// The channel.
        channel: ChannelName,
        /// The epoch of the channel's history.
        epoch: String,
        /// The offset of the last publication received before the cut (or the one given to
        /// `subscribe_from`).
        offset: u64,
    },
    /// The server could not resume a subscription (it answered `"recovered":false`): the
    /// position is outside the channel's history window (or what followed it would not fit
    /// the client's queue on the server), or the epoch changed (the history was lost, e.g.
    /// the server restarted). Publications were missed and none are replayed:
    /// the application must resync, e.g. from its own source of truth. The client adopts the
    /// server's current position, given here: the next publication on `channel` has offset
    /// `offset + 1`.
    NotRecovered {
        /// The channel.
        channel: ChannelName,
        /// The channel's current epoch.
        epoch: String,
        /// The offset of the channel's last publication.
        offset: u64,
    },
    /// A dial failed (connect, TLS, handshake, or the connection died before it was
    /// confirmed).
    ConnectFailed {
        /// Consecutive failed dials, this one included (starting at 1).
        attempt: u32,
        /// Why the dial failed.
        error: ClientError,
        /// When the client dials again; `None` when it gives up
        /// ([`ClientConfig::max_retries`]) and stops with [`ClientError::MaxRetries`].
        retry_in: Option<Duration>,
    },
}

/// A message received from the server.
///
/// Cloning is a reference-count increment; the lines of one text frame share its buffer.
/// `Debug` prints the length, not the content.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    payload: Bytes,
    binary: bool,
}

impl ReceivedMessage {
    /// A text message; `payload` is valid UTF-8.
    fn new_text(payload: Bytes) -> Self {
        ReceivedMessage {
            payload,
            binary: false,
        }
    }

    fn new_binary(payload: Bytes) -> Self {
        ReceivedMessage {
            payload,
            binary: true,
        }
    }

    /// The text of a text message; `None` for a binary message.
    ///
    /// # Examples
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(message: wshub::client::ReceivedMessage) {
    /// if let Some(json) = message.text() {
    ///     println!("{json}");
    /// }
    /// # }
    /// ```
    pub fn text(&self) -> Option<&str> {
        if self.binary {
            return None;
        }
        // The decoder validated the frame as UTF-8 and lines are split at ASCII newlines,
        // so this check always succeeds.
        std::str::from_utf8(&self.payload).ok()
    }

    /// The raw payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Consumes the message, returning its payload.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// Whether this came in a binary frame.
    pub fn is_binary(&self) -> bool {
        self.binary
    }

    /// The message as a wshub/go-ws [`Envelope`] (go-ws's `OnMessage` gets the same fields),
    /// borrowed from the payload.
    ///
    /// # Errors
    /// The JSON error when the payload is not an object with a string `type` (or a field
    /// has the wrong type).
    ///
    /// # Examples
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # fn f(message: wshub::client::ReceivedMessage) -> Result<(), serde_json::Error> {
    /// let msg = message.envelope()?;
    /// if msg.kind == "event" {
    ///     println!("{:?}: {}", msg.channel, msg.data.map_or("", |d| d.get()));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn envelope(&self) -> Result<Envelope<'_>, serde_json::Error> {
        self.json()
    }

    /// Deserializes the payload into your own type.
    ///
    /// # Errors
    /// The JSON error.
    pub fn json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }
}

/// The fields of a wshub (and go-ws) message, borrowed from a [`ReceivedMessage`]:
/// `{"type":T,"channel":C,"processId":P,"data":D,"timestamp":TS}`, plus `offset` and `epoch`
/// on channels with history. Other fields (`recovered` in a `subscribed` reply) are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
#[non_exhaustive]
pub struct Envelope<'a> {
    /// `type`.
    #[serde(rename = "type", borrow)]
    pub kind: std::borrow::Cow<'a, str>,
    /// `channel`, absent on broadcasts.
    #[serde(default, borrow)]
    pub channel: Option<std::borrow::Cow<'a, str>>,
    /// `processId`.
    #[serde(rename = "processId", default, borrow)]
    pub process_id: Option<std::borrow::Cow<'a, str>>,
    /// `data`, exactly as sent (parse it with `serde_json` into your own type).
    #[serde(default, borrow)]
    pub data: Option<&'a serde_json::value::RawValue>,
    /// `timestamp` (RFC 3339, UTC).
    #[serde(default, borrow)]
    pub timestamp: Option<std::borrow::Cow<'a, str>>,
    /// `offset`, on channels with history.
    #[serde(default)]
    pub offset: Option<u64>,
    /// `epoch`, on channels with history.
    #[serde(default, borrow)]
    pub epoch: Option<std::borrow::Cow<'a, str>>,
}

impl fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("len", &self.payload.len())
            .field("binary", &self.binary)
            .finish()
    }
}

/// The stream of [`Event`]s of one [`ReconnectingClient`]. It ends when the client stops.
///
/// Implements [`futures_core::Stream`]; [`recv`](Self::recv) needs no extension trait.
pub struct Events {
    rx: mpsc::Receiver<Event>,
    _alive: Arc<Alive>,
}

impl Events {
    /// The next event, or `None` once the client has stopped.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped call loses no event.
    ///
    /// # Examples
    /// ```no_run
    /// # #[allow(dead_code)]
    /// # async fn f(mut events: wshub::client::Events) {
    /// while let Some(event) = events.recv().await {
    ///     eprintln!("{event:?}");
    /// }
    /// # }
    /// ```
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Events {
    type Item = Event;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("queued", &self.rx.len())
            .finish_non_exhaustive()
    }
}

/// Stops the client when the last handle (client or event stream) is dropped.
struct Alive(CancellationToken);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// State shared by the handles and the client's task.
struct Shared {
    /// `URL` without path and query (which may hold credentials), for `Debug`.
    origin: String,
    /// [`State`] as a `u8`. Relaxed: it is a report, nothing is published through it.
    state: AtomicU8,
    /// Cancelled by `close`, the builder's token, or dropping every handle.
    cancel: CancellationToken,
    /// The remembered subscriptions and the current connection's queue.
    inner: Mutex<Inner>,
    /// Copy of `Inner::version`, stored (Release) under the lock after each change; the task
    /// loads it (Acquire) before writing each queued message, so a subscribe that happened
    /// before a `send` reaches the server before that message.
    subscriptions_version: AtomicU64,
    /// Wakes the connection when the subscriptions change.
    subscriptions_changed: Notify,
    /// The task's final result, set once when it stops.
    done: watch::Receiver<Option<Result<(), ClientError>>>,
}

struct Inner {
    /// The remembered subscriptions, each with its position when known.
    subscriptions: BTreeMap<ChannelName, Subscription>,
    /// Incremented on every change of `subscriptions` (not on position updates).
    version: u64,
    /// The live connection's outgoing queue; `None` when not connected.
    sender: Option<mpsc::Sender<Bytes>>,
}

/// A remembered subscription.
#[derive(Debug, Clone)]
struct Subscription {
    /// The `version` that added it: a channel removed and added again between two
    /// synchronisations is unsubscribed and subscribed again on the connection, so a
    /// [`ReconnectingClient::subscribe_from`] in between takes effect.
    added: u64,
    /// Where the client stands on the channel's history: from the last publication handed to
    /// the application, a `subscribed` answer, or `subscribe_from`. `None` until known.
    position: Option<Position>,
}

/// A position in a channel's history: the epoch and the offset of the last publication.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    epoch: String,
    offset: u64,
}

/// How to undo a position update ([`Shared::set_position`]).
#[derive(Debug)]
enum Undo {
    /// The channel is not remembered: nothing changed.
    Nothing,
    /// The subscription (added at this version) had no position.
    Clear { added: u64 },
    /// The subscription (added at this version) had this offset, and this epoch if it
    /// changed.
    Restore {
        added: u64,
        offset: u64,
        epoch: Option<String>,
    },
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding the lock; if something did, the data is still valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    fn set_sender(&self, sender: Option<mpsc::Sender<Bytes>>) {
        self.lock().sender = sender;
    }

    fn subscription_snapshot(&self) -> (BTreeMap<ChannelName, Subscription>, u64) {
        let inner = self.lock();
        (inner.subscriptions.clone(), inner.version)
    }

    /// Remembers `channel` (with a starting position); `false` if it already was.
    fn add_subscription(&self, channel: ChannelName, position: Option<Position>) -> bool {
        self.change_subscriptions(|subscriptions, version| {
            if subscriptions.contains_key(&channel) {
                return false;
            }
            subscriptions.insert(
                channel,
                Subscription {
                    added: version,
                    position,
                },
            );
            true
        })
    }

    /// Forgets `channel` and its position; `false` if it was not remembered.
    fn remove_subscription(&self, channel: &str) -> bool {
        self.change_subscriptions(|subscriptions, _| subscriptions.remove(channel).is_some())
    }

    /// Applies `change` (given the version a change would get) to the remembered set;
    /// returns its result and wakes the connection if the set changed.
    fn change_subscriptions(
        &self,
        change: impl FnOnce(&mut BTreeMap<ChannelName, Subscription>, u64) -> bool,
    ) -> bool {
        let mut inner = self.lock();
        let next = inner.version + 1;
        let changed = change(&mut inner.subscriptions, next);
        if changed {
            inner.version = next;
            self.subscriptions_version
                .store(inner.version, Ordering::Release);
        }
        drop(inner);
        if changed {
            self.subscriptions_changed.notify_one();
        }
        changed
    }

    /// Moves the position on `channel` to (`epoch`, `offset`) if the client still remembers
    /// that channel; allocates only when the epoch changes. Returns how to undo it.
    fn set_position(&self, channel: &str, epoch: &str, offset: u64) -> Undo {
        let mut inner = self.lock();
        let Some(subscription) = inner.subscriptions.get_mut(channel) else {
            return Undo::Nothing;
        };
        let added = subscription.added;
        match &mut subscription.position {
            Some(position) => Undo::Restore {
                added,
                offset: std::mem::replace(&mut position.offset, offset),
                epoch: (position.epoch != epoch)
                    .then(|| std::mem::replace(&mut position.epoch, epoch.to_owned())),
            },
            None => {
                subscription.position = Some(Position {
                    epoch: epoch.to_owned(),
                    offset,
                });
                Undo::Clear { added }
            }
        }
    }

    /// Undoes a [`set_position`](Self::set_position), unless the subscription was replaced
    /// in between.
    fn undo_position(&self, channel: &str, undo: Undo) {
        let mut inner = self.lock();
        let Some(subscription) = inner.subscriptions.get_mut(channel) else {
            return;
        };
        match undo {
            Undo::Nothing => {}
            Undo::Clear { added } if added == subscription.added => subscription.position = None,
            Undo::Restore {
                added,
                offset,
                epoch,
            } if added == subscription.added => {
                if let Some(position) = &mut subscription.position {
                    position.offset = offset;
                    if let Some(epoch) = epoch {
                        position.epoch = epoch;
                    }
                }
            }
            Undo::Clear { .. } | Undo::Restore { .. } => {}
        }
    }

    /// The remembered position on `channel`.
    fn position(&self, channel: &str) -> Option<Position> {
        self.lock()
            .subscriptions
            .get(channel)
            .and_then(|s| s.position.clone())
    }
}

/// Sends events to the application without ever blocking a close.
struct EventSink {
    tx: mpsc::Sender<Event>,
    cancel: CancellationToken,
}

impl EventSink {
    /// Waits for room in the event queue, unless the client is closing: then the event is
    /// delivered only if there is room. Returns whether the event was queued (`false` also
    /// when the application dropped the stream).
    async fn emit(&self, event: Event) -> bool {
        if self.cancel.is_cancelled() {
            return self.tx.try_send(event).is_ok();
        }
        tokio::select! {
            sent = self.tx.send(event) => sent.is_ok(),
            () = self.cancel.cancelled() => false,
        }
    }
}

/// A WebSocket client that stays connected: it redials with backoff, subscribes again after
/// every reconnect, and reports everything on its [`Events`] stream.
///
/// Start one with [`ReconnectingClient::connect`] or a [`ClientBuilder`]. The handle is cheap
/// to clone; the client runs on its own task until [`close`](Self::close), the builder's
/// cancellation token, [`ClientConfig::max_retries`], or until every handle and the event
/// stream are dropped.
///
/// # Examples
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use wshub::client::{Event, ReconnectingClient, State};
///
/// let (client, mut events) = ReconnectingClient::connect("ws://127.0.0.1:8080/ws")?;
/// client.subscribe("process:42")?;
/// while let Some(event) = events.recv().await {
///     if let Event::Message(message) = event {
///         println!("{}", message.text().unwrap_or_default());
///         break;
///     }
/// }
/// assert_eq!(client.state(), State::Connected);
/// client.close();
/// client.closed().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReconnectingClient {
    shared: Arc<Shared>,
    _alive: Arc<Alive>,
}

impl ReconnectingClient {
    /// Starts a client for `url` with the default configuration; see
    /// [`ClientBuilder::connect`].
    ///
    /// # Errors
    /// A [`ConfigError`] (field `"url"`) when `url` is not a valid `ws://` or `wss://` URL.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use wshub::client::{ReconnectingClient, State};
    /// let (client, _events) = ReconnectingClient::connect("ws://127.0.0.1:9/ws").unwrap();
    /// assert_ne!(client.state(), State::Connected);
    /// client.close();
    /// # }
    /// ```
    pub fn connect(url: &str) -> Result<(ReconnectingClient, Events), ConfigError> {
        ClientBuilder::new().connect(url)
    }

    /// A [`ClientBuilder`] with the default configuration.
    ///
    /// # Examples
    /// ```
    /// use wshub::client::{ClientConfig, ReconnectingClient};
    /// let builder = ReconnectingClient::builder().config(ClientConfig::default().max_retries(3));
    /// # drop(builder);
    /// ```
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// The current [`State`].
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use wshub::client::{ReconnectingClient, State};
    /// let (client, _events) = ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.close();
    /// client.closed().await.unwrap();
    /// assert_eq!(client.state(), State::Disconnected);
    /// # }
    /// ```
    pub fn state(&self) -> State {
        State::from_u8(self.shared.state.load(Ordering::Relaxed))
    }

    /// Whether the client is connected (and [`send`](Self::send) would queue a message).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.close();
    /// client.closed().await.unwrap();
    /// assert!(!client.is_connected());
    /// # }
    /// ```
    pub fn is_connected(&self) -> bool {
        self.state() == State::Connected
    }

    /// Sends a text message on the current connection.
    ///
    /// `Ok` means the message is queued on the live connection, not that the server got it:
    /// if that connection drops before the message is written, the message is lost (go-ws
    /// behaves the same). Nothing is ever queued for a future connection.
    ///
    /// # Errors
    /// [`NotConnected`] when the client is not connected (go-ws: `"not connected"`), or the
    /// connection ended while the call waited for room in the queue.
    ///
    /// # Cancel safety
    /// Cancel safe: when the call is dropped before it completes, the message is not queued.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use wshub::client::{NotConnected, ReconnectingClient};
    /// let (client, _events) = ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.close();
    /// assert_eq!(client.send(r#"{"type":"ping"}"#).await, Err(NotConnected));
    /// # }
    /// ```
    pub async fn send(&self, text: &str) -> Result<(), NotConnected> {
        self.send_frame(OpCode::Text, text.as_bytes()).await
    }

    /// Sends a binary message on the current connection; see [`send`](Self::send).
    ///
    /// # Errors
    /// [`NotConnected`], as for [`send`](Self::send).
    ///
    /// # Cancel safety
    /// Cancel safe, as [`send`](Self::send).
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.close();
    /// assert!(client.send_binary(&[1, 2, 3]).await.is_err());
    /// # }
    /// ```
    pub async fn send_binary(&self, data: &[u8]) -> Result<(), NotConnected> {
        self.send_frame(OpCode::Binary, data).await
    }

    async fn send_frame(&self, opcode: OpCode, payload: &[u8]) -> Result<(), NotConnected> {
        let sender = self.shared.lock().sender.clone().ok_or(NotConnected)?;
        let permit = sender.reserve().await.map_err(|_| NotConnected)?;
        permit.send(connection::client_frame(opcode, payload));
        Ok(())
    }

    /// Subscribes to `channel`, now if connected and again after every reconnect. Returns
    /// `false` if the client was already subscribed (nothing is sent).
    ///
    /// The request is `{"type":"subscribe","channel":C,"data":C}`, which both wshub and go-ws
    /// understand. It is sent before any message passed to [`send`](Self::send) after this
    /// call. Once the client knows the channel's [`position`](Self::position) (a channel with
    /// history), the subscribes after reconnects carry it, to resume from there.
    ///
    /// # Errors
    /// [`ChannelNameError`] when `channel` is not 1–256 characters of `[A-Za-z0-9_.:-]`.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// assert_eq!(client.subscribe("news"), Ok(true));
    /// assert_eq!(client.subscribe("news"), Ok(false));
    /// assert!(client.subscribe("no spaces").is_err());
    /// # client.close();
    /// # }
    /// ```
    pub fn subscribe(&self, channel: &str) -> Result<bool, ChannelNameError> {
        let channel = ChannelName::new(channel)?;
        Ok(self.shared.add_subscription(channel, None))
    }

    /// Subscribes to `channel` and resumes it from a known position: `offset` is the offset of
    /// the last publication the application received in `epoch`, for instance saved by a
    /// previous run of the program (see [`position`](Self::position)). Returns `false` if the
    /// client was already subscribed (nothing is sent, and the position is unchanged).
    ///
    /// The request is `{"type":"subscribe","channel":C,"data":C,"offset":N,"epoch":E}`. A
    /// wshub server answers with [`Event::Recovered`] (the publications after `offset`
    /// follow) or [`Event::NotRecovered`]. On a channel without history the server ignores the
    /// position and subscribes as usual, and no such event comes.
    ///
    /// # Errors
    /// [`ChannelNameError`] when `channel` is not 1–256 characters of `[A-Za-z0-9_.:-]`.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// assert_eq!(client.subscribe_from("feed:1", "5f3a9c0e12b4d678", 41), Ok(true));
    /// assert_eq!(client.position("feed:1"), Some(("5f3a9c0e12b4d678".to_owned(), 41)));
    /// # client.close();
    /// # }
    /// ```
    pub fn subscribe_from(
        &self,
        channel: &str,
        epoch: &str,
        offset: u64,
    ) -> Result<bool, ChannelNameError> {
        let channel = ChannelName::new(channel)?;
        let position = Position {
            epoch: epoch.to_owned(),
            offset,
        };
        Ok(self.shared.add_subscription(channel, Some(position)))
    }

    /// The position on `channel` as `(epoch, offset)`: the offset of the last publication on
    /// `channel` that the client handed to the [`Events`] stream, or the position a
    /// `subscribed` answer, [`Event::NotRecovered`] or
    /// [`subscribe_from`](Self::subscribe_from) set. The client resumes from it after every
    /// reconnect.
    ///
    /// `None` when the client is not subscribed to `channel`, or before anything told it
    /// the position (channels without history never have one).
    ///
    /// The position may be ahead of the events the application has processed (they may still
    /// wait in the stream). To persist a position across restarts of the program, save the
    /// `offset` and `epoch` fields of the last message processed, or this position once the
    /// stream has ended.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.subscribe("feed:1").unwrap();
    /// assert_eq!(client.position("feed:1"), None); // not known before the server answers
    /// # client.close();
    /// # }
    /// ```
    pub fn position(&self, channel: &str) -> Option<(String, u64)> {
        self.shared
            .position(channel)
            .map(|position| (position.epoch, position.offset))
    }

    /// Unsubscribes from `channel`, now if connected, and forgets it and its position. Returns
    /// `false` if the client was not subscribed (nothing is sent).
    ///
    /// # Errors
    /// [`ChannelNameError`] when `channel` is not a valid channel name.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.subscribe("news").unwrap();
    /// assert_eq!(client.unsubscribe("news"), Ok(true));
    /// assert_eq!(client.unsubscribe("news"), Ok(false));
    /// # client.close();
    /// # }
    /// ```
    pub fn unsubscribe(&self, channel: &str) -> Result<bool, ChannelNameError> {
        let channel = ChannelName::new(channel)?;
        Ok(self.shared.remove_subscription(&channel))
    }

    /// The remembered subscriptions, sorted.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.subscribe("b").unwrap();
    /// client.subscribe("a").unwrap();
    /// let names: Vec<String> = client.subscriptions().iter().map(|c| c.to_string()).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// # client.close();
    /// # }
    /// ```
    pub fn subscriptions(&self) -> Vec<ChannelName> {
        self.shared.lock().subscriptions.keys().cloned().collect()
    }

    /// Stops the client: a live connection gets a close frame (code 1000) and the client
    /// waits up to [`ClientConfig::close_timeout`] for the server's; a pending dial or backoff
    /// is abandoned at once. Idempotent; returns immediately. Await
    /// [`closed`](Self::closed) to know when the client has stopped.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// let (client, _events) = wshub::client::ReconnectingClient::connect("ws://127.0.0.1:9/").unwrap();
    /// client.close();
    /// assert!(client.closed().await.is_ok());
    /// # }
    /// ```
    pub fn close(&self) {
        self.shared.cancel.cancel();
    }

    /// Waits until the client has stopped. `Ok(())` when it was closed (or cancelled);
    /// the event stream has then delivered its last event.
    ///
    /// # Errors
    /// [`ClientError::MaxRetries`] when the client gave up, carrying the last dial error.
    /// [`ClientError::Closed`] if the task was dropped without finishing (the runtime shut
    /// down).
    ///
    /// # Cancel safety
    /// Cancel safe.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use std::time::Duration;
    /// use wshub::client::{ClientConfig, ClientError, ReconnectingClient};
    ///
    /// let config = ClientConfig::default().max_retries(1).initial_backoff(Duration::from_millis(10));
    /// let (client, _events) = ReconnectingClient::builder().config(config).connect("ws://127.0.0.1:9/").unwrap();
    /// let err = client.closed().await.unwrap_err();
    /// assert!(matches!(err, ClientError::MaxRetries { retries: 1, .. }));
    /// # }
    /// ```
    pub async fn closed(&self) -> Result<(), ClientError> {
        let mut done = self.shared.done.clone();
        let result = match done.wait_for(Option::is_some).await {
            Ok(result) => result.clone(),
            Err(_) => Some(Err(ClientError::Closed)),
        };
        result.unwrap_or(Err(ClientError::Closed))
    }
}

impl fmt::Debug for ReconnectingClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectingClient")
            .field("server", &self.shared.origin)
            .field("state", &self.state())
            .field("subscriptions", &self.shared.lock().subscriptions.len())
            .finish_non_exhaustive()
    }
}

/// How to reach the server: the parsed URL, the proxy and the TLS connector.
struct Dialer {
    target: Target,
    proxy: Option<proxy::ProxyTarget>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// A connection right after the handshake, with the bytes read past the response head.
enum Dialed {
    Plain(TcpStream, BytesMut),
    Tls(Box<TlsStream<TcpStream>>, BytesMut),
}

impl Dialer {
    fn new(target: Target, config: &ClientConfig) -> Result<Dialer, ConfigError> {
        let proxy = proxy::resolve(&config.proxy, &target, |name| std::env::var(name).ok())?;
        if !target.tls {
            return Ok(Dialer {
                target,
                proxy,
                tls: None,
            });
        }
        let name = ServerName::try_from(target.host.clone()).map_err(|e| {
            ConfigError::new(
                "url",
                format!("{:?} is not a valid TLS server name: {e}", target.host),
            )
        })?;
        let tls = match &config.tls {
            Some(tls) => Arc::clone(tls),
            None => default_tls()?,
        };
        Ok(Dialer {
            target,
            proxy,
            tls: Some((TlsConnector::from(tls), name)),
        })
    }

    /// TCP connect (and the proxy's tunnel), TLS, WebSocket handshake.
    async fn dial(&self, headers: &[(String, String)]) -> Result<Dialed, ClientError> {
        let target = &self.target;
        let tcp = match &self.proxy {
            None => TcpStream::connect((target.host.as_str(), target.port))
                .await
                .map_err(ClientError::connect)?,
            Some(p) => {
                let mut tcp = TcpStream::connect((p.host.as_str(), p.port))
                    .await
                    .map_err(|e| {
                        let e =
                            std::io::Error::new(e.kind(), format!("proxy {}: {e}", p.host_port));
                        ClientError::connect(e)
                    })?;
                proxy::tunnel(&mut tcp, p, target).await?;
                tcp
            }
        };
        // Small messages go out at once; the writer already batches.
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => {
                let mut tcp = tcp;
                let rest = handshake::perform(&mut tcp, target, headers).await?;
                Ok(Dialed::Plain(tcp, rest))
            }
            Some((connector, name)) => {
                let mut tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(ClientError::tls)?;
                let rest = handshake::perform(&mut tls, target, headers).await?;
                Ok(Dialed::Tls(Box::new(tls), rest))
            }
        }
    }
}

/// rustls with the ring provider and the webpki-roots (Mozilla) root certificates, built
/// once per process.
fn default_tls() -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    static DEFAULT: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
        .map_err(|e| ConfigError::new("tls", e))
}

/// Validates `url`, builds the shared state and spawns the client's task.
fn start(
    config: ClientConfig,
    url: &str,
    cancel: CancellationToken,
) -> Result<(ReconnectingClient, Events), ConfigError> {
    let target = Target::parse(url)?;
    let dialer = Dialer::new(target, &config)?;
    let (event_tx, event_rx) = mpsc::channel(config.event_capacity);
    let (done_tx, done_rx) = watch::channel(None);
    let origin = format!(
        "{}://{}",
        if dialer.target.tls { "wss" } else { "ws" },
        dialer.target.authority
    );
    let shared = Arc::new(Shared {
        origin,
        state: AtomicU8::new(State::Disconnected as u8),
        cancel: cancel.clone(),
        inner: Mutex::new(Inner {
            subscriptions: BTreeMap::new(),
            version: 0,
            sender: None,
        }),
        subscriptions_version: AtomicU64::new(0),
        subscriptions_changed: Notify::new(),
        done: done_rx,
    });
    let sink = EventSink {
        tx: event_tx,
        cancel: cancel.clone(),
    };
    let task_shared = Arc::clone(&shared);
    tokio::spawn(async move {
        let result = run(&task_shared, &dialer, &config, &sink).await;
        task_shared.set_sender(None);
        task_shared.set_state(State::Disconnected);
        done_tx.send_replace(Some(result));
        // `sink` drops here: the event stream ends after the last event.
    });
    let alive = Arc::new(Alive(cancel));
    Ok((
        ReconnectingClient {
            shared,
            _alive: Arc::clone(&alive),
        },
        Events {
            rx: event_rx,
            _alive: alive,
        },
    ))
}

/// A connection that lasted at least this long resets the short-lived count (see [`run`]).
const STEADY_CONNECTION: Duration = Duration::from_secs(1);

/// The reconnect loop: dial, serve the connection, redial at once after a drop (on the
/// backoff schedule after repeated short-lived connections), back off after failed dials.
async fn run(
    shared: &Shared,
    dialer: &Dialer,
    config: &ClientConfig,
    events: &EventSink,
) -> Result<(), ClientError> {
    let cancel = &shared.cancel;
    let backoff = config.backoff();
    // Whether a connection has gone live before (Connected vs Reconnected).
    let mut ever_live = false;
    // Consecutive failed dials since the last live connection.
    let mut failures: u32 = 0;
    // Consecutive live connections that ended within `STEADY_CONNECTION` of starting.
    let mut short_lived: u32 = 0;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        shared.set_state(State::Connecting);
        let dialed = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            dialed = tokio::time::timeout(config.connect_timeout, dialer.dial(&config.headers)) => {
                dialed.unwrap_or(Err(ClientError::ConnectTimeout(config.connect_timeout)))
            }
        };
        let announce = if ever_live {
            Event::Reconnected {
                attempt: failures.saturating_add(1),
            }
        } else {
            Event::Connected
        };
        let error = match dialed {
            Ok(dialed) => {
                let started = tokio::time::Instant::now();
                let (reason, live) = match dialed {
                    Dialed::Plain(io, rest) => {
                        connection::run(io, rest, shared, config, events, announce).await
                    }
                    Dialed::Tls(io, rest) => {
                        connection::run(*io, rest, shared, config, events, announce).await
                    }
                };
                shared.set_state(State::Disconnected);
                let closed = matches!(reason, ClientError::Closed) || cancel.is_cancelled();
                if live {
                    ever_live = true;
                    failures = 0;
                    events.emit(Event::Disconnected(reason)).await;
                    if closed {
                        return Ok(());
                    }
                    // The first redial after a drop is immediate. Connections that keep
                    // ending as soon as they start (a server that accepts and closes at once)
                    // are redialled on the backoff schedule from the second on: never a
                    // tight loop.
                    if started.elapsed() >= STEADY_CONNECTION {
                        short_lived = 0;
                        continue;
                    }
                    short_lived = short_lived.saturating_add(1);
                    if short_lived == 1 {
                        continue;
                    }
                    let delay = jittered(backoff.delay(short_lived - 1), config.jitter);
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
                if closed {
                    return Ok(());
                }
                // Died before it was confirmed: counts as a failed dial.
                reason
            }
            Err(error) => error,
        };
        shared.set_state(State::Disconnected);
        failures = failures.saturating_add(1);
        if config.max_retries > 0 && failures > config.max_retries {
            events
                .emit(Event::ConnectFailed {
                    attempt: failures,
                    error: error.clone(),
                    retry_in: None,
                })
                .await;
            return Err(ClientError::MaxRetries {
                retries: config.max_retries,
                last: Box::new(error),
            });
        }
        let delay = jittered(backoff.delay(failures), config.jitter);
        events
            .emit(Event::ConnectFailed {
                attempt: failures,
                error,
                retry_in: Some(delay),
            })
            .await;
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// `delay` shortened by a random fraction of up to `jitter` of it.
fn jittered(delay: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return delay;
    }
    delay.mul_f64(1.0 - jitter.min(1.0) * rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let d = Duration::from_millis(1000);
        assert_eq!(jittered(d, 0.0), d);
        for _ in 0..1000 {
            let j = jittered(d, 0.25);
            assert!(j <= d && j >= Duration::from_millis(750), "{j:?}");
        }
    }

    #[test]
    fn state_round_trips() {
        for s in [State::Disconnected, State::Connecting, State::Connected] {
            assert_eq!(State::from_u8(s as u8), s);
        }
    }

    #[test]
    fn handles_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        fn assert_send<T: Send>() {}
        assert_send_sync::<ReconnectingClient>();
        assert_send_sync::<ClientError>();
        assert_send_sync::<ClientConfig>();
        assert_send::<Events>();
        assert_send::<Event>();
    }
}
