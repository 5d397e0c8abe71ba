//! Frame encoding: build each frame once, share the `Bytes` with every
//! recipient.

use bytes::{Buf, Bytes, BytesMut};

use super::{apply_mask, OpCode};

/// The longest possible frame header: 2 fixed bytes, an 8-byte extended
/// length and a 4-byte mask key.
pub const MAX_HEADER: usize = 14;

/// The longest unmasked (server) header: no mask key.
const SERVER_HEADER: usize = 10;

/// Largest payload of a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason: the control payload minus the 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// The length of an unmasked (server) frame with a payload of `payload_len` bytes.
pub(crate) fn server_frame_len(payload_len: usize) -> usize {
    let header = match payload_len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    payload_len.saturating_add(header)
}

/// Writes a header for a payload of `len` bytes into `out`; returns how many
/// bytes of `out` were used (2, 4 or 10, plus 4 when `key` is given).
fn write_header(out: &mut [u8; MAX_HEADER], first: u8, len: usize, key: Option<[u8; 4]>) -> usize {
    let mask_bit = if key.is_some() { 0x80 } else { 0 };
    out[0] = first;
    let mut used = if len < 126 {
        // `len < 126`, so the cast is lossless.
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(len16) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&len16.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        // usize is at most 64 bits on every supported target.
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = key {
        out[used..used + 4].copy_from_slice(&key);
        used += 4;
    }
    used
}

/// Builds a single unmasked FIN frame whose payload `write` appends directly
/// into the final buffer, so the payload is never copied.
///
/// The buffer handed to `write` already holds reserved header space; `write`
/// must only append to it (e.g. `extend_from_slice`, `put_*`, `fmt::Write`).
/// Afterwards the header is written right-aligned just before the payload
/// and the returned [`Bytes`] starts exactly at the header. `size_hint` is
/// the expected payload length, used to size the allocation.
///
/// This is the server side of the protocol: frames are not masked.
///
/// # Panics
///
/// Panics if `write` shrinks the buffer below the reserved header space
/// (for example by calling `clear` or `split`).
///
/// # Examples
///
/// ```
/// use bytes::BufMut;
/// use wshub::frame::{encode_with, OpCode};
///
/// let frame = encode_with(OpCode::Text, 16, |buf| {
///     buf.put_slice(b"{\"hello\":");
///     buf.put_slice(b"1}");
/// });
/// assert_eq!(&frame[..2], &[0x81, 11]);
/// assert_eq!(&frame[2..], b"{\"hello\":1}");
/// ```
#[track_caller]
pub fn encode_with(opcode: OpCode, size_hint: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(SERVER_HEADER.saturating_add(size_hint));
    buf.resize(SERVER_HEADER, 0);
    write(&mut buf);
    assert!(
        buf.len() >= SERVER_HEADER,
        "encode_with: the write closure must only append to the buffer"
    );
    let payload_len = buf.len() - SERVER_HEADER;
    let mut header = [0u8; MAX_HEADER];
    let used = write_header(&mut header, 0x80 | opcode as u8, payload_len, None);
    let start = SERVER_HEADER - used;
    buf[start..SERVER_HEADER].copy_from_slice(&header[..used]);
    buf.advance(start);
    buf.freeze()
}

/// Appends one unmasked FIN frame to `buf`, its payload written by `write` (which must only
/// append); returns the frame's length. Several frames appended to one buffer are written to
/// a socket as one piece. The header's size is guessed from `size_hint` (the expected payload
/// length); a wrong guess costs one move of the payload.
///
/// # Panics
///
/// Panics if `write` shrinks the buffer below its length on entry plus the header space.
#[track_caller]
pub(crate) fn append_with(
    buf: &mut BytesMut,
    opcode: OpCode,
    size_hint: usize,
    write: impl FnOnce(&mut BytesMut),
) -> usize {
    let start = buf.len();
    let guess = server_frame_len(size_hint) - size_hint;
    buf.reserve(guess.saturating_add(size_hint));
    buf.resize(start + guess, 0);
    write(buf);
    assert!(
        buf.len() >= start + guess,
        "append_with: the write closure must only append to the buffer"
    );
    let payload_len = buf.len() - start - guess;
    let mut header = [0u8; MAX_HEADER];
    let used = write_header(&mut header, 0x80 | opcode as u8, payload_len, None);
    if used > guess {
        buf.resize(buf.len() + used - guess, 0);
        buf.copy_within(start + guess..start + guess + payload_len, start + used);
    } else if used < guess {
        buf.copy_within(start + guess.., start + used);
        buf.truncate(start + used + payload_len);
    }
    buf[start..start + used].copy_from_slice(&header[..used]);
    used + payload_len
}

/// The length of the unmasked frame at the start of `frames` (as [`encode_with`] and
/// [`append_with`] write them); at most `frames.len()`, and all of a piece too short for a
/// header.
pub(crate) fn first_frame_len(frames: &[u8]) -> usize {
    let Some(&second) = frames.get(1) else {
        return frames.len();
    };
    let header = header_len(second);
    let len = match header {
        2 => usize::from(second & 0x7F),
        _ => frames.get(2..header).map_or(0, |b| {
            let mut be = [0u8; 8];
            be[8 - b.len()..].copy_from_slice(b);
            usize::try_from(u64::from_be_bytes(be)).unwrap_or(usize::MAX)
        }),
    };
    header.saturating_add(len).min(frames.len())
}

/// The length of an unmasked frame's header, from its second byte: 2, 4 or 10.
fn header_len(second: u8) -> usize {
    match second & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    }
}

