//! One established connection: a single loop (on the client's task) that reads and decodes
//! server frames, writes queued frames, keeps the connection alive and closes it.
//!
//! Reading and writing progress independently inside one `select!`: the socket is split into
//! its read and write halves, the loop owns one reusable read buffer and one write buffer,
//! and partial writes resume where they stopped. Nothing here allocates per message except
//! the message itself (a text frame's lines are slices of the frame's buffer).
//!
//! The connection also keeps each channel's position (see
//! [`ReconnectingClient::position`](super::ReconnectingClient::position)): the server's
//! messages that carry an `offset` are parsed for it as they are handed to the application,
//! and the answers to the client's own subscribes on channels with history become positions
//! and [`Event::Recovered`]/[`Event::NotRecovered`] rather than messages.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};

use super::error::ClientError;
use super::{ClientConfig, Event, EventSink, Position, ReceivedMessage, Shared, State};
use crate::frame::{close_code, encode_masked, CloseFrame, Decoder, Frame, OpCode, Role};
use crate::message::channel::ChannelName;
use crate::message::json::write_string;

/// Free space ensured in the read buffer before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Outgoing messages are taken from the queue only while fewer bytes than this wait in the
/// write buffer, so a slow socket pushes back on [`ReconnectingClient::send`](super::ReconnectingClient::send).
const WRITE_HIGH_WATER: usize = 64 * 1024;

/// Pongs are not queued past this many unwritten bytes: a server that floods pings while not
/// reading cannot grow the write buffer without bound.
const CONTROL_HIGH_WATER: usize = 256 * 1024;

/// Bytes of messages held back while the client waits for the server to confirm its
/// subscriptions; past this the client stops waiting and goes live. A resume can bring many
/// missed publications before the confirmation: a wshub server sends at most its per-client
/// queue limit (1 MiB by default) at once.
const MAX_HELD_BYTES: usize = 8 << 20;

/// What each held message counts against [`MAX_HELD_BYTES`] besides its payload.
const HELD_OVERHEAD: usize = 64;

/// The application-level ping whose pong confirms that the server has processed every
/// subscribe sent before it.
const SYNC_PING: &[u8] = br#"{"type":"ping"}"#;

/// What the rest of the loop should do after handling an input.
enum Flow {
    Continue,
    End(ClientError),
}

/// The connection is closing: a close frame is queued or sent.
struct Closing {
    /// What the connection ends with.
    reason: ClientError,
    /// Wait for the server's close frame (we started the close handshake) rather than end as
    /// soon as our close frame is written (we answered the server's close, or a protocol
    /// error ended reading).
    wait_for_peer: bool,
    /// When to give up on the close handshake.
    deadline: Instant,
}

/// Per-connection state. The socket halves and the outgoing queue live in [`run`].
struct Conn<'a> {
    shared: &'a Shared,
    config: &'a ClientConfig,
    events: &'a EventSink,
    /// Emitted when the connection goes live: `Connected` or `Reconnected`.
    announce: Option<Event>,
    decoder: Decoder,
    /// Bytes read and not yet decoded.
    rbuf: BytesMut,
    /// Whole frames waiting to be written; a partial write leaves the rest at the front.
    wbuf: BytesMut,
    /// The write half may hold bytes (TLS) that a flush must push out.
    needs_flush: bool,
    /// Since when the socket has accepted nothing while bytes wait; `None` when idle.
    write_stalled_since: Option<Instant>,
    /// When the last bytes arrived (after the events they produced were delivered).
    last_rx: Instant,
    /// The channels this connection has subscribed to (with the version that added each),
    /// and the subscription version they reflect.
    subscribed: BTreeMap<ChannelName, u64>,
    subscribed_version: u64,
    /// The client has announced the connection and accepts `send`.
    live: bool,
    /// Waiting for the pong that confirms the initial subscriptions.
    awaiting_pong: bool,
    /// Give up waiting for that pong at this time.
    sync_deadline: Instant,
    /// Messages that arrived before the connection went live, and what they count against
    /// [`MAX_HELD_BYTES`].
    held: Vec<ReceivedMessage>,
    held_bytes: usize,
    closing: Option<Closing>,
}

