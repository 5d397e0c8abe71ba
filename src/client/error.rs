//! Client errors: why a dial failed, why a connection ended, why the client gave up.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::frame::{close_code, ProtocolError};

/// Why a dial failed, why a connection ended, or why the client stopped.
///
/// A dial failure ([`Connect`](Self::Connect), [`Tls`](Self::Tls),
/// [`ConnectTimeout`](Self::ConnectTimeout), [`Proxy`](Self::Proxy),
/// [`Handshake`](Self::Handshake)) is reported in
/// [`Event::ConnectFailed`](super::Event::ConnectFailed) and retried after a backoff. The end
/// of an established connection is reported in
/// [`Event::Disconnected`](super::Event::Disconnected) and followed by an immediate redial;
/// [`Closed`](Self::Closed) there means the application closed the client. Only
/// [`MaxRetries`](Self::MaxRetries) is terminal: [`ReconnectingClient::closed`] returns it when
/// the client gives up.
///
/// Cloning is cheap: I/O errors are shared behind an [`Arc`].
///
/// [`ReconnectingClient::closed`]: super::ReconnectingClient::closed
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientError {
    /// Resolving the host or opening the TCP connection failed (e.g. connection refused).
    Connect(Arc<io::Error>),
    /// The TLS handshake of a `wss://` URL failed (e.g. an untrusted certificate or a name
    /// mismatch); the rustls error is the I/O error's source.
    Tls(Arc<io::Error>),
    /// The dial (TCP, TLS and WebSocket handshake) did not complete within
    /// [`ClientConfig::connect_timeout`](super::ClientConfig::connect_timeout).
    ConnectTimeout(Duration),
    /// The server's answer to the upgrade request is not a valid WebSocket handshake.
    Handshake(HandshakeError),
    /// The HTTP proxy ([`ClientConfig::proxy`](super::ClientConfig::proxy)) did not open a
    /// tunnel to the server.
    Proxy(ProxyError),
    /// Reading from or writing to an established connection failed.
    Io(Arc<io::Error>),
    /// The server closed the TCP connection without a close frame.
    ConnectionLost,
    /// The server closed the connection with a close frame; the client answered it.
    ServerClosed {
        /// The close code, `None` when the frame carried none.
        code: Option<u16>,
        /// The close reason (may be empty).
        reason: String,
    },
    /// The server broke RFC 6455 (a masked or malformed frame, invalid UTF-8, a message over
    /// [`ClientConfig::max_message_size`](super::ClientConfig::max_message_size): code 1009).
    /// The client sent a close frame with [`ProtocolError::code`] and dropped the connection.
    Protocol(ProtocolError),
    /// The server sent a text message (or a line of one) that is not JSON, under
    /// [`ClientConfig::require_json`](super::ClientConfig::require_json). The client sent
    /// close code 1007 and dropped the connection. Carries the JSON parser's error.
    InvalidJson(String),
    /// Nothing arrived from the server for
    /// [`ClientConfig::keepalive_timeout`](super::ClientConfig::keepalive_timeout) (the value
    /// is carried), although the client kept pinging: the server or the path to it is dead.
    KeepaliveTimeout(Duration),
    /// The socket accepted no bytes for
    /// [`ClientConfig::write_timeout`](super::ClientConfig::write_timeout) (carried) while data
    /// waited to be sent.
    WriteTimeout(Duration),
    /// The application closed the client ([`close`](super::ReconnectingClient::close), the
    /// cancellation token, or dropping every handle).
    Closed,
    /// Terminal: `retries` redials after the first dial all failed
    /// ([`ClientConfig::max_retries`](super::ClientConfig::max_retries)); `last` is the last
    /// dial's error.
    MaxRetries {
        /// The configured maximum number of retries.
        retries: u32,
        /// The error of the last dial.
        last: Box<ClientError>,
    },
}

impl ClientError {
    pub(super) fn connect(e: io::Error) -> Self {
        ClientError::Connect(Arc::new(e))
    }

    pub(super) fn tls(e: io::Error) -> Self {
        ClientError::Tls(Arc::new(e))
    }

    pub(super) fn io(e: io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }

    /// The underlying I/O error, for [`Connect`](Self::Connect), [`Tls`](Self::Tls) and
    /// [`Io`](Self::Io) (and a [`MaxRetries`](Self::MaxRetries) whose last error is one).
    ///
    /// # Examples
    /// ```
    /// use wshub::client::ClientError;
    /// assert!(ClientError::ConnectionLost.io_error().is_none());
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ClientError::Connect(e) | ClientError::Tls(e) | ClientError::Io(e) => Some(e),
            ClientError::MaxRetries { last, .. } => last.io_error(),
            _ => None,
        }
    }

    /// The close code of the frame that ended the connection: the server's for
    /// [`ServerClosed`](Self::ServerClosed), the one the client sent for
    /// [`Protocol`](Self::Protocol).
    ///
    /// # Examples
    /// ```
    /// use wshub::client::ClientError;
    /// let e = ClientError::ServerClosed { code: Some(1001), reason: "going away".into() };
    /// assert_eq!(e.close_code(), Some(1001));
    /// ```
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::ServerClosed { code, .. } => *code,
            ClientError::Protocol(e) => Some(e.code()),
            ClientError::InvalidJson(_) => Some(close_code::INVALID_PAYLOAD),
            _ => None,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect(e) => write!(f, "connect failed: {e}"),
            ClientError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ClientError::ConnectTimeout(d) => write!(f, "connect timed out after {d:?}"),
            ClientError::Handshake(e) => write!(f, "WebSocket handshake failed: {e}"),
            ClientError::Proxy(e) => write!(f, "proxy tunnel failed: {e}"),
            ClientError::Io(e) => write!(f, "connection error: {e}"),
            ClientError::ConnectionLost => {
                f.write_str("connection closed by the server without a close frame")
            }
            ClientError::ServerClosed {
                code: Some(code),
                reason,
            } if !reason.is_empty() => {
                write!(f, "closed by the server with code {code}: {reason}")
            }
            ClientError::ServerClosed {
                code: Some(code), ..
            } => {
                write!(f, "closed by the server with code {code}")
            }
            ClientError::ServerClosed { code: None, .. } => {
                f.write_str("closed by the server without a status code")
            }
            ClientError::Protocol(e) => e.fmt(f),
            ClientError::InvalidJson(e) => {
                write!(f, "the server sent a text message that is not JSON: {e}")
            }
            ClientError::KeepaliveTimeout(d) => {
                write!(f, "keepalive timeout: nothing received for {d:?}")
            }
            ClientError::WriteTimeout(d) => {
                write!(f, "write timeout: the socket accepted nothing for {d:?}")
            }
            ClientError::Closed => f.write_str("client closed"),
            ClientError::MaxRetries { retries, last } => {
                write!(f, "max retries ({retries}) exceeded: {last}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect(e) | ClientError::Tls(e) | ClientError::Io(e) => Some(&**e),
            ClientError::Handshake(e) => Some(e),
            ClientError::Proxy(e) => Some(e),
            ClientError::Protocol(e) => Some(e),
            ClientError::MaxRetries { last, .. } => Some(&**last),
            _ => None,
        }
    }
}