/// Encodes `payload` as a single unmasked FIN frame.
///
/// Control frames (close, ping, pong) must carry at most 125 bytes; this
/// function does not check it, see [`ping_frame`], [`pong_frame`] and
/// [`close_frame`] for helpers that do.
///
/// # Examples
///
/// ```
/// use wshub::frame::{encode, OpCode};
///
/// let frame = encode(OpCode::Binary, &[1, 2, 3]);
/// assert_eq!(&frame[..], &[0x82, 3, 1, 2, 3]);
/// ```
pub fn encode(opcode: OpCode, payload: &[u8]) -> Bytes {
    encode_with(opcode, payload.len(), |buf| buf.extend_from_slice(payload))
}

/// Encodes an unmasked close frame with status `code` and `reason`.
///
/// The reason is truncated at a character boundary to the 123 bytes that
/// fit in a control frame. `code` is written as given; use a code for which
/// [`is_valid_close_code`](super::is_valid_close_code) holds.
///
/// # Examples
///
/// ```
/// use wshub::frame::{close_code, close_frame};
///
/// let frame = close_frame(close_code::NORMAL, "bye");
/// assert_eq!(&frame[..], &[0x88, 5, 0x03, 0xe8, b'b', b'y', b'e']);
/// ```
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    encode_with(OpCode::Close, 2 + reason.len(), |buf| {
        buf.extend_from_slice(&code.to_be_bytes());
        buf.extend_from_slice(reason);
    })
}

/// Encodes an unmasked ping frame. A payload over 125 bytes is truncated to
/// 125, the control frame limit.
///
/// # Examples
///
/// ```
/// use wshub::frame::ping_frame;
///
/// assert_eq!(&ping_frame(b"hi")[..], &[0x89, 2, b'h', b'i']);
/// ```
pub fn ping_frame(payload: &[u8]) -> Bytes {
    encode(OpCode::Ping, control_payload(payload))
}

/// Encodes an unmasked pong frame. A payload over 125 bytes is truncated to
/// 125, the control frame limit.
///
/// # Examples
///
/// ```
/// use wshub::frame::pong_frame;
///
/// assert_eq!(&pong_frame(b"hi")[..], &[0x8a, 2, b'h', b'i']);
/// ```
pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode(OpCode::Pong, control_payload(payload))
}

/// `payload` cut to the control frame limit.
fn control_payload(payload: &[u8]) -> &[u8] {
    &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)]
}

/// The payload of a complete unmasked frame built by this module (skips its 2-, 4- or
/// 10-byte header).
///
/// # Examples
/// ```
/// use wshub::frame::{encode, payload, OpCode};
/// assert_eq!(payload(&encode(OpCode::Text, &[7; 300])), &[7; 300][..]);
/// ```
pub fn payload(frame: &[u8]) -> &[u8] {
    let header = frame.get(1).map_or(2, |&b| header_len(b));
    frame.get(header..).unwrap_or_default()
}

