//! Hub configuration: plain data with documented defaults, validated in one place
//! ([`HubConfig::validate`], called by [`HubBuilder::build`](crate::HubBuilder::build)).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::ConfigError;
use crate::message::channel::validate_channel_name;

/// What happens to a client whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SlowConsumerPolicy {
    /// Abandon everything queued for the client and close its connection with code 1008 and
    /// reason `"slow consumer"`. The publish that overflowed counts the client as disconnected.
    ///
    /// This is the default (as Centrifugo and Bun with `closeOnBackpressureLimit`).
    #[default]
    Disconnect,
    /// Do not queue the message for that client and count the drop. Once its queue has room
    /// again the client receives `{"type":"error","data":"dropped N messages","timestamp":T}`
    /// before any further message, so it knows it missed N messages.
    Drop,
}

impl FromStr for SlowConsumerPolicy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disconnect" => Ok(SlowConsumerPolicy::Disconnect),
            "drop" => Ok(SlowConsumerPolicy::Drop),
            other => Err(ConfigError::new(
                "slow_consumer",
                format!("unknown policy {other:?} (expected \"disconnect\" or \"drop\")"),
            )),
        }
    }
}

/// A set of channel names: an exact name (`news`), a prefix ending in `*` (`chat:*`), or `*`
/// for every channel.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ChannelPattern {
    text: Box<str>,
    prefix: bool,
}

impl ChannelPattern {
    /// Parses a pattern.
    ///
    /// # Errors
    /// The part before an optional trailing `*` must be empty (for `*`) or a valid channel
    /// name prefix: characters of `[A-Za-z0-9_.:-]`.
    ///
    /// # Examples
    /// ```
    /// use wshub::ChannelPattern;
    /// let p = ChannelPattern::new("chat:*").unwrap();
    /// assert!(p.matches("chat:lobby"));
    /// assert!(!p.matches("news"));
    /// assert!(ChannelPattern::new("a b").is_err());
    /// ```
    pub fn new(pattern: &str) -> Result<Self, ConfigError> {
        let (text, prefix) = match pattern.strip_suffix('*') {
            Some(p) => (p, true),
            None => (pattern, false),
        };
        if !(prefix && text.is_empty()) {
            validate_channel_name(text, usize::MAX)
                .map_err(|e| ConfigError::new("channel pattern", format!("{pattern:?}: {e}")))?;
        }
        Ok(ChannelPattern {
            text: text.into(),
            prefix,
        })
    }

    /// Whether `channel` is in the set.
    pub fn matches(&self, channel: &str) -> bool {
        if self.prefix {
            channel.starts_with(&*self.text)
        } else {
            channel == &*self.text
        }
    }
}

impl FromStr for ChannelPattern {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ChannelPattern::new(s)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)?;
        if self.prefix {
            f.write_str("*")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelPattern({self})")
    }
}

/// The longest duration any setting accepts: 10 years (for [`HubConfig::history_ttl`], in
/// practice "keep what fits in `history_size`"). Longer ones are refused rather than
/// overflowing clocks and Redis expiry times.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The longest [`HubConfig::history_ttl`]: [`MAX_DURATION`].
pub const MAX_HISTORY_TTL: Duration = MAX_DURATION;

/// Refuses a duration above [`MAX_DURATION`] (a deadline that far would overflow the clock).
pub(crate) fn check_at_most_max(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError::new(
            field,
            format!("must be at most 10 years ({value:?})"),
        ));
    }
    Ok(())
}

