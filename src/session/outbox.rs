//! A client's outbound queue: bounded in bytes and frames, with a priority lane for control
//! frames and an explicit slow-consumer policy.
//!
//! Publishers push shared frames (`Bytes` handles: a reference count, never a copy) and never
//! wait; the client's session takes everything pending in one go and writes it with one
//! vectored write.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::SystemTime;

use bytes::{Buf, Bytes};

use crate::config::SlowConsumerPolicy;
use crate::frame::{self, close_code};
use crate::message::Message;
use crate::session::DisconnectReason;

/// Pongs waiting to be written at most (a client flooding pings cannot grow the queue).
const MAX_PENDING_PONGS: usize = 16;

/// Outcome of queueing one data frame for one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Enqueue {
    /// Queued; the client's writer will send it.
    Queued,
    /// Not queued: the queue is full and the policy is `Drop`.
    Dropped,
    /// Not queued: the queue is full and the policy is `Disconnect`; this push started the
    /// disconnect.
    SlowConsumer,
    /// Not queued: the client is closing or closed.
    Closed,
}

/// What the writer took from the outbox.
#[derive(Debug)]
pub(crate) enum Take {
    /// Nothing pending; the waker was registered.
    Idle,
    /// Frames were appended to the writer's queue.
    Frames,
    /// The close frame was appended (after everything else, or after abandoning queued data);
    /// nothing more will ever be taken.
    Close(DisconnectReason),
    /// Stop at once without a close frame (forced shutdown).
    Abort(DisconnectReason),
}

/// A piece of the queue: one whole frame, or several consecutive frames published together
/// ([`Outbox::push_batch`]), written as one piece. `frames` counts them for the frame bound and
/// the metrics.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chunk {
    pub(crate) bytes: Bytes,
    /// Frames in `bytes` not yet completely written.
    pub(crate) frames: u32,
    /// The bytes left of a frame whose start was written (saturated), 0 at a frame boundary.
    rest: u32,
}

impl Chunk {
    pub(crate) fn one(bytes: Bytes) -> Self {
        Chunk {
            bytes,
            frames: 1,
            rest: 0,
        }
    }

    /// Drops the first `n` bytes (fewer than `len()`), which a write sent; returns how many
    /// frames they completed.
    pub(crate) fn advance(&mut self, n: usize) -> usize {
        if self.frames == 1 {
            self.bytes.advance(n);
            self.rest = u32::try_from(self.bytes.len()).unwrap_or(u32::MAX);
            return 0;
        }
        let mut completed = 0;
        let mut end = match self.rest {
            0 => frame::first_frame_len(&self.bytes),
            rest => rest as usize,
        };
        // `n < len()`, so every frame looked at here is not empty.
        while end <= n {
            completed += 1;
            if end == n {
                break; // at a frame boundary
            }
            end += frame::first_frame_len(&self.bytes[end..]);
        }
        self.rest = (end - n) as u32;
        self.bytes.advance(n);
        self.frames -= completed as u32;
        completed
    }

    /// Whether the first bytes of the chunk's first frame were written (after
    /// [`Chunk::advance`]).
    pub(crate) fn started(&self) -> bool {
        self.rest > 0
    }

    /// Splits a partly written chunk of several frames after its first frame, so that what
    /// jumps the queue (control frames) or is abandoned (a slow consumer's data) is decided
    /// frame by frame, as for frames queued one by one.
    fn split_front(out: &mut VecDeque<Chunk>) {
        let Some(front) = out.front_mut() else {
            return;
        };
        if front.frames < 2 || front.rest == 0 {
            return;
        }
        let tail = Chunk {
            bytes: front.bytes.split_off(front.rest as usize),
            frames: front.frames - 1,
            rest: 0,
        };
        // The front is the started frame's rest (`rest` stays its length).
        front.frames = 1;
        out.insert(1, tail);
    }
}

