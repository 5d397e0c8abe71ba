//! Dialing through an HTTP proxy: which proxy a URL uses ([`Proxy`], the environment variables
//! Go's `http.ProxyFromEnvironment` reads) and the `CONNECT` tunnel (RFC 9110 §9.3.6).

use std::fmt;
use std::net::IpAddr;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ClientError, ProxyError};
use super::handshake::{parse_head, Authority, HeadError, Target, MAX_HEADERS, MAX_RESPONSE_HEAD};
use crate::error::ConfigError;

/// Whether and how the client goes through an HTTP proxy.
///
/// # Examples
/// ```
/// use wshub::client::{ClientConfig, Proxy};
/// let config = ClientConfig::default().proxy(Proxy::Url("http://proxy.internal:3128".into()));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Proxy {
    /// Connect to the server directly.
    Direct,
    /// As Go's `http.ProxyFromEnvironment` (and so go-ws's default dialer): `ws://` URLs use
    /// `HTTP_PROXY` (or `http_proxy`), `wss://` URLs `HTTPS_PROXY` (or `https_proxy`); hosts
    /// listed in `NO_PROXY` (or `no_proxy`: names, which match their subdomains too,
    /// `.domain` or `*.domain` for subdomains only, IP addresses, CIDR blocks, names and
    /// addresses with an optional `:port`, or `*` for all) and `localhost` and loopback
    /// addresses always connect directly. The variables are read when the client starts. As
    /// in Go, a value that does not parse is ignored (with a warning), and an HTTP proxy is
    /// refused in a CGI program (`REQUEST_METHOD` set; unlike Go, only for hosts that would
    /// use it, and even when its value does not parse). Unlike Go, a `socks5://` or
    /// `https://` proxy is an error (wshub speaks only `CONNECT` to an `http://` proxy). The
    /// default value.
    #[default]
    FromEnvironment,
    /// Always this proxy: `http://[user:password@]host[:port]` (port 80 by default; a URL
    /// without a scheme means `http://`). User info is sent as `Proxy-Authorization: Basic`.
    Url(String),
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Proxy::Direct => f.write_str("Direct"),
            Proxy::FromEnvironment => f.write_str("FromEnvironment"),
            // The URL may carry a password.
            Proxy::Url(url) => f.debug_tuple("Url").field(&shown(url)).finish(),
        }
    }
}

/// The proxy a dial goes through.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct ProxyTarget {
    pub(super) host: String,
    pub(super) port: u16,
    /// `host:port`, for messages.
    pub(super) host_port: String,
    /// `Basic <base64>` from the proxy URL's user info.
    pub(super) auth: Option<String>,
}

impl fmt::Debug for ProxyTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyTarget")
            .field("host_port", &self.host_port)
            .finish_non_exhaustive()
    }
}

/// Splits `scheme://` off a URL: `(rest up to the path, scheme)`.
fn strip_scheme(url: &str) -> (&str, Option<&str>) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    (&rest[..end], scheme)
}

/// A proxy URL for messages and `Debug`: without its user info, which may carry a password.
/// Everything up to the last `@` goes: a proxy URL has no path, so an `@` there is part of
/// the user info (an unencoded `/` in a password included).
fn shown(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{after}"),
            None => format!("…@{after}"),
        },
        None => url.to_owned(),
    }
}

/// Refuses a proxy URL whose scheme is not `http` (none means `http`).
fn check_scheme(url: &str, source: &str) -> Result<(), ConfigError> {
    match strip_scheme(url.trim()).1 {
        None => Ok(()),
        Some(s) if s.eq_ignore_ascii_case("http") => Ok(()),
        Some(s) => Err(ConfigError::new(
            "proxy",
            format!(
                "{source} {:?}: {s}:// proxies are not supported, only http:// (CONNECT)",
                shown(url)
            ),
        )),
    }
}

/// Parses a proxy URL (`source` names where it came from, for errors).
fn parse_proxy_url(url: &str, source: &str) -> Result<ProxyTarget, ConfigError> {
    check_scheme(url, source)?;
    let bad =
        |reason: &str| ConfigError::new("proxy", format!("{source} {:?}: {reason}", shown(url)));
    let (authority, _) = strip_scheme(url.trim());
    let parts = Authority::split(authority).map_err(bad)?;
    Ok(ProxyTarget {
        host: parts.host.to_owned(),
        port: parts.port.unwrap_or(80),
        host_port: parts.host_port.to_owned(),
        auth: parts.basic_auth().map_err(bad)?,
    })
}

