//! Client configuration ([`ClientConfig`], validated in [`ClientConfig::validate`]), the
//! builder that starts a client ([`ClientBuilder`]) and the reconnect schedule ([`Backoff`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::proxy::{self, Proxy};
use super::{Events, ReconnectingClient};
use crate::error::ConfigError;

/// Request headers the client writes itself; [`ClientConfig::header`] refuses them.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-length",
];

/// Configuration of a [`ReconnectingClient`]: plain data with go-ws defaults, validated once by
/// [`ClientBuilder::connect`] (see [`validate`](Self::validate)).
///
/// `Debug` prints header names but never header values (they often hold credentials).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use wshub::client::ClientConfig;
///
/// let config = ClientConfig::default()
///     .initial_backoff(Duration::from_millis(500))
///     .max_retries(10)
///     .header("Authorization", "Bearer secret");
/// assert!(config.validate().is_ok());
/// assert!(!format!("{config:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Delay after the first failed dial. The default value is 1 s (as go-ws).
    ///
    /// The same schedule spaces redials after connections that keep ending within a second
    /// of starting (a server that accepts and closes at once), from the second such
    /// connection on, so the client never spins; the first redial after a drop is immediate.
    pub initial_backoff: Duration,
    /// Upper bound of the delay between dials. The default value is 30 s (as go-ws).
    pub max_backoff: Duration,
    /// Factor between consecutive delays: the delay after the n-th consecutive failed dial is
    /// `initial_backoff * backoff_multiplier^(n-1)`, capped at `max_backoff` (see [`Backoff`]).
    /// The default value is 2.0 (as go-ws).
    pub backoff_multiplier: f64,
    /// How many times a failed dial is retried before the client gives up with
    /// [`ClientError::MaxRetries`](super::ClientError::MaxRetries): `N` allows `N + 1`
    /// consecutive dials. `0` means unlimited. The count starts again after each successful
    /// connection. The default value is 0 (as go-ws).
    pub max_retries: u32,
    /// Random spread of each backoff delay, from 0.0 to 1.0: with jitter `j` the client sleeps
    /// a uniformly random time in `[delay * (1 - j), delay]`, so that many clients dropped by
    /// one server restart do not redial in lockstep. The default value is 0.0 (off, exactly
    /// the go-ws schedule).
    pub jitter: f64,
    /// Extra request headers sent with every upgrade request, e.g. `Authorization`. The
    /// default value is empty.
    pub headers: Vec<(String, String)>,
    /// Time allowed for one dial: DNS, TCP connect, TLS and the WebSocket handshake. The
    /// default value is 10 s.
    pub connect_timeout: Duration,
    /// How often the client sends a WebSocket ping. The default value is 30 s.
    pub keepalive_interval: Duration,
    /// A connection on which nothing at all (data, ping or pong) arrives for this long is
    /// considered dead and is replaced; must exceed `keepalive_interval`. The default value
    /// is 60 s.
    pub keepalive_timeout: Duration,
    /// A connection whose socket accepts no bytes for this long while data waits is dropped.
    /// The default value is 10 s.
    pub write_timeout: Duration,
    /// After the client sends its close frame (see
    /// [`ReconnectingClient::close`](super::ReconnectingClient::close)), how long it waits
    /// for the server's close frame. The default value is 5 s.
    pub close_timeout: Duration,
    /// Largest message accepted from the server, in bytes, fragments summed. A larger one is
    /// a protocol error (close code 1009) and the client reconnects. The default value is
    /// 16 MiB.
    pub max_message_size: usize,
    /// Split each text message on `\n` and deliver every non-empty line as its own message:
    /// go-ws batches several JSON messages into one frame this way. Turn it off for servers
    /// whose messages may contain raw newlines. The default value is `true`.
    pub split_lines: bool,
    /// Every text message must be JSON (each line a JSON value, whatever
    /// [`split_lines`](Self::split_lines) says), as wshub and go-ws always send. Anything else
    /// means a broken or hostile server: none of that message is delivered; the client closes
    /// with 1007 (invalid payload data), reports
    /// [`ClientError::InvalidJson`](super::ClientError::InvalidJson) and reconnects.
    /// Turn it off to receive any text (non-JSON servers). Binary messages are never checked.
    /// The default value is `true`.
    pub require_json: bool,
    /// Events buffered for the [`Events`] stream. When the buffer is full the connection
    /// stops reading until the application catches up (the server then sees a slow consumer).
    /// The default value is 1024.
    pub event_capacity: usize,
    /// Outgoing messages queued for the connection; [`ReconnectingClient::send`] waits for
    /// room when it is full. The default value is 256.
    pub send_queue_capacity: usize,
    /// TLS settings for `wss://` URLs. `None` uses rustls with the Mozilla root certificates
    /// of `webpki-roots`. Supply your own to trust other roots (a private CA, the system store
    /// via `rustls-native-certs`) or to present a client certificate; leave its ALPN list
    /// empty or `http/1.1`. The default value is `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether to dial through an HTTP proxy (`CONNECT`). The default value is
    /// [`Proxy::FromEnvironment`]: `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`, as go-ws's default
    /// dialer; loopback hosts always connect directly.
    pub proxy: Proxy,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            backoff_multiplier: 2.0,
            max_retries: 0,
            jitter: 0.0,
            headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            max_message_size: 16 << 20,
            split_lines: true,
            require_json: true,
            event_capacity: 1024,
            send_queue_capacity: 256,
            proxy: Proxy::FromEnvironment,
            tls: None,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ClientConfig")
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("backoff_multiplier", &self.backoff_multiplier)
            .field("max_retries", &self.max_retries)
            .field("jitter", &self.jitter)
            .field("headers", &header_names)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("split_lines", &self.split_lines)
            .field("require_json", &self.require_json)
            .field("event_capacity", &self.event_capacity)
            .field("send_queue_capacity", &self.send_queue_capacity)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .field("proxy", &self.proxy)
            .finish()
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

