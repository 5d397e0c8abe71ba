//! Shared test helpers: a real `wshub` server on 127.0.0.1:0 and an independent WebSocket
//! client (tokio-tungstenite), plus a raw TCP client for hand-made frames.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wshub::server::{Server, ServerConfig};
use wshub::{Hub, ShutdownReport};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A running server; dropping it without `stop` leaves the task to the runtime.
pub struct TestServer {
    pub addr: SocketAddr,
    pub hub: Hub,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<ShutdownReport>>,
}

impl TestServer {
    pub async fn start(hub: Hub) -> Self {
        Self::start_with(hub, ServerConfig::default()).await
    }

    pub async fn start_with(hub: Hub, config: ServerConfig) -> Self {
        let config = config.listen(SocketAddr::from(([127, 0, 0, 1], 0)));
        let server = Server::bind(hub.clone(), config)
            .await
            .expect("bind 127.0.0.1:0");
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            hub,
            stop: Some(tx),
            task,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server (hub shutdown included) and returns the shutdown report.
    pub async fn stop(mut self) -> ShutdownReport {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(WAIT * 3, &mut self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server run")
    }

    pub async fn connect(&self) -> Ws {
        connect(&self.ws_url()).await
    }
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::text(text)).await.expect("send");
}

/// The next text message (pings and pongs are skipped).
pub async fn recv(ws: &mut Ws) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("no error");
        match msg {
            WsMessage::Text(t) => return t.as_str().to_owned(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// The next text message parsed as JSON.
pub async fn recv_json(ws: &mut Ws) -> serde_json::Value {
    let text = recv(ws).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
}

/// Asserts nothing but pings/pongs arrives within `d`.
pub async fn expect_silence(ws: &mut Ws, d: Duration) {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

/// Sends a ping request and waits for the pong: every earlier request has been processed.
pub async fn sync(ws: &mut Ws) {
    send(ws, r#"{"type":"ping"}"#).await;
    loop {
        let v = recv_json(ws).await;
        if v["type"] == "pong" {
            return;
        }
        if v["type"] == "error" {
            panic!("unexpected error reply: {v}");
        }
    }
}

pub async fn subscribe(ws: &mut Ws, channel: &str) {
    send(
        ws,
        &format!(r#"{{"type":"subscribe","channel":"{channel}"}}"#),
    )
    .await;
    sync(ws).await;
}

/// Waits until `f()` holds (polling), failing after [`WAIT`].
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Replaces the timestamp value with `TS`, for byte-exact comparisons.
pub fn mask_timestamp(json: &str) -> String {
    match json.find(r#""timestamp":""#) {
        Some(i) => {
            let start = i + r#""timestamp":""#.len();
            let end = start + json[start..].find('"').expect("closing quote");
            format!("{}TS{}", &json[..start], &json[end..])
        }
        None => json.to_owned(),
    }
}

/// A raw TCP connection that has completed the WebSocket handshake, for hand-made frames.
pub struct Raw {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let mut tcp = TcpStream::connect(addr).await.expect("tcp connect");
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(req.as_bytes())
            .await
            .expect("write handshake");
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("handshake in time")
                .expect("read handshake");
            assert!(n > 0, "EOF during handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                assert!(
                    head.starts_with("HTTP/1.1 101"),
                    "handshake refused: {head}"
                );
                assert!(
                    head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                    "accept key: {head}"
                );
                buf.drain(..end + 4);
                return Raw { tcp, buf };
            }
        }
    }

    /// Writes a masked frame (raw opcode bits so illegal frames can be built).
    pub async fn frame(&mut self, opcode: u8, fin: bool, rsv: u8, payload: &[u8]) {
        let bytes =
            wshub::frame::encode_masked(opcode, fin, rsv, payload, [0x12, 0x34, 0x56, 0x78]);
        self.tcp.write_all(&bytes).await.expect("write frame");
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Reads the next server frame: (opcode, payload). `None` at EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((op, payload, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .expect("frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code (`None` for an empty close) — skips
    /// data and pings. Panics at EOF without a close frame.
    pub async fn read_close(&mut self) -> Option<u16> {
        loop {
            let (op, payload) = self.read_frame().await.expect("close frame before EOF");
            if op == 8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// Whether the server closes the TCP connection (EOF) within [`WAIT`].
    pub async fn expect_eof(&mut self) {
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("server did not close the connection"),
            }
        }
    }
}

/// Parses one unmasked server frame from the front of `buf`: (opcode, payload, bytes used).
pub fn parse_server_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
    assert_eq!(buf[0] & 0x70, 0, "no RSV bits");
    let op = buf[0] & 0x0F;
    let (len, head) = match buf[1] & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buf.get(head..head + len)?.to_vec();
    Some((op, payload, head + len))
}

/// A minimal HTTP/1.1 client: (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write");
    tcp.write_all(body).await.expect("write body");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}
