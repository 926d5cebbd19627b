//! JSON plumbing shared by the codecs: a one-pass top-level object reader that types the known
//! fields and keeps the rest as raw JSON, a string-or-array reader that never buffers, and
//! writers that append escaped strings, numbers and SSE frames to a byte buffer.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::io::Write;
use std::marker::PhantomData;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{FormatError, RawJson};

/// A request's top level: typed known fields, raw unknown ones.
pub(crate) trait TopLevel<'de>: Default {
    /// Reads the value of a known `key` from `map` and returns true; false for an unknown key
    /// (whose value the caller keeps raw).
    fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error>;
    /// Where unknown fields go, in order.
    fn extra(&mut self) -> &mut Vec<(String, RawJson)>;
}

/// Decode a request body's top-level object in one pass. Errors: `invalid_request_body` (empty),
/// `invalid_json` (not a JSON object), `invalid_field` (a known field of the wrong shape; the
/// message names it). serde_json's recursion limit (128) bounds the nesting.
pub(crate) fn decode_top_level<'de, T: TopLevel<'de>>(body: &'de [u8]) -> Result<T, FormatError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FormatError::bad_request(
            "invalid_request_body",
            "the request body is empty; expected a JSON object",
        ));
    }
    let failed = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = TopSeed {
        failed: &failed,
        _t: PhantomData,
    };
    let parsed = seed.deserialize(&mut de).and_then(|t| de.end().map(|()| t));
    parsed.map_err(|e| match failed.take() {
        Some(key) => FormatError::bad_request("invalid_field", format!("`{key}`: {e}")),
        None => FormatError::bad_request(
            "invalid_json",
            format!("the request body is not a valid JSON object: {e}"),
        ),
    })
}

struct TopSeed<'c, T> {
    failed: &'c Cell<Option<String>>,
    _t: PhantomData<T>,
}

impl<'de, T: TopLevel<'de>> DeserializeSeed<'de> for TopSeed<'_, T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, T: TopLevel<'de>> Visitor<'de> for TopSeed<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut t = T::default();
        while let Some(CowStr(key)) = map.next_key::<CowStr<'de>>()? {
            match t.field(&key, &mut map) {
                Ok(true) => {}
                Ok(false) => {
                    let v: RawJson = map.next_value()?;
                    t.extra().push((key.into_owned(), v));
                }
                Err(e) => {
                    self.failed.set(Some(key.into_owned()));
                    return Err(e);
                }
            }
        }
        Ok(t)
    }
}

/// A JSON string, borrowed from the input when it has no escapes (serde's own `Cow<str>`
/// always copies outside derived structs).
#[derive(Debug)]
pub(crate) struct CowStr<'a>(pub(crate) Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(CowStrVisitor(PhantomData))
    }
}

struct CowStrVisitor<'a>(PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for CowStrVisitor<'a> {
    type Value = CowStr<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(CowStr(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(CowStr(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(CowStr(Cow::Owned(v)))
    }
}

/// A JSON value that is a string, an array of `T`, or null (message `content`, `stop`,
/// `system`), read without buffering.
#[derive(Debug)]
pub(crate) enum StrOrSeq<'a, T> {
    Str(Cow<'a, str>),
    Seq(Vec<T>),
    Null,
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for StrOrSeq<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrOrSeqVisitor(PhantomData))
    }
}

struct StrOrSeqVisitor<'a, T>(PhantomData<(&'a (), T)>);

impl<'de: 'a, 'a, T: Deserialize<'de>> Visitor<'de> for StrOrSeqVisitor<'a, T> {
    type Value = StrOrSeq<'a, T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(StrOrSeq::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(x) = seq.next_element()? {
            v.push(x);
        }
        Ok(StrOrSeq::Seq(v))
    }
}

/// A request's `model`, which must be given and not empty: 400 `missing_model` with `message`
/// (in the words of the client's API) otherwise.
pub(crate) fn required_model(
    model: Option<CowStr>,
    message: &'static str,
) -> Result<String, FormatError> {
    match model {
        Some(CowStr(m)) if !m.is_empty() => Ok(m.into_owned()),
        _ => Err(FormatError::bad_request("missing_model", message)),
    }
}

/// Parse one raw element (a content block, a tool) into its typed form.
pub(crate) fn parse_raw<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    what: &'static str,
) -> Result<T, FormatError> {
    serde_json::from_str(raw.get())
        .map_err(|e| FormatError::bad_request("invalid_field", format!("{what}: {e}")))
}

/// One SSE event's JSON payload, or `None` for an empty one or one after the stream's
/// terminating event (`done`), which is ignored.
pub(crate) fn stream_event<'a, T: Deserialize<'a>>(
    data: &'a [u8],
    done: bool,
) -> Result<Option<T>, FormatError> {
    let data = data.trim_ascii();
    if data.is_empty() || done {
        return Ok(None);
    }
    serde_json::from_slice(data)
        .map(Some)
        .map_err(|e| FormatError::invalid_event("stream event", e))
}

/// A raw JSON value copied out of a borrowed one.
pub(crate) fn own(raw: &RawValue) -> RawJson {
    RawJson::copy_of(raw)
}

/// Whether a raw JSON value is an object.
pub(crate) fn is_object(raw: &RawValue) -> bool {
    raw.get().trim_start().starts_with('{')
}

