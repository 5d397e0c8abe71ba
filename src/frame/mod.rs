//! Sans-IO RFC 6455 frame codec.
//!
//! This module never touches a socket. The read side feeds bytes into a
//! [`Decoder`] through a [`BytesMut`](bytes::BytesMut) and gets complete,
//! unmasked, reassembled [`Frame`]s back; the write side builds each outgoing
//! frame once into an immutable [`Bytes`] that any number of recipients can
//! share.
//!
//! - [`Decoder`]: incremental decoder that enforces the protocol rules,
//!   reassembles fragmented messages within a size limit and validates UTF-8
//!   as soon as the bytes arrive.
//! - [`encode_with`], [`encode`], [`close_frame`], [`ping_frame`],
//!   [`pong_frame`]: unmasked (server) frames; [`encode_masked`]: masked
//!   (client) frames, including deliberately illegal ones for tests.
//! - [`apply_mask`]: the payload mask, usable on streamed chunks.
//!
//! Protocol violations are reported as a [`ProtocolError`], which carries the
//! close code (see [`close_code`]) to send before closing the connection.

use std::fmt;

use bytes::Bytes;

mod codec;
mod encode;
mod mask;

pub use codec::Decoder;
pub(crate) use encode::{append_with, first_frame_len, server_frame_len};
pub use encode::{
    close_frame, encode, encode_masked, encode_with, payload, ping_frame, pong_frame, MAX_HEADER,
};
pub use mask::apply_mask;

/// Which end of the connection a [`Decoder`] runs on.
///
/// # Examples
///
/// ```
/// use wshub::frame::{Decoder, Role};
///
/// // A server decodes frames sent by clients, which must be masked.
/// let decoder = Decoder::new(Role::Server, 64 << 10);
/// assert!(decoder.is_idle());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Decodes client frames, which must be masked; encodes unmasked frames.
    Server,
    /// Decodes server frames, which must not be masked.
    Client,
}

/// A frame opcode (RFC 6455 section 5.2). The values 3-7 and 11-15 are
/// reserved and have no variant.
///
/// # Examples
///
/// ```
/// use wshub::frame::OpCode;
///
/// assert_eq!(OpCode::Ping as u8, 9);
/// assert!(OpCode::Close.is_control());
/// assert!(!OpCode::Text.is_control());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    /// Continues a fragmented message.
    Continuation = 0,
    /// First (or only) frame of a UTF-8 text message.
    Text = 1,
    /// First (or only) frame of a binary message.
    Binary = 2,
    /// Connection close control frame.
    Close = 8,
    /// Ping control frame.
    Ping = 9,
    /// Pong control frame.
    Pong = 10,
}

impl OpCode {
    /// Returns `true` for the control opcodes: close, ping and pong.
    ///
    /// # Examples
    ///
    /// ```
    /// use wshub::frame::OpCode;
    ///
    /// assert!(OpCode::Pong.is_control());
    /// assert!(!OpCode::Continuation.is_control());
    /// ```
    #[inline]
    pub fn is_control(self) -> bool {
        (self as u8) & 0x08 != 0
    }

    /// Maps the low four bits of the first header byte to an opcode, or
    /// `None` for a reserved value.
    pub(crate) fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0 => Some(Self::Continuation),
            1 => Some(Self::Text),
            2 => Some(Self::Binary),
            8 => Some(Self::Close),
            9 => Some(Self::Ping),
            10 => Some(Self::Pong),
            _ => None,
        }
    }
}

/// One complete message or control frame, after reassembly and unmasking.
///
/// `Debug` prints payload lengths, never payload bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// A text message; the payload is guaranteed to be valid UTF-8.
    Text(Bytes),
    /// A binary message.
    Binary(Bytes),
    /// A ping; the payload is at most 125 bytes.
    Ping(Bytes),
    /// A pong; the payload is at most 125 bytes.
    Pong(Bytes),
    /// A close frame; `None` when it carried no status code.
    Close(Option<CloseFrame>),
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, payload) = match self {
            Self::Text(p) => ("Text", p),
            Self::Binary(p) => ("Binary", p),
            Self::Ping(p) => ("Ping", p),
            Self::Pong(p) => ("Pong", p),
            Self::Close(close) => return f.debug_tuple("Close").field(close).finish(),
        };
        f.debug_struct(name).field("len", &payload.len()).finish()
    }
}

/// The body of a close frame that carried a status code.
///
/// `Debug` prints the reason's length, not its text.
#[derive(Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// The status code; valid per [`is_valid_close_code`] when decoded.
    pub code: u16,
    /// The reason; valid UTF-8 of at most 123 bytes when decoded.
    pub reason: Bytes,
}

impl fmt::Debug for CloseFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseFrame")
            .field("code", &self.code)
            .field("reason_len", &self.reason.len())
            .finish()
    }
}