/// Runs one connection until it ends. Returns why it ended and whether it went live (was
/// announced to the application).
pub(super) async fn run<S>(
    io: S,
    leftover: BytesMut,
    shared: &Shared,
    config: &ClientConfig,
    events: &EventSink,
    announce: Event,
) -> (ClientError, bool)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(config.send_queue_capacity);
    let now = Instant::now();
    let mut conn = Conn {
        shared,
        config,
        events,
        announce: Some(announce),
        decoder: Decoder::new(Role::Client, config.max_message_size),
        rbuf: leftover,
        wbuf: BytesMut::new(),
        needs_flush: false,
        write_stalled_since: None,
        last_rx: now,
        subscribed: BTreeMap::new(),
        subscribed_version: u64::MAX,
        live: false,
        awaiting_pong: false,
        sync_deadline: now + config.connect_timeout,
        held: Vec::new(),
        held_bytes: 0,
        closing: None,
    };
    let reason = conn.drive(&mut rd, &mut wr, &out_tx, &mut out_rx).await;
    // Refuse further sends before the queue goes away, so nothing is accepted for a dead
    // connection.
    out_rx.close();
    shared.set_sender(None);
    (reason, conn.live)
}

impl Conn<'_> {
    async fn drive<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        out_tx: &mpsc::Sender<Bytes>,
        out_rx: &mut mpsc::Receiver<Bytes>,
    ) -> ClientError
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let cancel = &self.shared.cancel;
        // Subscribe to every remembered channel, then ask for a pong: once it arrives the
        // server has processed the subscriptions, and the connection is announced.
        self.sync_subscriptions();
        if self.subscribed.is_empty() {
            self.go_live(out_tx).await;
        } else {
            self.push_frame(OpCode::Text, SYNC_PING);
            self.awaiting_pong = true;
        }
        // Frames the server sent right behind its handshake response.
        if !self.rbuf.is_empty() {
            if let Flow::End(reason) = self.process_input(out_tx).await {
                return reason;
            }
        }

        let period = self.config.keepalive_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let timer = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(timer);

        loop {
            if let Some(closing) = &self.closing {
                if !closing.wait_for_peer && self.wbuf.is_empty() && !self.needs_flush {
                    return closing.reason.clone();
                }
            }
            // The timer is moved earlier when a new deadline needs it, and later only once it
            // has fired: most reads push the keepalive deadline back, and re-arming the timer
            // for each of them would be wasted work.
            let next = self.next_deadline();
            if next < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(next);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
                self.rbuf.reserve(READ_CHUNK);
            }
            let open = self.closing.is_none();
            let reading = self.closing.as_ref().is_none_or(|c| c.wait_for_peer);
            let accepting = self.live && open && self.wbuf.len() < WRITE_HIGH_WATER;
            let writing = !self.wbuf.is_empty();
            let flushing = !writing && self.needs_flush;

            tokio::select! {
                () = cancel.cancelled(), if open => self.begin_close(),
                () = self.shared.subscriptions_changed.notified(), if open => {
                    self.sync_subscriptions();
                }
                written = write_or_flush(wr, &self.wbuf), if writing || flushing => {
                    match written {
                        Ok(Some(0)) => {
                            return self.write_failed(std::io::ErrorKind::WriteZero.into());
                        }
                        Ok(Some(n)) => {
                            self.wbuf.advance(n);
                            self.needs_flush = true;
                            self.write_stalled_since =
                                (!self.wbuf.is_empty()).then(Instant::now);
                        }
                        Ok(None) => {
                            self.needs_flush = false;
                            self.write_stalled_since = None;
                        }
                        Err(e) => return self.write_failed(e),
                    }
                }
                read = rd.read_buf(&mut self.rbuf), if reading => match read {
                    Ok(0) => {
                        return match self.closing.take() {
                            Some(closing) => closing.reason,
                            None => ClientError::ConnectionLost,
                        };
                    }
                    Ok(_) => {
                        if let Flow::End(reason) = self.process_input(out_tx).await {
                            return reason;
                        }
                        self.last_rx = Instant::now();
                    }
                    Err(e) => {
                        return match self.closing.take() {
                            Some(closing) => closing.reason,
                            None => ClientError::io(e),
                        };
                    }
                },
                Some(frame) = out_rx.recv(), if accepting => {
                    // A subscribe made before this message was sent goes out before it.
                    self.sync_if_changed();
                    self.push_bytes(&frame);
                    while self.wbuf.len() < WRITE_HIGH_WATER {
                        let Ok(frame) = out_rx.try_recv() else { break };
                        self.sync_if_changed();
                        self.push_bytes(&frame);
                    }
                }
                _ = ping.tick(), if open => self.push_frame(OpCode::Ping, b""),
                () = &mut timer => {
                    if let Flow::End(reason) = self.on_timer(out_tx).await {
                        return reason;
                    }
                }
            }
        }
    }

    /// The earliest time something must be checked: keepalive, write stall, close
    /// handshake, subscription confirmation.
    fn next_deadline(&self) -> Instant {
        let mut next = self.last_rx + self.config.keepalive_timeout;
        if let Some(since) = self.write_stalled_since {
            next = next.min(since + self.config.write_timeout);
        }
        if let Some(closing) = &self.closing {
            next = next.min(closing.deadline);
        }
        if !self.live {
            next = next.min(self.sync_deadline);
        }
        next
    }

    async fn on_timer(&mut self, out_tx: &mpsc::Sender<Bytes>) -> Flow {
        let now = Instant::now();
        if let Some(closing) = &self.closing {
            if now >= closing.deadline {
                return Flow::End(closing.reason.clone());
            }
        }
        if let Some(since) = self.write_stalled_since {
            if now >= since + self.config.write_timeout {
                return Flow::End(
                    self.or_closing(ClientError::WriteTimeout(self.config.write_timeout)),
                );
            }
        }
        if now >= self.last_rx + self.config.keepalive_timeout {
            return Flow::End(
                self.or_closing(ClientError::KeepaliveTimeout(self.config.keepalive_timeout)),
            );
        }
        if !self.live && now >= self.sync_deadline {
            // The server never answered the ping (not every server does): go on without
            // the confirmation, and hand a late pong to the application.
            self.awaiting_pong = false;
            self.go_live(out_tx).await;
        }
        Flow::Continue
    }

    /// The closing reason if a close is under way (the application asked for it), else `e`.
    fn or_closing(&mut self, e: ClientError) -> ClientError {
        self.closing.take().map_or(e, |c| c.reason)
    }

    fn write_failed(&mut self, e: std::io::Error) -> ClientError {
        self.or_closing(ClientError::io(e))
    }

    /// Tells the server why with close `code`, then drops the connection with `error`:
    /// nothing more it sends can be trusted, so nothing more is read.
    fn fail(&mut self, code: u16, reason: &str, error: ClientError) {
        self.rbuf.clear();
        self.push_close(code, reason);
        self.closing = Some(Closing {
            reason: error,
            wait_for_peer: false,
            deadline: Instant::now() + self.config.close_timeout,
        });
    }

    /// Decodes and handles every complete frame in the read buffer.
    async fn process_input(&mut self, out_tx: &mpsc::Sender<Bytes>) -> Flow {
        loop {
            let frame = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Flow::Continue,
                Err(e) => {
                    if let Some(closing) = self.closing.take() {
                        return Flow::End(closing.reason);
                    }
                    self.fail(e.code(), e.reason(), ClientError::Protocol(e));
                    return Flow::Continue;
                }
            };
            if let Flow::End(reason) = self.on_frame(frame, out_tx).await {
                return Flow::End(reason);
            }
            if self
                .closing
                .as_ref()
                .is_some_and(|closing| !closing.wait_for_peer)
            {
                return Flow::Continue;
            }
        }
    }

    async fn on_frame(&mut self, frame: Frame, out_tx: &mpsc::Sender<Bytes>) -> Flow {
        match frame {
            Frame::Text(payload) => {
                // (While closing, messages are dropped unread: no second close frame.)
                if self.config.require_json && self.closing.is_none() {
                    if let Err(e) = check_json_lines(&payload) {
                        let error = ClientError::InvalidJson(e.to_string());
                        self.fail(close_code::INVALID_PAYLOAD, "invalid JSON", error);
                        return Flow::Continue;
                    }
                }
                if !self.config.split_lines {
                    self.deliver(ReceivedMessage::new_text(payload), out_tx)
                        .await;
                    return Flow::Continue;
                }
                let mut start = 0;
                while start < payload.len() {
                    let end = payload[start..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(payload.len(), |i| start + i);
                    if end > start {
                        // Splitting at an ASCII newline keeps each line valid UTF-8.
                        let line = payload.slice(start..end);
                        self.deliver(ReceivedMessage::new_text(line), out_tx).await;
                    }
                    start = end + 1;
                }
            }
            Frame::Binary(payload) => {
                self.deliver(ReceivedMessage::new_binary(payload), out_tx)
                    .await;
            }
            Frame::Ping(payload) => {
                if self.closing.is_none() && self.wbuf.len() < CONTROL_HIGH_WATER {
                    self.push_frame(OpCode::Pong, &payload);
                }
            }
            Frame::Pong(_) => {}
            Frame::Close(close) => {
                if let Some(closing) = self.closing.take() {
                    // The answer to our own close frame.
                    return Flow::End(closing.reason);
                }
                let (code, reason) = match close {
                    Some(CloseFrame { code, reason }) => {
                        self.push_close(code, "");
                        (Some(code), String::from_utf8_lossy(&reason).into_owned())
                    }
                    None => {
                        self.push_frame(OpCode::Close, b"");
                        (None, String::new())
                    }
                };
                self.closing = Some(Closing {
                    reason: ClientError::ServerClosed { code, reason },
                    wait_for_peer: false,
                    deadline: Instant::now() + self.config.close_timeout,
                });
            }
        }
        Flow::Continue
    }

    /// Hands a message to the application, or holds it until the connection goes live.
    async fn deliver(&mut self, message: ReceivedMessage, out_tx: &mpsc::Sender<Bytes>) {
        if self.closing.is_some() {
            return;
        }
        if self.awaiting_pong && is_pong(&message) {
            // The confirmation; it is consumed even if too much arrived before it and the
            // connection went live without it.
            self.awaiting_pong = false;
            if !self.live {
                self.go_live(out_tx).await;
            }
            return;
        }
        if self.live {
            self.emit_message(message).await;
            return;
        }
        if self.take_position_answer(&message) {
            return;
        }
        self.held_bytes += message.payload().len() + HELD_OVERHEAD;
        self.held.push(message);
        if self.held_bytes > MAX_HELD_BYTES {
            self.go_live(out_tx).await;
        }
    }

    /// Announces the connection, accepts sends, and delivers what was held back.
    async fn go_live(&mut self, out_tx: &mpsc::Sender<Bytes>) {
        self.live = true;
        self.shared.set_sender(Some(out_tx.clone()));
        self.shared.set_state(State::Connected);
        if let Some(event) = self.announce.take() {
            self.events.emit(event).await;
        }
        self.held_bytes = 0;
        for message in std::mem::take(&mut self.held) {
            self.emit_message(message).await;
        }
    }

    /// Records the position a plain `subscribed` answer (not to a resume) gives on a
    /// subscribed channel; `true` if `message` was one. Done as it arrives, so the positions
    /// are known when the connection is announced.
    fn take_position_answer(&self, message: &ReceivedMessage) -> bool {
        if self.subscribed.is_empty() {
            return false;
        }
        match message.text().and_then(positioned) {
            Some(Positioned::Subscribed {
                channel,
                recovered: None,
                epoch,
                offset,
            }) if self.subscribed.contains_key(&*channel) => {
                self.shared.set_position(&channel, &epoch, offset);
                true
            }
            _ => false,
        }
    }

    /// Hands a message to the application and keeps the positions up to date: a publication
    /// on a subscribed channel that carries its position moves the channel's position as it
    /// enters the event queue; the answer to a subscribe on a channel with history is not a
    /// message but a position, announced as [`Event::Recovered`] or [`Event::NotRecovered`]
    /// when it answers a resume. A position moves before its event is queued (so
    /// [`position`](super::ReconnectingClient::position) reflects every event the
    /// application has seen), and moves back if the event cannot be queued (the client is
    /// closing), so that it never covers an event the application did not get.
    async fn emit_message(&mut self, message: ReceivedMessage) {
        let positioned = if self.subscribed.is_empty() {
            None
        } else {
            message.text().and_then(positioned)
        };
        let Some((channel, positioned)) = positioned.and_then(|p| {
            let (channel, _) = self.subscribed.get_key_value(p.channel())?;
            Some((channel.clone(), p))
        }) else {
            self.events.emit(Event::Message(message)).await;
            return;
        };
        match positioned {
            Positioned::Publication { epoch, offset, .. } => {
                let undo = self.shared.set_position(&channel, &epoch, offset);
                if !self.events.emit(Event::Message(message.clone())).await {
                    self.shared.undo_position(&channel, undo);
                }
            }
            Positioned::Subscribed {
                recovered: None,
                epoch,
                offset,
                ..
            } => {
                self.shared.set_position(&channel, &epoch, offset);
            }
            Positioned::Subscribed {
                recovered: Some(true),
                ..
            } => {
                // The publications after the position the client sent follow; it stands.
                match self.shared.position(&channel) {
                    Some(Position { epoch, offset }) => {
                        let event = Event::Recovered {
                            channel,
                            epoch,
                            offset,
                        };
                        self.events.emit(event).await;
                    }
                    // Not an answer to a resume of this client's: the application's own.
                    None => {
                        self.events.emit(Event::Message(message.clone())).await;
                    }
                }
            }
            Positioned::Subscribed {
                recovered: Some(false),
                epoch,
                offset,
                ..
            } => {
                let undo = self.shared.set_position(&channel, &epoch, offset);
                let event = Event::NotRecovered {
                    channel: channel.clone(),
                    epoch: epoch.into_owned(),
                    offset,
                };
                // A position saved after the stream ended never skips an unannounced gap.
                if !self.events.emit(event).await {
                    self.shared.undo_position(&channel, undo);
                }
            }
        }
    }

    /// Starts the close handshake the application asked for.
    fn begin_close(&mut self) {
        self.push_close(close_code::NORMAL, "");
        self.closing = Some(Closing {
            reason: ClientError::Closed,
            wait_for_peer: true,
            deadline: Instant::now() + self.config.close_timeout,
        });
    }

    fn sync_if_changed(&mut self) {
        if self.shared.subscriptions_version.load(Ordering::Acquire) != self.subscribed_version {
            self.sync_subscriptions();
        }
    }

    /// Brings the server's view of our subscriptions in line with the remembered set: a
    /// channel with a known position is subscribed with it, so the server resumes it.
    fn sync_subscriptions(&mut self) {
        let (wanted, version) = self.shared.subscription_snapshot();
        if version == self.subscribed_version {
            return;
        }
        self.subscribed_version = version;
        // Removed, or removed and added again since the last synchronisation.
        let stale: Vec<ChannelName> = self
            .subscribed
            .iter()
            .filter(|(channel, added)| wanted.get(*channel).is_none_or(|s| s.added != **added))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in stale {
            self.push_frame(OpCode::Text, &request("unsubscribe", &channel, None));
            self.subscribed.remove(&channel);
        }
        for (channel, subscription) in wanted {
            if !self.subscribed.contains_key(&channel) {
                let request = request("subscribe", &channel, subscription.position.as_ref());
                self.push_frame(OpCode::Text, &request);
                self.subscribed.insert(channel, subscription.added);
            }
        }
    }

    /// Queues a masked frame with a fresh random key.
    fn push_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let frame = encode_masked(opcode as u8, true, 0, payload, rand::random());
        self.push_bytes(&frame);
    }

    fn push_close(&mut self, code: u16, reason: &str) {
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.push_frame(OpCode::Close, &payload);
    }

    fn push_bytes(&mut self, frame: &[u8]) {
        if self.wbuf.is_empty() {
            self.write_stalled_since = Some(Instant::now());
        }
        self.wbuf.extend_from_slice(frame);
    }
}

