//! Go-compatible JSON output.
//!
//! wshub's wire format has to match the output of Go's `encoding/json` (`json.Marshal`, which
//! HTML-escapes) byte for byte, because go-ws clients compare and parse it. This module has the
//! three pieces that need care:
//!
//! - [`write_string`]: a string literal escaped exactly as Go escapes it.
//! - [`write_timestamp`]: a `time.Time` as Go's `MarshalJSON` writes it in UTC.
//! - [`canonicalize`]: re-encodes a caller's JSON `data` value the way Go would after
//!   `json.Unmarshal` into `interface{}` and `json.Marshal`: compact, object keys sorted, last
//!   duplicate key wins, strings re-escaped. The one deliberate difference from Go: numbers keep
//!   their original text instead of being rounded through `float64`.
//!
//! All writers append to a [`BufMut`], so they work on `Vec<u8>` and `BytesMut` alike.

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut;

/// The deepest nesting of arrays and objects that [`canonicalize`] accepts.
///
/// A top-level `[]` has depth 1. Input nested deeper than this is rejected with
/// [`JsonErrorKind::TooDeep`], so hostile input cannot overflow the stack.
pub(crate) const MAX_DEPTH: usize = 128;

// ---------------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------------

/// `ESCAPE[b]` for a byte `b` of a string being written:
/// - `0`: copied as is;
/// - `b'u'`: written as `\u00XX`;
/// - [`LEAD_E2`]: first byte of a 3-byte sequence that may be U+2028 or U+2029;
/// - anything else: written as a backslash followed by that byte (`\n`, `\"`, ...).
static ESCAPE: [u8; 256] = escape_table();

/// Marker in [`ESCAPE`] for byte 0xE2, which starts U+2028 (E2 80 A8) and U+2029 (E2 80 A9).
const LEAD_E2: u8 = 1;

const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

const fn escape_table() -> [u8; 256] {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x0c] = b'f';
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'<' as usize] = b'u';
    table[b'>' as usize] = b'u';
    table[b'&' as usize] = b'u';
    table[0xe2] = LEAD_E2;
    table
}

/// Appends `s` as a JSON string literal, exactly as Go's `json.Marshal` writes it.
///
/// The rules (Go 1.22 and later, with HTML escaping on, which is `json.Marshal`'s default):
/// `"` and `\` are backslash-escaped; `\n`, `\r`, `\t`, `\b` (U+0008) and `\f` (U+000C) use their
/// two-character escapes; other control characters below U+0020 become `\u00XX` with lowercase
/// hex; `<`, `>` and `&` become `\u003c`, `\u003e` and `\u0026`; U+2028 and U+2029 become
/// `\u2028` and `\u2029`. Everything else, DEL and all other non-ASCII included, is copied as
/// UTF-8. Runs of bytes that need no escaping are copied with a single `put_slice`.
///
/// # Panics
///
/// Only if `out` cannot grow and runs out of room (a fixed `&mut [u8]`); `Vec<u8>` and
/// `BytesMut` grow as needed.
///
/// # Examples
///
/// ```
/// use wshub::internals::write_string;
///
/// let mut out = Vec::new();
/// write_string(&mut out, "a<b>&c\n");
/// assert_eq!(out, br#""a\u003cb\u003e\u0026c\n""#);
/// ```
pub fn write_string<B: BufMut>(out: &mut B, s: &str) {
    out.put_u8(b'"');
    write_string_body(out, s.as_bytes());
    out.put_u8(b'"');
}

/// Writes the escaped contents of a string literal, without the quotes. `bytes` is valid UTF-8.
fn write_string_body<B: BufMut>(out: &mut B, bytes: &[u8]) {
    // `bytes[clean..i]` has been scanned and needs no escaping, but is not written yet.
    let mut clean = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            i += 1;
            continue;
        }
        if esc == LEAD_E2 {
            // Valid UTF-8: a 0xE2 lead byte always has two continuation bytes after it.
            let line_or_paragraph_sep =
                bytes.get(i + 1) == Some(&0x80) && matches!(bytes.get(i + 2), Some(0xa8 | 0xa9));
            if line_or_paragraph_sep {
                out.put_slice(&bytes[clean..i]);
                let last = if bytes[i + 2] == 0xa8 { b'8' } else { b'9' };
                out.put_slice(&[b'\\', b'u', b'2', b'0', b'2', last]);
                i += 3;
                clean = i;
            } else {
                i += 1;
            }
            continue;
        }
        out.put_slice(&bytes[clean..i]);
        if esc == b'u' {
            out.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX_LOWER[usize::from(b >> 4)],
                HEX_LOWER[usize::from(b & 0xf)],
            ]);
        } else {
            out.put_slice(&[b'\\', esc]);
        }
        i += 1;
        clean = i;
    }
    out.put_slice(&bytes[clean..]);
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// Seconds from the Unix epoch to 0000-01-01T00:00:00Z, the earliest time Go's
/// `time.Time.MarshalJSON` can write.
const MIN_UNIX_SECS: i64 = -62_167_219_200;
/// Seconds from the Unix epoch to 9999-12-31T23:59:59Z, the last second Go can write.
const MAX_UNIX_SECS: i64 = 253_402_300_799;
const SECS_PER_DAY: i64 = 86_400;

/// Appends `t` as Go's `time.Time.MarshalJSON` writes a UTC time: a quoted RFC 3339 timestamp
/// with nanoseconds, trailing zeros of the fraction trimmed (no fraction at all when it is zero)
/// and a `Z` suffix, e.g. `"2026-11-27T02:39:15.843012237Z"`.
///
/// Times before 1970 are written correctly. Go refuses to marshal years outside 0000..=9999
/// (`MarshalJSON` returns an error); this function cannot fail, so it clamps such times to
/// `"0000-01-01T00:00:00Z"` or `"9999-12-31T23:59:59.999999999Z"`.
///
/// # Panics
///
/// Only if `out` cannot grow and runs out of room (a fixed `&mut [u8]`).
///
/// # Examples
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use wshub::internals::write_timestamp;
///
/// let mut out = Vec::new();
/// write_timestamp(&mut out, UNIX_EPOCH + Duration::new(1_795_000_000, 843_012_237));
/// assert_eq!(out, br#""2026-11-18T11:06:40.843012237Z""#);
/// ```
pub fn write_timestamp<B: BufMut>(out: &mut B, t: SystemTime) {
    let (secs, nanos) = unix_parts(t);
    let (secs, nanos) = if secs < MIN_UNIX_SECS {
        (MIN_UNIX_SECS, 0)
    } else if secs > MAX_UNIX_SECS {
        (MAX_UNIX_SECS, 999_999_999)
    } else {
        (secs, nanos)
    };
    let days = secs.div_euclid(SECS_PER_DAY);
    let secs_of_day = secs.rem_euclid(SECS_PER_DAY);
    let (year, month, day) = civil_from_days(days);

    // `"YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ"` is 32 bytes.
    let mut buf = [0u8; 32];
    buf[0] = b'"';
    // After clamping, 0 <= year <= 9999 and every other field fits two digits.
    put_digits(&mut buf[1..5], year as u32);
    buf[5] = b'-';
    put_digits(&mut buf[6..8], month);
    buf[8] = b'-';
    put_digits(&mut buf[9..11], day);
    buf[11] = b'T';
    put_digits(&mut buf[12..14], (secs_of_day / 3600) as u32);
    buf[14] = b':';
    put_digits(&mut buf[15..17], (secs_of_day / 60 % 60) as u32);
    buf[17] = b':';
    put_digits(&mut buf[18..20], (secs_of_day % 60) as u32);
    let mut len = 20;
    if nanos != 0 {
        buf[20] = b'.';
        put_digits(&mut buf[21..30], nanos);
        len = 30;
        while buf[len - 1] == b'0' {
            len -= 1;
        }
    }
    buf[len] = b'Z';
    buf[len + 1] = b'"';
    out.put_slice(&buf[..len + 2]);
}