/// Checks a [`Proxy::Url`] (the environment is read when the client starts).
pub(super) fn validate(proxy: &Proxy) -> Result<(), ConfigError> {
    match proxy {
        Proxy::Url(url) => parse_proxy_url(url, "proxy URL").map(drop),
        Proxy::Direct | Proxy::FromEnvironment => Ok(()),
    }
}

/// The proxy to use for `target`, if any; `env` reads an environment variable.
pub(super) fn resolve(
    proxy: &Proxy,
    target: &Target,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ProxyTarget>, ConfigError> {
    match proxy {
        Proxy::Direct => Ok(None),
        Proxy::Url(url) => parse_proxy_url(url, "proxy URL").map(Some),
        Proxy::FromEnvironment => {
            let any = |names: &[&'static str]| {
                names
                    .iter()
                    .find_map(|&n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (n, v)))
            };
            let found = if target.tls {
                any(&["HTTPS_PROXY", "https_proxy"])
            } else {
                any(&["HTTP_PROXY", "http_proxy"])
            };
            let Some((name, url)) = found else {
                return Ok(None);
            };
            if is_local(&target.host) {
                return Ok(None);
            }
            let no_proxy = any(&["NO_PROXY", "no_proxy"]).map(|(_, v)| v);
            if no_proxy.is_some_and(|list| bypasses(&list, &target.host, target.port)) {
                return Ok(None);
            }
            if !target.tls && env("REQUEST_METHOD").is_some_and(|m| !m.is_empty()) {
                // A CGI program: `HTTP_PROXY` may come from a request's `Proxy` header
                // ("httpoxy"), so Go refuses to use an HTTP proxy there.
                return Err(ConfigError::new(
                    "proxy",
                    format!("refusing to use {name} in a CGI environment (REQUEST_METHOD is set)"),
                ));
            }
            let source = format!("environment variable {name}");
            // A scheme Go could use but wshub cannot (socks5://, https://) is an error, not a
            // silent direct connection.
            check_scheme(&url, &source)?;
            match parse_proxy_url(&url, &source) {
                Ok(p) => Ok(Some(p)),
                // Go ignores a value it cannot parse.
                Err(e) => {
                    tracing::warn!("ignoring {e}");
                    Ok(None)
                }
            }
        }
    }
}

/// `localhost` and loopback addresses never go through a proxy (as in Go).
fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// Whether the `NO_PROXY` list `list` exempts `host:port`, as Go's `httpproxy` decides: `*`
/// exempts everything; an IP address or CIDR block (with an optional `:port` for an address)
/// matches IP hosts; a name matches itself and its subdomains, `.name` and `*.name` only its
/// subdomains (with an optional `:port`), and names never match IP hosts. Case-insensitive.
fn bypasses(list: &str, host: &str, port: u16) -> bool {
    let host = host.to_ascii_lowercase();
    let ip = host.parse::<IpAddr>().ok();
    list.split(',').any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        if entry.is_empty() {
            return false;
        }
        if entry == "*" {
            return true;
        }
        if let Some((net, bits)) = entry.split_once('/') {
            return match (ip, net.parse::<IpAddr>(), bits.parse::<u8>()) {
                (Some(ip), Ok(net), Ok(bits)) => in_cidr(ip.to_canonical(), net, bits),
                _ => false,
            };
        }
        // `host:port` or `[v6]:port`; anything else (a bare IPv6 address too) is a host.
        let (name, entry_port) = match split_host_port(&entry) {
            Some((name, p)) => (name, Some(p)),
            None => (entry.as_str(), None),
        };
        // Go compares port strings; an empty one (`host:`) means any port.
        let port_ok = || entry_port.is_none_or(|p| p.is_empty() || p == port.to_string());
        if let Ok(entry_ip) = name.parse::<IpAddr>() {
            return ip.map(|ip| ip.to_canonical()) == Some(entry_ip.to_canonical()) && port_ok();
        }
        if ip.is_some() || name.is_empty() {
            return false;
        }
        let name = name
            .strip_prefix('*')
            .filter(|n| n.starts_with('.'))
            .unwrap_or(name);
        let matched = match name.strip_prefix('.') {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == name || host.ends_with(&format!(".{name}")),
        };
        matched && port_ok()
    })
}

