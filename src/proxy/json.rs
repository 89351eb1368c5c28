//! JSON as nbd-proxy's json-c 0.16 sees it (nbd-proxy.md §4, §5, §13): values that keep what
//! json-c keeps, its integer and truth coercions, and its "spaced" serialisation.
//!
//! Why not `serde_json::Value`: the contract needs object keys in file order, a duplicate key's
//! last value kept at the first key's position, integers clamped to 64 bits as json-c does, and
//! doubles printed with their source text (`12.50`, `1e3`). `Value` with `preserve_order` and
//! `arbitrary_precision` gets close, but those features change `serde_json` for the whole crate
//! (every other JSON producer in hexzd), and `arbitrary_precision` keeps integers' text too
//! (`-0` must print `0`). So `serde_json` (with the additive `raw_value` feature) does the
//! parsing, validation and string unescaping, and this file walks the raw text it returns.
//! Strict RFC 8259 only: the non-JSON json-c also accepts (comments, single quotes, ...) is
//! refused (§13 says it need not be reproduced).

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// json-c's default nesting limit (`JSON_TOKENER_DEFAULT_DEPTH`): documents nested deeper do
/// not parse.
pub const MAX_DEPTH: usize = 32;

/// A JSON value as json-c holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer within `i64` (json-c's int64 type), clamped at `i64::MIN`.
    Int(i64),
    /// An integer above `i64::MAX` (json-c's uint64 type), clamped at `u64::MAX`.
    Uint(u64),
    /// A number with a fraction or exponent, and its source text.
    Double(f64, String),
    /// A string (may contain NUL).
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object, in file order.
    Object(Object),
}

/// An object's members in file order; keys are unique.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object(pub Vec<(String, Value)>);

