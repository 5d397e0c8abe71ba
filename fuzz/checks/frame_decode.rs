//! The `frame_decode` check: arbitrary bytes through `wshub::frame::Decoder`.
//!
//! Input layout: `[config, seed, wire @ ..]`. Bit 0 of `config` picks the role (server or
//! client), bits 1-3 the message size limit from [`MAX_SIZES`], bits 4-7 and `seed` the
//! chunking. `wire` is decoded three times: all at once, byte by byte, and in pseudo-random
//! chunks derived from `seed`. Each run must produce exactly what [`reference`], a
//! straightforward whole-buffer decoder written from RFC 6455 and the decoder's documented
//! rules, produces, and must respect these invariants:
//!
//! - no panic; every decoded frame is well-formed (UTF-8 text, control payloads of at most
//!   125 bytes, valid close codes, messages within the limit);
//! - `Ok(None)` leaves at most an incomplete header in the buffer; a protocol error is
//!   terminal and leaves the buffer alone;
//! - each `decode` call loop ends: at most one frame per two buffered bytes;
//! - with a [`MemProbe`] (the fuzz binary's counting allocator): the memory the decoder holds
//!   after a call never exceeds the configured limit (plus one control frame), nor twice what
//!   was fed to it plus the decoder's minimum growth step; the peak inside a call is at most
//!   twice that; and nothing it allocated is still alive once decoder, buffer and frames are
//!   dropped.
//!
//! Shared by `fuzz_targets/frame_decode.rs` and the main crate's `tests/fuzz_replay.rs`.

use bytes::BytesMut;
use wshub::frame::{is_valid_close_code, Decoder, Frame, Role};

/// Message size limits under test, small and large (`usize::MAX`: no limit).
pub(crate) const MAX_SIZES: [usize; 8] = [0, 1, 125, 126, 1024, 65_536, 1 << 24, usize::MAX];

/// The decoder's smallest growth step for a streamed message (`MIN_GROWTH` in codec.rs).
const MIN_GROWTH: usize = 1024;

/// Largest control frame payload.
const MAX_CONTROL: usize = 125;

/// Allowance for the small bookkeeping allocations of `bytes` (a shared-buffer header when a
/// frame is split off the input buffer without copying).
const SLACK: usize = 512;

/// Observes the memory allocated by the current thread between `start` and `stop`.
pub(crate) trait MemProbe {
    /// Forgets previous counts: nothing counted is alive.
    fn reset(&self);
    /// Starts counting this thread's allocations.
    fn start(&self);
    /// Stops counting. Returns the bytes still alive out of every allocation counted since
    /// `reset` (wherever it was freed), and the peak of that number since `start`.
    fn stop(&self) -> (isize, isize);
}

/// One decoder outcome, owned, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    Text(Vec<u8>),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, Vec<u8>)>),
    /// A protocol error, by close code.
    Error(u16),
}

/// Runs the check on one fuzz input.
pub(crate) fn check(data: &[u8], mem: Option<&dyn MemProbe>) {
    let [config, seed, ref wire @ ..] = *data else {
        return;
    };
    let role = if config & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let max = MAX_SIZES[usize::from(config >> 1) & 7];
    let (expected, expected_idle) = reference(role, max, wire);

    let mut whole = || usize::MAX;
    let mut bytewise = || 1;
    let chunk_limits = [2, 3, 7, 16, 64, 300, 4096, 1 << 16];
    let limit = chunk_limits[usize::from(config >> 4) % chunk_limits.len()];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (u64::from(seed) << 32) ^ wire.len() as u64);
    let mut random = move || 1 + (rng.next() % limit as u64) as usize;
    let chunkings: [(&str, &mut dyn FnMut() -> usize); 3] = [
        ("whole", &mut whole),
        ("bytewise", &mut bytewise),
        ("random", &mut random),
    ];
    for (name, sizes) in chunkings {
        let (got, idle) = run(role, max, wire, sizes, mem);
        assert_eq!(
            got, expected,
            "{name} chunking differs from the reference ({role:?}, max {max})"
        );
        assert_eq!(idle, expected_idle, "{name}: is_idle() at the end");
    }
}

