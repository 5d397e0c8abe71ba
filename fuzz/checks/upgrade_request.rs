//! The `upgrade_request` check: our own parsing on the HTTP upgrade path.
//!
//! HTTP/1 parsing and the WebSocket handshake itself are hyper's and fastwebsockets'. What
//! wshub parses itself is what the authentication hook and the Origin allow-list look at:
//! `Handshake::query` (percent-decoding), `Handshake::cookie`, `Handshake::bearer_token`,
//! `Handshake::token` (their precedence), and the Origin patterns of
//! `HubConfig::allowed_origins`. The input ([`decode`]) is a query string, a name to look
//! up, `Cookie` headers, an `Authorization` header, an `Origin` header and allow-list patterns;
//! each accessor must agree with a straightforward reference written from the RFCs
//! (RFC 3986 §2.1 percent-encoding with `+` as a space, RFC 6265 §5.4 cookie pairs, RFC 6750
//! bearer tokens, RFC 6454 origins whose wildcard part is one or more DNS labels), and
//! `Hub::upgrade` must answer 403 exactly when an `Origin` header is present and not
//! allowed.
//!
//! Shared by `fuzz_targets/upgrade_request.rs` and the main crate's `tests/fuzz_replay.rs`.

use std::borrow::Cow;

use http::{HeaderValue, Request, StatusCode};
use wshub::{Handshake, Hub, HubConfig};

/// One upgrade request's parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Input {
    /// The query string (after `/ws?`).
    pub(crate) query: String,
    /// The name looked up with `query` and `cookie`.
    pub(crate) name: String,
    /// `Cookie` header values.
    pub(crate) cookies: Vec<String>,
    pub(crate) authorization: Option<String>,
    /// The `Origin` header, as raw bytes (a header value may hold non-UTF-8 bytes).
    pub(crate) origin: Option<Vec<u8>>,
    /// `HubConfig::allowed_origins` patterns.
    pub(crate) patterns: Vec<String>,
}

/// Decodes an input: lines separated by `\n`; the first is the query string, the second the
/// name to look up, each further line a tagged part: `c` + a `Cookie` header, `a` + the
/// `Authorization` header, `o` + the `Origin` header (any bytes), `p` + an allow-list
/// pattern. Lines that are not UTF-8 (except an origin) are skipped.
pub(crate) fn decode(data: &[u8]) -> Input {
    let mut input = Input::default();
    let text = |line: &[u8]| std::str::from_utf8(line).ok().map(str::to_owned);
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        match (i, line.split_first()) {
            (0, _) => input.query = text(line).unwrap_or_default(),
            (1, _) => input.name = text(line).unwrap_or_default(),
            (_, Some((b'c', rest))) => input.cookies.extend(text(rest)),
            (_, Some((b'a', rest))) => input.authorization = text(rest),
            (_, Some((b'o', rest))) => input.origin = Some(rest.to_vec()),
            (_, Some((b'p', rest))) => input.patterns.extend(text(rest)),
            _ => {}
        }
    }
    input
}

/// Runs the check on one fuzz input.
pub(crate) fn check(data: &[u8]) {
    check_input(&decode(data));
}

