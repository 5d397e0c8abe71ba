//! The wshub server serving TLS from PEM files: `wss://` for clients, `https://` for the API,
//! a plain-TCP client refused without a hang, and the binary's `--tls-cert`/`--tls-key`.
#![cfg(all(feature = "client", feature = "server"))]

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use support::tls::{localhost_cert, tls_server, trusting};
use support::{free_addr, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use wshub::client::rustls::pki_types::{CertificateDer, ServerName};
use wshub::client::{rustls, ClientConfig, Event};
use wshub::{Hub, Json, Message};

/// One HTTP/1.1 request over TLS to `localhost`; returns the whole response.
async fn https(addr: SocketAddr, tls: Arc<rustls::ClientConfig>, request: &str) -> String {
    let tcp = timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut stream = timeout(WAIT, TlsConnector::from(tls).connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

async fn wss_roundtrip(port: u16, cert: CertificateDer<'static>, hub: Option<&Hub>) {
    let config = ClientConfig::default().tls(trusting(cert));
    let (client, mut events) =
        support::client::start(config, &format!("wss://localhost:{port}/ws"));
    client.subscribe("secure").unwrap();
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert!(matches!(event, Event::Connected), "{event:?}");
    match hub {
        Some(hub) => {
            let msg = Message::new("event").with_data(Json::string("over tls"));
            hub.publish("secure", &msg).await.unwrap();
        }
        None => client.send(r#"{"type":"ping"}"#).await.unwrap(),
    }
    match timeout(WAIT, events.recv()).await.unwrap().unwrap() {
        Event::Message(m) => {
            let env = m.envelope().unwrap();
            match hub {
                Some(_) => assert_eq!(env.data.map(|d| d.get()), Some(r#""over tls""#)),
                None => assert_eq!(env.kind, "pong"),
            }
        }
        other => panic!("expected a message, got {other:?}"),
    }
    client.close();
    timeout(WAIT, client.closed()).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_server_serves_wss_and_https_from_pem_files() {
    let hub = Hub::new();
    let (server, cert) = tls_server(hub.clone()).await;
    wss_roundtrip(server.addr.port(), cert.clone(), Some(&hub)).await;
    let resp = https(
        server.addr,
        trusting(cert),
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.ends_with(r#"{"status":"ok"}"#), "{resp}");
    server.stop().await;
}

#[tokio::test]
async fn a_plain_client_on_the_tls_port_is_refused_without_a_hang() {
    let (server, _) = tls_server(Hub::new()).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The end of the connection (or a reset), in time.
    let _ = timeout(WAIT, tcp.read_to_end(&mut out))
        .await
        .expect("the server ends the connection in time");
    // No HTTP answer: at most a TLS alert.
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
        "{out:?}"
    );
    server.stop().await;
}

/// A child process killed when dropped (a failed assertion leaves no server behind).
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_tls_handshake_under_way_does_not_delay_shutdown() {
    let (server, _) = tls_server(Hub::new()).await;
    // The first bytes of a ClientHello, then nothing.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let begin = tokio::time::Instant::now();
    server.stop().await;
    // The handshake timeout is 10 s; shutting down does not wait for it.
    assert!(
        begin.elapsed() < Duration::from_secs(5),
        "{:?}",
        begin.elapsed()
    );
    drop(tcp);
}

#[tokio::test]
async fn bad_key_files_and_alpn_lists_are_clear_errors() {
    use wshub::server::{tls_from_pem_files, Server, ServerConfig};
    let good = localhost_cert();
    let other = localhost_cert();
    let dir = good.key_file.parent().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let empty = write("empty.pem", "");
    let encrypted = write(
        "encrypted.pem",
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let cases = [
        (
            &good.cert_file,
            &other.key_file,
            "does not match the certificate",
        ),
        (&good.cert_file, &empty, "no PEM PRIVATE KEY"),
        (&good.cert_file, &good.cert_file, "no PEM PRIVATE KEY"),
        (
            &good.cert_file,
            &encrypted,
            "encrypted private keys are not supported",
        ),
        (&empty, &good.key_file, "no PEM CERTIFICATE section"),
    ];
    for (cert, key, message) in cases {
        let err = tls_from_pem_files(cert, key).unwrap_err().to_string();
        assert!(err.contains(message), "{cert:?} {key:?}: {err}");
    }
    // A configuration offering h2 would negotiate it and then fail every request.
    let tls = tls_from_pem_files(&good.cert_file, &good.key_file).unwrap();
    let mut h2 = (*tls).clone();
    h2.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let config = ServerConfig::default()
        .listen(free_addr())
        .tls(Some(Arc::new(h2)));
    let err = Server::bind(Hub::new(), config).await.unwrap_err();
    assert!(err.to_string().contains("http/1.1 alone"), "{err}");
}

#[tokio::test]
async fn the_binary_serves_tls_with_tls_cert_and_tls_key() {
    let cert = localhost_cert();
    let addr = free_addr();
    let _child = Proc(
        Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args(["--listen", &addr.to_string()])
            .arg("--tls-cert")
            .arg(&cert.cert_file)
            .arg("--tls-key")
            .arg(&cert.key_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start wshub"),
    );
    let tls = trusting(cert.cert.clone());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let resp = https(
                addr,
                Arc::clone(&tls),
                "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .await;
            if resp.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "wshub never served TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wss_roundtrip(addr.port(), cert.cert.clone(), None).await;
    // A key without its certificate, and files that cannot be read, are clear errors.
    for (args, message) in [
        (
            vec!["--tls-key", "k.pem"],
            "--tls-cert and --tls-key go together",
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
            ],
            "/nonexistent/c.pem",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run wshub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