impl std::ops::Deref for Chunk {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

impl PartialEq<Bytes> for Chunk {
    fn eq(&self, other: &Bytes) -> bool {
        self.frames == 1 && self.bytes == *other
    }
}

/// What [`Outbox::push_batch`] did with a batch's frames, counted in frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    pub(crate) queued: usize,
    pub(crate) dropped: usize,
    /// Frames refused because the client is closing, or because this batch disconnected it.
    pub(crate) refused: usize,
    /// This batch started a slow-consumer disconnect.
    pub(crate) slow_consumer: bool,
}

struct CloseRequest {
    frame: Bytes,
    abandon: bool,
    reason: DisconnectReason,
}

enum Phase {
    Open,
    /// A close was requested and not yet taken by the writer (boxed: rare, and the phase is
    /// part of every client's state).
    Closing(Box<CloseRequest>),
    /// The writer took the close frame.
    CloseTaken,
    /// Forced stop requested.
    Aborting(Box<DisconnectReason>),
    /// The session ended; nothing is accepted any more.
    Closed,
}

struct State {
    /// Data frames not yet taken by the writer.
    data: VecDeque<Chunk>,
    /// Control frames (ping, pong) not yet taken; sent before queued data.
    control: VecDeque<Bytes>,
    /// Bytes queued here or taken by the writer and not yet written (control frames included).
    bytes: usize,
    /// Frames counted the same way as `bytes`.
    frames: usize,
    /// Messages dropped (policy `Drop`) since the last "dropped N messages" notice.
    pending_drops: u32,
    /// The writer is holding back its next write ([`Outbox::delay`]): pushes do not wake
    /// it until the queue is half full.
    delaying: bool,
    /// Messages dropped over the client's lifetime.
    dropped_total: u64,
    phase: Phase,
    /// The session's waker, registered when it found nothing to write.
    waker: Option<Waker>,
}

/// The queue between publishers and one client's writer.
pub(crate) struct Outbox {
    state: Mutex<State>,
    max_bytes: usize,
    max_frames: usize,
    policy: SlowConsumerPolicy,
}

impl Outbox {
    pub(crate) fn new(max_bytes: usize, max_frames: usize, policy: SlowConsumerPolicy) -> Self {
        Outbox {
            state: Mutex::new(State {
                data: VecDeque::new(),
                control: VecDeque::new(),
                bytes: 0,
                frames: 0,
                pending_drops: 0,
                delaying: false,
                dropped_total: 0,
                phase: Phase::Open,
                waker: None,
            }),
            max_bytes,
            max_frames,
            policy,
        }
    }

    /// The queue's bound in bytes.
    pub(crate) fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock with the state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn fits(&self, st: &State, len: usize, frames: usize) -> bool {
        st.bytes + len <= self.max_bytes && st.frames + frames <= self.max_frames
    }

    fn half_full(&self, st: &State) -> bool {
        st.bytes * 2 >= self.max_bytes || st.frames * 2 >= self.max_frames
    }

    /// Wakes the writer for a new frame, unless it is holding back its write and the queue is
    /// still less than half full.
    fn wake_writer(&self, st: MutexGuard<'_, State>) {
        if !st.delaying || self.half_full(&st) {
            wake(st);
        }
    }

    /// The writer holds back its next write (see
    /// [`HubConfig::write_delay`](crate::HubConfig::write_delay)) and registers `waker`, to be
    /// woken only when the queue reaches half of a bound or a close or abort is requested.
    /// `false` (and nothing registered) when the writer should write at once instead.
    pub(crate) fn delay(&self, waker: &Waker) -> bool {
        let mut st = self.lock();
        if !matches!(st.phase, Phase::Open) || self.half_full(&st) {
            return false;
        }
        st.delaying = true;
        register(&mut st.waker, waker);
        true
    }

    /// Whether the writer should still hold back: [`Outbox::delay`] was called and nothing
    /// since has asked for a write.
    pub(crate) fn delaying(&self) -> bool {
        self.lock().delaying
    }

