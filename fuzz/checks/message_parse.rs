//! The `message_parse` check: the inbound request parser and the Go canonicalizer against
//! serde_json references.
//!
//! The input is one message payload. Two differential checks run on it:
//!
//! 1. **Requests** (`wshub::internals::parse_request`, then [`Json::parse`] of a publish's
//!    `data`, as the session does). The reference reads the top-level object with serde_json
//!    and decides from `serde_json::Value`s: `type` must be a string; `channel` a string, null
//!    or absent; `subscribe`/`unsubscribe` fall back to `data` when it is a JSON string (go-ws
//!    form) and `channel` is absent, null or empty; a `subscribe` with an `offset` (an unsigned integer; `epoch` a string) is a
//!    resume; `publish` needs `channel`; `data` that is `null` counts as absent. Accept/reject,
//!    the kind of error (not JSON vs missing channel), the request kind, the channel and the
//!    data must agree; a publish's canonical data must re-parse to the reference value.
//!
//!    Two properties of the envelope are deliberate and modelled explicitly: a repeated
//!    `type`, `channel`, `data`, `offset` or `epoch` key is refused (serde's derive does that; a first-wins or
//!    last-wins choice would let two parsers read different channels from one message), and
//!    members the hub does not interpret (unknown keys, `data` of a non-publish) are only
//!    checked for JSON syntax, as Go's `encoding/json` does, so out-of-range numbers, lone
//!    surrogates, invalid UTF-8 or deep nesting there do not make the message invalid.
//!
//! 2. **Canonical JSON** (`Json::parse` on the whole input) against
//!    `serde_json::from_slice::<Value>`: same accept/reject, except for the differences the
//!    json.rs module documents (nesting exactly 128 deep; numbers near `f64::MAX`, where
//!    serde_json's faster parser does not round correctly), which are checked explicitly:
//!    a number only one side accepts must be one that Rust's correctly rounded parser rounds
//!    to `f64::MAX` (we accept) or to infinity (we refuse); on accept, the output re-parses to the same
//!    `Value`, is a fixed point of `Json::parse`, has every object's keys in strictly
//!    increasing byte order, and contains no byte Go's encoder would have escaped.
//!
//! Every reference value is read with serde_json's tokenizer into [`PlainValue`], not with
//! `Value`'s own `Deserialize`, which gives the key `$serde_json::private::RawValue` a private
//! meaning (a fuzz find: `{"$serde_json::private::RawValue":[31348]}` is plain JSON).
//!
//! Shared by `fuzz_targets/message_parse.rs` and the main crate's `tests/fuzz_replay.rs`.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use wshub::internals::{parse_request, ParseError, Request};
use wshub::{Json, JsonErrorKind};

/// The deepest nesting `Json::parse` accepts (serde_json: one less).
const MAX_DEPTH: usize = 128;

/// Runs both checks on one fuzz input.
pub(crate) fn check(data: &[u8]) {
    check_request(data);
    check_canonical(data);
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// What the parser must make of a message.
#[derive(Debug, PartialEq)]
enum Expected {
    /// Not JSON, not an object, or `type`/`channel` of the wrong type, or a repeated key.
    NotJson,
    /// `subscribe`, `unsubscribe` or `publish` without a usable channel.
    MissingChannel(&'static str),
    Subscribe(String),
    /// Subscribe with recovery: channel, offset, epoch ("" when absent or null).
    Resume(String, u64, String),
    Unsubscribe(String),
    Ping,
    /// `data` as the reference sees it: absent/null, or its raw text.
    Publish {
        channel: String,
        data: Option<String>,
    },
    Other(String),
}

/// The top-level members the parser interprets, read with serde_json.
#[derive(Default)]
struct Envelope {
    /// Each value is `None` when its key is absent.
    kind: Option<Value>,
    channel: Option<Value>,
    /// The raw text of `data` (only checked for syntax, like an unknown member).
    data: Option<Box<RawValue>>,
    offset: Option<Value>,
    epoch: Option<Value>,
    /// A key among `type`, `channel`, `data`, `offset`, `epoch` appeared twice.
    repeated: bool,
}

impl<'de> de::Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope, A::Error> {
                let mut env = Envelope::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => {
                            env.repeated |= env.kind.is_some();
                            env.kind = Some(map.next_value::<PlainValue>()?.0);
                        }
                        "channel" => {
                            env.repeated |= env.channel.is_some();
                            env.channel = Some(map.next_value::<PlainValue>()?.0);
                        }
                        "data" => {
                            env.repeated |= env.data.is_some();
                            env.data = Some(map.next_value()?);
                        }
                        "offset" => {
                            env.repeated |= env.offset.is_some();
                            env.offset = Some(map.next_value::<PlainValue>()?.0);
                        }
                        "epoch" => {
                            env.repeated |= env.epoch.is_some();
                            env.epoch = Some(map.next_value::<PlainValue>()?.0);
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V)
    }
}

