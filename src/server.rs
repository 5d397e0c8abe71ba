//! The `wshub` server: a [`Hub`] behind one HTTP listener with the WebSocket endpoint and the
//! HTTP publish API.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /ws` | WebSocket endpoint ([`Hub::upgrade`]) |
//! | `POST /api/publish` | body `{"channel":C,"type"?:T,"data"?:D,"processId"?:P}`; `type` defaults to `event` |
//! | `POST /api/broadcast` | body `{"type"?:T,"data"?:D}` |
//! | `GET /api/stats[?top=N]` | `{"clients":N,"channels":M,"subscribers":{C:n,..},"counters":{..}}` (`subscribers`: the `top` channels with the most subscribers, 1000 by default), plus `"cluster":{"nodes":N,"channels":M,"clients":C}` with Redis |
//! | `GET /api/history?channel=C&since=N&limit=L` | `{"channel":C,"epoch":E,"offset":N,"publications":[..]}` (channels with history) |
//! | `GET /healthz` | `{"status":"ok"}`, or 503 while shutting down |
//! | `GET /metrics` | the stats and counters in the Prometheus text format (`wshub_clients`, `wshub_delivered_total`, ...) |
//!
//! Publish and broadcast answer 200 with the [`PublishReport`](crate::PublishReport) as JSON.
//! Errors are `{"error":"<reason>"}`: 400 bad body, 401 missing or wrong API key, 404, 405,
//! 413 body larger than [`ServerConfig::max_body_size`], 503 shutting down. With an API key
//! configured, `/api/*` and `/metrics` require `Authorization: Bearer <key>`.
//!
//! With [`ServerConfig::tls`] every route is served over TLS (`wss://` and `https://`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::PublishError;
use crate::http::{Body, Handshake};
use crate::hub::{HistoryError, Hub, ShutdownReport};
use crate::message::{Json, Message};

/// rustls, as the server uses it (for [`ServerConfig::tls`]).
pub use tokio_rustls::rustls;

/// Configuration of the HTTP side of the `wshub` server.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on. The default value is `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// When set, `/api/*` and `/metrics` require `Authorization: Bearer <key>`. Without a key
    /// they answer only requests addressed to an IP address or `localhost` (a defence against
    /// DNS rebinding). The default value is `None`.
    pub api_key: Option<String>,
    /// Largest accepted HTTP API request body in bytes; larger ones get 413. The default value
    /// is 1 MiB.
    pub max_body_size: usize,
    /// How long shutdown waits for clients to receive their queued messages and close.
    /// The default value is 10 s.
    pub shutdown_timeout: Duration,
    /// A connection must deliver a complete HTTP request head within this time, or it is
    /// closed (slowloris); an HTTP API request must deliver its body within this time too, or
    /// it gets 408. The default value is 10 s.
    pub handshake_timeout: Duration,
    /// Most connections in the HTTP phase at once (WebSocket connections are counted by
    /// [`HubConfig::max_connections`](crate::HubConfig::max_connections) once upgraded).
    /// A connection accepted beyond it is closed at once. With
    /// [`max_body_size`](Self::max_body_size), it bounds the memory HTTP requests can hold.
    /// The default value is 1024.
    pub max_http_connections: usize,
    /// Largest HTTP request head in bytes (at least 8192); a bigger one gets 431. The default
    /// value is 16 KiB.
    pub max_header_size: usize,
    /// Serve TLS (`wss://`, `https://`) with this rustls configuration, e.g. from
    /// [`tls_from_pem_files`]. Its ALPN list may offer only `http/1.1` (or nothing):
    /// [`Server::bind`] refuses anything else. The TLS handshake must complete within
    /// [`handshake_timeout`](Self::handshake_timeout), and then the request head within
    /// another. The default value is `None` (plain TCP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("max_body_size", &self.max_body_size)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_http_connections", &self.max_http_connections)
            .field("max_header_size", &self.max_header_size)
            .field("tls", &self.tls.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A rustls server configuration from a PEM certificate chain and an unencrypted PEM private
/// key (PKCS#8, PKCS#1 or SEC1; the first key in the file), offering HTTP/1.1 by ALPN.
///
/// # Errors
/// An [`io::Error`] naming the file that cannot be read or parsed (an encrypted key included),
/// or saying that the key does not match the certificate.
pub fn tls_from_pem_files(
    cert_chain: &std::path::Path,
    key: &std::path::Path,
) -> io::Result<Arc<rustls::ServerConfig>> {
    use tokio_rustls::rustls::pki_types::pem::Error as PemError;
    let invalid = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: {e}", what.display()),
        )
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    };
    let cert_pem = read(cert_chain)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert_chain, &e))?;
    if certs.is_empty() {
        return Err(invalid(cert_chain, &"no PEM CERTIFICATE section"));
    }
    let key_pem = read(key)?;
    if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(invalid(key, &"encrypted private keys are not supported"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        PemError::NoItemsFound => invalid(
            key,
            &"no PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY section",
        ),
        e => invalid(key, &e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the key in {} does not match the certificate in {}",
                    key.display(),
                    cert_chain.display()
                ),
            ),
            e => invalid(cert_chain, &e),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            max_body_size: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_http_connections: 1024,
            max_header_size: 16 * 1024,
            tls: None,
        }
    }
}

