//! The reconnecting client against hand-written servers over real sockets: the handshake it
//! sends, batched frames, pings, keepalive, close handshakes, and hostile servers (bad
//! handshakes, bad frames, oversized messages), each followed by a reconnect.
#![cfg(feature = "client")]

use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use wshub::client::{ClientConfig, ClientError, Event, Events, HandshakeError, ReconnectingClient};
use wshub::frame::{close_code, encode, Decoder, Frame, OpCode, Role};

/// How long any single wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fast() -> ClientConfig {
    ClientConfig::default()
        .initial_backoff(ms(5))
        .max_backoff(ms(20))
        .connect_timeout(Duration::from_secs(5))
}

fn start(config: ClientConfig, url: &str) -> (ReconnectingClient, Events) {
    ReconnectingClient::builder()
        .config(config)
        .connect(url)
        .expect("valid client config")
}

async fn next_event(events: &mut Events) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("the event stream is open")
}

async fn next_message(events: &mut Events) -> String {
    match next_event(events).await {
        Event::Message(message) => message.text().expect("text").to_owned(),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn expect_connected(events: &mut Events) {
    match next_event(events).await {
        Event::Connected | Event::Reconnected { .. } => {}
        other => panic!("expected a connection, got {other:?}"),
    }
}

async fn expect_disconnected(events: &mut Events) -> ClientError {
    match next_event(events).await {
        Event::Disconnected(error) => error,
        other => panic!("expected a disconnect, got {other:?}"),
    }
}

async fn expect_connect_failed(events: &mut Events) -> ClientError {
    match next_event(events).await {
        Event::ConnectFailed { error, .. } => error,
        other => panic!("expected a failed dial, got {other:?}"),
    }
}

/// A hand-written WebSocket server on 127.0.0.1:0.
struct RawServer {
    listener: TcpListener,
}

impl RawServer {
    async fn bind() -> RawServer {
        RawServer {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.listener.local_addr().unwrap())
    }

    async fn accept(&self) -> TcpStream {
        let (tcp, _) = timeout(WAIT, self.listener.accept())
            .await
            .expect("the client dials in time")
            .expect("accept");
        tcp
    }

    /// Accepts a connection and reads the upgrade request: (socket, request head).
    async fn accept_request(&self) -> (TcpStream, String) {
        let mut tcp = self.accept().await;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let n = timeout(WAIT, tcp.read(&mut byte))
                .await
                .expect("request in time")
                .expect("read request");
            assert_eq!(n, 1, "EOF in the request");
            head.push(byte[0]);
        }
        (tcp, String::from_utf8(head).expect("ASCII request"))
    }

    /// Accepts a connection and completes the handshake, sending `first` right behind the
    /// 101 response in the same write.
    async fn accept_ws_with(&self, first: &[u8]) -> Peer {
        let (mut tcp, request) = self.accept_request().await;
        let mut response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            accept_for(&request)
        )
        .into_bytes();
        response.extend_from_slice(first);
        tcp.write_all(&response).await.expect("write response");
        Peer {
            tcp,
            request,
            buf: BytesMut::new(),
            decoder: Decoder::new(Role::Server, 1 << 20),
        }
    }

    async fn accept_ws(&self) -> Peer {
        self.accept_ws_with(b"").await
    }
}