/// Configuration of a [`Hub`](crate::Hub).
///
/// Build it with [`HubConfig::default`] and the chained setters; the hub validates it once
/// when it is built ([`HubConfig::validate`]) and refuses invalid values with a
/// [`ConfigError`] instead of silently replacing them.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use wshub::{HubConfig, SlowConsumerPolicy};
///
/// let config = HubConfig::default()
///     .heartbeat_interval(Duration::from_secs(10))
///     .pong_timeout(Duration::from_secs(25))
///     .slow_consumer(SlowConsumerPolicy::Drop);
/// assert!(config.validate().is_ok());
/// assert!(HubConfig::default().pong_timeout(Duration::from_secs(1)).validate().is_err());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// How often the server pings each client. The default value is 30 s (as go-ws).
    pub heartbeat_interval: Duration,
    /// A client that sends nothing (no pong, no message) for this long is disconnected.
    /// Must be greater than `heartbeat_interval`. The default value is 60 s (as go-ws).
    pub pong_timeout: Duration,
    /// A client whose socket accepts no bytes for this long while data is waiting is
    /// disconnected. The default value is 10 s (as go-ws).
    pub write_timeout: Duration,
    /// How long a connection waits, once a frame is queued for it while nothing else is being
    /// written, before it writes: what is queued meanwhile goes out in the same `writev`.
    /// Fewer, bigger writes cost the server much less CPU per message at a steady load, at the
    /// price of this much extra latency (Centrifugo's `client.write_delay` does the same).
    /// A connection whose queue reaches half of either queue bound, or that is being closed,
    /// writes at once. tokio's timer ticks in milliseconds, so a delay under 1 ms acts as
    /// 1 ms, and every delay may run up to 1 ms longer. Must be less than `write_timeout`.
    /// The default value is zero: a connection waits only for the other tasks that are
    /// ready at that moment (one scheduler round, or up to four while each round brings it
    /// more frames and its write is still small), which adds no measurable latency.
    pub write_delay: Duration,
    /// After the server sends a close frame, how long it waits for the client's close frame
    /// before dropping the connection. The default value is 5 s.
    pub close_timeout: Duration,
    /// Largest inbound message in bytes (fragments summed); a bigger one closes the connection
    /// with code 1009. The default value is 65,536 bytes (64 KiB, as go-ws).
    pub max_message_size: usize,
    /// Bound on the bytes queued for one client (encoded frames not yet written to its socket).
    /// Reaching it triggers the [`SlowConsumerPolicy`]. The default value is 1 MiB.
    pub max_queued_bytes: usize,
    /// Bound on the number of frames queued for one client. Reaching it triggers the
    /// [`SlowConsumerPolicy`]. The default value is 16,384 frames.
    pub max_queued_frames: usize,
    /// What to do with a client whose queue is full. The default value is
    /// [`SlowConsumerPolicy::Disconnect`].
    pub slow_consumer: SlowConsumerPolicy,
    /// Most channels one client may subscribe to. The default value is 1024.
    pub max_subscriptions: usize,
    /// Longest channel name in bytes (names are ASCII). The default value is 256.
    pub max_channel_name_len: usize,
    /// Channels that clients may publish to with `{"type":"publish","channel":C,"data":D}`.
    /// The default value is empty: client publish is off.
    pub client_publish: Vec<ChannelPattern>,
    /// When `true`, inbound messages are not interpreted as the go-ws JSON protocol: every text
    /// and binary message goes to the message hook untouched (e.g. an echo server). The default
    /// value is `false`.
    pub raw_messages: bool,
    /// Most clients connected at once; [`Hub::upgrade`](crate::Hub::upgrade) answers 503 beyond
    /// it. The default value is 65,536.
    pub max_connections: usize,
    /// Per-client inbound message rate limit (a token bucket over messages and pings), or
    /// `None` for no limit. The default value is 100 messages per second with a burst of 200.
    pub rate_limit: Option<RateLimit>,
    /// Origins allowed to open a WebSocket (the `Origin` header browsers send): exact origins
    /// such as `https://app.example.com`, or a leftmost wildcard label such as
    /// `https://*.example.com`. A request with another `Origin` gets 403 (this blocks
    /// cross-site WebSocket hijacking); requests without `Origin` (non-browser clients) are
    /// accepted. The default value is empty: every origin is accepted.
    pub allowed_origins: Vec<String>,
    /// Channels that keep a history: every publication on them carries an `offset` and an
    /// `epoch`, and a client that reconnects can resume from its last offset. The default
    /// value is empty: no history (the go-ws wire format is unchanged).
    pub history: Vec<ChannelPattern>,
    /// Publications kept per history channel. The default value is 1000.
    pub history_size: usize,
    /// How long a publication stays in history; a channel idle for this long loses its
    /// history (and gets a new epoch). The default value is 300 s; at most
    /// [`MAX_HISTORY_TTL`] (10 years).
    pub history_ttl: Duration,
}