/// The reference decision for one message.
fn expected_request(payload: &[u8]) -> Expected {
    let Ok(env) = serde_json::from_slice::<Envelope>(payload) else {
        return Expected::NotJson;
    };
    if env.repeated {
        return Expected::NotJson;
    }
    let Some(Value::String(kind)) = env.kind else {
        return Expected::NotJson;
    };
    let channel = match env.channel {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => Some(c),
        Some(_) => return Expected::NotJson,
    };
    // `offset` (recovery) is an unsigned integer, `epoch` a string; either may be null. They
    // are read whatever the type.
    let offset = match env.offset {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_u64() => n.as_u64(),
        Some(_) => return Expected::NotJson,
    };
    let epoch = match env.epoch {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(e)) => e,
        Some(_) => return Expected::NotJson,
    };
    let data = env.data.filter(|d| d.get() != "null");
    // go-ws form: the channel name as a JSON string in `data`.
    let data_string = || match data
        .as_deref()
        .map(|d| serde_json::from_str::<PlainValue>(d.get()).map(|v| v.0))
    {
        Some(Ok(Value::String(s))) => Some(s),
        _ => None,
    };
    // A non-empty `channel` wins; an absent, null or empty one gives way to `data`.
    let subscribe_channel = || match &channel {
        Some(c) if !c.is_empty() => Some(c.clone()),
        other => data_string().or_else(|| other.clone()),
    };
    match kind.as_str() {
        "subscribe" => match (subscribe_channel(), offset) {
            (Some(c), Some(offset)) => Expected::Resume(c, offset, epoch),
            (Some(c), None) => Expected::Subscribe(c),
            (None, _) => Expected::MissingChannel("subscribe"),
        },
        "unsubscribe" => match subscribe_channel() {
            Some(c) => Expected::Unsubscribe(c),
            None => Expected::MissingChannel("unsubscribe"),
        },
        "ping" => Expected::Ping,
        "publish" => match channel {
            Some(channel) => Expected::Publish {
                channel,
                data: data.map(|d| d.get().to_owned()),
            },
            None => Expected::MissingChannel("publish"),
        },
        _ => Expected::Other(kind),
    }
}

