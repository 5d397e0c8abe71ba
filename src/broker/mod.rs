//! Brokers: where publishes go besides this node's own subscribers.
//!
//! The default is no broker (the in-memory hub: one node, no other service). With the Redis
//! broker ([`RedisConfig`], feature `redis`), every publish on any node reaches every
//! subscriber on every node:
//!
//! - **Local first, then Redis, with origin de-duplication.** A publish is delivered to this
//!   node's subscribers at once (the exact [`PublishReport`](crate::PublishReport) is local) and
//!   published to Redis once, tagged with this node's id; every other node delivers what Redis
//!   returns, and this node ignores its own messages. Local delivery therefore never waits for
//!   Redis and keeps working while Redis is down, and nobody gets a message twice.
//! - **Interest-based subscriptions.** A node subscribes in Redis only to channels that have
//!   local subscribers (plus one broadcast channel): the first local join subscribes, and the
//!   client's subscribe completes only once Redis confirmed it; the last leave unsubscribes.
//!   Subscribe/unsubscribe commands for a channel are issued in the order the joins and leaves
//!   happened, so a leave racing a join cannot leave the node unsubscribed.
//! - **History channels** are the exception: Redis assigns each publication its offset
//!   (a Lua script appends it to the channel's stream and publishes it), and every node
//!   delivers them in offset order. The origin delivers its own publication as soon as the
//!   script answers if it is the next one, else when its copy arrives. Concurrent history
//!   publishes on one shard go to Redis together, one script call at a time (a group commit).
//! - **Encode once per node.** The origin sends the exact JSON text; each node frames it once
//!   and shares it with all its subscribers.
//! - **Sharding.** With several Redis URLs, channels are spread over them by consistent hashing
//!   (the same on every node); broadcasts use the first.
//! - **Cluster counts.** Nodes and channels come from Redis's pub/sub bookkeeping; each node
//!   also keeps a short-lived record of its client count on the first shard, written when the
//!   count changes (checked every 250 ms) and at least every 2 s, removed at shutdown.
//! - **Outages.** Redis unreachable at start is an error. If Redis is lost while running, local
//!   delivery continues; a publish still reaches this node's subscribers and returns
//!   [`PublishError::Broker`](crate::PublishError::Broker) (with the local report), so nothing
//!   vanishes silently. The node reconnects with exponential backoff (100 ms to 1 s) and
//!   re-subscribes every channel that has local subscribers (a subscribe made while Redis is
//!   unreachable is answered at once and takes effect then). On channels without history,
//!   what other nodes published while this node's subscriber connection was down does not
//!   reach its clients (Redis pub/sub keeps nothing). On channels with history nothing is
//!   lost: the node checks every publication's offset, and compares each channel's stored
//!   position with its own when it re-subscribes; if it missed publications, the channel's
//!   subscribers are closed with 1012 and recover them when they resume.

#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

#[cfg(feature = "redis")]
use crate::error::ConfigError;

/// This node's client count for the cluster counts; `None` once the hub is gone or shutting
/// down.
#[cfg(feature = "redis")]
pub(crate) type ClientCount = Arc<dyn Fn() -> Option<usize> + Send + Sync>;

/// Delivers a message that arrived through the broker to this node's subscribers:
/// `(channel or None for a broadcast, whether this node published it, link generation,
/// payload)`. The link generation counts the connections of the channel's shard: messages of
/// one generation came through one unbroken subscription. The payload is the exact JSON text;
/// on channels with history, `"<offset> <epoch> "` and the JSON without its closing brace, to
/// which the position is added (`message::history_frame`).
#[cfg(feature = "redis")]
pub(crate) type Deliver = Arc<dyn Fn(Option<&str>, bool, u64, &[u8]) + Send + Sync>;

/// Told, after the broker lost and re-established its subscriptions, which channels were
/// re-subscribed, and the generation of the new link: whatever other nodes published on them
/// in between never reached this node.
#[cfg(feature = "redis")]
pub(crate) type Resubscribed = Arc<dyn Fn(Vec<String>, u64) + Send + Sync>;

/// A boxed future borrowing from the broker.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A channel's broker subscription on its way to being active. Every local subscriber that
/// joins meanwhile waits for it, not only the one whose join created the channel: until then,
/// publications from other nodes do not reach this node.
#[derive(Debug, Default)]
pub(crate) struct Activation {
    done: AtomicBool,
    notify: tokio::sync::Notify,
}

/// Finishes its activation when dropped, however the command carrying it ends (carried out,
/// or dropped with the subscriber task): no joiner waits for ever.
#[cfg(feature = "redis")]
pub(crate) struct FinishOnDrop(pub(crate) Arc<Activation>);

#[cfg(feature = "redis")]
impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

