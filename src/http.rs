//! HTTP integration: upgrading a hyper (or axum) request to a hub connection.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;

use crate::hub::Hub;

/// The response body type of [`Hub::upgrade`].
pub type Body = Full<Bytes>;

impl Hub {
    /// Answers a WebSocket upgrade request and serves the connection on this hub.
    ///
    /// Returns `101 Switching Protocols` and spawns the session (on the current tokio runtime)
    /// once hyper hands over the connection; the session registers the client, fires the
    /// connect hook and runs until the connection ends. Anything else is answered with an
    /// error response and a plain-text reason: `400` for a request that is not a valid
    /// WebSocket upgrade (missing `Upgrade: websocket`, missing key, version other than 13),
    /// `503` while the hub is shutting down.
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
            return text_response(StatusCode::SERVICE_UNAVAILABLE, "hub is shutting down");
        }
        if !fastwebsockets::upgrade::is_upgrade_request(request) {
            return text_response(
                StatusCode::BAD_REQUEST,
                "expected a WebSocket upgrade request",
            );
        }
        let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut *request) {
            Ok(pair) => pair,
            Err(e) => {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid WebSocket upgrade request: {e}"),
                )
            }
        };
        let hub = self.clone();
        self.tracker().spawn(async move {
            match upgrade.await {
                Ok(ws) => hub.serve(ws.into_inner()).await,
                Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
            }
        });
        let (parts, _) = response.into_parts();
        Response::from_parts(parts, Full::new(Bytes::new()))
    }
}

/// A response with a plain-text body.
pub(crate) fn text_response(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
