//! One connection: a single task that reads, writes and keeps time.
//!
//! The session is a hand-written future over any `AsyncRead + AsyncWrite` stream. Each poll
//! reads and decodes what arrived, takes everything queued in the client's [`Outbox`] and writes
//! it with one vectored write, and checks the heartbeat, pong, write and close deadlines on a
//! single timer. Reading and writing never wait for each other, and no task other than this one
//! touches the socket, so concurrent writes are impossible by construction.

pub(crate) mod batch;
mod gather;
pub(crate) mod outbox;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::RateLimit;
use crate::frame::{self, close_code, Decoder, Frame, ProtocolError, Role};
use crate::hub::client::ClientShared;
use crate::hub::{ChannelAction, Hub, IncomingMessage};
use crate::message::parse::{self, Request};
use crate::message::{Json, Message};
use outbox::{Chunk, Take};

/// A deterministic pseudo-random source for the randomized tests (xorshift64, so a failure
/// replays): each call returns a value below its argument.
#[cfg(test)]
fn test_random() -> impl FnMut(u64) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    move |bound| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    }
}

/// Rate-limit cost of a subscribe or unsubscribe, in messages.
const SUBSCRIBE_COST: f64 = 1.0 / 16.0;
/// Client publishes that may wait for the broker's acknowledgement at once, per connection.
const MAX_PIPELINED: usize = 64;
/// ... and their payload bytes at most (beyond the first publish).
const MAX_PIPELINED_BYTES: usize = 256 << 10;

/// Scheduler rounds a write waits at most while each round brings more frames for it.
const GATHER_ROUNDS: u8 = 4;
/// ... as long as fewer frames than this are waiting for the write.
const GATHER_FRAMES: usize = 64;

/// Read buffer growth step. The buffer is allocated when a read is attempted and released
/// whenever the connection goes idle with nothing buffered.
const READ_CHUNK: usize = 4096;

/// Why a client's connection ended; passed to the disconnect hook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The client sent a close frame (code absent when the frame had no payload).
    ClientClosed {
        /// The client's close code.
        code: Option<u16>,
        /// The client's close reason.
        reason: String,
    },
    /// The server closed the connection through [`Client::close`](crate::Client::close).
    Closed {
        /// The close code sent.
        code: u16,
        /// The reason sent.
        reason: String,
    },
    /// The client violated RFC 6455 (or sent too big a message); the server sent this close
    /// code (1002, 1007 or 1009).
    ProtocolError {
        /// Close code sent to the client.
        code: u16,
        /// What was wrong.
        reason: &'static str,
    },
    /// The client's queue overflowed under [`SlowConsumerPolicy::Disconnect`]; it got close
    /// code 1008 "slow consumer".
    ///
    /// [`SlowConsumerPolicy::Disconnect`]: crate::SlowConsumerPolicy::Disconnect
    SlowConsumer,
    /// Nothing was received from the client within the pong timeout.
    PongTimeout,
    /// The client's socket accepted no data within the write timeout.
    WriteTimeout,
    /// The connection was lost without a close frame (EOF or I/O error).
    ConnectionLost,
    /// The hub shut down; the client got close code 1001 "going away".
    Shutdown,
    /// The client kept sending over its [`RateLimit`](crate::RateLimit); it got close code
    /// 1008 "rate limit exceeded".
    RateLimited,
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::ClientClosed {
                code: Some(c),
                reason,
            } => {
                write!(f, "client closed the connection ({c} {reason:?})")
            }
            DisconnectReason::ClientClosed { code: None, .. } => {
                f.write_str("client closed the connection")
            }
            DisconnectReason::Closed { code, reason } => {
                write!(f, "server closed the connection ({code} {reason:?})")
            }
            DisconnectReason::ProtocolError { code, reason } => {
                write!(f, "protocol error ({code}): {reason}")
            }
            DisconnectReason::SlowConsumer => f.write_str("slow consumer"),
            DisconnectReason::PongTimeout => f.write_str("pong timeout"),
            DisconnectReason::WriteTimeout => f.write_str("write timeout"),
            DisconnectReason::ConnectionLost => f.write_str("connection lost"),
            DisconnectReason::Shutdown => f.write_str("hub shutdown"),
            DisconnectReason::RateLimited => f.write_str("rate limit exceeded"),
        }
    }
}