/// A token-bucket rate limit on the messages (and pings) one client sends. A subscribe or
/// unsubscribe costs a sixteenth of a message, so a client that reconnects with its 1024
/// subscriptions stays within the default burst.
///
/// A message that finds the bucket empty is refused with an `error` reply
/// (`"rate limit exceeded"`). A client that sends `burst` refused messages without ever letting
/// the bucket refill completely in between is disconnected with close code 1008: a single
/// burst over the limit costs only refusals, a client that keeps sending over its rate (even
/// if some of its messages get through) is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: u32,
    /// Bucket size: messages accepted in a burst.
    pub burst: u32,
}

impl RateLimit {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        RateLimit { per_second, burst }
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            heartbeat_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            write_delay: Duration::ZERO,
            max_message_size: 64 * 1024,
            max_queued_bytes: 1024 * 1024,
            max_queued_frames: 16 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            max_subscriptions: 1024,
            max_channel_name_len: 256,
            client_publish: Vec::new(),
            raw_messages: false,
            max_connections: 65_536,
            rate_limit: Some(RateLimit {
                per_second: 100,
                burst: 200,
            }),
            allowed_origins: Vec::new(),
            history: Vec::new(),
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $name(mut self, value: $ty) -> Self {
                self.$name = value;
                self
            }
        )*
    };
}

impl HubConfig {
    setters! {
        /// Sets [`heartbeat_interval`](Self::heartbeat_interval) (default 30 s).
        heartbeat_interval: Duration;
        /// Sets [`pong_timeout`](Self::pong_timeout) (default 60 s).
        pong_timeout: Duration;
        /// Sets [`write_timeout`](Self::write_timeout) (default 10 s).
        write_timeout: Duration;
        /// Sets [`close_timeout`](Self::close_timeout) (default 5 s).
        close_timeout: Duration;
        /// Sets [`write_delay`](Self::write_delay) (default zero: one scheduler round).
        write_delay: Duration;
        /// Sets [`max_message_size`](Self::max_message_size) (default 64 KiB).
        max_message_size: usize;
        /// Sets [`max_queued_bytes`](Self::max_queued_bytes) (default 1 MiB).
        max_queued_bytes: usize;
        /// Sets [`max_queued_frames`](Self::max_queued_frames) (default 16,384).
        max_queued_frames: usize;
        /// Sets [`slow_consumer`](Self::slow_consumer) (default `Disconnect`).
        slow_consumer: SlowConsumerPolicy;
        /// Sets [`max_subscriptions`](Self::max_subscriptions) (default 1024).
        max_subscriptions: usize;
        /// Sets [`max_channel_name_len`](Self::max_channel_name_len) (default 256).
        max_channel_name_len: usize;
        /// Sets [`client_publish`](Self::client_publish) (default empty).
        client_publish: Vec<ChannelPattern>;
        /// Sets [`raw_messages`](Self::raw_messages) (default `false`).
        raw_messages: bool;
        /// Sets [`max_connections`](Self::max_connections) (default 65,536).
        max_connections: usize;
        /// Sets [`rate_limit`](Self::rate_limit) (default 100/s, burst 200).
        rate_limit: Option<RateLimit>;
        /// Sets [`allowed_origins`](Self::allowed_origins) (default empty: all origins).
        allowed_origins: Vec<String>;
        /// Sets [`history`](Self::history) (default empty: no history).
        history: Vec<ChannelPattern>;
        /// Sets [`history_size`](Self::history_size) (default 1000).
        history_size: usize;
        /// Sets [`history_ttl`](Self::history_ttl) (default 300 s).
        history_ttl: Duration;
    }

