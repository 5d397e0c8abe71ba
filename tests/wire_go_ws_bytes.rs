//! Byte-exact JSON on the wire, against go-ws literals. Only the timestamp value is masked (and
//! checked separately for Go's format).

mod support;

use support::*;
use wshub::{ChannelPattern, Hub, HubConfig, Json, Message};

const JSON: (&str, &str) = ("Content-Type", "application/json");

/// Checks Go's `time.Time` JSON format in UTC: RFC 3339, nanoseconds with trailing zeros
/// trimmed (no fraction when zero), `Z`.
fn assert_go_timestamp(ts: &str) {
    let b = ts.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    assert!(b.len() >= 20, "{ts}");
    assert!(digits(0..4) && digits(5..7) && digits(8..10), "{ts}");
    assert!(digits(11..13) && digits(14..16) && digits(17..19), "{ts}");
    assert_eq!(
        (b[4], b[7], b[10], b[13], b[16]),
        (b'-', b'-', b'T', b':', b':'),
        "{ts}"
    );
    assert_eq!(b[b.len() - 1], b'Z', "{ts}");
    let frac = &ts[19..ts.len() - 1];
    if !frac.is_empty() {
        let digits = frac.strip_prefix('.').expect("fraction starts with '.'");
        assert!(
            (1..=9).contains(&digits.len()) && digits.bytes().all(|c| c.is_ascii_digit()),
            "{ts}"
        );
        assert!(!digits.ends_with('0'), "trailing zeros are trimmed: {ts}");
    }
}

/// Receives one message, checks its timestamp and returns it with the timestamp masked.
async fn recv_masked(ws: &mut Ws) -> String {
    let text = recv(ws).await;
    assert_go_timestamp(&timestamp_of(&text));
    mask_timestamp(&text)
}

