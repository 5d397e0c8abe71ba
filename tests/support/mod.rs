//! Shared test helpers: a real `wshub` server on 127.0.0.1:0 and an independent WebSocket
//! client (tokio-tungstenite), plus a raw TCP client for hand-made frames and a minimal HTTP
//! client.
//!
//! Every wait is bounded by [`WAIT`]; nothing here sleeps to synchronise (the only sleep is the
//! polling step of [`eventually`]).
#![allow(dead_code, unreachable_pub, missing_docs)]

#[cfg(feature = "client")]
pub mod client;
pub mod history;
pub mod proxy;
pub mod redis_server;
#[cfg(all(feature = "client", feature = "server"))]
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wshub::server::{Server, ServerConfig};
use wshub::{DisconnectReason, Hub, HubBuilder, HubConfig, ShutdownReport};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An address on 127.0.0.1 with a port that was free a moment ago (nothing listens on it).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A hub with `config` and no hooks.
pub fn hub(config: HubConfig) -> Hub {
    Hub::builder().config(config).build().expect("valid config")
}

/// Every disconnect the hub reported: (client id, reason), in order.
#[derive(Clone, Default)]
pub struct DisconnectLog(Arc<Mutex<Vec<(u64, DisconnectReason)>>>);

impl DisconnectLog {
    /// Installs the log as the builder's disconnect hook.
    pub fn install(&self, builder: HubBuilder) -> HubBuilder {
        let log = self.clone();
        builder.on_disconnect(move |client, reason| {
            log.0.lock().unwrap().push((client.id(), reason.clone()));
        })
    }

