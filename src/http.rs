//! HTTP integration: upgrading a hyper (or axum) request to a hub connection.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use fastwebsockets::upgrade::UpgradeFut;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::hub::{Hub, Slot};
use crate::session::{self, Session};

/// The response body type of [`Hub::upgrade`].
pub type Body = Full<Bytes>;

/// The parts of a WebSocket upgrade request an authentication hook may look at.
pub struct Handshake<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    /// The `Origin` was checked against a non-empty
    /// [`HubConfig::allowed_origins`](crate::HubConfig::allowed_origins).
    origin_listed: bool,
}

impl<'a> Handshake<'a> {
    /// A view of `request`.
    pub fn new<B>(request: &'a Request<B>) -> Self {
        Handshake {
            uri: request.uri(),
            headers: request.headers(),
            origin_listed: false,
        }
    }

    /// The request URI (path and query string).
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// All request headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Origin` header.
    pub fn origin(&self) -> Option<&'a str> {
        self.header("origin")
    }

    /// Whether the request comes from a page of this server's own origin, or not from a
    /// browser page at all: no `Origin` header, or one whose `host[:port]` is the `Host`
    /// header's (ASCII case-insensitive). The scheme is not compared (the request does not
    /// say whether it came over TLS), so a page of `http://host` counts as the same origin as
    /// a server on `https://host`.
    ///
    /// # Examples
    /// ```
    /// let req = http::Request::get("/ws").header("host", "chat.example.com")
    ///     .header("origin", "https://chat.example.com").body(()).unwrap();
    /// assert!(wshub::Handshake::new(&req).is_same_origin());
    /// let req = http::Request::get("/ws").header("host", "chat.example.com")
    ///     .header("origin", "https://evil.example").body(()).unwrap();
    /// assert!(!wshub::Handshake::new(&req).is_same_origin());
    /// ```
    pub fn is_same_origin(&self) -> bool {
        let Some(origin) = self.headers.get(header::ORIGIN) else {
            return true;
        };
        let authority = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, authority)| authority);
        match (authority, self.header("host")) {
            (Some(a), Some(host)) => !a.is_empty() && a.eq_ignore_ascii_case(host),
            _ => false,
        }
    }

    /// A query string parameter, percent-decoded (`+` is a space).
    ///
    /// # Examples
    /// ```
    /// let req = http::Request::get("/ws?token=a%2Bb&x=1").body(()).unwrap();
    /// assert_eq!(wshub::Handshake::new(&req).query("token").as_deref(), Some("a+b"));
    /// ```
    pub fn query(&self, name: &str) -> Option<Cow<'a, str>> {
        self.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k).as_deref() == Some(name))
                .then(|| percent_decode(v))
                .flatten()
        })
    }

    /// A cookie's value from the `Cookie` header(s).
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then_some(v.trim_matches('"'))
            })
    }

    /// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
    pub fn bearer_token(&self) -> Option<&'a str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// A client token from, in order: the bearer header, the `token` or `access_token` query
    /// parameter, or the `wshub_token` cookie (browsers cannot set headers on a WebSocket).
    ///
    /// The browser attaches a cookie whichever page opens the connection, so a foreign page
    /// could borrow it (cross-site WebSocket hijacking). The cookie therefore counts only when
    /// the request [is same-origin](Self::is_same_origin), or when [`Hub::upgrade`] checked
    /// its `Origin` against a non-empty
    /// [`HubConfig::allowed_origins`](crate::HubConfig::allowed_origins).
    pub fn token(&self) -> Option<Cow<'a, str>> {
        self.bearer_token()
            .map(Cow::Borrowed)
            .or_else(|| self.query("token"))
            .or_else(|| self.query("access_token"))
            .or_else(|| {
                (self.origin_listed || self.is_same_origin())
                    .then(|| self.cookie("wshub_token").map(Cow::Borrowed))
                    .flatten()
            })
    }
}

