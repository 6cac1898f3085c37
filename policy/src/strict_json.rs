//! JSON read strictly where a second reading could differ: an object that gives a member name
//! twice is refused. RFC 8259 §4 leaves such an object's meaning to the parser (most keep the
//! last member, some the first, some refuse), so a token whose claims say `"cnf": {…}` and then
//! `"cnf": null` means one thing to its issuer and another to a gateway that kept the other
//! member. Checked at every depth; serde_json's own nesting limit bounds the depth. Used for
//! request bodies, for the parts of answers the gateway checks and passes on byte for byte
//! (patient references, a granular scope's elements, `contained`: [`tree_unique`]), and in the
//! gateway for tokens' headers and claims, introspection answers, key sets, and the answers to
//! its own reads through the backend (Consents, identities, a write's target).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Why a text is not strict JSON.
#[derive(Debug, thiserror::Error)]
pub enum StrictJsonError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    Syntax(String),
    /// An object gives the member `0` twice.
    #[error("the member {0:?} is given twice in one object")]
    Duplicate(String),
}

/// Checks that `bytes` are one JSON value in which no object gives a member name twice (names
/// compared after their escapes are read: `"a"` and `"\u0061"` are the same name).
pub fn unique_members(bytes: &[u8]) -> Result<(), StrictJsonError> {
    serde_json::from_slice::<Unique>(bytes)
        .map(|_| ())
        .map_err(|error| strict_error(&error))
}

/// `T` read from `bytes` that [`unique_members`] accepts: for the typed things the gateway
/// decides by (introspection answers, key sets). A tree is read in one pass by
/// [`tree_unique`].
pub fn from_slice_unique<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, StrictJsonError> {
    unique_members(bytes)?;
    serde_json::from_slice(bytes).map_err(|error| StrictJsonError::Syntax(error.to_string()))
}

/// `bytes` read as a tree in one pass, refused as [`unique_members`] refuses: for what the
/// gateway checks and then passes on byte for byte (an answer's patient references), where a
/// client that keeps the other member would read something else than what was checked.
pub fn tree_unique(bytes: &[u8]) -> Result<Value, StrictJsonError> {
    tree_unique_read(serde_json::Deserializer::from_slice(bytes))
}

/// The one reading of [`tree_unique`] and [`tree_unique_str`] (text: its UTF-8 is known good
/// and is not checked again string by string), whole and with nothing after it.
fn tree_unique_read<'de, R: serde_json::de::Read<'de>>(
    mut reader: serde_json::Deserializer<R>,
) -> Result<Value, StrictJsonError> {
    let tree = UniqueTree::deserialize(&mut reader).map_err(|error| strict_error(&error))?;
    reader.end().map_err(|error| strict_error(&error))?;
    Ok(tree.0)
}

/// [`tree_unique`] of a JSON text.
pub fn tree_unique_str(text: &str) -> Result<Value, StrictJsonError> {
    tree_unique_read(serde_json::Deserializer::from_str(text))
}

const MARK: &str = "duplicate member: ";

fn strict_error(error: &serde_json::Error) -> StrictJsonError {
    let text = error.to_string();
    match text.strip_prefix(MARK) {
        // serde_json appends the place: " at line 1 column 42".
        Some(rest) => StrictJsonError::Duplicate(
            rest.rsplit_once(" at line ")
                .map_or(rest, |(name, _)| name)
                .to_owned(),
        ),
        None => StrictJsonError::Syntax(text),
    }
}

/// A JSON value built as `serde_json::Value` is, refusing an object that gives a member twice.
struct UniqueTree(Value);

/// How serde_json hands over a number kept as its text (`arbitrary_precision`): a map of one
/// member with this name, whose value is the text.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// The member name by which serde_json (with `raw_value`) reads an object as the JSON text its
/// value holds, when a `serde_json::Value` is built: `{"$serde_json::private::RawValue":
/// "{\"reference\":\"Patient/x\"}"}` becomes `{"reference":"Patient/x"}`. An answer
/// holding it would say one thing to a check and another once rebuilt as a tree (as several
/// steps of the gateway do): refused wherever it is read.
pub const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

impl<'de> Deserialize<'de> for UniqueTree {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueTreeVisitor)
    }
}

struct UniqueTreeVisitor;