/// A violation of RFC 6455 by the peer, with the close code to report it.
///
/// Decoding errors are terminal: the [`Decoder`] that returned one keeps
/// returning it, and the connection should be closed with [`code`](Self::code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    code: u16,
    reason: &'static str,
}

impl ProtocolError {
    /// Creates an error with a close code and a short static reason.
    pub(crate) const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// The close code to send to the peer, e.g. [`close_code::PROTOCOL`].
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wshub::frame::{close_code, Decoder, Role};
    ///
    /// let mut decoder = Decoder::new(Role::Server, 1024);
    /// // An unmasked text frame, which a server must reject.
    /// let mut buf = BytesMut::from(&[0x81, 0x00][..]);
    /// let err = decoder.decode(&mut buf).unwrap_err();
    /// assert_eq!(err.code(), close_code::PROTOCOL);
    /// ```
    pub fn code(&self) -> u16 {
        self.code
    }

    /// A short human-readable description, suitable as a close reason.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wshub::frame::{Decoder, Role};
    ///
    /// let mut decoder = Decoder::new(Role::Client, 1024);
    /// let mut buf = BytesMut::from(&[0x83, 0x00][..]); // reserved opcode 3
    /// let err = decoder.decode(&mut buf).unwrap_err();
    /// assert!(!err.reason().is_empty());
    /// ```
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "websocket protocol error (close code {}): {}",
            self.code, self.reason
        )
    }
}

impl std::error::Error for ProtocolError {}

/// Close status codes (RFC 6455 section 7.4.1).
pub mod close_code {
    /// 1000: normal closure.
    pub const NORMAL: u16 = 1000;
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// 1002: protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// 1003: received a type of data the endpoint cannot accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// 1005: no status code was present. Never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// 1006: closed abnormally, without a close frame. Never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// 1007: message data inconsistent with its type (e.g. invalid UTF-8).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1008: policy violation.
    pub const POLICY: u16 = 1008;
    /// 1009: message too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// 1010: the client expected the server to negotiate an extension.
    pub const MANDATORY_EXT: u16 = 1010;
    /// 1011: unexpected condition on the server.
    pub const INTERNAL: u16 = 1011;
    /// 1012: the service is restarting; the client may reconnect (IANA registry). wshub sends
    /// it when a node missed publications on a channel with history: reconnecting and
    /// resuming recovers them.
    pub const SERVICE_RESTART: u16 = 1012;
    /// 1013: try again later (IANA registry). wshub sends it when it cannot read a channel's
    /// history to answer a subscribe (the broker is unreachable): reconnecting later and
    /// resuming gets the answer.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Returns `true` if `code` may appear in a close frame on the wire:
/// 1000-1003, 1007-1014 and 3000-4999.
///
/// 1004, 1005, 1006 and 1015 are reserved or local-only, and everything
/// below 1000, from 1016 to 2999 and from 5000 on is invalid.
///
/// # Examples
///
/// ```
/// use wshub::frame::{close_code, is_valid_close_code};
///
/// assert!(is_valid_close_code(close_code::NORMAL));
/// assert!(is_valid_close_code(4000));
/// assert!(!is_valid_close_code(close_code::NO_STATUS));
/// assert!(!is_valid_close_code(5000));
/// ```
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_validity() {
        for code in 0..=u16::MAX {
            let expected = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            assert_eq!(is_valid_close_code(code), expected, "{code}");
        }
        for code in [1004, 1005, 1006, 1015, 999, 1016, 2999, 5000] {
            assert!(!is_valid_close_code(code), "{code}");
        }
        for code in [1000, 1003, 1007, 1014, 3000, 4999] {
            assert!(is_valid_close_code(code), "{code}");
        }
    }

    #[test]
    fn opcode_bits_round_trip() {
        for bits in 0..16u8 {
            match OpCode::from_bits(bits) {
                Some(op) => {
                    assert_eq!(op as u8, bits);
                    assert_eq!(op.is_control(), bits >= 8);
                }
                None => assert!(matches!(bits, 3..=7 | 11..=15), "{bits}"),
            }
        }
    }

    #[test]
    fn debug_prints_lengths_not_bytes() {
        let text = Frame::Text(Bytes::from_static(b"secret"));
        assert_eq!(format!("{text:?}"), "Text { len: 6 }");
        let close = Frame::Close(Some(CloseFrame {
            code: 1000,
            reason: Bytes::from_static(b"secret"),
        }));
        let shown = format!("{close:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("reason_len: 6"), "{shown}");
        assert_eq!(format!("{:?}", Frame::Close(None)), "Close(None)");
    }

    #[test]
    fn protocol_error_display() {
        let err = ProtocolError::new(close_code::PROTOCOL, "bad");
        assert_eq!(err.code(), 1002);
        assert_eq!(err.reason(), "bad");
        assert_eq!(
            err.to_string(),
            "websocket protocol error (close code 1002): bad"
        );
    }
}
