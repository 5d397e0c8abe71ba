//! Per-channel history for the in-memory hub: a bounded log of encoded publications with
//! positions (offset + epoch), and the lock that makes recovery gap-free.
//!
//! A publish on a history channel takes the channel's log lock, assigns the next offset,
//! encodes the frame (with `offset` and `epoch`), appends it and delivers it to the current
//! subscribers, all before releasing the lock. A recovering subscribe takes the same lock,
//! queues the publications after the client's position and joins the channel before releasing
//! it. So every publication is either in what the client recovers or delivered to it live,
//! never both and never neither.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::message::channel::ChannelName;

/// Shards of the channel → log map.
const SHARDS: usize = 16;

/// A channel's position: the epoch of its history and the offset of its last publication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
}

struct Entry {
    offset: u64,
    at: Instant,
    frame: Bytes,
}

pub(crate) struct LogState {
    epoch: Arc<str>,
    /// Offset of the last publication (0 before the first).
    last: u64,
    /// Publications still in the window, oldest first, offsets consecutive.
    entries: VecDeque<Entry>,
    /// When the log was last written or created (idle logs are forgotten after the TTL).
    touched: Instant,
}

impl LogState {
    fn prune(&mut self, now: Instant, size: usize, ttl: Duration) {
        while self.entries.len() > size
            || self
                .entries
                .front()
                .is_some_and(|e| now.saturating_duration_since(e.at) > ttl)
        {
            self.entries.pop_front();
        }
    }

    pub(crate) fn position(&self) -> Position {
        Position {
            epoch: Arc::clone(&self.epoch),
            offset: self.last,
        }
    }

    /// Records the next publication; `encode` builds its frame from its position. When it
    /// fails, nothing is recorded and the offset stays free.
    pub(crate) fn append<E>(
        &mut self,
        now: Instant,
        encode: impl FnOnce(&Position) -> Result<Bytes, E>,
    ) -> Result<Bytes, E> {
        let next = Position {
            epoch: Arc::clone(&self.epoch),
            offset: self.last.saturating_add(1),
        };
        let frame = encode(&next)?;
        self.last = next.offset;
        self.entries.push_back(Entry {
            offset: self.last,
            at: now,
            frame: frame.clone(),
        });
        self.touched = now;
        Ok(frame)
    }

    /// The frames after `offset` in epoch `epoch`, or `None` when that position cannot be
    /// recovered (another epoch, an offset from the future, or history that no longer
    /// reaches `offset + 1`).
    pub(crate) fn since(&self, epoch: &str, offset: u64) -> Option<Vec<Bytes>> {
        if epoch != &*self.epoch || offset > self.last {
            return None;
        }
        if offset == self.last {
            return Some(Vec::new());
        }
        let first = self.entries.front()?.offset;
        if first > offset + 1 {
            return None;
        }
        Some(
            self.entries
                .iter()
                .filter(|e| e.offset > offset)
                .map(|e| e.frame.clone())
                .collect(),
        )
    }

    /// Up to `limit` frames after `offset` (any epoch), for the HTTP API.
    pub(crate) fn page(&self, offset: u64, limit: usize) -> Vec<Bytes> {
        self.entries
            .iter()
            .filter(|e| e.offset > offset)
            .take(limit)
            .map(|e| e.frame.clone())
            .collect()
    }
}

pub(crate) struct ChannelLog {
    state: Mutex<LogState>,
}

impl ChannelLog {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        // Every critical section leaves the log consistent before anything can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A shard is swept (see [`HistoryStore::log`]) once it holds this many logs, and then each
/// time it has doubled since the last sweep: creating a log costs O(1) amortised.
const MIN_SWEEP: usize = 64;

#[derive(Default)]
struct ShardState {
    logs: HashMap<ChannelName, Arc<ChannelLog>>,
    /// Sweep when `logs` reaches this many (at least [`MIN_SWEEP`]).
    sweep_at: usize,
}

type Shard = Mutex<ShardState>;

/// Every history channel's log.
pub(crate) struct HistoryStore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    size: usize,
    ttl: Duration,
}

