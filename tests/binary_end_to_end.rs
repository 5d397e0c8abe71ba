//! The `wshub` binary and `examples/client` as an operator runs them: two nodes on two ports
//! over one `redis-server`, a channel with history, the example client on one node and the
//! HTTP API on the other, and the client's node restarted while publishing goes on; the
//! security, client-publish and API-key flags and environment variables; SIGTERM and SIGINT;
//! bad flags.

mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use support::redis_server::RedisServer;
use support::*;

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// A child process killed (SIGKILL) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `wshub` on `addr` with `args` and waits until it serves requests.
fn wshub(addr: SocketAddr, args: &[&str]) -> Proc {
    wshub_env(addr, args, &[])
}

/// [`wshub`] with environment variables.
fn wshub_env(addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wshub");
    let proc = Proc(child);
    let deadline = Instant::now() + WAIT;
    while !healthy(addr) {
        assert!(Instant::now() < deadline, "wshub did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
    proc
}

/// `GET /healthz` answers 200. A successful TCP connect alone does not show that the server
/// listens: a connect to a free port of the ephemeral range can connect the socket to itself.
fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    let request = b"GET /healthz HTTP/1.1\r\nHost: wshub\r\nConnection: close\r\n\r\n";
    let mut answer = Vec::new();
    tcp.write_all(request).is_ok()
        && tcp.read_to_end(&mut answer).is_ok()
        && answer.starts_with(b"HTTP/1.1 200")
}

/// `examples/client`, built (or found up to date) next to the `wshub` binary of this run.
fn example_client_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let profile_dir = Path::new(env!("CARGO_BIN_EXE_wshub"))
            .parent()
            .expect("the binary's directory");
        let target_dir = profile_dir.parent().expect("the target directory");
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args(["build", "--quiet", "--example", "client", "--target-dir"])
            .arg(target_dir);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo");
        assert!(status.success(), "cargo build --example client failed");
        profile_dir
            .join("examples")
            .join(format!("client{}", std::env::consts::EXE_SUFFIX))
    })
}

/// The example client, subscribed to `channel` at `url`: what it prints on stdout (one JSON
/// message per line) and on stderr (its status). Killed when dropped.
struct ExampleClient {
    _proc: Proc,
    messages: Lines,
    status: Lines,
}

fn example_client(url: &str, channel: &str) -> ExampleClient {
    let mut child = Command::new(example_client_path())
        .arg(url)
        .arg(channel)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example client");
    let messages = Lines::new(child.stdout.take().expect("stdout"));
    let status = Lines::new(child.stderr.take().expect("stderr"));
    ExampleClient {
        _proc: Proc(child),
        messages,
        status,
    }
}

/// A child's output, line by line, read on a thread.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn new(output: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(output).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    fn next(&self, within: Duration) -> serde_json::Value {
        let line = self
            .0
            .recv_timeout(within)
            .expect("a line from the client in time");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    }

    /// Skips lines until one contains `text`.
    fn wait_for(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .0
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no line with {text:?} in time"));
            if line.contains(text) {
                return line;
            }
        }
    }

    fn expect_silence(&self, d: Duration) {
        if let Ok(line) = self.0.recv_timeout(d) {
            panic!("unexpected line: {line}");
        }
    }
}