/// One of the codecs' JSON constants, borrowed (no allocation). The constants are valid JSON
/// (checked by the tests beside them).
pub(crate) fn raw_const(json: &'static str) -> &'static RawValue {
    serde_json::from_str(json).unwrap_or(RawValue::NULL)
}

/// Tool-call arguments as a JSON object (empty arguments are `{}`); `None` when they are not one.
pub(crate) fn arguments_object(arguments_json: &str) -> Option<&RawValue> {
    let s = arguments_json.trim();
    let s = if s.is_empty() { "{}" } else { s };
    serde_json::from_str::<&RawValue>(s)
        .ok()
        .filter(|raw| is_object(raw))
}

/// The arguments of tool call `id` of a request, for a provider that takes them as a JSON
/// object: 400 `invalid_tool_arguments` when they are not one.
pub(crate) fn request_arguments<'a>(
    id: &str,
    arguments_json: &'a str,
) -> Result<&'a RawValue, FormatError> {
    arguments_object(arguments_json).ok_or_else(|| {
        FormatError::bad_request(
            "invalid_tool_arguments",
            format!("the arguments of tool call `{id}` are not a JSON object"),
        )
    })
}

/// Append `s` as a JSON string.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Append `"key":`.
pub(crate) fn write_key(out: &mut Vec<u8>, key: &str) {
    write_str(out, key);
    out.push(b':');
}

pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "{n}");
}

/// Append any serializable value (typed wire structs, raw JSON).
pub(crate) fn write_value<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Serializing our wire structs (strings, numbers, raw JSON) into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Replace the closing `}` of the object just written at the end of `out` with
/// `,"k":v` for each extra field, and close it again.
pub(crate) fn append_fields<'a>(
    out: &mut Vec<u8>,
    fields: impl IntoIterator<Item = &'a (String, RawJson)>,
) {
    let mut fields = fields.into_iter().peekable();
    if fields.peek().is_none() || out.last() != Some(&b'}') {
        return;
    }
    out.pop();
    for (k, v) in fields {
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        write_key(out, k);
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
}

/// Start an SSE event: `event: <name>\n` (when named) and `data: `.
pub(crate) fn sse_begin(out: &mut Vec<u8>, event: Option<&str>) {
    if let Some(name) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
}

/// End an SSE event.
pub(crate) fn sse_end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct T {
        a: Option<u32>,
        s: Option<String>,
        extra: Vec<(String, RawJson)>,
    }

    impl<'de> TopLevel<'de> for T {
        fn field<A: MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
            match key {
                "a" => self.a = map.next_value()?,
                "s" => self.s = map.next_value()?,
                _ => return Ok(false),
            }
            Ok(true)
        }
        fn extra(&mut self) -> &mut Vec<(String, RawJson)> {
            &mut self.extra
        }
    }

    #[test]
    fn top_level_types_known_and_keeps_unknown() {
        let t: T = decode_top_level(br#"{"x":[1, {"y":2}],"a":3,"s":"q","z":null}"#).unwrap();
        assert_eq!((t.a, t.s.as_deref()), (Some(3), Some("q")));
        let extra: Vec<_> = t.extra.iter().map(|(k, v)| (k.as_str(), v.get())).collect();
        assert_eq!(extra, [("x", r#"[1, {"y":2}]"#), ("z", "null")]);
    }

    #[test]
    fn top_level_errors_name_the_field() {
        let e = decode_top_level::<T>(br#"{"a":"three"}"#).unwrap_err();
        assert_eq!(e.code, "invalid_field");
        assert!(e.message.starts_with("`a`: invalid type"), "{}", e.message);
        assert_eq!(
            decode_top_level::<T>(b"[1]").unwrap_err().code,
            "invalid_json"
        );
        assert_eq!(
            decode_top_level::<T>(b"{} x").unwrap_err().code,
            "invalid_json"
        );
        assert_eq!(
            decode_top_level::<T>(b"  ").unwrap_err().code,
            "invalid_request_body"
        );
        // Values kept raw are skipped without recursion, however deep; typed fields are bounded
        // by their types (and serde_json's recursion limit).
        let deep = |key: &str| {
            format!(
                "{{\"{key}\":{}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
        };
        assert!(decode_top_level::<T>(deep("x").as_bytes()).is_ok());
        assert_eq!(
            decode_top_level::<T>(deep("a").as_bytes())
                .unwrap_err()
                .code,
            "invalid_field"
        );
    }

    #[test]
    fn tool_arguments_must_be_objects() {
        assert_eq!(arguments_object("").map(RawValue::get), Some("{}"));
        assert_eq!(
            arguments_object(" {\"a\":1} ").map(RawValue::get),
            Some("{\"a\":1}")
        );
        assert!(arguments_object("[1]").is_none());
        assert!(arguments_object("{\"a\":").is_none());
        let e = request_arguments("c", "{oops").unwrap_err();
        assert_eq!((e.status, e.code), (400, "invalid_tool_arguments"));
    }

    #[test]
    fn appended_fields_close_the_object() {
        let mut out = br#"{"a":1}"#.to_vec();
        let extra = vec![("b".to_owned(), RawJson::parse("[2]").unwrap())];
        append_fields(&mut out, &extra);
        assert_eq!(out, br#"{"a":1,"b":[2]}"#);
    }

    #[test]
    fn str_or_seq() {
        let v: StrOrSeq<u8> = serde_json::from_str(r#""x""#).unwrap();
        assert!(matches!(v, StrOrSeq::Str(Cow::Borrowed("x"))));
        let v: StrOrSeq<u8> = serde_json::from_str("[1,2]").unwrap();
        assert!(matches!(v, StrOrSeq::Seq(ref s) if s == &[1, 2]));
        let v: StrOrSeq<u8> = serde_json::from_str("null").unwrap();
        assert!(matches!(v, StrOrSeq::Null));
        assert!(serde_json::from_str::<StrOrSeq<u8>>("3").is_err());
    }
}