impl HistoryStore {
    pub(crate) fn new(size: usize, ttl: Duration) -> Self {
        HistoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            size,
            ttl,
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, ShardState> {
        let i = (self.hasher.hash_one(channel) % SHARDS as u64) as usize;
        // The map is only ever inserted into or removed from; it cannot be left half-updated.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The log of `channel` (a valid name), created (with a new epoch, offset 0) if missing.
    /// Lock it and call [`HistoryStore::refresh`] before use.
    ///
    /// Creating one sweeps the shard when it has grown enough ([`MIN_SWEEP`]): a log that no
    /// channel holds (the channel has no subscribers) is forgotten when it is idle past the
    /// TTL (its history is gone anyway) or has never had a publication (nothing to recover;
    /// a client that resumes it is told `recovered: false`). So clients that subscribe to
    /// many names cannot pile up logs, and memory follows publications.
    pub(crate) fn log(&self, channel: &str, now: Instant) -> Arc<ChannelLog> {
        let mut shard = self.shard(channel);
        if let Some(log) = shard.logs.get(channel) {
            return Arc::clone(log);
        }
        let log = Arc::new(ChannelLog {
            state: Mutex::new(LogState {
                epoch: new_epoch(),
                last: 0,
                entries: VecDeque::new(),
                touched: now,
            }),
        });
        if shard.logs.len() >= shard.sweep_at.max(MIN_SWEEP) {
            // A log that a channel holds stays: the channel would go on using it.
            let ttl = self.ttl;
            shard.logs.retain(|_, l| {
                Arc::strong_count(l) > 1 || {
                    let st = l.lock();
                    st.last > 0 && now.saturating_duration_since(st.touched) <= ttl
                }
            });
            shard.sweep_at = 2 * shard.logs.len();
        }
        let name = ChannelName::with_max_len(channel, usize::MAX)
            .unwrap_or_else(|_| unreachable!("history channels are validated first"));
        shard.logs.insert(name, Arc::clone(&log));
        log
    }

    /// Brings a locked log up to date: one idle for longer than the TTL lost its history, so
    /// it starts again with a new epoch at offset 0; otherwise expired entries are dropped.
    pub(crate) fn refresh(&self, st: &mut LogState, now: Instant) {
        if !self.renew_if_idle(st, now) {
            st.prune(now, self.size, self.ttl);
        }
    }

    /// The part of [`HistoryStore::refresh`] an append needs (it trims after appending):
    /// a log idle past the TTL starts a new epoch. Whether it did.
    pub(crate) fn renew_if_idle(&self, st: &mut LogState, now: Instant) -> bool {
        if now.saturating_duration_since(st.touched) <= self.ttl {
            return false;
        }
        st.epoch = new_epoch();
        st.last = 0;
        st.entries.clear();
        st.touched = now;
        true
    }

    /// The log of `channel` if it exists and is not idle past the TTL.
    pub(crate) fn existing(&self, channel: &str, now: Instant) -> Option<Arc<ChannelLog>> {
        let log = Arc::clone(self.shard(channel).logs.get(channel)?);
        let mut st = log.lock();
        if now.saturating_duration_since(st.touched) > self.ttl {
            return None;
        }
        st.prune(now, self.size, self.ttl);
        drop(st);
        Some(log)
    }

    /// Trims a log after an append.
    pub(crate) fn trim(&self, st: &mut LogState, now: Instant) {
        st.prune(now, self.size, self.ttl);
    }
}

/// A client recovering on a channel whose history lives in the broker: the live publications
/// that reach this node meanwhile are held back until its recovered ones are queued.
pub(crate) struct Recovering {
    pub(crate) client: u64,
    /// (offset, epoch, frame); no frame for a publication that is not delivered (one no
    /// node could have sent), which still takes its place in the offsets.
    pub(crate) held: Vec<(u64, Arc<str>, Option<Bytes>)>,
}

/// Removes a client's [`Recovering`] entry when dropped (a no-op once the recovery took it).
pub(crate) struct UnmarkRecovering {
    pub(crate) state: Arc<Mutex<RemoteState>>,
    pub(crate) client: u64,
}

impl Drop for UnmarkRecovering {
    fn drop(&mut self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.recovering.retain(|r| r.client != self.client);
    }
}

/// This node's view of one broker-history channel: who is recovering, and who has received
/// (from the stored history) publications this node's live stream has not delivered yet.
#[derive(Default)]
pub(crate) struct RemoteState {
    pub(crate) recovering: Vec<Recovering>,
    /// (client, offset): the client already has every publication up to that offset; the
    /// live copies of those that arrive late are skipped for it. Removed at the first newer
    /// publication.
    pub(crate) caught_up_to: Vec<(u64, u64)>,
    /// The position this node's subscribers have reached: the newest publication delivered
    /// live, or the stored position a subscriber read. A live publication further on than the
    /// next offset, or in another epoch, means this node missed some (its broker subscription
    /// was lost for a while); see `Hub::deliver_remote_history`.
    pub(crate) last: Option<LivePosition>,
    /// Offsets of this node's own publications (in the epoch of `last`) that their publisher
    /// delivered at once, because they were the next ones (`Hub::deliver_own_history`);
    /// their copies through the broker subscription are skipped. Bounded by [`DIRECT_MAX`].
    pub(crate) direct: std::collections::VecDeque<u64>,
}

/// At most this many of a channel's own publications wait for their broker copy to be
/// skipped ([`RemoteState::direct`]); beyond it, publishers wait for their copy instead.
#[cfg(feature = "redis")]
pub(crate) const DIRECT_MAX: usize = 1024;

/// See [`RemoteState::last`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LivePosition {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
    /// The broker connection it came through (see `broker::Deliver`).
    pub(crate) generation: u64,
    /// The local channel instance it belongs to (`registry::Channel::instance`).
    pub(crate) instance: u64,
    /// Every publication up to `offset` came through the live stream (or was delivered by
    /// its publisher on this node), so none is still on its way; false for a position read
    /// from the stored history until the live stream reaches it.
    pub(crate) live: bool,
}

impl LivePosition {
    pub(crate) fn new(
        epoch: &str,
        offset: u64,
        generation: u64,
        instance: u64,
        live: bool,
    ) -> Self {
        LivePosition {
            epoch: Arc::from(epoch),
            offset,
            generation,
            instance,
            live,
        }
    }
}

impl RemoteState {
    fn is_idle(&self) -> bool {
        self.recovering.is_empty() && self.caught_up_to.is_empty()
    }