async fn publish(node: SocketAddr, channel: &str, n: u64) {
    let body = format!(r#"{{"channel":"{channel}","data":{n}}}"#);
    let (status, reply) = http(node, "POST", "/api/publish", &[JSON], body.as_bytes()).await;
    assert_eq!(status, 200, "publish {n} on {node}: {reply}");
}

#[tokio::test]
async fn the_example_client_on_one_node_resumes_across_its_restart_without_losing_a_message() {
    example_client_path(); // built before the servers start
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis", &url, "--history", "feed:*"];
    // Node B runs on one thread (the current-thread scheduler), node A on the default.
    let b_args = [&args[..], &["--threads", "1"]].concat();
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let mut a = Some(wshub(a_addr, &args));
    let _b = wshub(b_addr, &b_args);

    let client = example_client(&format!("ws://{a_addr}/ws"), "feed:x");
    let lines = &client.messages;

    // The client subscribes on node A; what is published on node B reaches it, each message
    // one JSON line with its position.
    let mut expected = 1;
    let mut last_offset = 0;
    let deadline = Instant::now() + WAIT;
    // Node A subscribes in Redis once the client has joined the channel.
    while !redis.channels().await.iter().any(|c| c.ends_with("feed:x")) {
        assert!(
            Instant::now() < deadline,
            "node A never subscribed feed:x in Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut check = |v: serde_json::Value, expected: &mut u64| {
        assert_eq!(v["type"], "event", "{v}");
        assert_eq!(v["channel"], "feed:x", "{v}");
        assert_eq!(v["data"], *expected, "{v}");
        let offset = v["offset"].as_u64().expect("an offset");
        assert!(offset > last_offset, "{v}");
        last_offset = offset;
        *expected += 1;
    };
    for n in 1..=5 {
        publish(b_addr, "feed:x", n).await;
    }
    for _ in 1..=5 {
        check(lines.next(WAIT), &mut expected);
    }

    // Node A goes away; publishing on B goes on; A comes back on the same address.
    drop(a.take());
    for n in 6..=10 {
        publish(b_addr, "feed:x", n).await;
    }
    a = Some(wshub(a_addr, &args));
    // The client resumes from its last position: 6 to 10 arrive in order, once each, and
    // then what is published live.
    for _ in 6..=10 {
        check(lines.next(WAIT * 2), &mut expected);
    }
    publish(b_addr, "feed:x", 11).await;
    check(lines.next(WAIT), &mut expected);
    lines.expect_silence(Duration::from_millis(300));
    drop(a);
}

#[test]
fn bad_flags_and_an_unreachable_redis_are_clear_errors_with_an_exit_code() {
    let port = free_addr().to_string();
    let cases: [(&[&str], i32, &str); 10] = [
        (&["--bogus"], 2, "unknown argument \"--bogus\""),
        (&["--threads", "0"], 2, "--threads 0: expected at least 1"),
        (
            &["--rate-limit", "0", "--rate-burst", "5"],
            2,
            "--rate-burst needs a rate limit",
        ),
        (
            &["--write-delay", "-1"],
            2,
            "--write-delay -1: expected a non-negative number of milliseconds",
        ),
        (
            &["--write-delay", "20000"],
            2,
            "write_delay: must be less than write_timeout",
        ),
        (
            &["--heartbeat", "70"],
            2,
            "pong_timeout: must be greater than heartbeat_interval",
        ),
        (
            &["--pong-timeout", "1e19"],
            2,
            "pong_timeout: must be at most 10 years",
        ),
        (
            &["--handshake-timeout", "1e19"],
            2,
            "handshake_timeout: must be at most 10 years",
        ),
        (
            &["--max-http-connections", "0"],
            2,
            "max_http_connections greater than zero",
        ),
        (
            &["--redis", "redis://127.0.0.1:1"],
            1,
            "Redis redis://127.0.0.1:1: cannot connect",
        ),
    ];
    for (args, code, message) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args(["--listen", &port])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run wshub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// Opens a WebSocket to `url` with extra request headers; the HTTP status on refusal.
async fn ws_with(url: &str, headers: &[(&str, &str)]) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

/// `POST /api/publish` to `channel` on the server at `addr`, whose API key is `k3y`: refused
/// (401) with the `wrong` Authorization header (none if `None`), published with the key;
/// `ws`, subscribed to `channel`, gets that publication only.
async fn api_key_guards_publish(addr: SocketAddr, wrong: Option<&str>, channel: &str, ws: &mut Ws) {
    let body = format!(r#"{{"channel":"{channel}","data":"keyed"}}"#);
    let mut headers = vec![JSON];
    headers.extend(wrong.map(|w| ("Authorization", w)));
    let (status, _) = http(addr, "POST", "/api/publish", &headers, body.as_bytes()).await;
    assert_eq!(status, 401);
    let auth = ("Authorization", "Bearer k3y");
    let (status, reply) = http(addr, "POST", "/api/publish", &[JSON, auth], body.as_bytes()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(recv_json(ws).await["data"], "keyed");
}

#[tokio::test]
async fn the_binarys_security_flags_and_environment_take_effect() {
    let addr = free_addr();
    let _server = wshub_env(
        addr,
        &[
            "--auth-token",
            "alice=s3cret",
            "--allowed-origin",
            "https://app.example",
            "--max-channel-name-len",
            "8",
        ],
        &[("WSHUB_API_KEY", "k3y"), ("WSHUB_AUTH_TOKENS", "bob=b0b")],
    );
    let url = format!("ws://{addr}/ws");
    assert_eq!(ws_with(&url, &[]).await.err(), Some(401), "no token");
    assert_eq!(
        ws_with(&format!("{url}?token=wrong"), &[]).await.err(),
        Some(401)
    );
    let good: [(String, Vec<(&str, &str)>); 4] = [
        (format!("{url}?token=s3cret"), vec![]),
        (url.clone(), vec![("Authorization", "Bearer s3cret")]),
        (
            url.clone(),
            vec![("Cookie", "theme=dark; wshub_token=s3cret")],
        ),
        (url.clone(), vec![("Authorization", "Bearer b0b")]), // from WSHUB_AUTH_TOKENS
    ];
    for (u, headers) in &good {
        let mut ws = ws_with(u, headers)
            .await
            .expect("a valid token is accepted");
        sync(&mut ws).await;
        close(ws).await;
    }
    // Cross-site WebSocket hijacking: a valid cookie, sent by a browser on a foreign page.
    let foreign = [
        ("Cookie", "wshub_token=s3cret"),
        ("Origin", "https://evil.example"),
    ];
    assert_eq!(ws_with(&url, &foreign).await.err(), Some(403));
    let own = [
        ("Cookie", "wshub_token=s3cret"),
        ("Origin", "https://app.example"),
    ];
    let mut ws = ws_with(&url, &own).await.expect("the allowed origin");
    send(&mut ws, r#"{"type":"subscribe","channel":"ninechars"}"#).await;
    let error = recv_error(&mut ws).await;
    assert!(error.contains("longer than 8 characters"), "{error}");
    subscribe(&mut ws, "eight:ch").await;
    // The API key from WSHUB_API_KEY guards the HTTP API.
    api_key_guards_publish(addr, None, "eight:ch", &mut ws).await;
    close(ws).await;
}

#[tokio::test]
async fn the_client_publish_and_api_key_flags_take_effect() {
    let addr = free_addr();
    let _server = wshub(
        addr,
        &[
            "--client-publish",
            "chat:*",
            "--api-key",
            "k3y",
            "--rate-limit=0",
        ],
    );
    let mut ws = connect(&format!("ws://{addr}/ws")).await;
    subscribe(&mut ws, "chat:lobby").await;
    subscribe(&mut ws, "news").await;
    send(
        &mut ws,
        r#"{"type":"publish","channel":"chat:lobby","data":"hi"}"#,
    )
    .await;
    let event = recv_json(&mut ws).await;
    assert_eq!(
        (&event["channel"], &event["data"]),
        (&"chat:lobby".into(), &"hi".into())
    );
    send(
        &mut ws,
        r#"{"type":"publish","channel":"news","data":"no"}"#,
    )
    .await;
    let error = recv_error(&mut ws).await;
    assert!(error.contains("not allowed to publish"), "{error}");
    api_key_guards_publish(addr, Some("Bearer nope"), "news", &mut ws).await;
    close(ws).await;
}

#[tokio::test]
async fn sigterm_and_sigint_flush_every_client_with_1001_and_the_binary_exits_cleanly() {
    // `--threads 1` runs the current-thread scheduler, more threads the multi-thread one.
    for (threads, signal) in [("1", "TERM"), ("2", "TERM"), ("1", "INT")] {
        let addr = free_addr();
        let mut server = wshub(addr, &["--threads", threads]);
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut ws = connect(&format!("ws://{addr}/ws")).await;
            subscribe(&mut ws, "news").await;
            clients.push(ws);
        }
        publish(addr, "news", 7).await;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &server.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        for mut ws in clients {
            assert_eq!(
                recv_json(&mut ws).await["data"],
                7,
                "--threads {threads} SIG{signal}: queued before the signal"
            );
            let (code, _) = recv_close(&mut ws).await;
            assert_eq!(code, 1001, "--threads {threads} SIG{signal}");
        }
        let deadline = Instant::now() + WAIT;
        let exit = loop {
            if let Some(exit) = server.0.try_wait().expect("wait for wshub") {
                break exit;
            }
            assert!(
                Instant::now() < deadline,
                "--threads {threads}: wshub still running after SIG{signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(exit.success(), "--threads {threads} SIG{signal}: {exit:?}");
    }
}

#[tokio::test]
async fn the_example_client_prints_every_message_across_a_plain_server_restart() {
    example_client_path(); // built before the servers start
    let addr = free_addr();
    let mut server = Some(wshub(addr, &[]));
    let client = example_client(&format!("ws://{addr}/ws"), "news");
    let (lines, status) = (&client.messages, &client.status);
    // "connected" is announced once the server confirmed the subscription.
    status.wait_for("client: connected to", WAIT);
    let check = |v: serde_json::Value, n: u64| {
        assert_eq!(v["type"], "event", "{v}");
        assert_eq!(v["channel"], "news", "{v}");
        assert_eq!(v["data"], n, "{v}");
    };
    for n in 1..=3 {
        publish(addr, "news", n).await;
    }
    for n in 1..=3 {
        check(lines.next(WAIT), n);
    }
    // The server goes away and comes back on the same address; the client says so on stderr
    // and subscribes again by itself.
    drop(server.take());
    status.wait_for("client: disconnected", WAIT);
    server = Some(wshub(addr, &[]));
    status.wait_for("client: reconnected", WAIT * 2);
    for n in 4..=6 {
        publish(addr, "news", n).await;
    }
    for n in 4..=6 {
        check(lines.next(WAIT), n);
    }
    lines.expect_silence(Duration::from_millis(300));
    drop(server);
}