/// Writes some of `buf` (`Some(bytes written)`), or flushes when `buf` is empty (`None`).
/// Cancel safe: a write that has not completed wrote nothing, and a flush that is dropped
/// leaves its bytes for the next flush.
async fn write_or_flush<W>(wr: &mut W, buf: &[u8]) -> std::io::Result<Option<usize>>
where
    W: AsyncWrite + Unpin,
{
    if buf.is_empty() {
        wr.flush().await.map(|()| None)
    } else {
        wr.write(buf).await.map(Some)
    }
}

/// A subscribe or unsubscribe request in the form both wshub and go-ws read: wshub takes
/// `channel`, go-ws takes `data`. Channel names need no JSON escaping. With a position, the
/// subscribe asks a wshub server to resume from it (go-ws ignores the extra fields).
fn request(kind: &str, channel: &ChannelName, position: Option<&Position>) -> Vec<u8> {
    let mut out = format!(
        r#"{{"type":"{kind}","channel":"{name}","data":"{name}""#,
        name = channel.as_str()
    )
    .into_bytes();
    if let Some(position) = position {
        out.extend_from_slice(format!(r#","offset":{},"epoch":"#, position.offset).as_bytes());
        write_string(&mut out, &position.epoch);
    }
    out.push(b'}');
    out
}

/// A server message that carries a position in a channel's history.
#[derive(Debug, PartialEq, Eq)]
enum Positioned<'a> {
    /// A publication on a channel with history:
    /// `{"type":T,"channel":C,...,"offset":N,"epoch":E}`.
    Publication {
        channel: Cow<'a, str>,
        epoch: Cow<'a, str>,
        offset: u64,
    },
    /// The answer to a subscribe on a channel with history:
    /// `{"type":"subscribed","channel":C[,"recovered":R],"epoch":E,"offset":N,...}`.
    Subscribed {
        channel: Cow<'a, str>,
        recovered: Option<bool>,
        epoch: Cow<'a, str>,
        offset: u64,
    },
}

impl Positioned<'_> {
    fn channel(&self) -> &str {
        match self {
            Positioned::Publication { channel, .. } | Positioned::Subscribed { channel, .. } => {
                channel
            }
        }
    }
}