impl Activation {
    /// The subscription is active (or recorded, to take effect when the broker is back).
    #[cfg(feature = "redis")]
    pub(crate) fn finish(&self) {
        self.done.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Resolves once [`Activation::finish`] was called.
    pub(crate) async fn wait(self: Arc<Self>) {
        loop {
            // Registered before the check: a `finish` in between still wakes it.
            let notified = self.notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }
}

/// What the broker holds of a channel's history.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoredHistory {
    /// The channel's epoch; `None` when it has no history (never published, or expired).
    pub(crate) epoch: Option<String>,
    /// Offset of the last publication.
    pub(crate) offset: u64,
    /// Publications after the requested offset still within the window: (offset, JSON).
    /// Entries no node could have written (not UTF-8) are left out, so there may be a hole.
    pub(crate) entries: Vec<(u64, bytes::Bytes)>,
}

/// What a broker does for the hub.
pub(crate) trait Broker: Send + Sync {
    /// Sends the JSON text to the other nodes; resolves once the broker accepted it.
    fn publish<'a>(
        &'a self,
        channel: Option<&'a str>,
        json: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
    /// The first local subscriber joined `channel`. Called under the channel registry's lock,
    /// so it only queues the request; the activation finishes once the subscription is active.
    fn subscribe(&self, channel: &str) -> Arc<Activation>;
    /// The generation of the link that delivers `channel` now (see [`Deliver`]).
    fn generation(&self, channel: &str) -> u64;
    /// The last local subscriber left `channel` (called under the registry's lock).
    fn unsubscribe(&self, channel: &str);
    /// Counters since the broker started.
    fn counters(&self) -> BrokerCounters;
    /// How long to wait for the broker (connect and command timeout).
    fn timeout(&self) -> Duration;
    /// Appends a publication to `channel`'s history and sends it to every node, this one
    /// included, in offset order: `json_head` is the message's JSON without its closing `}`,
    /// to which the broker adds `,"offset":N,"epoch":"E"}`. Resolves to (offset, epoch).
    fn publish_history<'a>(
        &'a self,
        channel: &'a str,
        json_head: &'a [u8],
        size: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(u64, String), String>>;
    /// Reads `channel`'s position and up to `limit` publications after `since` that are
    /// within the window: among the last `size` and at most `ttl` old.
    fn read_history<'a>(
        &'a self,
        channel: &'a str,
        since: u64,
        limit: usize,
        size: usize,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<StoredHistory, String>>;
    /// Counts over every node connected to the broker; `local_clients` is this node's
    /// client count (reported first, so this node's share is exact).
    fn cluster(&self, local_clients: usize) -> BoxFuture<'_, Result<ClusterStats, String>>;
    /// This node leaves the cluster counts (at shutdown).
    fn leave(&self) -> BoxFuture<'_, ()>;
}

/// Counts over every node that shares the broker ([`Hub::cluster_stats`](crate::Hub::cluster_stats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Nodes connected to the broker (subscribed to its broadcast channel).
    pub nodes: usize,
    /// Channels with at least one subscriber on some node.
    pub channels: usize,
    /// Clients connected to any node. Each node reports its count to Redis within a quarter
    /// of a second of a change (and at least every 2 seconds), so another node's share may be
    /// that old; this node's share is exact. A node that shuts down leaves the count at once;
    /// one that dies is counted for up to 6 seconds more.
    pub clients: usize,
}

/// Broker counters (all zero without a broker).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BrokerCounters {
    /// Messages this node published to the broker.
    pub published: u64,
    /// Publishes the broker refused or that failed (Redis unreachable).
    pub publish_errors: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Subscriber reconnections after a lost connection.
    pub reconnects: u64,
    /// Shards whose subscriber connection is up.
    pub connected_shards: usize,
    /// Configured shards.
    pub shards: usize,
}

/// Configuration of the Redis broker.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Redis URLs (`redis://host:port/db`, `redis+unix:///path`); several shard channels over
    /// the instances by consistent hashing. Every node must list the same URLs in the same
    /// order.
    pub urls: Vec<String>,
    /// Prefix of every Redis channel name wshub uses. The default value is `"wshub:"`.
    pub prefix: String,
    /// Time limit for connecting and for each command (at most
    /// [`MAX_DURATION`](crate::MAX_DURATION)). The default value is 2 s.
    pub timeout: Duration,
}