impl ServerConfig {
    /// Sets [`listen`](Self::listen) (default `127.0.0.1:8080`).
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets [`api_key`](Self::api_key) (default none).
    #[must_use]
    pub fn api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key;
        self
    }

    /// Sets [`max_body_size`](Self::max_body_size) (default 1 MiB).
    #[must_use]
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// Sets [`handshake_timeout`](Self::handshake_timeout) (default 10 s).
    #[must_use]
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`max_http_connections`](Self::max_http_connections) (default 1024).
    #[must_use]
    pub fn max_http_connections(mut self, n: usize) -> Self {
        self.max_http_connections = n;
        self
    }

    /// Sets [`max_header_size`](Self::max_header_size) (default 16 KiB).
    #[must_use]
    pub fn max_header_size(mut self, bytes: usize) -> Self {
        self.max_header_size = bytes;
        self
    }

    /// Sets [`tls`](Self::tls) (default none: plain TCP).
    #[must_use]
    pub fn tls(mut self, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        self.tls = tls;
        self
    }

    /// Sets [`shutdown_timeout`](Self::shutdown_timeout) (default 10 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

/// A bound `wshub` server.
///
/// # Examples
/// ```no_run
/// # #[tokio::main] async fn main() -> std::io::Result<()> {
/// use wshub::{server::{Server, ServerConfig}, Hub};
/// let server = Server::bind(Hub::new(), ServerConfig::default()).await?;
/// println!("listening on {}", server.local_addr());
/// server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    hub: Hub,
    config: Arc<ServerConfig>,
    listener: TcpListener,
}

