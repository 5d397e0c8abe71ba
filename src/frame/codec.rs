//! The incremental frame decoder.

use std::{fmt, mem};

use bytes::{Buf, Bytes, BytesMut};

use super::{
    apply_mask, close_code, is_valid_close_code, CloseFrame, Frame, OpCode, ProtocolError, Role,
};

/// Largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Smallest allocation made for a message whose payload is streamed in, so
/// that tiny chunks do not cause a reallocation each.
const MIN_GROWTH: usize = 1024;

const ERR_RSV: ProtocolError = ProtocolError::new(close_code::PROTOCOL, "reserved bits set");
const ERR_OPCODE: ProtocolError = ProtocolError::new(close_code::PROTOCOL, "reserved opcode");
const ERR_UNMASKED: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "client frame not masked");
const ERR_MASKED: ProtocolError = ProtocolError::new(close_code::PROTOCOL, "server frame masked");
const ERR_LENGTH: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "payload length has the top bit set");
const ERR_CONTROL_FRAGMENTED: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "fragmented control frame");
const ERR_CONTROL_TOO_BIG: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "control frame payload over 125 bytes");
const ERR_UNEXPECTED_CONTINUATION: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "continuation frame without a message");
const ERR_EXPECTED_CONTINUATION: ProtocolError = ProtocolError::new(
    close_code::PROTOCOL,
    "new message inside a fragmented message",
);
const ERR_TOO_BIG: ProtocolError = ProtocolError::new(close_code::TOO_BIG, "message too big");
const ERR_TEXT_UTF8: ProtocolError = ProtocolError::new(
    close_code::INVALID_PAYLOAD,
    "text message is not valid UTF-8",
);
const ERR_CLOSE_LENGTH: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "close frame payload of 1 byte");
const ERR_CLOSE_CODE: ProtocolError =
    ProtocolError::new(close_code::PROTOCOL, "invalid close code");
const ERR_CLOSE_UTF8: ProtocolError = ProtocolError::new(
    close_code::INVALID_PAYLOAD,
    "close reason is not valid UTF-8",
);

/// Incremental, sans-IO decoder for one direction of a WebSocket connection.
///
/// Feed it the bytes read from the socket through a [`BytesMut`]; each call
/// to [`decode`](Self::decode) consumes what it can from the front of the
/// buffer and returns at most one [`Frame`]. The result does not depend on
/// how the input is split across calls.
///
/// The decoder enforces RFC 6455 for its [`Role`], reassembles fragmented
/// messages up to `max_message` bytes, validates text as UTF-8 as soon as it
/// arrives, and unmasks payloads. A protocol violation is terminal: the
/// decoder then keeps returning the same [`ProtocolError`].
///
/// `Debug` prints buffered lengths, never payload bytes.
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use wshub::frame::{encode_masked, Decoder, Frame, OpCode, Role};
///
/// let mut decoder = Decoder::new(Role::Server, 1 << 20);
/// let mut buf = BytesMut::new();
/// buf.extend_from_slice(&encode_masked(OpCode::Text as u8, false, 0, b"hel", [1, 2, 3, 4]));
/// buf.extend_from_slice(&encode_masked(OpCode::Ping as u8, true, 0, b"?", [5, 6, 7, 8]));
/// buf.extend_from_slice(&encode_masked(OpCode::Continuation as u8, true, 0, b"lo", [9, 9, 9, 9]));
///
/// // Control frames between fragments come out first.
/// assert_eq!(decoder.decode(&mut buf)?, Some(Frame::Ping("?".into())));
/// assert_eq!(decoder.decode(&mut buf)?, Some(Frame::Text("hello".into())));
/// assert_eq!(decoder.decode(&mut buf)?, None);
/// assert!(decoder.is_idle());
/// # Ok::<(), wshub::frame::ProtocolError>(())
/// ```
pub struct Decoder {
    /// Which side we are; decides whether incoming frames must be masked.
    role: Role,
    /// Largest total payload of one data message, fragments summed.
    max_message: usize,
    /// Progress through the current frame.
    state: State,
    /// The fragmented message in progress between two of its frames. While a
    /// data frame's payload is being read, the message lives in
    /// [`State::Data`] instead.
    message: Option<Box<Message>>,
    /// Set by the first protocol error; returned by every later call.
    error: Option<ProtocolError>,
}

/// Where the decoder is within the current frame. The in-frame states are boxed: a
/// connection spends almost all its life between frames, where the decoder stays small.
enum State {
    /// Waiting for (the rest of) a frame header.
    Header,
    /// Reading the payload of a data frame into the message.
    Data(Box<DataFrame>),
    /// Reading the payload of a control frame.
    Control(Box<ControlFrame>),
}

/// A data frame whose payload is being read.
struct DataFrame {
    /// Whether this frame ends the message.
    fin: bool,
    /// Progress through the frame payload.
    payload: Payload,
    /// The message being assembled.
    message: Box<Message>,
}

/// A control frame whose payload is being read.
struct ControlFrame {
    /// Close, ping or pong.
    opcode: OpCode,
    /// Progress through the frame payload.
    payload: Payload,
    /// The payload so far; allocated once with the frame's length (at most 125).
    buf: BytesMut,
}

/// Progress through one frame's payload.
struct Payload {
    /// The masking key, if the frame is masked.
    key: Option<[u8; 4]>,
    /// Payload bytes already read; the mask offset of the next byte.
    offset: usize,
    /// Payload bytes still to read.
    remaining: usize,
}

