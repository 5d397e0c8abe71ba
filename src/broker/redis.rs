//! The Redis broker: one publishing connection and one subscriber task per shard.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::{mpsc, oneshot};

use super::{
    Activation, BoxFuture, Broker, BrokerCounters, ClientCount, ClusterStats, Deliver,
    FinishOnDrop, RedisConfig, Resubscribed, Ring, StoredHistory,
};

/// Lua: sets `tag` to the tag of this Redis process, 16 hex digits of a hash of its run id
/// (new at every start) and its replication id (new whenever it is promoted from replica to
/// master). About 10 µs of Redis CPU (`INFO`): a publish runs it only when the tag the node
/// believes does not match a stream's; a read always does (see `READ_HISTORY`).
macro_rules! learn_tag {
    () => {
        r#"
    local info = redis.call('INFO', 'server', 'replication')
    tag = string.sub(redis.sha1hex(string.match(info, 'run_id:(%x+)') .. ':' ..
      (string.match(info, 'master_replid:(%x+)') or '')), 1, 16)
"#
    };
}

/// Appends publications to their channels' history and publishes them, atomically, so offsets
/// are assigned and delivered in the same order on every node. One call carries every
/// history publish of this node that queued up on the shard while the previous call was
/// running (`HistoryWriter`): the script's fixed cost and the round trip are shared.
///
/// A channel's history is one stream, and the stream is also its position: entry ids are
/// `<epoch>-<offset>`, the epoch being a number of microseconds (Redis's clock when the epoch
/// started). `XADD` with the id `<epoch>-*` takes the next offset, and a trimmed stream keeps
/// counting where it was. The node remembers each channel's epoch from the previous answer
/// and sends it along, so a publication normally costs two Redis calls (`XADD` with
/// `NOMKSTREAM`, `PUBLISH`) plus one per script call (`TIME`): Redis calls made from a script
/// cost microseconds each, and so does making a Lua function or table, so the common path
/// makes neither. The `XADD` also checks the epoch: it fails when a greater epoch is on top,
/// creates nothing when the stream is gone, and gives offset 0 when an older epoch is on top.
/// Then, or when the node knows no epoch, the script looks at the stream's last entry: if this
/// Redis process wrote it, its epoch goes on; otherwise (and after an offset 0) the stream is
/// dropped and a new epoch starts at offset 1, greater than any epoch the stream or the node
/// had.
///
/// Every entry carries the tag of the Redis process that wrote it (`r`, see `learn_tag!`). A
/// stream restored by another process (a restart from a snapshot or an append-only file, a
/// failover to a replica, a master that was a replica meanwhile) may lack the last
/// publications while their offsets were handed out already: offsets would be reused under
/// the same epoch, and a resume could be presented as complete while it skips them. So a
/// stream of another process counts as lost. The node sends the tag it believes (it forgets
/// it, and every channel's epoch with it, whenever a command to Redis fails other than with
/// an error reply, and when a publication fails for another reason than its key's type,
/// e.g. `READONLY`); the script computes the process's own only when a stream's does not
/// match that one, and if the node's was wrong, it trusts none of the epochs the node sent.
///
/// Entries hold the JSON head (without its closing brace, `d`), nodes complete it with the
/// position (`message::history_frame`), so the script builds no JSON; and the time in ms
/// (`t`). The stream is trimmed approximately (`MAXLEN ~`, much cheaper than exact trimming);
/// reads apply the exact window. Its expiry is pushed back when the node's `x` (Redis ms, from
/// the previous answer) has passed: every half TTL, to one and a half TTLs, so a channel's
/// history lives at least the TTL after its last publication (and at most 1.5 TTLs), without
/// a `PEXPIRE` per publish.
///
/// A publication whose channel's key cannot take it (another type of key under the name)
/// fails alone, before anything of it is written; the others go on.
///
/// KEYS: per publication, the stream. ARGV: node id, believed tag, then per publication JSON
/// head, pub/sub channel, max length, TTL in ms, the epoch the node knows (or empty), its `x`
/// (or 0). Publishes `<node id><offset> <epoch> <head>`. Returns {offset, epoch, x, ..., tag},
/// as strings; a failed publication has `-`, the error and an empty string instead.
const PUBLISH_HISTORY: &str = concat!(
    r#"
local node, tag = ARGV[1], ARGV[2]
local verified, trusted = false, true
local t = redis.call('TIME')
-- Milliseconds as a string: numbers given to redis.call are formatted with printf, which
-- costs more here than the string operations.
local ms = t[1] .. string.sub('00000' .. t[2], -6, -4)
local now = tonumber(ms)
local batch = #KEYS > 1
-- What this call learnt of the channels, for their next publications in it.
local epochs, expiries = {}, {}
local out, o = {}, 0
for i = 1, #KEYS do
  local stream, a = KEYS[i], 2 + 6 * (i - 1)
  local head, size = ARGV[a + 1], ARGV[a + 3]
  local epoch, xs = epochs[stream] or ARGV[a + 5], expiries[stream] or ARGV[a + 6]
  local id, offset = nil, nil
  if trusted and epoch ~= '' then
    id = redis.pcall('XADD', stream, 'NOMKSTREAM', 'MAXLEN', '~', size, epoch .. '-*', 'd', head, 't', ms, 'r', tag)
    if type(id) == 'string' then
      offset = string.sub(id, #epoch + 2)
    end
  end
  if offset == nil or offset == '0' then
    -- Slow path (no function is made on the fast one: each costs Lua time).
    local function verify()
      if not verified then"#,
    learn_tag!(),
    r#"
        verified = true
        trusted = tag == ARGV[2]
      end
    end
    local floor, fresh = tonumber(epoch) or 0, true
    if offset == nil then
      local top = redis.pcall('XREVRANGE', stream, '+', '-', 'COUNT', 1)
      if top.err then
        id, fresh = top, false
      elseif top[1] then
        local e, fields, r = string.match(top[1][1], '^(%d+)-'), top[1][2], nil
        for j = 1, #fields, 2 do
          if fields[j] == 'r' then
            r = fields[j + 1]
          end
        end
        if e ~= '0' and r then
          if r ~= tag then
            verify()
          end
          if r == tag then
            -- Written by this process: the epoch goes on, or the error is the answer.
            fresh = false
            epoch = e
            id = redis.pcall('XADD', stream, 'MAXLEN', '~', size, e .. '-*', 'd', head, 't', ms, 'r', tag)
            if type(id) == 'string' then
              offset = string.sub(id, #e + 2)
            end
          end
        end
        floor = math.max(floor, tonumber(e) or 0)
      end
    end
    if fresh then
      verify()
      epoch = string.format('%.0f', math.max(tonumber(t[1]) * 1000000 + tonumber(t[2]), floor + 1))
      xs = '0'
      redis.call('DEL', stream)
      id = redis.pcall('XADD', stream, 'MAXLEN', '~', size, epoch .. '-1', 'd', head, 't', ms, 'r', tag)
      offset = type(id) == 'string' and '1' or nil
    end
  end
  if offset then
    if now >= tonumber(xs) then
      local ttl = tonumber(ARGV[a + 4])
      local half = math.floor(ttl / 2)
      xs = string.format('%.0f', now + half)
      redis.call('PEXPIRE', stream, ttl + half)
    end
    redis.call('PUBLISH', ARGV[a + 2], node .. offset .. ' ' .. epoch .. ' ' .. head)
    out[o + 1], out[o + 2], out[o + 3] = offset, epoch, xs
    if batch then
      epochs[stream], expiries[stream] = epoch, xs
    end
  else
    out[o + 1], out[o + 2], out[o + 3] = '-', id.err, ''
  end
  o = o + 3
end
out[o + 1] = tag
return out
"#
);

/// Reads a channel's position and the publications after an offset that are within the window
/// (the last `size`, not older than the TTL). KEYS: stream. ARGV: since, limit, TTL in ms,
/// believed tag, size. Returns {epoch or false, offset, {offset, head, ...}, tag}. A channel
/// whose stream is gone, or was written by another Redis process (see `PUBLISH_HISTORY`), has
/// no epoch: its next publication starts a new one. A read always computes the process's tag
/// (`INFO`, about 10 µs of Redis CPU, once per resume or API read): it goes through the
/// publishing connection, which other commands share, so the tag the node believes may be
/// stale on it (see [`HistoryWriter`]'s `conn`).
const READ_HISTORY: &str = concat!(
    r#"
local tag = ARGV[4]
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
if not top then
  return {false, 0, {}, tag}
end
local epoch, offset = string.match(top[1], '^(%d+)-(%d+)$')
local fields, r = top[2], nil
for i = 1, #fields, 2 do
  if fields[i] == 'r' then
    r = fields[i + 1]
  end
end
if r then"#,
    learn_tag!(),
    r#"
end
if epoch == '0' or not r or r ~= tag then
  return {false, 0, {}, tag}
end
offset = tonumber(offset)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
if tonumber(ARGV[2]) == 0 or tonumber(ARGV[1]) >= offset then
  return {epoch, offset, out, tag}
end
local from = math.max(tonumber(ARGV[1]), offset - tonumber(ARGV[5]))
local entries = redis.call('XRANGE', KEYS[1], epoch .. '-' .. (from + 1), '+', 'COUNT', ARGV[2])
for _, e in ipairs(entries) do
  local fields, d, ts = e[2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'd' then d = fields[i + 1] elseif fields[i] == 't' then ts = tonumber(fields[i + 1]) end
  end
  if d and ts and now - ts <= tonumber(ARGV[3]) then
    table.insert(out, string.sub(e[1], #epoch + 2))
    table.insert(out, d)
  end
end
return {epoch, offset, out, tag}
"#
);

/// Records this node's client count: KEYS: node set (scored by expiry), count hash. ARGV:
/// node id, clients, how long the record lives in ms.
const REPORT_NODE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
"#;

/// Sums the client counts of the nodes whose record is alive, forgetting expired ones.
/// KEYS: node set, count hash. Returns the sum.
const COUNT_CLIENTS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, n in ipairs(gone) do
  redis.call('ZREM', KEYS[1], n)
  redis.call('HDEL', KEYS[2], n)
end
local sum = 0
for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  sum = sum + (tonumber(redis.call('HGET', KEYS[2], n)) or 0)
end
return sum
"#;

/// How often a node looks at its client count, and reports it if it changed.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How often a node reports its client count even if unchanged; its record lives three times
/// as long.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

/// Reconnect backoff of the subscriber tasks. The cap is short: on channels without history,
/// what other nodes publish after Redis is back and before this node re-subscribed is lost
/// to this node's clients, so the cap bounds that window (one connection attempt a second
/// to an absent Redis costs nothing worth saving).
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Messages delivered at most before a new subscription counts as active (see
/// `Subscriber::run`).
const MAX_DRAIN: usize = 1 << 16;

/// Bytes of node id at the front of every message this node publishes.
const NODE_ID_LEN: usize = 8;

pub(crate) struct RedisBroker {
    timeout: Duration,
    read_history: redis::Script,
    /// Reports and counts the nodes' clients (on the first shard).
    census: Arc<Census>,
    node: [u8; NODE_ID_LEN],
    prefix: String,
    ring: Ring,
    shards: Vec<Shard>,
    counters: Arc<Counters>,
}

struct Shard {
    publisher: ConnectionManager,
    commands: mpsc::UnboundedSender<Command>,
    connected: Arc<AtomicBool>,
    /// The run id of this shard's Redis process and the positions of the history channels
    /// this node published on, as the history scripts last reported them (unknown until the
    /// first one ran, and again whenever a connection to Redis failed: the process may have
    /// restarted).
    run_id: RunId,
    /// Connections of the subscriber so far (see [`Deliver`]).
    generation: Arc<AtomicU64>,
    history: Arc<HistoryWriter>,
}

/// The history publishes of one shard: one script call at a time, made by a task of its own
/// while publishes are queued; those that arrive during a call go together in the next one (a
/// group commit: they share the script's fixed cost and the round trip, and Redis still
/// assigns offsets in the order they were made). No publisher holds up another: the calls
/// do not depend on any publisher's future being polled.
struct HistoryWriter {
    /// A connection of its own (when the node has history channels): the calls are made one
    /// at a time, so when this connection fails, the writer forgets what it knew of the
    /// Redis process (see [`forget_after`]) before its next call, which may reach a restarted
    /// process. On a connection shared with other commands, one of those could fail and
    /// reconnect it between the writer reading what it knows and sending its call.
    conn: ConnectionManager,
    script: redis::Script,
    node: [u8; NODE_ID_LEN],
    prefix: String,
    run_id: RunId,
    counters: Arc<Counters>,
    queue: std::sync::Mutex<HistoryQueue>,
}

/// See [`HistoryWriter`].
#[derive(Default)]
struct HistoryQueue {
    /// The task that makes the calls is running.
    busy: bool,
    waiting: Vec<QueuedPublish>,
}

struct QueuedPublish {
    channel: String,
    head: Vec<u8>,
    size: usize,
    ttl_ms: u64,
    done: oneshot::Sender<Result<(u64, String), String>>,
}

/// At most this many publications go into one script call (Redis runs nothing else meanwhile).
const MAX_HISTORY_BATCH: usize = 128;

/// What a publisher learns when its queued publish was dropped before it was sent.
const ABANDONED: &str = "Redis publish abandoned (the runtime is shutting down)";

impl HistoryWriter {
    fn queue(&self) -> std::sync::MutexGuard<'_, HistoryQueue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a publication to `channel`'s history and publishes it, with the next script
    /// call. Resolves to its offset and epoch.
    async fn publish(
        self: &Arc<Self>,
        channel: &str,
        head: &[u8],
        size: usize,
        ttl: Duration,
    ) -> Result<(u64, String), String> {
        let (done, result) = oneshot::channel();
        let publish = QueuedPublish {
            channel: channel.to_owned(),
            head: head.to_vec(),
            size,
            ttl_ms: ttl_ms(ttl),
            done,
        };
        let start = {
            let mut queue = self.queue();
            queue.waiting.push(publish);
            !std::mem::replace(&mut queue.busy, true)
        };
        if start {
            // The guard is made before the task, so that a task dropped before its first
            // poll (the runtime shutting down) still clears the queue.
            let draining = Draining {
                writer: Arc::clone(self),
                done: false,
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(draining.run())),
                // Not on a Tokio runtime (the Redis connection needs one anyway).
                Err(_) => drop(draining),
            }
        }
        result.await.unwrap_or_else(|_| Err(ABANDONED.to_owned()))
    }

    /// One script call for `batch`; every publish learns its result.
    async fn call(&self, batch: Vec<QueuedPublish>) {
        let (believed, token, known) = {
            let known = lock(&self.run_id);
            let channels: Vec<Option<(String, u64)>> = batch
                .iter()
                .map(|p| known.channels.get(&p.channel).cloned())
                .collect();
            (known.run.clone(), known.token, channels)
        };
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(&self.node[..]).arg(believed);
        for (p, known) in batch.iter().zip(known) {
            let (epoch, x) = known.unwrap_or_default();
            invocation
                .key(format!("{}s:{}", self.prefix, p.channel))
                .arg(&p.head[..])
                .arg(format!("{}c:{}", self.prefix, p.channel))
                .arg(p.size)
                .arg(p.ttl_ms)
                .arg(epoch)
                .arg(x);
        }
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<Vec<String>> = invocation.invoke_async(&mut conn).await;
        let mut flat = match result {
            Ok(flat) if flat.len() == 3 * batch.len() + 1 => flat,
            other => {
                if let Err(e) = &other {
                    forget_after(&self.run_id, e);
                }
                let reason = match other {
                    Err(e) => format!("Redis publish failed: {e}"),
                    Ok(_) => "Redis publish failed: malformed script reply".to_owned(),
                };
                self.counters
                    .publish_errors
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for p in batch {
                    let _ = p.done.send(Err(reason.clone()));
                }
                return;
            }
        };
        let run = flat.pop().unwrap_or_default();
        let mut results = Vec::with_capacity(batch.len());
        let mut flat = flat.into_iter();
        while let (Some(offset), Some(epoch), Some(x)) = (flat.next(), flat.next(), flat.next()) {
            results.push(match (offset.parse(), x.parse()) {
                (Ok(offset), Ok(x)) => Ok((offset, epoch, x)),
                // `-` and the error: this publication was not stored.
                _ => Err(format!("Redis publish failed: {epoch}")),
            });
        }
        // A publication that failed for another reason than its key's type (e.g. `READONLY`:
        // the process became a replica, and may take another copy of the data before it is
        // a master again) means that what the node knows may no longer hold.
        let doubt = results.iter().any(|r| {
            r.as_ref()
                .is_err_and(|e| !e.starts_with("Redis publish failed: WRONGTYPE"))
        });
        if doubt {
            forget_run_id(&self.run_id);
        } else {
            let mut known = lock(&self.run_id);
            if known.learn(run, token) {
                for (p, result) in batch.iter().zip(&results) {
                    match result {
                        Ok((_, epoch, x)) => known.remember(&p.channel, epoch, *x),
                        Err(_) => drop(known.channels.remove(&p.channel)),
                    }
                }
            }
        }
        for (p, result) in batch.into_iter().zip(results) {
            let counter = match result {
                Ok(_) => &self.counters.published,
                Err(_) => &self.counters.publish_errors,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let _ = p
                .done
                .send(result.map(|(offset, epoch, _)| (offset, epoch)));
        }
    }
}

/// The task that makes a [`HistoryWriter`]'s calls. If it is dropped before the queue was
/// found empty (`done`: the runtime is shutting down and dropped the task, perhaps before it
/// ever ran, or there is no runtime to start one), the queue is cleared and left idle: the
/// publishers still waiting learn that their publish was abandoned.
struct Draining {
    writer: Arc<HistoryWriter>,
    done: bool,
}

impl Draining {
    /// Script calls for the queued publishes, until none is left.
    ///
    /// After each call the task yields once before taking the next batch: the publishers
    /// that the answer woke run first, and what they publish next goes in the same call.
    /// With 16 publishing tasks that took the calls from 8 to 14.5 publications on average
    /// and cut the CPU per publish by a quarter (`benches/history.rs`); the delay is one pass
    /// of the runtime over the tasks that are ready. The first batch goes at once: with one
    /// publish at a time there is nobody to wait for.
    async fn run(mut self) {
        let mut first = true;
        loop {
            if !first {
                tokio::task::yield_now().await;
            }
            first = false;
            let batch: Vec<QueuedPublish> = {
                let mut queue = self.writer.queue();
                if queue.waiting.is_empty() {
                    queue.busy = false;
                    self.done = true;
                    return;
                }
                let n = queue.waiting.len().min(MAX_HISTORY_BATCH);
                queue.waiting.drain(..n).collect()
            };
            self.writer.call(batch).await;
        }
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waiting = {
            let mut queue = self.writer.queue();
            queue.busy = false;
            std::mem::take(&mut queue.waiting)
        };
        drop(waiting); // outside the lock: each drop wakes a publisher
    }
}

/// What a node knows of one Redis process (see [`Shard::run_id`]), forgotten whenever a
/// connection to it fails: the process may have restarted.
type RunId = Arc<std::sync::Mutex<Known>>;

/// At most this many channels' positions are remembered per shard; beyond, half of them are
/// forgotten (the next publication of each asks the stream, see `PUBLISH_HISTORY`).
const MAX_KNOWN_CHANNELS: usize = 1 << 16;

#[derive(Default)]
struct Known {
    /// The tag of the Redis process (see `learn_tag!`), as the scripts last reported it
    /// (empty: unknown).
    run: String,
    /// How often all this was forgotten: a script's answer is learnt only if nothing was
    /// forgotten since the script was sent.
    token: u64,
    /// Per history channel this node published on: the epoch its stream continues, and
    /// when the script next pushes the stream's expiry back (Redis ms), as the process `run`
    /// reported them.
    channels: std::collections::HashMap<String, (String, u64)>,
}

impl Known {
    /// Records the run id a script reported, unless the connection failed since it was sent
    /// with `token` (the answer may come from a process that is gone); the positions learnt
    /// from another process are forgotten. Whether the answer counts.
    fn learn(&mut self, run: String, token: u64) -> bool {
        if self.token != token {
            return false;
        }
        if self.run != run {
            self.run = run;
            self.channels.clear();
        }
        true
    }

    fn remember(&mut self, channel: &str, epoch: &str, x: u64) {
        if let Some(known) = self.channels.get_mut(channel) {
            if known.0 != epoch {
                epoch.clone_into(&mut known.0);
            }
            known.1 = x;
            return;
        }
        if self.channels.len() >= MAX_KNOWN_CHANNELS {
            let mut keep = false;
            self.channels.retain(|_, _| {
                keep = !keep;
                keep
            });
        }
        self.channels
            .insert(channel.to_owned(), (epoch.to_owned(), x));
    }
}

fn lock(run_id: &RunId) -> std::sync::MutexGuard<'_, Known> {
    run_id
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A command failed with `e`: forgets what the node knows of the Redis process (see
/// [`forget_run_id`]) unless Redis answered with an error reply (a key of another type, an
/// error in a script). Otherwise the connection may have failed, and what answers next may be
/// another process. An error reply comes from the process the node knows: after a restart, the
/// first command on the old connection fails with an I/O error (the broker speaks RESP2, see
/// [`resp2_client`]).
fn forget_after(run_id: &RunId, e: &redis::RedisError) {
    if !matches!(
        e.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
            | redis::ErrorKind::Extension
    ) {
        forget_run_id(run_id);
    }
}

/// Forgets the run id and the channels' positions: the next history script looks them up.
fn forget_run_id(run_id: &RunId) {
    let mut known = lock(run_id);
    known.run.clear();
    known.channels.clear();
    known.token += 1;
}

/// The run id to send with a script, and the token to learn its answer with.
fn current_run_id(run_id: &RunId) -> (String, u64) {
    let known = lock(run_id);
    (known.run.clone(), known.token)
}

impl Shard {
    /// See [`current_run_id`].
    fn run_id(&self) -> (String, u64) {
        current_run_id(&self.run_id)
    }

    /// See [`Known::learn`].
    fn learn_run_id(&self, run: String, token: u64) {
        lock(&self.run_id).learn(run, token);
    }

    /// A command on the publishing connection failed: Redis may be restarting.
    fn failed(&self, e: &redis::RedisError) {
        forget_after(&self.run_id, e);
    }
}

enum Command {
    /// Subscribe (if not already); the activation finishes once the subscription is active,
    /// or once it is recorded for re-subscription if Redis is unreachable (or when the
    /// command is dropped).
    Subscribe(String, FinishOnDrop),
    Unsubscribe(String),
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
}

impl RedisBroker {
    /// Connects to every shard (publisher and subscriber), subscribes to the broadcast
    /// channel, and starts reporting `clients` for the cluster counts. With `history` (some
    /// channels keep a history), each shard must be Redis 7.0 or later
    /// ([`check_history_support`]).
    ///
    /// # Errors
    /// A description of the first shard that could not be reached or is too old.
    pub(crate) async fn connect(
        config: &RedisConfig,
        history: bool,
        deliver: Deliver,
        resubscribed: Resubscribed,
        clients: ClientCount,
    ) -> Result<Self, String> {
        let node = random_node_id();
        let counters = Arc::new(Counters::default());
        let mut shards = Vec::with_capacity(config.urls.len());
        for (i, url) in config.urls.iter().enumerate() {
            let host = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
            let fail = |what: &str, e: &dyn std::fmt::Display| format!("Redis {host}: {what}: {e}");
            let client = resp2_client(url).map_err(|e| fail("invalid URL", &e))?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_max_delay(MAX_BACKOFF);
            let publisher = client
                .get_connection_manager_with_config(manager_config.clone())
                .await
                .map_err(|e| fail("cannot connect", &e))?;
            let mut writer_conn = publisher.clone();
            if history {
                writer_conn = client
                    .get_connection_manager_with_config(manager_config)
                    .await
                    .map_err(|e| fail("cannot connect", &e))?;
                let mut conn = publisher.clone();
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| fail("INFO server", &e))?;
                check_history_support(&info).map_err(|e| fail("history channels", &e))?;
            }
            let pubsub = tokio::time::timeout(config.timeout, client.get_async_pubsub())
                .await
                .map_err(|e| fail("cannot connect", &e))?
                .map_err(|e| fail("cannot connect", &e))?;
            let mut desired = HashSet::new();
            if i == 0 {
                desired.insert(format!("{}b", config.prefix));
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let connected = Arc::new(AtomicBool::new(false));
            let run_id = RunId::default();
            let generation = Arc::new(AtomicU64::new(0));
            let (ready_tx, ready_rx) = oneshot::channel();
            let task = Subscriber {
                client,
                rx,
                desired,
                deliver: Arc::clone(&deliver),
                resubscribed: Arc::clone(&resubscribed),
                prefix: config.prefix.clone(),
                node,
                timeout: config.timeout,
                connected: Arc::clone(&connected),
                run_id: Arc::clone(&run_id),
                generation: Arc::clone(&generation),
                counters: Arc::clone(&counters),
            };
            tokio::spawn(task.run(pubsub, ready_tx));
            // The broadcast subscription is active before `connect` returns.
            let _ = ready_rx.await;
            let writer = Arc::new(HistoryWriter {
                conn: writer_conn,
                script: redis::Script::new(PUBLISH_HISTORY),
                node,
                prefix: config.prefix.clone(),
                run_id: Arc::clone(&run_id),
                counters: Arc::clone(&counters),
                queue: std::sync::Mutex::default(),
            });
            shards.push(Shard {
                publisher,
                commands: tx,
                connected,
                run_id,
                generation,
                history: writer,
            });
        }
        let census = Arc::new(Census {
            conn: shards[0].publisher.clone(),
            run_id: Arc::clone(&shards[0].run_id),
            report: redis::Script::new(REPORT_NODE),
            count: redis::Script::new(COUNT_CLIENTS),
            node: hex(&node),
            nodes_key: format!("{}nodes", config.prefix),
            clients_key: format!("{}clients", config.prefix),
        });
        tokio::spawn(Arc::clone(&census).run(clients));
        Ok(RedisBroker {
            timeout: config.timeout,
            read_history: redis::Script::new(READ_HISTORY),
            census,
            node,
            prefix: config.prefix.clone(),
            ring: Ring::new(&config.urls),
            shards,
            counters,
        })
    }

    /// A publish's result, counted as published or failed.
    fn counted<T>(&self, result: redis::RedisResult<T>) -> Result<T, String> {
        match result {
            Ok(v) => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                Err(format!("Redis publish failed: {e}"))
            }
        }
    }

    fn route(&self, channel: Option<&str>) -> (&Shard, String) {
        match channel {
            Some(c) => (
                &self.shards[self.ring.shard(c)],
                format!("{}c:{c}", self.prefix),
            ),
            None => (&self.shards[0], format!("{}b", self.prefix)),
        }
    }
}

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        channel: Option<&'a str>,
        json: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let (shard, name) = self.route(channel);
            let mut payload = Vec::with_capacity(NODE_ID_LEN + json.len());
            payload.extend_from_slice(&self.node);
            payload.extend_from_slice(json);
            let mut conn = shard.publisher.clone();
            let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(name)
                .arg(payload)
                .query_async(&mut conn)
                .await;
            if let Err(e) = &result {
                shard.failed(e);
            }
            self.counted(result).map(drop)
        })
    }

    fn subscribe(&self, channel: &str) -> Arc<Activation> {
        let (shard, name) = self.route(Some(channel));
        let activation = Arc::new(Activation::default());
        // If the subscriber task is gone, the command is dropped and the activation finishes.
        let _ = shard.commands.send(Command::Subscribe(
            name,
            FinishOnDrop(Arc::clone(&activation)),
        ));
        activation
    }

    fn generation(&self, channel: &str) -> u64 {
        self.route(Some(channel))
            .0
            .generation
            .load(Ordering::Acquire)
    }

    fn unsubscribe(&self, channel: &str) {
        let (shard, name) = self.route(Some(channel));
        let _ = shard.commands.send(Command::Unsubscribe(name));
    }

    fn publish_history<'a>(
        &'a self,
        channel: &'a str,
        json_head: &'a [u8],
        size: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(u64, String), String>> {
        Box::pin(async move {
            let shard = &self.shards[self.ring.shard(channel)];
            shard.history.publish(channel, json_head, size, ttl).await
        })
    }

    fn read_history<'a>(
        &'a self,
        channel: &'a str,
        since: u64,
        limit: usize,
        size: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<StoredHistory, String>> {
        Box::pin(async move {
            let (shard, _) = self.route(Some(channel));
            let mut conn = shard.publisher.clone();
            let (believed, token) = shard.run_id();
            let (epoch, offset, flat, run): (Option<String>, u64, Vec<Vec<u8>>, String) = self
                .read_history
                .key(format!("{}s:{channel}", self.prefix))
                .arg(since)
                .arg(limit)
                .arg(ttl_ms(ttl))
                .arg(believed)
                .arg(size)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| {
                    shard.failed(&e);
                    format!("Redis history read failed: {e}")
                })?;
            shard.learn_run_id(run, token);
            let mut entries = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks_exact(2) {
                let offset = std::str::from_utf8(&pair[0])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("Redis history: malformed entry id")?;
                // Clients get it as a text frame: what a node stored is always UTF-8. An entry
                // that is not is left out, so the offsets show a hole there and a resume over
                // it is answered `recovered: false`.
                if std::str::from_utf8(&pair[1]).is_err() {
                    continue;
                }
                let epoch = epoch.as_deref().unwrap_or_default();
                let mut json = Vec::with_capacity(pair[1].len() + 48 + epoch.len());
                crate::message::write_history_json(&mut json, &pair[1], offset, epoch);
                entries.push((offset, bytes::Bytes::from(json)));
            }
            Ok(StoredHistory {
                epoch,
                offset,
                entries,
            })
        })
    }

    fn cluster(&self, local_clients: usize) -> BoxFuture<'_, Result<ClusterStats, String>> {
        Box::pin(async move {
            // Every node subscribes to the broadcast channel (on the first shard), and a node
            // subscribes to a channel while it has local subscribers: Redis's own pub/sub
            // bookkeeping holds both counts.
            let failed = |e: redis::RedisError| {
                for shard in &self.shards {
                    shard.failed(&e);
                }
                format!("Redis: {e}")
            };
            let mut conn = self.shards[0].publisher.clone();
            let (_, nodes): (String, usize) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("{}b", self.prefix))
                .query_async(&mut conn)
                .await
                .map_err(failed)?;
            let pattern = format!("{}c:*", glob_escape(&self.prefix));
            let mut channels = 0;
            for shard in &self.shards {
                let mut conn = shard.publisher.clone();
                let names: Vec<redis::Value> = redis::cmd("PUBSUB")
                    .arg("CHANNELS")
                    .arg(&pattern)
                    .query_async(&mut conn)
                    .await
                    .map_err(failed)?;
                channels += names.len();
            }
            self.census.report(local_clients).await.map_err(failed)?;
            let clients = self.census.count().await.map_err(failed)?;
            Ok(ClusterStats {
                nodes,
                channels,
                clients,
            })
        })
    }

    fn leave(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = tokio::time::timeout(self.timeout, self.census.leave()).await;
        })
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }

    fn counters(&self) -> BrokerCounters {
        let c = &self.counters;
        BrokerCounters {
            published: c.published.load(Ordering::Relaxed),
            publish_errors: c.publish_errors.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            connected_shards: self
                .shards
                .iter()
                .filter(|s| s.connected.load(Ordering::Relaxed))
                .count(),
            shards: self.shards.len(),
        }
    }
}