/// Checks `parse_request` (and the canonical form of a publish's data) against the reference.
fn check_request(payload: &[u8]) {
    let expected = expected_request(payload);
    let got = match parse_request(payload) {
        Err(ParseError::Json(_)) => Expected::NotJson,
        Err(ParseError::MissingChannel(kind)) => Expected::MissingChannel(kind),
        Ok(Request::Subscribe(c)) => Expected::Subscribe(c.into_owned()),
        Ok(Request::Resume {
            channel,
            offset,
            epoch,
        }) => Expected::Resume(channel.into_owned(), offset, epoch.into_owned()),
        Ok(Request::Unsubscribe(c)) => Expected::Unsubscribe(c.into_owned()),
        Ok(Request::Ping) => Expected::Ping,
        Ok(Request::Publish { channel, data }) => Expected::Publish {
            channel: channel.into_owned(),
            data: data.map(|d| d.get().to_owned()),
        },
        Ok(Request::Other(kind)) => Expected::Other(kind.into_owned()),
        #[allow(
            unreachable_patterns,
            reason = "a request kind added later fails loudly"
        )]
        Ok(other) => panic!("request kind not modelled by this check: {other:?}"),
    };
    assert_eq!(got, expected, "parse_request disagrees with the reference");
    if let Expected::Publish {
        data: Some(data), ..
    } = &got
    {
        // The session publishes `Json::parse(data)`; that is where `data` gets its full check.
        check_canonical(data.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Canonical JSON
// ---------------------------------------------------------------------------------------------

/// Checks `Json::parse` on `text` against serde_json.
fn check_canonical(text: &[u8]) {
    let ours = Json::parse(text);
    let reference = serde_json::from_slice::<PlainValue>(text).map(|v| v.0);
    match (&ours, reference) {
        (Ok(json), Ok(value)) => check_output(json, &value),
        (Err(_), Err(_)) => {}
        (Ok(json), Err(e)) => {
            let message = e.to_string();
            if message.starts_with("recursion limit exceeded") {
                // Difference 1: serde_json stops at 127 levels, we accept 128.
                assert_eq!(
                    max_depth(text),
                    MAX_DEPTH,
                    "accepted nesting serde_json refused: {message}"
                );
                let value = parse_unlimited(text)
                    .expect("nested 128 deep and otherwise invalid, yet accepted");
                check_output(json, &value);
            } else if message.starts_with("number out of range") {
                // Difference 2: numbers that Rust's correctly rounded parser rounds down to
                // f64::MAX, which serde_json's faster parser overflows.
                let numbers = number_tokens(text);
                assert!(
                    numbers.iter().any(|n| n.abs() == f64::MAX),
                    "accepted a number serde_json refused that is not near f64::MAX: {message}"
                );
                assert!(numbers.iter().all(|n| n.is_finite()));
                assert_eq!(Json::parse(json.as_bytes()).as_ref(), Ok(json));
            } else {
                panic!("Json::parse accepted what serde_json refused: {message}");
            }
        }
        (Err(err), Ok(_)) if err.kind() == JsonErrorKind::NumberOutOfRange => {
            // serde_json's faster number parser also rounds a few numbers just above the
            // rounding boundary of f64::MAX down to it; they overflow (Rust's correctly rounded
            // parser and Go's both say so) and are rightly refused.
            let token = number_at(text, err.offset());
            let rust: f64 = token.parse().unwrap_or(0.0);
            let serde: f64 = serde_json::from_str(token).unwrap_or(0.0);
            assert!(
                rust.is_infinite() && serde.abs() == f64::MAX,
                "Json::parse refused {token:?}, which does not overflow: {err}"
            );
        }
        (Err(err), Ok(_)) => panic!("Json::parse refused what serde_json accepted: {err}"),
    }
}

/// Checks an accepted canonical form against the reference value.
fn check_output(json: &Json, value: &Value) {
    let bytes = json.as_bytes();
    // The output is nested as deep as the accepted input, so at most 128 levels.
    let reparsed = parse_unlimited(bytes).expect("canonical output is not valid JSON");
    assert_eq!(&reparsed, value, "canonical output changes the value");
    assert_eq!(
        Json::parse(bytes).as_ref(),
        Ok(json),
        "canonical output is not a fixed point"
    );
    // Go's encoder escapes `<`, `>`, `&`, U+2028, U+2029 and control characters; structural
    // whitespace is never written, so no byte below 0x20 or space outside strings may appear.
    for (i, &b) in bytes.iter().enumerate() {
        assert!(
            !matches!(b, b'<' | b'>' | b'&') && b >= 0x20,
            "unescaped byte {b:#04x} at {i}"
        );
    }
    let text = json.as_str();
    assert!(!text.contains(['\u{2028}', '\u{2029}']));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    SortedKeys.deserialize(&mut de).expect("keys out of order");
}

/// Verifies that every object's keys are in strictly increasing byte order.
#[derive(Clone, Copy)]
struct SortedKeys;

impl<'de> DeserializeSeed<'de> for SortedKeys {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for SortedKeys {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut previous: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            if let Some(p) = &previous {
                if p.as_bytes() >= key.as_bytes() {
                    return Err(de::Error::custom(format!("key {key:?} after {p:?}")));
                }
            }
            map.next_value_seed(self)?;
            previous = Some(key);
        }
        Ok(())
    }
}

/// Parses with serde_json without its recursion limit; only called on input known to be at
/// most [`MAX_DEPTH`] deep, so the recursion stays bounded.
fn parse_unlimited(text: &[u8]) -> serde_json::Result<Value> {
    let mut de = serde_json::Deserializer::from_slice(text);
    de.disable_recursion_limit();
    let value: PlainValue = de::Deserialize::deserialize(&mut de)?;
    de.end()?;
    Ok(value.0)
}

/// A `serde_json::Value` read the plain way. With serde_json's `raw_value` feature, `Value`
/// itself treats an object whose first key is `$serde_json::private::RawValue` as serde_json's
/// own raw-value token (its string value is parsed as JSON instead; anything else is refused).
/// That is a private convention of serde, not JSON, and neither Go nor wshub's parsers have
/// it, so the references use this type (serde_json's tokenizer, no token).
struct PlainValue(Value);

impl<'de> de::Deserialize<'de> for PlainValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PlainValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<PlainValue, E> {
                Ok(PlainValue(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<PlainValue, E> {
                Ok(PlainValue(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<PlainValue, E> {
                Ok(PlainValue(n.into()))
            }
            fn visit_f64<E>(self, n: f64) -> Result<PlainValue, E> {
                Ok(PlainValue(
                    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E>(self, s: &str) -> Result<PlainValue, E> {
                Ok(PlainValue(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<PlainValue, E> {
                Ok(PlainValue(Value::String(s)))
            }
            fn visit_unit<E>(self) -> Result<PlainValue, E> {
                Ok(PlainValue(Value::Null))
            }
            fn visit_none<E>(self) -> Result<PlainValue, E> {
                Ok(PlainValue(Value::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<PlainValue, D::Error> {
                de::Deserialize::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PlainValue, A::Error> {
                let mut items = Vec::new();
                while let Some(PlainValue(v)) = seq.next_element()? {
                    items.push(v);
                }
                Ok(PlainValue(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PlainValue, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some((k, PlainValue(v))) = map.next_entry::<String, PlainValue>()? {
                    object.insert(k, v);
                }
                Ok(PlainValue(Value::Object(object)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The deepest nesting of `[`/`{` outside strings (a plain scan; exact for valid JSON).
fn max_depth(text: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The number token starting at byte `at`.
fn number_at(text: &[u8], at: usize) -> &str {
    let rest = text.get(at..).unwrap_or_default();
    let len = rest
        .iter()
        .take_while(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        .count();
    std::str::from_utf8(&rest[..len]).unwrap_or_default()
}

/// Every number token outside strings, parsed with Rust's `f64` parser.
fn number_tokens(text: &[u8]) -> Vec<f64> {
    let mut numbers = Vec::new();
    let (mut i, mut in_string, mut escaped) = (0, false, false);
    while i < text.len() {
        let b = text[i];
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
        } else if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < text.len()
                && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            let token = std::str::from_utf8(&text[start..i]).unwrap_or("x");
            numbers.push(token.parse().unwrap_or(f64::NAN));
        } else {
            i += 1;
        }
    }
    numbers
}
