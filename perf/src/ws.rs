//! A minimal WebSocket client for load generation: the opening handshake, masked frame
//! encoding into a reusable buffer, and in-place parsing of server frames from a reusable read
//! buffer. Nothing here allocates per frame.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Text frame opcode.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame opcode.
pub const OP_BINARY: u8 = 0x2;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame opcode.
pub const OP_PING: u8 = 0x9;
/// Pong frame opcode.
pub const OP_PONG: u8 = 0xA;

/// Largest response head accepted during the handshake.
const MAX_RESPONSE_HEAD: usize = 8192;

/// One parsed server frame, borrowing its payload from the read buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    /// The FIN bit.
    pub fin: bool,
    /// The opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: &'a [u8],
}

/// A frame the server should never send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame(pub &'static str);

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parses the frame at the start of `buf`: `Ok(Some((frame, consumed)))`, `Ok(None)` when
/// more bytes are needed.
///
/// # Errors
/// [`BadFrame`] for a masked server frame or a length over 2^62.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, BadFrame> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(BadFrame("masked frame from the server"));
    }
    let (len, head) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > 1 << 62 {
        return Err(BadFrame("frame length out of range"));
    }
    let total = head as u64 + len;
    if (buf.len() as u64) < total {
        return Ok(None);
    }
    let total = total as usize;
    Ok(Some((
        Frame {
            fin: b0 & 0x80 != 0,
            opcode: b0 & 0x0F,
            payload: &buf[head..total],
        },
        total,
    )))
}

/// How many bytes the frame at the start of `buf` needs in total, when its header is complete.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    match buf[1] & 0x7F {
        126 if buf.len() >= 4 => Some(4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            usize::try_from(u64::from_be_bytes(b))
                .ok()
                .and_then(|n| n.checked_add(10))
        }
        126 | 127 => None,
        n => Some(2 + usize::from(n)),
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the repeating 4-byte `mask` (RFC 6455 §5.3), a word at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// A reusable read buffer: bytes `start..end` are received and not yet parsed.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// A buffer of `capacity` bytes holding `initial` (bytes read past the handshake).
    pub fn new(capacity: usize, initial: &[u8]) -> Self {
        let mut buf = vec![0u8; capacity.max(initial.len()).max(64)];
        buf[..initial.len()].copy_from_slice(initial);
        ReadBuf {
            buf,
            start: 0,
            end: initial.len(),
        }
    }

    /// Reads once from `stream` into the free space (making room first). Returns the number of
    /// bytes read; 0 is end of stream.
    ///
    /// Cancel safe: a cancelled call has read nothing.
    pub async fn fill(&mut self, stream: &mut TcpStream) -> io::Result<usize> {
        self.make_room();
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// Moves unparsed bytes to the front when the tail is short, and grows the buffer when a
    /// single frame needs more than its capacity.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            return;
        }
        let pending = &self.buf[self.start..self.end];
        let need = frame_len(pending).unwrap_or(14).max(pending.len() + 1);
        if need > self.buf.len() {
            let mut bigger = vec![0u8; need.next_power_of_two()];
            bigger[..pending.len()].copy_from_slice(pending);
            self.end -= self.start;
            self.start = 0;
            self.buf = bigger;
            return;
        }
        if self.buf.len() - self.end < self.buf.len() / 4 || self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The next complete frame, if any.
    ///
    /// # Errors
    /// [`BadFrame`] for a frame the server must not send.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, BadFrame> {
        let ReadBuf { buf, start, end } = self;
        match parse_frame(&buf[*start..*end])? {
            Some((frame, used)) => {
                *start += used;
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Unparsed bytes held.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }
}

/// Opens a TCP connection to `addr` and performs the WebSocket opening handshake for `path`.
/// `recv_buffer` sets `SO_RCVBUF` before connecting (small for clients that never read).
/// Returns the stream and any bytes received after the response head.
///
/// # Errors
/// I/O errors, and `InvalidData` when the server does not answer 101.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    recv_buffer: Option<u32>,
) -> io::Result<(TcpStream, Vec<u8>)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let mut stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during the handshake",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            let status_ok = head.starts_with(b"HTTP/1.1 101");
            if !status_ok {
                let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "handshake refused: {}",
                        String::from_utf8_lossy(line).into_owned()
                    ),
                ));
            }
            return Ok((stream, head.split_off(end + 4)));
        }
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake response head too large",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => v.push(n as u8),
            n if n <= 0xFFFF => {
                v.push(126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                v.push(127);
                v.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn parses_all_three_length_forms_and_waits_for_more() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload = vec![b'a'; len];
            let f = server_frame(OP_TEXT, &payload);
            assert_eq!(frame_len(&f), Some(f.len()));
            let (frame, used) = parse_frame(&f).unwrap().unwrap();
            assert_eq!(used, f.len());
            assert_eq!(frame.payload.len(), len);
            assert!(frame.fin);
            assert_eq!(frame.opcode, OP_TEXT);
            for cut in [0, 1, f.len() / 2, f.len() - 1] {
                if cut < f.len() {
                    assert!(
                        parse_frame(&f[..cut]).unwrap().is_none(),
                        "len {len} cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_masked_server_frames() {
        assert!(parse_frame(&[0x81, 0x81, 1, 2, 3, 4, 5]).is_err());
    }

    #[test]
    fn masking_round_trips_and_matches_the_rfc_example() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut out = Vec::new();
        encode_masked(&mut out, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let mut long = vec![7u8; 300];
        let orig = long.clone();
        apply_mask(&mut long, [1, 2, 3, 4]);
        apply_mask(&mut long, [1, 2, 3, 4]);
        assert_eq!(long, orig);
        out.clear();
        encode_masked(&mut out, OP_TEXT, &orig, [0; 4]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
    }

    #[test]
    fn read_buffer_hands_out_frames_and_grows_for_big_ones() {
        let mut bytes = server_frame(OP_TEXT, b"one");
        bytes.extend(server_frame(OP_PING, b""));
        let big = server_frame(OP_BINARY, &[9u8; 300]);
        bytes.extend_from_slice(&big[..10]);
        let mut rb = ReadBuf::new(64, &bytes);
        let f = rb.next_frame().unwrap().unwrap();
        assert_eq!(f.payload, b"one");
        assert_eq!(rb.next_frame().unwrap().unwrap().opcode, OP_PING);
        assert!(rb.next_frame().unwrap().is_none());
        assert_eq!(rb.pending(), 10);
        rb.make_room();
        assert!(rb.buf.len() >= big.len());
        let (s, e) = (rb.start, rb.end);
        rb.buf[e..e + big.len() - 10].copy_from_slice(&big[10..]);
        rb.end = s + big.len();
        let f = rb.next_frame().unwrap().unwrap();
        assert_eq!(f.payload.len(), 300);
        assert_eq!(rb.pending(), 0);
    }
}