/// The value of header `name` in a request head.
fn header<'a>(request: &'a str, name: &str) -> Option<&'a str> {
    request.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn accept_for(request: &str) -> String {
    let key = header(request, "sec-websocket-key").expect("a key");
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The server side of one connection. Decodes what the client sends with a server-role
/// decoder, which rejects unmasked frames.
struct Peer {
    tcp: TcpStream,
    request: String,
    buf: BytesMut,
    decoder: Decoder,
}

impl Peer {
    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }

    async fn send_text(&mut self, text: &str) {
        self.send(&encode(OpCode::Text, text.as_bytes())).await;
    }

    /// The next frame from the client; `None` at EOF.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self
                .decoder
                .decode(&mut self.buf)
                .expect("valid client frame")
            {
                return Some(frame);
            }
            self.buf.reserve(4096);
            let n = timeout(WAIT, self.tcp.read_buf(&mut self.buf))
                .await
                .expect("a frame in time")
                .ok()?;
            if n == 0 {
                return None;
            }
        }
    }

    /// The next text frame, skipping pings and pongs.
    async fn next_text(&mut self) -> String {
        loop {
            match self.next_frame().await.expect("a frame before EOF") {
                Frame::Text(t) => return String::from_utf8(t.to_vec()).unwrap(),
                Frame::Ping(_) | Frame::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// Reads until the client's close frame and returns its code.
    async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_frame().await.expect("a close frame before EOF") {
                Frame::Close(close) => return close.map(|c| c.code),
                _ => continue,
            }
        }
    }
}

/// An unmasked server frame with raw header bits, for illegal frames.
fn raw_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![first, payload.len() as u8];
    out.extend_from_slice(payload);
    out
}

fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

#[tokio::test]
async fn sends_a_proper_upgrade_request() {
    let server = RawServer::bind().await;
    let config = fast()
        .header("Authorization", "Bearer s3cret")
        .header("X-Trace", "1");
    let (client, mut events) = start(config, &server.url("/ws?room=1"));
    let peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    let req = &peer.request;
    let port = server.listener.local_addr().unwrap().port();
    assert!(req.starts_with("GET /ws?room=1 HTTP/1.1\r\n"), "{req}");
    assert_eq!(header(req, "host"), Some(&*format!("127.0.0.1:{port}")));
    assert_eq!(header(req, "upgrade"), Some("websocket"));
    assert_eq!(header(req, "connection"), Some("Upgrade"));
    assert_eq!(header(req, "sec-websocket-version"), Some("13"));
    assert_eq!(header(req, "authorization"), Some("Bearer s3cret"));
    assert_eq!(header(req, "x-trace"), Some("1"));
    let key = header(req, "sec-websocket-key").unwrap();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    assert_eq!(raw.len(), 16);
    client.close();
}

#[tokio::test]
async fn a_batched_frame_yields_one_message_per_line() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast(), &server.url("/"));
    // go-ws joins queued messages with '\n' into one frame; this one arrives in the same
    // write as the handshake response.
    let mut peer = server
        .accept_ws_with(&encode(
            OpCode::Text,
            br#"{"a":1}
{"b":2}"#,
        ))
        .await;
    expect_connected(&mut events).await;
    assert_eq!(next_message(&mut events).await, r#"{"a":1}"#);
    assert_eq!(next_message(&mut events).await, r#"{"b":2}"#);
    // Empty lines and a trailing newline yield nothing.
    peer.send_text("\"x\"\n\n\"y\"\n").await;
    assert_eq!(next_message(&mut events).await, "\"x\"");
    assert_eq!(next_message(&mut events).await, "\"y\"");
    // Binary messages are delivered whole.
    peer.send(&encode(OpCode::Binary, b"a\nb")).await;
    match next_event(&mut events).await {
        Event::Message(m) => {
            assert!(m.is_binary());
            assert_eq!(m.text(), None);
            assert_eq!(&m.payload()[..], b"a\nb");
        }
        other => panic!("{other:?}"),
    }
    client.close();
}

#[tokio::test]
async fn line_splitting_can_be_turned_off() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast().split_lines(false), &server.url("/"));
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    // Each line is still checked to be JSON, but the message is delivered whole.
    peer.send_text("{\"a\":1}\n{\"b\":2}").await;
    assert_eq!(next_message(&mut events).await, "{\"a\":1}\n{\"b\":2}");
    client.close();
}

#[tokio::test]
async fn text_that_is_not_json_is_delivered_when_json_is_not_required() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast().require_json(false), &server.url("/"));
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    peer.send_text("{not json\nplain").await;
    assert_eq!(next_message(&mut events).await, "{not json");
    assert_eq!(next_message(&mut events).await, "plain");
    client.close();
}

