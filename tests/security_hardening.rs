//! Hostile-input hardening through the real server: authentication before the upgrade,
//! the Origin allow-list (cross-site WebSocket hijacking), the channel authoriser, connection
//! and rate limits, slowloris handshakes and oversized request heads.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wshub::server::{ServerConfig, TokenAuth};
use wshub::{ChannelAction, ChannelPattern, DisconnectReason, Hub, HubConfig, RateLimit};

/// An upgrade request that asks the server to close the connection after answering, so a
/// refusal can be read to EOF.
fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: close, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// A server whose clients are limited to `limit`, and the log of their disconnects.
async fn rate_limited(limit: RateLimit) -> (TestServer, DisconnectLog) {
    let log = DisconnectLog::default();
    let hub = log
        .install(Hub::builder().config(HubConfig::default().rate_limit(Some(limit))))
        .build()
        .unwrap();
    (TestServer::start(hub).await, log)
}

async fn connect_with(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Ws {
    let mut req = format!("ws://{}{path}", server.addr)
        .into_client_request()
        .unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

#[tokio::test]
async fn authentication_refuses_with_401_and_accepts_header_query_and_cookie_tokens() {
    let identities = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&identities);
    // Every other hook sees the identity too: (hook, identity).
    let in_hooks = Arc::new(Mutex::new(Vec::<(&str, Option<String>)>::new()));
    let (h1, h2, h3) = (in_hooks.clone(), in_hooks.clone(), in_hooks.clone());
    let id = |c: &wshub::Client| c.identity().map(str::to_owned);
    let auth = TokenAuth::new([("alice", "a-token"), ("bob", "b-token")]);
    let hub = Hub::builder()
        .authenticate(move |req| auth.check(req))
        .on_connect(move |c| seen.lock().unwrap().push(c.identity().map(str::to_owned)))
        .on_message(move |c, _| h1.lock().unwrap().push(("message", id(c))))
        .authorize_channel(move |c, _, _| {
            h2.lock().unwrap().push(("authorize", id(c)));
            true
        })
        .on_disconnect(move |c, _| h3.lock().unwrap().push(("disconnect", id(c))))
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;

    let resp = http_raw(server.addr, &upgrade_request("/ws", &[])).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (401, Some("missing token"))
    );
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    let resp = http_raw(server.addr, &upgrade_request("/ws?token=nope", &[])).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (401, Some("invalid token"))
    );
    let wrong = [("Authorization", "Bearer a-tokenX")];
    assert_eq!(
        http_raw(server.addr, &upgrade_request("/ws", &wrong))
            .await
            .status,
        401
    );
    assert_eq!(
        server.hub.client_count(),
        0,
        "a refused upgrade never registers a client"
    );

    let mut by_header = connect_with(&server, "/ws", &[("authorization", "Bearer a-token")]).await;
    let mut by_query = connect_with(&server, "/ws?token=b-token", &[]).await;
    let mut by_cookie =
        connect_with(&server, "/ws", &[("cookie", "x=1; wshub_token=a-token")]).await;
    for ws in [&mut by_header, &mut by_query, &mut by_cookie] {
        sync(ws).await;
    }
    let mut got = identities.lock().unwrap().clone();
    got.sort();
    let expected = [Some("alice"), Some("alice"), Some("bob")].map(|s| s.map(str::to_owned));
    assert_eq!(got, expected);
    send(&mut by_query, r#"{"type":"hello"}"#).await;
    subscribe(&mut by_query, "news").await;
    for ws in [by_header, by_query, by_cookie] {
        close(ws).await;
    }
    eventually("all gone", || server.hub.client_count() == 0).await;
    let mut hooks = in_hooks.lock().unwrap().clone();
    hooks.sort();
    let bob = Some("bob".to_owned());
    let alice = Some("alice".to_owned());
    assert_eq!(
        hooks,
        [
            ("authorize", bob.clone()),
            ("disconnect", alice.clone()),
            ("disconnect", alice),
            ("disconnect", bob.clone()),
            ("message", bob),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_cookie_token_counts_only_for_same_origin_or_listed_origins() {
    let auth = TokenAuth::new([("alice", "a-token")]);
    let build = |origins: Vec<String>| {
        let auth = auth.clone();
        Hub::builder()
            .config(HubConfig::default().allowed_origins(origins))
            .authenticate(move |req| auth.check(req))
            .build()
            .unwrap()
    };
    // Any origin may connect, but a foreign page cannot borrow the browser's cookie.
    let server = TestServer::start(build(Vec::new())).await;
    let cookie = ("Cookie", "wshub_token=a-token");
    let foreign = upgrade_request("/ws", &[cookie, ("Origin", "https://evil.example")]);
    let resp = http_raw(server.addr, &foreign).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (401, Some("missing token"))
    );
    // The same token in the query string is the page's own choice: accepted.
    let evil = ("origin", "https://evil.example");
    let mut ws = connect_with(&server, "/ws?token=a-token", &[evil]).await;
    sync(&mut ws).await;
    close(ws).await;
    // A page served by this host (the client sends `Host: <addr>`; case does not matter),
    // and a non-browser client without an Origin, may use the cookie.
    let own = format!("HTTP://{}", server.addr);
    let cookie = ("cookie", cookie.1);
    for headers in [&[cookie, ("origin", own.as_str())][..], &[cookie]] {
        let mut ws = connect_with(&server, "/ws", headers).await;
        sync(&mut ws).await;
        close(ws).await;
    }
    assert_eq!(server.hub.counters().connections, 3);
    server.stop().await;

    // With an allow-list, a listed origin's cookie counts.
    let server = TestServer::start(build(vec!["https://app.example.com".into()])).await;
    let mut ws = connect_with(
        &server,
        "/ws",
        &[cookie, ("origin", "https://app.example.com")],
    )
    .await;
    sync(&mut ws).await;
    close(ws).await;
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_refused_cross_site_websocket_hijacking() {
    let config = HubConfig::default().allowed_origins(vec!["https://app.example.com".into()]);
    let server = TestServer::with_config(config).await;
    let evil = [("Origin", "https://evil.example")];
    let resp = http_raw(server.addr, &upgrade_request("/ws", &evil)).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (403, Some("origin not allowed"))
    );
    // The same site over plain http is another origin.
    let downgraded = [("Origin", "http://app.example.com")];
    assert_eq!(
        http_raw(server.addr, &upgrade_request("/ws", &downgraded))
            .await
            .status,
        403
    );
    assert_eq!(server.hub.client_count(), 0);

    let mut allowed = connect_with(&server, "/ws", &[("origin", "https://app.example.com")]).await;
    sync(&mut allowed).await;
    // Non-browser clients send no Origin and are not affected.
    let mut tool = server.connect().await;
    sync(&mut tool).await;
    close(allowed).await;
    close(tool).await;
    server.stop().await;
}

#[tokio::test]
async fn the_channel_authoriser_decides_client_subscribe_and_publish() {
    let hub = Hub::builder()
        .config(
            HubConfig::default()
                .client_publish(vec![ChannelPattern::new("*").unwrap()])
                .history(vec![ChannelPattern::new("private:*").unwrap()]),
        )
        .authorize_channel(|_client, channel, action| match action {
            ChannelAction::Subscribe => !channel.starts_with("private:"),
            ChannelAction::Publish => channel.starts_with("chat:"),
            _ => false,
        })
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let mut ws = server.connect().await;
    send(&mut ws, r#"{"type":"subscribe","channel":"private:x"}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        r#"not allowed to subscribe to "private:x""#
    );
    // A resume on a channel with history is a subscribe too.
    send(
        &mut ws,
        r#"{"type":"subscribe","channel":"private:h","offset":0,"epoch":"e"}"#,
    )
    .await;
    assert_eq!(
        recv_error(&mut ws).await,
        r#"not allowed to subscribe to "private:h""#
    );
    subscribe(&mut ws, "chat:1").await;
    subscribe(&mut ws, "news").await;
    send(&mut ws, r#"{"type":"publish","channel":"news","data":1}"#).await;
    assert_eq!(
        recv_error(&mut ws).await,
        r#"not allowed to publish to "news""#
    );
    send(&mut ws, r#"{"type":"publish","channel":"chat:1","data":2}"#).await;
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"event","channel":"chat:1","data":2,"timestamp":"TS"}"#
    );
    // The library's own calls are not subject to the authoriser.
    let client = server.hub.clients().pop().unwrap();
    assert_eq!(client.subscribe("private:y"), Ok(true));
    close(ws).await;
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_until_a_slot_frees() {
    let server = TestServer::with_config(HubConfig::default().max_connections(2)).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    sync(&mut a).await;
    sync(&mut b).await;
    let resp = http_raw(server.addr, &upgrade_request("/ws", &[])).await;
    assert_eq!(
        (resp.status, resp.json()["error"].as_str()),
        (503, Some("too many connections"))
    );
    close(a).await;
    eventually("the slot is released", || server.hub.client_count() == 1).await;
    // The session's task ends just after the client is unregistered: retry until it has.
    let deadline = tokio::time::Instant::now() + WAIT;
    let c = loop {
        match tokio_tungstenite::connect_async(server.ws_url()).await {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    close(b).await;
    close(c).await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_over_its_rate_gets_errors_then_close_1008() {
    let (server, log) = rate_limited(RateLimit::new(5, 5)).await;
    let (mut raw, id) = server.raw_client().await; // its sync used one token
                                                   // 24 pings in one write: they arrive within milliseconds, far above 5 per second.
    let mut burst = Vec::new();
    for _ in 0..24 {
        burst.extend_from_slice(&wshub::frame::encode_masked(
            1,
            true,
            0,
            br#"{"type":"ping"}"#,
            [9; 4],
        ));
    }
    raw.write(&burst).await;
    let mut kinds = Vec::new();
    loop {
        let (op, payload) = raw.read_frame().await.expect("frames until the close");
        if op == 8 {
            assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
            assert_eq!(&payload[2..], b"rate limit exceeded");
            raw.send_close(1000, "").await; // completes the close handshake
            break;
        }
        if op == 1 {
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            kinds.push(v["type"].as_str().unwrap().to_owned());
            if v["type"] == "error" {
                assert_eq!(v["data"], "rate limit exceeded");
            }
        }
    }
    // 4 tokens left after the sync; then 5 refusals in a row (the burst) end the connection:
    // four get an error reply, the fifth the close itself; the rest is never read.
    let pongs = kinds.iter().filter(|k| *k == "pong").count();
    let errors = kinds.iter().filter(|k| *k == "error").count();
    assert_eq!((pongs, errors), (4, 4), "{kinds:?}");
    assert_eq!(log.wait_for(id).await, DisconnectReason::RateLimited);
    server.stop().await;
}

#[tokio::test]
async fn a_ping_frame_flood_is_rate_limited_unanswered_then_closed_1008() {
    let (server, log) = rate_limited(RateLimit::new(1, 5)).await;
    let (mut raw, id) = server.raw_client().await; // its sync used one token
                                                   // 24 WebSocket-level pings (opcode 9) in one write, each with its own payload.
    let mut burst = Vec::new();
    for i in 0..24u8 {
        burst.extend_from_slice(&wshub::frame::encode_masked(9, true, 0, &[i], [7; 4]));
    }
    raw.write(&burst).await;
    let mut pongs = Vec::new();
    loop {
        let (op, payload) = raw.read_frame().await.expect("frames until the close");
        match op {
            0xA => pongs.push(payload),
            8 => {
                assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1008);
                assert_eq!(&payload[2..], b"rate limit exceeded");
                raw.send_close(1000, "").await;
                break;
            }
            other => panic!("unexpected opcode {other}: {payload:?}"),
        }
    }
    // The 4 tokens left are answered (pongs echo their ping); a refused ping gets no pong
    // (and no error message: it is not a request), and 5 refusals in a row close.
    assert_eq!(pongs, [[0], [1], [2], [3]].map(|p| p.to_vec()));
    assert_eq!(log.wait_for(id).await, DisconnectReason::RateLimited);
    server.stop().await;
}

#[tokio::test]
async fn a_slowloris_handshake_is_cut_off_at_the_handshake_timeout() {
    let config = ServerConfig::default().handshake_timeout(Duration::from_millis(300));
    let server = TestServer::start_with(Hub::new(), config).await;
    // One connection that never sends anything, one that keeps trickling a head that never
    // ends: a header line every 50 ms, so an idle timeout alone would never cut it off.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let trickle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut trickle, mut writer) = trickle.into_split();
    let sender = tokio::spawn(async move {
        let mut lines = 0u32;
        let mut next: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\n";
        while writer.write_all(next).await.is_ok() && lines < 1000 {
            lines += 1;
            next = b"X-Slow: y\r\n";
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lines
    });
    let mut buf = Vec::new();
    // The server closes (possibly after a 408 response): read to EOF.
    let read = tokio::time::timeout(WAIT, silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a silent connection open");
    assert!(buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"));
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, trickle.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a trickling connection open");
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // The sender stops at its first failed write after the close.
    let lines = tokio::time::timeout(WAIT, sender).await.unwrap().unwrap();
    assert!(lines < 1000, "still writing after {lines} lines");
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_request_head_gets_431() {
    let config = ServerConfig::default().max_header_size(8192);
    let server = TestServer::start_with(Hub::new(), config).await;
    let big = "x".repeat(16 * 1024);
    let resp = http_raw(server.addr, &upgrade_request("/ws", &[("X-Big", &big)])).await;
    assert_eq!(resp.status, 431);
    assert_eq!(server.hub.client_count(), 0);
    // A normal request still works.
    let (status, _) = http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn a_reconnecting_client_may_resubscribe_to_all_its_channels_at_once() {
    // Default limits: 100 messages/s, burst 200, 1024 subscriptions per client.
    let server = TestServer::with_config(HubConfig::default()).await;
    let (mut raw, id) = server.raw_client().await;
    let mut burst = Vec::new();
    for i in 0..1024 {
        let msg = format!(r#"{{"type":"subscribe","channel":"ch-{i}"}}"#);
        burst.extend_from_slice(&wshub::frame::encode_masked(
            1,
            true,
            0,
            msg.as_bytes(),
            [7; 4],
        ));
    }
    raw.write(&burst).await;
    let replies = raw.sync().await;
    assert!(replies.is_empty(), "subscribes were refused: {replies:?}");
    assert_eq!(server.hub.client(id).unwrap().subscriptions().len(), 1024);
    raw.send_close(1000, "").await;
    server.stop().await;
}

#[tokio::test]
async fn a_client_steadily_over_its_rate_is_closed_although_some_messages_get_through() {
    let log = DisconnectLog::default();
    let limit = RateLimit::new(50, 10);
    let hub = log
        .install(Hub::builder().config(HubConfig::default().rate_limit(Some(limit))))
        .build()
        .unwrap();
    let server = TestServer::start(hub).await;
    let (mut raw, id) = server.raw_client().await;
    // One ping every 4 ms (250/s, five times the rate): a token comes back every 20 ms, so
    // some pings are answered between the refusals, and the refusals never come `burst` in a
    // row. Bounded: 2 s of pings at most.
    let ping = wshub::frame::encode_masked(1, true, 0, br#"{"type":"ping"}"#, [9; 4]);
    let mut tick = tokio::time::interval(Duration::from_millis(4));
    let (mut sent, mut pongs, mut errors) = (0, 0, 0);
    let code = loop {
        tokio::select! {
            _ = tick.tick(), if sent < 500 => {
                raw.write(&ping).await;
                sent += 1;
            }
            frame = raw.read_frame() => {
                let (op, payload) = frame.expect("frames until the close");
                if op == 8 {
                    break u16::from_be_bytes([payload[0], payload[1]]);
                }
                let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                match v["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => errors += 1,
                    other => panic!("{other:?}"),
                }
            }
        }
    };
    assert!(
        sent < 500,
        "closed before the 2 s of pings ran out ({sent} sent)"
    );
    assert_eq!(code, 1008);
    assert!(pongs > 10, "the bucket's 10 plus refills: {pongs} pongs");
    assert!(errors >= 9, "{errors} refusals before the close");
    assert_eq!(log.wait_for(id).await, DisconnectReason::RateLimited);
    server.stop().await;
}