    pub fn entries(&self) -> Vec<(u64, DisconnectReason)> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The reasons recorded for client `id` (exactly one is expected).
    pub fn reasons_for(&self, id: u64) -> Vec<DisconnectReason> {
        self.entries()
            .into_iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, r)| r)
            .collect()
    }

    /// Waits for client `id`'s disconnect and returns its (single) reason.
    pub async fn wait_for(&self, id: u64) -> DisconnectReason {
        eventually(&format!("client {id} disconnected"), || {
            !self.reasons_for(id).is_empty()
        })
        .await;
        let reasons = self.reasons_for(id);
        assert_eq!(reasons.len(), 1, "one disconnect per client: {reasons:?}");
        reasons.into_iter().next().unwrap()
    }
}

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

    /// A server whose hub has `config` and no hooks.
    pub async fn with_config(config: HubConfig) -> Self {
        Self::start(hub(config)).await
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

    /// Connects and waits until the hub has registered the new client; returns the socket and
    /// the server-side id of the client.
    pub async fn connect_client(&self) -> (Ws, u64) {
        let before: Vec<u64> = self.hub.clients().iter().map(|c| c.id()).collect();
        let mut ws = self.connect().await;
        // A pong proves the session runs, hence that the client is registered.
        sync(&mut ws).await;
        let id = self
            .hub
            .clients()
            .iter()
            .map(|c| c.id())
            .filter(|id| !before.contains(id))
            .max()
            .expect("the new client is registered");
        (ws, id)
    }

    pub async fn raw(&self) -> Raw {
        Raw::connect(self.addr).await
    }

    /// A raw client and its server-side id.
    pub async fn raw_client(&self) -> (Raw, u64) {
        let before: Vec<u64> = self.hub.clients().iter().map(|c| c.id()).collect();
        let mut raw = self.raw().await;
        raw.sync().await;
        let id = self
            .hub
            .clients()
            .iter()
            .map(|c| c.id())
            .filter(|id| !before.contains(id))
            .max()
            .expect("the new client is registered");
        (raw, id)
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

/// The next message of any kind (pings and pongs included).
pub async fn next(ws: &mut Ws) -> Option<WsMessage> {
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .map(|r| r.expect("no error"))
}

/// The next text message (pings and pongs are skipped).
pub async fn recv(ws: &mut Ws) -> String {
    loop {
        match next(ws).await.expect("stream open") {
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

/// The next text message, which must be an `error` reply; returns its `data`.
pub async fn recv_error(ws: &mut Ws) -> String {
    let v = recv_json(ws).await;
    assert_eq!(v["type"], "error", "expected an error reply, got {v}");
    assert!(v["timestamp"].is_string(), "error has a timestamp: {v}");
    v["data"]
        .as_str()
        .expect("error data is a string")
        .to_owned()
}

/// Reads until the server's close frame: the text messages received before it, and the close
/// frame. Tungstenite answers the close; the stream then ends.
pub async fn recv_until_close(ws: &mut Ws) -> (Vec<String>, Option<CloseFrame>) {
    let mut texts = Vec::new();
    loop {
        match next(ws)
            .await
            .expect("a close frame before the stream ends")
        {
            WsMessage::Text(t) => texts.push(t.as_str().to_owned()),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            WsMessage::Close(frame) => return (texts, frame),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads until the server's close frame, expecting no text before it; returns (code, reason).
pub async fn recv_close(ws: &mut Ws) -> (u16, String) {
    let (texts, frame) = recv_until_close(ws).await;
    assert!(
        texts.is_empty(),
        "unexpected messages before close: {texts:?}"
    );
    let frame = frame.expect("close frame with a status code");
    (u16::from(frame.code), frame.reason.as_str().to_owned())
}

/// Asserts the stream ends (after a close handshake or a dropped connection) within [`WAIT`].
pub async fn expect_end(ws: &mut Ws) {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("stream ends in time")
        {
            None | Some(Err(_)) => return,
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            Some(Ok(other)) => panic!("expected the end of the stream, got {other:?}"),
        }
    }
}

/// Closes the connection with a proper close handshake (code 1000), checks that the server
/// echoes the code, and waits for the end of the stream.
pub async fn close(mut ws: Ws) {
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    ws.close(Some(frame)).await.expect("send close");
    let (_, echo) = recv_until_close(&mut ws).await;
    let echo = echo.expect("the server echoes the close code");
    assert_eq!(u16::from(echo.code), 1000);
    expect_end(&mut ws).await;
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

/// Sends a ping request and waits for the pong: every earlier request has been processed, and
/// every message queued for this client before the pong has been received. Panics if anything
/// other than the pong arrives (use [`sync_collect`] to keep it).
pub async fn sync(ws: &mut Ws) {
    let other = sync_collect(ws).await;
    assert!(other.is_empty(), "unexpected messages: {other:?}");
}

/// Like [`sync`], returning the text messages that arrived before the pong.
pub async fn sync_collect(ws: &mut Ws) -> Vec<String> {
    send(ws, r#"{"type":"ping"}"#).await;
    let mut other = Vec::new();
    loop {
        let text = recv(ws).await;
        if text.starts_with(r#"{"type":"pong","#) {
            return other;
        }
        other.push(text);
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

pub async fn unsubscribe(ws: &mut Ws, channel: &str) {
    send(
        ws,
        &format!(r#"{{"type":"unsubscribe","channel":"{channel}"}}"#),
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

/// The timestamp value of a server message.
pub fn timestamp_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
    v["timestamp"].as_str().expect("timestamp").to_owned()
}

/// A raw TCP connection that has completed the WebSocket handshake, for hand-made frames.
pub struct Raw {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
}

pub const OP_CONT: u8 = 0;
pub const OP_TEXT: u8 = 1;
pub const OP_BINARY: u8 = 2;
pub const OP_CLOSE: u8 = 8;
pub const OP_PING: u8 = 9;
pub const OP_PONG: u8 = 10;

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        Self::handshake(tcp, addr).await
    }

    /// Connects with a small socket receive buffer, so that a client that does not read makes
    /// the server's socket fill up quickly.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> Raw {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let tcp = socket.connect(addr).await.expect("tcp connect");
        Self::handshake(tcp, addr).await
    }

    async fn handshake(mut tcp: TcpStream, addr: SocketAddr) -> Raw {
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

    /// Writes a masked text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.frame(OP_TEXT, true, 0, text.as_bytes()).await;
    }

    /// Writes a masked close frame with `code` and `reason`.
    pub async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.frame(OP_CLOSE, true, 0, &payload).await;
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
            self.buf.reserve(16 * 1024);
            let n = tokio::time::timeout(WAIT, self.tcp.read_buf(&mut self.buf))
                .await
                .expect("frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next text frame's payload; pings and pongs are skipped (and not answered).
    pub async fn read_text(&mut self) -> String {
        loop {
            let (op, payload) = self.read_frame().await.expect("a text frame before EOF");
            match op {
                OP_TEXT => return String::from_utf8(payload).expect("UTF-8 text"),
                OP_PING | OP_PONG => continue,
                other => panic!(
                    "expected a text frame, got opcode {other}: {:?}",
                    String::from_utf8_lossy(&payload)
                ),
            }
        }
    }

    /// The next text frame parsed as JSON.
    pub async fn read_json(&mut self) -> serde_json::Value {
        let text = self.read_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}"))
    }

    /// Sends a ping request and reads up to its pong; returns the text frames before it.
    pub async fn sync(&mut self) -> Vec<String> {
        self.send_text(r#"{"type":"ping"}"#).await;
        let mut other = Vec::new();
        loop {
            let text = self.read_text().await;
            if text.starts_with(r#"{"type":"pong","#) {
                return other;
            }
            other.push(text);
        }
    }

    /// Reads frames until a close frame; returns its code (`None` for an empty close) — skips
    /// data and pings. Panics at EOF without a close frame.
    pub async fn read_close(&mut self) -> Option<u16> {
        self.read_close_frame().await.0
    }

    /// Reads frames until a close frame; returns (code, reason). Skips data and pings.
    pub async fn read_close_frame(&mut self) -> (Option<u16>, String) {
        loop {
            let (op, payload) = self.read_frame().await.expect("close frame before EOF");
            if op == OP_CLOSE {
                assert!(payload.len() != 1, "close payload of one byte");
                if payload.is_empty() {
                    return (None, String::new());
                }
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let reason = String::from_utf8(payload[2..].to_vec()).expect("UTF-8 reason");
                return (Some(code), reason);
            }
        }
    }

    /// Whether the server closes the TCP connection (EOF) within [`WAIT`].
    pub async fn expect_eof(&mut self) {
        loop {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0) | Err(_)) => return,
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
    assert_eq!(buf[0] & 0x80, 0x80, "server frames are never fragmented");
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

/// An HTTP response: status, headers (names lowercased) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON: {:?}: {e}", self.body))
    }
}

/// A minimal HTTP/1.1 client: (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let r = http_full(addr, method, path, headers, body).await;
    (r.status, r.body)
}

/// A minimal HTTP/1.1 client with a `Content-Length` body.
pub async fn http_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    http_raw(addr, &bytes).await
}

/// Sends `request` as is (one write, so a server that answers early never sees a half-sent
/// request) and reads the response until the server closes the connection. The body is
/// de-chunked when the response uses chunked transfer encoding.
pub async fn http_raw(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("write request");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .expect("read response");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("response head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        s = &rest[size + 2..];
    }
}

/// A client's subscriptions as plain strings, sorted.
pub fn subscriptions(client: &wshub::Client) -> Vec<String> {
    client
        .subscriptions()
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect()
}

/// A server bound to a fixed address (to restart on the same one), with its stop switch.
pub struct FixedServer {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<ShutdownReport>>,
}

impl FixedServer {
    pub async fn start(hub: Hub, addr: SocketAddr) -> FixedServer {
        let server = Server::bind(hub, ServerConfig::default().listen(addr))
            .await
            .expect("bind the same address again");
        let (stop, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        FixedServer { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server stops in time")
            .expect("server task")
            .expect("server run");
    }
}