impl<'de> Visitor<'de> for UniqueTreeVisitor {
    type Value = UniqueTree;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<UniqueTree, M::Error> {
        let mut object = serde_json::Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if name == RAW_VALUE_TOKEN {
                return Err(M::Error::custom("a member named as serde_json's raw value"));
            }
            if object.is_empty() && name == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                let number = text
                    .parse::<serde_json::Number>()
                    .map_err(M::Error::custom)?;
                return Ok(UniqueTree(Value::Number(number)));
            }
            let value = map.next_value::<UniqueTree>()?.0;
            match object.entry(name) {
                serde_json::map::Entry::Vacant(vacant) => {
                    vacant.insert(value);
                }
                serde_json::map::Entry::Occupied(occupied) => {
                    return Err(M::Error::custom(format!("{MARK}{}", occupied.key())));
                }
            }
        }
        Ok(UniqueTree(Value::Object(object)))
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<UniqueTree, S::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<UniqueTree>()? {
            items.push(item.0);
        }
        Ok(UniqueTree(Value::Array(items)))
    }

    fn visit_bool<E>(self, value: bool) -> Result<UniqueTree, E> {
        Ok(UniqueTree(Value::Bool(value)))
    }
    fn visit_i64<E>(self, value: i64) -> Result<UniqueTree, E> {
        Ok(UniqueTree(Value::from(value)))
    }
    fn visit_u64<E>(self, value: u64) -> Result<UniqueTree, E> {
        Ok(UniqueTree(Value::from(value)))
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<UniqueTree, E> {
        serde_json::Number::from_f64(value)
            .map(|number| UniqueTree(Value::Number(number)))
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E>(self, value: &str) -> Result<UniqueTree, E> {
        Ok(UniqueTree(Value::String(value.to_owned())))
    }
    fn visit_string<E>(self, value: String) -> Result<UniqueTree, E> {
        Ok(UniqueTree(Value::String(value)))
    }
    fn visit_unit<E>(self) -> Result<UniqueTree, E> {
        Ok(UniqueTree(Value::Null))
    }
}

/// Any JSON value, read only to check its objects' member names.
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Unique, M::Error> {
        // A set, not a list: an object of thousands of members costs linear time, not square.
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(name) = map.next_key::<Cow<'de, str>>()? {
            if seen.contains(&name) {
                return Err(M::Error::custom(format!("{MARK}{name}")));
            }
            seen.insert(name);
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Unique, S::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_given_twice_is_found_at_any_depth_and_in_any_spelling() {
        for good in [
            &br#"{"a":1,"b":{"a":2},"c":[{"a":3},{"a":4}]}"#[..],
            br#"[]"#,
            br#""text""#,
            br#"{"cnf":{"x5t#S256":"abc"}}"#,
        ] {
            assert!(
                unique_members(good).is_ok(),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
        for (twice, name) in [
            (&br#"{"cnf":{"x5t#S256":"abc"},"cnf":null}"#[..], "cnf"),
            (br#"{"a":{"b":1,"b":2}}"#, "b"),
            (br#"[{"ok":1},{"x":1,"x":1}]"#, "x"),
            (br#"{"scope":"a","sc\u006fpe":"b"}"#, "scope"),
        ] {
            match unique_members(twice) {
                Err(StrictJsonError::Duplicate(found)) => assert_eq!(found, name),
                other => panic!("{}: {other:?}", String::from_utf8_lossy(twice)),
            }
        }
        assert!(matches!(
            unique_members(b"{\"a\":"),
            Err(StrictJsonError::Syntax(_))
        ));
        // Deep nesting stops at serde_json's limit, not at the stack's end.
        let deep = "[".repeat(100_000);
        assert!(matches!(
            unique_members(deep.as_bytes()),
            Err(StrictJsonError::Syntax(_))
        ));
        assert!(matches!(
            tree_unique(deep.as_bytes()),
            Err(StrictJsonError::Syntax(_))
        ));
    }

    #[test]
    fn a_tree_read_strictly_is_the_tree_serde_json_reads_or_refused() {
        for text in [
            r#"{"a":1,"b":{"a":2.50},"c":[{"a":-3e10},{"a":null}],"d":true,"e":"x\u0041"}"#,
            r#"[1.000000000000000000001, 18446744073709551616, -0.0, "", {}]"#,
            r#""text""#,
            "0.1",
        ] {
            let strict = tree_unique(text.as_bytes()).unwrap();
            let lenient: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict, lenient, "{text}");
            assert_eq!(strict.to_string(), lenient.to_string(), "{text}");
        }
        for (twice, name) in [
            (
                r#"{"subject":{"reference":"Patient/bo","reference":"Patient/anne"}}"#,
                "reference",
            ),
            (r#"[{"x":1,"\u0078":2}]"#, "x"),
        ] {
            match tree_unique(twice.as_bytes()) {
                Err(StrictJsonError::Duplicate(found)) => assert_eq!(found, name),
                other => panic!("{twice}: {other:?}"),
            }
        }
        // A member named as serde_json's raw value token, which a tree built by serde_json
        // reads as the JSON its value holds, is refused, however its name is spelled.
        for hidden in [
            r#"{"subject":{"$serde_json::private::RawValue":"{\"reference\":\"Patient/victim\"}"}}"#,
            r#"[{"a":1,"\u0024serde_json::private::RawValue":"1"}]"#,
        ] {
            assert!(
                matches!(
                    tree_unique(hidden.as_bytes()),
                    Err(StrictJsonError::Syntax(_))
                ),
                "{hidden}"
            );
        }
        // A member that merely looks like serde_json's number token is a member like others.
        let spoof = r#"{"a":1,"$serde_json::private::Number":"5"}"#;
        assert_eq!(
            tree_unique(spoof.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(spoof).unwrap()
        );
    }
}