/// Go's `net.SplitHostPort` for a `NO_PROXY` entry: `host:port` or `[host]:port`; `None` when
/// the entry has no port or too many colons (a bare IPv6 address).
fn split_host_port(entry: &str) -> Option<(&str, &str)> {
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = entry.split_once(':')?;
    (!port.contains(':')).then_some((host, port))
}

/// Whether `ip` is in `net/bits`.
fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let prefix = |a: u128, b: u128, len: u32, max: u32| {
        len <= max && (len == 0 || (a ^ b) >> (max - len) == 0)
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => prefix(
            u128::from(u32::from(a)),
            u128::from(u32::from(b)),
            u32::from(bits),
            32,
        ),
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            prefix(u128::from(a), u128::from(b), u32::from(bits), 128)
        }
        _ => false,
    }
}

/// Asks the proxy on `io` for a tunnel to `target` and reads its answer.
pub(super) async fn tunnel<S>(
    io: &mut S,
    proxy: &ProxyTarget,
    target: &Target,
) -> Result<(), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let dest = target.host_and_port();
    let mut req = format!("CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n");
    if let Some(auth) = &proxy.auth {
        req.push_str("Proxy-Authorization: ");
        req.push_str(auth);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(ClientError::io)?;
    io.flush().await.map_err(ClientError::io)?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if io.read_buf(&mut buf).await.map_err(ClientError::io)? == 0 {
            return Err(ProxyError::Eof.into());
        }
        if let Some(len) = check_answer(&buf)? {
            // The server speaks only after the client (the upgrade request or the TLS
            // hello), so anything past the answer is not from it.
            if buf.len() > len {
                return Err(ProxyError::UnexpectedData.into());
            }
            return Ok(());
        }
    }
}