    /// A new position (another epoch or channel instance, or one read from the stored
    /// history): what was delivered directly belonged to the old one.
    pub(crate) fn set_last(&mut self, last: LivePosition) {
        self.direct.clear();
        self.last = Some(last);
    }

    /// Whether this node's own publication at `offset` (through the broker subscription) was
    /// delivered by its publisher already; earlier direct ones whose copies never came are
    /// forgotten.
    #[cfg(feature = "redis")]
    pub(crate) fn skip_direct(&mut self, instance: u64, epoch: &str, offset: u64) -> bool {
        if self.direct.is_empty() {
            return false;
        }
        if !self
            .last
            .as_ref()
            .is_some_and(|l| l.instance == instance && *l.epoch == *epoch)
        {
            self.direct.clear();
            return false;
        }
        while self.direct.front().is_some_and(|&d| d < offset) {
            self.direct.pop_front();
        }
        if self.direct.front() == Some(&offset) {
            self.direct.pop_front();
            return true;
        }
        false
    }
}

/// The report a local publisher waits for: its publication comes back from the broker (in
/// offset order with everyone else's) and is delivered here like any other.
#[cfg_attr(
    not(feature = "redis"),
    allow(dead_code, reason = "only the Redis broker reports")
)]
enum Waiter {
    Waiting(tokio::sync::oneshot::Sender<crate::PublishReport>),
    Done(crate::PublishReport, Instant),
}

/// Node-local state for channels whose history the broker keeps.
#[derive(Default)]
pub(crate) struct RemoteHistory {
    channels: Mutex<RemoteChannels>,
    waiters: Mutex<HashMap<(ChannelName, u64), Waiter>>,
}

#[derive(Default)]
struct RemoteChannels {
    map: HashMap<ChannelName, Arc<Mutex<RemoteState>>>,
    /// Entries after the last purge of the unused ones; the next purge is due at twice as many.
    kept: usize,
}

