//! The go-ws wire format: outbound [`Message`]s (encoded once, byte-compatible with go-ws),
//! caller-supplied JSON ([`Json`]) and the inbound request parser.

pub(crate) mod channel;
pub(crate) mod json;
pub(crate) mod parse;

use std::fmt;
use std::io::Write as _;
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{self, OpCode};
use json::JsonError;

/// A JSON value in Go-canonical form: compact, object keys sorted, strings escaped as Go's
/// `encoding/json` does (`<`, `>`, `&`, U+2028, U+2029), numbers kept as their exact text.
///
/// Cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Json(Bytes);

impl Json {
    /// Parses JSON text and re-encodes it the way go-ws would send it, except that numbers
    /// keep their exact text (Go would round them through `float64`).
    ///
    /// # Errors
    /// [`JsonError`] with the byte offset when `text` is not valid JSON (RFC 8259).
    ///
    /// # Examples
    /// ```
    /// use wshub::Json;
    /// let data = Json::parse(r#"{ "b": "<x>", "a": 12345678901234567890123 }"#).unwrap();
    /// assert_eq!(data.as_str(), r#"{"a":12345678901234567890123,"b":"\u003cx\u003e"}"#);
    /// ```
    pub fn parse(text: impl AsRef<[u8]>) -> Result<Json, JsonError> {
        let text = text.as_ref();
        let mut out = Vec::with_capacity(text.len());
        json::canonicalize(text, &mut out)?;
        Ok(Json(out.into()))
    }

    /// A JSON string holding `s`.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(wshub::Json::string("a&b").as_str(), r#""a\u0026b""#);
    /// ```
    pub fn string(s: &str) -> Json {
        let mut out = Vec::with_capacity(s.len() + 2);
        json::write_string(&mut out, s);
        Json(out.into())
    }

    /// JSON `null`.
    pub fn null() -> Json {
        Json(Bytes::from_static(b"null"))
    }

    /// Serialises `value` with serde and brings it into canonical form (object keys sorted,
    /// as Go sorts map keys).
    ///
    /// # Errors
    /// [`JsonError`] (kind `Serialize`) when serde cannot represent the value as JSON, for
    /// example a map with non-string keys.
    ///
    /// # Examples
    /// ```
    /// use std::collections::HashMap;
    /// let data = wshub::Json::from_serialize(&HashMap::from([("user", "alice")])).unwrap();
    /// assert_eq!(data.as_str(), r#"{"user":"alice"}"#);
    /// ```
    pub fn from_serialize<T: serde::Serialize + ?Sized>(value: &T) -> Result<Json, JsonError> {
        let text = serde_json::to_vec(value).map_err(|e| JsonError::serialize(&e))?;
        Json::parse(text)
    }

    /// Wraps bytes already known to be canonical JSON.
    pub(crate) fn from_canonical(bytes: Vec<u8>) -> Json {
        Json(bytes.into())
    }

    /// The canonical JSON text.
    pub fn as_str(&self) -> &str {
        // Canonical output is built from `str`s and ASCII only, so this never fails.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The canonical JSON text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Json").field("len", &self.0.len()).finish()
    }
}

impl fmt::Display for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An outbound message in the go-ws format:
/// `{"type":T,"channel":C,"processId":P,"data":D,"timestamp":TS}`.
///
/// `channel` and `processId` are omitted when empty, `data` when absent; the timestamp is set
/// when the message is published. A message is encoded and framed once per publish, and every
/// recipient gets a reference to the same bytes.
///
/// # Examples
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use wshub::{Json, Message};
///
/// let msg = Message::new("event").with_data(Json::string("hi"));
/// let at = UNIX_EPOCH + Duration::new(1_795_000_000, 843_012_237);
/// assert_eq!(
///     msg.to_json(Some("news"), at),
///     r#"{"type":"event","channel":"news","data":"hi","timestamp":"2026-11-18T11:06:40.843012237Z"}"#
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    kind: Box<str>,
    channel: Box<str>,
    process_id: Box<str>,
    data: Option<Json>,
}

impl Message {
    /// A message of type `kind` with no channel, process id or data.
    pub fn new(kind: impl Into<String>) -> Message {
        Message {
            kind: kind.into().into_boxed_str(),
            channel: Box::default(),
            process_id: Box::default(),
            data: None,
        }
    }

    /// Sets the `channel` field (publishing to a channel overrides it with that channel).
    #[must_use]
    pub fn with_channel(mut self, channel: impl Into<String>) -> Message {
        self.channel = channel.into().into_boxed_str();
        self
    }

    /// Sets the `processId` field.
    #[must_use]
    pub fn with_process_id(mut self, id: impl Into<String>) -> Message {
        self.process_id = id.into().into_boxed_str();
        self
    }

    /// Sets the `data` field. JSON `null` leaves it unset, so that the field is omitted, as
    /// go-ws omits a nil `Data`.
    #[must_use]
    pub fn with_data(mut self, data: Json) -> Message {
        self.data = (data.as_bytes() != b"null").then_some(data);
        self
    }

