//! The `wshub` server's HTTP API end to end: publish, broadcast, stats, health, errors, auth.

mod support;

use support::*;
use wshub::server::ServerConfig;
use wshub::{Hub, HubConfig};

const JSON: (&str, &str) = ("Content-Type", "application/json");

#[tokio::test]
async fn publish_delivers_to_subscribers_and_answers_with_the_report() {
    let server = TestServer::start(Hub::new()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let mut outsider = server.connect().await;
    subscribe(&mut a, "news").await;
    subscribe(&mut b, "news").await;
    sync(&mut outsider).await;

    let resp = http_full(
        server.addr,
        "POST",
        "/api/publish",
        &[JSON],
        br#"{"channel":"news","data":{"headline":"hi"}}"#,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.body, r#"{"enqueued":2,"dropped":0,"disconnected":0}"#);
    for ws in [&mut a, &mut b] {
        // `type` defaults to `event`.
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","channel":"news","data":{"headline":"hi"},"timestamp":"TS"}"#
        );
    }
    sync(&mut outsider).await;

    // Explicit type and process id; no subscribers is a 200 with an empty report.
    let (status, body) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[JSON],
        br#"{"channel":"empty","type":"custom","processId":"p","data":1}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"enqueued":0,"dropped":0,"disconnected":0}"#)
    );
    drop((a, b, outsider));
    server.stop().await;
}

#[tokio::test]
async fn broadcast_reaches_every_client() {
    let server = TestServer::start(Hub::new()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    subscribe(&mut a, "news").await;
    sync(&mut b).await;
    let (status, body) = http(
        server.addr,
        "POST",
        "/api/broadcast",
        &[JSON],
        br#"{"type":"announcement","data":"maintenance at 5"}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"enqueued":2,"dropped":0,"disconnected":0}"#)
    );
    for ws in [&mut a, &mut b] {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"announcement","data":"maintenance at 5","timestamp":"TS"}"#
        );
    }
    // Without data and type: an `event` with no data field.
    let (status, _) = http(server.addr, "POST", "/api/broadcast", &[JSON], b"{}").await;
    assert_eq!(status, 200);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            mask_timestamp(&recv(ws).await),
            r#"{"type":"event","timestamp":"TS"}"#
        );
    }
    drop((a, b));
    server.stop().await;
}