/// One shard's subscriber connection, re-established with backoff; the only owner of the
/// shard's subscription set, so commands apply in the order they were sent.
struct Subscriber {
    client: redis::Client,
    rx: mpsc::UnboundedReceiver<Command>,
    /// Redis channels this node wants (re-subscribed after every reconnect).
    desired: HashSet<String>,
    deliver: Deliver,
    resubscribed: Resubscribed,
    prefix: String,
    node: [u8; NODE_ID_LEN],
    timeout: Duration,
    connected: Arc<AtomicBool>,
    run_id: RunId,
    /// Incremented at every connection; passed with each message (see [`Deliver`]).
    generation: Arc<AtomicU64>,
    counters: Arc<Counters>,
}

impl Subscriber {
    async fn run(mut self, first: PubSub, ready: oneshot::Sender<()>) {
        let mut pubsub = Some(first);
        let mut ready = Some(ready);
        let mut backoff = MIN_BACKOFF;
        let mut reconnecting = false;
        loop {
            let conn = match pubsub.take() {
                Some(p) => Some(p),
                None => tokio::time::timeout(self.timeout, self.client.get_async_pubsub())
                    .await
                    .ok()
                    .and_then(Result::ok),
            };
            let Some(conn) = conn else {
                if !self.wait_offline(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            let (mut sink, mut stream) = conn.split();
            let all: Vec<&String> = self.desired.iter().collect();
            if !all.is_empty() && sink.subscribe(all).await.is_err() {
                // Refused (e.g. an ACL) or the connection dropped again: back off as for a
                // failed connection, so a refusal does not become a busy loop.
                tracing::warn!("Redis refused this node's subscriptions; retrying");
                if !self.wait_offline(backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            // A new generation once the subscriptions are in place: a position recorded
            // before (a stored read) keeps the old one and is checked (see `Hub`).
            self.generation.fetch_add(1, Ordering::AcqRel);
            if reconnecting {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "Redis subscriber reconnected; {} channels re-subscribed",
                    self.desired.len()
                );
                let prefix = format!("{}c:", self.prefix);
                let channels = self
                    .desired
                    .iter()
                    .filter_map(|c| c.strip_prefix(prefix.as_str()))
                    .map(str::to_owned)
                    .collect();
                (self.resubscribed)(channels, self.generation.load(Ordering::Acquire));
            }
            self.connected.store(true, Ordering::Relaxed);
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            backoff = MIN_BACKOFF;
            loop {
                tokio::select! {
                    msg = stream.next() => match msg {
                        Some(msg) => self.on_message(msg.get_channel_name(), msg.get_payload_bytes()),
                        None => break,
                    },
                    cmd = self.rx.recv() => match cmd {
                        None => return, // the broker was dropped
                        Some(Command::Subscribe(name, activation)) => {
                            let ok = !self.desired.insert(name.clone())
                                || sink.subscribe(&name).await.is_ok();
                            // What arrived before the answer (an earlier subscription's last
                            // messages among them) is delivered before the channel counts as
                            // active.
                            let mut drained = 0;
                            while drained < MAX_DRAIN {
                                // Unconstrained: tokio's cooperative budget would make a
                                // full channel look empty after 128 messages.
                                match tokio::task::unconstrained(stream.next()).now_or_never() {
                                    Some(Some(msg)) => {
                                        self.on_message(msg.get_channel_name(), msg.get_payload_bytes());
                                        drained += 1;
                                    }
                                    _ => break,
                                }
                            }
                            drop(activation);
                            if !ok {
                                break;
                            }
                        }
                        Some(Command::Unsubscribe(name)) => {
                            if self.desired.remove(&name) && sink.unsubscribe(&name).await.is_err() {
                                break;
                            }
                        }
                    },
                }
            }
            self.connected.store(false, Ordering::Relaxed);
            // Redis may be restarting: whatever it restores has to be vouched for again.
            forget_run_id(&self.run_id);
            reconnecting = true;
            tracing::warn!("Redis subscriber connection lost; reconnecting");
        }
    }

    /// Waits `backoff` while Redis is unreachable, still applying commands (a subscribe is
    /// recorded and acknowledged at once: it takes effect on reconnect). `false` when the
    /// broker was dropped.
    async fn wait_offline(&mut self, backoff: Duration) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                cmd = self.rx.recv() => match cmd {
                    None => return false,
                    Some(Command::Subscribe(name, activation)) => {
                        self.desired.insert(name);
                        drop(activation);
                    }
                    Some(Command::Unsubscribe(name)) => {
                        self.desired.remove(&name);
                    }
                },
            }
        }
    }