    /// Queues a data frame; never blocks, never waits for the client.
    pub(crate) fn push_data(&self, frame: Bytes) -> Enqueue {
        let mut st = self.lock();
        if !matches!(st.phase, Phase::Open) {
            return Enqueue::Closed;
        }
        let mut notice = None;
        if st.pending_drops > 0 {
            let n = drop_notice(st.pending_drops);
            if self.fits(&st, n.len() + frame.len(), 2) {
                notice = Some(n);
            }
        }
        if st.pending_drops > 0 && notice.is_none() || !self.fits(&st, frame.len(), 1) {
            return self.overflow(st);
        }
        if let Some(n) = notice {
            st.pending_drops = 0;
            st.bytes += n.len();
            st.frames += 1;
            st.data.push_back(Chunk::one(n));
        }
        st.bytes += frame.len();
        st.frames += 1;
        st.data.push_back(Chunk::one(frame));
        self.wake_writer(st);
        Enqueue::Queued
    }

    /// Queues the frames of `batch`, which ends them at the offsets `ends` (ascending, the
    /// last one `batch.len()`), exactly as pushing them one by one with
    /// [`Outbox::push_data`] would; when they all fit, as one chunk, under one lock and with
    /// one wake-up.
    pub(crate) fn push_batch(&self, batch: &Bytes, ends: &[u32]) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        {
            let mut st = self.lock();
            if !matches!(st.phase, Phase::Open) {
                out.refused = ends.len();
                return out;
            }
            if st.pending_drops == 0 && self.fits(&st, batch.len(), ends.len()) {
                st.bytes += batch.len();
                st.frames += ends.len();
                st.data.push_back(Chunk {
                    bytes: batch.clone(),
                    frames: ends.len() as u32,
                    rest: 0,
                });
                self.wake_writer(st);
                out.queued = ends.len();
                return out;
            }
        }
        // A copy of each frame: a slice would keep the whole batch alive in a slow queue.
        let mut start = 0;
        for &end in ends {
            match self.push_data(Bytes::copy_from_slice(&batch[start as usize..end as usize])) {
                Enqueue::Queued => out.queued += 1,
                Enqueue::Dropped => out.dropped += 1,
                Enqueue::SlowConsumer => {
                    out.slow_consumer = true;
                    out.refused += 1;
                }
                Enqueue::Closed => out.refused += 1,
            }
            start = end;
        }
        out
    }

    fn overflow(&self, mut st: MutexGuard<'_, State>) -> Enqueue {
        match self.policy {
            SlowConsumerPolicy::Drop => {
                st.pending_drops = st.pending_drops.saturating_add(1);
                st.dropped_total += 1;
                Enqueue::Dropped
            }
            SlowConsumerPolicy::Disconnect => {
                st.phase = Phase::Closing(Box::new(CloseRequest {
                    frame: frame::close_frame(close_code::POLICY, "slow consumer"),
                    abandon: true,
                    reason: DisconnectReason::SlowConsumer,
                }));
                abandon_data(&mut st);
                wake(st);
                Enqueue::SlowConsumer
            }
        }
    }

    /// Queues a control frame on the priority lane. Never refused by data backpressure. At
    /// most [`MAX_PENDING_PONGS`] pongs wait at a time: beyond that the oldest is replaced,
    /// as RFC 6455 allows answering only the most recent ping.
    pub(crate) fn push_control(&self, frame: Bytes) {
        let mut st = self.lock();
        if !matches!(st.phase, Phase::Open | Phase::Closing(_)) {
            return;
        }
        if is_pong(&frame) && st.control.iter().filter(|f| is_pong(f)).count() >= MAX_PENDING_PONGS
        {
            if let Some(i) = st.control.iter().position(|f| is_pong(f)) {
                if let Some(old) = st.control.remove(i) {
                    st.bytes -= old.len();
                    st.frames -= 1;
                }
            }
        }
        st.bytes += frame.len();
        st.frames += 1;
        st.control.push_back(frame);
        self.wake_writer(st);
    }

    /// Asks the writer to send `close` and end the connection. With `abandon`, queued data is
    /// discarded; otherwise the close frame follows everything already queued. The first
    /// request wins, except that an abandoning request overrides a graceful one still pending.
    pub(crate) fn request_close(&self, close: Bytes, abandon: bool, reason: DisconnectReason) {
        let mut st = self.lock();
        match &st.phase {
            Phase::Open => {}
            Phase::Closing(req) if abandon && !req.abandon => {}
            _ => return,
        }
        if abandon {
            abandon_data(&mut st);
        }
        st.phase = Phase::Closing(Box::new(CloseRequest {
            frame: close,
            abandon,
            reason,
        }));
        wake(st);
    }

    /// Asks the writer to stop at once, without a close frame.
    pub(crate) fn abort(&self, reason: DisconnectReason) {
        let mut st = self.lock();
        if matches!(st.phase, Phase::Closed) {
            return;
        }
        abandon_data(&mut st);
        st.phase = Phase::Aborting(Box::new(reason));
        wake(st);
    }

    /// The session ended: drop everything and refuse all further frames.
    pub(crate) fn close(&self) {
        let mut st = self.lock();
        st.phase = Phase::Closed;
        st.data = VecDeque::new();
        st.control = VecDeque::new();
        st.waker = None;
    }

    /// Moves pending frames into the writer's queue `out`. Control frames go right after the
    /// frame currently being written (`keep_front`: its first bytes are already on the wire),
    /// data frames at the back. Registers `waker` when there is nothing to take.
    ///
    /// With `urgent_only` (the socket is full), only control frames, an abort and an
    /// abandoning close are taken, and the waker is always registered.
    pub(crate) fn take(
        &self,
        out: &mut VecDeque<Chunk>,
        keep_front: bool,
        waker: &Waker,
        urgent_only: bool,
    ) -> Take {
        let mut st = self.lock();
        if std::mem::take(&mut st.delaying) {
            // Registered by `delay`; the writer is running now.
            st.waker = None;
        }
        if urgent_only {
            register(&mut st.waker, waker);
            if let Phase::Closing(req) = &st.phase {
                if !req.abandon {
                    return Take::Idle;
                }
            }
        }
        if keep_front {
            Chunk::split_front(out);
        }
        let first = usize::from(keep_front && !out.is_empty());
        if st.control.iter().any(|f| is_pong(f)) {
            // Pongs still waiting in `out` (taken while the socket was full) are superseded by
            // the newer ones: RFC 6455 §5.5.3 lets an endpoint answer only the most recent
            // pings. Without this, a client that floods pings and never reads piles up pongs
            // in `out` without bound, as every urgent take empties `control` for the next
            // ones. Unwritten pings and pongs sit right after the partly written front, so
            // the scan stops at the first other frame.
            let mut i = first;
            while i < out.len() && is_ping_or_pong(&out[i]) {
                if is_pong(&out[i]) {
                    if let Some(old) = out.remove(i) {
                        st.bytes -= old.len();
                        st.frames -= 1;
                    }
                } else {
                    i += 1;
                }
            }
        }
        let mut at = first;
        while let Some(c) = st.control.pop_front() {
            out.insert(at, Chunk::one(c));
            at += 1;
        }
        match std::mem::replace(&mut st.phase, Phase::Open) {
            Phase::Open if urgent_only => {
                if at > 0 {
                    Take::Frames
                } else {
                    Take::Idle
                }
            }
            Phase::Open => {
                if st.pending_drops > 0 {
                    let n = drop_notice(st.pending_drops);
                    if self.fits(&st, n.len(), 1) {
                        st.pending_drops = 0;
                        st.bytes += n.len();
                        st.frames += 1;
                        st.data.push_back(Chunk::one(n));
                    }
                }
                let taken = at > 0 || !st.data.is_empty();
                if out.is_empty() {
                    // The usual case: hand the whole queue over without moving its frames.
                    std::mem::swap(out, &mut st.data);
                } else {
                    out.extend(st.data.drain(..));
                }
                if taken {
                    Take::Frames
                } else {
                    register(&mut st.waker, waker);
                    // An idle client keeps no queue memory.
                    st.data = VecDeque::new();
                    st.control = VecDeque::new();
                    Take::Idle
                }
            }
            Phase::Closing(req) => {
                if req.abandon {
                    // Keep the frame being written (its header is on the wire) and the control
                    // frames just inserted; forget the rest.
                    let (mut bytes, mut frames) = (0, 0);
                    for f in out.drain(at..) {
                        bytes += f.len();
                        frames += f.frames as usize;
                    }
                    st.bytes -= bytes;
                    st.frames -= frames;
                } else {
                    out.extend(st.data.drain(..));
                }
                st.bytes += req.frame.len();
                st.frames += 1;
                out.push_back(Chunk::one(req.frame));
                st.phase = Phase::CloseTaken;
                Take::Close(req.reason)
            }
            Phase::Aborting(reason) => {
                st.phase = Phase::Closed;
                Take::Abort(*reason)
            }
            other @ (Phase::CloseTaken | Phase::Closed) => {
                st.phase = other;
                Take::Idle
            }
        }
    }

    /// The writer wrote `bytes` bytes, completing `frames` frames.
    pub(crate) fn written(&self, bytes: usize, frames: usize) {
        let mut st = self.lock();
        st.bytes = st.bytes.saturating_sub(bytes);
        st.frames = st.frames.saturating_sub(frames);
    }

    /// Whether data is still accepted.
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.lock().phase, Phase::Open)
    }

    /// Whether `frames` (in total) fit into the queue now.
    pub(crate) fn has_room_for(&self, frames: &[Bytes]) -> bool {
        let bytes = frames.iter().map(Bytes::len).sum();
        self.fits(&self.lock(), bytes, frames.len())
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Messages dropped over the client's lifetime.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.lock().dropped_total
    }
}