impl RemoteHistory {
    /// The state of `channel` (created on first use; an entry costs a few words). Once the
    /// map has doubled since the last purge, the entries of channels that `live` says have no
    /// local subscriber any more, and that nobody holds, are dropped: a node does not keep
    /// state for every channel it ever saw.
    pub(crate) fn channel(
        &self,
        channel: &ChannelName,
        live: impl Fn(&str) -> bool,
    ) -> Arc<Mutex<RemoteState>> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if !channels.map.contains_key(channel) && channels.map.len() >= (2 * channels.kept).max(64)
        {
            channels.map.retain(|name, state| {
                Arc::strong_count(state) > 1
                    || live(name.as_str())
                    || !state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .is_idle()
            });
            channels.kept = channels.map.len();
        }
        Arc::clone(channels.map.entry(channel.clone()).or_default())
    }

    /// Entries kept (for the tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// Records the local delivery report of this node's own publication `offset`.
    #[cfg(feature = "redis")]
    pub(crate) fn delivered(
        &self,
        channel: &ChannelName,
        offset: u64,
        report: crate::PublishReport,
    ) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        match waiters.remove(&(channel.clone(), offset)) {
            Some(Waiter::Waiting(tx)) => {
                let _ = tx.send(report);
            }
            _ => {
                // The publisher has not asked yet (or gave up): keep it briefly.
                let now = Instant::now();
                if waiters.len() > 1024 {
                    waiters.retain(|_, w| match w {
                        Waiter::Done(_, at) => {
                            now.saturating_duration_since(*at) < Duration::from_secs(10)
                        }
                        Waiter::Waiting(tx) => !tx.is_closed(),
                    });
                }
                waiters.insert((channel.clone(), offset), Waiter::Done(report, now));
            }
        }
    }

    /// Waits (up to `timeout`) for the local delivery report of this node's publication.
    pub(crate) async fn report(
        &self,
        channel: &ChannelName,
        offset: u64,
        timeout: Duration,
    ) -> Option<crate::PublishReport> {
        let rx = {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (channel.clone(), offset);
            if let Some(Waiter::Done(report, _)) = waiters.get(&key) {
                let report = *report;
                waiters.remove(&key);
                return Some(report);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            waiters.insert(key, Waiter::Waiting(tx));
            rx
        };
        let result = tokio::time::timeout(timeout, rx).await;
        if result.is_err() {
            let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
            waiters.remove(&(channel.clone(), offset));
        }
        result.ok().and_then(Result::ok)
    }
}