impl Object {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Adds a member as json-c does: a key seen before keeps its position and takes the new
    /// value. Keys are C strings in json-c, so a key is cut at its first NUL.
    pub fn insert(&mut self, key: String, value: Value) {
        let key = match key.find('\0') {
            Some(i) => key[..i].to_string(),
            None => key,
        };
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

/// Why a document did not parse.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON.
    #[error("{0}")]
    Syntax(#[from] serde_json::Error),
    /// Nested deeper than json-c allows.
    #[error("nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Parses a document. A top-level `null` parses (json-c then reports "no object", which the
/// caller treats as unreadable).
pub fn parse(text: &str) -> Result<Value, JsonError> {
    let raw: &RawValue = serde_json::from_str(text)?;
    convert(raw, 1)
}

/// Members of an object in file order, duplicates included.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut v = Vec::new();
                while let Some(k) = map.next_key::<String>()? {
                    v.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

fn convert(raw: &RawValue, depth: usize) -> Result<Value, JsonError> {
    // json-c counts every value, scalars included: the top level is depth 1, and a value
    // deeper than MAX_DEPTH fails the whole document (checked against json-c 0.16).
    if depth > MAX_DEPTH {
        return Err(JsonError::TooDeep);
    }
    let text = raw
        .get()
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    Ok(match text.as_bytes().first() {
        Some(b'{') => {
            let members: Members<'_> = serde_json::from_str(text)?;
            let mut o = Object::default();
            for (k, v) in members.0 {
                o.insert(k, convert(v, depth + 1)?);
            }
            Value::Object(o)
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            Value::Array(
                items
                    .into_iter()
                    .map(|v| convert(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
        Some(b'"') => Value::String(serde_json::from_str(text)?),
        Some(b't') => Value::Bool(true),
        Some(b'f') => Value::Bool(false),
        Some(b'n') => Value::Null,
        _ => number(text),
    })
}

/// A number literal (already validated) as json-c stores it: integers as int64 or uint64
/// clamped as `strtoll`/`strtoull` clamp, others as doubles with their text.
fn number(text: &str) -> Value {
    if text.contains(['.', 'e', 'E']) {
        return Value::Double(text.parse().unwrap_or(0.0), text.to_string());
    }
    if let Some(digits) = text.strip_prefix('-') {
        return Value::Int(match text.parse::<i64>() {
            Ok(n) => n,
            Err(_) if digits.bytes().all(|b| b.is_ascii_digit()) => i64::MIN,
            Err(_) => 0,
        });
    }
    match text.parse::<u64>() {
        Ok(n) => i64::try_from(n).map_or(Value::Uint(n), Value::Int),
        Err(_) => Value::Uint(u64::MAX),
    }
}

impl Value {
    /// `json_object_get_int`: the value as a 32-bit integer, clamped; strings are read with
    /// `strtoll` (leading space, sign, digits; anything else after them ignored), doubles
    /// truncated, `true` is 1, everything else 0.
    pub fn get_int(&self) -> i32 {
        let clamp = |n: i64| i32::try_from(n).unwrap_or(if n < 0 { i32::MIN } else { i32::MAX });
        match self {
            Value::Int(n) => clamp(*n),
            Value::Uint(_) => i32::MAX,
            Value::String(s) => strtoll(s).map_or(0, clamp),
            Value::Double(d, _) => {
                if *d <= f64::from(i32::MIN) {
                    i32::MIN
                } else if *d >= f64::from(i32::MAX) {
                    i32::MAX
                } else {
                    // In range: truncation toward zero, as C's cast.
                    #[allow(clippy::cast_possible_truncation)]
                    let n = d.trunc() as i32;
                    n
                }
            }
            Value::Bool(b) => i32::from(*b),
            Value::Null | Value::Array(_) | Value::Object(_) => 0,
        }
    }

    /// `json_object_get_boolean`: non-zero numbers and non-empty strings are true; `null`,
    /// arrays and objects are false.
    pub fn get_boolean(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Int(n) => *n != 0,
            Value::Uint(n) => *n != 0,
            Value::Double(d, _) => *d != 0.0,
            Value::String(s) => !s.is_empty(),
            Value::Null | Value::Array(_) | Value::Object(_) => false,
        }
    }
}

/// C's `strtoll(s, &end, 10)` as json-c uses it: `None` when no digit was converted; out of
/// range values clamp to `i64::MIN`/`i64::MAX`. json-c strings are C strings here, so a NUL
/// ends the text.
fn strtoll(s: &str) -> Option<i64> {
    let s = s.split('\0').next().unwrap_or("");
    let s = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let mut n: i64 = 0;
    for b in rest[..digits].bytes() {
        let d = i64::from(b - b'0');
        let next = n.checked_mul(10).and_then(|n| {
            if negative {
                n.checked_sub(d)
            } else {
                n.checked_add(d)
            }
        });
        match next {
            Some(v) => n = v,
            None => return Some(if negative { i64::MIN } else { i64::MAX }),
        }
    }
    Some(n)
}

/// Serialises as `json_object_to_json_string` (json-c's spaced style): `{ "k": v, "k2": v2 }`,
/// `{ }`, `[ 1, 2 ]`, `[ ]`, `/` escaped as `\/`, control characters as `\n`-style or `\u00XX`
/// escapes, everything else (DEL, non-ASCII) raw; doubles print their source text.
pub fn to_json_c_string(v: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, v);
    out
}

fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => out.push_str(&n.to_string()),
        Value::Uint(n) => out.push_str(&n.to_string()),
        Value::Double(_, text) => out.push_str(text),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { " " } else { ", " });
                write_value(out, item);
            }
            out.push_str(" ]");
        }
        Value::Object(o) => write_object(out, o),
    }
}

/// Writes an object in json-c's spaced style.
pub fn write_object(out: &mut String, o: &Object) {
    out.push('{');
    for (i, (k, v)) in o.0.iter().enumerate() {
        out.push_str(if i == 0 { " " } else { ", " });
        write_string(out, k);
        out.push_str(": ");
        write_value(out, v);
    }
    out.push_str(" }");
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '\u{8}' => out.push_str("\\b"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{c}' => out.push_str("\\f"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' => out.push_str("\\/"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(text: &str) -> String {
        to_json_c_string(&parse(text).unwrap())
    }

    #[test]
    fn spaced_style_objects_and_arrays() {
        assert_eq!(
            roundtrip(r#"{"a":1,"b":[1,2],"c":{}}"#),
            r#"{ "a": 1, "b": [ 1, 2 ], "c": { } }"#
        );
        assert_eq!(roundtrip("[]"), "[ ]");
        assert_eq!(roundtrip("{}"), "{ }");
        assert_eq!(roundtrip("[null,true,false]"), "[ null, true, false ]");
    }

    #[test]
    fn strings_escape_slash_and_controls_but_not_utf8_or_del() {
        assert_eq!(roundtrip(r#""a/b""#), r#""a\/b""#);
        assert_eq!(roundtrip(r#""\u00e9""#), "\"é\"");
        assert_eq!(roundtrip(r#""\n\t\r\b\f\"\\""#), r#""\n\t\r\b\f\"\\""#);
        assert_eq!(roundtrip(r#""\u0001\u001f""#), r#""\u0001\u001f""#);
        assert_eq!(roundtrip("\"\u{7f}\""), "\"\u{7f}\"");
        assert_eq!(roundtrip(r#""a\u0000b""#), r#""a\u0000b""#);
    }

    #[test]
    fn numbers_as_json_c_keeps_them() {
        assert_eq!(
            roundtrip("[12.50, 1e3, 1.0, 1E-2, -0.0]"),
            "[ 12.50, 1e3, 1.0, 1E-2, -0.0 ]"
        );
        assert_eq!(roundtrip("[-0, 0, 42, -42]"), "[ 0, 0, 42, -42 ]");
        assert_eq!(
            roundtrip("[9223372036854775807, 9223372036854775808]"),
            "[ 9223372036854775807, 9223372036854775808 ]"
        );
        assert_eq!(
            roundtrip("[99999999999999999999999, -99999999999999999999999]"),
            "[ 18446744073709551615, -9223372036854775808 ]"
        );
        assert_eq!(roundtrip("1e400"), "1e400");
    }

    #[test]
    fn duplicate_keys_keep_the_first_position_and_the_last_value() {
        assert_eq!(roundtrip(r#"{"a":1,"b":2,"a":3}"#), r#"{ "a": 3, "b": 2 }"#);
        // Keys are C strings: cut at NUL, so these two are one key.
        assert_eq!(roundtrip(r#"{"x\u0000y":1,"x":2}"#), r#"{ "x": 2 }"#);
    }

    #[test]
    fn non_json_and_too_deep_documents_are_refused() {
        for bad in [
            "",
            "{",
            "{'a':1}",
            "[1,]",
            "01",
            "[1] x",
            "\u{feff}{}",
            "/*c*/{}",
            "NaN",
            "TRUE",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&deep(MAX_DEPTH)).is_ok());
        assert!(matches!(
            parse(&deep(MAX_DEPTH + 1)),
            Err(JsonError::TooDeep)
        ));
        // A scalar counts as a level too.
        let scalar = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(parse(&scalar(MAX_DEPTH - 1)).is_ok());
        assert!(matches!(parse(&scalar(MAX_DEPTH)), Err(JsonError::TooDeep)));
        assert_eq!(parse("null").unwrap(), Value::Null);
    }

    /// nbd-proxy.md §4, the `timeout` column.
    #[test]
    fn get_int_coercions() {
        let int = |t: &str| parse(t).unwrap().get_int();
        assert_eq!(int("45"), 45);
        assert_eq!(int("-5"), -5);
        assert_eq!(int("12.7"), 12);
        assert_eq!(int("-12.7"), -12);
        assert_eq!(int(r#""45x""#), 45);
        assert_eq!(int(r#""  7""#), 7);
        assert_eq!(int(r#""+7""#), 7);
        for zero in [
            r#""abc""#, r#""""#, "null", "{}", "[]", "false", r#""-""#, r#""- 7""#,
        ] {
            assert_eq!(int(zero), 0, "{zero}");
        }
        assert_eq!(int("true"), 1);
        assert_eq!(int("99999999999"), i32::MAX);
        assert_eq!(int("1e30"), i32::MAX);
        assert_eq!(int("-1e30"), i32::MIN);
        assert_eq!(int("18446744073709551615"), i32::MAX);
        assert_eq!(int(r#""99999999999999999999""#), i32::MAX);
        assert_eq!(int(r#""-99999999999""#), i32::MIN);
    }

    /// nbd-proxy.md §4, the `default` column.
    #[test]
    fn get_boolean_truthiness() {
        let b = |t: &str| parse(t).unwrap().get_boolean();
        for yes in [
            "true",
            "1",
            "0.5",
            r#""false""#,
            r#""0""#,
            "-1",
            "18446744073709551615",
        ] {
            assert!(b(yes), "{yes}");
        }
        for no in [
            "false", "0", "0.0", r#""""#, "{}", "[]", "null", "-0.0", "1e-400",
        ] {
            assert!(!b(no), "{no}");
        }
    }
}