    fn on_message(&self, redis_channel: &str, payload: &[u8]) {
        let Some(rest) = redis_channel.strip_prefix(self.prefix.as_str()) else {
            return;
        };
        let channel = match rest {
            "b" => None,
            other => match other.strip_prefix("c:") {
                Some(c) => Some(c),
                None => return,
            },
        };
        let Some((node, rest)) = payload.split_first_chunk::<NODE_ID_LEN>() else {
            return;
        };
        let own = *node == self.node;
        if !own {
            self.counters.received.fetch_add(1, Ordering::Relaxed);
        }
        let generation = self.generation.load(Ordering::Acquire);
        (self.deliver)(channel, own, generation, rest);
    }
}

/// This node's record in the cluster's client count: a set of nodes scored by when their
/// record expires, and a hash of their counts.
struct Census {
    conn: ConnectionManager,
    /// The first shard's run id, forgotten when a report fails (see [`Shard::run_id`]).
    run_id: RunId,
    report: redis::Script,
    count: redis::Script,
    node: String,
    nodes_key: String,
    clients_key: String,
}

impl Census {
    /// Reports the count when it changed (checked every [`CHECK_INTERVAL`]) and at least every
    /// [`REPORT_INTERVAL`], until `clients` says the hub is gone or shutting down. A failed
    /// report (Redis unreachable) is retried at the next check.
    async fn run(self: Arc<Self>, clients: ClientCount) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported: Option<(usize, tokio::time::Instant)> = None;
        loop {
            let now = tick.tick().await;
            let Some(n) = clients() else {
                return;
            };
            let due = reported.is_none_or(|(last, at)| last != n || now - at >= REPORT_INTERVAL);
            if due {
                reported = match self.report(n).await {
                    Ok(()) => Some((n, now)),
                    Err(e) => {
                        forget_after(&self.run_id, &e);
                        None
                    }
                };
            }
        }
    }

    async fn report(&self, clients: usize) -> redis::RedisResult<()> {
        let ttl = 3 * REPORT_INTERVAL.as_millis();
        self.report
            .key(&self.nodes_key)
            .key(&self.clients_key)
            .arg(&self.node)
            .arg(clients)
            .arg(u64::try_from(ttl).unwrap_or(u64::MAX))
            .invoke_async(&mut self.conn.clone())
            .await
    }

    async fn count(&self) -> redis::RedisResult<usize> {
        self.count
            .key(&self.nodes_key)
            .key(&self.clients_key)
            .invoke_async(&mut self.conn.clone())
            .await
    }

    async fn leave(&self) -> redis::RedisResult<()> {
        redis::pipe()
            .atomic()
            .zrem(&self.nodes_key, &self.node)
            .hdel(&self.clients_key, &self.node)
            .query_async(&mut self.conn.clone())
            .await
    }
}