#[tokio::test]
async fn stats_and_health() {
    let server = TestServer::start(Hub::new()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    subscribe(&mut a, "news").await;
    subscribe(&mut b, "news").await;
    subscribe(&mut b, "process:p1").await;
    let resp = http_full(server.addr, "GET", "/api/stats", &[], b"").await;
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["clients"], 2);
    assert_eq!(v["channels"], 2);
    assert_eq!(
        v["subscribers"],
        serde_json::json!({"news": 2, "process:p1": 1})
    );
    assert_eq!(v["counters"]["connections"], 2);
    assert_eq!(v["counters"]["hook_panics"], 0);
    // go-ws field order first.
    assert!(
        resp.body.starts_with(r#"{"clients":2,"channels":2,"#),
        "{}",
        resp.body
    );

    // `?top=N` lists the N channels with the most subscribers; the totals stay.
    let v = http_full(server.addr, "GET", "/api/stats?top=1", &[], b"")
        .await
        .json();
    assert_eq!(v["subscribers"], serde_json::json!({"news": 2}));
    assert_eq!(v["channels"], 2);
    let v = http_full(server.addr, "GET", "/api/stats?top=all", &[], b"")
        .await
        .json();
    assert_eq!(
        v["subscribers"],
        serde_json::json!({"news": 2, "process:p1": 1})
    );
    let (status, body) = http(server.addr, "GET", "/api/stats?top=x", &[], b"").await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

    drop((a, b));
    eventually("clients gone", || server.hub.client_count() == 0).await;
    let v = http_full(server.addr, "GET", "/api/stats", &[], b"")
        .await
        .json();
    assert_eq!(
        v,
        serde_json::json!({
            "clients": 0,
            "channels": 0,
            "subscribers": {},
            "counters": v["counters"].clone(),
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_requests_are_400_with_a_json_reason() {
    let server = TestServer::start(Hub::new()).await;
    let cases: [(&str, &[u8], &str); 8] = [
        ("/api/publish", b"not json", "invalid JSON body"),
        ("/api/publish", b"", "invalid JSON body"),
        (
            "/api/publish",
            br#"{"channel":"news","data":}"#,
            "invalid JSON body",
        ),
        ("/api/publish", br#"{"channel":1}"#, "invalid JSON body"),
        (
            "/api/publish",
            br#"{"data":"x"}"#,
            r#"missing field "channel""#,
        ),
        (
            "/api/publish",
            br#"{"channel":"a b","data":1}"#,
            "invalid channel name",
        ),
        (
            "/api/publish",
            br#"{"channel":"","data":1}"#,
            "invalid channel name",
        ),
        ("/api/broadcast", b"[1]", "invalid JSON body"),
    ];
    for (path, body, reason) in cases {
        let resp = http_full(server.addr, "POST", path, &[JSON], body).await;
        assert_eq!(
            resp.status,
            400,
            "{path} {:?}",
            String::from_utf8_lossy(body)
        );
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let error = resp.json()["error"].as_str().unwrap().to_owned();
        assert!(
            error.starts_with(reason),
            "{error:?} should start with {reason:?}"
        );
    }
    assert_eq!(server.hub.counters().published, 0, "nothing was published");
    server.stop().await;
}

#[tokio::test]
async fn api_key_guards_the_api_only() {
    let config = ServerConfig::default().api_key(Some("s3cret".to_owned()));
    let server = TestServer::start_with(Hub::new(), config).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "news").await;
    let body = br#"{"channel":"news","data":"x"}"#;
    for headers in [
        &[][..],
        &[("Authorization", "Bearer wrong")][..],
        &[("Authorization", "Bearer s3cre")][..],
        &[("Authorization", "Bearer s3cret2")][..],
        &[("Authorization", "s3cret")][..],
        &[("Authorization", "Basic s3cret")][..],
    ] {
        for (method, path) in [
            ("POST", "/api/publish"),
            ("POST", "/api/broadcast"),
            ("GET", "/api/stats"),
            ("GET", "/metrics"),
        ] {
            let resp = http_full(server.addr, method, path, headers, body).await;
            assert_eq!(resp.status, 401, "{method} {path} {headers:?}");
            assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
            assert_eq!(resp.body, r#"{"error":"missing or invalid API key"}"#);
        }
    }
    // Nothing got through.
    sync(&mut ws).await;
    let auth = [("Authorization", "Bearer s3cret"), JSON];
    let (status, _) = http(server.addr, "POST", "/api/publish", &auth, body).await;
    assert_eq!(status, 200);
    assert!(recv(&mut ws).await.contains(r#""data":"x""#));
    let (status, _) = http(server.addr, "GET", "/api/stats", &auth, b"").await;
    assert_eq!(status, 200);
    let (status, _) = http(server.addr, "GET", "/metrics", &auth, b"").await;
    assert_eq!(status, 200);
    // The scheme name is case-insensitive (RFC 7235).
    let auth = [("Authorization", "bearer s3cret"), JSON];
    let (status, _) = http(server.addr, "POST", "/api/publish", &auth, body).await;
    assert_eq!(status, 200);
    assert!(recv(&mut ws).await.contains(r#""data":"x""#));
    // Health and the WebSocket endpoint need no key.
    let (status, _) = http(server.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200);
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn a_foreign_web_page_cannot_drive_the_api() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "news").await;
    // What a plain cross-site form or `fetch` sends: no CORS preflight, no API key set.
    let body = br#"{"channel":"news","data":"forged"}"#;
    let forged = [
        ("Origin", "https://evil.example"),
        ("Content-Type", "text/plain"),
    ];
    for (method, path) in [
        ("POST", "/api/publish"),
        ("POST", "/api/broadcast"),
        ("GET", "/api/stats"),
        ("GET", "/api/history"),
        ("GET", "/metrics"),
    ] {
        let resp = http_full(server.addr, method, path, &forged, body).await;
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (403, r#"{"error":"cross-origin API request refused"}"#),
            "{method} {path}"
        );
    }
    let null = [("Origin", "null")];
    let resp = http_full(server.addr, "POST", "/api/publish", &null, body).await;
    assert_eq!(resp.status, 403, "an opaque origin is foreign too");
    // DNS rebinding: the attacker's own name now points here, so the browser sends a
    // matching Origin (or none, for a same-origin GET), but the name is in `Host`.
    let rebound = |method: &str, path: &str, origin: bool| {
        let origin = if origin {
            "Origin: http://rebind.attacker:8080\r\n"
        } else {
            ""
        };
        format!(
            "{method} {path} HTTP/1.1\r\nHost: rebind.attacker:8080\r\n{origin}\
             Connection: close\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            std::str::from_utf8(body).unwrap()
        )
    };
    for (method, path, origin) in [("POST", "/api/publish", true), ("GET", "/api/stats", false)] {
        let resp = http_raw(server.addr, rebound(method, path, origin).as_bytes()).await;
        assert_eq!(resp.status, 403, "{method} {path}: {}", resp.body);
        assert!(resp.body.contains("--api-key"), "{}", resp.body);
    }
    assert_eq!(server.hub.counters().published, 0, "nothing was published");
    // A page of this server's own origin, and clients without an Origin, may.
    let own = format!("http://{}", server.addr);
    for headers in [&[("Origin", own.as_str()), JSON][..], &[JSON][..]] {
        let resp = http_full(server.addr, "POST", "/api/publish", headers, body).await;
        assert_eq!(resp.status, 200, "{headers:?}: {}", resp.body);
        assert!(recv(&mut ws).await.contains("forged"));
    }
    drop(ws);
    server.stop().await;

    // An origin on the allow-list may too.
    let config = HubConfig::default().allowed_origins(vec!["https://admin.example.com".into()]);
    let server = TestServer::with_config(config).await;
    let listed = [("Origin", "https://admin.example.com")];
    let resp = http_full(server.addr, "GET", "/api/stats", &listed, b"").await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let resp = http_full(server.addr, "GET", "/api/stats", &forged, b"").await;
    assert_eq!(resp.status, 403);
    server.stop().await;

    // With an API key, a host name is fine: a rebinding page does not know the key.
    let config = ServerConfig::default().api_key(Some("k".to_owned()));
    let server = TestServer::start_with(Hub::new(), config).await;
    let request = "GET /api/stats HTTP/1.1\r\nHost: hub.example.com\r\n\
                   Authorization: Bearer k\r\nConnection: close\r\n\r\n";
    let resp = http_raw(server.addr, request.as_bytes()).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_in_the_prometheus_text_format() {
    let server = TestServer::start(Hub::new()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    subscribe(&mut a, "news").await;
    subscribe(&mut b, "news").await;
    let body = br#"{"channel":"news","data":1}"#;
    let (status, _) = http(server.addr, "POST", "/api/publish", &[JSON], body).await;
    assert_eq!(status, 200);
    for ws in [&mut a, &mut b] {
        recv(ws).await;
    }
    let resp = http_full(server.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // Every sample has its HELP and TYPE lines; values are integers.
    let mut samples = std::collections::BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in resp.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(kind == "gauge" || kind == "counter", "{line}");
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            typed.insert(name.to_owned());
        } else if !line.starts_with("# HELP ") {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(typed.contains(name), "no TYPE before {line}");
            samples.insert(name.to_owned(), value.parse::<u64>().unwrap());
        }
    }
    assert_eq!(samples["wshub_clients"], 2);
    assert_eq!(samples["wshub_channels"], 1);
    assert_eq!(samples["wshub_published_total"], 1);
    assert_eq!(samples["wshub_delivered_total"], 2);
    assert_eq!(samples["wshub_connections_total"], 2);
    assert_eq!(samples["wshub_broker_shards"], 0);
    assert_eq!(samples["wshub_history_gaps_total"], 0);
    assert_eq!(samples["wshub_history_unavailable_total"], 0);
    assert_eq!(samples["wshub_remote_rejected_total"], 0);
    assert_eq!(samples.len(), 21);
    let (status, _) = http(server.addr, "POST", "/metrics", &[], b"").await;
    assert_eq!(status, 405);
    drop((a, b));
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let config = ServerConfig::default().max_body_size(64);
    let server = TestServer::start_with(Hub::new(), config).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "news").await;
    let big = format!(r#"{{"channel":"news","data":"{}"}}"#, "x".repeat(100));
    let resp = http_full(server.addr, "POST", "/api/publish", &[JSON], big.as_bytes()).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.json()["error"], "body larger than 64 bytes");
    // Without a Content-Length (chunked), the limit applies while reading.
    let chunk = big.as_bytes();
    let mut req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    req.extend_from_slice(chunk);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    let resp = http_raw(server.addr, &req).await;
    assert_eq!(resp.status, 413, "{}", resp.body);
    // Exactly at the limit is fine.
    let ok = br#"{"channel":"news","data":"0123456789012345678901234567"}"#;
    let ok = &ok[..];
    let padded: Vec<u8> = {
        let mut v = ok.to_vec();
        v.resize(64, b' ');
        v
    };
    let (status, body) = http(server.addr, "POST", "/api/publish", &[JSON], &padded).await;
    assert_eq!(status, 200, "{body}");
    assert!(recv(&mut ws).await.contains("0123456789012345678901234567"));
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405() {
    let server = TestServer::start(Hub::new()).await;
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/nope"),
        ("POST", "/api/nope"),
        ("GET", "/ws/x"),
    ] {
        let resp = http_full(server.addr, method, path, &[], b"").await;
        assert_eq!(resp.status, 404, "{method} {path}");
        assert_eq!(resp.body, r#"{"error":"not found"}"#);
    }
    for (method, path, allow) in [
        ("GET", "/api/publish", "POST"),
        ("PUT", "/api/broadcast", "POST"),
        ("POST", "/api/stats", "GET"),
        ("POST", "/healthz", "GET"),
        ("POST", "/ws", "GET"),
    ] {
        let resp = http_full(server.addr, method, path, &[], b"").await;
        assert_eq!(resp.status, 405, "{method} {path}");
        assert_eq!(resp.header("allow"), Some(allow), "{method} {path}");
        assert_eq!(resp.body, r#"{"error":"method not allowed"}"#);
    }
    server.stop().await;
}

#[tokio::test]
async fn non_upgrade_requests_to_ws_are_400() {
    let server = TestServer::start(Hub::new()).await;
    let resp = http_full(server.addr, "GET", "/ws", &[], b"").await;
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("WebSocket upgrade"), "{}", resp.body);
    // RFC 6455 §4.2.2 and §4.4: another version gets 426 and the version this server speaks.
    let upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade")];
    let key = ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    for versions in [&["8"][..], &["13, 8"], &[], &["13", "8"]] {
        let mut headers = vec![upgrade[0], upgrade[1], key];
        headers.extend(versions.iter().map(|v| ("Sec-WebSocket-Version", *v)));
        let resp = http_full(server.addr, "GET", "/ws", &headers, b"").await;
        assert_eq!(resp.status, 426, "{versions:?}: {}", resp.body);
        assert_eq!(
            resp.header("sec-websocket-version"),
            Some("13"),
            "{versions:?}"
        );
        assert_eq!(resp.header("upgrade"), Some("websocket"), "{versions:?}");
        assert!(resp.body.contains("version 13"), "{}", resp.body);
    }
    // The key must be base64 of 16 bytes, and only one.
    for keys in [
        &[][..],
        &["dGhlIHNhbXBsZSBub25jZQ"],
        &["c2hvcnQ="],
        &["dGhlIHNhbXBsZSBub25jZQ!="],
        &["dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZSBub25jZQ=="],
    ] {
        let mut headers = vec![upgrade[0], upgrade[1], ("Sec-WebSocket-Version", "13")];
        headers.extend(keys.iter().map(|k| ("Sec-WebSocket-Key", *k)));
        let resp = http_full(server.addr, "GET", "/ws", &headers, b"").await;
        assert_eq!(resp.status, 400, "{keys:?}: {}", resp.body);
        assert!(resp.body.contains("Sec-WebSocket-Key"), "{}", resp.body);
    }
    assert_eq!(server.hub.client_count(), 0);
    assert_eq!(server.hub.counters().connections, 0);
    server.stop().await;
}

#[tokio::test]
async fn go_ws_process_output_through_the_api_is_byte_identical() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    // go-ws clients subscribe with the channel in `data`.
    send(&mut ws, r#"{"type":"subscribe","data":"process:p1"}"#).await;
    sync(&mut ws).await;
    let (status, _) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[JSON],
        br#"{"channel":"process:p1","type":"process_output","processId":"p1","data":"line"}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        mask_timestamp(&recv(&mut ws).await),
        r#"{"type":"process_output","channel":"process:p1","processId":"p1","data":"line","timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = ServerConfig::default().handshake_timeout(std::time::Duration::from_millis(300));
    let server = TestServer::start_with(Hub::new(), config).await;
    let mut sock = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The head promises 100 bytes of body; 10 arrive, then nothing.
    sock.write_all(
        b"POST /api/publish HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"channel\"",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&resp).contains("did not arrive") {
        let n = tokio::time::timeout(WAIT, sock.read(&mut buf))
            .await
            .expect("the server answers in time")
            .unwrap();
        assert!(n > 0, "closed without an answer: {resp:?}");
        resp.extend_from_slice(&buf[..n]);
    }
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    server.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_http_connections_are_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let config = ServerConfig::default().max_http_connections(2);
    let server = TestServer::start_with(Hub::new(), config).await;
    // Two connections that send nothing hold both HTTP slots.
    let first = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _second = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // Wait until the server accepted both, then a third is closed without an answer.
    let mut third_closed = false;
    for _ in 0..100 {
        let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 16];
        match tokio::time::timeout(std::time::Duration::from_millis(100), third.read(&mut buf))
            .await
        {
            Ok(Ok(0) | Err(_)) => {
                third_closed = true;
                break;
            }
            Ok(Ok(n)) => panic!("unexpected answer: {:?}", &buf[..n]),
            Err(_) => continue, // not yet: the first two may not have been accepted
        }
    }
    assert!(third_closed, "a connection beyond the limit is closed");
    // A freed slot serves again (once the server noticed the close).
    drop(first);
    eventually_async("the freed slot serves a request", || {
        healthz_ok(server.addr)
    })
    .await;
    // Upgraded WebSocket connections leave the HTTP phase: with one slot held, two clients
    // connect one after the other and requests are still served.
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut ws = None;
        for _ in 0..100 {
            match tokio_tungstenite::connect_async(server.ws_url()).await {
                Ok((c, _)) => {
                    ws = Some(c);
                    break;
                }
                // The previous client's slot may not be released yet.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        clients.push(ws.expect("a WebSocket client connects"));
    }
    assert_eq!(server.hub.client_count(), 2);
    eventually_async("requests are served beside them", || {
        healthz_ok(server.addr)
    })
    .await;
    drop(clients);
    server.stop().await;
}

/// `GET /healthz` answered 200 (a connection closed without an answer is `false`).
async fn healthz_ok(addr: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut sock) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if sock.write_all(req).await.is_err() {
        return false;
    }
    let mut resp = Vec::new();
    let read = tokio::time::timeout(WAIT, sock.read_to_end(&mut resp)).await;
    matches!(read, Ok(Ok(_))) && resp.starts_with(b"HTTP/1.1 200")
}

/// Retries `check` every 20 ms until it holds, for at most [`WAIT`].
async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