/// Encodes a masked (client-to-server) frame.
///
/// Takes the raw opcode bits (only the low four are used), the FIN flag, the
/// RSV bits as a 3-bit value (`0b100` is RSV1, `0b010` RSV2, `0b001` RSV3;
/// higher bits are ignored) and the masking key, so that tests can build
/// illegal frames too. The client must pick a fresh unpredictable key for
/// every frame.
///
/// # Examples
///
/// ```
/// use wshub::frame::{encode_masked, OpCode};
///
/// let frame = encode_masked(OpCode::Text as u8, true, 0, b"hi", [1, 2, 3, 4]);
/// assert_eq!(frame, [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
/// ```
pub fn encode_masked(opcode_bits: u8, fin: bool, rsv: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    let first = (u8::from(fin) << 7) | ((rsv & 0b111) << 4) | (opcode_bits & 0x0f);
    let mut header = [0u8; MAX_HEADER];
    let used = write_header(&mut header, first, payload.len(), Some(key));
    let mut out = Vec::with_capacity(used + payload.len());
    out.extend_from_slice(&header[..used]);
    out.extend_from_slice(payload);
    apply_mask(&mut out[used..], key, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_frames_equal_encoded_ones_whatever_the_size_hint() {
        let sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 70_000];
        for &len in &sizes {
            for &hint in &sizes {
                let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
                let mut buf = BytesMut::from(&b"before"[..]);
                let n = append_with(&mut buf, OpCode::Text, hint, |b| {
                    b.extend_from_slice(&payload)
                });
                let frame = encode(OpCode::Text, &payload);
                assert_eq!(n, frame.len(), "len {len} hint {hint}");
                assert_eq!(&buf[..6], b"before");
                assert_eq!(&buf[6..], &frame[..], "len {len} hint {hint}");
                assert_eq!(first_frame_len(&buf[6..]), frame.len());
                // Followed by another frame, the first one's length is still found.
                append_with(&mut buf, OpCode::Text, 3, |b| b.extend_from_slice(b"abc"));
                assert_eq!(first_frame_len(&buf[6..]), frame.len());
                assert_eq!(first_frame_len(&buf[6 + frame.len()..]), 5);
            }
        }
        assert_eq!(first_frame_len(&[]), 0);
        assert_eq!(first_frame_len(&[0x81]), 1);
        assert_eq!(first_frame_len(&[0x81, 10, 1]), 3, "never past the end");
    }

    #[test]
    fn encode_with_header_sizes() {
        for (len, header) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = encode_with(OpCode::Binary, len, |buf| buf.extend_from_slice(&payload));
            assert_eq!(frame.len(), header + len, "len {len}");
            // The returned Bytes starts exactly at the header.
            assert_eq!(frame[0], 0x82, "len {len}");
            match header {
                2 => assert_eq!(usize::from(frame[1]), len),
                4 => {
                    assert_eq!(frame[1], 126);
                    assert_eq!(usize::from(u16::from_be_bytes([frame[2], frame[3]])), len);
                }
                _ => {
                    assert_eq!(frame[1], 127);
                    let mut ext = [0u8; 8];
                    ext.copy_from_slice(&frame[2..10]);
                    assert_eq!(u64::from_be_bytes(ext), len as u64);
                }
            }
            assert_eq!(&frame[header..], &payload[..], "len {len}");
        }
    }

    #[test]
    fn encode_with_ignores_bad_size_hint() {
        let frame = encode_with(OpCode::Text, 0, |buf| buf.extend_from_slice(&[b'a'; 300]));
        assert_eq!(&frame[..4], &[0x81, 126, 1, 44]);
        assert_eq!(frame.len(), 304);
        let frame = encode_with(OpCode::Text, 1 << 20, |buf| buf.extend_from_slice(b"x"));
        assert_eq!(&frame[..], &[0x81, 1, b'x']);
    }

    #[test]
    #[should_panic(expected = "only append")]
    fn encode_with_rejects_shrinking_closure() {
        let _ = encode_with(OpCode::Text, 0, |buf| buf.clear());
    }

    #[test]
    fn close_frame_truncates_at_char_boundary() {
        let frame = close_frame(1001, "");
        assert_eq!(&frame[..], &[0x88, 2, 0x03, 0xe9]);

        let long = "é".repeat(100); // 200 bytes, 2 per char
        let frame = close_frame(1000, &long);
        // 123 is odd, so the last whole char ends at 122.
        assert_eq!(usize::from(frame[1]), 2 + 122);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());

        let ascii = "a".repeat(200);
        let frame = close_frame(1000, &ascii);
        assert_eq!(usize::from(frame[1]), 125);
    }

    #[test]
    fn control_helpers_truncate() {
        let frame = ping_frame(&[7; 200]);
        assert_eq!(&frame[..2], &[0x89, 125]);
        assert_eq!(frame.len(), 127);
        let frame = pong_frame(&[]);
        assert_eq!(&frame[..], &[0x8a, 0]);
    }

    #[test]
    fn encode_masked_bits() {
        let frame = encode_masked(0x0f, false, 0b111, &[], [0; 4]);
        assert_eq!(&frame[..2], &[0x7f, 0x80]);
        let frame = encode_masked(1, true, 0b100, &[], [0; 4]);
        assert_eq!(frame[0], 0xc1);
        let frame = encode_masked(2, true, 0b001, &[0; 70_000], [1, 2, 3, 4]);
        assert_eq!(&frame[..2], &[0x92, 0xff]);
        assert_eq!(frame.len(), 14 + 70_000);
        assert_eq!(&frame[10..14], &[1, 2, 3, 4]);
        assert_eq!(&frame[14..18], &[1, 2, 3, 4]);
    }

    #[test]
    fn server_frame_len_is_the_encoded_length() {
        for n in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            assert_eq!(
                server_frame_len(n),
                encode(OpCode::Text, &vec![b'x'; n]).len(),
                "{n}"
            );
        }
    }
}