/// Splits `t` into whole seconds since the Unix epoch (rounded towards negative infinity) and
/// the nanoseconds after that second, saturating far outside the range we can write anyway.
fn unix_parts(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => (
            i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            after.subsec_nanos(),
        ),
        Err(before) => {
            let before = before.duration();
            let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
            match before.subsec_nanos() {
                0 => (-secs, 0),
                nanos => (-secs - 1, 1_000_000_000 - nanos),
            }
        }
    }
}

/// Writes `value` as decimal digits filling all of `dst`, zero-padded on the left.
fn put_digits(dst: &mut [u8], mut value: u32) {
    for slot in dst.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Converts a count of days since 1970-01-01 to a proleptic Gregorian `(year, month, day)`.
///
/// The calendar is shifted to start on March 1st so that the leap day is the last day of its
/// year, and counted in 400-year eras of 146 097 days, inside which every quantity is
/// non-negative.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // 0000-03-01 is 719 468 days before 1970-01-01.
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097); // 0..=146_096
                                                  // Remove the leap days before `day_of_era` (one per 4 years, except per 100, except per
                                                  // 400) to find the year of the era.
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365; // 0..=399
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365
                                                                                              // Months from March have lengths 31 30 31 30 31 | 31 30 31 30 31 | 31 29/28: a 153-day
                                                                                              // cycle every 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32; // 1..=31
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = era * 400 + year_of_era + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why [`canonicalize`] rejected its input, and where.
///
/// # Examples
///
/// ```
/// let err = wshub::Json::parse(r#"{"a" 1}"#).unwrap_err();
/// assert_eq!(err.offset(), 5);
/// assert_eq!(err.to_string(), "invalid JSON at byte 5: expected ':'");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    offset: usize,
    kind: JsonErrorKind,
    /// serde_json's message, for [`JsonErrorKind::Serialize`] only.
    detail: Option<Box<str>>,
}

impl JsonError {
    fn new(offset: usize, kind: JsonErrorKind) -> Self {
        Self {
            offset,
            kind,
            detail: None,
        }
    }

    /// The error for a value that serde_json could not serialize.
    pub(crate) fn serialize(error: &serde_json::Error) -> Self {
        Self {
            offset: 0,
            kind: JsonErrorKind::Serialize,
            detail: Some(error.to_string().into_boxed_str()),
        }
    }

    /// The byte offset into the input where the problem was found.
    ///
    /// For an input that ends too early (`JsonErrorKind::UnexpectedEnd`) this is the input's
    /// length; for a serialization error (`JsonErrorKind::Serialize`) it is 0.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// What was wrong.
    pub fn kind(&self) -> JsonErrorKind {
        self.kind
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.kind),
            None => write!(f, "invalid JSON at byte {}: {}", self.offset, self.kind),
        }
    }
}

impl std::error::Error for JsonError {}

/// The kinds of [`JsonError`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonErrorKind {
    /// The input ended inside a value, or held only whitespace.
    UnexpectedEnd,
    /// A value was expected (this is also what a trailing comma in an array or a bare word
    /// produces).
    ExpectedValue,
    /// An object key was expected: keys must be double-quoted strings, and a comma cannot be
    /// followed by `}`.
    ExpectedKey,
    /// An object key was not followed by `:`.
    ExpectedColon,
    /// An object member was not followed by `,` or `}`.
    ExpectedCommaOrObjectEnd,
    /// An array element was not followed by `,` or `]`.
    ExpectedCommaOrArrayEnd,
    /// Something other than whitespace followed the top-level value.
    TrailingCharacters,
    /// A misspelt `true`, `false` or `null`.
    InvalidLiteral,
    /// A number that does not follow the JSON grammar (leading zero, missing digits, ...).
    InvalidNumber,
    /// A number whose magnitude overflows `f64` (e.g. `1e400`); Go and serde_json reject these.
    NumberOutOfRange,
    /// A raw control character (U+0000 to U+001F) inside a string.
    ControlCharacter,
    /// A backslash escape other than `\" \\ \/ \b \f \n \r \t \uXXXX`, or a `\u` without four
    /// hex digits.
    InvalidEscape,
    /// A `\u` escape of a UTF-16 surrogate that is not part of a high+low pair.
    LoneSurrogate,
    /// Bytes inside a string that are not UTF-8.
    InvalidUtf8,
    /// Arrays and objects nested more than 128 levels deep.
    TooDeep,
    /// Not a parse error: serde could not turn a Rust value into JSON (for example a map with
    /// non-string keys). The offset is 0.
    Serialize,
}

impl fmt::Display for JsonErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnexpectedEnd => "unexpected end of input",
            Self::ExpectedValue => "expected a value",
            Self::ExpectedKey => "expected a string key",
            Self::ExpectedColon => "expected ':'",
            Self::ExpectedCommaOrObjectEnd => "expected ',' or '}'",
            Self::ExpectedCommaOrArrayEnd => "expected ',' or ']'",
            Self::TrailingCharacters => "trailing characters after the value",
            Self::InvalidLiteral => "invalid literal",
            Self::InvalidNumber => "invalid number",
            Self::NumberOutOfRange => "number out of range",
            Self::ControlCharacter => "control character in string",
            Self::InvalidEscape => "invalid escape",
            Self::LoneSurrogate => "lone surrogate in \\u escape",
            Self::InvalidUtf8 => "invalid UTF-8",
            Self::TooDeep => "nesting deeper than 128",
            Self::Serialize => "value cannot be serialized as JSON",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Canonicalization
