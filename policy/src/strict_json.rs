//! JSON read strictly where a second reading could differ: an object that gives a member name
//! twice is refused. RFC 8259 §4 leaves such an object's meaning to the parser (most keep the
//! last member, some the first, some refuse), so a token whose claims say `"cnf": {…}` and then
//! `"cnf": null` means one thing to its issuer and another to a gateway that kept the other
//! member. Checked at every depth; serde_json's own nesting limit bounds the depth. Used for
//! request bodies, and in the gateway for tokens' headers and claims, introspection answers,
//! key sets, and the answers to its own reads through the backend (Consents, identities, a
//! write's target).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

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
    const MARK: &str = "duplicate member: ";
    serde_json::from_slice::<Unique>(bytes)
        .map(|_| ())
        .map_err(|error| {
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
        })
}

/// `T` read from `bytes` that [`unique_members`] accepts: for what the gateway decides by
/// (introspection answers, key sets, its own reads of Consents and owners).
pub fn from_slice_unique<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, StrictJsonError> {
    unique_members(bytes)?;
    serde_json::from_slice(bytes).map_err(|error| StrictJsonError::Syntax(error.to_string()))
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
                return Err(M::Error::custom(format!("duplicate member: {name}")));
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
    }
}
