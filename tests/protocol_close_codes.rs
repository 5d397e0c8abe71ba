//! Strict RFC 6455 on inbound frames: hand-made raw frames and the close code each one earns.

mod support;

use support::*;
use wshub::{DisconnectReason, Hub, HubConfig};

const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A server with a disconnect log and a 1000-byte message limit.
async fn server() -> (TestServer, DisconnectLog) {
    let log = DisconnectLog::default();
    let hub = log
        .install(Hub::builder())
        .config(HubConfig::default().max_message_size(1000))
        .build()
        .unwrap();
    (TestServer::start(hub).await, log)
}

/// Sends `wire` on a fresh raw connection and expects close `code`, then the server closing the
/// TCP connection; checks the disconnect reason and the protocol error counter.
async fn expect_violation(wire: &[u8], code: u16) {
    let (server, log) = server().await;
    let (mut raw, id) = server.raw_client().await;
    raw.write(wire).await;
    let (got, reason) = raw.read_close_frame().await;
    assert_eq!(got, Some(code), "close code for {wire:02x?} ({reason})");
    assert!(!reason.is_empty(), "the close frame says why");
    raw.expect_eof().await;
    match log.wait_for(id).await {
        DisconnectReason::ProtocolError { code: c, .. } => assert_eq!(c, code),
        other => panic!("unexpected reason {other:?}"),
    }
    assert_eq!(server.hub.counters().protocol_errors, 1);
    eventually("client removed", || server.hub.client_count() == 0).await;
    server.stop().await;
}

fn masked(opcode: u8, fin: bool, rsv: u8, payload: &[u8]) -> Vec<u8> {
    wshub::frame::encode_masked(opcode, fin, rsv, payload, KEY)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[tokio::test]
async fn unmasked_client_frame_is_1002() {
    let mut wire = vec![0x81, 15];
    wire.extend_from_slice(br#"{"type":"ping"}"#);
    expect_violation(&wire, 1002).await;
}

#[tokio::test]
async fn reserved_bits_are_1002() {
    for rsv in [0b100, 0b010, 0b001] {
        expect_violation(&masked(OP_TEXT, true, rsv, b"{}"), 1002).await;
    }
}

#[tokio::test]
async fn reserved_opcodes_are_1002() {
    for opcode in [3, 7, 11, 15] {
        expect_violation(&masked(opcode, true, 0, b"x"), 1002).await;
    }
}

#[tokio::test]
async fn fragmented_ping_is_1002() {
    expect_violation(&masked(OP_PING, false, 0, b"x"), 1002).await;
}

#[tokio::test]
async fn control_payload_over_125_bytes_is_1002() {
    expect_violation(&masked(OP_PING, true, 0, &[b'p'; 126]), 1002).await;
    expect_violation(&masked(OP_PONG, true, 0, &[b'p'; 126]), 1002).await;
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'r'; 124]);
    expect_violation(&masked(OP_CLOSE, true, 0, &close), 1002).await;
}

#[tokio::test]
async fn continuation_without_a_start_is_1002() {
    expect_violation(&masked(OP_CONT, true, 0, b"orphan"), 1002).await;
}

#[tokio::test]
async fn new_message_inside_a_fragmented_one_is_1002() {
    let wire = concat(&[
        masked(OP_TEXT, false, 0, b"{\"type\":"),
        masked(OP_TEXT, true, 0, b"\"ping\"}"),
    ]);
    expect_violation(&wire, 1002).await;
}

#[tokio::test]
async fn invalid_utf8_text_is_1007() {
    expect_violation(&masked(OP_TEXT, true, 0, b"{\"type\":\"\xff\"}"), 1007).await;
    // Detected in the first fragment already, before the message completes.
    expect_violation(&masked(OP_TEXT, false, 0, b"ok \xc3\x28"), 1007).await;
    // A message that ends inside a code point.
    let wire = concat(&[
        masked(OP_TEXT, false, 0, b"abc"),
        masked(OP_CONT, true, 0, b"\xe2\x82"),
    ]);
    expect_violation(&wire, 1007).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_close_reason_is_1007() {
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"\xff");
    expect_violation(&masked(OP_CLOSE, true, 0, &close), 1007).await;
}