impl fmt::Debug for Handshake<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Headers may carry credentials: only their names are shown.
        f.debug_struct("Handshake")
            .field("path", &self.uri.path())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Decodes `%XX` escapes and `+`; `None` for malformed escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.contains(['%', '+']) {
        return Some(Cow::Borrowed(s));
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                // Exactly two hex digits (`u8::from_str_radix` would also take "+a").
                let digit = |b: u8| char::from(b).to_digit(16);
                let (high, low) = (digit(bytes.next()?)?, digit(bytes.next()?)?);
                out.push((high * 16 + low) as u8);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

impl Hub {
    /// Answers a WebSocket upgrade request and serves the connection on this hub.
    ///
    /// Returns `101 Switching Protocols` and spawns the session (on the current tokio runtime)
    /// once hyper hands over the connection; the session registers the client, fires the
    /// connect hook and runs until the connection ends. Anything else is answered with
    /// `{"error":"<reason>"}`:
    /// - `405` for a method other than `GET`;
    /// - `400` for a request that is not a WebSocket upgrade (no `Upgrade: websocket` and
    ///   `Connection: upgrade`), or whose `Sec-WebSocket-Key` is missing, repeated or not
    ///   base64 of 16 bytes;
    /// - `426` with `Sec-WebSocket-Version: 13` when the version is missing, repeated or not 13;
    /// - `403` for an `Origin` outside [`HubConfig::allowed_origins`](crate::HubConfig::allowed_origins);
    /// - `401` when the [authentication hook](crate::HubBuilder::authenticate) refuses;
    /// - `503` at [`HubConfig::max_connections`](crate::HubConfig::max_connections) or while
    ///   the hub is shutting down.
    ///
    /// Mount it in hyper with `service_fn` or in axum as a handler (see `examples/hyper.rs`
    /// and `examples/axum.rs`). The HTTP connection must be served with upgrades enabled
    /// (`hyper::server::conn::http1::Builder::serve_connection(..).with_upgrades()`; axum does
    /// this).
    ///
    /// # Examples
    /// ```no_run
    /// use std::convert::Infallible;
    /// use hyper::{body::Incoming, service::service_fn, Request};
    ///
    /// let hub = wshub::Hub::new();
    /// let service = service_fn(move |mut req: Request<Incoming>| {
    ///     let hub = hub.clone();
    ///     async move { Ok::<_, Infallible>(hub.upgrade(&mut req)) }
    /// });
    /// # drop(service);
    /// ```
    pub fn upgrade<B>(&self, request: &mut Request<B>) -> Response<Body> {
        if self.is_shutting_down() {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "hub is shutting down");
        }
        if request.method() != hyper::Method::GET {
            // RFC 6455 §4.1: the opening handshake is a GET request.
            let mut resp = error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET request",
            );
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
            return resp;
        }
        if !fastwebsockets::upgrade::is_upgrade_request(request) {
            return error_response(
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade request",
            );
        }
        if let Some(resp) = check_handshake_fields(request.headers()) {
            return resp;
        }
        let mut handshake = Handshake::new(request);
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            // A value that is not visible ASCII matches no pattern (browsers send ASCII).
            if !self
                .config()
                .origin_allowed(origin.to_str().unwrap_or_default())
            {
                return error_response(StatusCode::FORBIDDEN, "origin not allowed");
            }
            handshake.origin_listed = !self.config().allowed_origins.is_empty();
        }
        let identity = match self.authenticate(&handshake) {
            Ok(identity) => identity.map(Arc::<str>::from),
            Err(reason) => {
                let mut resp = error_response(StatusCode::UNAUTHORIZED, &reason);
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
        };
        let Some(slot) = self.reserve_slot() else {
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "too many connections");
        };
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut *request) {
            Ok(pair) => pair,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid WebSocket upgrade request: {e}"),
                )
            }
        };
        self.tracker().spawn(Connection {
            slot,
            stage: Stage::Upgrading { upgrade, identity },
        });
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, Full::new(Bytes::new()))
    }
}

