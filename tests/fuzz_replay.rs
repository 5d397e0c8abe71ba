//! Replays the fuzz corpora on stable: every committed seed (`fuzz/seeds/<target>/`) and every
//! past crash (`fuzz/regressions/<target>/`) goes through the same check as the fuzz target
//! (`fuzz/checks/<target>.rs`, included here). The `frame_decode` memory bound needs the fuzz
//! binary's counting allocator and is only checked there.
//!
//! The hand-made seeds are written by `cargo test --test fuzz_replay -- --ignored write_seeds`.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/frame_decode.rs"]
mod frame_decode;
#[path = "../fuzz/checks/hub_ops.rs"]
mod hub_ops;
#[path = "../fuzz/checks/message_parse.rs"]
mod message_parse;
#[path = "../fuzz/checks/upgrade_request.rs"]
mod upgrade_request;

/// Every file of `fuzz/seeds/<target>` and `fuzz/regressions/<target>`, sorted.
fn corpus(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("readable corpus directory").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every corpus file of `target`, naming the file that fails.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let files = corpus(target);
    assert!(!files.is_empty(), "no seeds for {target}");
    for path in files {
        let data = fs::read(&path).expect("readable corpus file");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
        assert!(result.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn replay_frame_decode() {
    replay("frame_decode", |data| frame_decode::check(data, None));
}

#[test]
fn replay_message_parse() {
    replay("message_parse", message_parse::check);
}

#[test]
fn replay_hub_ops() {
    replay("hub_ops", hub_ops::check);
}

#[test]
fn replay_upgrade_request() {
    replay("upgrade_request", upgrade_request::check);
}

// ---------------------------------------------------------------------------------------------
// Hand-made seeds
// ---------------------------------------------------------------------------------------------

/// Writes the hand-made seeds into `fuzz/seeds/`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand after changing a seed"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let sets = [
        ("frame_decode", frame_seeds()),
        ("message_parse", message_seeds()),
        ("hub_ops", hub_seeds()),
        ("upgrade_request", upgrade_seeds()),
    ];
    for (target, seeds) in sets {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("seed directory");
        for (name, data) in seeds {
            fs::write(dir.join(name), data).expect("seed written");
        }
    }
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use wshub::frame::{encode, encode_masked, OpCode};

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const TEXT: u8 = OpCode::Text as u8;
    const BINARY: u8 = OpCode::Binary as u8;
    const CONT: u8 = OpCode::Continuation as u8;
    const CLOSE: u8 = OpCode::Close as u8;
    const PING: u8 = OpCode::Ping as u8;

    let m = |opcode: u8, fin: bool, payload: &[u8]| encode_masked(opcode, fin, 0, payload, KEY);
    let cat = |frames: &[Vec<u8>]| frames.concat();
    // `[config, seed, wire..]`: config bit 0 = client role, bits 1-3 = limit index
    // (2: 125 bytes, 5: 64 KiB, 6: 16 MiB), bits 4-7 = chunking.
    let server = |limit: u8, chunking: u8, wire: Vec<u8>| {
        let mut data = vec![(chunking << 4) | (limit << 1), 0x5a];
        data.extend(wire);
        data
    };
    let client = |limit: u8, chunking: u8, wire: Vec<u8>| {
        let mut data = vec![(chunking << 4) | (limit << 1) | 1, 0xa5];
        data.extend(wire);
        data
    };
    let mut close_1000 = 1000u16.to_be_bytes().to_vec();
    close_1000.extend_from_slice(b"bye");
    // A 64-bit length for a 3-byte binary frame (legal, if not minimal).
    let mut non_minimal_64bit_length = vec![0x82, 127];
    non_minimal_64bit_length.extend_from_slice(&3u64.to_be_bytes());
    non_minimal_64bit_length.extend_from_slice(b"abc");
    let mut top_bit_length = vec![0x82, 0xff];
    top_bit_length.extend_from_slice(&(1u64 << 63).to_be_bytes());
    top_bit_length.extend_from_slice(&KEY);
    vec![
        ("text", server(5, 0, m(TEXT, true, b"hello"))),
        (
            "fragmented-with-ping",
            server(
                5,
                1,
                cat(&[
                    m(TEXT, false, b"hel"),
                    m(PING, true, b"?"),
                    m(CONT, true, b"lo"),
                ]),
            ),
        ),
        (
            "utf8-split-across-fragments",
            server(
                5,
                2,
                cat(&[
                    m(TEXT, false, b"caf\xc3"),
                    m(CONT, true, b"\xa9 \xe2\x82\xac"),
                ]),
            ),
        ),
        (
            "binary-16bit-length",
            server(5, 3, m(BINARY, true, &[7; 300])),
        ),
        (
            "close-1000",
            server(
                5,
                4,
                cat(&[m(CLOSE, true, &close_1000), m(TEXT, true, b"x")]),
            ),
        ),
        ("close-empty", server(5, 5, m(CLOSE, true, b""))),
        (
            "client-role",
            client(
                6,
                6,
                cat(&[
                    encode(OpCode::Text, b"hi").to_vec(),
                    encode(OpCode::Binary, &[0; 1000]).to_vec(),
                    non_minimal_64bit_length,
                    encode(OpCode::Pong, b"p").to_vec(),
                ]),
            ),
        ),
        (
            "bad-unmasked-to-server",
            server(5, 0, encode(OpCode::Text, b"hi").to_vec()),
        ),
        ("bad-masked-to-client", client(5, 0, m(TEXT, true, b"hi"))),
        (
            "bad-reserved-bits",
            server(5, 0, encode_masked(TEXT, true, 0b100, b"x", KEY)),
        ),
        ("bad-reserved-opcode", server(5, 0, m(3, true, b"x"))),
        ("bad-utf8", server(5, 1, m(TEXT, true, b"ab\xc0\xafcd"))),
        (
            "bad-utf8-fails-fast",
            server(5, 1, m(TEXT, false, b"ab\xff")),
        ),
        (
            "bad-close-code",
            server(5, 0, m(CLOSE, true, &1005u16.to_be_bytes())),
        ),
        ("bad-close-length", server(5, 0, m(CLOSE, true, b"\x03"))),
        ("bad-too-big", server(2, 2, m(BINARY, true, &[1; 200]))),
        (
            "bad-too-big-fragments",
            server(
                2,
                2,
                cat(&[m(BINARY, false, &[1; 100]), m(CONT, true, &[2; 100])]),
            ),
        ),
        ("bad-length-top-bit", server(7, 0, top_bit_length)),
        ("bad-fragmented-ping", server(5, 0, m(PING, false, b""))),
        (
            "bad-control-too-big",
            server(5, 0, m(PING, true, &[0; 126])),
        ),
        ("bad-lone-continuation", server(5, 0, m(CONT, true, b"x"))),
        (
            "bad-new-message-inside-fragmented",
            server(5, 0, cat(&[m(TEXT, false, b"a"), m(BINARY, true, b"b")])),
        ),
        (
            "truncated",
            server(5, 7, m(BINARY, true, &[3; 40])[..20].to_vec()),
        ),
    ]
}

fn message_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let seeds: Vec<(&'static str, String)> = vec![
        ("subscribe", r#"{"type":"subscribe","channel":"news"}"#.into()),
        ("subscribe-go-ws", r#"{"type":"subscribe","data":"process:1"}"#.into()),
        (
            "resume",
            r#"{"type":"subscribe","channel":"news","offset":41,"epoch":"e1"}"#.into(),
        ),
        (
            "resume-bad-offset",
            r#"{"type":"ping","offset":-1,"epoch":null}"#.into(),
        ),
        ("unsubscribe", r#"{"type":"unsubscribe","channel":"news"}"#.into()),
        (
            "unsubscribe-escaped",
            r#"{"type":"unsubscribe","data":"a\u0041"}"#.into(),
        ),
        ("ping", r#" {"type":"ping"} "#.into()),
        (
            "publish",
            r#"{"type":"publish","channel":"c","data":{"b":[1.10,-0,1E+2,"<&>\u2028"],"a":null,"a":true}}"#.into(),
        ),
        ("publish-null", r#"{"type":"publish","channel":"c","data":null}"#.into()),
        (
            "publish-near-max",
            r#"{"type":"publish","channel":"c","data":[1.7976931348623158e308]}"#.into(),
        ),
        (
            "publish-deep-128",
            format!(r#"{{"type":"publish","channel":"c","data":{}}}"#, deep(128)),
        ),
        ("depth-128", deep(128)),
        ("depth-129", deep(129)),
        ("other", r#"{"type":"hello","data":[1,2],"extra":{"k":"v"}}"#.into()),
        ("other-lax-member", r#"{"type":"hello","junk":1e400}"#.into()),
        ("missing-channel", r#"{"type":"subscribe","data":42}"#.into()),
        (
            "empty-channel-gives-way",
            r#"{"type":"subscribe","channel":"","data":"news"}"#.into(),
        ),
        (
            "empty-channel-alone",
            r#"{"type":"unsubscribe","channel":"","data":7}"#.into(),
        ),
        ("repeated-type", r#"{"type":"ping","type":"ping"}"#.into()),
        ("array", r#"["subscribe","news"]"#.into()),
        ("not-json", "not json".into()),
        ("surrogates", r#"["\ud83d\ude00","\ud800"]"#.into()),
        ("strings", r#"{"z":"\"\\\/\b\f\n\r\t\u0000é😀","a":[]}"#.into()),
    ];
    seeds
        .into_iter()
        .map(|(n, s)| (n, s.into_bytes()))
        .collect()
}

/// Lines: query string, name, then `c` cookie / `a` authorization / `o` origin / `p` pattern.
fn upgrade_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let seeds: [(&'static str, &str); 8] = [
        ("query-token", "a=1&token=q%20t+u&x\ntoken"),
        (
            "query-malformed",
            "token=%zz&token=%4&access_token=ok\ntoken",
        ),
        (
            "cookies",
            "\nwshub_token\nca=b; wshub_token=\"c\"\ncwshub_token=second",
        ),
        ("bearer", "token=q\ntoken\naBearer  h \ncwshub_token=c"),
        ("basic", "\nx\naBasic dXNlcg=="),
        (
            "origin-exact",
            "\n\nohttps://App.Example.com\nphttps://app.example.com\nphttp://localhost:8080",
        ),
        (
            "origin-wildcard",
            "\n\nohttps://a.b.example.com\nphttps://*.example.com",
        ),
        (
            "origin-foreign",
            "\n\nohttps://evil.example.org\nphttps://*.example.com\nphttps://example.org",
        ),
    ];
    seeds
        .into_iter()
        .map(|(name, text)| (name, text.as_bytes().to_vec()))
        .collect()
}

fn hub_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use hub_ops::{Op, Setup};

    let setup = |drop_policy, queued_bytes, queued_frames| Setup {
        drop_policy,
        queued_bytes,
        queued_frames,
        max_subscriptions: 3,
    };
    let basic = vec![
        Op::Connect,
        Op::Connect,
        Op::Subscribe {
            client: 0,
            channel: 0,
        },
        Op::Subscribe {
            client: 1,
            channel: 0,
        },
        Op::Subscribe {
            client: 1,
            channel: 2,
        },
        Op::Publish { channel: 0, pad: 5 },
        Op::Broadcast { pad: 1 },
        Op::DrainAll,
        Op::Unsubscribe {
            client: 0,
            channel: 0,
        },
        Op::Publish { channel: 0, pad: 0 },
        Op::Drain { client: 1 },
        Op::Disconnect { client: 1 },
        Op::Publish { channel: 2, pad: 0 },
    ];
    let slow_reader = |policy_ops: &[Op]| {
        let mut ops = vec![
            Op::Connect,
            Op::Connect,
            Op::Subscribe {
                client: 0,
                channel: 3,
            },
            Op::Subscribe {
                client: 1,
                channel: 3,
            },
            Op::SlowReader {
                client: 1,
                slow: true,
            },
        ];
        for pad in 0..6 {
            ops.push(Op::Publish {
                channel: 3,
                pad: 60 - pad,
            });
            ops.push(Op::DrainAll);
        }
        ops.extend_from_slice(policy_ops);
        ops
    };
    let reader_recovers = [
        Op::SlowReader {
            client: 1,
            slow: false,
        },
        Op::Publish { channel: 3, pad: 0 },
        Op::DrainAll,
        Op::Publish { channel: 3, pad: 0 },
        Op::DrainAll,
    ];
    let batch = |count, pad| Op::PublishBatch {
        channel: 3,
        count,
        pad,
    };
    let mut batches = slow_reader(&[]);
    batches.truncate(5);
    batches.extend([
        batch(3, 10),
        Op::DrainAll,
        batch(7, 40),
        batch(7, 47),
        Op::Drain { client: 1 },
        batch(0, 0),
        Op::PublishBatch {
            channel: 6,
            count: 2,
            pad: 0,
        },
        Op::DrainAll,
    ]);
    let errors = vec![
        Op::Connect,
        Op::Subscribe {
            client: 0,
            channel: 5,
        },
        Op::Subscribe {
            client: 0,
            channel: 6,
        },
        Op::Subscribe {
            client: 0,
            channel: 7,
        },
        Op::Subscribe {
            client: 0,
            channel: 8,
        },
        Op::Publish { channel: 6, pad: 0 },
        Op::Subscribe {
            client: 0,
            channel: 0,
        },
        Op::Subscribe {
            client: 0,
            channel: 1,
        },
        Op::Subscribe {
            client: 0,
            channel: 2,
        },
        Op::Subscribe {
            client: 0,
            channel: 3,
        },
        Op::SendText {
            client: 0,
            len: 255,
        },
        Op::Close { client: 0, code: 4 },
        Op::Close { client: 0, code: 0 },
        Op::Publish { channel: 0, pad: 0 },
        Op::Close { client: 0, code: 1 },
        Op::Drain { client: 0 },
        Op::Drain { client: 0 },
        Op::Disconnect { client: 0 },
        Op::Subscribe {
            client: 0,
            channel: 0,
        },
        Op::Unsubscribe {
            client: 0,
            channel: 0,
        },
    ];
    vec![
        ("basic", encode_ops(setup(false, 200, 255), &basic)),
        (
            "slow-reader-disconnect",
            encode_ops(
                setup(false, 40, 255),
                &slow_reader(&[Op::Drain { client: 1 }]),
            ),
        ),
        (
            "slow-reader-drop",
            encode_ops(setup(true, 40, 255), &slow_reader(&reader_recovers)),
        ),
        (
            "frame-bound-drop",
            encode_ops(setup(true, 255, 2), &slow_reader(&reader_recovers)),
        ),
        ("errors-and-close", encode_ops(setup(false, 0, 3), &errors)),
        (
            // Batches that fit whole, and one that overflows a slow reader's queue part way.
            "publish-batch",
            encode_ops(setup(false, 100, 255), &batches),
        ),
        (
            // Frames over the 256-byte queue bound are refused whole (`TooLarge`).
            "publish-too-large",
            encode_ops(
                setup(false, 0, 255),
                &[
                    Op::Connect,
                    Op::Subscribe {
                        client: 0,
                        channel: 0,
                    },
                    Op::Publish {
                        channel: 0,
                        pad: 240,
                    },
                    Op::Broadcast { pad: 230 },
                    Op::Publish {
                        channel: 0,
                        pad: 227,
                    },
                    Op::Publish {
                        channel: 0,
                        pad: 225,
                    },
                    Op::DrainAll,
                ],
            ),
        ),
    ]
}

/// Encodes a setup and operations the way `arbitrary` decodes them (integers little-endian,
/// `bool` from the low bit of a byte, an enum variant from a `u32` scaled to the variant
/// count), and checks the round trip.
fn encode_ops(setup: hub_ops::Setup, ops: &[hub_ops::Op]) -> Vec<u8> {
    use hub_ops::Op;

    const VARIANTS: u64 = 12;
    let mut out = vec![
        u8::from(setup.drop_policy),
        setup.queued_bytes,
        setup.queued_frames,
        setup.max_subscriptions,
    ];
    for op in ops {
        let (index, fields): (u64, Vec<u8>) = match *op {
            Op::Connect => (0, vec![]),
            Op::Subscribe { client, channel } => (1, vec![client, channel]),
            Op::Unsubscribe { client, channel } => (2, vec![client, channel]),
            Op::Publish { channel, pad } => (3, vec![channel, pad]),
            Op::Broadcast { pad } => (4, vec![pad]),
            Op::SendText { client, len } => (5, vec![client, len]),
            Op::SlowReader { client, slow } => (6, vec![client, u8::from(slow)]),
            Op::Drain { client } => (7, vec![client]),
            Op::DrainAll => (8, vec![]),
            Op::Close { client, code } => (9, vec![client, code]),
            Op::Disconnect { client } => (10, vec![client]),
            Op::PublishBatch {
                channel,
                count,
                pad,
            } => (11, vec![channel, count, pad]),
        };
        // The smallest u32 that `(x * VARIANTS) >> 32` maps to `index`.
        let x = (index << 32).div_ceil(VARIANTS);
        out.extend_from_slice(&(x as u32).to_le_bytes());
        out.extend_from_slice(&fields);
    }
    assert_eq!(hub_ops::decode(&out), (setup, ops.to_vec()), "round trip");
    out
}