/// Serves one upgraded connection until it ends. Registers the client at once (firing the
/// connect hook) and unregisters it (firing the disconnect hook) however the session ends,
/// panics and cancellation included: dropping the future unregisters the client.
///
/// The future is written by hand rather than as an `async fn`: an `async fn` keeps its
/// arguments beside the session they are moved into, and every connection's task would carry
/// those bytes for its whole life.
pub(crate) fn serve<S>(hub: Hub, io: S, identity: Option<Arc<str>>) -> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client = hub.register(identity);
    Session::new(hub, client, io)
}

/// Runs the session, then (once the client is unregistered) shuts the socket down.
impl<S: AsyncRead + AsyncWrite + Unpin> Future for Session<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if !this.unregistered {
            let reason = std::task::ready!(this.poll_session(cx));
            this.unregister(&reason);
        }
        this.poll_shutdown(cx)
    }
}

pub(crate) struct Session<S> {
    io: S,
    hub: Hub,
    client: Arc<ClientShared>,
    decoder: Decoder,
    /// Inbound bytes not yet decoded; empty and unallocated while idle.
    rbuf: BytesMut,
    /// Frames taken from the outbox, in send order; the front one may be partly written
    /// ([`Chunk::started`]).
    inflight: VecDeque<Chunk>,
    /// Bytes were written since the last flush.
    needs_flush: bool,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    next_ping: Instant,
    last_rx: Instant,
    /// When the socket last refused to take pending data (cleared on progress).
    stalled_since: Option<Instant>,
    /// Still reading (false after EOF, a protocol error, or the client's close frame).
    reading: bool,
    /// The client's close frame arrived.
    peer_closed: bool,
    /// Our close frame was taken from the outbox (nothing may follow it).
    close_queued: bool,
    /// Our close frame was fully written; waiting for the client's until this deadline.
    close_deadline: Option<Instant>,
    /// After a protocol error the connection is dropped as soon as the close frame is out.
    fail_fast: bool,
    /// Why the connection is closing, once a close frame was queued (rarely set: boxed).
    reason: Option<Box<DisconnectReason>>,
    /// The client was unregistered (the disconnect hook ran).
    unregistered: bool,
    /// Inbound rate limit, when configured.
    limiter: Option<Box<TokenBucket>>,
    /// Frames have been written since the outbox was last found empty.
    bursting: bool,
    /// The one-round pause before a write (see `write`).
    coalesce: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// The pause was started during the current poll.
    coalesce_started: bool,
    /// Scheduler rounds the current pause has lasted (see `write`).
    rounds: u8,
    /// Requests still being carried out by the broker (allocated only while there are any).
    pending: Option<Box<InFlight>>,
}

/// A broker round trip; resolves to an error reply, if any.
type Work = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Requests waiting for the broker, oldest first.
///
/// Client publishes on channels without history pipeline: the next request is read while up to
/// [`MAX_PIPELINED`] of them (and [`MAX_PIPELINED_BYTES`]) wait for their acknowledgement.
/// Their commands reach the broker in order, since each is polled once, front to back, right
/// after the read that made it. Everything else is a barrier that runs alone: a subscribe
/// waiting for the broker, and a publish on a history channel (the broker may retry its script,
/// which must not let a later publish overtake it). A request of that kind that arrives while
/// publishes are in flight is held until they are all done, and so are the client's close
/// frame, a protocol violation and the end of the stream. So replies (a failed publish's error,
/// a pong, a subscribe's answer) go out in request order, and no accepted request is dropped
/// because the connection ends.
struct InFlight {
    /// Each request with its payload size; `None` work is done, with its error reply, if any.
    queue: VecDeque<(Option<Work>, Option<String>, usize)>,
    /// Payload bytes of the requests in `queue`.
    bytes: usize,
    /// The queue holds a barrier (then it is its only entry).
    barrier: bool,
    /// Requests were queued since the queue was last polled.
    unpolled: bool,
    /// What was read while requests were in flight and must wait for them.
    held: Option<Held>,
}