/// A fresh epoch: 16 random hex digits (process-random seed, so a restarted server never
/// reuses an epoch).
fn new_epoch() -> Arc<str> {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    Arc::from(format!("{:016x}", h.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u64) -> Bytes {
        Bytes::from(n.to_string())
    }

    #[test]
    fn recovery_needs_the_same_epoch_and_an_unbroken_window() {
        let store = HistoryStore::new(3, Duration::from_secs(60));
        let now = Instant::now();
        let ch = ChannelName::new("c").unwrap();
        let log = store.log(&ch, now);
        let mut st = log.lock();
        let epoch = st.position().epoch;
        for _ in 0..5 {
            let f = st.append(now, |p| Ok::<_, ()>(frame(p.offset))).unwrap();
            assert!(!f.is_empty());
            store.trim(&mut st, now);
        }
        assert_eq!(st.position().offset, 5);
        // Window holds 3, 4, 5.
        assert_eq!(
            st.since(&epoch, 2),
            Some(vec![frame(3), frame(4), frame(5)])
        );
        assert_eq!(st.since(&epoch, 4), Some(vec![frame(5)]));
        assert_eq!(st.since(&epoch, 5), Some(vec![]));
        assert_eq!(st.since(&epoch, 1), None, "publication 2 is gone");
        assert_eq!(st.since(&epoch, 6), None, "an offset from the future");
        assert_eq!(st.since("other", 4), None, "another epoch");
        assert_eq!(st.page(0, 2), vec![frame(3), frame(4)]);
    }

    #[test]
    fn remote_state_of_channels_without_local_subscribers_is_purged() {
        let remote = RemoteHistory::default();
        let name = |n: &str| ChannelName::new(n).unwrap();
        let live = |c: &str| c.starts_with("live");
        let held = remote.channel(&name("held"), |_| false);
        let kept = remote.channel(&name("live"), live);
        kept.lock().unwrap().last = Some(LivePosition::new("e", 7, 1, 1, true));
        remote
            .channel(&name("recovering"), live)
            .lock()
            .unwrap()
            .recovering
            .push(Recovering {
                client: 1,
                held: Vec::new(),
            });
        drop(kept);
        for i in 0..500 {
            drop(remote.channel(&name(&format!("gone{i}")), live));
        }
        assert!(remote.len() <= 64, "{} entries kept", remote.len());
        assert!(Arc::ptr_eq(&held, &remote.channel(&name("held"), live)));
        let st = remote.channel(&name("live"), live);
        assert_eq!(
            st.lock().unwrap().last,
            Some(LivePosition::new("e", 7, 1, 1, true))
        );
        let st = remote.channel(&name("recovering"), live);
        assert_eq!(st.lock().unwrap().recovering.len(), 1);
    }

    #[test]
    #[cfg(feature = "redis")]
    fn copies_of_directly_delivered_publications_are_skipped_once() {
        let mut st = RemoteState::default();
        st.set_last(LivePosition::new("e", 5, 1, 7, true));
        st.direct.extend([6, 7, 9]);
        assert!(st.skip_direct(7, "e", 6));
        assert!(!st.skip_direct(7, "e", 6), "only once");
        assert!(!st.skip_direct(7, "e", 8), "not delivered directly");
        assert_eq!(
            Vec::from(st.direct.clone()),
            [9],
            "7's copy never came: forgotten"
        );
        assert!(!st.skip_direct(7, "other", 9), "another epoch");
        assert!(st.direct.is_empty());
        st.direct.push_back(10);
        assert!(!st.skip_direct(8, "e", 10), "another channel instance");
        st.direct.push_back(11);
        st.set_last(LivePosition::new("e", 3, 1, 7, false));
        assert!(st.direct.is_empty(), "a new position forgets them");
    }

    #[test]
    fn entries_expire_and_idle_logs_get_a_new_epoch() {
        let ttl = Duration::from_secs(10);
        let store = HistoryStore::new(100, ttl);
        let t0 = Instant::now();
        let epoch = {
            let log = store.log("c", t0);
            let mut st = log.lock();
            store.refresh(&mut st, t0);
            st.append(t0, |p| Ok::<_, ()>(frame(p.offset))).unwrap();
            st.position().epoch
        };
        let t1 = t0 + Duration::from_secs(5);
        {
            let log = store.log("c", t1);
            let mut st = log.lock();
            store.refresh(&mut st, t1);
            st.append(t1, |p| Ok::<_, ()>(frame(p.offset))).unwrap();
        }
        // At t0 + 12 s the first entry expired; the log itself is not idle (written at t1).
        let t2 = t0 + Duration::from_secs(12);
        let log = store.existing("c", t2).unwrap();
        assert_eq!(log.lock().since(&epoch, 0), None);
        assert_eq!(log.lock().since(&epoch, 1), Some(vec![frame(2)]));
        // Idle past the TTL: a new epoch, offsets start again.
        let t3 = t1 + Duration::from_secs(11);
        assert!(store.existing("c", t3).is_none());
        let fresh = store.log("c", t3);
        let mut st = fresh.lock();
        store.refresh(&mut st, t3);
        assert_ne!(st.position().epoch, epoch);
        assert_eq!(st.position().offset, 0);
    }

    #[test]
    fn logs_nobody_holds_and_nobody_published_on_do_not_pile_up() {
        let store = HistoryStore::new(100, Duration::from_secs(60));
        let now = Instant::now();
        let count = |store: &HistoryStore| -> usize {
            store
                .shards
                .iter()
                .map(|s| s.lock().unwrap().logs.len())
                .sum()
        };
        // One log with a publication and one a channel holds survive every sweep.
        let published = store.log("published", now);
        published
            .lock()
            .append(now, |p| Ok::<_, ()>(frame(p.offset)))
            .unwrap();
        drop(published);
        let held = store.log("held", now);
        // A client subscribing to ever new names (and leaving them) creates logs that no
        // channel holds and nobody publishes on: sweeps keep their number bounded.
        let mut most = 0;
        for i in 0..50_000 {
            drop(store.log(&format!("n{i}"), now));
            most = most.max(count(&store));
        }
        assert!(most < 2 * SHARDS * MIN_SWEEP + 2, "{most} logs at most");
        assert!(store.existing("published", now).is_some());
        assert!(Arc::ptr_eq(&held, &store.log("held", now)));
    }
}
