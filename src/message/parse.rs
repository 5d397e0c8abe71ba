//! Inbound (client → server) request parsing.
//!
//! One JSON object per text or binary message:
//! `{"type":"subscribe"|"unsubscribe","channel":C}` (or go-ws style with the channel name as a
//! JSON string in `data`), `{"type":"ping"}`, `{"type":"publish","channel":C,"data":D}`; any other
//! `type` is an application message.
//!
//! Parsed with serde_json into a borrowed envelope: for the small messages this protocol carries
//! it is faster than simd-json (see `benches/message.rs`), and `data` stays a borrowed
//! [`RawValue`] so its exact text (numbers included) can be re-encoded without loss.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed inbound request, borrowing from the message payload.
#[derive(Debug)]
pub enum Request<'a> {
    /// Subscribe the sender to a channel (the name is not validated yet).
    Subscribe(Cow<'a, str>),
    /// Subscribe with recovery: `{"type":"subscribe","channel":C,"offset":N,"epoch":E}`,
    /// where N is the offset of the last publication the client received on C.
    Resume {
        /// The channel (not validated yet).
        channel: Cow<'a, str>,
        /// Offset of the last publication received.
        offset: u64,
        /// Epoch that offset belongs to (empty when the client sent none).
        epoch: Cow<'a, str>,
    },
    /// Unsubscribe the sender from a channel (the name is not validated yet).
    Unsubscribe(Cow<'a, str>),
    /// Reply `{"type":"pong","timestamp":T}`.
    Ping,
    /// Client publish: deliver `data` to every subscriber of `channel` as an `event`.
    Publish {
        /// Target channel (not validated yet).
        channel: Cow<'a, str>,
        /// The raw `data` value, absent when missing or `null`.
        data: Option<&'a RawValue>,
    },
    /// Any other `type`: handed to the application's message hook.
    Other(Cow<'a, str>),
}

/// Why an inbound message was refused. Its `Display` text is sent back to the client in an
/// `error` message.
#[derive(Debug)]
pub enum ParseError {
    /// Not JSON, not an object, or a field of the wrong type.
    Json(serde_json::Error),
    /// `subscribe`, `unsubscribe` or `publish` without a channel name.
    MissingChannel(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Json(e) => write!(f, "invalid message: {e}"),
            ParseError::MissingChannel(kind) => write!(
                f,
                "invalid message: {kind} needs a channel name in \"channel\" or as a string in \"data\""
            ),
        }
    }
}

impl std::error::Error for ParseError {}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
}

/// Parses one inbound message.
///
/// # Errors
/// [`ParseError`] when the payload is not a JSON object with a string `type`, or when a
/// subscribe/unsubscribe/publish names no channel.
pub fn parse(payload: &[u8]) -> Result<Request<'_>, ParseError> {
    // serde's derive also reads a struct from an array (`["subscribe","news"]`); the protocol,
    // like go-ws, has objects only.
    if payload.trim_ascii_start().first() == Some(&b'[') {
        let unexpected = serde::de::Unexpected::Seq;
        let e = serde::de::Error::invalid_type(unexpected, &"a JSON object");
        return Err(ParseError::Json(e));
    }
    let env: Envelope<'_> = serde_json::from_slice(payload).map_err(ParseError::Json)?;
    let channel = |kind: &'static str, allow_data: bool| -> Result<Cow<'_, str>, ParseError> {
        // An empty `channel` gives way to a name in `data` (a client that always sends the
        // field).
        if let Some(c) = env.channel.as_ref().filter(|c| !c.is_empty()) {
            return Ok(c.clone());
        }
        // go-ws puts the channel name in `data` as a JSON string.
        if allow_data {
            if let Some(data) = env.data {
                if let Ok(name) = serde_json::from_str::<String>(data.get()) {
                    return Ok(Cow::Owned(name));
                }
            }
        }
        match &env.channel {
            // Refused later as an invalid (empty) name.
            Some(empty) => Ok(empty.clone()),
            None => Err(ParseError::MissingChannel(kind)),
        }
    };
    Ok(match &*env.kind {
        "subscribe" => match env.offset {
            Some(offset) => Request::Resume {
                channel: channel("subscribe", true)?,
                offset,
                epoch: env.epoch.clone().unwrap_or_default(),
            },
            None => Request::Subscribe(channel("subscribe", true)?),
        },
        "unsubscribe" => Request::Unsubscribe(channel("unsubscribe", true)?),
        "ping" => Request::Ping,
        "publish" => Request::Publish {
            channel: channel("publish", false)?,
            data: env.data,
        },
        _ => Request::Other(env.kind.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PartialEq for Request<'_> {
        fn eq(&self, other: &Self) -> bool {
            format!("{self:?}") == format!("{other:?}")
        }
    }

    #[test]
    fn go_ws_and_wshub_forms() {
        assert_eq!(
            parse(br#"{"type":"subscribe","data":"process:1"}"#).unwrap(),
            Request::Subscribe("process:1".into())
        );
        assert_eq!(
            parse(br#"{"type":"subscribe","channel":"news"}"#).unwrap(),
            Request::Subscribe("news".into())
        );
        assert_eq!(
            parse(br#"{"type":"unsubscribe","data":"a\u0041"}"#).unwrap(),
            Request::Unsubscribe("aA".into())
        );
        assert_eq!(
            parse(br#"{"type":"subscribe","channel":"","data":"news"}"#).unwrap(),
            Request::Subscribe("news".into())
        );
        assert_eq!(parse(br#" {"type":"ping"} "#).unwrap(), Request::Ping);
        assert_eq!(
            parse(br#"{"type":"subscribe","channel":"c","offset":41,"epoch":"e1"}"#).unwrap(),
            Request::Resume {
                channel: "c".into(),
                offset: 41,
                epoch: "e1".into()
            }
        );
        assert_eq!(
            parse(br#"{"type":"subscribe","channel":"c","offset":0}"#).unwrap(),
            Request::Resume {
                channel: "c".into(),
                offset: 0,
                epoch: "".into()
            }
        );
        assert!(parse(br#"{"type":"subscribe","channel":"c","offset":-1}"#).is_err());
        assert_eq!(
            parse(br#"{"type":"hello","data":[1]}"#).unwrap(),
            Request::Other("hello".into())
        );
        match parse(br#"{"type":"publish","channel":"c","data":{"n":1.10}}"#).unwrap() {
            Request::Publish { channel, data } => {
                assert_eq!(channel, "c");
                assert_eq!(data.unwrap().get(), r#"{"n":1.10}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_say_why() {
        for bad in [
            &b"not json"[..],
            b"[1]",
            br#"["subscribe","news"]"#,
            b" [\"\"] ",
            b"{}",
            br#"{"type":1}"#,
            br#"{"type":"ping""#,
        ] {
            assert!(matches!(parse(bad), Err(ParseError::Json(_))), "{bad:?}");
        }
        let e = parse(br#"{"type":"subscribe","data":42}"#).unwrap_err();
        assert!(
            e.to_string().contains("subscribe needs a channel name"),
            "{e}"
        );
        assert!(matches!(
            parse(br#"{"type":"publish","data":"x"}"#),
            Err(ParseError::MissingChannel("publish"))
        ));
    }
}