/// Something read that waits until the broker requests before it are done.
enum Held {
    /// A request that is not a pipelined publish.
    Request(Bytes, bool),
    /// The client's close frame.
    Close(Frame),
    /// A protocol violation.
    Violation(ProtocolError),
    /// The end of the stream.
    Eof,
}

impl<S> Drop for Session<S> {
    fn drop(&mut self) {
        // Cancelled or panicked before the session unregistered the client.
        if !self.unregistered {
            self.unregistered = true;
            self.hub
                .unregister(&self.client, &DisconnectReason::ConnectionLost);
        }
    }
}

/// A token bucket refilled continuously at `rate` tokens per second up to `burst`.
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: u32,
    last: Instant,
    /// Refusals since the bucket was last full: a client that backs off until it refills gets
    /// a clean slate, one that keeps sending over its rate (even with some messages accepted
    /// in between) piles them up.
    strikes: u32,
}

impl TokenBucket {
    fn new(limit: RateLimit, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(limit.burst),
            rate: f64::from(limit.per_second),
            burst: limit.burst,
            last: now,
            strikes: 0,
        }
    }

    /// Takes `cost` tokens (1 for a message, less for cheap requests).
    fn take(&mut self, now: Instant, cost: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(f64::from(self.burst));
        self.last = now;
        if self.tokens >= f64::from(self.burst) {
            self.strikes = 0;
        }
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            self.strikes += 1;
            false
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(hub: Hub, client: Arc<ClientShared>, io: S) -> Self {
        let now = Instant::now();
        let config = hub.config();
        let next_ping = now + config.heartbeat_interval;
        let decoder = Decoder::new(Role::Server, config.max_message_size);
        Session {
            io,
            decoder,
            rbuf: BytesMut::new(),
            inflight: VecDeque::new(),
            needs_flush: false,
            timer: Box::pin(tokio::time::sleep_until(next_ping)),
            timer_at: next_ping,
            next_ping,
            last_rx: now,
            stalled_since: None,
            reading: true,
            peer_closed: false,
            close_queued: false,
            close_deadline: None,
            fail_fast: false,
            reason: None,
            limiter: config
                .rate_limit
                .map(|l| Box::new(TokenBucket::new(l, now))),
            unregistered: false,
            pending: None,
            bursting: false,
            coalesce: None,
            coalesce_started: false,
            rounds: 0,
            hub,
            client,
        }
    }

    /// Removes the client from the hub and fires the disconnect hook (once), then arms the
    /// timer for `poll_shutdown`.
    fn unregister(&mut self, reason: &DisconnectReason) {
        if !self.unregistered {
            self.unregistered = true;
            self.hub.unregister(&self.client, reason);
        }
        let deadline = Instant::now() + self.hub.config().close_timeout;
        self.timer.as_mut().reset(deadline);
    }

    /// Shuts the socket's write side down (immediate for TCP; a TLS stream sends its
    /// close_notify), giving up when the timer armed by `unregister` fires.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if Pin::new(&mut self.io).poll_shutdown(cx).is_ready() {
            return Poll::Ready(());
        }
        self.timer.as_mut().poll(cx)
    }

    fn poll_session(&mut self, cx: &mut Context<'_>) -> Poll<DisconnectReason> {
        self.coalesce_started = false;
        match self.drive(cx) {
            Ok(()) => Poll::Pending,
            Err(reason) => Poll::Ready(self.reason.take().map_or(reason, |r| *r)),
        }
    }

    /// Makes all possible progress; `Ok` means everything is waiting on a wakeup, `Err` that
    /// the session is over.
    fn drive(&mut self, cx: &mut Context<'_>) -> Result<(), DisconnectReason> {
        loop {
            let mut progress = false;
            if self.pending.is_some() {
                progress |= self.poll_pending(cx)?;
            }
            if self.reading && self.may_read() {
                progress |= self.read(cx)?;
                // Requests the read queued are polled (started) before anything waits.
                progress |= self.pending.as_ref().is_some_and(|p| p.unpolled);
            }
            progress |= self.write(cx)?;
            if self.close_queued && self.inflight.is_empty() && !self.needs_flush {
                if self.peer_closed || self.fail_fast {
                    return Err(self
                        .reason
                        .as_deref()
                        .cloned()
                        .unwrap_or(DisconnectReason::ConnectionLost));
                }
                if self.close_deadline.is_none() {
                    self.close_deadline = Some(Instant::now() + self.hub.config().close_timeout);
                    progress = true;
                }
            }
            progress |= self.timers(cx)?;
            if !progress {
                return Ok(());
            }
        }
    }

    /// Whether the next request may be read (see [`InFlight`]).
    fn may_read(&self) -> bool {
        self.pending.as_ref().is_none_or(|p| {
            !p.barrier
                && p.held.is_none()
                && p.queue.len() < MAX_PIPELINED
                && p.bytes < MAX_PIPELINED_BYTES
        })
    }

    /// Polls the broker requests in flight and answers the finished ones in order; carries out
    /// what was held once nothing is in flight. `Ok(true)` when something finished.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Result<bool, DisconnectReason> {
        let Some(p) = &mut self.pending else {
            return Ok(false);
        };
        let mut progress = false;
        p.unpolled = false;
        for (work, error, _) in &mut p.queue {
            if let Some(w) = work {
                if let Poll::Ready(e) = w.as_mut().poll(cx) {
                    *work = None;
                    *error = e;
                    progress = true;
                }
            }
        }
        let mut errors = Vec::new();
        while let Some((None, _, _)) = p.queue.front() {
            if let Some((_, error, size)) = p.queue.pop_front() {
                p.bytes -= size;
                errors.extend(error);
            }
        }
        let held = if p.queue.is_empty() {
            let held = p.held.take();
            self.pending = None;
            held
        } else {
            None
        };
        for e in errors {
            self.reply_error(&e);
        }
        let released = held.is_some();
        match held {
            None => {}
            Some(Held::Request(payload, binary)) => self.dispatch(&payload, binary),
            Some(Held::Close(frame)) => self.on_frame(frame),
            Some(Held::Violation(e)) => self.violation(&e),
            Some(Held::Eof) => self.on_eof()?,
        }
        batch::flush();
        Ok(progress || released)
    }

    /// Queues a broker request of `size` payload bytes. [`Session::poll_pending`] polls the
    /// queue front to back right after the read that made it, so the broker sees a connection's
    /// requests in order. A barrier stops reading until it is done.
    fn start_pending(&mut self, work: Work, size: usize, barrier: bool) {
        let p = self.pending.get_or_insert_with(|| {
            Box::new(InFlight {
                queue: VecDeque::new(),
                bytes: 0,
                barrier: false,
                unpolled: false,
                held: None,
            })
        });
        p.queue.push_back((Some(work), None, size));
        p.bytes += size;
        p.barrier |= barrier;
        p.unpolled = true;
    }

    /// Keeps `what` until the broker requests in flight are done (call only while there are
    /// any).
    fn hold(&mut self, what: Held) {
        if let Some(p) = &mut self.pending {
            p.held = Some(what);
        }
    }

    fn read(&mut self, cx: &mut Context<'_>) -> Result<bool, DisconnectReason> {
        self.decode_buffered();
        if !self.reading || !self.may_read() {
            // Not a byte more while requests wait: the client is held back by TCP.
            return Ok(false);
        }
        let read = if self.rbuf.capacity() == 0 {
            // Idle: read into the stack first, so that a poll that finds nothing to read (most
            // polls of a subscriber: it is woken to write) allocates nothing.
            let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = ReadBuf::uninit(&mut storage);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let filled = buf.filled();
                    if !filled.is_empty() {
                        self.rbuf.reserve(READ_CHUNK);
                        self.rbuf.extend_from_slice(filled);
                    }
                    Poll::Ready(Ok(filled.len()))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        } else {
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)
        };
        match read {
            Poll::Pending => {
                if self.rbuf.is_empty() && self.decoder.is_idle() {
                    self.rbuf = BytesMut::new();
                }
                Ok(false)
            }
            Poll::Ready(Ok(0)) => {
                self.reading = false;
                // Requests already accepted are carried out first.
                if self.pending.is_some() {
                    self.hold(Held::Eof);
                } else {
                    self.on_eof()?;
                }
                Ok(true)
            }
            Poll::Ready(Ok(_)) => {
                self.last_rx = Instant::now();
                self.decode_buffered();
                Ok(true)
            }
            Poll::Ready(Err(_)) => Err(DisconnectReason::ConnectionLost),
        }
    }

    fn decode_buffered(&mut self) {
        while self.reading && self.may_read() {
            match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame @ Frame::Close(_))) if self.pending.is_some() => {
                    self.hold(Held::Close(frame));
                }
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => break,
                Err(e) => {
                    // Nothing after a violation is decoded.
                    self.reading = false;
                    if self.pending.is_some() {
                        self.hold(Held::Violation(e));
                    } else {
                        self.violation(&e);
                    }
                }
            }
        }
        batch::flush();
    }

    /// The end of the stream (once the requests before it are done).
    fn on_eof(&mut self) -> Result<(), DisconnectReason> {
        if self.close_deadline.is_some() || self.close_queued {
            // We sent our close; EOF is an acceptable end of the handshake.
            self.peer_closed = true;
            Ok(())
        } else {
            Err(DisconnectReason::ConnectionLost)
        }
    }

    /// A protocol violation (once the requests before it are done).
    fn violation(&mut self, e: &ProtocolError) {
        batch::flush();
        self.hub.count_protocol_error();
        self.fail_fast = true;
        // Graceful: replies to the messages that arrived before the violation still go out,
        // then the close frame (Autobahn 3.2, 4.1.3, 5.15).
        self.client.outbox.request_close(
            frame::close_frame(e.code(), e.reason()),
            false,
            DisconnectReason::ProtocolError {
                code: e.code(),
                reason: e.reason(),
            },
        );
    }

    fn on_frame(&mut self, frame: Frame) {
        if !matches!(frame, Frame::Text(_)) {
            batch::flush();
        }
        match frame {
            Frame::Ping(payload) => {
                if self.admit(1.0) {
                    self.client.outbox.push_control(frame::pong_frame(&payload));
                }
            }
            Frame::Pong(_) => {}
            Frame::Close(close) => {
                self.peer_closed = true;
                self.reading = false;
                let (code, reason) = match &close {
                    Some(c) => (
                        Some(c.code),
                        String::from_utf8_lossy(&c.reason).into_owned(),
                    ),
                    None => (None, String::new()),
                };
                // Echo the client's code (an empty close gets an empty close back).
                let reply = match code {
                    Some(c) => frame::close_frame(c, ""),
                    None => frame::encode(frame::OpCode::Close, &[]),
                };
                // What is already queued (bounded, and bounded in time by the write timeout)
                // goes out before the close reply.
                self.client.outbox.request_close(
                    reply,
                    false,
                    DisconnectReason::ClientClosed { code, reason },
                );
            }
            Frame::Text(payload) => self.on_message(payload, false),
            Frame::Binary(payload) => self.on_message(payload, true),
        }
    }

    fn on_message(&mut self, payload: Bytes, binary: bool) {
        if self.close_queued || !self.client.outbox.is_open() {
            return; // closing: data is no longer interpreted
        }
        if self.hub.config().raw_messages {
            if self.admit(1.0) {
                let message = IncomingMessage::new(payload, binary, None);
                self.hub.call_message_hook(&self.client, message);
            } else {
                self.reply_error("rate limit exceeded");
            }
            return;
        }
        self.dispatch(&payload, binary);
    }

    /// Parses and carries out one request (held back while broker requests are in flight,
    /// unless it is a publish: see [`InFlight`]).
    fn dispatch(&mut self, payload: &Bytes, binary: bool) {
        if self.close_queued || !self.client.outbox.is_open() {
            return;
        }
        let parsed = parse::parse(payload);
        // Publishes in a row on one channel join a batch; anything else comes after it.
        let batched = matches!(&parsed, Ok(Request::Publish { channel, .. })
            if self.pending.is_none() && self.hub.batches(channel));
        if !batched {
            batch::flush();
        }
        if self.pending.is_some() {
            let config = self.hub.config();
            let pipelined = matches!(&parsed, Ok(Request::Publish { channel, .. })
                if !config.has_history(channel));
            if !pipelined {
                self.hold(Held::Request(payload.clone(), binary));
                return;
            }
        }
        // (Un)subscribes are cheap and come in bursts when a client reconnects with many
        // channels: they cost a sixteenth of a message, so 1024 fit in the default burst.
        let cost = match &parsed {
            Ok(Request::Subscribe(_) | Request::Resume { .. } | Request::Unsubscribe(_)) => {
                SUBSCRIBE_COST
            }
            _ => 1.0,
        };
        if !self.admit(cost) {
            return self.answer_error("rate limit exceeded".to_owned());
        }
        let request = match parsed {
            Ok(r) => r,
            Err(e) => return self.reply_error(&e.to_string()),
        };
        let hub = &self.hub;
        let outcome = match request {
            Request::Ping => {
                self.reply(&Message::new("pong"));
                Ok(())
            }
            Request::Subscribe(channel) => self.subscribe(&channel, None),
            Request::Resume {
                channel,
                offset,
                epoch,
            } => self.subscribe(&channel, Some((offset, &epoch))),
            Request::Unsubscribe(channel) => hub
                .unsubscribe_shared(&self.client, &channel)
                .map(drop)
                .map_err(|e| e.to_string()),
            Request::Publish { channel, data } => self.client_publish(&channel, data, batched),
            Request::Other(kind) => {
                if hub.has_message_hook() {
                    let msg =
                        IncomingMessage::new(payload.clone(), binary, Some(kind.into_owned()));
                    hub.call_message_hook(&self.client, msg);
                    Ok(())
                } else {
                    Err(format!("unsupported message type {:?}", &*kind))
                }
            }
        };
        if let Err(reason) = outcome {
            self.answer_error(reason);
        }
    }

    /// An error reply to a request, after the replies of the broker requests still in flight.
    fn answer_error(&mut self, reason: String) {
        batch::flush();
        match &mut self.pending {
            Some(p) => {
                p.queue.push_back((None, Some(reason), 0));
                p.unpolled = true;
            }
            None => self.reply_error(&reason),
        }
    }

    /// A client's subscribe (with the position it resumes from, if any).
    fn subscribe(&mut self, channel: &str, since: Option<(u64, &str)>) -> Result<(), String> {
        let hub = &self.hub;
        if !hub.channel_allowed(&self.client, channel, ChannelAction::Subscribe) {
            return Err(format!("not allowed to subscribe to {channel:?}"));
        }
        if hub.config().has_history(channel) {
            if !hub.has_broker() {
                return hub
                    .subscribe_with_history(&self.client, channel, since)
                    .map_err(|e| e.to_string());
            }
            // The next request is read once the recovery is queued.
            let since = since.map(|(offset, epoch)| (offset, epoch.to_owned()));
            let work = hub.clone().subscribe_with_broker_history(
                Arc::clone(&self.client),
                channel.to_owned(),
                since,
            );
            self.start_pending(Box::pin(work), 0, true);
            return Ok(());
        }
        let joined = hub
            .subscribe_shared(&self.client, channel)
            .map_err(|e| e.to_string())?;
        // The next request is read once the broker confirmed, so a client that saw the answer
        // to a later request receives every message published (on any node) after that.
        if let Some(wait) = joined.pending {
            let work = async move {
                wait.await;
                None
            };
            self.start_pending(Box::pin(work), 0, true);
        }
        Ok(())
    }

    /// A client's publish; `batched`: it joins this thread's batch ([`batch`]).
    fn client_publish(
        &mut self,
        channel: &str,
        data: Option<&serde_json::value::RawValue>,
        batched: bool,
    ) -> Result<(), String> {
        if self.hub.has_channel_authoriser() {
            // The hook may act on the client (send, close, subscribe): after what came before.
            batch::flush();
        }
        if !self.hub.config().client_may_publish(channel)
            || !self
                .hub
                .channel_allowed(&self.client, channel, ChannelAction::Publish)
        {
            return Err(format!("not allowed to publish to {channel:?}"));
        }
        let mut message = Message::new("event");
        if let Some(data) = data {
            message = message.with_data(Json::parse(data.get()).map_err(|e| e.to_string())?);
        }
        if batched {
            return batch::publish(&self.hub, self.client.id, channel, &message)
                .map_err(|e| e.to_string());
        }
        if !self.hub.has_broker() {
            return self
                .hub
                .publish_local(channel, &message)
                .map(drop)
                .map_err(|e| e.to_string());
        }
        // Through the broker: pipelined, answered in order (see `InFlight`).
        let history = self.hub.config().has_history(channel);
        let size = data.map_or(0, |d| d.get().len());
        let (hub, channel) = (self.hub.clone(), channel.to_owned());
        let work = async move {
            hub.publish(&channel, &message)
                .await
                .err()
                .map(|e| e.to_string())
        };
        self.start_pending(Box::pin(work), size, history);
        Ok(())
    }

    /// Takes a token from the rate limiter; on refusal counts a strike, and closes the
    /// connection (1008) after `burst` refusals without the bucket refilling in between.
    fn admit(&mut self, cost: f64) -> bool {
        let Some(bucket) = &mut self.limiter else {
            return true;
        };
        if bucket.take(Instant::now(), cost) {
            return true;
        }
        // What was read before the refusal goes out before its answer (or the close).
        batch::flush();
        if bucket.strikes >= bucket.burst {
            // Keep reading: the client's close reply must still be seen.
            self.client.outbox.request_close(
                frame::close_frame(close_code::POLICY, "rate limit exceeded"),
                false,
                DisconnectReason::RateLimited,
            );
        }
        false
    }

    fn reply(&self, message: &Message) {
        batch::flush();
        let _ = self
            .client
            .outbox
            .push_data(message.encode_frame(None, SystemTime::now()));
    }

    fn reply_error(&self, reason: &str) {
        self.reply(&Message::error(reason));
    }

    fn write(&mut self, cx: &mut Context<'_>) -> Result<bool, DisconnectReason> {
        let mut progress = false;
        loop {
            if let Some(pause) = &mut self.coalesce {
                // Not again in the poll that started it: a second poll of a yield completes
                // at once (and `drive` loops while there is progress). A held-back write
                // (`write_delay`) also ends early when the outbox asks for it.
                if self.coalesce_started
                    || pause.as_mut().poll(cx).is_pending()
                        && (self.hub.config().write_delay.is_zero()
                            || self.client.outbox.delaying())
                {
                    return Ok(progress);
                }
                self.coalesce = None;
                // What other tasks published during the pause joins this write.
                let gathered = self.take(cx, false)?;
                progress = true;
                if gathered
                    && self.rounds < GATHER_ROUNDS
                    && self.inflight.len() < GATHER_FRAMES
                    && !self.close_queued
                    && self.hub.config().write_delay.is_zero()
                {
                    // Frames still arrive (a burst of publishes is being read) and the write
                    // is small yet: one more round, so that the burst's tail joins it too.
                    self.rounds += 1;
                    if self.pause(Box::pin(tokio::task::yield_now()), cx) {
                        return Ok(progress);
                    }
                }
            }
            if self.inflight.is_empty() {
                if self.needs_flush {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Pending => return Ok(progress),
                        Poll::Ready(Err(_)) => return Err(DisconnectReason::ConnectionLost),
                        Poll::Ready(Ok(())) => self.needs_flush = false,
                    }
                }
                if self.close_queued {
                    return Ok(progress);
                }
                if !self.take(cx, false)? {
                    // Nothing to write: an idle connection keeps no queue memory.
                    if self.inflight.capacity() > 0 {
                        self.inflight = VecDeque::new();
                    }
                    return Ok(progress);
                }
                progress = true;
                if !self.bursting && !self.close_queued {
                    // Before writing, wait one scheduler round, so that every task already
                    // ready (the other sessions of a chat room reading their publishes) adds
                    // its frames first, and one `writev` carries them all: each socket is
                    // written at most once per round, as uWebSockets drains once per loop.
                    // While each round brings more frames and the write is still small, it
                    // waits up to `GATHER_ROUNDS` rounds (see above). With a `write_delay`,
                    // wait that long instead (unless the outbox says the write is due now).
                    self.bursting = true;
                    self.rounds = 1;
                    let delay = self.hub.config().write_delay;
                    let pause: Pin<Box<dyn Future<Output = ()> + Send>> = if delay.is_zero() {
                        Box::pin(tokio::task::yield_now())
                    } else if self.client.outbox.delay(cx.waker()) {
                        Box::pin(tokio::time::sleep(delay))
                    } else {
                        continue;
                    };
                    if self.pause(pause, cx) {
                        return Ok(progress);
                    }
                }
                continue;
            }
            match gather::poll_write(&mut self.io, cx, &self.inflight) {
                Poll::Pending => {
                    self.stalled_since.get_or_insert_with(Instant::now);
                    // While the socket is full, still honour an abort or an abandoning close
                    // (and move control frames up), so they do not wait for the socket.
                    if !self.close_queued {
                        self.take(cx, true)?;
                    }
                    return Ok(progress);
                }
                Poll::Ready(Ok(0) | Err(_)) => return Err(DisconnectReason::ConnectionLost),
                Poll::Ready(Ok(written)) => {
                    progress = true;
                    self.bursting = false;
                    self.needs_flush = true;
                    self.stalled_since = None;
                    self.consume(written);
                }
            }
        }
    }

    /// Starts `pause` before the next write; `true` while it is pending (the write waits).
    fn pause(
        &mut self,
        mut pause: Pin<Box<dyn Future<Output = ()> + Send>>,
        cx: &mut Context<'_>,
    ) -> bool {
        if pause.as_mut().poll(cx).is_pending() {
            self.coalesce = Some(pause);
            self.coalesce_started = true;
            true
        } else {
            false
        }
    }

    /// Takes pending frames from the outbox; `Ok(true)` when something was taken.
    fn take(&mut self, cx: &mut Context<'_>, urgent_only: bool) -> Result<bool, DisconnectReason> {
        let outbox = &self.client.outbox;
        // A partly written front frame stays first: its first bytes are on the wire.
        let keep_front = self.inflight.front().is_some_and(Chunk::started);
        match outbox.take(&mut self.inflight, keep_front, cx.waker(), urgent_only) {
            Take::Idle => Ok(false),
            Take::Frames => Ok(true),
            Take::Close(reason) => {
                self.close_queued = true;
                self.reason.get_or_insert_with(|| Box::new(reason));
                Ok(true)
            }
            Take::Abort(reason) => Err(reason),
        }
    }

    /// Drops fully written frames from the front of `inflight` and advances a partial one.
    fn consume(&mut self, written: usize) {
        let mut left = written;
        let mut frames = 0;
        while left > 0 {
            let Some(front) = self.inflight.front_mut() else {
                break;
            };
            if left >= front.len() {
                left -= front.len();
                frames += front.frames as usize;
                self.inflight.pop_front();
            } else {
                frames += front.advance(left);
                left = 0;
            }
        }
        self.client.outbox.written(written, frames);
        self.hub.count_write(frames);
    }

    fn timers(&mut self, cx: &mut Context<'_>) -> Result<bool, DisconnectReason> {
        let config = self.hub.config();
        let now = Instant::now();
        let pong_deadline = self.last_rx + config.pong_timeout;
        if now >= pong_deadline {
            return Err(DisconnectReason::PongTimeout);
        }
        let write_deadline = self.stalled_since.map(|s| s + config.write_timeout);
        if write_deadline.is_some_and(|d| now >= d) {
            return Err(DisconnectReason::WriteTimeout);
        }
        if self.close_deadline.is_some_and(|d| now >= d) {
            // The client did not answer our close: the connection ends for the reason the
            // close was sent (recorded in `self.reason`, which takes precedence).
            return Err(DisconnectReason::ConnectionLost);
        }
        let mut progress = false;
        if !self.close_queued && now >= self.next_ping {
            self.client.outbox.push_control(frame::ping_frame(b""));
            self.next_ping = now + config.heartbeat_interval;
            progress = true;
        }
        let mut next = pong_deadline.min(self.next_ping);
        for d in [write_deadline, self.close_deadline].into_iter().flatten() {
            next = next.min(d);
        }
        if next != self.timer_at {
            self.timer.as_mut().reset(next);
            self.timer_at = next;
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            progress = true;
        }
        Ok(progress)
    }
}