impl Payload {
    /// Moves up to `remaining` bytes from the front of `src` to the end of
    /// `dst`, unmasking them. The caller ensures `dst` has the capacity.
    fn read(&mut self, src: &mut BytesMut, dst: &mut BytesMut) {
        let n = self.remaining.min(src.len());
        let start = dst.len();
        dst.extend_from_slice(&src[..n]);
        src.advance(n);
        if let Some(key) = self.key {
            apply_mask(&mut dst[start..], key, self.offset);
        }
        self.offset += n;
        self.remaining -= n;
    }
}

/// A data message being assembled.
struct Message {
    /// Text (validated as UTF-8) or binary.
    text: bool,
    /// The unmasked payload so far, fragments concatenated.
    buf: BytesMut,
    /// `buf[..checked]` is known to be valid UTF-8 (text only); what
    /// follows is at most an incomplete code point plus unchecked bytes.
    checked: usize,
}

impl Message {
    /// Validates the bytes added since the last call, failing as soon as an
    /// invalid sequence is seen. An incomplete code point at the end is left
    /// for the next call.
    fn check_utf8(&mut self) -> Result<(), ProtocolError> {
        let tail = self.buf.get(self.checked..).unwrap_or_default();
        match std::str::from_utf8(tail) {
            Ok(_) => self.checked = self.buf.len(),
            Err(e) if e.error_len().is_some() => return Err(ERR_TEXT_UTF8),
            Err(e) => self.checked += e.valid_up_to(),
        }
        Ok(())
    }

    /// Turns the complete message into a frame.
    fn finish(mut self) -> Result<Frame, ProtocolError> {
        if !self.text {
            return Ok(Frame::Binary(self.buf.freeze()));
        }
        self.check_utf8()?;
        if self.checked != self.buf.len() {
            // Ends inside a code point.
            return Err(ERR_TEXT_UTF8);
        }
        Ok(Frame::Text(self.buf.freeze()))
    }
}

/// A fully parsed and validated frame header.
#[derive(Clone, Copy)]
struct Header {
    /// FIN bit.
    fin: bool,
    /// The frame's opcode.
    opcode: OpCode,
    /// Masking key, when the MASK bit is set.
    key: Option<[u8; 4]>,
    /// Payload length, already checked against the limits.
    len: usize,
    /// Length of the header itself in bytes.
    size: usize,
}

impl Decoder {
    /// Creates a decoder for the given side of the connection.
    ///
    /// `max_message` bounds the payload of one data message, all its
    /// fragments summed, in bytes; larger messages fail with
    /// [`close_code::TOO_BIG`] as soon as a frame header announces them.
    /// Control frames are bounded by the protocol (125 bytes) instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use wshub::frame::{Decoder, Role};
    ///
    /// let decoder = Decoder::new(Role::Client, 16 << 20);
    /// assert!(decoder.is_idle());
    /// ```
    pub fn new(role: Role, max_message: usize) -> Self {
        Self {
            role,
            max_message,
            state: State::Header,
            message: None,
            error: None,
        }
    }

