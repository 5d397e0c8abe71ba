//! The Redis broker: one publishing connection and one subscriber task per shard.

use std::collections::HashSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use tokio::sync::{mpsc, oneshot};

use super::{Broker, BrokerCounters, Deliver, RedisConfig, Ring};

/// Reconnect backoff of the subscriber tasks.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Bytes of node id at the front of every message this node publishes.
const NODE_ID_LEN: usize = 8;

pub(crate) struct RedisBroker {
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
}

enum Command {
    /// Subscribe (if not already); the sender fires once the subscription is active, or
    /// once it is recorded for re-subscription if Redis is unreachable.
    Subscribe(String, oneshot::Sender<()>),
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
    /// Connects to every shard (publisher and subscriber) and subscribes to the broadcast
    /// channel.
    ///
    /// # Errors
    /// A description of the first shard that could not be reached.
    pub(crate) async fn connect(config: &RedisConfig, deliver: Deliver) -> Result<Self, String> {
        let node = random_node_id();
        let counters = Arc::new(Counters::default());
        let mut shards = Vec::with_capacity(config.urls.len());
        for (i, url) in config.urls.iter().enumerate() {
            let host = url.rsplit_once('@').map_or(url.as_str(), |(_, h)| h);
            let fail = |what: &str, e: &dyn std::fmt::Display| format!("Redis {host}: {what}: {e}");
            let client = redis::Client::open(url.as_str()).map_err(|e| fail("invalid URL", &e))?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_max_delay(MAX_BACKOFF);
            let publisher = client
                .get_connection_manager_with_config(manager_config)
                .await
                .map_err(|e| fail("cannot connect", &e))?;
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
            let (ready_tx, ready_rx) = oneshot::channel();
            let task = Subscriber {
                client,
                rx,
                desired,
                deliver: Arc::clone(&deliver),
                prefix: config.prefix.clone(),
                node,
                timeout: config.timeout,
                connected: Arc::clone(&connected),
                counters: Arc::clone(&counters),
            };
            tokio::spawn(task.run(pubsub, ready_tx));
            // The broadcast subscription is active before `connect` returns.
            let _ = ready_rx.await;
            shards.push(Shard {
                publisher,
                commands: tx,
                connected,
            });
        }
        Ok(RedisBroker {
            node,
            prefix: config.prefix.clone(),
            ring: Ring::new(&config.urls),
            shards,
            counters,
        })
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
            match result {
                Ok(_) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Err(e) => {
                    self.counters.publish_errors.fetch_add(1, Ordering::Relaxed);
                    Err(format!("Redis publish failed: {e}"))
                }
            }
        })
    }

    fn subscribe(&self, channel: &str) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let (shard, name) = self.route(Some(channel));
        let (tx, rx) = oneshot::channel();
        let sent = shard.commands.send(Command::Subscribe(name, tx)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = rx.await;
            }
        })
    }

    fn unsubscribe(&self, channel: &str) {
        let (shard, name) = self.route(Some(channel));
        let _ = shard.commands.send(Command::Unsubscribe(name));
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
    prefix: String,
    node: [u8; NODE_ID_LEN],
    timeout: Duration,
    connected: Arc<AtomicBool>,
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
                continue;
            }
            if reconnecting {
                self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "Redis subscriber reconnected; {} channels re-subscribed",
                    self.desired.len()
                );
            }
            self.connected.store(true, Ordering::Relaxed);
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            backoff = MIN_BACKOFF;
            loop {
                tokio::select! {
                    cmd = self.rx.recv() => match cmd {
                        None => return, // the broker was dropped
                        Some(Command::Subscribe(name, ack)) => {
                            let ok = !self.desired.insert(name.clone())
                                || sink.subscribe(&name).await.is_ok();
                            let _ = ack.send(());
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
                    msg = stream.next() => match msg {
                        Some(msg) => self.on_message(msg.get_channel_name(), msg.get_payload_bytes()),
                        None => break,
                    },
                }
            }
            self.connected.store(false, Ordering::Relaxed);
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
                    Some(Command::Subscribe(name, ack)) => {
                        self.desired.insert(name);
                        let _ = ack.send(());
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
        let Some((node, json)) = payload.split_first_chunk::<NODE_ID_LEN>() else {
            return;
        };
        if *node == self.node {
            return; // published here and already delivered locally
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        (self.deliver)(channel, json);
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