/// The position a server message carries, if any. Only messages with an `"offset"` are
/// parsed, into a borrowed struct (`data` is skipped, not built).
fn positioned(text: &str) -> Option<Positioned<'_>> {
    #[derive(serde::Deserialize)]
    struct Fields<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default, borrow)]
        channel: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        epoch: Option<Cow<'a, str>>,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        recovered: Option<bool>,
    }
    if !text.contains(r#""offset""#) {
        return None;
    }
    let fields: Fields<'_> = serde_json::from_str(text).ok()?;
    let (channel, epoch, offset) = (fields.channel?, fields.epoch?, fields.offset?);
    Some(if fields.kind == "subscribed" {
        Positioned::Subscribed {
            channel,
            recovered: fields.recovered,
            epoch,
            offset,
        }
    } else {
        Positioned::Publication {
            channel,
            epoch,
            offset,
        }
    })
}

/// Checks that every non-empty line of a text message is one JSON value.
fn check_json_lines(payload: &[u8]) -> Result<(), serde_json::Error> {
    for line in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        serde_json::from_slice::<serde::de::IgnoredAny>(line)?;
    }
    Ok(())
}

/// Whether a message is the server's `{"type":"pong",...}` reply.
fn is_pong(message: &ReceivedMessage) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
    }
    !message.is_binary()
        && serde_json::from_slice::<Kind<'_>>(message.payload()).is_ok_and(|k| k.kind == "pong")
}