/// The task of one upgraded connection: waits for hyper to hand the connection over, then runs
/// the session. Written by hand so that a connection's task is the session plus a few words
/// (an `async` block keeps its captures beside the session it moved them into, which put an
/// idle connection's task cell one 128-byte step higher).
struct Connection {
    /// Holds the connection's place under `max_connections` until the task ends.
    slot: Slot,
    stage: Stage,
}

// Boxing the session would add an allocation per connection to save 8 bytes while upgrading.
#[allow(clippy::large_enum_variant)]
enum Stage {
    Upgrading {
        upgrade: UpgradeFut,
        identity: Option<Arc<str>>,
    },
    Serving(Session<TokioIo<Upgraded>>),
    Done,
}

impl Future for Connection {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match &mut this.stage {
                Stage::Upgrading { upgrade, identity } => {
                    match ready!(Pin::new(upgrade).poll(cx)) {
                        Ok(ws) => {
                            let hub = this.slot.hub().clone();
                            let session = session::serve(hub, ws.into_inner(), identity.take());
                            this.stage = Stage::Serving(session);
                        }
                        Err(e) => {
                            tracing::debug!("WebSocket upgrade failed: {e}");
                            this.stage = Stage::Done;
                        }
                    }
                }
                Stage::Serving(session) => {
                    ready!(Pin::new(session).poll(cx));
                    this.stage = Stage::Done;
                }
                Stage::Done => return Poll::Ready(()),
            }
        }
    }
}

/// RFC 6455 §4.2.1–§4.2.2: the version must be 13, or the answer is 426 naming the version
/// this server speaks; the key must be base64 of 16 bytes (24 characters ending in `==`).
fn check_handshake_fields(headers: &http::HeaderMap) -> Option<Response<Body>> {
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    let (first, second) = (versions.next(), versions.next());
    if !matches!((first, second), (Some(v), None) if v == "13") {
        let reason = match first {
            None => "missing Sec-WebSocket-Version header (this server speaks version 13)",
            Some(_) => "unsupported WebSocket version (this server speaks version 13)",
        };
        let mut resp = error_response(StatusCode::UPGRADE_REQUIRED, reason);
        let h = resp.headers_mut();
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        return Some(resp);
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key_ok = match (keys.next(), keys.next()) {
        (Some(key), None) => is_nonce(key.as_bytes()),
        _ => false,
    };
    (!key_ok).then(|| {
        error_response(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be one base64-encoded 16-byte value",
        )
    })
}

/// Whether `key` is the base64 encoding of 16 bytes.
fn is_nonce(key: &[u8]) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/');
    key.len() == 24 && key.ends_with(b"==") && key[..22].iter().all(base64)
}

/// A JSON `{"error":"<reason>"}` response.
pub(crate) fn error_response(status: StatusCode, reason: &str) -> Response<Body> {
    let body = serde_json::to_vec(&serde_json::json!({ "error": reason })).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_finds_tokens_everywhere_browsers_can_put_them() {
        let req = Request::get("/ws?a=1&token=q%20t").body(()).unwrap();
        assert_eq!(Handshake::new(&req).token().as_deref(), Some("q t"));
        let req = Request::get("/ws?access_token=x").body(()).unwrap();
        assert_eq!(Handshake::new(&req).token().as_deref(), Some("x"));
        let req = Request::get("/ws")
            .header("cookie", "a=b; wshub_token=\"c\"")
            .body(())
            .unwrap();
        assert_eq!(Handshake::new(&req).token().as_deref(), Some("c"));
        let req = Request::get("/ws?token=q")
            .header("authorization", "bearer h")
            .body(())
            .unwrap();
        assert_eq!(
            Handshake::new(&req).token().as_deref(),
            Some("h"),
            "header wins"
        );
        let req = Request::get("/ws?token=%zz").body(()).unwrap();
        assert_eq!(Handshake::new(&req).token(), None, "malformed escape");
        let req = Request::get("/ws")
            .header("authorization", "Basic x")
            .body(())
            .unwrap();
        assert_eq!(Handshake::new(&req).token(), None);
    }
}