#[tokio::test]
async fn utf8_split_across_fragments_is_accepted() {
    let (server, _log) = server().await;
    let mut raw = server.raw().await;
    // "é" is C3 A9; the fragments split it (and the ping request in it) in the middle.
    raw.write(&concat(&[
        masked(OP_TEXT, false, 0, b"{\"type\":\"ping\",\"x\":\"\xc3"),
        masked(OP_CONT, false, 0, b"\xa9"),
        masked(OP_CONT, true, 0, b"\"}"),
    ]))
    .await;
    let pong = raw.read_text().await;
    assert_eq!(mask_timestamp(&pong), r#"{"type":"pong","timestamp":"TS"}"#);
    // Binary messages are not UTF-8 checked.
    raw.write(&masked(OP_BINARY, true, 0, b"\xff\xfe")).await;
    let err = raw.read_json().await;
    assert_eq!(err["type"], "error");
    assert!(raw.sync().await.is_empty());
    assert_eq!(server.hub.counters().protocol_errors, 0);
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn message_over_the_limit_is_1009() {
    // One frame over the limit.
    expect_violation(&masked(OP_TEXT, true, 0, &[b' '; 1001]), 1009).await;
    expect_violation(&masked(OP_BINARY, true, 0, &[0; 1001]), 1009).await;
    // Fragments that are each small but sum to more than the limit.
    let wire = concat(&[
        masked(OP_BINARY, false, 0, &[0; 600]),
        masked(OP_CONT, false, 0, &[0; 300]),
        masked(OP_CONT, true, 0, &[0; 101]),
    ]);
    expect_violation(&wire, 1009).await;
}

#[tokio::test]
async fn message_at_the_limit_is_accepted() {
    let (server, _log) = server().await;
    let mut raw = server.raw().await;
    let mut request = br#"{"type":"ping","pad":""#.to_vec();
    request.resize(1000 - 2, b'x');
    request.extend_from_slice(b"\"}");
    assert_eq!(request.len(), 1000);
    raw.write(&concat(&[
        masked(OP_TEXT, false, 0, &request[..500]),
        masked(OP_CONT, true, 0, &request[500..]),
    ]))
    .await;
    let pong = raw.read_text().await;
    assert!(pong.starts_with(r#"{"type":"pong""#), "{pong}");
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn close_with_an_invalid_code_is_1002() {
    for code in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let wire = masked(OP_CLOSE, true, 0, &code.to_be_bytes());
        expect_violation(&wire, 1002).await;
    }
    // A close payload of a single byte cannot hold a code.
    expect_violation(&masked(OP_CLOSE, true, 0, &[3]), 1002).await;
}

#[tokio::test]
async fn close_1000_is_echoed_then_the_server_closes_tcp() {
    let (server, log) = server().await;
    let (mut raw, id) = server.raw_client().await;
    raw.send_close(1000, "done").await;
    assert_eq!(raw.read_close_frame().await, (Some(1000), String::new()));
    raw.expect_eof().await;
    assert_eq!(
        log.wait_for(id).await,
        DisconnectReason::ClientClosed {
            code: Some(1000),
            reason: "done".to_owned()
        }
    );
    assert_eq!(server.hub.counters().protocol_errors, 0);
    server.stop().await;
}

#[tokio::test]
async fn valid_application_close_codes_are_echoed() {
    let (server, log) = server().await;
    for code in [1001u16, 1003, 1011, 3000, 4999] {
        let (mut raw, id) = server.raw_client().await;
        raw.send_close(code, "").await;
        assert_eq!(raw.read_close().await, Some(code));
        raw.expect_eof().await;
        assert_eq!(
            log.wait_for(id).await,
            DisconnectReason::ClientClosed {
                code: Some(code),
                reason: String::new()
            }
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn empty_close_gets_an_empty_close() {
    let (server, log) = server().await;
    let (mut raw, id) = server.raw_client().await;
    raw.frame(OP_CLOSE, true, 0, &[]).await;
    assert_eq!(raw.read_close().await, None);
    raw.expect_eof().await;
    assert_eq!(
        log.wait_for(id).await,
        DisconnectReason::ClientClosed {
            code: None,
            reason: String::new()
        }
    );
    server.stop().await;
}

#[tokio::test]
async fn ping_between_fragments_is_answered_first() {
    let (server, _log) = server().await;
    let mut raw = server.raw().await;
    raw.write(&concat(&[
        masked(OP_TEXT, false, 0, b"{\"type\":"),
        masked(OP_PING, true, 0, b"are you there"),
        masked(OP_CONT, true, 0, b"\"ping\"}"),
    ]))
    .await;
    // The pong control frame, echoing the payload, then the reply to the reassembled request.
    assert_eq!(
        raw.read_frame().await,
        Some((OP_PONG, b"are you there".to_vec()))
    );
    let pong = raw.read_text().await;
    assert!(pong.starts_with(r#"{"type":"pong""#), "{pong}");
    // Unsolicited pongs are ignored.
    raw.frame(OP_PONG, true, 0, b"unsolicited").await;
    assert!(raw.sync().await.is_empty());
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn frames_split_byte_by_byte_are_reassembled() {
    let (server, _log) = server().await;
    let mut raw = server.raw().await;
    let wire = masked(OP_TEXT, true, 0, br#"{"type":"ping"}"#);
    for b in &wire {
        raw.write(std::slice::from_ref(b)).await;
    }
    let pong = raw.read_text().await;
    assert!(pong.starts_with(r#"{"type":"pong""#), "{pong}");
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn data_after_a_violation_is_not_processed() {
    let (server, _log) = server().await;
    let mut raw = server.raw().await;
    // The violation and a valid subscribe arrive in the same write.
    raw.write(&concat(&[
        masked(3, true, 0, b""),
        masked(OP_TEXT, true, 0, br#"{"type":"subscribe","channel":"x"}"#),
    ]))
    .await;
    assert_eq!(raw.read_close().await, Some(1002));
    raw.expect_eof().await;
    assert_eq!(server.hub.channel_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_125_byte_ping_is_answered_with_the_same_payload() {
    let (server, _log) = server().await;
    let mut raw = server.raw().await;
    let payload: Vec<u8> = (0..125).collect();
    raw.frame(OP_PING, true, 0, &payload).await;
    assert_eq!(raw.read_frame().await, Some((OP_PONG, payload)));
    // Binary ping payloads are not UTF-8 checked, and an empty ping is fine too.
    raw.frame(OP_PING, true, 0, &[]).await;
    assert_eq!(raw.read_frame().await, Some((OP_PONG, Vec::new())));
    drop(raw);
    server.stop().await;
}

#[tokio::test]
async fn frames_sent_right_behind_the_handshake_are_not_lost() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _log) = server().await;
    let addr = server.addr;
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The upgrade request and the first frames in a single write: the server must hand the
    // bytes it read past the request to the WebSocket session.
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend_from_slice(&masked(
        OP_TEXT,
        true,
        0,
        br#"{"type":"subscribe","channel":"early"}"#,
    ));
    bytes.extend_from_slice(&masked(OP_TEXT, true, 0, br#"{"type":"ping"}"#));
    tcp.write_all(&bytes).await.unwrap();
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "EOF");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    let mut raw = Raw {
        tcp,
        buf: buf[head_end..].to_vec(),
    };
    let pong = raw.read_text().await;
    assert!(pong.starts_with(r#"{"type":"pong""#), "{pong}");
    assert_eq!(server.hub.channel_subscriber_count("early"), 1);
    drop(raw);
    server.stop().await;
}