    /// Consumes bytes from the front of `buf` and returns the next complete
    /// frame, or `Ok(None)` when more input is needed.
    ///
    /// On `Ok(None)` every usable byte has been consumed: `buf` is empty or
    /// holds only an incomplete frame header. Payload bytes are consumed and
    /// unmasked as they arrive, so a large frame never has to be fully
    /// buffered in `buf`. Call this again after each `Ok(Some(_))`: `buf`
    /// may hold more frames.
    ///
    /// When a whole unfragmented frame is already in `buf`, its payload is
    /// split off and unmasked in place without copying; the returned
    /// [`Bytes`] then shares `buf`'s allocation.
    ///
    /// # Errors
    ///
    /// Returns a [`ProtocolError`] carrying the close code for the first
    /// protocol violation: [`close_code::PROTOCOL`] for malformed or illegal
    /// frames, [`close_code::TOO_BIG`] for a message over the limit, and
    /// [`close_code::INVALID_PAYLOAD`] for invalid UTF-8 in a text message
    /// or close reason. The error is terminal: every later call returns it
    /// again without reading `buf`.
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wshub::frame::{encode_masked, Decoder, Frame, OpCode, Role};
    ///
    /// let wire = encode_masked(OpCode::Binary as u8, true, 0, &[1, 2, 3], [4, 3, 2, 1]);
    /// let mut decoder = Decoder::new(Role::Server, 1024);
    /// let mut buf = BytesMut::new();
    /// // Byte by byte: nothing until the last byte arrives.
    /// for (i, byte) in wire.iter().enumerate() {
    ///     buf.extend_from_slice(&[*byte]);
    ///     let frame = decoder.decode(&mut buf)?;
    ///     if i + 1 < wire.len() {
    ///         assert_eq!(frame, None);
    ///     } else {
    ///         assert_eq!(frame, Some(Frame::Binary(vec![1, 2, 3].into())));
    ///     }
    /// }
    /// # Ok::<(), wshub::frame::ProtocolError>(())
    /// ```
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let result = self.decode_inner(buf);
        if let Err(error) = result {
            // Poison the decoder and release everything it buffered.
            self.error = Some(error);
            self.state = State::Header;
            self.message = None;
        }
        result
    }

    /// Returns `true` when no partial frame payload and no partial fragmented
    /// message is buffered inside the decoder (an incomplete header may still
    /// be sitting in the caller's buffer).
    ///
    /// # Examples
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wshub::frame::{encode_masked, Decoder, OpCode, Role};
    ///
    /// let wire = encode_masked(OpCode::Text as u8, true, 0, b"hello", [1, 2, 3, 4]);
    /// let mut decoder = Decoder::new(Role::Server, 1024);
    /// let mut buf = BytesMut::from(&wire[..8]); // header and 2 payload bytes
    /// assert_eq!(decoder.decode(&mut buf)?, None);
    /// assert!(!decoder.is_idle());
    /// buf.extend_from_slice(&wire[8..]);
    /// assert!(decoder.decode(&mut buf)?.is_some());
    /// assert!(decoder.is_idle());
    /// # Ok::<(), wshub::frame::ProtocolError>(())
    /// ```
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.message.is_none()
    }

    /// The body of [`decode`](Self::decode), without the poisoning.
    fn decode_inner(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        // Each iteration either consumes a whole header (at least 2 bytes),
        // completes a frame, or returns, so the loop terminates.
        loop {
            match mem::replace(&mut self.state, State::Header) {
                State::Header => {
                    let Some(header) = self.parse_header(buf)? else {
                        return Ok(None);
                    };
                    let whole =
                        header.opcode.is_control() || (header.fin && self.message.is_none());
                    if whole && buf.len() - header.size >= header.len {
                        return decode_whole(header, buf).map(Some);
                    }
                    buf.advance(header.size);
                    let payload = Payload {
                        key: header.key,
                        offset: 0,
                        remaining: header.len,
                    };
                    self.state = if header.opcode.is_control() {
                        State::Control(Box::new(ControlFrame {
                            opcode: header.opcode,
                            payload,
                            buf: BytesMut::with_capacity(header.len),
                        }))
                    } else {
                        // A continuation frame only gets here when a message
                        // is in progress; any other data frame starts one.
                        let message = self.message.take().unwrap_or_else(|| {
                            Box::new(Message {
                                text: header.opcode == OpCode::Text,
                                buf: BytesMut::new(),
                                checked: 0,
                            })
                        });
                        State::Data(Box::new(DataFrame {
                            fin: header.fin,
                            payload,
                            message,
                        }))
                    };
                }
                State::Data(mut frame) => {
                    let f = &mut *frame;
                    if !buf.is_empty() && f.payload.remaining > 0 {
                        let frame_end = f.message.buf.len() + f.payload.remaining;
                        let incoming = f.payload.remaining.min(buf.len());
                        reserve_capped(&mut f.message.buf, incoming, frame_end);
                        f.payload.read(buf, &mut f.message.buf);
                        if f.message.text {
                            f.message.check_utf8()?;
                        }
                    }
                    if f.payload.remaining > 0 {
                        self.state = State::Data(frame);
                        return Ok(None);
                    }
                    let DataFrame { fin, message, .. } = *frame;
                    if fin {
                        return message.finish().map(Some);
                    }
                    self.message = Some(message);
                }
                State::Control(mut frame) => {
                    let f = &mut *frame;
                    f.payload.read(buf, &mut f.buf);
                    if f.payload.remaining > 0 {
                        self.state = State::Control(frame);
                        return Ok(None);
                    }
                    let ControlFrame {
                        opcode, buf: body, ..
                    } = *frame;
                    return control_frame(opcode, body.freeze()).map(Some);
                }
            }
        }
    }

    /// Parses and validates the header at the front of `buf` without
    /// consuming it. Returns `Ok(None)` if it is incomplete; every rule that
    /// can be checked on the bytes present is checked, so errors are reported
    /// as early as possible.
    fn parse_header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let [b0, b1, ..] = *buf else {
            return Ok(None);
        };
        let fin = b0 & 0x80 != 0;
        if b0 & 0x70 != 0 {
            return Err(ERR_RSV);
        }
        let opcode = OpCode::from_bits(b0 & 0x0f).ok_or(ERR_OPCODE)?;
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ERR_UNMASKED),
            (Role::Client, true) => return Err(ERR_MASKED),
            _ => {}
        }
        let control = opcode.is_control();
        if control && !fin {
            return Err(ERR_CONTROL_FRAGMENTED);
        }
        match (opcode, &self.message) {
            (OpCode::Continuation, None) => return Err(ERR_UNEXPECTED_CONTINUATION),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ERR_EXPECTED_CONTINUATION),
            _ => {}
        }

        let (len, mut size) = match b1 & 0x7f {
            126 => match buf.get(2..4) {
                Some(&[a, b]) => (u64::from(u16::from_be_bytes([a, b])), 4),
                _ => return Ok(None),
            },
            127 => match buf.get(2..10) {
                Some(ext) => {
                    let mut bytes = [0u8; 8];
                    bytes.copy_from_slice(ext);
                    (u64::from_be_bytes(bytes), 10)
                }
                None => return Ok(None),
            },
            short => (u64::from(short), 2),
        };
        if len >> 63 != 0 {
            return Err(ERR_LENGTH);
        }
        let len = if control {
            if len > MAX_CONTROL_PAYLOAD as u64 {
                return Err(ERR_CONTROL_TOO_BIG);
            }
            len as usize
        } else {
            let so_far = self.message.as_ref().map_or(0, |m| m.buf.len());
            let total = (so_far as u64).saturating_add(len);
            if total > self.max_message as u64 {
                return Err(ERR_TOO_BIG);
            }
            usize::try_from(len).map_err(|_| ERR_TOO_BIG)?
        };

        let key = if masked {
            match buf.get(size..size + 4) {
                Some(&[a, b, c, d]) => {
                    size += 4;
                    Some([a, b, c, d])
                }
                _ => return Ok(None),
            }
        } else {
            None
        };
        Ok(Some(Header {
            fin,
            opcode,
            key,
            len,
            size,
        }))
    }
}