impl Server {
    /// Binds the listener.
    ///
    /// # Errors
    /// The I/O error from binding [`ServerConfig::listen`], or `InvalidInput` for a setting
    /// out of range (including a TLS configuration whose ALPN list offers more than
    /// `http/1.1`).
    pub async fn bind(hub: Hub, config: ServerConfig) -> io::Result<Server> {
        if config.max_header_size < 8192
            || config.handshake_timeout.is_zero()
            || config.max_http_connections == 0
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_header_size must be at least 8192, and handshake_timeout and \
                 max_http_connections greater than zero",
            ));
        }
        if let Some(tls) = &config.tls {
            if tls.alpn_protocols.iter().any(|p| p != b"http/1.1") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "tls: the server speaks HTTP/1.1 only; its ALPN list may hold http/1.1 alone",
                ));
            }
        }
        for (field, value) in [
            ("handshake_timeout", config.handshake_timeout),
            ("shutdown_timeout", config.shutdown_timeout),
        ] {
            crate::config::check_at_most_max(field, value)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Server {
            hub,
            config: Arc::new(config),
            listener,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The hub this server serves.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Serves until `shutdown` completes, then stops accepting, shuts the hub down (clients
    /// get their queued messages and close 1001) and lets in-flight HTTP requests finish,
    /// each within [`ServerConfig::shutdown_timeout`].
    ///
    /// # Errors
    /// Never fails once bound; accept errors (e.g. too many open files) are logged and
    /// retried after a short pause.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<ShutdownReport> {
        let Server {
            hub,
            config,
            listener,
        } = self;
        let connections = TaskTracker::new();
        let stop = CancellationToken::new();
        let tls = config.tls.clone().map(TlsAcceptor::from);
        let http_slots = Arc::new(Semaphore::new(config.max_http_connections));
        let mut last_refusal_log: Option<tokio::time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(slot) = Arc::clone(&http_slots).try_acquire_owned() else {
                            // Closed at once: the HTTP phase holds no more sockets (and
                            // request bodies) than configured.
                            let now = tokio::time::Instant::now();
                            if last_refusal_log.is_none_or(|t| now - t >= Duration::from_secs(1)) {
                                last_refusal_log = Some(now);
                                tracing::warn!(
                                    %peer,
                                    limit = config.max_http_connections,
                                    "too many HTTP connections: closing new ones"
                                );
                            }
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        let (hub, config, stop) = (hub.clone(), Arc::clone(&config), stop.clone());
                        let tls = tls.clone();
                        connections.spawn(async move {
                            match tls {
                                None => serve_http(TokioIo::new(tcp), hub, config, stop).await,
                                Some(acceptor) => {
                                    let timeout = config.handshake_timeout;
                                    let handshake = tokio::time::timeout(timeout, acceptor.accept(tcp));
                                    tokio::select! {
                                        done = handshake => match done {
                                            Ok(Ok(tls)) => {
                                                serve_http(TokioIo::new(tls), hub, config, stop).await;
                                            }
                                            Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                                        },
                                        // Shutting down: a handshake still under way is dropped.
                                        () = stop.cancelled() => {}
                                    }
                                }
                            }
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        stop.cancel();
        let report = hub.shutdown(config.shutdown_timeout).await;
        connections.close();
        let _ = tokio::time::timeout(config.shutdown_timeout, connections.wait()).await;
        Ok(report)
    }
}

async fn serve_http<I>(io: TokioIo<I>, hub: Hub, config: Arc<ServerConfig>, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (handshake_timeout, max_header_size) = (config.handshake_timeout, config.max_header_size);
    let service = service_fn(move |req| {
        let (hub, config) = (hub.clone(), Arc::clone(&config));
        async move { Ok::<_, Infallible>(route(req, &hub, &config).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(max_header_size)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn route(mut req: Request<Incoming>, hub: &Hub, config: &ServerConfig) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    match (path.as_str(), method) {
        ("/ws", Method::GET) => hub.upgrade(&mut req),
        ("/healthz", Method::GET) => {
            if hub.is_shutting_down() {
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    br#"{"status":"shutting down"}"#.to_vec(),
                )
            } else {
                json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
            }
        }
        ("/metrics", Method::GET) => match authorize(&req, hub, config) {
            Some(refused) => refused,
            None => metrics(hub).await,
        },
        ("/api/publish" | "/api/broadcast" | "/api/stats" | "/api/history", method) => {
            if let Some(resp) = authorize(&req, hub, config) {
                return resp;
            }
            match (path.as_str(), method) {
                ("/api/publish", Method::POST) => api_publish(req, hub, config, true).await,
                ("/api/broadcast", Method::POST) => api_publish(req, hub, config, false).await,
                ("/api/stats", Method::GET) => api_stats(&req, hub).await,
                ("/api/history", Method::GET) => api_history(&req, hub).await,
                ("/api/stats" | "/api/history", _) => not_allowed("GET"),
                _ => not_allowed("POST"),
            }
        }
        ("/ws" | "/healthz" | "/metrics", _) => not_allowed("GET"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `None` when authorised, else the 403 or 401 response.
///
/// A browser page of another origin must not drive the API: a plain form or `fetch` POST
/// needs no CORS preflight, so without this check any web page could publish through a
/// server on the visitor's machine or network. Browsers send `Origin` with such requests;
/// it must be this server's own origin or one of
/// [`HubConfig::allowed_origins`](crate::HubConfig::allowed_origins) (when that list is set).
/// Clients that send no `Origin` (curl, backends) are not affected.
///
/// Without an API key, the API also answers only requests addressed to an IP address or
/// `localhost`: a page whose own host name was re-pointed at this server (DNS rebinding) is
/// same-origin to the browser, but its requests carry that name in `Host`.
fn authorize(req: &Request<Incoming>, hub: &Hub, config: &ServerConfig) -> Option<Response<Body>> {
    let handshake = Handshake::new(req);
    if config.api_key.is_none() && !handshake.header("host").is_none_or(is_address_host) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "without an API key the HTTP API answers only requests to an IP address or \
             localhost (set --api-key to serve it under a host name)",
        ));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        // A value that is not visible ASCII is on no list and names no host: refused.
        let origin = origin.to_str().unwrap_or_default();
        let listed =
            !hub.config().allowed_origins.is_empty() && hub.config().origin_allowed(origin);
        if !listed && !handshake.is_same_origin() {
            return Some(error(
                StatusCode::FORBIDDEN,
                "cross-origin API request refused",
            ));
        }
    }
    let key = config.api_key.as_ref()?;
    let given = handshake.bearer_token().unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        return None;
    }
    let mut resp = error(StatusCode::UNAUTHORIZED, "missing or invalid API key");
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(resp)
}

/// Whether a `Host` header names an IP address or `localhost` (with any port), not a DNS
/// name that someone else could point at this server.
fn is_address_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        Some(rest) => {
            return rest
                .split_once(']')
                .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
}

/// Compares without an early exit, so the time taken does not reveal the matching prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

/// Static client tokens for the WebSocket endpoint: each token maps to an identity.
///
/// The token is taken from `Authorization: Bearer`, the `token`/`access_token` query
/// parameter or the `wshub_token` cookie ([`Handshake::token`]) and compared in constant time.
/// The `wshub` binary's `--auth-token ID=TOKEN` uses it.
///
/// # Examples
/// ```
/// use wshub::{server::TokenAuth, Hub};
/// let auth = TokenAuth::new([("alice", "s3cret")]);
/// let hub = Hub::builder().authenticate(move |req| auth.check(req)).build().unwrap();
/// # drop(hub);
/// ```
#[derive(Clone)]
pub struct TokenAuth {
    tokens: Arc<[(String, String)]>,
}

impl TokenAuth {
    /// `(identity, token)` pairs.
    pub fn new<I, S>(tokens: impl IntoIterator<Item = (I, S)>) -> Self
    where
        I: Into<String>,
        S: Into<String>,
    {
        TokenAuth {
            tokens: tokens
                .into_iter()
                .map(|(i, t)| (i.into(), t.into()))
                .collect(),
        }
    }

    /// The identity whose token the request carries.
    ///
    /// # Errors
    /// A reason for the 401 answer: no token, or an unknown one.
    pub fn check(&self, request: &Handshake<'_>) -> Result<String, String> {
        let Some(given) = request.token() else {
            return Err("missing token".to_owned());
        };
        // Every configured token is compared, so timing does not reveal which one matched.
        let mut found = None;
        for (identity, token) in self.tokens.iter() {
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                found = Some(identity);
            }
        }
        found.cloned().ok_or_else(|| "invalid token".to_owned())
    }
}

impl std::fmt::Debug for TokenAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens are secrets: only the identities are shown.
        let ids: Vec<&str> = self.tokens.iter().map(|(i, _)| i.as_str()).collect();
        f.debug_struct("TokenAuth")
            .field("identities", &ids)
            .finish()
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, rename = "processId")]
    process_id: Option<String>,
}

async fn api_publish(
    req: Request<Incoming>,
    hub: &Hub,
    config: &ServerConfig,
    to_channel: bool,
) -> Response<Body> {
    let body = match read_body(req, config.max_body_size, config.handshake_timeout).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let parsed: PublishBody<'_> = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
    };
    let mut message = Message::new(parsed.kind.unwrap_or_else(|| "event".to_owned()));
    if let Some(data) = parsed.data {
        match Json::parse(data.get()) {
            Ok(d) => message = message.with_data(d),
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid data: {e}")),
        }
    }
    if let Some(pid) = parsed.process_id {
        message = message.with_process_id(pid);
    }
    let result = if to_channel {
        let Some(channel) = parsed.channel else {
            return error(StatusCode::BAD_REQUEST, "missing field \"channel\"");
        };
        hub.publish(&channel, &message).await
    } else {
        hub.broadcast(&message).await
    };
    match result {
        Ok(report) => json(
            StatusCode::OK,
            serde_json::to_vec(&report).unwrap_or_default(),
        ),
        Err(e @ PublishError::ShuttingDown) => {
            error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        Err(e @ PublishError::TooLarge { .. }) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string())
        }
        // Delivered on this node, not to the others: 503 with what this node delivered.
        Err(ref e @ PublishError::Broker { ref local, .. }) => {
            let body = serde_json::json!({ "error": e.to_string(), "local": local });
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

/// Reads the whole body, at most `limit` bytes within `timeout`.
async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(timeout, Limited::new(req.into_body(), limit).collect());
    let Ok(read) = read.await else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request body did not arrive within {timeout:?}"),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("could not read body: {e}"),
        )),
    }
}