impl ClientConfig {
    setters! {
        /// Sets [`initial_backoff`](Self::initial_backoff) (default 1 s).
        initial_backoff: Duration;
        /// Sets [`max_backoff`](Self::max_backoff) (default 30 s).
        max_backoff: Duration;
        /// Sets [`backoff_multiplier`](Self::backoff_multiplier) (default 2.0).
        backoff_multiplier: f64;
        /// Sets [`max_retries`](Self::max_retries) (default 0: unlimited).
        max_retries: u32;
        /// Sets [`jitter`](Self::jitter) (default 0.0: off).
        jitter: f64;
        /// Sets [`connect_timeout`](Self::connect_timeout) (default 10 s).
        connect_timeout: Duration;
        /// Sets [`keepalive_interval`](Self::keepalive_interval) (default 30 s).
        keepalive_interval: Duration;
        /// Sets [`keepalive_timeout`](Self::keepalive_timeout) (default 60 s).
        keepalive_timeout: Duration;
        /// Sets [`write_timeout`](Self::write_timeout) (default 10 s).
        write_timeout: Duration;
        /// Sets [`close_timeout`](Self::close_timeout) (default 5 s).
        close_timeout: Duration;
        /// Sets [`max_message_size`](Self::max_message_size) (default 16 MiB).
        max_message_size: usize;
        /// Sets [`split_lines`](Self::split_lines) (default `true`).
        split_lines: bool;
        /// Sets [`require_json`](Self::require_json) (default `true`).
        require_json: bool;
        /// Sets [`event_capacity`](Self::event_capacity) (default 1024).
        event_capacity: usize;
        /// Sets [`send_queue_capacity`](Self::send_queue_capacity) (default 256).
        send_queue_capacity: usize;
    }