// ---------------------------------------------------------------------------------------------

/// Parses any JSON text and appends its Go-canonical compact form to `out`.
///
/// The input is strict RFC 8259 JSON: one value, optionally surrounded by whitespace (space,
/// tab, CR, LF); no comments, trailing commas, leading zeros, `NaN`, single quotes or unquoted
/// keys; strings must be UTF-8 without raw control characters. The output is what Go's
/// `json.Marshal` writes for the value `json.Unmarshal` decodes into `interface{}`:
///
/// - no whitespace;
/// - object keys sorted by the bytes of their unescaped UTF-8 text; when a key occurs more than
///   once, the last occurrence wins;
/// - keys and strings re-escaped with the [`write_string`] rules (`\u` escapes are decoded
///   first, so `"\u0041"` becomes `"A"` and a surrogate pair becomes the raw 4-byte character);
/// - `true`, `false` and `null` as they are;
/// - **numbers copied verbatim** (`1.10`, `-0`, `1E+2`, 30-digit integers): unlike Go, which
///   rounds them through `float64`.
///
/// The input is fully parsed before anything is written, so on error `out` is unchanged.
///
/// # Accepted input
///
/// This accepts exactly what `serde_json::from_slice::<serde_json::Value>` accepts, with two
/// deliberate differences:
///
/// - nesting up to 128 levels is accepted (a top-level `[]` is level 1); serde_json stops at
///   127;
/// - numbers are range-checked with Rust's correctly rounded `f64` parser, so the few numbers
///   within half an ULP above `f64::MAX` (e.g. `1.7976931348623158e308`, which Go accepts and
///   rounds to `f64::MAX`) are accepted; serde_json's faster parser rejects them. Conversely,
///   serde_json accepts a few numbers just beyond that (e.g. `1.79769313486231582e308`), which
///   overflow and are rejected here, as Go rejects them.
///
/// Lone UTF-16 surrogates in `\u` escapes are rejected, as serde_json does (Go would replace
/// them with U+FFFD). Invalid UTF-8 is rejected too (Go would also replace it with U+FFFD).
/// Numbers whose magnitude overflows `f64` (`1e400`) are rejected, as Go and serde_json do;
/// numbers that underflow (`1e-400`) are accepted and kept verbatim.
///
/// # Errors
///
/// Returns a [`JsonError`] with the byte offset and kind of the first problem found.
///
/// # Panics
///
/// Only if `out` cannot grow and runs out of room (a fixed `&mut [u8]`).
///
/// # Examples
///
/// ```
/// use wshub::internals::canonicalize;
///
/// let mut out = Vec::new();
/// canonicalize(br#" {"b": "<x>", "a": 1.50, "b": [true, null]} "#, &mut out)?;
/// assert_eq!(out, br#"{"a":1.50,"b":[true,null]}"#);
/// # Ok::<(), wshub::JsonError>(())
/// ```
pub fn canonicalize<B: BufMut>(input: &[u8], out: &mut B) -> Result<(), JsonError> {
    let mut parser = Parser { input, pos: 0 };
    let value = parser.parse_value(0)?;
    parser.skip_whitespace();
    if parser.pos != input.len() {
        return Err(JsonError::new(
            parser.pos,
            JsonErrorKind::TrailingCharacters,
        ));
    }
    value.write(out);
    Ok(())
}

/// A parsed JSON value, borrowing from the input where it can.
enum Node<'a> {
    /// A number, `true`, `false` or `null`: written back exactly as it was read.
    Verbatim(&'a [u8]),
    /// A string, with escapes decoded.
    String(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    /// Members sorted by key, each key unique.
    Object(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl Node<'_> {
    /// Writes the value in Go's compact form. Recursion is bounded by [`MAX_DEPTH`].
    fn write<B: BufMut>(&self, out: &mut B) {
        match self {
            Node::Verbatim(text) => out.put_slice(text),
            Node::String(s) => write_string(out, s),
            Node::Array(items) => {
                out.put_u8(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b',');
                    }
                    item.write(out);
                }
                out.put_u8(b']');
            }
            Node::Object(members) => {
                out.put_u8(b'{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.put_u8(b',');
                    }
                    write_string(out, key);
                    out.put_u8(b':');
                    value.write(out);
                }
                out.put_u8(b'}');
            }
        }
    }
}

/// `STRING_STOP[b]` is true for the bytes that end a run of plain string content: `"`, `\`
/// and the control characters, which are not allowed raw.
static STRING_STOP: [bool; 256] = string_stop_table();

const fn string_stop_table() -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
}