    /// Checks every value and every combination.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first offending field: zero durations or sizes,
    /// `pong_timeout <= heartbeat_interval`, `write_delay >= write_timeout`, a queue bound smaller than one control frame
    /// (256 bytes), a channel name limit of 0, or a duration above [`MAX_DURATION`]
    /// (10 years).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("pong_timeout", self.pong_timeout),
            ("write_timeout", self.write_timeout),
            ("close_timeout", self.close_timeout),
            ("history_ttl", self.history_ttl),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        for (field, value) in positive
            .into_iter()
            .chain([("write_delay", self.write_delay)])
        {
            check_at_most_max(field, value)?;
        }
        if self.pong_timeout <= self.heartbeat_interval {
            return Err(ConfigError::new(
                "pong_timeout",
                format!(
                    "must be greater than heartbeat_interval ({:?} <= {:?})",
                    self.pong_timeout, self.heartbeat_interval
                ),
            ));
        }
        if self.write_delay >= self.write_timeout {
            return Err(ConfigError::new(
                "write_delay",
                format!(
                    "must be less than write_timeout ({:?} >= {:?})",
                    self.write_delay, self.write_timeout
                ),
            ));
        }
        if self.max_message_size < 125 {
            return Err(ConfigError::new(
                "max_message_size",
                "must be at least 125 bytes",
            ));
        }
        if self.max_queued_bytes < 256 {
            return Err(ConfigError::new(
                "max_queued_bytes",
                "must be at least 256 bytes",
            ));
        }
        let counts = [
            ("max_queued_frames", self.max_queued_frames),
            ("max_subscriptions", self.max_subscriptions),
            ("max_channel_name_len", self.max_channel_name_len),
            ("max_connections", self.max_connections),
            ("history_size", self.history_size),
        ];
        for (field, value) in counts {
            if value == 0 {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        if let Some(r) = self.rate_limit {
            if r.per_second == 0 || r.burst == 0 {
                return Err(ConfigError::new(
                    "rate_limit",
                    "per_second and burst must be greater than zero (use None for no limit)",
                ));
            }
        }
        for origin in &self.allowed_origins {
            validate_origin_pattern(origin).map_err(|reason| {
                ConfigError::new("allowed_origins", format!("{origin:?}: {reason}"))
            })?;
        }
        Ok(())
    }

    /// Whether a request with this `Origin` header may connect.
    pub(crate) fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins.is_empty()
            || self
                .allowed_origins
                .iter()
                .any(|p| origin_matches(p, origin))
    }

    /// Whether `channel` keeps a history.
    pub(crate) fn has_history(&self, channel: &str) -> bool {
        self.history.iter().any(|p| p.matches(channel))
    }

    /// Whether clients may publish to `channel`.
    pub(crate) fn client_may_publish(&self, channel: &str) -> bool {
        self.client_publish.iter().any(|p| p.matches(channel))
    }
}