/// Lower-case hexadecimal.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` with Redis glob characters escaped, to match it literally in a pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A client for `url` that speaks RESP2, whatever the URL asks for. Over RESP3, redis-rs's
/// connection manager reconnects by itself after the server went away, so the first command
/// to a restarted Redis would not fail; over RESP2 it fails, and the node forgets the run id
/// it believed (see [`Shard::run_id`]): what a restarted Redis restored is vouched for again.
fn resp2_client(url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info()?;
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP2);
    redis::Client::open(info.set_redis_settings(settings))
}

/// History channels need Redis 7.0 or later (`XADD` with an id `<epoch>-*`, the stream as
/// offset counter); `info` is the answer to `INFO server`. An unknown version is let through.
fn check_history_support(info: &str) -> Result<(), String> {
    let Some(version) = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))
    else {
        return Ok(());
    };
    match version.split('.').next().map(str::parse::<u32>) {
        Some(Ok(major)) if major < 7 => Err(format!(
            "they need Redis 7.0 or later, this server is {version}"
        )),
        _ => Ok(()),
    }
}

fn random_node_id() -> [u8; NODE_ID_LEN] {
    // RandomState is seeded randomly per process; mix in the pid and time for good measure.
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::{check_history_support, resp2_client, Known, MAX_KNOWN_CHANNELS};

    #[test]
    fn the_broker_speaks_resp2_even_when_the_url_asks_for_resp3() {
        for url in [
            "redis://127.0.0.1:6379/?protocol=resp3",
            "redis://127.0.0.1:6379",
        ] {
            let client = resp2_client(url).unwrap();
            let protocol = client.get_connection_info().redis_settings().protocol();
            assert_eq!(protocol, redis::ProtocolVersion::RESP2, "{url}");
        }
        assert!(resp2_client("not a url").is_err());
    }

    #[test]
    fn history_channels_are_refused_on_redis_before_7() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        let refused = check_history_support(&info("6.2.14")).unwrap_err();
        assert!(
            refused.contains("7.0") && refused.contains("6.2.14"),
            "{refused}"
        );
        for v in ["7.0.15", "7.2.4", "8.0.2"] {
            assert_eq!(check_history_support(&info(v)), Ok(()), "{v}");
        }
        assert_eq!(check_history_support("# Server\r\n"), Ok(()));
    }

    #[test]
    fn positions_are_learnt_only_from_the_current_run_and_stay_bounded() {
        let mut known = Known::default();
        assert!(known.learn("run-a".to_owned(), 0));
        known.remember("feed:a", "17", 100);
        known.remember("feed:a", "18", 200);
        assert_eq!(known.channels.get("feed:a"), Some(&("18".to_owned(), 200)));
        // An answer sent before the node forgot (a failed connection) teaches nothing.
        known.token += 1;
        assert!(!known.learn("run-a".to_owned(), 0));
        assert_eq!(known.channels.len(), 1);
        // Another Redis process: what was learnt from the previous one is forgotten.
        assert!(known.learn("run-b".to_owned(), 1));
        assert_eq!((known.run.as_str(), known.channels.len()), ("run-b", 0));
        for i in 0..MAX_KNOWN_CHANNELS {
            known.remember(&format!("c{i}"), "1", 0);
        }
        assert_eq!(known.channels.len(), MAX_KNOWN_CHANNELS);
        known.remember("one-more", "1", 0);
        assert_eq!(known.channels.len(), MAX_KNOWN_CHANNELS / 2 + 1);
        assert!(known.channels.contains_key("one-more"));
    }
}