/// A recursive-descent parser over the whole input; `pos` is the next byte to read.
struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn error(&self, kind: JsonErrorKind) -> JsonError {
        JsonError::new(self.pos, kind)
    }

    /// The error for an unexpected byte at `pos`, or [`JsonErrorKind::UnexpectedEnd`] at the end.
    fn unexpected(&self, kind: JsonErrorKind) -> JsonError {
        if self.pos >= self.input.len() {
            self.error(JsonErrorKind::UnexpectedEnd)
        } else {
            self.error(kind)
        }
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Parses one value, skipping whitespace before it. `depth` is the number of arrays and
    /// objects that enclose it.
    fn parse_value(&mut self, depth: usize) -> Result<Node<'a>, JsonError> {
        self.skip_whitespace();
        match self.peek() {
            None => Err(self.error(JsonErrorKind::UnexpectedEnd)),
            Some(b'{') => {
                self.check_depth(depth)?;
                self.parse_object(depth + 1)
            }
            Some(b'[') => {
                self.check_depth(depth)?;
                self.parse_array(depth + 1)
            }
            Some(b'"') => Ok(Node::String(self.parse_string()?)),
            Some(b'-' | b'0'..=b'9') => self.parse_number(),
            Some(b't') => self.parse_literal(b"true"),
            Some(b'f') => self.parse_literal(b"false"),
            Some(b'n') => self.parse_literal(b"null"),
            Some(_) => Err(self.error(JsonErrorKind::ExpectedValue)),
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), JsonError> {
        if depth >= MAX_DEPTH {
            Err(self.error(JsonErrorKind::TooDeep))
        } else {
            Ok(())
        }
    }

    /// Parses an array whose `[` is at `pos`; `depth` counts this array.
    fn parse_array(&mut self, depth: usize) -> Result<Node<'a>, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Node::Array(items));
        }
        loop {
            items.push(self.parse_value(depth)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Node::Array(items));
                }
                _ => return Err(self.unexpected(JsonErrorKind::ExpectedCommaOrArrayEnd)),
            }
        }
    }

    /// Parses an object whose `{` is at `pos`; `depth` counts this object.
    fn parse_object(&mut self, depth: usize) -> Result<Node<'a>, JsonError> {
        self.pos += 1;
        let mut members = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node::Object(members));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected(JsonErrorKind::ExpectedKey));
            }
            let key = self.parse_string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.unexpected(JsonErrorKind::ExpectedColon));
            }
            self.pos += 1;
            let value = self.parse_value(depth)?;
            members.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return Err(self.unexpected(JsonErrorKind::ExpectedCommaOrObjectEnd)),
            }
        }
        // A stable sort keeps equal keys in input order; then each run of equal keys collapses
        // into its first slot, which receives the value of the later member each time, so the
        // last occurrence wins, as in Go's map decoding.
        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        members.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                std::mem::swap(later, kept);
                true
            } else {
                false
            }
        });
        Ok(Node::Object(members))
    }

    /// Parses `true`, `false` or `null`; the first byte is known to match.
    fn parse_literal(&mut self, word: &'static [u8]) -> Result<Node<'a>, JsonError> {
        let start = self.pos;
        for &expected in word {
            if self.peek() != Some(expected) {
                return Err(self.unexpected(JsonErrorKind::InvalidLiteral));
            }
            self.pos += 1;
        }
        Ok(Node::Verbatim(&self.input[start..self.pos]))
    }

    /// Consumes a run of ASCII digits and returns how many there were.
    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Consumes at least one digit, or fails.
    fn require_digits(&mut self) -> Result<usize, JsonError> {
        match self.digits() {
            0 => Err(self.unexpected(JsonErrorKind::InvalidNumber)),
            n => Ok(n),
        }
    }

    /// Parses `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?` and keeps its text.
    fn parse_number(&mut self) -> Result<Node<'a>, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        let int_digits = match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.error(JsonErrorKind::InvalidNumber));
                }
                1
            }
            _ => self.require_digits()?,
        };
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.require_digits()?;
        }
        let mut has_exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            has_exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.require_digits()?;
        }
        let text = &self.input[start..self.pos];
        // f64::MAX is about 1.8e308, so a number without an exponent and with at most 308
        // integer digits cannot overflow; only the others need the (slower) full parse.
        if has_exponent || int_digits > 308 {
            let finite = std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(f64::is_finite);
            if !finite {
                return Err(JsonError::new(start, JsonErrorKind::NumberOutOfRange));
            }
        }
        Ok(Node::Verbatim(text))
    }

    /// Parses a string whose opening `"` is at `pos`, decoding escapes. Borrows from the input
    /// when the string has no escapes.
    fn parse_string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1;
        // Decoded text so far; only allocated once an escape shows up.
        let mut owned: Option<String> = None;
        loop {
            let run_start = self.pos;
            while let Some(&b) = self.input.get(self.pos) {
                if STRING_STOP[usize::from(b)] {
                    break;
                }
                self.pos += 1;
            }
            // `"`, `\` and control characters are ASCII, so they never split a UTF-8 sequence
            // and each run can be validated on its own.
            let run = std::str::from_utf8(&self.input[run_start..self.pos]).map_err(|e| {
                JsonError::new(run_start + e.valid_up_to(), JsonErrorKind::InvalidUtf8)
            })?;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(match owned {
                        None => Cow::Borrowed(run),
                        Some(mut s) => {
                            s.push_str(run);
                            Cow::Owned(s)
                        }
                    });
                }
                Some(b'\\') => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(run);
                    self.pos += 1;
                    let c = self.parse_escape()?;
                    s.push(c);
                }
                Some(_) => return Err(self.error(JsonErrorKind::ControlCharacter)),
                None => return Err(self.error(JsonErrorKind::UnexpectedEnd)),
            }
        }
    }

    /// Parses the escape after a backslash (`pos` is just past it) and returns its character.
    fn parse_escape(&mut self) -> Result<char, JsonError> {
        let c = match self.peek() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => return self.parse_unicode_escape(),
            _ => return Err(self.unexpected(JsonErrorKind::InvalidEscape)),
        };
        self.pos += 1;
        Ok(c)
    }

    /// Parses `uXXXX` (`pos` at the `u`), plus a second `\uXXXX` when the first is a high
    /// surrogate.
    fn parse_unicode_escape(&mut self) -> Result<char, JsonError> {
        let escape_start = self.pos - 1;
        self.pos += 1;
        let first = self.hex4()?;
        let code = match first {
            0xd800..=0xdbff => {
                let rest = &self.input[self.pos..];
                if !rest.starts_with(b"\\u") {
                    return Err(if b"\\u".starts_with(rest) {
                        JsonError::new(self.input.len(), JsonErrorKind::UnexpectedEnd)
                    } else {
                        JsonError::new(escape_start, JsonErrorKind::LoneSurrogate)
                    });
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(JsonError::new(escape_start, JsonErrorKind::LoneSurrogate));
                }
                0x10000 + ((u32::from(first) - 0xd800) << 10) + (u32::from(second) - 0xdc00)
            }
            0xdc00..=0xdfff => {
                return Err(JsonError::new(escape_start, JsonErrorKind::LoneSurrogate));
            }
            _ => u32::from(first),
        };
        // Surrogates are excluded above and pairs combine to 0x10000..=0x10ffff.
        char::from_u32(code).ok_or(JsonError::new(escape_start, JsonErrorKind::LoneSurrogate))
    }

    /// Reads four hex digits.
    fn hex4(&mut self) -> Result<u16, JsonError> {
        let mut value = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.unexpected(JsonErrorKind::InvalidEscape)),
            };
            value = value << 4 | u16::from(digit);
            self.pos += 1;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn string(s: &str) -> String {
        let mut out = Vec::new();
        write_string(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    fn timestamp(t: SystemTime) -> String {
        let mut out = Vec::new();
        write_timestamp(&mut out, t);
        String::from_utf8(out).unwrap()
    }

    fn canon(input: &str) -> Result<String, JsonError> {
        canon_bytes(input.as_bytes())
    }

    fn canon_bytes(input: &[u8]) -> Result<String, JsonError> {
        let mut out = b"prefix".to_vec();
        let result = canonicalize(input, &mut out);
        match result {
            Ok(()) => Ok(String::from_utf8(out[6..].to_vec()).unwrap()),
            Err(e) => {
                assert_eq!(out, b"prefix", "output changed on error for {input:?}");
                Err(e)
            }
        }
    }

    fn canon_err(input: &str) -> JsonErrorKind {
        match canon(input) {
            Ok(out) => panic!("{input:?} was accepted as {out:?}"),
            Err(e) => e.kind(),
        }
    }

    // ------------------------------------------------------------------ write_string

    #[test]
    fn string_escapes() {
        assert_eq!(string(""), r#""""#);
        assert_eq!(string("plain text"), r#""plain text""#);
        assert_eq!(string("\""), r#""\"""#);
        assert_eq!(string("\\"), r#""\\""#);
        assert_eq!(string("\n\r\t"), r#""\n\r\t""#);
        assert_eq!(string("\u{8}\u{c}"), r#""\b\f""#);
        assert_eq!(string("\x00"), r#""\u0000""#);
        assert_eq!(string("\x01"), r#""\u0001""#);
        assert_eq!(string("\x0b"), r#""\u000b""#);
        assert_eq!(string("\x1f"), r#""\u001f""#);
        assert_eq!(string("a<b>&c"), r#""a\u003cb\u003e\u0026c""#);
        assert_eq!(string("\u{2028}"), r#""\u2028""#);
        assert_eq!(string("\u{2029}"), r#""\u2029""#);
        assert_eq!(string("\x7f"), "\"\x7f\"");
        assert_eq!(string("/"), r#""/""#);
    }

    #[test]
    fn string_every_control_character() {
        for b in 0u8..0x20 {
            let s = char::from(b).to_string();
            let expected = match b {
                0x08 => r#""\b""#.to_owned(),
                0x09 => r#""\t""#.to_owned(),
                0x0a => r#""\n""#.to_owned(),
                0x0c => r#""\f""#.to_owned(),
                0x0d => r#""\r""#.to_owned(),
                _ => format!("\"\\u{b:04x}\""),
            };
            assert_eq!(string(&s), expected, "byte {b:#x}");
        }
    }

    #[test]
    fn string_non_ascii_unchanged() {
        // Other characters starting with 0xE2 (U+2000..U+2FFF) are copied raw.
        for s in [
            "é",
            "日本語",
            "😀👍🏽",
            "\u{2027}\u{202a}\u{20ac}\u{2f00}",
            "\u{fffd}",
        ] {
            assert_eq!(string(s), format!("\"{s}\""));
        }
    }

    #[test]
    fn string_mixed_runs() {
        assert_eq!(
            string("héllo \"wörld\"\n<😀>\u{2028}end\\\u{1}x&&"),
            r#""héllo \"wörld\"\n\u003c😀\u003e\u2028end\\\u0001x\u0026\u0026""#
        );
        assert_eq!(
            string("\u{2028}\u{2029}\u{2028}"),
            r#""\u2028\u2029\u2028""#
        );
    }

    #[test]
    fn string_appends_to_bytes_mut() {
        let mut out = bytes::BytesMut::from(&b"x="[..]);
        write_string(&mut out, "<a>");
        assert_eq!(&out[..], br#"x="\u003ca\u003e""#);
    }

    /// Escaping is a pure function of each character: compare against a simple per-char
    /// reference on many strings.
    #[test]
    fn string_matches_per_char_reference() {
        fn reference(s: &str) -> String {
            let mut out = String::from("\"");
            for c in s.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    '\u{8}' => out.push_str("\\b"),
                    '\u{c}' => out.push_str("\\f"),
                    '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                        out.push_str(&format!("\\u{:04x}", u32::from(c)));
                    }
                    _ => out.push(c),
                }
            }
            out.push('"');
            out
        }
        let alphabet: Vec<char> = "ab<>&\"\\\n\u{1}\u{1f}\u{7f}é€\u{2028}\u{2029}\u{2027}😀 "
            .chars()
            .collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut s = String::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for k in 0..len {
                let idx = (state >> (k % 8 * 8)) as usize ^ k;
                s.push(alphabet[idx % alphabet.len()]);
            }
            assert_eq!(string(&s), reference(&s), "{s:?}");
        }
    }

    // ------------------------------------------------------------------ write_timestamp

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn timestamp_known_instants() {
        assert_eq!(timestamp(UNIX_EPOCH), r#""1970-01-01T00:00:00Z""#);
        assert_eq!(
            timestamp(at(1_795_000_000, 843_012_237)),
            r#""2026-11-18T11:06:40.843012237Z""#
        );
        assert_eq!(
            timestamp(at(1_795_000_000, 500_000_000)),
            r#""2026-11-18T11:06:40.5Z""#
        );
        assert_eq!(
            timestamp(at(1_795_000_000, 1)),
            r#""2026-11-18T11:06:40.000000001Z""#
        );
        assert_eq!(
            timestamp(at(1_795_000_000, 120_000)),
            r#""2026-11-18T11:06:40.00012Z""#
        );
        // Leap day, and the day after 2100-02-28 (2100 is not a leap year).
        assert_eq!(timestamp(at(1_709_164_800, 0)), r#""2024-02-29T00:00:00Z""#);
        assert_eq!(timestamp(at(4_107_542_400, 0)), r#""2100-03-01T00:00:00Z""#);
        assert_eq!(timestamp(at(4_107_542_399, 0)), r#""2100-02-28T23:59:59Z""#);
        assert_eq!(timestamp(at(951_782_400, 0)), r#""2000-02-29T00:00:00Z""#);
        assert_eq!(timestamp(at(1_767_225_599, 0)), r#""2025-12-31T23:59:59Z""#);
    }

    #[test]
    fn timestamp_before_1970() {
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_nanos(1)),
            r#""1969-12-31T23:59:59.999999999Z""#
        );
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::new(1, 500_000_000)),
            r#""1969-12-31T23:59:58.5Z""#
        );
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(86_400)),
            r#""1969-12-31T00:00:00Z""#
        );
        // 1900-03-01 (1900 is not a leap year).
        assert_eq!(
            timestamp(UNIX_EPOCH - Duration::from_secs(2_203_891_200)),
            r#""1900-03-01T00:00:00Z""#
        );
    }

    #[test]
    fn timestamp_clamps_outside_go_range() {
        let first = UNIX_EPOCH - Duration::from_secs(62_167_219_200);
        assert_eq!(timestamp(first), r#""0000-01-01T00:00:00Z""#);
        assert_eq!(
            timestamp(first - Duration::from_nanos(1)),
            r#""0000-01-01T00:00:00Z""#
        );
        let last = at(253_402_300_799, 999_999_999);
        assert_eq!(timestamp(last), r#""9999-12-31T23:59:59.999999999Z""#);
        assert_eq!(
            timestamp(last + Duration::from_nanos(1)),
            r#""9999-12-31T23:59:59.999999999Z""#
        );
        if let Some(far) = UNIX_EPOCH.checked_add(Duration::from_secs(1 << 40)) {
            assert_eq!(timestamp(far), r#""9999-12-31T23:59:59.999999999Z""#);
        }
        if let Some(far) = UNIX_EPOCH.checked_sub(Duration::from_secs(1 << 40)) {
            assert_eq!(timestamp(far), r#""0000-01-01T00:00:00Z""#);
        }
    }

    /// Every day from 0000-01-01 to 9999-12-31, against a calendar that counts day by day.
    #[test]
    fn timestamp_sweep_against_day_counting_calendar() {
        fn is_leap(y: i64) -> bool {
            y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
        }
        fn month_len(y: i64, m: u32) -> u32 {
            match m {
                1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
                4 | 6 | 9 | 11 => 30,
                _ if is_leap(y) => 29,
                _ => 28,
            }
        }
        let (mut y, mut m, mut d) = (0i64, 1u32, 1u32);
        let mut day_number: i64 = -719_528;
        let mut checked = 0u64;
        while y <= 9999 {
            assert_eq!(civil_from_days(day_number), (y, m, d), "day {day_number}");
            // A full formatted comparison on a spread of days, with varying time and fraction.
            if day_number % 7 == 0 || (-800..=80_000).contains(&day_number) {
                let secs_of_day = (day_number * 7_919).rem_euclid(86_400);
                let nanos = (day_number.rem_euclid(1_000_000_007) * 104_729 % 1_000_000_000) as u32;
                let secs = day_number * 86_400 + secs_of_day;
                let t = if secs >= 0 {
                    UNIX_EPOCH + Duration::new(secs as u64, nanos)
                } else {
                    UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                        + Duration::from_nanos(u64::from(nanos))
                };
                let mut expected = format!(
                    "\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                    secs_of_day / 3600,
                    secs_of_day / 60 % 60,
                    secs_of_day % 60
                );
                if nanos != 0 {
                    expected.push_str(format!(".{nanos:09}").trim_end_matches('0'));
                }
                expected.push_str("Z\"");
                assert_eq!(timestamp(t), expected);
                checked += 1;
            }
            day_number += 1;
            d += 1;
            if d > month_len(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
        assert_eq!(day_number, 2_932_897);
        assert!(checked > 500_000);
    }

    // ------------------------------------------------------------------ canonicalize

    #[test]
    fn canon_scalars_and_whitespace() {
        assert_eq!(canon("true").unwrap(), "true");
        assert_eq!(canon(" false ").unwrap(), "false");
        assert_eq!(canon("\t\r\nnull\n").unwrap(), "null");
        assert_eq!(canon(r#""x""#).unwrap(), r#""x""#);
        assert_eq!(
            canon("[ 1 , [ ] , { } , \"\" ]").unwrap(),
            r#"[1,[],{},""]"#
        );
        assert_eq!(
            canon("{ \"a\" : [ 1 ,\n2 ] ,\t\"b\" : { } }").unwrap(),
            r#"{"a":[1,2],"b":{}}"#
        );
    }

    #[test]
    fn canon_numbers_verbatim() {
        for n in [
            "0",
            "-0",
            "1.10",
            "1E+2",
            "1e-7",
            "-0.0e0",
            "12345678901234567890123",
            "0.1000000000000000000000000001",
            "1e-400",
            "1.7976931348623157e308",
        ] {
            assert_eq!(canon(n).unwrap(), n);
            assert_eq!(canon(&format!("[{n}]")).unwrap(), format!("[{n}]"));
        }
        let long = "9".repeat(308);
        assert_eq!(canon(&long).unwrap(), long);
    }

    #[test]
    fn canon_sorts_keys_recursively() {
        assert_eq!(
            canon(r#"{"b":"<x>","a":1}"#).unwrap(),
            r#"{"a":1,"b":"\u003cx\u003e"}"#
        );
        assert_eq!(
            canon(r#"{"z":{"y":1,"x":[{"d":1,"c":2}]},"a":null}"#).unwrap(),
            r#"{"a":null,"z":{"x":[{"c":2,"d":1}],"y":1}}"#
        );
        // Byte order of the unescaped UTF-8: "B" < "a" < "aa" < "b" < "é" < "😀".
        assert_eq!(
            canon(r#"{"😀":1,"\u00e9":2,"b":3,"aa":4,"a":5,"B":6,"":7}"#).unwrap(),
            r#"{"":7,"B":6,"a":5,"aa":4,"b":3,"é":2,"😀":1}"#
        );
        // Sorted by unescaped text, not by the escaped text: "\u0041" is "A" < "B".
        assert_eq!(canon(r#"{"B":1,"\u0041":2}"#).unwrap(), r#"{"A":2,"B":1}"#);
        // Escaped output keys sort by their raw text: "<" (0x3c) < "=" (0x3d).
        assert_eq!(canon(r#"{"=":1,"<":2}"#).unwrap(), r#"{"\u003c":2,"=":1}"#);
    }

    #[test]
    fn canon_duplicate_keys_last_wins() {
        assert_eq!(canon(r#"{"a":1,"a":2}"#).unwrap(), r#"{"a":2}"#);
        assert_eq!(
            canon(r#"{"a":1,"b":0,"a":2,"c":0,"a":{"x":3}}"#).unwrap(),
            r#"{"a":{"x":3},"b":0,"c":0}"#
        );
        // Same key spelt with and without escapes.
        assert_eq!(canon(r#"{"A":1,"\u0041":2}"#).unwrap(), r#"{"A":2}"#);
        assert_eq!(
            canon(r#"{"k":[{"b":1,"b":2}],"k":[{"c":3,"c":4}]}"#).unwrap(),
            r#"{"k":[{"c":4}]}"#
        );
    }

    #[test]
    fn canon_reescapes_strings() {
        assert_eq!(canon(r#""\u0041\u00e9""#).unwrap(), r#""Aé""#);
        assert_eq!(canon(r#""\ud83d\ude00""#).unwrap(), "\"😀\"");
        assert_eq!(canon(r#""\uD83D\uDE00""#).unwrap(), "\"😀\"");
        assert_eq!(
            canon(r#""\/\b\f\n\r\t\"\\""#).unwrap(),
            r#""/\b\f\n\r\t\"\\""#
        );
        assert_eq!(
            canon(r#""\u003c\u003E\u0026""#).unwrap(),
            r#""\u003c\u003e\u0026""#
        );
        assert_eq!(canon(r#""<>&""#).unwrap(), r#""\u003c\u003e\u0026""#);
        assert_eq!(canon("\"\u{2028}\u{2029}\"").unwrap(), r#""\u2028\u2029""#);
        assert_eq!(canon(r#""\u2028""#).unwrap(), r#""\u2028""#);
        assert_eq!(
            canon(r#""\u0001\u001F\u007f""#).unwrap(),
            "\"\\u0001\\u001f\x7f\""
        );
        assert_eq!(canon(r#""\u0000""#).unwrap(), r#""\u0000""#);
        assert_eq!(canon(r#"{"<k>":"v"}"#).unwrap(), r#"{"\u003ck\u003e":"v"}"#);
        assert_eq!(canon("\"é😀\x7f\"").unwrap(), "\"é😀\x7f\"");
        assert_eq!(canon(r#""a\nb😀c\td""#).unwrap(), r#""a\nb😀c\td""#);
    }

    #[test]
    fn canon_appends_to_bytes_mut() {
        let mut out = bytes::BytesMut::from(&b"{\"data\":"[..]);
        canonicalize(br#"{"b":1,"a":"&"}"#, &mut out).unwrap();
        assert_eq!(&out[..], br#"{"data":{"a":"\u0026","b":1}"#);
    }

    #[test]
    fn canon_rejects() {
        use JsonErrorKind::*;
        let cases: &[(&str, JsonErrorKind)] = &[
            ("", UnexpectedEnd),
            ("   ", UnexpectedEnd),
            ("[1,]", ExpectedValue),
            (r#"{"a":1,}"#, ExpectedKey),
            ("[1 2]", ExpectedCommaOrArrayEnd),
            (r#"{"a":1 "b":2}"#, ExpectedCommaOrObjectEnd),
            ("01", InvalidNumber),
            ("-01", InvalidNumber),
            ("1.", UnexpectedEnd),
            ("[1.]", InvalidNumber),
            ("1.e5", InvalidNumber),
            ("1e", UnexpectedEnd),
            ("[1e+]", InvalidNumber),
            (".5", ExpectedValue),
            ("+1", ExpectedValue),
            ("-", UnexpectedEnd),
            ("[-]", InvalidNumber),
            ("NaN", ExpectedValue),
            ("-Infinity", InvalidNumber),
            ("Infinity", ExpectedValue),
            ("1e400", NumberOutOfRange),
            ("-1e309", NumberOutOfRange),
            ("{a:1}", ExpectedKey),
            ("{'a':1}", ExpectedKey),
            ("'a'", ExpectedValue),
            (r#"{"a" 1}"#, ExpectedColon),
            (r#"{"a""#, UnexpectedEnd),
            ("\"a\nb\"", ControlCharacter),
            ("\"a\x00\"", ControlCharacter),
            ("\"\t\"", ControlCharacter),
            (r#""\x41""#, InvalidEscape),
            (r#""\u12""#, InvalidEscape),
            (r#""\u12G4""#, InvalidEscape),
            (r#""\U0041""#, InvalidEscape),
            (r#""\ud800""#, LoneSurrogate),
            (r#""\ud800x""#, LoneSurrogate),
            (r#""\ud800\u0041""#, LoneSurrogate),
            (r#""\ud800\ud800""#, LoneSurrogate),
            (r#""\udc00""#, LoneSurrogate),
            (r#""\udfff\ud800""#, LoneSurrogate),
            (r#""\ud800\"#, UnexpectedEnd),
            (r#""abc"#, UnexpectedEnd),
            (r#""\"#, UnexpectedEnd),
            (r#"{"a":[1,{"b":"#, UnexpectedEnd),
            ("[", UnexpectedEnd),
            ("{", UnexpectedEnd),
            ("tru", UnexpectedEnd),
            ("trUe", InvalidLiteral),
            ("nul", UnexpectedEnd),
            ("fals", UnexpectedEnd),
            ("truex", TrailingCharacters),
            ("1 2", TrailingCharacters),
            ("{} x", TrailingCharacters),
            ("[]]", TrailingCharacters),
            ("null // comment", TrailingCharacters),
            ("/* c */ 1", ExpectedValue),
            ("\u{feff}1", ExpectedValue),
            ("\u{a0}1", ExpectedValue),
        ];
        for &(input, kind) in cases {
            assert_eq!(canon_err(input), kind, "{input:?}");
        }
    }

    #[test]
    fn canon_rejects_invalid_utf8() {
        for input in [
            &b"\"\xff\""[..],
            b"\"a\xc3\"",
            b"\"\xed\xa0\x80\"", // UTF-8-encoded surrogate
            b"\"\xc0\xaf\"",     // overlong
            b"{\"\xe9\":1}",
            b"\"ok\\n\xf0\x9f\x98\"",
            b"\xff",
        ] {
            let err = canon_bytes(input).unwrap_err();
            let expected = if input == b"\xff" {
                JsonErrorKind::ExpectedValue
            } else {
                JsonErrorKind::InvalidUtf8
            };
            assert_eq!(err.kind(), expected, "{input:?}");
        }
        assert_eq!(canon_bytes(b"\"a\xc3\"").unwrap_err().offset(), 2);
    }

    #[test]
    fn error_offsets_and_display() {
        let err = canon(r#"{"a" 1}"#).unwrap_err();
        assert_eq!(err, JsonError::new(5, JsonErrorKind::ExpectedColon));
        assert_eq!(err.to_string(), "invalid JSON at byte 5: expected ':'");
        assert_eq!(canon("[1,]").unwrap_err().offset(), 3);
        assert_eq!(canon("[1").unwrap_err().offset(), 2);
        assert_eq!(canon("  1 x").unwrap_err().offset(), 4);
        assert_eq!(canon(r#"["\ud800x"]"#).unwrap_err().offset(), 2);
        assert_eq!(canon("[0, 1e999]").unwrap_err().offset(), 4);
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("invalid JSON at byte 5"));

        let map = std::collections::HashMap::from([((1, 2), 3)]);
        let serde_err = serde_json::to_vec(&map).unwrap_err();
        let err = JsonError::serialize(&serde_err);
        assert_eq!(err.kind(), JsonErrorKind::Serialize);
        assert_eq!(err.offset(), 0);
        assert_eq!(
            err.to_string(),
            format!("value cannot be serialized as JSON: {serde_err}")
        );
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn canon_depth_limit() {
        assert_eq!(canon(&nested(MAX_DEPTH)).unwrap(), nested(MAX_DEPTH));
        let err = canon(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert_eq!(err, JsonError::new(MAX_DEPTH, JsonErrorKind::TooDeep));

        let objects = format!("{}1{}", r#"{"a":"#.repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(canon(&objects).is_ok());
        let objects = format!(
            "{}1{}",
            r#"{"a":"#.repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        assert_eq!(canon_err(&objects), JsonErrorKind::TooDeep);
        let mixed = format!("{}{}", r#"[{"a":"#.repeat(65), "}]".repeat(65));
        assert_eq!(canon_err(&mixed), JsonErrorKind::TooDeep);
    }

    #[test]
    fn canon_hostile_depth_no_stack_overflow() {
        let open = "[".repeat(10_000);
        assert_eq!(canon_err(&open), JsonErrorKind::TooDeep);
        assert_eq!(canon_err(&nested(10_000)), JsonErrorKind::TooDeep);
        assert_eq!(
            canon_err(&r#"{"a":"#.repeat(10_000)),
            JsonErrorKind::TooDeep
        );
    }

    /// Where canonicalize deliberately accepts what serde_json rejects (see its docs).
    #[test]
    fn documented_differences_from_serde_json() {
        let depth_128 = nested(128);
        assert!(serde_json::from_str::<serde_json::Value>(&depth_128).is_err());
        assert!(canon(&depth_128).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(127)).is_ok());

        let near_max = "1.7976931348623158e308";
        assert_eq!(near_max.parse::<f64>().unwrap(), f64::MAX);
        assert_eq!(canon(near_max).unwrap(), near_max);
    }

    /// canonicalize accepts exactly what serde_json accepts, and its output means the same.
    #[test]
    fn differential_against_serde_json() {
        let corpus: &[&[u8]] = &[
            // valid
            b"null",
            b"true",
            b" false ",
            b"0",
            b"-0",
            b"-0.0",
            b"1.10",
            b"1E+2",
            b"1e-7",
            b"2.5E-3",
            b"123456789",
            b"-9007199254740993",
            b"1e-400",
            b"\"\"",
            b"\"hello\"",
            br#""<script>&amp;</script>""#,
            br#""\u0041\u00e9\ud83d\ude00\n\t\\\"\/""#,
            "\"\u{2028}x\u{2029}é😀\x7f\"".as_bytes(),
            b"[]",
            b"{}",
            b"[1,\"two\",[3],{\"four\":4},null,true,false]",
            br#"{"b":1,"a":2,"c":{"z":[1,2,{"y":null,"x":"<>"}]}}"#,
            br#"{"a":1,"a":2,"a":3}"#,
            br#"{"dup":{"x":1},"other":0,"dup":[2]}"#,
            r#"{"é":1,"e":2,"😀":3,"E":4,"":5}"#.as_bytes(),
            br#"{"\u0062":1,"a":2,"\u0061":3}"#,
            b" \t\r\n{ \"a\" :\n[ 1 , 2 ]\r\n}\t ",
            br#"{"type":"event","data":{"data":{"user":"alice"},"event":"user_joined"}}"#,
            br#"[[[[[[[[[[{"deep":[[[[[]]]]]}]]]]]]]]]]"#,
            // invalid
            b"",
            b"   ",
            b"[1,]",
            br#"{"a":1,}"#,
            b"01",
            b"1.",
            b".5",
            b"+1",
            b"NaN",
            b"Infinity",
            b"1e400",
            b"{a:1}",
            b"{'a':1}",
            b"\"a\x01b\"",
            br#""\x41""#,
            br#""\ud800""#,
            br#""\udc00\ud800""#,
            br#""\ud800\u0041""#,
            br#"{"a":[1,2"#,
            b"[1] x",
            b"nul",
            b"tRue",
            b"\"\xff\"",
            b"\"\xed\xa0\x80\"",
            b"\xef\xbb\xbf{}",
            b"[1,,2]",
            b"{\"a\"::1}",
            b"{\"a\":1 \"b\":2}",
            b"// c\n1",
        ];
        let mut accepted = 0;
        let mut rejected = 0;
        for &input in corpus {
            let ours = canon_bytes(input);
            let theirs = serde_json::from_slice::<serde_json::Value>(input);
            match (&ours, &theirs) {
                (Ok(out), Ok(expected)) => {
                    let reparsed: serde_json::Value = serde_json::from_str(out).unwrap();
                    assert_eq!(&reparsed, expected, "{:?}", String::from_utf8_lossy(input));
                    // Canonical output is a fixed point.
                    assert_eq!(canon(out).as_ref(), Ok(out));
                    accepted += 1;
                }
                (Err(_), Err(_)) => rejected += 1,
                _ => panic!(
                    "disagreement on {:?}: ours {ours:?}, serde_json {theirs:?}",
                    String::from_utf8_lossy(input)
                ),
            }
        }
        assert!(accepted >= 25 && rejected >= 25, "{accepted} / {rejected}");
    }

    /// Random byte-level mutations of valid documents: acceptance must still agree with
    /// serde_json, and accepted output must mean the same value.
    #[test]
    fn differential_mutations_against_serde_json() {
        let seeds: &[&[u8]] = &[
            br#"{"a":[1,-2.5e+3,true,null],"b":{"c":"x\u00e9\n","d":[]},"a":0}"#,
            br#"[0,"\ud83d\ude00",{"k":false},-0.0,1E5,"<&>"]"#,
            br#" { "s" : "tab\there" , "n" : 12345678901234567890 } "#,
        ];
        let alphabet = b"{}[],:\"\\ 0123456789-+.eEtrufalsn\x01\xc3\xa9\xffu/";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut accepted, mut rejected) = (0, 0);
        for _ in 0..20_000 {
            let mut doc = seeds[(next() % seeds.len() as u64) as usize].to_vec();
            for _ in 0..=(next() % 3) {
                let at = (next() % (doc.len() as u64 + 1)) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => doc.insert(at, byte),
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ if at < doc.len() => doc[at] = byte,
                    _ => doc.push(byte),
                }
            }
            let ours = canon_bytes(&doc);
            let theirs = serde_json::from_slice::<serde_json::Value>(&doc);
            match (&ours, &theirs) {
                (Ok(out), Ok(expected)) => {
                    let reparsed: serde_json::Value = serde_json::from_str(out).unwrap();
                    assert_eq!(&reparsed, expected, "{:?}", String::from_utf8_lossy(&doc));
                    accepted += 1;
                }
                (Err(_), Err(_)) => rejected += 1,
                _ => panic!(
                    "disagreement on {:?}: ours {ours:?}, serde_json {theirs:?}",
                    String::from_utf8_lossy(&doc)
                ),
            }
        }
        assert!(
            accepted > 1_000 && rejected > 1_000,
            "{accepted} / {rejected}"
        );
    }

    /// The output is exactly what serde_json produces for the same value when the value has
    /// no numbers (serde_json's Value map is sorted by key bytes; it just doesn't HTML-escape).
    #[test]
    fn matches_serde_json_output_modulo_html_escaping() {
        let input = br#"{"z":"a\u2028b","m":[{"q":true,"p":null}],"a":"<&>","\u00e9":"\t"}"#;
        let value: serde_json::Value = serde_json::from_slice(input).unwrap();
        let theirs = serde_json::to_string(&value)
            .unwrap()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026")
            .replace('\u{2028}', "\\u2028");
        assert_eq!(canon_bytes(input).unwrap(), theirs);
    }
}
