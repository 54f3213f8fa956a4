//! Reading the JSON of one event (a "frame") without building a tree of it.
//!
//! [`parse`] checks a frame once, whole: well-formed JSON, strings that
//! decode, nesting under serde_json's limit (128 levels deep is an error, as
//! it is for `serde_json::Value`, well before the stack is at risk). After
//! that a [`Json`] reads the frame in place, like `serde_json::Value`'s
//! accessors but lazily: each lookup scans the text it is asked about and
//! borrows the part it finds. A frame therefore costs no memory beyond the strings the
//! parser keeps, whatever its shape; a `Value` takes 72 bytes per JSON
//! node, 36 times the size of a frame like `[0,0,0,...]` (more while its
//! vectors grow).
//!
//! [`wire_index`] reads the indexes that servers number streamed pieces
//! with, and refuses any that is not a whole number in range.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::ProviderError;

/// A JSON value inside a checked frame, as borrowed text, or nothing (a
/// missing key or element; reading from nothing gives nothing). Reading a
/// value as the wrong type gives `None`, as `Value::as_str` and its kin do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Json<'a>(Option<&'a str>);

/// Checks that `text` is one JSON value as described in the module doc, and
/// returns it for reading.
pub(crate) fn parse(text: &str) -> Result<Json<'_>, serde_json::Error> {
    serde_json::from_str::<Checked>(text)?;
    Ok(Json(Some(text.trim())))
}

impl<'a> Json<'a> {
    /// Whether there is a value here (`null` included).
    pub fn is_some(self) -> bool {
        self.0.is_some()
    }

    /// Whether there is no value here.
    pub fn is_none(self) -> bool {
        self.0.is_none()
    }

    /// Whether the value is an object.
    pub fn is_object(self) -> bool {
        self.0.is_some_and(|t| t.starts_with('{'))
    }

    /// The value's JSON text, exactly as the frame has it.
    pub fn raw(self) -> Option<&'a str> {
        self.0
    }

    /// The value of `key`, when this is an object that has it (the last
    /// one, if the key repeats).
    pub fn get(self, key: &str) -> Json<'a> {
        Json(self.read(|de| de.deserialize_map(FindKey(key))).flatten().map(RawValue::get))
    }

    /// Element `index`, when this is an array that long.
    pub fn at(self, index: usize) -> Json<'a> {
        Json(self.read(|de| de.deserialize_seq(FindElement(index))).flatten().map(RawValue::get))
    }

    /// Calls `f` with each element, when this is an array, and stops at the
    /// first error.
    pub fn each<E>(self, f: impl FnMut(Json<'a>) -> Result<(), E>) -> Result<(), E> {
        let mut each = Each { f, failed: None };
        self.read(|de| de.deserialize_seq(&mut each));
        match each.failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The value as a string, borrowed when it has no escapes.
    pub fn str(self) -> Option<Cow<'a, str>> {
        self.read(|de| de.deserialize_str(StrVisitor))
    }

    /// The value as an unsigned integer.
    pub fn u64(self) -> Option<u64> {
        self.read(|de| u64::deserialize(de))
    }

    /// The value as a boolean.
    pub fn bool(self) -> Option<bool> {
        self.read(|de| bool::deserialize(de))
    }

    /// The value as a number of any kind.
    pub fn number(self) -> Option<serde_json::Number> {
        self.read(|de| serde_json::Number::deserialize(de))
    }

    fn read<T>(
        self,
        f: impl FnOnce(&mut serde_json::Deserializer<serde_json::de::StrRead<'a>>) -> Result<T, serde_json::Error>,
    ) -> Option<T> {
        f(&mut serde_json::Deserializer::from_str(self.0?)).ok()
    }
}

/// Reads an index a server numbers streamed pieces with (`what` names it in
/// the error). Absent or `null` reads as 0: some servers omit the index
/// when there is one call. A negative, fractional or non-numeric
/// index is malformed; one of `cap` or more is out of range. Both are fatal.
pub(crate) fn wire_index(
    provider: &'static str,
    what: &str,
    value: Json<'_>,
    cap: usize,
) -> Result<usize, ProviderError> {
    let text = match value.raw() {
        None | Some("null") => return Ok(0),
        Some(text) => text,
    };
    let out_of_range = |n: &dyn fmt::Display| {
        ProviderError::fatal(provider, format!("{what} {n} is out of range (must be below {cap})"))
    };
    match value.number() {
        Some(n) => match n.as_u64() {
            Some(i) => usize::try_from(i).ok().filter(|i| *i < cap).ok_or_else(|| out_of_range(&n)),
            // Integers past u64 arrive as floats.
            None if n.as_f64().is_some_and(|f| f >= u64::MAX as f64) => Err(out_of_range(&text)),
            None => Err(malformed(provider, what, text)),
        },
        None => Err(malformed(provider, what, text)),
    }
}

fn malformed(provider: &'static str, what: &str, text: &str) -> ProviderError {
    let shown: String = text.chars().take(40).collect();
    let cut = if shown.len() < text.len() { "..." } else { "" };
    ProviderError::fatal(provider, format!("{what} {shown}{cut} is not a non-negative integer"))
}

/// Deserializes any JSON value while storing nothing: the whole-frame check.
struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        d.deserialize_any(Checked)
    }
}

