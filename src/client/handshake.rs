//! The client side of the opening handshake (RFC 6455 section 4.1): URL parsing, the upgrade
//! request, and the checks on the server's response. Sans-IO except [`perform`].

use base64::Engine as _;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ClientError, HandshakeError};
use crate::error::ConfigError;

/// The GUID appended to the key before hashing (RFC 6455 section 1.3).
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest response head accepted.
pub(super) const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Most response headers parsed.
pub(super) const MAX_HEADERS: usize = 64;

/// Where to connect, parsed from a `ws://` or `wss://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// `wss://`.
    pub(super) tls: bool,
    /// Host name or IP address, without IPv6 brackets: for the TCP connect and TLS SNI.
    pub(super) host: String,
    /// Explicit port, or 80 / 443.
    pub(super) port: u16,
    /// The `Host` header: the URL's authority.
    pub(super) authority: String,
    /// Path and query; `/` when the URL has none.
    pub(super) path: String,
}

/// A URL for messages and `Debug`: without its user info, which may carry a password.
pub(super) fn shown(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => match scheme {
            Some(scheme) => format!("{scheme}://…@{}", &rest[at + 1..]),
            None => format!("…@{}", &rest[at + 1..]),
        },
        None => url.to_owned(),
    }
}

impl Target {
    /// Parses a `ws://` or `wss://` URL.
    pub(super) fn parse(url: &str) -> Result<Target, ConfigError> {
        let bad = |reason: &str| ConfigError::new("url", format!("{:?}: {reason}", shown(url)));
        if url.contains('#') {
            return Err(bad("a WebSocket URL may not have a fragment"));
        }
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("ws") => false,
            Some(s) if s.eq_ignore_ascii_case("wss") => true,
            _ => return Err(bad("the scheme must be ws:// or wss://")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let parts = Authority::split(authority.as_str()).map_err(bad)?;
        if parts.user_info.is_some() {
            // RFC 6455 §3: a WebSocket URI has no user info (gorilla refuses it too).
            return Err(bad(
                "user info is not allowed in a WebSocket URL; send credentials in a header",
            ));
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(Target {
            tls,
            host: parts.host.to_owned(),
            port: parts.port.unwrap_or(if tls { 443 } else { 80 }),
            authority: parts.host_port.to_owned(),
            path: if path.is_empty() { "/" } else { path }.to_owned(),
        })
    }

    /// `host:port` as a `CONNECT` request names it (IPv6 in brackets).
    pub(super) fn host_and_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A URL authority `[user[:password]@]host[:port]`, split.
pub(super) struct Authority<'a> {
    /// The percent-encoded user info, without the `@`.
    pub(super) user_info: Option<&'a str>,
    /// `host[:port]`, as written.
    pub(super) host_port: &'a str,
    /// The host, without IPv6 brackets; never empty.
    pub(super) host: &'a str,
    /// The explicit port.
    pub(super) port: Option<u16>,
}

impl<'a> Authority<'a> {
    pub(super) fn split(authority: &'a str) -> Result<Authority<'a>, &'static str> {
        let (user_info, host_port) = match authority.rsplit_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, authority),
        };
        // A port follows the last `:` unless that is inside IPv6 brackets.
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) if !port.ends_with(']') => (host, Some(port)),
            _ => (host_port, None),
        };
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err("no host");
        }
        let port = match port {
            // `http::uri::Authority::port` hides an out-of-range port, so parse it here.
            Some(p) if !p.is_empty() => Some(p.parse::<u16>().map_err(|_| "invalid port")?),
            _ => None,
        };
        Ok(Authority {
            user_info,
            host_port,
            host,
            port,
        })
    }

    /// The `Basic` credentials of the user info, percent-decoded (RFC 7617).
    pub(super) fn basic_auth(&self) -> Result<Option<String>, &'static str> {
        let Some(info) = self.user_info else {
            return Ok(None);
        };
        let (user, password) = info.split_once(':').unwrap_or((info, ""));
        let user = percent_decode(user).ok_or("invalid percent-encoding in the user info")?;
        let password =
            percent_decode(password).ok_or("invalid percent-encoding in the user info")?;
        let plain = format!("{user}:{password}");
        Ok(Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(plain)
        )))
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A fresh random `Sec-WebSocket-Key`: 16 random bytes, base64.
pub(super) fn new_key() -> String {
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// The `Sec-WebSocket-Accept` value the server must answer for `key`.
pub(super) fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The upgrade request. `headers` have been validated (no CR/LF, not reserved).
pub(super) fn request(target: &Target, key: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        target.path, target.authority
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Why a response head at the front of a buffer cannot be read ([`parse_head`]).
pub(super) enum HeadError {
    /// Longer than [`MAX_RESPONSE_HEAD`].
    TooLarge,
    /// Not valid HTTP/1.1 (the parser's reason).
    Malformed(String),
}

/// Parses the response head at the front of `buf` into `response`: its length once complete,
/// `None` while more bytes are needed; never more than [`MAX_RESPONSE_HEAD`] bytes. Shared by
/// the upgrade response and a proxy's answer to `CONNECT`.
pub(super) fn parse_head<'h, 'b>(
    response: &mut httparse::Response<'h, 'b>,
    buf: &'b [u8],
) -> Result<Option<usize>, HeadError> {
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > MAX_RESPONSE_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

impl From<HeadError> for HandshakeError {
    fn from(e: HeadError) -> Self {
        match e {
            HeadError::TooLarge => HandshakeError::TooLarge {
                limit: MAX_RESPONSE_HEAD,
            },
            HeadError::Malformed(reason) => HandshakeError::Malformed(reason),
        }
    }
}

/// Checks the response head at the front of `buf`. Returns the head's length once it is
/// complete, `None` while more bytes are needed.
///
/// `offered_protocols` is the value of the `Sec-WebSocket-Protocol` request header, if any.
pub(super) fn check_response(
    buf: &[u8],
    key: &str,
    offered_protocols: Option<&str>,
) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(&mut response, buf)? else {
        return Ok(None);
    };
    if response.version != Some(1) {
        return Err(HandshakeError::Malformed("not an HTTP/1.1 response".into()));
    }
    let status = response.code.unwrap_or(0);
    if status != 101 {
        return Err(HandshakeError::Status(status));
    }
    let all: &[httparse::Header<'_>] = response.headers;
    let header = |name: &'static str| {
        all.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !header("upgrade").any(|v| has_token(v, "websocket")) {
        return Err(HandshakeError::MissingHeader("Upgrade: websocket"));
    }
    if !header("connection").any(|v| has_token(v, "upgrade")) {
        return Err(HandshakeError::MissingHeader("Connection: Upgrade"));
    }
    let mut accepts = header("sec-websocket-accept");
    let (Some(accept), None) = (accepts.next(), accepts.next()) else {
        return Err(HandshakeError::MissingHeader("Sec-WebSocket-Accept"));
    };
    if accept.trim_ascii() != accept_key(key).as_bytes() {
        return Err(HandshakeError::BadAccept);
    }
    if header("sec-websocket-extensions").any(|v| !v.trim_ascii().is_empty()) {
        return Err(HandshakeError::UnexpectedExtension);
    }
    let mut protocols = header("sec-websocket-protocol");
    if let Some(chosen) = protocols.next() {
        let offered = offered_protocols.unwrap_or("");
        let chosen = std::str::from_utf8(chosen.trim_ascii()).unwrap_or("");
        if protocols.next().is_some()
            || chosen.is_empty()
            || !offered.split(',').any(|p| p.trim() == chosen)
        {
            return Err(HandshakeError::UnexpectedProtocol);
        }
    }
    Ok(Some(len))
}

/// Sends the upgrade request on `io` and reads and checks the response. Returns the bytes
/// that followed the response head (frames the server sent right away).
pub(super) async fn perform<S>(
    io: &mut S,
    target: &Target,
    headers: &[(String, String)],
) -> Result<BytesMut, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = new_key();
    let offered = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .map(|(_, value)| value.as_str());
    io.write_all(&request(target, &key, headers))
        .await
        .map_err(ClientError::io)?;
    io.flush().await.map_err(ClientError::io)?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if io.read_buf(&mut buf).await.map_err(ClientError::io)? == 0 {
            return Err(HandshakeError::Eof.into());
        }
        if let Some(len) = check_response(&buf, &key, offered)? {
            let _ = buf.split_to(len);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn ok_response(extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n{extra}\r\n"
        )
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn keys_are_random_16_bytes() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&a)
            .expect("base64");
        assert_eq!(raw.len(), 16);
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path: "/ws".into(),
            }
        );
        let t = Target::parse("wss://[::1]/x?token=a").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("::1", 443));
        assert_eq!(t.authority, "[::1]");
        assert_eq!(t.path, "/x?token=a");
        let t = Target::parse("WS://example.com").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        // A password in a refused URL stays out of the error.
        let err = Target::parse("ws://u:secret@h/").unwrap_err().to_string();
        assert!(
            err.contains("ws://…@h/") && !err.contains("secret"),
            "{err}"
        );
        for bad in [
            "http://h/",
            "h:80",
            "ws://u:p@h/",
            "wss://bob@[::1]/",
            "ws://h/#f",
            "ws://h:99999/",
            "ws:///x",
            "",
            "ws://[]/",
        ] {
            let err = Target::parse(bad).unwrap_err();
            assert_eq!(err.field(), "url", "{bad}");
        }
    }

    #[test]
    fn request_has_the_required_headers() {
        let t = Target::parse("ws://h:1/p?q").unwrap();
        let req = request(&t, KEY, &[("Authorization".into(), "Bearer x".into())]);
        let req = String::from_utf8(req).unwrap();
        assert_eq!(
            req,
            "GET /p?q HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer x\r\n\r\n"
        );
    }

    #[test]
    fn accepts_a_valid_response_in_pieces() {
        let resp = ok_response("");
        for cut in 0..resp.len() {
            assert_eq!(check_response(&resp.as_bytes()[..cut], KEY, None), Ok(None));
        }
        let mut full = resp.clone().into_bytes();
        full.extend_from_slice(b"\x81\x02hi");
        assert_eq!(check_response(&full, KEY, None), Ok(Some(resp.len())));
        // Header names and tokens are case-insensitive; Connection may list several tokens.
        let lower = "HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n\
                     sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(check_response(lower.as_bytes(), KEY, None)
            .unwrap()
            .is_some());
    }

    #[test]
    fn rejects_bad_responses() {
        let check = |resp: &str| check_response(resp.as_bytes(), KEY, None).unwrap_err();
        assert_eq!(
            check("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"),
            HandshakeError::Status(401)
        );
        assert_eq!(
            check(
                "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"
            ),
            HandshakeError::BadAccept
        );
        assert_eq!(
            check("HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            HandshakeError::MissingHeader("Sec-WebSocket-Accept")
        );
        assert_eq!(
            check(
                "HTTP/1.1 101 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            ),
            HandshakeError::MissingHeader("Upgrade: websocket")
        );
        assert_eq!(
            check(
                "HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
            ),
            HandshakeError::MissingHeader("Connection: Upgrade")
        );
        assert_eq!(
            check(&ok_response(
                "Sec-WebSocket-Extensions: permessage-deflate\r\n"
            )),
            HandshakeError::UnexpectedExtension
        );
        assert_eq!(
            check(&ok_response("Sec-WebSocket-Protocol: chat\r\n")),
            HandshakeError::UnexpectedProtocol
        );
        assert!(matches!(
            check("HTTP/1.0 101 OK\r\n\r\n"),
            HandshakeError::Malformed(_)
        ));
        assert!(matches!(
            check("garbage garbage\r\n\r\n"),
            HandshakeError::Malformed(_)
        ));
        let huge = format!(
            "HTTP/1.1 101 OK\r\nX: {}",
            "a".repeat(MAX_RESPONSE_HEAD + 1)
        );
        assert_eq!(
            check(&huge),
            HandshakeError::TooLarge {
                limit: MAX_RESPONSE_HEAD
            }
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        assert!(matches!(
            check(&format!("HTTP/1.1 101 OK\r\n{many}\r\n")),
            HandshakeError::Malformed(_)
        ));
    }

    #[test]
    fn subprotocol_must_be_offered() {
        let resp = ok_response("Sec-WebSocket-Protocol: chat\r\n");
        assert!(
            check_response(resp.as_bytes(), KEY, Some("superchat, chat"))
                .unwrap()
                .is_some()
        );
        assert_eq!(
            check_response(resp.as_bytes(), KEY, Some("other")),
            Err(HandshakeError::UnexpectedProtocol)
        );
    }
}