fn check_input(input: &Input) {
    let mut builder = Request::get(format!("/ws?{}", input.query))
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13");
    for cookie in &input.cookies {
        builder = builder.header("cookie", cookie.as_str());
    }
    if let Some(auth) = &input.authorization {
        builder = builder.header("authorization", auth.as_str());
    }
    if let Some(origin) = &input.origin {
        match HeaderValue::from_bytes(origin) {
            Ok(value) => builder = builder.header("origin", value),
            Err(_) => return,
        }
    }
    // Strings that are not a valid URI or header value cannot reach the hub.
    let Ok(mut request) = builder.body(()) else {
        return;
    };

    let handshake = Handshake::new(&request);
    let query = request.uri().query().unwrap_or("");
    let expected_query = ref_query(query, &input.name);
    assert_eq!(
        handshake.query(&input.name).as_deref(),
        expected_query.as_deref(),
        "query({:?}) in {query:?}",
        input.name
    );
    let cookie_headers: Vec<&str> = request
        .headers()
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        handshake.cookie(&input.name),
        ref_cookie(&cookie_headers, &input.name),
        "cookie({:?}) in {cookie_headers:?}",
        input.name
    );
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let bearer = authorization.and_then(ref_bearer);
    assert_eq!(
        handshake.bearer_token(),
        bearer,
        "bearer in {authorization:?}"
    );
    let token = bearer
        .map(Cow::Borrowed)
        .or_else(|| ref_query(query, "token"))
        .or_else(|| ref_query(query, "access_token"))
        .or_else(|| {
            // The cookie counts for same-origin requests only; this request has no `Host`,
            // so only one without an `Origin`.
            let cookie = ref_cookie(&cookie_headers, "wshub_token").map(Cow::Borrowed);
            cookie.filter(|_| request.headers().get("origin").is_none())
        });
    assert_eq!(handshake.token(), token, "token precedence");

    // The Origin allow-list, through `Hub::upgrade`.
    let patterns = input.patterns.clone();
    let config = HubConfig::default().allowed_origins(patterns.clone());
    let Ok(hub) = Hub::builder().config(config).build() else {
        return; // an invalid pattern is refused up front
    };
    let origin = request.headers().get("origin").cloned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async { hub.upgrade(&mut request).status() });
    let refused = status == StatusCode::FORBIDDEN;
    let expected = match &origin {
        None => false,
        Some(value) => !ref_origin_allowed(&patterns, value.as_bytes()),
    };
    assert_eq!(
        refused, expected,
        "origin {origin:?} against {patterns:?}: {status}"
    );
}

/// RFC 3986 §2.1 percent-decoding (`%` and exactly two hex digits), `+` as a space
/// (`application/x-www-form-urlencoded`); `None` for a malformed escape or non-UTF-8.
fn ref_percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let digit = |h: u8| (h as char).to_digit(16).unwrap_or(0) as u8;
                out.push(digit(hex[0]) * 16 + digit(hex[1]));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of the first `name=value` pair (split on `&`, a pair without `=` has an empty
/// value) whose name and value both decode.
fn ref_query<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    for pair in query.split('&') {
        let (k, v) = match pair.find('=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, ""),
        };
        if ref_percent_decode(k).as_deref() != Some(name) {
            continue;
        }
        if let Some(value) = ref_percent_decode(v) {
            return Some(if value == v {
                Cow::Borrowed(v)
            } else {
                Cow::Owned(value)
            });
        }
    }
    None
}

/// RFC 6265 §5.4: `Cookie: a=b; c=d`, pairs separated by `;`, surrounding whitespace ignored;
/// the value's enclosing double quotes removed (wshub removes every leading and trailing `"`).
fn ref_cookie<'a>(headers: &[&'a str], name: &str) -> Option<&'a str> {
    headers.iter().flat_map(|h| h.split(';')).find_map(|pair| {
        let pair = pair.trim();
        let at = pair.find('=')?;
        (&pair[..at] == name).then(|| pair[at + 1..].trim_matches('"'))
    })
}

/// RFC 6750 §2.1: `Bearer <token>`, the scheme case-insensitive.
fn ref_bearer(value: &str) -> Option<&str> {
    let at = value.find(' ')?;
    value[..at]
        .eq_ignore_ascii_case("bearer")
        .then(|| value[at + 1..].trim())
}

/// Whether an `Origin` header value is allowed: every origin when there are no patterns;
/// otherwise an ASCII case-insensitive match of a pattern, where `scheme://*.suffix` matches
/// `scheme://<one or more DNS labels>.suffix`. A value that is not text matches nothing.
fn ref_origin_allowed(patterns: &[String], origin: &[u8]) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let origin = origin.to_ascii_lowercase();
    patterns.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        let Some((scheme, suffix)) = pattern.split_once("://*.") else {
            return pattern == origin;
        };
        let Some((origin_scheme, host)) = origin.split_once("://") else {
            return false;
        };
        let Some(labels) = host.strip_suffix(suffix).and_then(|h| h.strip_suffix('.')) else {
            return false;
        };
        origin_scheme == scheme
            && labels.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    })
}