/// Largest frame header for frames a decoder of `role` accepts.
fn max_header(role: Role) -> usize {
    match role {
        Role::Server => 14,
        Role::Client => 10,
    }
}

/// Feeds `wire` to a fresh decoder in chunks of `sizes()` bytes.
fn run(
    role: Role,
    max: usize,
    wire: &[u8],
    sizes: &mut dyn FnMut() -> usize,
    mem: Option<&dyn MemProbe>,
) -> (Vec<Out>, bool) {
    if let Some(mem) = mem {
        mem.reset();
    }
    let mut decoder = Decoder::new(role, max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    'feed: while pos < wire.len() {
        let n = sizes().clamp(1, wire.len() - pos);
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        // Every frame takes at least a 2-byte header, so this many calls always suffice.
        let max_calls = buf.len() / 2 + 2;
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls <= max_calls, "decode loop does not terminate");
            if let Some(mem) = mem {
                mem.start();
            }
            let result = decoder.decode(&mut buf);
            if let Some(mem) = mem {
                let (live, peak) = mem.stop();
                check_memory(max, pos, live, peak);
            }
            match result {
                Ok(Some(frame)) => out.push(owned(frame, max)),
                Ok(None) => {
                    assert!(
                        buf.len() < max_header(role),
                        "Ok(None) left {} bytes, more than an incomplete header",
                        buf.len()
                    );
                    break;
                }
                Err(e) => {
                    out.push(Out::Error(e.code()));
                    let len = buf.len();
                    assert_eq!(decoder.decode(&mut buf), Err(e), "error is terminal");
                    assert_eq!(buf.len(), len, "a poisoned decoder reads nothing");
                    assert!(decoder.is_idle(), "a poisoned decoder holds nothing");
                    break 'feed;
                }
            }
        }
    }
    let idle = decoder.is_idle();
    drop(decoder);
    drop(buf);
    if let Some(mem) = mem {
        mem.start();
        let (live, _) = mem.stop();
        assert_eq!(live, 0, "memory allocated by the decoder is still alive");
    }
    (out, idle)
}

/// Asserts the memory bounds after one `decode` call, `fed` bytes into the input.
fn check_memory(max: usize, fed: usize, live: isize, peak: isize) {
    let bound = max.min(fed.saturating_mul(2).saturating_add(MIN_GROWTH));
    let held = bound.saturating_add(MAX_CONTROL + SLACK);
    let transient = bound.saturating_mul(2).saturating_add(MAX_CONTROL + SLACK);
    assert!(
        usize::try_from(live).is_ok_and(|l| l <= held),
        "decoder holds {live} bytes after a call (limit {max}, {fed} bytes fed)"
    );
    assert!(
        usize::try_from(peak).is_ok_and(|p| p <= transient),
        "decoder peaked at {peak} bytes in a call (limit {max}, {fed} bytes fed)"
    );
}

/// Validates a decoded frame and copies it out (so the decoder's buffers are dropped now).
fn owned(frame: Frame, max: usize) -> Out {
    match frame {
        Frame::Text(p) => {
            assert!(std::str::from_utf8(&p).is_ok(), "text frame is not UTF-8");
            assert!(p.len() <= max, "text message over the limit");
            Out::Text(p.to_vec())
        }
        Frame::Binary(p) => {
            assert!(p.len() <= max, "binary message over the limit");
            Out::Binary(p.to_vec())
        }
        Frame::Ping(p) => {
            assert!(p.len() <= MAX_CONTROL);
            Out::Ping(p.to_vec())
        }
        Frame::Pong(p) => {
            assert!(p.len() <= MAX_CONTROL);
            Out::Pong(p.to_vec())
        }
        Frame::Close(None) => Out::Close(None),
        Frame::Close(Some(c)) => {
            assert!(is_valid_close_code(c.code), "close code {}", c.code);
            assert!(c.reason.len() <= MAX_CONTROL - 2);
            assert!(std::str::from_utf8(&c.reason).is_ok());
            Out::Close(Some((c.code, c.reason.to_vec())))
        }
    }
}