impl From<HandshakeError> for ClientError {
    fn from(e: HandshakeError) -> Self {
        ClientError::Handshake(e)
    }
}

/// The server's answer to the upgrade request is not a valid WebSocket handshake
/// (RFC 6455 section 4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The status is not 101 Switching Protocols (e.g. 401 for a missing token, 404).
    Status(u16),
    /// A required response header is missing or has the wrong value: `Upgrade: websocket`,
    /// `Connection: Upgrade` or `Sec-WebSocket-Accept`.
    MissingHeader(&'static str),
    /// `Sec-WebSocket-Accept` does not match the request's key.
    BadAccept,
    /// The server accepted an extension the client did not offer.
    UnexpectedExtension,
    /// The server selected a subprotocol the client did not offer.
    UnexpectedProtocol,
    /// The response is not valid HTTP/1.1 (the parser's reason).
    Malformed(String),
    /// The response head is larger than `limit` bytes.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The server closed the connection before the response head was complete.
    Eof,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Status(code) => {
                write!(f, "the server answered HTTP {code} instead of 101")
            }
            HandshakeError::MissingHeader(header) => {
                write!(f, "the response lacks a valid {header} header")
            }
            HandshakeError::BadAccept => {
                f.write_str("Sec-WebSocket-Accept does not match the request key")
            }
            HandshakeError::UnexpectedExtension => {
                f.write_str("the server negotiated an extension the client did not offer")
            }
            HandshakeError::UnexpectedProtocol => {
                f.write_str("the server selected a subprotocol the client did not offer")
            }
            HandshakeError::Malformed(reason) => write!(f, "malformed HTTP response: {reason}"),
            HandshakeError::TooLarge { limit } => {
                write!(f, "the response head exceeds {limit} bytes")
            }
            HandshakeError::Eof => f.write_str("the server closed the connection mid-handshake"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// The HTTP proxy's answer to `CONNECT` did not open a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy refused with this status (e.g. 407 when it wants credentials, 403, 502).
    Status(u16),
    /// The answer is not valid HTTP/1.1 (the parser's reason).
    Malformed(String),
    /// The answer's head is larger than `limit` bytes.
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The proxy closed the connection before its answer was complete.
    Eof,
    /// The proxy sent bytes after its answer, before the client used the tunnel.
    UnexpectedData,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Status(code) => write!(f, "the proxy answered CONNECT with HTTP {code}"),
            ProxyError::Malformed(reason) => write!(f, "malformed proxy response: {reason}"),
            ProxyError::TooLarge { limit } => {
                write!(f, "the proxy's response head exceeds {limit} bytes")
            }
            ProxyError::Eof => f.write_str("the proxy closed the connection before answering"),
            ProxyError::UnexpectedData => {
                f.write_str("the proxy sent data before the tunnel was used")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

impl From<ProxyError> for ClientError {
    fn from(e: ProxyError) -> Self {
        ClientError::Proxy(e)
    }
}

/// [`ReconnectingClient::send`](super::ReconnectingClient::send) was called while the client
/// is not connected (go-ws: `"not connected"`). Nothing is queued: the message is dropped.
///
/// # Examples
/// ```
/// assert_eq!(wshub::client::NotConnected.to_string(), "not connected");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotConnected;

impl fmt::Display for NotConnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not connected")
    }
}

impl std::error::Error for NotConnected {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_retries_message_and_source() {
        let last = ClientError::connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        let e = ClientError::MaxRetries {
            retries: 3,
            last: Box::new(last),
        };
        let text = e.to_string();
        assert!(
            text.starts_with("max retries (3) exceeded: connect failed: "),
            "{text}"
        );
        assert_eq!(
            e.io_error().map(io::Error::kind),
            Some(io::ErrorKind::ConnectionRefused)
        );
        let source = std::error::Error::source(&e).expect("source");
        assert!(source.to_string().starts_with("connect failed"));
    }

    #[test]
    fn close_codes() {
        let e = ClientError::ServerClosed {
            code: None,
            reason: String::new(),
        };
        assert_eq!(e.close_code(), None);
        assert_eq!(e.to_string(), "closed by the server without a status code");
        assert_eq!(ClientError::Closed.close_code(), None);
    }
}