/// `GET /api/history?channel=C&since=N&limit=L` (since defaults to 0, limit to 100, at most
/// 1000): `{"channel":C,"epoch":E,"offset":N,"publications":[...]}` with each publication the
/// exact JSON clients received.
async fn api_history(req: &Request<Incoming>, hub: &Hub) -> Response<Body> {
    let query = Handshake::new(req);
    let Some(channel) = query.query("channel") else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing query parameter \"channel\"",
        );
    };
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match query.query(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name} must be a non-negative integer")),
        }
    };
    let (since, limit) = match (number("since", 0), number("limit", 100)) {
        (Ok(s), Ok(l)) => (s, l.min(1000) as usize),
        (Err(reason), _) | (_, Err(reason)) => return error(StatusCode::BAD_REQUEST, &reason),
    };
    let history = match hub.history(&channel, since, limit).await {
        Ok(h) => h,
        Err(e @ HistoryError::NotEnabled) => return error(StatusCode::NOT_FOUND, &e.to_string()),
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let mut body =
        Vec::with_capacity(64 + history.publications.iter().map(String::len).sum::<usize>());
    body.extend_from_slice(b"{\"channel\":");
    crate::message::json::write_string(&mut body, &channel);
    body.extend_from_slice(b",\"epoch\":");
    crate::message::json::write_string(&mut body, &history.epoch);
    body.extend_from_slice(format!(",\"offset\":{},\"publications\":[", history.offset).as_bytes());
    for (i, p) in history.publications.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(p.as_bytes());
    }
    body.extend_from_slice(b"]}");
    json(StatusCode::OK, body)
}