    /// Adds a request header sent with every upgrade request (e.g. `Authorization`). Headers
    /// the handshake sets itself (`Host`, `Upgrade`, `Connection`, `Sec-WebSocket-Key`,
    /// `Sec-WebSocket-Version`, `Sec-WebSocket-Extensions`, `Content-Length`) are refused by
    /// [`validate`](Self::validate). `Sec-WebSocket-Protocol` may be set: the server's choice
    /// must then be one of the offered protocols.
    ///
    /// # Examples
    /// ```
    /// use wshub::client::ClientConfig;
    /// let config = ClientConfig::default().header("Authorization", "Bearer t0ken");
    /// assert_eq!(config.headers.len(), 1);
    /// ```
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets [`tls`](Self::tls): the rustls configuration used for `wss://` URLs (default:
    /// `webpki-roots`).
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use wshub::client::{rustls, ClientConfig};
    ///
    /// // Trust only a private CA (add its certificate with `roots.add(der)`).
    /// let roots = rustls::RootCertStore::empty();
    /// let provider = Arc::new(rustls::crypto::ring::default_provider());
    /// let tls = rustls::ClientConfig::builder_with_provider(provider)
    ///     .with_safe_default_protocol_versions()
    ///     .unwrap()
    ///     .with_root_certificates(roots)
    ///     .with_no_client_auth();
    /// let config = ClientConfig::default().tls(Arc::new(tls));
    /// assert!(config.tls.is_some());
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`proxy`](Self::proxy) (default [`Proxy::FromEnvironment`]).
    ///
    /// # Examples
    /// ```
    /// use wshub::client::{ClientConfig, Proxy};
    /// let config = ClientConfig::default().proxy(Proxy::Direct);
    /// assert_eq!(config.proxy, Proxy::Direct);
    /// ```
    #[must_use]
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// The reconnect schedule these settings describe (jitter not included).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use wshub::client::ClientConfig;
    /// let backoff = ClientConfig::default().backoff();
    /// assert_eq!(backoff.delay(1), Duration::from_secs(1));
    /// assert_eq!(backoff.delay(3), Duration::from_secs(4));
    /// assert_eq!(backoff.delay(100), Duration::from_secs(30));
    /// ```
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            self.initial_backoff,
            self.backoff_multiplier,
            self.max_backoff,
        )
    }

    /// Checks every value and every combination.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first offending field: a zero duration or capacity, a
    /// duration above [`MAX_DURATION`](crate::MAX_DURATION) (10 years),
    /// `max_backoff < initial_backoff`, a multiplier below 1.0 or not finite, a jitter outside
    /// 0.0..=1.0, `keepalive_timeout <= keepalive_interval`, `max_message_size` under 125
    /// bytes, a header whose name or value is not valid HTTP or that the handshake sets
    /// itself, or a [`Proxy::Url`] that is not an `http://` URL.
    ///
    /// # Examples
    /// ```
    /// use wshub::client::ClientConfig;
    /// let err = ClientConfig::default().backoff_multiplier(0.5).validate().unwrap_err();
    /// assert_eq!(err.field(), "backoff_multiplier");
    /// let err = ClientConfig::default().header("Host", "x").validate().unwrap_err();
    /// assert_eq!(err.field(), "headers");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("initial_backoff", self.initial_backoff),
            ("max_backoff", self.max_backoff),
            ("connect_timeout", self.connect_timeout),
            ("keepalive_interval", self.keepalive_interval),
            ("keepalive_timeout", self.keepalive_timeout),
            ("write_timeout", self.write_timeout),
            ("close_timeout", self.close_timeout),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
            crate::config::check_at_most_max(field, value)?;
        }
        if self.max_backoff < self.initial_backoff {
            return Err(ConfigError::new(
                "max_backoff",
                format!(
                    "must be at least initial_backoff ({:?} < {:?})",
                    self.max_backoff, self.initial_backoff
                ),
            ));
        }
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return Err(ConfigError::new(
                "backoff_multiplier",
                format!(
                    "must be a finite number of at least 1.0, not {}",
                    self.backoff_multiplier
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(ConfigError::new(
                "jitter",
                format!("must be between 0.0 and 1.0, not {}", self.jitter),
            ));
        }
        if self.keepalive_timeout <= self.keepalive_interval {
            return Err(ConfigError::new(
                "keepalive_timeout",
                format!(
                    "must be greater than keepalive_interval ({:?} <= {:?})",
                    self.keepalive_timeout, self.keepalive_interval
                ),
            ));
        }
        if self.max_message_size < 125 {
            return Err(ConfigError::new(
                "max_message_size",
                "must be at least 125 bytes",
            ));
        }
        for (field, value) in [
            ("event_capacity", self.event_capacity),
            ("send_queue_capacity", self.send_queue_capacity),
        ] {
            if value == 0 {
                return Err(ConfigError::new(field, "must be greater than zero"));
            }
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ConfigError::new(
                    "headers",
                    format!("{name:?} is not a valid header name"),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err(ConfigError::new(
                    "headers",
                    format!("the value of {name:?} is not a valid header value"),
                ));
            }
            if RESERVED_HEADERS
                .iter()
                .any(|reserved| name.eq_ignore_ascii_case(reserved))
            {
                return Err(ConfigError::new(
                    "headers",
                    format!("{name:?} is set by the WebSocket handshake itself"),
                ));
            }
        }
        proxy::validate(&self.proxy)
    }
}