/// A whole-buffer decoder: what the incremental decoder must produce for `wire`, and whether
/// it is idle afterwards (no partial frame payload, no partial message).
///
/// Rules (RFC 6455 §5, plus the decoder's documented choices): header problems are reported
/// as soon as the bytes that show them are present, in the order reserved bits, opcode, mask
/// bit, fragmented control frame, continuation state, 64-bit length top bit, control length,
/// message size; text is checked for UTF-8 as it arrives (an invalid sequence fails at once,
/// an incomplete one at the end of the message); close frames need 0 or at least 2 payload
/// bytes, a valid code and a UTF-8 reason. Codes: 1009 for size, 1007 for UTF-8, 1002 for
/// everything else.
pub(crate) fn reference(role: Role, max: usize, wire: &[u8]) -> (Vec<Out>, bool) {
    let mut out = Vec::new();
    // The fragmented message in progress: (is text, payload so far).
    let mut message: Option<(bool, Vec<u8>)> = None;
    let mut pos = 0;
    loop {
        let rest = &wire[pos..];
        let idle = message.is_none();
        if rest.len() < 2 {
            return (out, idle);
        }
        let (b0, b1) = (rest[0], rest[1]);
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let masked = b1 & 0x80 != 0;
        let control = opcode >= 8;
        let bad_mask = match role {
            Role::Server => !masked,
            Role::Client => masked,
        };
        let protocol_error = b0 & 0x70 != 0
            || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10)
            || bad_mask
            || (control && !fin)
            || (opcode == 0 && message.is_none())
            || (matches!(opcode, 1 | 2) && message.is_some());
        if protocol_error {
            out.push(Out::Error(1002));
            return (out, true);
        }
        let (len, mut header) = match b1 & 0x7f {
            126 => match rest.get(2..4) {
                Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
                None => return (out, idle),
            },
            127 => match rest.get(2..10) {
                Some(b) => (u64::from_be_bytes(b.try_into().unwrap()), 10),
                None => return (out, idle),
            },
            n => (u64::from(n), 2),
        };
        if len >= 1 << 63 || (control && len > MAX_CONTROL as u64) {
            out.push(Out::Error(1002));
            return (out, true);
        }
        let so_far = message.as_ref().map_or(0, |(_, m)| m.len());
        if !control && u128::from(len) + so_far as u128 > max as u128 {
            out.push(Out::Error(1009));
            return (out, true);
        }
        let mut key = [0u8; 4];
        if masked {
            match rest.get(header..header + 4) {
                Some(k) => key.copy_from_slice(k),
                None => return (out, idle),
            }
            header += 4;
        }
        let body = &rest[header..];
        // `len` fits in usize here: it is at most `max`, or at most 125.
        let len = len as usize;
        let available = len.min(body.len());
        let payload: Vec<u8> = body[..available]
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ key[i % 4] } else { *b })
            .collect();
        if control {
            if available < len {
                return (out, false);
            }
            let frame = match opcode {
                9 => Out::Ping(payload),
                10 => Out::Pong(payload),
                _ => match payload.len() {
                    0 => Out::Close(None),
                    1 => {
                        out.push(Out::Error(1002));
                        return (out, true);
                    }
                    _ => {
                        let code = u16::from_be_bytes([payload[0], payload[1]]);
                        if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                            out.push(Out::Error(1002));
                            return (out, true);
                        }
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            out.push(Out::Error(1007));
                            return (out, true);
                        }
                        Out::Close(Some((code, payload[2..].to_vec())))
                    }
                },
            };
            out.push(frame);
        } else {
            let (text, mut data) = message.take().unwrap_or((opcode == 1, Vec::new()));
            data.extend_from_slice(&payload);
            if text {
                if let Err(e) = std::str::from_utf8(&data) {
                    // Invalid at once, or incomplete at the end of the message.
                    if e.error_len().is_some() || (available == len && fin) {
                        out.push(Out::Error(1007));
                        return (out, true);
                    }
                }
            }
            if available < len {
                return (out, false);
            }
            if fin {
                out.push(if text {
                    Out::Text(data)
                } else {
                    Out::Binary(data)
                });
            } else {
                message = Some((text, data));
            }
        }
        pos += header + len;
    }
}

/// xorshift64*: chunk sizes from the input's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