/// `scheme://host[:port]`, where the host may start with `*.`.
fn validate_origin_pattern(pattern: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = pattern.split_once("://") else {
        return Err("expected scheme://host[:port]");
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+')
    {
        return Err("invalid scheme");
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    if host.is_empty()
        || host.contains('*')
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err("invalid host (only a leftmost `*.` wildcard is allowed, no path)");
    }
    Ok(())
}

/// Matches an `Origin` header value against a validated pattern, ASCII case-insensitively.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    let (pattern, origin) = (pattern.to_ascii_lowercase(), origin.to_ascii_lowercase());
    match pattern.split_once("://*.") {
        Some((scheme, suffix)) => origin
            .strip_prefix(scheme)
            .and_then(|o| o.strip_prefix("://"))
            .and_then(|host| host.strip_suffix(suffix)?.strip_suffix('.'))
            // One or more DNS labels: `https://evil.test/x.example.com` is no subdomain.
            .is_some_and(|labels| {
                labels.split('.').all(|label| {
                    let dns = |b: u8| b.is_ascii_alphanumeric() || b == b'-';
                    !label.is_empty() && label.bytes().all(dns)
                })
            }),
        None => pattern == origin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = HubConfig::default();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(30));
        assert_eq!(c.pong_timeout, Duration::from_secs(60));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.close_timeout, Duration::from_secs(5));
        assert_eq!(c.write_delay, Duration::ZERO);
        assert_eq!(c.max_message_size, 64 * 1024);
        assert_eq!(c.max_queued_bytes, 1024 * 1024);
        assert_eq!(c.max_queued_frames, 16_384);
        assert_eq!(c.slow_consumer, SlowConsumerPolicy::Disconnect);
        assert_eq!(c.max_subscriptions, 1024);
        assert_eq!(c.max_channel_name_len, 256);
        assert!(c.client_publish.is_empty());
        assert!(!c.raw_messages);
        assert_eq!(c.max_connections, 65_536);
        let rate = c.rate_limit.expect("a rate limit by default");
        assert_eq!((rate.per_second, rate.burst), (100, 200));
        assert!(c.allowed_origins.is_empty());
        assert!(c.history.is_empty());
        assert_eq!(c.history_size, 1000);
        assert_eq!(c.history_ttl, Duration::from_secs(300));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn origin_patterns() {
        let cfg = HubConfig::default().allowed_origins(vec![
            "https://app.example.com".into(),
            "https://*.trusted.org".into(),
        ]);
        assert!(cfg.validate().is_ok());
        assert!(cfg.origin_allowed("https://app.example.com"));
        assert!(cfg.origin_allowed("HTTPS://APP.EXAMPLE.COM"));
        assert!(cfg.origin_allowed("https://a.trusted.org"));
        assert!(cfg.origin_allowed("https://a.b.trusted.org"));
        assert!(!cfg.origin_allowed("https://trusted.org"));
        assert!(!cfg.origin_allowed("https://eviltrusted.org"));
        assert!(!cfg.origin_allowed("http://app.example.com"));
        assert!(!cfg.origin_allowed("https://app.example.com.evil.com"));
        assert!(!cfg.origin_allowed("null"));
        assert!(HubConfig::default().origin_allowed("https://anything"));
        for bad in [
            "example.com",
            "https://",
            "https://a/b",
            "https://a.*.b",
            "*://x",
        ] {
            let cfg = HubConfig::default().allowed_origins(vec![bad.into()]);
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_values_are_errors_not_defaults() {
        let zero_rate = HubConfig::default().rate_limit(Some(RateLimit::new(0, 10)));
        assert_eq!(zero_rate.validate().unwrap_err().field(), "rate_limit");
        assert_eq!(
            HubConfig::default()
                .max_connections(0)
                .validate()
                .unwrap_err()
                .field(),
            "max_connections"
        );
        assert_eq!(
            HubConfig::default()
                .heartbeat_interval(Duration::from_secs(60))
                .validate()
                .unwrap_err()
                .field(),
            "pong_timeout"
        );
        assert!(HubConfig::default().rate_limit(None).validate().is_ok());
        let forever = HubConfig::default().history_ttl(Duration::MAX);
        assert_eq!(forever.validate().unwrap_err().field(), "history_ttl");
        let longest = HubConfig::default().history_ttl(MAX_HISTORY_TTL);
        assert!(longest.validate().is_ok());
        // Deadlines that far would overflow the clock: refused, never a panic later.
        let huge = Duration::from_secs_f64(1.5e19);
        let far = HubConfig::default().pong_timeout(huge);
        assert_eq!(far.validate().unwrap_err().field(), "pong_timeout");
        let far = HubConfig::default()
            .heartbeat_interval(Duration::from_secs_f64(1e19))
            .pong_timeout(huge);
        assert_eq!(far.validate().unwrap_err().field(), "heartbeat_interval");
        let far = HubConfig::default().write_timeout(Duration::MAX);
        assert_eq!(far.validate().unwrap_err().field(), "write_timeout");
    }
}