#[tokio::test]
async fn go_ws_helper_messages_match_the_literals() {
    let server = TestServer::start(Hub::new()).await;
    let hub = &server.hub;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "process:p1").await;

    hub.send_process_output("p1", "line").await.unwrap();
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"process_output","channel":"process:p1","processId":"p1","data":"line","timestamp":"TS"}"#
    );
    hub.send_process_status("p1", "exited", 0).await.unwrap();
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"process_status","channel":"process:p1","processId":"p1","data":{"exitCode":0,"status":"exited"},"timestamp":"TS"}"#
    );
    hub.send_event("user_joined", &Json::parse(r#"{"user":"alice"}"#).unwrap())
        .await
        .unwrap();
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"event","data":{"data":{"user":"alice"},"event":"user_joined"},"timestamp":"TS"}"#
    );
    hub.send_error("something <broke> & stopped").await.unwrap();
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"error","data":"something \u003cbroke\u003e \u0026 stopped","timestamp":"TS"}"#
    );
    send(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"pong","timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn caller_data_is_re_encoded_as_go_would() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "c").await;
    // (body's `data` as sent, expected `data` on the wire)
    let cases: &[(&str, &str)] = &[
        // Keys sorted (by their unescaped bytes), nested too; whitespace removed.
        (
            r#"{ "b": 1, "a": { "y": [3, 2, 1], "x": null } }"#,
            r#"{"a":{"x":null,"y":[3,2,1]},"b":1}"#,
        ),
        (r#"{"b":1,"<":2,"a":3}"#, r#"{"\u003c":2,"a":3,"b":1}"#),
        (r#"{"\u00e9":1,"z":2}"#, r#"{"z":2,"é":1}"#),
        (r#"{"\u0062":1,"a":2}"#, r#"{"a":2,"b":1}"#),
        // The last duplicate key wins.
        (r#"{"a":1,"b":0,"\u0061":2}"#, r#"{"a":2,"b":0}"#),
        // Go's HTML-safe escaping, and U+2028/U+2029 (raw or escaped in the input).
        (
            r#""<script>&amp;</script>""#,
            r#""\u003cscript\u003e\u0026amp;\u003c/script\u003e""#,
        ),
        ("\"a\u{2028}b\u{2029}c\"", r#""a\u2028b\u2029c""#),
        (r#""a\u2028b\u2029c""#, r#""a\u2028b\u2029c""#),
        // Escapes decoded, then re-escaped the Go way.
        (r#""\/\u0041\t\n\r\b\f\"\\""#, r#""/A\t\n\r\b\f\"\\""#),
        (r#""\u0001\u001f\u007f""#, "\"\\u0001\\u001f\u{7f}\""),
        (r#""\ud83d\ude00 \u00e9""#, "\"\u{1F600} \u{e9}\""),
        // Numbers keep their exact text.
        (
            "[12345678901234567890123, 1.10, -0, 1E+2, 0.000001, -12.5e-3]",
            "[12345678901234567890123,1.10,-0,1E+2,0.000001,-12.5e-3]",
        ),
        // Empty values are emitted, not omitted.
        (r#""""#, r#""""#),
        ("0", "0"),
        ("false", "false"),
        ("{}", "{}"),
        ("[]", "[]"),
    ];
    for (data, expected) in cases {
        let body = format!(r#"{{"channel":"c","data":{data}}}"#);
        let (status, resp) = http(
            server.addr,
            "POST",
            "/api/publish",
            &[JSON],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{data}: {resp}");
        assert_eq!(
            recv_masked(&mut ws).await,
            format!(r#"{{"type":"event","channel":"c","data":{expected},"timestamp":"TS"}}"#),
            "data {data}"
        );
    }
    // `null` data is absent data: the field is omitted, as go-ws omits a nil `data`.
    let (status, _) = http(
        server.addr,
        "POST",
        "/api/publish",
        &[JSON],
        br#"{"channel":"c","data":null}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"event","channel":"c","timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn strings_set_by_the_caller_are_escaped_in_every_field() {
    let server = TestServer::start(Hub::new()).await;
    let mut ws = server.connect().await;
    sync(&mut ws).await;
    let (status, _) = http(
        server.addr,
        "POST",
        "/api/broadcast",
        &[JSON],
        "{\"type\":\"a<b>&\u{2028}\",\"data\":\"\u{e9}\\u0000\"}".as_bytes(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        recv_masked(&mut ws).await,
        "{\"type\":\"a\\u003cb\\u003e\\u0026\\u2028\",\"data\":\"\u{e9}\\u0000\",\"timestamp\":\"TS\"}"
    );
    // And through the library.
    let msg = Message::new("x&y")
        .with_process_id("<p>")
        .with_data(Json::string("\u{2029}"));
    server.hub.broadcast(&msg).await.unwrap();
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"x\u0026y","processId":"\u003cp\u003e","data":"\u2029","timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn client_publish_data_is_canonical_too() {
    let config = HubConfig::default().client_publish(vec![ChannelPattern::new("room:*").unwrap()]);
    let server = TestServer::with_config(config).await;
    let mut ws = server.connect().await;
    subscribe(&mut ws, "room:1").await;
    send(
        &mut ws,
        r#"{"type":"publish","channel":"room:1","data":{"z":[1.10,12345678901234567890123],"a":"<&>"}}"#,
    )
    .await;
    assert_eq!(
        recv_masked(&mut ws).await,
        r#"{"type":"event","channel":"room:1","data":{"a":"\u003c\u0026\u003e","z":[1.10,12345678901234567890123]},"timestamp":"TS"}"#
    );
    drop(ws);
    server.stop().await;
}

#[tokio::test]
async fn invalid_data_is_refused_not_mangled() {
    let server = TestServer::start(Hub::new()).await;
    for data in ["1e400", r#""\ud800""#, "01", "[1,]"] {
        let body = format!(r#"{{"channel":"c","data":{data}}}"#);
        let (status, resp) = http(
            server.addr,
            "POST",
            "/api/publish",
            &[JSON],
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{data}: {resp}");
    }
    server.stop().await;
}

#[tokio::test]
async fn one_message_per_text_frame() {
    let server = TestServer::start(Hub::new()).await;
    let mut raw = server.raw().await;
    raw.send_text(r#"{"type":"subscribe","channel":"c"}"#).await;
    assert!(raw.sync().await.is_empty());
    // Queued back to back, so the writer sends them in one batch; each keeps its own frame.
    for i in 0..20 {
        let msg = Message::new("event").with_data(Json::parse(i.to_string()).unwrap());
        server.hub.publish_local("c", &msg).unwrap();
    }
    for i in 0..20 {
        let (op, payload) = raw.read_frame().await.expect("frame");
        assert_eq!(op, OP_TEXT);
        let text = String::from_utf8(payload).unwrap();
        assert!(!text.contains('\n'), "{text}");
        assert_eq!(
            mask_timestamp(&text),
            format!(r#"{{"type":"event","channel":"c","data":{i},"timestamp":"TS"}}"#)
        );
    }
    drop(raw);
    server.stop().await;
}