#[tokio::test]
async fn answers_server_pings_and_sends_masked_frames() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast(), &server.url("/"));
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    peer.send(&encode(OpCode::Ping, b"are you there")).await;
    // The server-role decoder fails on any unmasked frame.
    assert_eq!(
        peer.next_frame().await,
        Some(Frame::Pong("are you there".into()))
    );
    client.send("hello").await.unwrap();
    client.send_binary(&[0, 1, 2]).await.unwrap();
    assert_eq!(peer.next_frame().await, Some(Frame::Text("hello".into())));
    assert_eq!(
        peer.next_frame().await,
        Some(Frame::Binary(vec![0, 1, 2].into()))
    );
    client.close();
    assert_eq!(peer.expect_close().await, Some(close_code::NORMAL));
}

#[tokio::test]
async fn subscriptions_are_confirmed_before_the_connection_is_announced() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast(), &server.url("/"));
    client.subscribe("news").unwrap();
    let mut peer = server.accept_ws().await;
    assert_eq!(
        peer.next_text().await,
        r#"{"type":"subscribe","channel":"news","data":"news"}"#
    );
    assert_eq!(peer.next_text().await, r#"{"type":"ping"}"#);
    // Not announced until the pong; a message that arrives first is held back.
    peer.send_text(r#"{"type":"event","channel":"news","data":1}"#)
        .await;
    assert!(
        timeout(ms(100), events.recv()).await.is_err(),
        "nothing before the pong"
    );
    assert_ne!(client.state(), wshub::client::State::Connected);
    peer.send_text(r#"{"type":"pong","timestamp":"t"}"#).await;
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    assert_eq!(
        next_message(&mut events).await,
        r#"{"type":"event","channel":"news","data":1}"#
    );
    // The confirmation pong itself is not delivered; later pongs are.
    peer.send_text(r#"{"type":"pong","timestamp":"u"}"#).await;
    assert_eq!(
        next_message(&mut events).await,
        r#"{"type":"pong","timestamp":"u"}"#
    );
    // Changes while connected go out at once.
    client.unsubscribe("news").unwrap();
    assert_eq!(
        peer.next_text().await,
        r#"{"type":"unsubscribe","channel":"news","data":"news"}"#
    );
    client.close();
}

#[tokio::test]
async fn a_server_that_never_confirms_is_announced_after_the_connect_timeout() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast().connect_timeout(ms(300)), &server.url("/"));
    client.subscribe("news").unwrap();
    let _peer = server.accept_ws().await;
    let started = Instant::now();
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    assert!(started.elapsed() >= ms(200), "{:?}", started.elapsed());
    client.close();
}

#[tokio::test]
async fn a_silent_server_is_detected_by_keepalive() {
    let server = RawServer::bind().await;
    let config = fast()
        .keepalive_interval(ms(100))
        .keepalive_timeout(ms(500));
    let (client, mut events) = start(config, &server.url("/"));
    // Before the handshake, hence before the client's keepalive clock starts.
    let started = Instant::now();
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    // The server reads (and sees the client's pings) but never answers.
    let pings = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(frame) = peer.next_frame().await {
            if matches!(frame, Frame::Ping(_)) {
                pings += 1;
            }
        }
        pings
    });
    match expect_disconnected(&mut events).await {
        ClientError::KeepaliveTimeout(d) => assert_eq!(d, ms(500)),
        other => panic!("expected a keepalive timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= ms(500), "{:?}", started.elapsed());
    // The redial is immediate and succeeds.
    let _peer2 = server.accept_ws().await;
    match next_event(&mut events).await {
        Event::Reconnected { attempt } => assert_eq!(attempt, 1),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    let pings = timeout(WAIT, pings).await.unwrap().unwrap();
    assert!(pings >= 2, "the client pinged ({pings} pings)");
    client.close();
}

#[tokio::test]
async fn hostile_frames_are_errors_then_reconnect() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast().max_message_size(1024), &server.url("/"));

    // (frame the server sends, close code the client must answer with)
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // A masked server frame.
        (
            wshub::frame::encode_masked(OpCode::Text as u8, true, 0, b"hi", [1, 2, 3, 4]),
            close_code::PROTOCOL,
        ),
        // A message over max_message_size.
        (
            encode(OpCode::Text, &[b'x'; 2000]).to_vec(),
            close_code::TOO_BIG,
        ),
        // Invalid UTF-8 in a text message.
        (raw_frame(0x81, &[0xff, 0xfe]), close_code::INVALID_PAYLOAD),
        // A reserved opcode, RSV bits, a fragmented ping.
        (raw_frame(0x83, b""), close_code::PROTOCOL),
        (raw_frame(0xC1, b"x"), close_code::PROTOCOL),
        (raw_frame(0x09, b""), close_code::PROTOCOL),
    ];
    for (i, (frame, code)) in cases.into_iter().enumerate() {
        let mut peer = server.accept_ws().await;
        expect_connected(&mut events).await;
        peer.send(&frame).await;
        match expect_disconnected(&mut events).await {
            ClientError::Protocol(e) => assert_eq!(e.code(), code, "case {i}"),
            other => panic!("case {i}: expected a protocol error, got {other:?}"),
        }
        assert_eq!(peer.expect_close().await, Some(code), "case {i}");
    }

    // Garbage JSON (here in the second line of a batched frame): nothing of the frame is
    // delivered; a clear error, close 1007, and a reconnect.
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    peer.send_text("{\"ok\":1}\n{not json").await;
    match expect_disconnected(&mut events).await {
        ClientError::InvalidJson(e) => assert!(e.contains("line 1 column 2"), "{e}"),
        other => panic!("expected invalid JSON, got {other:?}"),
    }
    assert_eq!(peer.expect_close().await, Some(close_code::INVALID_PAYLOAD));
    let mut peer = server.accept_ws().await;
    match next_event(&mut events).await {
        Event::Reconnected { attempt } => assert_eq!(attempt, 1),
        other => panic!("expected a reconnect, got {other:?}"),
    }
    // A close frame from the server: the client answers with the same code.
    peer.send(&encode(OpCode::Close, &close_payload(4000, "bye")))
        .await;
    match expect_disconnected(&mut events).await {
        ClientError::ServerClosed { code, reason } => {
            assert_eq!((code, reason.as_str()), (Some(4000), "bye"));
        }
        other => panic!("expected a server close, got {other:?}"),
    }
    assert_eq!(peer.expect_close().await, Some(4000));

    // The server drops the TCP connection without a close frame.
    let peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    drop(peer);
    assert!(matches!(
        expect_disconnected(&mut events).await,
        ClientError::ConnectionLost | ClientError::Io(_)
    ));

    // And the client still works.
    let mut peer = server.accept_ws().await;
    match next_event(&mut events).await {
        Event::Reconnected { attempt } => assert_eq!(attempt, 1),
        other => panic!("{other:?}"),
    }
    peer.send_text(r#"{"fine":true}"#).await;
    assert_eq!(next_message(&mut events).await, r#"{"fine":true}"#);
    client.close();
}

#[tokio::test]
async fn bad_handshakes_are_dial_errors_then_retried() {
    let server = RawServer::bind().await;
    let (client, mut events) = start(fast(), &server.url("/"));

    type Check = fn(&HandshakeError) -> bool;
    let cases: Vec<(&[u8], Check)> = vec![
        (
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
            |e| *e == HandshakeError::Status(401),
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
            |e| *e == HandshakeError::BadAccept,
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n",
            |e| *e == HandshakeError::MissingHeader("Upgrade: websocket"),
        ),
        (b"\x00\x01garbage\r\n\r\n", |e| {
            matches!(e, HandshakeError::Malformed(_))
        }),
        (b"HTTP/1.1 101 Switching", |e| *e == HandshakeError::Eof),
    ];
    for (i, (response, check)) in cases.into_iter().enumerate() {
        let (mut tcp, _request) = server.accept_request().await;
        tcp.write_all(response).await.unwrap();
        drop(tcp);
        match expect_connect_failed(&mut events).await {
            ClientError::Handshake(e) => assert!(check(&e), "case {i}: {e:?}"),
            other => panic!("case {i}: expected a handshake error, got {other:?}"),
        }
    }
    // An endless response head.
    let (mut tcp, _request) = server.accept_request().await;
    let junk = format!("HTTP/1.1 101 OK\r\nX: {}", "a".repeat(20_000));
    let _ = tcp.write_all(junk.as_bytes()).await;
    match expect_connect_failed(&mut events).await {
        ClientError::Handshake(HandshakeError::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    drop(tcp);
    // Then a good server: the first successful connection is `Connected`.
    let _peer = server.accept_ws().await;
    assert!(matches!(next_event(&mut events).await, Event::Connected));
    client.close();
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_times_out() {
    let server = RawServer::bind().await;
    let config = fast().connect_timeout(ms(200)).max_retries(1);
    let (client, mut events) = start(config, &server.url("/"));
    let _a = server.accept().await;
    let _b = server.accept().await;
    match expect_connect_failed(&mut events).await {
        ClientError::ConnectTimeout(d) => assert_eq!(d, ms(200)),
        other => panic!("{other:?}"),
    }
    let err = timeout(WAIT, client.closed()).await.unwrap().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("max retries (1) exceeded: connect timed out"),
        "{err}"
    );
}

#[tokio::test]
async fn close_waits_for_the_server_close_frame_but_not_forever() {
    let server = RawServer::bind().await;
    // A server that answers the close frame.
    let (client, mut events) = start(fast(), &server.url("/"));
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    client.close();
    assert_eq!(peer.expect_close().await, Some(1000));
    peer.send(&encode(OpCode::Close, &close_payload(1000, "")))
        .await;
    timeout(WAIT, client.closed()).await.unwrap().unwrap();
    assert!(matches!(
        expect_disconnected(&mut events).await,
        ClientError::Closed
    ));

    // A server that never answers: the close timeout bounds the wait.
    let (client, mut events) = start(fast().close_timeout(ms(200)), &server.url("/"));
    let mut peer = server.accept_ws().await;
    expect_connected(&mut events).await;
    let started = Instant::now();
    client.close();
    assert_eq!(peer.expect_close().await, Some(1000));
    timeout(WAIT, client.closed()).await.unwrap().unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= ms(150) && elapsed < ms(5000), "{elapsed:?}");
}

#[tokio::test]
async fn a_server_that_closes_every_connection_at_once_is_redialled_with_backoff() {
    let server = RawServer::bind().await;
    let config = fast().initial_backoff(ms(100)).max_backoff(ms(400));
    let (client, mut events) = start(config, &server.url("/ws"));
    let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
    // Every connection completes its handshake (it goes live: there are no subscriptions to
    // confirm) and gets a close frame right behind the 101.
    let close = encode(OpCode::Close, &close_payload(1008, "go away"));
    let window = Duration::from_secs(1);
    let begin = Instant::now();
    let mut accepted = 0;
    while let Some(left) = window.checked_sub(begin.elapsed()) {
        match timeout(left, server.accept_ws_with(&close)).await {
            Ok(peer) => {
                drop(peer);
                accepted += 1;
            }
            Err(_) => break,
        }
    }
    // Two dials at once, then after 100, 200 and 400 ms: about 5 connections in the second;
    // a client that redials at once after each drop makes hundreds.
    assert!(
        (2..=8).contains(&accepted),
        "{accepted} connections in {window:?}"
    );
    client.close();
    timeout(WAIT, client.closed()).await.unwrap().unwrap();
    drain.await.unwrap();
}