/// Checks the proxy's answer at the front of `buf`: its length once complete and 2xx.
fn check_answer(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let Some(len) = parse_head(&mut response, buf).map_err(|e| match e {
        HeadError::TooLarge => ProxyError::TooLarge {
            limit: MAX_RESPONSE_HEAD,
        },
        HeadError::Malformed(reason) => ProxyError::Malformed(reason),
    })?
    else {
        return Ok(None);
    };
    match response.code {
        Some(200..=299) => Ok(Some(len)),
        Some(code) => Err(ProxyError::Status(code)),
        None => Err(ProxyError::Malformed("no status code".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    fn via(url: &str, vars: &[(&str, &str)]) -> Option<String> {
        let target = Target::parse(url).unwrap();
        resolve(&Proxy::FromEnvironment, &target, env(vars))
            .unwrap()
            .map(|p| p.host_port)
    }

    #[test]
    fn the_environment_picks_the_proxy_by_scheme() {
        let vars = [("HTTP_PROXY", "p1:3128"), ("https_proxy", "http://p2")];
        assert_eq!(
            via("ws://example.com/ws", &vars).as_deref(),
            Some("p1:3128")
        );
        assert_eq!(via("wss://example.com/ws", &vars).as_deref(), Some("p2"));
        assert_eq!(via("ws://example.com/ws", &[]), None);
        assert_eq!(via("ws://example.com/ws", &[("HTTP_PROXY", " ")]), None);
        // Upper case first, as Go.
        let both = [("HTTP_PROXY", "upper"), ("http_proxy", "lower")];
        assert_eq!(via("ws://e.com", &both).as_deref(), Some("upper"));
        // A value that does not parse is ignored, as Go ignores it.
        assert_eq!(via("ws://e.com", &[("HTTP_PROXY", "http://h:x")]), None);
        // In a CGI program an HTTP proxy is refused (httpoxy); HTTPS_PROXY still applies.
        let target = Target::parse("ws://e.com").unwrap();
        let cgi = [("http_proxy", "p"), ("REQUEST_METHOD", "GET")];
        let err = resolve(&Proxy::FromEnvironment, &target, env(&cgi)).unwrap_err();
        assert!(err.to_string().contains("CGI"), "{err}");
        let cgi = [("HTTPS_PROXY", "p"), ("REQUEST_METHOD", "GET")];
        assert_eq!(via("wss://e.com", &cgi).as_deref(), Some("p"));
    }

    #[test]
    fn local_and_no_proxy_hosts_connect_directly() {
        let p = ("HTTP_PROXY", "proxy:8080");
        for local in [
            "ws://localhost:1/",
            "ws://127.0.0.1/",
            "ws://127.9.9.9/",
            "ws://[::1]/",
        ] {
            assert_eq!(via(local, &[p]), None, "{local}");
        }
        let cases = [
            ("*", "ws://a.com", true),
            ("a.com", "ws://a.com", true),
            ("a.com", "ws://x.a.com", true),
            ("a.com", "ws://xa.com", false),
            (".a.com", "ws://a.com", false),
            (".a.com", "ws://x.a.com", true),
            ("*.a.com", "ws://x.a.com", true),
            ("*.a.com", "ws://a.com", false),
            ("A.COM", "ws://x.a.com", true),
            ("2001:db8::5", "ws://[2001:db8::5]", true),
            ("2001:db8::5", "ws://[2001:db8::6]", false),
            ("2.3", "ws://10.1.2.3", false),
            ("10.1.2.3:80", "ws://10.1.2.3", true),
            ("10.1.2.3:81", "ws://10.1.2.3", false),
            ("10.1.2.3:080", "ws://10.1.2.3", false),
            ("a.com:", "ws://a.com:81", true),
            ("10.0.0.0/8", "ws://[::ffff:10.1.2.3]", true),
            ("10.1.2.3", "ws://[::ffff:10.1.2.3]", true),
            ("a.com:81", "ws://a.com:81", true),
            ("a.com:81", "ws://a.com", false),
            ("10.1.2.3", "ws://10.1.2.3", true),
            ("10.0.0.0/8", "ws://10.200.0.1", true),
            ("10.0.0.0/8", "ws://11.0.0.1", false),
            ("fd00::/8", "ws://[fd12::1]", true),
            ("[fd12::1]:80", "ws://[fd12::1]", true),
            (" b.com , a.com ", "ws://a.com", true),
            ("b.com,,", "ws://a.com", false),
            ("10.0.0.0/99", "ws://10.0.0.1", false),
        ];
        for (no_proxy, url, direct) in cases {
            let got = via(url, &[p, ("no_proxy", no_proxy)]);
            assert_eq!(got.is_none(), direct, "NO_PROXY={no_proxy:?} {url}");
        }
    }

    #[test]
    fn proxy_urls_are_checked() {
        let target = Target::parse("ws://e.com").unwrap();
        let p = resolve(
            &Proxy::Url("http://u:p%21@[::1]:99".into()),
            &target,
            env(&[]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 99));
        // base64("u:p!")
        assert_eq!(p.auth.as_deref(), Some("Basic dTpwIQ=="));
        assert!(!format!("{p:?}").contains("dTpw"));
        let debug = format!("{:?}", Proxy::Url("http://u:secret@h:1".into()));
        assert_eq!(debug, r#"Url("http://…@h:1")"#);
        for bad in ["https://h", "socks5://h:1080", "http://h:x", "http://"] {
            let err = resolve(&Proxy::Url(bad.into()), &target, env(&[])).unwrap_err();
            assert_eq!(err.field(), "proxy", "{bad}");
        }
        let err = resolve(
            &Proxy::FromEnvironment,
            &target,
            env(&[("HTTP_PROXY", "socks5://h")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("HTTP_PROXY"), "{err}");
        // A password never shows in an error.
        let err =
            resolve(&Proxy::Url("socks5://u:secret@h".into()), &target, env(&[])).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        let err =
            resolve(&Proxy::Url("http://u:secret@h:x".into()), &target, env(&[])).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert_eq!(resolve(&Proxy::Direct, &target, env(&[])).unwrap(), None);
    }

    #[test]
    fn the_answer_must_be_a_complete_2xx() {
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
        for cut in 0..ok.len() {
            assert_eq!(check_answer(&ok[..cut]), Ok(None));
        }
        assert_eq!(check_answer(ok), Ok(Some(ok.len())));
        assert_eq!(
            check_answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"),
            Err(ProxyError::Status(407))
        );
        assert!(matches!(
            check_answer(b"SSH-2.0-x\r\n\r\n"),
            Err(ProxyError::Malformed(_))
        ));
        let mut huge = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        huge.resize(MAX_RESPONSE_HEAD + 1, b'a');
        assert_eq!(
            check_answer(&huge),
            Err(ProxyError::TooLarge {
                limit: MAX_RESPONSE_HEAD
            })
        );
    }
}