/// The reconnect delay schedule: `initial * multiplier^(attempt - 1)`, capped at `max`, as
/// go-ws computes it.
///
/// `attempt` counts consecutive failed dials, starting at 1; the client sleeps
/// `delay(attempt)` after each of them. A dial that follows a dropped connection is made at
/// once, without a delay.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use wshub::client::Backoff;
///
/// let ms = Duration::from_millis;
/// let backoff = Backoff::new(ms(100), 2.0, ms(1000));
/// let delays: Vec<_> = [1, 2, 3, 4, 5, 10].map(|n| backoff.delay(n)).into();
/// assert_eq!(delays, [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    multiplier: f64,
    max: Duration,
}

impl Backoff {
    /// A schedule starting at `initial`, growing by `multiplier` per attempt, capped at `max`.
    ///
    /// Values that [`ClientConfig::validate`] would refuse still give a defined schedule:
    /// a multiplier below 1.0 (or NaN) counts as 1.0, and the result never exceeds `max`.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use wshub::client::Backoff;
    /// let backoff = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(30));
    /// assert_eq!(backoff.delay(2), Duration::from_secs(2));
    /// ```
    pub fn new(initial: Duration, multiplier: f64, max: Duration) -> Backoff {
        Backoff {
            initial,
            multiplier,
            max,
        }
    }

    /// The delay after the `attempt`-th consecutive failed dial: `initial *
    /// multiplier^(attempt - 1)`, capped at `max`. Attempt 0 is treated as 1.
    ///
    /// The product is computed in nanoseconds and rounded to the nearest one, so that
    /// `100 ms * 1.5^2` is exactly 225 ms.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use wshub::client::Backoff;
    ///
    /// let ms = Duration::from_millis;
    /// let backoff = Backoff::new(ms(100), 1.5, ms(250));
    /// let delays: Vec<_> = (0..=5).map(|n| backoff.delay(n)).collect();
    /// assert_eq!(delays, [ms(100), ms(100), ms(150), ms(225), ms(250), ms(250)]);
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let multiplier = if self.multiplier >= 1.0 {
            self.multiplier
        } else {
            1.0
        };
        let max_nanos = self.max.as_nanos() as f64;
        // `min` returns the other operand when one is NaN (0 * inf), so this stays in range.
        let nanos = (self.initial.as_nanos() as f64 * multiplier.powi(exponent))
            .round()
            .min(max_nanos);
        if nanos >= max_nanos {
            return self.max;
        }
        // `nanos` is finite, non-negative and below `max`, so the cast is exact enough and
        // cannot saturate.
        Duration::from_nanos(nanos as u64)
    }
}

/// Starts a [`ReconnectingClient`]: a [`ClientConfig`] plus an optional
/// [`CancellationToken`], ending in [`connect`](Self::connect).
///
/// # Examples
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio_util::sync::CancellationToken;
/// use wshub::client::{ClientBuilder, ClientConfig};
///
/// let token = CancellationToken::new();
/// let (client, events) = ClientBuilder::new()
///     .config(ClientConfig::default().max_retries(5).header("Authorization", "Bearer t"))
///     .cancellation_token(token.clone())
///     .connect("wss://example.com/ws")?;
/// // ... later: stops the client (as client.close() does).
/// token.cancel();
/// client.closed().await?;
/// # drop(events); Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct ClientBuilder {
    config: ClientConfig,
    cancel: Option<CancellationToken>,
}