/// Channels listed in `/api/stats` unless `?top=N` says otherwise.
const STATS_TOP_DEFAULT: usize = 1000;

async fn api_stats(req: &Request<Incoming>, hub: &Hub) -> Response<Body> {
    let top = match Handshake::new(req).query("top") {
        None => STATS_TOP_DEFAULT,
        Some(v) if v == "all" => usize::MAX,
        Some(v) => match v.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "top must be a non-negative integer or \"all\"",
                )
            }
        },
    };
    // The channels with the most subscribers (by name among equals): a server with very many
    // channels answers with a bounded body.
    let mut counts = hub.channel_subscriber_counts();
    counts.sort_unstable_by(|(a, n), (b, m)| m.cmp(n).then_with(|| a.as_str().cmp(b.as_str())));
    counts.truncate(top);
    let subscribers: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(name, n)| (name.as_str().to_owned(), n.into()))
        .collect();
    let stats = hub.stats();
    // A struct, not `json!`: `json!` sorts keys, and the documented (go-ws `Stats`) order is
    // `clients` then `channels`.
    let body = StatsBody {
        clients: stats.clients,
        channels: stats.channels,
        subscribers,
        counters: hub.counters(),
        cluster: match hub.cluster_stats().await {
            Ok(None) => None,
            Ok(Some(c)) => serde_json::to_value(c).ok(),
            Err(e) => Some(serde_json::json!({ "error": e.to_string() })),
        },
    };
    json(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// `GET /metrics`: the stats and counters in the Prometheus text format (version 0.0.4); with
/// a broker also the cluster counts (one broker round trip; left out when the broker does not
/// answer).
async fn metrics(hub: &Hub) -> Response<Body> {
    use std::fmt::Write as _;
    let stats = hub.stats();
    let c = hub.counters();
    let b = c.broker;
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let rows: [(&str, &str, &str, u64); 21] = [
        (
            "clients",
            "gauge",
            "Connected WebSocket clients.",
            as_u64(stats.clients),
        ),
        (
            "channels",
            "gauge",
            "Channels with at least one local subscriber.",
            as_u64(stats.channels),
        ),
        (
            "published_total",
            "counter",
            "Messages delivered to this node's subscribers (one per message).",
            c.published,
        ),
        (
            "delivered_total",
            "counter",
            "Messages queued for clients (one per recipient).",
            c.delivered,
        ),
        (
            "dropped_total",
            "counter",
            "Messages dropped for slow consumers (policy drop).",
            c.dropped,
        ),
        (
            "slow_consumer_disconnects_total",
            "counter",
            "Clients disconnected as slow consumers.",
            c.slow_consumer_disconnects,
        ),
        (
            "connections_total",
            "counter",
            "WebSocket connections accepted.",
            c.connections,
        ),
        (
            "disconnections_total",
            "counter",
            "WebSocket connections ended.",
            c.disconnections,
        ),
        (
            "protocol_errors_total",
            "counter",
            "Connections closed for a protocol violation.",
            c.protocol_errors,
        ),
        (
            "hook_panics_total",
            "counter",
            "Hook calls that panicked (contained).",
            c.hook_panics,
        ),
        (
            "socket_writes_total",
            "counter",
            "Vectored writes to client sockets.",
            c.socket_writes,
        ),
        (
            "frames_written_total",
            "counter",
            "Frames completed by those writes.",
            c.frames_written,
        ),
        (
            "history_gaps_total",
            "counter",
            "Times this node missed broker publications on a history channel and closed its subscribers (1012) to resume.",
            c.history_gaps,
        ),
        (
            "history_unavailable_total",
            "counter",
            "Subscribes on a history channel closed with 1013 because the broker could not read the history.",
            c.history_unavailable,
        ),
        (
            "remote_rejected_total",
            "counter",
            "Messages from the broker not delivered: not UTF-8, or larger than a client's queue bound.",
            c.remote_rejected,
        ),
        (
            "broker_published_total",
            "counter",
            "Messages published to the broker.",
            b.published,
        ),
        (
            "broker_publish_errors_total",
            "counter",
            "Publishes the broker refused or that failed.",
            b.publish_errors,
        ),
        (
            "broker_received_total",
            "counter",
            "Messages received from other nodes.",
            b.received,
        ),
        (
            "broker_reconnects_total",
            "counter",
            "Broker subscriber reconnections.",
            b.reconnects,
        ),
        (
            "broker_connected_shards",
            "gauge",
            "Broker shards whose subscriber connection is up.",
            as_u64(b.connected_shards),
        ),
        (
            "broker_shards",
            "gauge",
            "Configured broker shards.",
            as_u64(b.shards),
        ),
    ];
    let cluster = match hub.cluster_stats().await {
        Ok(Some(c)) => vec![
            (
                "cluster_nodes",
                "gauge",
                "Nodes connected to the broker.",
                as_u64(c.nodes),
            ),
            (
                "cluster_channels",
                "gauge",
                "Channels with a subscriber on some node.",
                as_u64(c.channels),
            ),
            (
                "cluster_clients",
                "gauge",
                "Clients connected to any node (other nodes' shares up to 0.25 s old).",
                as_u64(c.clients),
            ),
        ],
        _ => Vec::new(),
    };
    let mut out = String::with_capacity(4096);
    for (name, kind, help, value) in rows.into_iter().chain(cluster) {
        let _ = writeln!(
            out,
            "# HELP wshub_{name} {help}\n# TYPE wshub_{name} {kind}\nwshub_{name} {value}"
        );
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The `/api/stats` body, fields in wire order.
#[derive(Serialize)]
struct StatsBody {
    clients: usize,
    channels: usize,
    subscribers: serde_json::Map<String, serde_json::Value>,
    counters: crate::hub::Counters,
    /// With a broker only: counts over every node, or the broker's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<serde_json::Value>,
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, reason: &str) -> Response<Body> {
    json(
        status,
        serde_json::to_vec(&serde_json::json!({ "error": reason })).unwrap_or_default(),
    )
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = ServerConfig::default();
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.api_key, None);
        assert_eq!(c.max_body_size, 1024 * 1024);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_header_size, 16 * 1024);
        assert_eq!(c.max_http_connections, 1024);
        assert!(c.tls.is_none());
    }

    #[test]
    fn address_hosts_are_ip_literals_and_localhost_only() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8080",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:8080",
            "localhost",
            "LocalHost:8080",
            "localhost.:1",
            "app.localhost:3000",
        ] {
            assert!(is_address_host(host), "{host}");
        }
        for host in [
            "example.com",
            "rebind.attacker:8080",
            "127.0.0.1.nip.io",
            "localhost.evil.com",
            "[::1",
            "[example]:80",
            "",
            "1.2.3",
        ] {
            assert!(!is_address_host(host), "{host}");
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