/// Fast path: the whole frame, a control frame or an unfragmented message,
/// is in `buf`. Splits the payload off without copying and unmasks it in
/// place.
fn decode_whole(header: Header, buf: &mut BytesMut) -> Result<Frame, ProtocolError> {
    buf.advance(header.size);
    let mut payload = buf.split_to(header.len);
    if let Some(key) = header.key {
        apply_mask(&mut payload, key, 0);
    }
    match header.opcode {
        OpCode::Text => {
            if std::str::from_utf8(&payload).is_err() {
                return Err(ERR_TEXT_UTF8);
            }
            Ok(Frame::Text(payload.freeze()))
        }
        OpCode::Binary => Ok(Frame::Binary(payload.freeze())),
        // Continuation frames never take the fast path; treat one like the
        // control frames so this stays total.
        OpCode::Continuation | OpCode::Close | OpCode::Ping | OpCode::Pong => {
            control_frame(header.opcode, payload.freeze())
        }
    }
}

/// Builds the frame for a complete control payload, validating close frames.
fn control_frame(opcode: OpCode, payload: Bytes) -> Result<Frame, ProtocolError> {
    match opcode {
        OpCode::Ping => Ok(Frame::Ping(payload)),
        OpCode::Pong => Ok(Frame::Pong(payload)),
        _ => close(&payload),
    }
}

/// Parses and validates a close frame payload.
fn close(payload: &Bytes) -> Result<Frame, ProtocolError> {
    let code = match payload[..] {
        [] => return Ok(Frame::Close(None)),
        [_] => return Err(ERR_CLOSE_LENGTH),
        [a, b, ..] => u16::from_be_bytes([a, b]),
    };
    if !is_valid_close_code(code) {
        return Err(ERR_CLOSE_CODE);
    }
    let reason = payload.slice(2..);
    if std::str::from_utf8(&reason).is_err() {
        return Err(ERR_CLOSE_UTF8);
    }
    Ok(Frame::Close(Some(CloseFrame { code, reason })))
}