impl<'de> Visitor<'de> for Checked {
    type Value = Checked;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_unit<E>(self) -> Result<Checked, E> {
        Ok(Checked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Checked, A::Error> {
        while seq.next_element::<Checked>()?.is_some() {}
        Ok(Checked)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Checked, A::Error> {
        while map.next_entry::<Checked, Checked>()?.is_some() {}
        Ok(Checked)
    }
}

/// Finds the value of one key in an object.
struct FindKey<'k>(&'k str);

impl<'de> Visitor<'de> for FindKey<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(self.0))? {
            if hit {
                found = Some(map.next_value::<&'de RawValue>()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Whether a key is the one sought, without copying it.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == self.0)
    }
}

/// Finds one element of an array.
struct FindElement(usize);

impl<'de> Visitor<'de> for FindElement {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut i = 0;
        loop {
            if i == self.0 {
                match seq.next_element::<&'de RawValue>()? {
                    Some(element) => found = Some(element),
                    None => break,
                }
            } else if seq.next_element::<IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }
}

/// Hands each element of an array to a function; an error from it stops
/// the walk and is kept for the caller.
struct Each<F, E> {
    f: F,
    failed: Option<E>,
}

impl<'de, F: FnMut(Json<'de>) -> Result<(), E>, E> Visitor<'de> for &mut Each<F, E> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            if let Err(e) = (self.f)(Json(Some(element.get()))) {
                self.failed = Some(e);
                return Err(de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_like_value_accessors() {
        let text = r#" {"a": {"b": [1, "two", {"c": true}]}, "s": "x\u00e9y", "n": -3, "a2": null, "d": 1, "d": 2} "#;
        let j = parse(text).unwrap();
        assert_eq!(j.get("a").get("b").at(0).u64(), Some(1));
        assert_eq!(j.get("a").get("b").at(1).str().as_deref(), Some("two"));
        assert_eq!(j.get("a").get("b").at(2).get("c").bool(), Some(true));
        assert!(j.get("a").get("b").at(3).raw().is_none());
        assert_eq!(j.get("s").str().as_deref(), Some("xéy"));
        assert_eq!(j.get("n").u64(), None, "a negative number is no u64");
        assert_eq!(j.get("a").str(), None, "an object is no string");
        assert!(j.get("a2").is_some() && j.get("a2").str().is_none());
        assert!(j.get("missing").is_none());
        assert_eq!(j.get("d").u64(), Some(2), "the last of a repeated key wins");
        assert!(j.get("a").is_object() && !j.get("s").is_object());
        let mut seen = Vec::new();
        let collected: Result<(), ()> = j.get("a").get("b").each(|e| {
            seen.push(e.raw().unwrap().to_string());
            Ok(())
        });
        collected.unwrap();
        assert_eq!(seen, ["1", "\"two\"", "{\"c\": true}"]);
        assert_eq!(j.get("s").each(|_| Err("called")), Ok(()), "a string has no elements");
        assert_eq!(j.get("a").get("b").each(|_| Err("stop")), Err("stop"));
    }

    #[test]
    fn malformed_frames_are_errors() {
        for text in ["", "{", "{\"a\":}", "[1,]", "\"\\ud800\"", "\"\\q\"", "{} {}", "1e400"] {
            assert!(parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn nesting_128_levels_deep_is_an_error_not_a_stack_overflow() {
        let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse(&nested(127)).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&nested(128)).is_err(), "the same limit as Value's");
        let error = parse(&nested(128)).unwrap_err();
        assert!(error.to_string().contains("recursion limit"), "{error}");
        let deep = format!(r#"{{"a": {}}}"#, nested(1_000_000));
        assert!(parse(&deep).unwrap_err().to_string().contains("recursion limit"));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(1_000_000), "}".repeat(1_000_000));
        assert!(parse(&objects).is_err());
    }

    fn index(text: &str) -> Result<usize, String> {
        wire_index("test", "tool call index", parse(text).unwrap(), 128).map_err(|e| e.to_string())
    }

    #[test]
    fn wire_indexes_are_whole_numbers_below_the_cap() {
        assert_eq!(index("0"), Ok(0));
        assert_eq!(index("127"), Ok(127));
        assert_eq!(index("null"), Ok(0));
        assert_eq!(wire_index("test", "index", Json::default(), 128).unwrap(), 0, "absent reads as 0");
        assert_eq!(index("128").unwrap_err(), "test: tool call index 128 is out of range (must be below 128)");
        assert!(index("4000000000").unwrap_err().contains("4000000000 is out of range"));
        assert!(index(&u64::MAX.to_string()).unwrap_err().contains("out of range"));
        assert_eq!(index("-1").unwrap_err(), "test: tool call index -1 is not a non-negative integer");
        assert!(index("18446744073709551616").unwrap_err().contains("out of range"));
        for bad in ["1.5", "1.0", "1e3", "-1e30", "\"3\"", "[3]", "{}", "true"] {
            assert!(index(bad).unwrap_err().contains("is not a non-negative integer"), "{bad}");
        }
        let long = format!("\"{}\"", "x".repeat(10_000));
        assert!(index(&long).unwrap_err().len() < 120, "a long value is shortened in the message");
    }
}