    /// go-ws `SendProcessOutput`: type `process_output` on channel `process:<id>` with
    /// `processId` and the line as `data`.
    pub fn process_output(id: &str, line: &str) -> Message {
        Message::new("process_output")
            .with_channel(format!("process:{id}"))
            .with_process_id(id)
            .with_data(Json::string(line))
    }

    /// go-ws `SendProcessStatus`: type `process_status` on channel `process:<id>` with
    /// `data: {"exitCode":N,"status":S}`.
    pub fn process_status(id: &str, status: &str, exit_code: i64) -> Message {
        let mut data = Vec::with_capacity(32 + status.len());
        let _ = write!(data, "{{\"exitCode\":{exit_code},\"status\":");
        json::write_string(&mut data, status);
        data.push(b'}');
        Message::new("process_status")
            .with_channel(format!("process:{id}"))
            .with_process_id(id)
            .with_data(Json::from_canonical(data))
    }

    /// go-ws `SendEvent`: type `event` with `data: {"data":D,"event":name}`.
    pub fn event(name: &str, data: &Json) -> Message {
        let mut out = Vec::with_capacity(24 + name.len() + data.as_bytes().len());
        out.extend_from_slice(b"{\"data\":");
        out.extend_from_slice(data.as_bytes());
        out.extend_from_slice(b",\"event\":");
        json::write_string(&mut out, name);
        out.push(b'}');
        Message::new("event").with_data(Json::from_canonical(out))
    }

    /// go-ws `SendError`: type `error` with the text as `data`.
    pub fn error(text: &str) -> Message {
        Message::new("error").with_data(Json::string(text))
    }

    /// The `type` field.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The `channel` field ("" when unset).
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The `processId` field ("" when unset).
    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// The `data` field.
    pub fn data(&self) -> Option<&Json> {
        self.data.as_ref()
    }

    /// The exact JSON text wshub sends for this message at time `timestamp`, with `channel`
    /// overriding the message's own channel field.
    pub fn to_json(&self, channel: Option<&str>, timestamp: SystemTime) -> String {
        let mut out = Vec::with_capacity(self.size_hint());
        self.write_json(&mut out, channel, timestamp);
        String::from_utf8(out).unwrap_or_default()
    }

    fn size_hint(&self) -> usize {
        64 + self.kind.len()
            + 2 * self.channel.len().max(16)
            + self.process_id.len()
            + self.data.as_ref().map_or(0, |d| d.0.len())
    }

    fn write_json<B: BufMut>(&self, out: &mut B, channel: Option<&str>, timestamp: SystemTime) {
        self.write_json_at(out, channel, timestamp, None);
    }

    /// The JSON, with `"offset":N,"epoch":"E"` after the timestamp when `position` is given
    /// (publications on channels with history).
    fn write_json_at<B: BufMut>(
        &self,
        out: &mut B,
        channel: Option<&str>,
        timestamp: SystemTime,
        position: Option<(u64, &str)>,
    ) {
        out.put_slice(b"{\"type\":");
        json::write_string(out, &self.kind);
        let channel = channel.unwrap_or(&self.channel);
        if !channel.is_empty() {
            out.put_slice(b",\"channel\":");
            json::write_string(out, channel);
        }
        if !self.process_id.is_empty() {
            out.put_slice(b",\"processId\":");
            json::write_string(out, &self.process_id);
        }
        if let Some(data) = &self.data {
            out.put_slice(b",\"data\":");
            out.put_slice(&data.0);
        }
        out.put_slice(b",\"timestamp\":");
        json::write_timestamp(out, timestamp);
        if let Some((offset, epoch)) = position {
            write_position(out, offset, epoch);
        }
        out.put_u8(b'}');
    }

    /// The JSON without its closing `}` (a broker appends the position on history channels).
    pub(crate) fn json_head(&self, channel: Option<&str>, timestamp: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size_hint());
        self.write_json(&mut out, channel, timestamp);
        out.pop();
        out
    }

    /// Encodes the message once into a complete, unmasked text frame.
    pub(crate) fn encode_frame(&self, channel: Option<&str>, timestamp: SystemTime) -> Bytes {
        self.encode_frame_at(channel, timestamp, None)
    }

    /// Like [`Message::encode_frame`], appending the frame to `buf` (see
    /// [`frame::append_with`]); returns the frame's length.
    pub(crate) fn append_frame(
        &self,
        buf: &mut BytesMut,
        channel: Option<&str>,
        timestamp: SystemTime,
    ) -> usize {
        frame::append_with(buf, OpCode::Text, self.size_hint() + 48, |b| {
            self.write_json_at(b, channel, timestamp, None);
        })
    }

    /// Like [`Message::encode_frame`], with the publication's position on a history channel.
    pub(crate) fn encode_frame_at(
        &self,
        channel: Option<&str>,
        timestamp: SystemTime,
        position: Option<(u64, &str)>,
    ) -> Bytes {
        frame::encode_with(OpCode::Text, self.size_hint() + 48, |buf| {
            self.write_json_at(buf, channel, timestamp, position);
        })
    }
}