/// Ensures `buf` can take `additional` more bytes, growing geometrically but
/// never beyond `frame_end`, the message length once the current frame is
/// complete (which the header check keeps within `max_message`). Growth
/// allocates exactly the chosen capacity, unlike `BytesMut::reserve`, which
/// may round up past the limit.
fn reserve_capped(buf: &mut BytesMut, additional: usize, frame_end: usize) {
    let required = buf.len() + additional;
    if buf.capacity() >= required {
        return;
    }
    let target = buf
        .capacity()
        .saturating_mul(2)
        .max(MIN_GROWTH)
        .min(frame_end)
        .max(required);
    let mut grown = BytesMut::with_capacity(target);
    grown.extend_from_slice(buf);
    *buf = grown;
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, frame_remaining) = match &self.state {
            State::Header => ("header", 0),
            State::Data(f) => ("data", f.payload.remaining),
            State::Control(f) => ("control", f.payload.remaining),
        };
        let message_len = match &self.state {
            State::Data(f) => Some(f.message.buf.len()),
            _ => self.message.as_ref().map(|m| m.buf.len()),
        };
        f.debug_struct("Decoder")
            .field("role", &self.role)
            .field("max_message", &self.max_message)
            .field("state", &state)
            .field("frame_remaining", &frame_remaining)
            .field("message_len", &message_len)
            .field("error", &self.error)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode, encode_masked};

    const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
    const TEXT: u8 = OpCode::Text as u8;
    const BINARY: u8 = OpCode::Binary as u8;
    const CONT: u8 = OpCode::Continuation as u8;
    const CLOSE: u8 = OpCode::Close as u8;
    const PING: u8 = OpCode::Ping as u8;
    const PONG: u8 = OpCode::Pong as u8;

    type Outcome = Result<Frame, ProtocolError>;

    /// A masked FIN frame with no RSV bits.
    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        encode_masked(opcode, true, 0, payload, KEY)
    }

    /// A masked fragment.
    fn fragment(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        encode_masked(opcode, fin, 0, payload, KEY)
    }

    /// Decodes everything in `buf`, stopping at `Ok(None)` or an error.
    fn drain(decoder: &mut Decoder, buf: &mut BytesMut, out: &mut Vec<Outcome>) -> bool {
        loop {
            match decoder.decode(buf) {
                Ok(Some(frame)) => out.push(Ok(frame)),
                Ok(None) => return true,
                Err(e) => {
                    out.push(Err(e));
                    return false;
                }
            }
        }
    }

    /// Feeds `wire` in chunks of the given sizes (cycled), collecting outcomes.
    fn decode_chunked(role: Role, max: usize, wire: &[u8], chunks: &[usize]) -> Vec<Outcome> {
        let mut decoder = Decoder::new(role, max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut sizes = chunks.iter().cycle();
        while pos < wire.len() {
            let n = (*sizes.next().unwrap()).clamp(1, wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            if !drain(&mut decoder, &mut buf, &mut out) {
                break;
            }
        }
        out
    }

    fn decode_all(role: Role, max: usize, wire: &[u8]) -> Vec<Outcome> {
        decode_chunked(role, max, wire, &[usize::MAX])
    }

    /// Decodes a single complete input and expects exactly one outcome.
    fn decode_one(role: Role, wire: &[u8]) -> Outcome {
        let out = decode_all(role, 1 << 20, wire);
        assert_eq!(out.len(), 1, "{out:?}");
        // Same result byte by byte.
        assert_eq!(decode_chunked(role, 1 << 20, wire, &[1]), out);
        out.into_iter().next().unwrap()
    }

    fn err_code(outcome: Outcome) -> u16 {
        outcome.expect_err("expected a protocol error").code()
    }

    fn text(s: &str) -> Frame {
        Frame::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn masked_round_trip_all_length_encodings() {
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let s = std::str::from_utf8(&payload).unwrap();
            for (opcode, expected) in [
                (TEXT, text(s)),
                (BINARY, Frame::Binary(payload.clone().into())),
            ] {
                let wire = masked(opcode, &payload);
                let mut decoder = Decoder::new(Role::Server, 1 << 20);
                let mut buf = BytesMut::from(&wire[..]);
                assert_eq!(decoder.decode(&mut buf), Ok(Some(expected.clone())));
                assert!(buf.is_empty());
                assert!(decoder.is_idle());
                assert_eq!(decoder.decode(&mut buf), Ok(None));
                // Streamed in uneven chunks.
                let out = decode_chunked(Role::Server, 1 << 20, &wire, &[3, 1, 1000, 7]);
                assert_eq!(out, vec![Ok(expected)]);
            }
        }
    }

    #[test]
    fn client_decodes_unmasked_server_frames() {
        let mut wire = encode(OpCode::Text, b"hi").to_vec();
        wire.extend_from_slice(&encode(OpCode::Binary, &[0; 70_000]));
        wire.extend_from_slice(&crate::frame::close_frame(1000, "bye"));
        let expected = vec![
            Ok(text("hi")),
            Ok(Frame::Binary(vec![0; 70_000].into())),
            Ok(Frame::Close(Some(CloseFrame {
                code: 1000,
                reason: "bye".into(),
            }))),
        ];
        assert_eq!(decode_all(Role::Client, 1 << 20, &wire), expected);
        assert_eq!(decode_chunked(Role::Client, 1 << 20, &wire, &[1]), expected);
    }

    #[test]
    fn mask_bit_must_match_role() {
        let unmasked = encode(OpCode::Text, b"hi");
        assert_eq!(err_code(decode_one(Role::Server, &unmasked)), 1002);
        let with_mask = masked(TEXT, b"hi");
        assert_eq!(err_code(decode_one(Role::Client, &with_mask)), 1002);
        // Detected from the first two header bytes.
        let mut decoder = Decoder::new(Role::Client, 100);
        let mut buf = BytesMut::from(&with_mask[..2]);
        assert_eq!(decoder.decode(&mut buf).unwrap_err().code(), 1002);
    }

    #[test]
    fn each_rsv_bit_rejected() {
        for rsv in [0b100, 0b010, 0b001] {
            let wire = encode_masked(TEXT, true, rsv, b"x", KEY);
            assert_eq!(
                err_code(decode_one(Role::Server, &wire)),
                1002,
                "rsv {rsv:03b}"
            );
        }
    }

    #[test]
    fn each_reserved_opcode_rejected() {
        for opcode in (3..=7).chain(11..=15) {
            let wire = masked(opcode, b"");
            assert_eq!(
                err_code(decode_one(Role::Server, &wire)),
                1002,
                "opcode {opcode}"
            );
        }
    }

    #[test]
    fn control_frame_limits() {
        assert_eq!(
            decode_one(Role::Server, &masked(PING, &[7; 125])),
            Ok(Frame::Ping(vec![7; 125].into()))
        );
        assert_eq!(
            err_code(decode_one(Role::Server, &masked(PING, &[7; 126]))),
            1002
        );
        assert_eq!(
            err_code(decode_one(Role::Server, &masked(PONG, &[7; 126]))),
            1002
        );
        let fragmented = fragment(PING, false, b"x");
        assert_eq!(err_code(decode_one(Role::Server, &fragmented)), 1002);
        let fragmented_close = fragment(CLOSE, false, &[]);
        assert_eq!(err_code(decode_one(Role::Server, &fragmented_close)), 1002);
    }

    #[test]
    fn continuation_without_start() {
        let wire = fragment(CONT, true, b"x");
        assert_eq!(err_code(decode_one(Role::Server, &wire)), 1002);
    }

    #[test]
    fn new_message_during_fragmented_message() {
        for opcode in [TEXT, BINARY] {
            let mut wire = fragment(TEXT, false, b"a");
            wire.extend(masked(opcode, b"b"));
            let out = decode_all(Role::Server, 100, &wire);
            assert_eq!(out.len(), 1);
            assert_eq!(err_code(out[0].clone()), 1002);
            assert_eq!(decode_chunked(Role::Server, 100, &wire, &[1]), out);
        }
    }

    #[test]
    fn control_between_fragments() {
        let mut wire = fragment(TEXT, false, b"hel");
        wire.extend(masked(PING, b"p"));
        wire.extend(fragment(CONT, false, b"lo "));
        wire.extend(masked(PONG, b""));
        wire.extend(masked(CLOSE, &[]));
        wire.extend(fragment(CONT, true, b"world"));
        wire.extend(masked(BINARY, b"next"));
        let expected = vec![
            Ok(Frame::Ping("p".into())),
            Ok(Frame::Pong(Bytes::new())),
            Ok(Frame::Close(None)),
            Ok(text("hello world")),
            Ok(Frame::Binary("next".into())),
        ];
        assert_eq!(decode_all(Role::Server, 100, &wire), expected);
        for chunk in 1..20 {
            assert_eq!(decode_chunked(Role::Server, 100, &wire, &[chunk]), expected);
        }
    }

    #[test]
    fn utf8_code_point_split_across_fragments() {
        for s in ["é", "€", "😀", "a😀b€c"] {
            let bytes = s.as_bytes();
            for split in 0..=bytes.len() {
                let mut wire = fragment(TEXT, false, &bytes[..split]);
                wire.extend(fragment(CONT, true, &bytes[split..]));
                assert_eq!(
                    decode_all(Role::Server, 100, &wire),
                    vec![Ok(text(s))],
                    "{s} split at {split}"
                );
                assert_eq!(
                    decode_chunked(Role::Server, 100, &wire, &[1]),
                    vec![Ok(text(s))]
                );
            }
        }
    }

    #[test]
    fn invalid_utf8_fails_fast_within_a_frame() {
        let mut payload = b"ok\xffrest".to_vec();
        payload.resize(1000, b'x');
        let wire = masked(TEXT, &payload);
        // Header (4 + 4 bytes) and the first 3 payload bytes only.
        let mut decoder = Decoder::new(Role::Server, 1 << 20);
        let mut buf = BytesMut::from(&wire[..11]);
        assert_eq!(decoder.decode(&mut buf).unwrap_err().code(), 1007);
        // Same for a second fragment whose payload is still arriving.
        let mut wire = fragment(TEXT, false, "€".as_bytes());
        let second = fragment(CONT, true, &payload);
        wire.extend_from_slice(&second[..11]);
        let out = decode_all(Role::Server, 1 << 20, &wire);
        assert_eq!(out.len(), 1);
        assert_eq!(err_code(out[0].clone()), 1007);
        // And an invalid continuation byte right after a fragment boundary.
        let mut wire = fragment(TEXT, false, b"\xc3");
        wire.extend(fragment(CONT, false, b"("));
        let out = decode_all(Role::Server, 1 << 20, &wire);
        assert_eq!(err_code(out[0].clone()), 1007);
    }

    #[test]
    fn truncated_code_point_at_end() {
        assert_eq!(
            err_code(decode_one(Role::Server, &masked(TEXT, b"a\xe2\x82"))),
            1007
        );
        let mut wire = fragment(TEXT, false, b"a");
        wire.extend(fragment(CONT, true, b"\xf0\x9f\x98"));
        assert_eq!(err_code(decode_one(Role::Server, &wire)), 1007);
        // A trailing empty fragment does not complete it either.
        let mut wire = fragment(TEXT, false, b"\xe2\x82");
        wire.extend(fragment(CONT, true, b""));
        assert_eq!(err_code(decode_one(Role::Server, &wire)), 1007);
    }

    #[test]
    fn message_limit() {
        let max = 100;
        // Exactly at the limit, in one frame and in fragments.
        assert_eq!(
            decode_all(Role::Server, max, &masked(BINARY, &[1; 100])),
            vec![Ok(Frame::Binary(vec![1; 100].into()))]
        );
        let mut wire = fragment(BINARY, false, &[1; 60]);
        wire.extend(fragment(CONT, true, &[1; 40]));
        assert_eq!(
            decode_all(Role::Server, max, &wire),
            vec![Ok(Frame::Binary(vec![1; 100].into()))]
        );
        // One over via fragments: fails on the second header alone.
        let mut wire = fragment(BINARY, false, &[1; 60]);
        let second = fragment(CONT, true, &[1; 41]);
        wire.extend_from_slice(&second[..6]);
        let mut decoder = Decoder::new(Role::Server, max);
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap_err().code(), 1009);
        assert!(decoder.is_idle());
        // One over in a single frame.
        assert_eq!(
            err_code(decode_all(Role::Server, max, &masked(TEXT, &[b'a'; 101]))[0].clone()),
            1009
        );
    }

    #[test]
    fn huge_length_fails_before_payload() {
        // 2^62 bytes announced: 1009 from the header's first 10 bytes.
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let mut decoder = Decoder::new(Role::Server, 1 << 20);
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap_err().code(), 1009);
        // 2^63: the top bit is illegal, 1002.
        let mut header = vec![0x82, 0xff];
        header.extend_from_slice(&(1u64 << 63).to_be_bytes());
        header.extend_from_slice(&KEY);
        let mut decoder = Decoder::new(Role::Server, usize::MAX);
        let mut buf = BytesMut::from(&header[..]);
        assert_eq!(decoder.decode(&mut buf).unwrap_err().code(), 1002);
        assert_eq!(err_code(decode_one(Role::Server, &header)), 1002);
    }

    #[test]
    fn non_minimal_length_accepted() {
        let mut wire = vec![0x82, 0x80 | 126, 0, 3];
        wire.extend_from_slice(&[0; 4]);
        wire.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode_one(Role::Server, &wire),
            Ok(Frame::Binary(vec![1, 2, 3].into()))
        );
        let mut wire = vec![0x89, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 1];
        wire.extend_from_slice(&[0; 4]);
        wire.push(b'p');
        assert_eq!(decode_one(Role::Server, &wire), Ok(Frame::Ping("p".into())));
    }

    #[test]
    fn close_frames() {
        let close = |payload: &[u8]| decode_one(Role::Server, &masked(CLOSE, payload));
        assert_eq!(close(&[]), Ok(Frame::Close(None)));
        assert_eq!(err_code(close(&[0x03])), 1002);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(
            close(&payload),
            Ok(Frame::Close(Some(CloseFrame {
                code: 1000,
                reason: "bye ✓".into()
            })))
        );
        for code in [1005u16, 1006, 999, 5000, 0, 1004, 1015, 2999] {
            assert_eq!(err_code(close(&code.to_be_bytes())), 1002, "code {code}");
        }
        for code in [3000u16, 4999, 1001, 1014] {
            assert_eq!(
                close(&code.to_be_bytes()),
                Ok(Frame::Close(Some(CloseFrame {
                    code,
                    reason: Bytes::new()
                }))),
                "code {code}"
            );
        }
        assert_eq!(err_code(close(&[0x03, 0xe8, b'a', 0xff])), 1007);
        assert_eq!(err_code(close(&[0x03, 0xe8, 0xe2, 0x82])), 1007);
    }

    #[test]
    fn poisoned_after_error() {
        let mut decoder = Decoder::new(Role::Server, 100);
        let mut buf = BytesMut::from(&encode_masked(TEXT, true, 0b100, b"x", KEY)[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err.code(), 1002);
        let mut good = BytesMut::from(&masked(TEXT, b"fine")[..]);
        assert_eq!(decoder.decode(&mut good), Err(err));
        assert_eq!(decoder.decode(&mut BytesMut::new()), Err(err));
        // The input is left alone once poisoned.
        assert_eq!(good.len(), 10);

        // Poisoned mid-message: the buffered message is released.
        let mut decoder = Decoder::new(Role::Server, 100);
        let mut wire = fragment(TEXT, false, b"abc");
        wire.extend(fragment(CONT, true, b"\xff"));
        let mut buf = BytesMut::from(&wire[..]);
        let err = decoder.decode(&mut buf).unwrap_err();
        assert_eq!(err.code(), 1007);
        assert!(decoder.is_idle());
        assert_eq!(decoder.decode(&mut buf), Err(err));
    }

    #[test]
    fn payload_consumed_as_it_arrives() {
        let wire = masked(BINARY, &[9; 300]);
        let mut decoder = Decoder::new(Role::Server, 1000);
        let mut buf = BytesMut::from(&wire[..3]); // incomplete header stays put
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(buf.len(), 3);
        assert!(decoder.is_idle());
        buf.extend_from_slice(&wire[3..100]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert!(!decoder.is_idle());
        buf.extend_from_slice(&wire[100..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some(Frame::Binary(vec![9; 300].into())))
        );
        assert!(decoder.is_idle());
    }

    #[test]
    fn fast_path_is_zero_copy() {
        let mut wire = masked(BINARY, &[5; 200]);
        wire.extend(masked(TEXT, b"second"));
        let mut buf = BytesMut::from(&wire[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut decoder = Decoder::new(Role::Server, 1000);
        for _ in 0..2 {
            let frame = decoder.decode(&mut buf).unwrap().unwrap();
            let (Frame::Binary(payload) | Frame::Text(payload)) = frame else {
                panic!("unexpected {frame:?}");
            };
            assert!(range.contains(&(payload.as_ptr() as usize)));
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn allocation_never_exceeds_limit() {
        let max = 5000;
        let mut wire = Vec::new();
        for _ in 0..4 {
            wire.extend(fragment(
                if wire.is_empty() { BINARY } else { CONT },
                false,
                &[1; 1000],
            ));
        }
        wire.extend(fragment(CONT, true, &[1; 1000]));
        for chunk in [1, 7, 300, 5000] {
            let mut decoder = Decoder::new(Role::Server, max);
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                frames.extend(decoder.decode(&mut buf).unwrap());
                let capacity = match (&decoder.state, &decoder.message) {
                    (State::Data(f), _) => f.message.buf.capacity(),
                    (_, Some(message)) => message.buf.capacity(),
                    _ => 0,
                };
                assert!(capacity <= max, "capacity {capacity} with chunk {chunk}");
            }
            assert_eq!(frames, vec![Frame::Binary(vec![1; 5000].into())]);
        }
    }

    #[test]
    fn debug_shows_no_payload() {
        let mut decoder = Decoder::new(Role::Server, 100);
        let wire = fragment(TEXT, false, b"secret");
        let mut buf = BytesMut::from(&wire[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        let shown = format!("{decoder:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("message_len: Some(6)"), "{shown}");
    }

    /// Small deterministic generator (xorshift64*); no dependency needed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes_below(&mut self, n: usize) -> Vec<u8> {
            let len = self.below(n);
            self.bytes(len)
        }

        fn key(&mut self) -> [u8; 4] {
            (self.next() as u32).to_ne_bytes()
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }

        fn text(&mut self, max_chars: usize) -> String {
            const CHARS: [char; 6] = ['a', 'Z', ' ', 'é', '€', '😀'];
            let n = self.below(max_chars + 1);
            (0..n).map(|_| CHARS[self.below(CHARS.len())]).collect()
        }
    }

    /// Encodes one frame for `role`'s peer: masked towards a server,
    /// unmasked towards a client.
    fn wire_frame(rng: &mut Rng, role: Role, opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let frame = encode_masked(opcode, fin, 0, payload, rng.key());
        match role {
            Role::Server => frame,
            Role::Client => {
                // Drop the mask bit and key, and unmask the payload.
                let key_at = match frame[1] & 0x7f {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let mut out = frame[..key_at].to_vec();
                out[1] &= 0x7f;
                out.extend_from_slice(payload);
                out
            }
        }
    }

    /// Generates a valid frame sequence and the frames it decodes to,
    /// optionally ending in a random protocol violation.
    fn scenario(rng: &mut Rng, role: Role, max: usize) -> (Vec<u8>, Vec<Outcome>) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for _ in 0..rng.below(8) + 1 {
            match rng.below(5) {
                0 => {
                    let payload = rng.bytes_below(126);
                    let (op, frame) = if rng.below(2) == 0 {
                        (PING, Frame::Ping(payload.clone().into()))
                    } else {
                        (PONG, Frame::Pong(payload.clone().into()))
                    };
                    wire.extend(wire_frame(rng, role, op, true, &payload));
                    expected.push(Ok(frame));
                }
                1 => {
                    let code = [1000u16, 1001, 3000, 4999][rng.below(4)];
                    let reason = rng.text(20);
                    let mut payload = code.to_be_bytes().to_vec();
                    payload.extend_from_slice(reason.as_bytes());
                    if payload.len() <= 125 {
                        wire.extend(wire_frame(rng, role, CLOSE, true, &payload));
                        expected.push(Ok(Frame::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        }))));
                    }
                }
                _ => {
                    let is_text = rng.below(2) == 0;
                    let payload = if is_text {
                        let max_chars = if rng.below(10) == 0 { 30_000 } else { 100 };
                        rng.text(max_chars).into_bytes()
                    } else {
                        let len = if rng.below(10) == 0 {
                            70_000
                        } else {
                            rng.below(300)
                        };
                        rng.bytes(len)
                    };
                    let payload = &payload[..payload.len().min(max)];
                    // For text, cut at a char boundary to stay valid.
                    let payload = if is_text {
                        let mut end = payload.len();
                        while std::str::from_utf8(&payload[..end]).is_err() {
                            end -= 1;
                        }
                        &payload[..end]
                    } else {
                        payload
                    };
                    // Random fragment boundaries, possibly mid code point,
                    // with control frames in between.
                    let pieces = rng.below(4) + 1;
                    let mut cuts: Vec<usize> =
                        (1..pieces).map(|_| rng.below(payload.len() + 1)).collect();
                    cuts.push(0);
                    cuts.push(payload.len());
                    cuts.sort_unstable();
                    let mut interleaved = Vec::new();
                    for (i, pair) in cuts.windows(2).enumerate() {
                        let op = match (i, is_text) {
                            (0, true) => TEXT,
                            (0, false) => BINARY,
                            _ => CONT,
                        };
                        let fin = i + 2 == cuts.len();
                        wire.extend(wire_frame(rng, role, op, fin, &payload[pair[0]..pair[1]]));
                        if !fin && rng.below(3) == 0 {
                            let ping = rng.bytes_below(10);
                            wire.extend(wire_frame(rng, role, PING, true, &ping));
                            interleaved.push(Ok(Frame::Ping(ping.into())));
                        }
                    }
                    expected.extend(interleaved);
                    let payload = Bytes::copy_from_slice(payload);
                    expected.push(Ok(if is_text {
                        Frame::Text(payload)
                    } else {
                        Frame::Binary(payload)
                    }));
                }
            }
        }
        if rng.below(3) == 0 {
            let (bad, code) = match rng.below(6) {
                0 => (encode_masked(TEXT, true, 0b010, b"x", rng.key()), 1002),
                1 => (wire_frame(rng, role, CONT, true, b"x"), 1002),
                2 => (wire_frame(rng, role, TEXT, true, b"ab\xc0\xafcd"), 1007),
                3 => (wire_frame(rng, role, BINARY, true, &vec![0; max + 1]), 1009),
                4 => (wire_frame(rng, role, CLOSE, true, &[0x03, 0xed]), 1002),
                _ => (wire_frame(rng, role, PING, false, b""), 1002),
            };
            wire.extend(bad);
            expected.push(Err(ProtocolError::new(code, "")));
        }
        (wire, expected)
    }

    /// Compares outcomes by frame, or by close code for errors.
    fn same(actual: &[Outcome], expected: &[Outcome]) -> bool {
        actual.len() == expected.len()
            && actual.iter().zip(expected).all(|pair| match pair {
                (Ok(a), Ok(b)) => a == b,
                (Err(a), Err(b)) => a.code() == b.code(),
                _ => false,
            })
    }

    #[test]
    fn split_independence_over_random_sequences() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let role = if round % 2 == 0 {
                Role::Server
            } else {
                Role::Client
            };
            let max = 80_000;
            let (wire, expected) = scenario(&mut rng, role, max);
            let whole = decode_all(role, max, &wire);
            assert!(
                same(&whole, &expected),
                "round {round}: {whole:?} vs {expected:?}"
            );
            let bytewise = decode_chunked(role, max, &wire, &[1]);
            assert_eq!(bytewise, whole, "round {round}");
            let sizes: Vec<usize> = (0..16).map(|_| rng.below(200) + 1).collect();
            assert_eq!(
                decode_chunked(role, max, &wire, &sizes),
                whole,
                "round {round}"
            );
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(42);
        for round in 0..2000 {
            let role = if round % 2 == 0 {
                Role::Server
            } else {
                Role::Client
            };
            let mut wire = rng.bytes_below(300);
            // Bias towards plausible headers so deeper paths run.
            if let Some(first) = wire.first_mut() {
                *first &= 0x8f;
            }
            if let Some(second) = wire.get_mut(1) {
                if role == Role::Server {
                    *second |= 0x80;
                } else {
                    *second &= 0x7f;
                }
            }
            let max = rng.below(400);
            let whole = decode_all(role, max, &wire);
            let bytewise = decode_chunked(role, max, &wire, &[1]);
            assert_eq!(whole, bytewise, "round {round}");
        }
    }
}