/// Whether `frame` (a whole frame, not a partly written one) is a pong.
fn is_pong(frame: &[u8]) -> bool {
    frame.first() == Some(&0x8A)
}

/// Whether `frame` (a whole frame) is a ping or a pong.
fn is_ping_or_pong(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(0x89 | 0x8A))
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn abandon_data(st: &mut State) {
    let bytes: usize = st.data.iter().map(|c| c.len()).sum();
    st.bytes -= bytes;
    st.frames -= st.data.iter().map(|c| c.frames as usize).sum::<usize>();
    st.data = VecDeque::new();
}

/// Wakes the session (if it is waiting) after releasing the lock; a held-back write is due.
fn wake(mut st: MutexGuard<'_, State>) {
    st.delaying = false;
    let waker = st.waker.take();
    drop(st);
    if let Some(w) = waker {
        w.wake();
    }
}

fn drop_notice(n: u32) -> Bytes {
    Message::error(&format!("dropped {n} messages")).encode_frame(None, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    struct Flag(std::sync::atomic::AtomicUsize);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Flag>, Waker) {
        let f = Arc::new(Flag(0.into()));
        (f.clone(), Waker::from(f))
    }

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0x81; n])
    }

    #[test]
    fn a_delayed_writer_is_woken_only_at_half_a_bound_or_by_a_close() {
        let ob = Outbox::new(1000, 8, SlowConsumerPolicy::Disconnect);
        let (flag, w) = waker();
        let mut out = VecDeque::new();
        let wakes = || flag.0.load(std::sync::atomic::Ordering::SeqCst);
        assert!(ob.delay(&w));
        assert_eq!(ob.push_data(frame(100)), Enqueue::Queued);
        ob.push_control(frame::ping_frame(b""));
        assert_eq!(wakes(), 0, "below half of both bounds");
        assert!(ob.delaying());
        assert_eq!(ob.push_data(frame(400)), Enqueue::Queued);
        assert_eq!(wakes(), 1, "500 of 1000 bytes");
        assert!(!ob.delaying());
        assert!(!ob.delay(&w), "still half full: write at once");
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        assert_eq!(out.len(), 3);
        ob.written(600, 3);
        out.clear();

        // Half of the frame bound.
        assert!(ob.delay(&w));
        for _ in 0..3 {
            assert_eq!(ob.push_data(frame(1)), Enqueue::Queued);
        }
        assert_eq!(wakes(), 1);
        assert_eq!(ob.push_data(frame(1)), Enqueue::Queued);
        assert_eq!(wakes(), 2, "4 of 8 frames");
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        ob.written(4, 4);
        out.clear();

        // The timer ended the delay: `take` forgets the waker, so a push made while the
        // writer runs wakes nobody.
        assert!(ob.delay(&w));
        assert_eq!(ob.push_data(frame(1)), Enqueue::Queued);
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        assert!(!ob.delaying());
        assert_eq!(ob.push_data(frame(1)), Enqueue::Queued);
        assert_eq!(wakes(), 2);
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        ob.written(2, 2);
        out.clear();

        // A close ends the delay at once.
        assert!(ob.delay(&w));
        ob.request_close(
            frame::close_frame(1000, ""),
            false,
            DisconnectReason::Shutdown,
        );
        assert_eq!(wakes(), 3);
        assert!(!ob.delaying());
        assert!(!ob.delay(&w), "closing: write at once");
    }

    #[test]
    fn disconnect_policy_abandons_data_and_queues_1008() {
        let ob = Outbox::new(1000, 100, SlowConsumerPolicy::Disconnect);
        assert_eq!(ob.push_data(frame(600)), Enqueue::Queued);
        assert_eq!(ob.push_data(frame(600)), Enqueue::SlowConsumer);
        assert_eq!(ob.push_data(frame(1)), Enqueue::Closed);
        assert_eq!(ob.queued_bytes(), 0);
        let (_, w) = waker();
        let mut out = VecDeque::new();
        assert!(matches!(
            ob.take(&mut out, false, &w, false),
            Take::Close(DisconnectReason::SlowConsumer)
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0][..4], &[0x88, 15, 0x03, 0xF0]); // close 1008 "slow consumer"
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Idle));
    }

    #[test]
    fn drop_policy_counts_and_notifies_once_there_is_room() {
        let ob = Outbox::new(1000, 100, SlowConsumerPolicy::Drop);
        assert_eq!(ob.push_data(frame(800)), Enqueue::Queued);
        assert_eq!(ob.push_data(frame(300)), Enqueue::Dropped);
        assert_eq!(ob.push_data(frame(300)), Enqueue::Dropped);
        assert_eq!(ob.dropped_total(), 2);
        // A message that fits together with the notice is preceded by it.
        assert_eq!(ob.push_data(frame(10)), Enqueue::Queued);
        let (_, w) = waker();
        let mut out = VecDeque::new();
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], frame(800));
        let notice = std::str::from_utf8(&out[1][2..]).unwrap();
        assert!(notice.starts_with(r#"{"type":"error","data":"dropped 2 messages","timestamp":""#));
        assert_eq!(out[2], frame(10));
        ob.written(out.iter().map(|c| c.len()).sum(), 3);
        assert_eq!(ob.queued_bytes(), 0);
        // Without a further message, the writer queues the notice as soon as it fits.
        out.clear();
        assert_eq!(ob.push_data(frame(990)), Enqueue::Queued);
        assert_eq!(ob.push_data(frame(20)), Enqueue::Dropped);
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        assert_eq!(out.len(), 1, "no room for the notice yet");
        ob.written(990, 1);
        out.clear();
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        let notice = std::str::from_utf8(&out[0][2..]).unwrap();
        assert!(
            notice.starts_with(r#"{"type":"error","data":"dropped 1 messages""#),
            "{notice}"
        );
    }

    #[test]
    fn control_frames_bypass_bounds_jump_the_queue_and_pongs_are_capped() {
        let ob = Outbox::new(300, 2, SlowConsumerPolicy::Drop);
        assert_eq!(ob.push_data(frame(250)), Enqueue::Queued);
        for i in 0..MAX_PENDING_PONGS + 2 {
            ob.push_control(frame::pong_frame(&[i as u8]));
        }
        ob.push_control(frame::ping_frame(b""));
        let (_, w) = waker();
        let mut out = VecDeque::from([Chunk::one(frame(5))]);
        assert!(matches!(ob.take(&mut out, true, &w, false), Take::Frames));
        assert_eq!(out[0], frame(5), "the partly written frame stays first");
        for i in 0..MAX_PENDING_PONGS {
            assert_eq!(
                out[1 + i],
                frame::pong_frame(&[(i + 2) as u8]),
                "oldest pongs replaced"
            );
        }
        assert_eq!(out[1 + MAX_PENDING_PONGS], frame::ping_frame(b""));
        assert_eq!(out[2 + MAX_PENDING_PONGS], frame(250));
        assert_eq!(out.len(), 3 + MAX_PENDING_PONGS);
    }

    #[test]
    fn random_interleavings_with_delays_keep_exact_accounting_and_wake_when_due() {
        let mut next = crate::session::test_random();
        for round in 0..300 {
            let policy = if round % 2 == 0 {
                SlowConsumerPolicy::Disconnect
            } else {
                SlowConsumerPolicy::Drop
            };
            let ob = Outbox::new(2000, 16, policy);
            let (flag, w) = waker();
            let wakes = || flag.0.load(std::sync::atomic::Ordering::SeqCst);
            let mut out: VecDeque<Chunk> = VecDeque::new();
            for step in 0..100 {
                let before = wakes();
                let was_delaying = ob.lock().delaying;
                let op = next(8);
                match op {
                    0..=2 => {
                        let _ = ob.push_data(frame(1 + next(400) as usize));
                    }
                    7 => {
                        // A batch: queued whole, or frame by frame as push_data would.
                        let mut batch = Vec::new();
                        let mut ends = Vec::new();
                        for _ in 0..1 + next(6) {
                            batch.extend_from_slice(&frame(1 + next(300) as usize));
                            ends.push(batch.len() as u32);
                        }
                        let batch = Bytes::from(batch);
                        let (bytes, frames, whole) = {
                            let st = ob.lock();
                            let whole = ob.fits(&st, batch.len(), ends.len())
                                && st.pending_drops == 0
                                && matches!(st.phase, Phase::Open);
                            (st.bytes, st.frames, whole)
                        };
                        let outcome = ob.push_batch(&batch, &ends);
                        assert_eq!(
                            outcome.queued + outcome.dropped + outcome.refused,
                            ends.len()
                        );
                        if whole {
                            assert_eq!(outcome.queued, ends.len());
                            let st = ob.lock();
                            assert_eq!(st.bytes, bytes + batch.len());
                            assert_eq!(st.frames, frames + ends.len());
                            assert_eq!(st.data.back().map(|c| c.frames as usize), Some(ends.len()));
                        }
                    }
                    3 => ob.push_control(frame::ping_frame(b"")),
                    4 => {
                        let _ = ob.delay(&w);
                    }
                    5 => {
                        // The writer takes and writes everything.
                        let _ = ob.take(&mut out, false, &w, false);
                        let bytes = out.iter().map(|c| c.len()).sum();
                        ob.written(bytes, out.iter().map(|c| c.frames as usize).sum());
                        out.clear();
                    }
                    _ => {
                        if next(10) == 0 {
                            ob.request_close(
                                frame::close_frame(1000, ""),
                                next(2) == 0,
                                DisconnectReason::Shutdown,
                            );
                        }
                    }
                }
                let st = ob.lock();
                let ctx = format!("round {round} step {step}");
                // The counts are exactly what is queued (the writer holds nothing here).
                let queued = st.data.iter().map(|c| c.len()).sum::<usize>()
                    + st.control.iter().map(Bytes::len).sum::<usize>();
                assert_eq!(st.bytes, queued, "{ctx}");
                let frames = st.data.iter().map(|c| c.frames as usize).sum::<usize>();
                assert_eq!(st.frames, frames + st.control.len(), "{ctx}");
                // A writer holding back never sits on a half-full queue or a close.
                if st.delaying {
                    assert!(!ob.half_full(&st), "{ctx}");
                    assert!(matches!(st.phase, Phase::Open), "{ctx}");
                }
                // A delay ends by the writer's own take, or with a wake-up.
                if was_delaying && !st.delaying && op != 5 {
                    assert_eq!(wakes(), before + 1, "{ctx}: the delay ended silently");
                }
                // A push below half of both bounds does not wake a writer holding back.
                if was_delaying && st.delaying {
                    assert_eq!(wakes(), before, "{ctx}: woken while holding back");
                }
            }
        }
    }

    #[test]
    fn a_queue_entry_costs_the_40_bytes_the_readme_states() {
        assert_eq!(std::mem::size_of::<Chunk>(), 40);
    }

    /// One batch of three frames of 10, 20 and 30 bytes, and where each ends.
    fn batch_of_three() -> (Bytes, Vec<u32>) {
        let mut batch = bytes::BytesMut::new();
        let mut ends = Vec::new();
        for n in [8, 18, 28] {
            frame::append_with(&mut batch, frame::OpCode::Text, n, |b| {
                b.extend_from_slice(&vec![b'x'; n]);
            });
            ends.push(batch.len() as u32);
        }
        (batch.freeze(), ends)
    }

    #[test]
    fn a_partly_written_batch_counts_its_frames_and_gives_way_frame_by_frame() {
        let ob = Outbox::new(10_000, 100, SlowConsumerPolicy::Disconnect);
        let (batch, ends) = batch_of_three();
        assert_eq!(ends, [10, 30, 60]);
        assert_eq!(ob.push_batch(&batch, &ends).queued, 3);
        let (_, w) = waker();
        let mut out = VecDeque::new();
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Frames));
        assert_eq!((out.len(), out[0].frames), (1, 3));

        // 15 bytes written: the first frame and 5 bytes of the second.
        assert_eq!(out[0].advance(15), 1);
        ob.written(15, 1);
        assert!(out[0].started());
        assert_eq!(ob.lock().frames, 2);
        // A ping goes right after the frame being written, not after the whole batch.
        ob.push_control(frame::ping_frame(b""));
        assert!(matches!(ob.take(&mut out, true, &w, false), Take::Frames));
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].len(), out[0].frames), (15, 1));
        assert_eq!(out[1], frame::ping_frame(b""));
        assert_eq!((out[2].len(), out[2].frames), (30, 1));
        assert_eq!(&out[2][2..], &[b'x'; 28][..]);

        // A slow-consumer disconnect keeps the started frame and abandons the rest.
        assert_eq!(ob.push_data(frame(10_000)), Enqueue::SlowConsumer);
        assert!(matches!(
            ob.take(&mut out, true, &w, false),
            Take::Close(DisconnectReason::SlowConsumer)
        ));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 15);
        assert_eq!(&out[1][..4], &[0x88, 15, 0x03, 0xF0]);
        let st = ob.lock();
        assert_eq!(st.bytes, out.iter().map(|c| c.len()).sum::<usize>());
        assert_eq!(st.frames, 2);
    }

    #[test]
    fn a_batch_written_up_to_a_frame_boundary_has_not_started_its_next_frame() {
        let (batch, ends) = batch_of_three();
        let ob = Outbox::new(10_000, 100, SlowConsumerPolicy::Disconnect);
        ob.push_batch(&batch, &ends);
        let (_, w) = waker();
        let mut out = VecDeque::new();
        ob.take(&mut out, false, &w, false);
        assert_eq!(out[0].advance(30), 2);
        assert!(!out[0].started());
        assert_eq!(out[0].advance(29), 0);
        assert!(out[0].started());
        assert_eq!((out[0].len(), out[0].frames), (1, 1));
    }

    #[test]
    fn graceful_close_follows_queued_data_and_wakes_the_writer() {
        let ob = Outbox::new(1000, 100, SlowConsumerPolicy::Disconnect);
        let (flag, w) = waker();
        let mut out = VecDeque::new();
        assert!(matches!(ob.take(&mut out, false, &w, false), Take::Idle));
        ob.push_data(frame(3));
        assert_eq!(flag.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        ob.request_close(
            frame::close_frame(1001, "going away"),
            false,
            DisconnectReason::Shutdown,
        );
        assert!(matches!(
            ob.take(&mut out, false, &w, false),
            Take::Close(DisconnectReason::Shutdown)
        ));
        assert_eq!(out[0], frame(3));
        assert_eq!(out[1], frame::close_frame(1001, "going away"));
        assert_eq!(ob.push_data(frame(1)), Enqueue::Closed);
    }
}