/// Appends `,"offset":N,"epoch":"E"`.
pub(crate) fn write_position<B: BufMut>(out: &mut B, offset: u64, epoch: &str) {
    out.put_slice(b",\"offset\":");
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = offset;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[at..]);
    out.put_slice(b",\"epoch\":");
    json::write_string(out, epoch);
}

/// A publication of a broker-history channel as clients receive it: the JSON `head` the
/// publisher sent (without its closing `}`), then its position.
#[cfg(feature = "redis")]
pub(crate) fn history_frame(head: &[u8], offset: u64, epoch: &str) -> Bytes {
    frame::encode_with(OpCode::Text, head.len() + 48 + epoch.len(), |buf| {
        write_history_json(buf, head, offset, epoch);
    })
}

/// The JSON text of [`history_frame`].
#[cfg(feature = "redis")]
pub(crate) fn write_history_json<B: BufMut>(out: &mut B, head: &[u8], offset: u64, epoch: &str) {
    out.put_slice(head);
    write_position(out, offset, epoch);
    out.put_u8(b'}');
}

/// `{"type":"subscribed","channel":C[,"recovered":R],"epoch":E,"offset":N,"timestamp":T}`:
/// the answer to a subscribe on a channel with history whose current offset is `current`.
/// `resume` is the offset a resume asked for and whether it was recovered: a recovered resume
/// is answered with that offset (the next publication has the one after it), anything else
/// with `current`.
pub(crate) fn subscribed_frame(
    channel: &str,
    resume: Option<(u64, bool)>,
    epoch: &str,
    current: u64,
) -> Bytes {
    let recovered = resume.map(|(_, r)| r);
    let offset = match resume {
        Some((from, true)) => from,
        _ => current,
    };
    frame::encode_with(OpCode::Text, 128 + channel.len() + epoch.len(), |out| {
        out.put_slice(b"{\"type\":\"subscribed\",\"channel\":");
        json::write_string(out, channel);
        if let Some(r) = recovered {
            out.put_slice(if r {
                b",\"recovered\":true"
            } else {
                b",\"recovered\":false"
            });
        }
        out.put_slice(b",\"epoch\":");
        json::write_string(out, epoch);
        out.put_slice(b",\"offset\":");
        out.put_slice(offset.to_string().as_bytes());
        out.put_slice(b",\"timestamp\":");
        json::write_timestamp(out, SystemTime::now());
        out.put_u8(b'}');
    })
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.kind)
            .field("channel", &self.channel)
            .field("process_id", &self.process_id)
            .field("data", &self.data)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_795_000_000, 843_012_237)
    }
    const TS: &str = r#""timestamp":"2026-11-18T11:06:40.843012237Z"}"#;

    #[test]
    fn go_ws_literals() {
        assert_eq!(
            Message::process_output("p1", "line").to_json(None, at()),
            format!(
                r#"{{"type":"process_output","channel":"process:p1","processId":"p1","data":"line",{TS}"#
            )
        );
        assert_eq!(
            Message::process_status("p1", "exited", -1).to_json(None, at()),
            format!(
                r#"{{"type":"process_status","channel":"process:p1","processId":"p1","data":{{"exitCode":-1,"status":"exited"}},{TS}"#
            )
        );
        let user = Json::parse(r#"{"user":"alice"}"#).unwrap();
        assert_eq!(
            Message::event("user_joined", &user).to_json(None, at()),
            format!(
                r#"{{"type":"event","data":{{"data":{{"user":"alice"}},"event":"user_joined"}},{TS}"#
            )
        );
        assert_eq!(
            Message::new("pong").to_json(None, at()),
            format!(r#"{{"type":"pong",{TS}"#)
        );
        assert_eq!(
            Message::error("a<b").to_json(None, at()),
            format!(r#"{{"type":"error","data":"a\u003cb",{TS}"#)
        );
    }

    #[test]
    fn data_is_omitted_only_when_absent() {
        for (data, text) in [
            ("\"\"", "\"\""),
            ("0", "0"),
            ("false", "false"),
            ("{}", "{}"),
        ] {
            let msg = Message::new("event").with_data(Json::parse(data).unwrap());
            assert_eq!(
                msg.to_json(None, at()),
                format!(r#"{{"type":"event","data":{text},{TS}"#)
            );
        }
        // go-ws leaves a nil `Data` out: JSON null is the absent value.
        for null in [Json::null(), Json::parse(" null ").unwrap()] {
            let msg = Message::new("event").with_data(null);
            assert_eq!(msg.data(), None);
            assert_eq!(msg.to_json(None, at()), format!(r#"{{"type":"event",{TS}"#));
        }
    }

    #[test]
    fn frame_wraps_exactly_the_json() {
        let msg = Message::process_output("p1", &"x".repeat(300));
        let frame = msg.encode_frame(None, at());
        let json = msg.to_json(None, at());
        assert_eq!(frame[0], 0x81);
        assert_eq!(frame[1], 126);
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[2], frame[3]])),
            json.len()
        );
        assert_eq!(&frame[4..], json.as_bytes());
    }
}