impl ClientBuilder {
    /// A builder with the default [`ClientConfig`].
    ///
    /// # Examples
    /// ```
    /// let builder = wshub::client::ClientBuilder::new();
    /// # drop(builder);
    /// ```
    pub fn new() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Replaces the configuration.
    ///
    /// # Examples
    /// ```
    /// use wshub::client::{ClientBuilder, ClientConfig};
    /// let builder = ClientBuilder::new().config(ClientConfig::default().max_retries(3));
    /// # drop(builder);
    /// ```
    #[must_use]
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Stops the client when `token` is cancelled, as [`ReconnectingClient::close`] does.
    /// [`close`](ReconnectingClient::close) does not cancel `token` itself (the client uses a
    /// child token).
    ///
    /// # Examples
    /// ```
    /// use tokio_util::sync::CancellationToken;
    /// let builder = wshub::client::ClientBuilder::new().cancellation_token(CancellationToken::new());
    /// # drop(builder);
    /// ```
    #[must_use]
    pub fn cancellation_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Validates the configuration and the URL, then starts the client's task, which connects
    /// to `url` (`ws://` or `wss://`) and keeps reconnecting until it is closed or gives up.
    /// Returns at once, without waiting for the first connection; watch the [`Events`] (or
    /// [`ReconnectingClient::state`]) for it.
    ///
    /// The task stops on [`ReconnectingClient::close`], on the cancellation token, when
    /// `max_retries` is exhausted, or once every [`ReconnectingClient`] handle and the
    /// [`Events`] stream are dropped.
    ///
    /// # Errors
    /// A [`ConfigError`] for an invalid configuration (see [`ClientConfig::validate`]) or URL
    /// (field `"url"`: not `ws://` or `wss://`, no host, user info, a fragment), or when the
    /// default TLS configuration cannot be built (field `"tls"`).
    ///
    /// # Panics
    /// Outside a Tokio runtime, as [`tokio::spawn`] does.
    ///
    /// # Examples
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use wshub::client::ClientBuilder;
    /// let err = ClientBuilder::new().connect("http://example.com/").unwrap_err();
    /// assert_eq!(err.field(), "url");
    /// # }
    /// ```
    pub fn connect(self, url: &str) -> Result<(ReconnectingClient, Events), ConfigError> {
        self.config.validate()?;
        let cancel = match &self.cancel {
            Some(token) => token.child_token(),
            None => CancellationToken::new(),
        };
        super::start(self.config, url, cancel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_match_go_ws() {
        let c = ClientConfig::default();
        assert_eq!(c.initial_backoff, Duration::from_secs(1));
        assert_eq!(c.max_backoff, Duration::from_secs(30));
        assert_eq!(c.backoff_multiplier, 2.0);
        assert_eq!(c.max_retries, 0);
        assert_eq!(c.jitter, 0.0);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn backoff_sequences() {
        let b = Backoff::new(ms(100), 2.0, ms(1000));
        let got: Vec<_> = [1, 2, 3, 4, 5, 10].map(|n| b.delay(n)).into();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        let b = Backoff::new(ms(100), 1.5, ms(250));
        let got: Vec<_> = (0..=5).map(|n| b.delay(n)).collect();
        assert_eq!(got, [ms(100), ms(100), ms(150), ms(225), ms(250), ms(250)]);
    }

    #[test]
    fn backoff_never_overflows_or_panics() {
        let b = Backoff::new(Duration::MAX, 10.0, Duration::MAX);
        assert_eq!(b.delay(u32::MAX), Duration::MAX);
        let b = Backoff::new(ms(1), f64::NAN, ms(50));
        assert_eq!(b.delay(7), ms(1));
        let b = Backoff::new(ms(0), f64::INFINITY, ms(50));
        assert!(b.delay(3) <= ms(50));
        let b = Backoff::new(ms(1), 2.0, ms(50));
        assert_eq!(b.delay(u32::MAX), ms(50));
    }

    #[test]
    fn validation_names_the_field() {
        let cases: Vec<(ClientConfig, &str)> = vec![
            (
                ClientConfig::default().initial_backoff(ms(0)),
                "initial_backoff",
            ),
            (ClientConfig::default().max_backoff(ms(10)), "max_backoff"),
            (
                ClientConfig::default().backoff_multiplier(0.9),
                "backoff_multiplier",
            ),
            (
                ClientConfig::default().backoff_multiplier(f64::NAN),
                "backoff_multiplier",
            ),
            (ClientConfig::default().jitter(1.5), "jitter"),
            (ClientConfig::default().jitter(-0.1), "jitter"),
            (
                ClientConfig::default().keepalive_timeout(Duration::from_secs(30)),
                "keepalive_timeout",
            ),
            (
                ClientConfig::default().connect_timeout(ms(0)),
                "connect_timeout",
            ),
            (
                ClientConfig::default().max_message_size(10),
                "max_message_size",
            ),
            (ClientConfig::default().event_capacity(0), "event_capacity"),
            (
                ClientConfig::default().send_queue_capacity(0),
                "send_queue_capacity",
            ),
            (ClientConfig::default().header("Bad Name", "x"), "headers"),
            (ClientConfig::default().header("X-A", "a\r\nb"), "headers"),
            (
                ClientConfig::default().header("sec-websocket-key", "x"),
                "headers",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field(), field, "{config:?}");
        }
        assert!(ClientConfig::default()
            .header("Sec-WebSocket-Protocol", "chat")
            .header("Authorization", "Bearer x")
            .jitter(1.0)
            .validate()
            .is_ok());
    }
}