/// Encodes a client frame, for [`ReconnectingClient::send`](super::ReconnectingClient::send).
pub(super) fn client_frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    Bytes::from(encode_masked(
        opcode as u8,
        true,
        0,
        payload,
        rand::random(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_the_channel_twice() {
        let c = ChannelName::new("process:1").unwrap();
        assert_eq!(
            request("subscribe", &c, None),
            br#"{"type":"subscribe","channel":"process:1","data":"process:1"}"#
        );
    }

    #[test]
    fn resumes_carry_the_position() {
        let c = ChannelName::new("feed:1").unwrap();
        let position = Position {
            epoch: "e\"1".to_owned(),
            offset: 41,
        };
        assert_eq!(
            request("subscribe", &c, Some(&position)),
            br#"{"type":"subscribe","channel":"feed:1","data":"feed:1","offset":41,"epoch":"e\"1"}"#
        );
    }

    #[test]
    fn finds_positions() {
        assert_eq!(
            positioned(
                r#"{"type":"event","channel":"feed:a","data":{"offset":[1]},"timestamp":"t","offset":7,"epoch":"e1"}"#
            ),
            Some(Positioned::Publication {
                channel: "feed:a".into(),
                epoch: "e1".into(),
                offset: 7
            })
        );
        assert_eq!(
            positioned(
                r#"{"type":"subscribed","channel":"feed:a","recovered":false,"epoch":"e2","offset":0,"timestamp":"t"}"#
            ),
            Some(Positioned::Subscribed {
                channel: "feed:a".into(),
                recovered: Some(false),
                epoch: "e2".into(),
                offset: 0
            })
        );
        assert_eq!(
            positioned(
                r#"{"type":"subscribed","channel":"feed:a","epoch":"e2","offset":3,"timestamp":"t"}"#
            ),
            Some(Positioned::Subscribed {
                channel: "feed:a".into(),
                recovered: None,
                epoch: "e2".into(),
                offset: 3
            })
        );
        // No position: no offset at the top level, no channel, no epoch, not JSON.
        for text in [
            r#"{"type":"event","channel":"news","data":"x","timestamp":"t"}"#,
            r#"{"type":"event","channel":"news","data":{"offset":1,"epoch":"e"}}"#,
            r#"{"type":"event","offset":1,"epoch":"e"}"#,
            r#"{"type":"event","channel":"c","offset":1}"#,
            r#"{"type":"event","channel":"c","offset":-1,"epoch":"e"}"#,
            r#"not JSON "offset""#,
        ] {
            assert_eq!(positioned(text), None, "{text}");
        }
    }

    #[test]
    fn recognises_pongs() {
        let text = |s: &'static str| ReceivedMessage::new_text(Bytes::from_static(s.as_bytes()));
        assert!(is_pong(&text(r#"{"type":"pong","timestamp":"x"}"#)));
        assert!(!is_pong(&text(r#"{"type":"event","data":"pong"}"#)));
        assert!(!is_pong(&text("pong")));
        assert!(!is_pong(&ReceivedMessage::new_binary(Bytes::from_static(
            br#"{"type":"pong"}"#
        ))));
    }

    #[test]
    fn client_frames_are_masked_with_fresh_keys() {
        let a = client_frame(OpCode::Text, b"hello");
        let b = client_frame(OpCode::Text, b"hello");
        assert_eq!(a[0], 0x81);
        assert_eq!(a[1], 0x80 | 5);
        // Two random 32-bit keys collide with probability 2^-32.
        assert_ne!(a[2..6], b[2..6]);
        let mut decoder = Decoder::new(Role::Server, 1024);
        let mut buf = BytesMut::from(&a[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Frame::Text(Bytes::from_static(b"hello")))
        );
    }
}