impl RedisConfig {
    /// A configuration with one or more Redis URLs and the defaults.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        RedisConfig {
            urls: urls.into_iter().map(Into::into).collect(),
            prefix: "wshub:".to_owned(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sets [`prefix`](Self::prefix) (default `"wshub:"`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`timeout`](Self::timeout) (default 2 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    #[cfg(feature = "redis")]
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::new("redis.urls", "at least one URL is needed"));
        }
        for url in &self.urls {
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+unix://")
                || url.starts_with("unix://"))
            {
                // The URL may carry a password: only its scheme is shown.
                let scheme = url.split_once("://").map_or("(none)", |(s, _)| s);
                return Err(ConfigError::new(
                    "redis.urls",
                    format!(
                        "a URL with scheme {scheme:?} is not a redis://, rediss:// or \
                         redis+unix:// URL"
                    ),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::new(
                "redis.timeout",
                "must be greater than zero",
            ));
        }
        crate::config::check_at_most_max("redis.timeout", self.timeout)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry passwords: show hosts only.
        let hosts: Vec<&str> = self
            .urls
            .iter()
            .map(|u| u.rsplit_once('@').map_or(u.as_str(), |(_, host)| host))
            .collect();
        f.debug_struct("RedisConfig")
            .field("hosts", &hosts)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A consistent-hash ring mapping channel names to shard indexes; identical on every node
/// for the same URL list (a fixed hash, not a per-process random one).
#[cfg(feature = "redis")]
#[derive(Debug, Clone)]
pub(crate) struct Ring {
    points: Vec<(u64, usize)>,
}

#[cfg(feature = "redis")]
impl Ring {
    /// Virtual points per shard: enough to spread channels within a few percent.
    const POINTS: usize = 160;

    pub(crate) fn new(shards: &[String]) -> Self {
        let mut points: Vec<(u64, usize)> = shards
            .iter()
            .enumerate()
            .flat_map(|(i, url)| {
                (0..Self::POINTS).map(move |p| (stable_hash(format!("{url}#{p}").as_bytes()), i))
            })
            .collect();
        points.sort_unstable();
        Ring { points }
    }

    /// The shard that owns `channel`.
    pub(crate) fn shard(&self, channel: &str) -> usize {
        let h = stable_hash(channel.as_bytes());
        let i = self.points.partition_point(|&(p, _)| p < h);
        self.points
            .get(i)
            .or(self.points.first())
            .map_or(0, |&(_, s)| s)
    }
}

/// FNV-1a followed by the murmur3 64-bit finaliser: FNV alone barely changes the high bits
/// when only the last bytes differ (`room-1`, `room-2`), which would put such channels on
/// one arc of the ring.
#[cfg(feature = "redis")]
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    #[test]
    #[cfg(feature = "redis")]
    fn redis_config_values_are_checked() {
        let ok = RedisConfig::new(["redis://127.0.0.1:6379"]);
        assert!(ok.validate().is_ok());
        for (config, field) in [
            (RedisConfig::new(Vec::<String>::new()), "redis.urls"),
            (RedisConfig::new(["http://x"]), "redis.urls"),
            (ok.clone().timeout(Duration::ZERO), "redis.timeout"),
            (ok.clone().timeout(Duration::MAX), "redis.timeout"),
        ] {
            assert_eq!(config.validate().unwrap_err().field(), field);
        }
    }

    #[test]
    fn the_ring_is_deterministic_and_spreads_channels() {
        let urls: Vec<String> = (0..3)
            .map(|i| format!("redis://127.0.0.1:{}", 7000 + i))
            .collect();
        let ring = Ring::new(&urls);
        let again = Ring::new(&urls);
        let mut counts = [0usize; 3];
        for i in 0..30_000 {
            let name = format!("room:{i}");
            assert_eq!(ring.shard(&name), again.shard(&name));
            counts[ring.shard(&name)] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "{counts:?}");
        }
        // Names that differ only in their last characters spread too.
        let mut small = [0usize; 3];
        for i in 0..40 {
            small[ring.shard(&format!("shard-test-{i}"))] += 1;
        }
        assert!(small.iter().all(|&c| c >= 5), "{small:?}");
        // Adding a shard moves only about a quarter of the channels.
        let mut more = urls.clone();
        more.push("redis://127.0.0.1:7003".into());
        let bigger = Ring::new(&more);
        let moved = (0..30_000)
            .filter(|i| {
                let name = format!("room:{i}");
                ring.shard(&name) != bigger.shard(&name)
            })
            .count();
        assert!((4_000..11_000).contains(&moved), "{moved}");
    }

    #[test]
    fn config_validation() {
        assert!(RedisConfig::new(["redis://127.0.0.1:6379"])
            .validate()
            .is_ok());
        assert!(RedisConfig::new(Vec::<String>::new()).validate().is_err());
        assert!(RedisConfig::new(["http://x"]).validate().is_err());
        let dbg = format!("{:?}", RedisConfig::new(["redis://:pw@10.0.0.1:6379"]));
        assert!(!dbg.contains("pw"), "{dbg}");
    }
}
