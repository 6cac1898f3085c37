//! A JSON object read as ordered (key, raw value) pairs: no tree is built, untouched values are
//! written back byte for byte. The response filter's light pass rests on it, and a Bundle's
//! entries are read in the same pass ([`RawBundle`]) to find an answer's patients and to rewrite
//! a searchset's URLs.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A member named as serde_json's raw value token is refused: a tree built of the same bytes
/// would read it as other JSON ([`crate::strict_json::RAW_VALUE_TOKEN`]).
fn refuse_token<E: serde::de::Error>(key: &str) -> Result<(), E> {
    if key == crate::strict_json::RAW_VALUE_TOKEN {
        return Err(E::custom("a member named as serde_json's raw value"));
    }
    Ok(())
}

/// `T` read from a body: its UTF-8 checked once as a whole, then read as text, so that it is
/// not checked again in every string and raw value (as reading from bytes does). Invalid UTF-8
/// anywhere is refused, as it was when each raw value checked its own.
pub fn from_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    serde_json::from_str(std::str::from_utf8(body).ok()?).ok()
}

/// A raw value's string (`None` when it is no string): borrowed as it stands when it holds no
/// escape, which is every `resourceType` and nearly every id. The raw value was read as JSON,
/// so a string without a backslash has nothing to decode: no quote or control character can be
/// in it unescaped.
fn raw_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    match text
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str(text).ok(),
    }
}

/// A member name as read from JSON text: borrowed from the text when it held no escape, else
/// decoded (serde's own `Cow<str>` is always copied: one allocation per member read). A name
/// borrowed so is written back as it stood: nothing in it needs an escape, since no quote,
/// backslash or control character stands unescaped in a JSON string. Only this module makes
/// one, and only from the text of a raw value (the values beside it could not be read else).
#[derive(Debug)]
struct Key<'a>(Cow<'a, str>);

impl Key<'_> {
    /// The name as a JSON string, appended to `out`.
    fn write_json(&self, out: &mut Vec<u8>) {
        match &self.0 {
            Cow::Borrowed(name) => {
                debug_assert!(plain(name), "a name borrowed from JSON text: {name:?}");
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.push(b'"');
            }
            Cow::Owned(name) => write_key(out, name),
        }
    }
}

impl PartialEq for Key<'_> {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl PartialEq<str> for Key<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Key<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl std::ops::Deref for Key<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                key: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, key: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A JSON object as ordered (key, raw value) pairs: read without building a tree, written back
/// with the untouched values byte for byte. Reading one refuses a key given twice (which of the
/// two counts differs between parsers).
#[derive(Debug, Default)]
pub struct OrderedRaw<'a> {
    fields: Vec<(Key<'a>, RawSlot<'a>)>,
    /// Read as one object, every member of it kept: its members stand together in its text
    /// ([`Self::write_json_from`]). Not so for one put together of some of another's.
    whole: bool,
}

#[derive(Debug)]
pub(crate) enum RawSlot<'a> {
    Borrowed(&'a RawValue),
    Owned(Box<RawValue>),
}

impl RawSlot<'_> {
    fn raw(&self) -> &RawValue {
        match self {
            RawSlot::Borrowed(raw) => raw,
            RawSlot::Owned(raw) => raw,
        }
    }
}

impl<'a> OrderedRaw<'a> {
    /// The value of `key` if it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).and_then(raw_str)
    }

    /// The value of `key`, as its bytes.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.raw())
    }

    /// Adds `key` at the end (one not there yet).
    fn push(&mut self, key: Key<'a>, value: &'a RawValue) {
        self.fields.push((key, RawSlot::Borrowed(value)));
    }

    /// Puts `value` in the place of `key`'s (nothing when `key` is absent).
    pub fn replace(&mut self, key: &str, value: Box<RawValue>) {
        if let Some(slot) = self.fields.iter_mut().find(|(k, _)| k == key) {
            slot.1 = RawSlot::Owned(value);
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for OrderedRaw<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for OrderedVisitor<'a> {
            type Value = OrderedRaw<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                // (Room for a resource's usual members: growing the list was an allocation in three.)
                let mut fields = Vec::with_capacity(16);
                while let Some((key, value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    // Duplicate keys: this reader would see the first, a JavaScript client the
                    // last. Refuse rather than check one and show the other.
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    refuse_token(&key)?;
                    fields.push((key, RawSlot::Borrowed(value)));
                }
                Ok(OrderedRaw {
                    fields,
                    whole: true,
                })
            }
        }
        deserializer.deserialize_map(OrderedVisitor(std::marker::PhantomData))
    }
}

/// A JSON object read in one pass as [`OrderedRaw`] is, except that its `entry` is read as a
/// list of `E` (a Bundle's entries as the reader needs them), so that no entry is scanned twice.
/// A key given twice is refused, as in [`OrderedRaw`].
#[derive(Debug)]
pub struct RawBundle<'a, E> {
    fields: Vec<(Key<'a>, BundleField<'a, E>)>,
}

/// A field of a [`RawBundle`]: its bytes, or the entries.
#[derive(Debug)]
pub enum BundleField<'a, E> {
    /// Any field but `entry`, as its bytes.
    Raw(&'a RawValue),
    /// `entry`.
    Entries(Vec<E>),
}

impl<'a, E> RawBundle<'a, E> {
    /// The value of `key` (not `entry`) if it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<Cow<'_, str>> {
        self.fields.iter().find_map(|(k, field)| match field {
            BundleField::Raw(raw) if k == key => raw_str(raw),
            _ => None,
        })
    }

    /// The fields in order, `entry` among them.
    pub fn fields_mut(&mut self) -> impl Iterator<Item = (&str, &mut BundleField<'a, E>)> {
        self.fields.iter_mut().map(|(key, field)| (&**key, field))
    }

    /// The entries, and the other fields as an [`OrderedRaw`].
    pub(crate) fn split(self) -> (Option<Vec<E>>, OrderedRaw<'a>) {
        let mut entries = None;
        let mut rest = OrderedRaw::default();
        for (key, field) in self.fields {
            match field {
                BundleField::Raw(raw) => rest.push(key, raw),
                BundleField::Entries(list) => entries = Some(list),
            }
        }
        (entries, rest)
    }
}

impl<'de: 'a, 'a, E: Deserialize<'de>> Deserialize<'de> for RawBundle<'a, E> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BundleVisitor<'a, E>(std::marker::PhantomData<(&'a (), E)>);
        impl<'de: 'a, 'a, E: Deserialize<'de>> Visitor<'de> for BundleVisitor<'a, E> {
            type Value = RawBundle<'a, E>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields: Vec<(Key<'a>, BundleField<'a, E>)> = Vec::new();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    refuse_token(&key)?;
                    let field = if key == "entry" {
                        BundleField::Entries(map.next_value()?)
                    } else {
                        BundleField::Raw(map.next_value()?)
                    };
                    fields.push((key, field));
                }
                Ok(RawBundle { fields })
            }
        }
        deserializer.deserialize_map(BundleVisitor(std::marker::PhantomData))
    }
}

/// A Bundle entry read in one pass: its fields in order as raw values, except `resource`, read
/// as its own fields ([`OrderedRaw`]), so that whoever rewrites the entry and whoever reads whose
/// data its resource is share one scan of it. Written back field by field. A key given twice,
/// in the entry or at the top of its resource, is refused.
#[derive(Debug, Default)]
pub struct RawEntry<'a> {
    fields: Vec<(Key<'a>, EntrySlot<'a>)>,
}

#[derive(Debug)]
enum EntrySlot<'a> {
    Raw(RawSlot<'a>),
    Resource(OrderedRaw<'a>),
}

impl<'a> RawEntry<'a> {
    /// The value of `key` (not `resource`) if it is a JSON string.
    pub fn get_str(&self, key: &str) -> Option<Cow<'_, str>> {
        self.get(key).and_then(raw_str)
    }

    /// The value of `key` (not `resource`), as its bytes.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.fields.iter().find_map(|(k, slot)| match slot {
            EntrySlot::Raw(raw) if k == key => Some(raw.raw()),
            _ => None,
        })
    }

    /// Puts `value` in the place of `key`'s (not `resource`; nothing when `key` is absent).
    pub fn replace(&mut self, key: &str, value: Box<RawValue>) {
        for (k, slot) in &mut self.fields {
            if k == key && matches!(slot, EntrySlot::Raw(_)) {
                *slot = EntrySlot::Raw(RawSlot::Owned(value));
                return;
            }
        }
    }

    /// The entry's resource, read as its fields.
    pub fn resource(&self) -> Option<&OrderedRaw<'a>> {
        self.fields.iter().find_map(|(_, slot)| match slot {
            EntrySlot::Resource(resource) => Some(resource),
            EntrySlot::Raw(_) => None,
        })
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawEntry<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EntryVisitor<'a> {
            type Value = RawEntry<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut fields: Vec<(Key<'a>, EntrySlot<'a>)> = Vec::new();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom("duplicate key"));
                    }
                    refuse_token(&key)?;
                    let slot = if key == "resource" {
                        EntrySlot::Resource(map.next_value()?)
                    } else {
                        EntrySlot::Raw(RawSlot::Borrowed(map.next_value()?))
                    };
                    fields.push((key, slot));
                }
                Ok(RawEntry { fields })
            }
        }
        deserializer.deserialize_map(EntryVisitor(std::marker::PhantomData))
    }
}

impl RawEntry<'_> {
    /// The entry as JSON, appended to `out`: untouched values byte for byte, and the value of
    /// `key` (not `resource`), when there is one, written as `json`: JSON text its caller made
    /// (a rewritten URL), not checked here. With `text`, the JSON text the entry was read from,
    /// its resource is copied from it as it stands there ([`OrderedRaw::write_json_from`]).
    pub fn write_json_with(
        &self,
        out: &mut Vec<u8>,
        with: Option<(&str, &str)>,
        text: Option<&[u8]>,
    ) {
        write_object(out, self.fields.iter(), |out, key, slot| {
            match (slot, with) {
                (EntrySlot::Raw(_), Some((name, json))) if key == name => {
                    out.extend_from_slice(json.as_bytes());
                }
                (EntrySlot::Raw(raw), _) => out.extend_from_slice(raw.raw().get().as_bytes()),
                (EntrySlot::Resource(resource), _) => match text {
                    Some(text) => resource.write_json_from(out, text),
                    None => resource.write_json(out),
                },
            }
        });
    }
}

impl OrderedRaw<'_> {
    /// The object as JSON, appended to `out`: untouched values byte for byte.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_with(out, None, None);
    }

    /// [`Self::write_json`], with the value of `key`, when there is one, written as `json`:
    /// JSON text its caller made (a rewritten URL), not checked here. Without one, and with
    /// `text`, the JSON text the object was read from, [`Self::write_json_from`].
    pub fn write_json_with(
        &self,
        out: &mut Vec<u8>,
        with: Option<(&str, &str)>,
        text: Option<&[u8]>,
    ) {
        if let (None, Some(text)) = (with, text) {
            return self.write_json_from(out, text);
        }
        write_object(out, self.fields.iter(), |out, key, slot| match with {
            Some((name, json)) if key == name => out.extend_from_slice(json.as_bytes()),
            _ => out.extend_from_slice(slot.raw().get().as_bytes()),
        });
    }

    /// [`Self::write_json`] in one copy from `text`, the JSON text the object was read from:
    /// its members as they stand there, from its first name's opening quote to the end of its
    /// last value (between them, nothing but its other members, commas and white space, all
    /// read and checked when it was). Member by member instead when that span is not in `text`,
    /// when a value was replaced since (the text no longer says what the object holds), when
    /// its first name held an escape (decoded, it shows no place in the text), or when it was
    /// not read as one whole object (the rest of a Bundle without its entries: between its
    /// members in the text stand the entries).
    pub fn write_json_from(&self, out: &mut Vec<u8>, text: &[u8]) {
        match self.span_in(text) {
            Some(members) => {
                out.push(b'{');
                out.extend_from_slice(members);
                out.push(b'}');
            }
            None => self.write_json(out),
        }
    }

    /// Where this object's members stand in `text`, if they do ([`Self::write_json_from`]).
    fn span_in<'t>(&self, text: &'t [u8]) -> Option<&'t [u8]> {
        if !self.whole {
            return None;
        }
        let (Key(Cow::Borrowed(first)), _) = self.fields.first()? else {
            return None;
        };
        let (_, RawSlot::Borrowed(last)) = self.fields.last()? else {
            return None;
        };
        if self
            .fields
            .iter()
            .any(|(_, slot)| matches!(slot, RawSlot::Owned(_)))
        {
            return None;
        }
        // Offsets by address: a slice whose bytes lie within `text` is of `text` (the memory of
        // two live values does not overlap), so its bytes there are the name and value read.
        let base = text.as_ptr() as usize;
        let start = (first.as_ptr() as usize)
            .checked_sub(base)?
            .checked_sub(1)?;
        let last = last.get();
        let end = (last.as_ptr() as usize + last.len()).checked_sub(base)?;
        let members = text.get(start..end)?;
        (members.first() == Some(&b'"')).then_some(members)
    }

    /// The object as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        out
    }
}

/// `{"key":value,…}` appended to `out`, each value written by `value` (given its key).
fn write_object<'f, 'a: 'f, V: 'f>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = &'f (Key<'a>, V)>,
    mut value: impl FnMut(&mut Vec<u8>, &str, &V),
) {
    out.push(b'{');
    for (index, (key, slot)) in fields.enumerate() {
        if index > 0 {
            out.push(b',');
        }
        key.write_json(out);
        out.push(b':');
        value(out, key, slot);
    }
    out.push(b'}');
}

/// A member name as a JSON string: as it is when nothing in it needs an escape (the names a
/// FHIR server writes), else escaped as serde_json escapes it.
pub fn write_key(out: &mut Vec<u8>, key: &str) {
    if plain(key) {
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.push(b'"');
    } else {
        // (Writing a string to a Vec cannot fail.)
        let _ = serde_json::to_writer(&mut *out, key);
    }
}

/// Whether nothing in `text` needs an escape in a JSON string.
pub fn plain(text: &str) -> bool {
    text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::OrderedRaw;

    /// An object written from the text it was read from is its members as they stand there;
    /// where that cannot be (a value replaced, its first name escaped, another text), it is
    /// written member by member; either way it reads back as the object read.
    #[test]
    fn an_object_is_copied_from_its_text_only_when_the_text_says_what_it_holds() {
        let text = "[ { \"a\" : 1 ,\n \"b\\u0062\" : [ \"x\\\"\" , { } ] , \"c\" : { \"d\" : null } } , \
                    {\"\\u0061\":1,\"b\":2} , {} ]";
        let objects: Vec<OrderedRaw<'_>> = super::from_body(text.as_bytes()).unwrap();
        let read: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        let written = |object: &OrderedRaw<'_>, from: &[u8]| {
            let mut out = Vec::new();
            object.write_json_from(&mut out, from);
            String::from_utf8(out).unwrap()
        };
        // Copied as it stands, white space and escapes kept.
        assert_eq!(
            written(&objects[0], text.as_bytes()),
            "{\"a\" : 1 ,\n \"b\\u0062\" : [ \"x\\\"\" , { } ] , \"c\" : { \"d\" : null }}"
        );
        // The first name escaped, the object empty, another text: member by member.
        assert_eq!(written(&objects[1], text.as_bytes()), r#"{"a":1,"b":2}"#);
        assert_eq!(written(&objects[2], text.as_bytes()), "{}");
        let other = text.to_owned();
        assert!(!written(&objects[0], other.as_bytes()).contains('\n'));
        for (object, read) in objects.iter().zip(&read) {
            for from in [text.as_bytes(), other.as_bytes()] {
                let back: serde_json::Value = serde_json::from_str(&written(object, from)).unwrap();
                assert_eq!(&back, read);
            }
        }
        // Put together of some of another's members: what stands between them is not its own.
        let bundle =
            r#"{"resourceType":"Bundle","entry":[{"resource":{"id":"x"}}],"type":"searchset"}"#;
        let read: super::RawBundle<'_, super::RawEntry<'_>> =
            super::from_body(bundle.as_bytes()).unwrap();
        let (_, rest) = read.split();
        assert_eq!(
            written(&rest, bundle.as_bytes()),
            r#"{"resourceType":"Bundle","type":"searchset"}"#
        );
        // A value replaced, last or not: the text no longer says what it holds.
        let mut replaced: Vec<OrderedRaw<'_>> = super::from_body(text.as_bytes()).unwrap();
        replaced[0].replace("bb", serde_json::value::to_raw_value(&7).unwrap());
        assert_eq!(
            written(&replaced[0], text.as_bytes()),
            r#"{"a":1,"bb":7,"c":{ "d" : null }}"#
        );
        replaced[0].replace("c", serde_json::value::to_raw_value(&8).unwrap());
        assert_eq!(
            written(&replaced[0], text.as_bytes()),
            r#"{"a":1,"bb":7,"c":8}"#
        );
    }

    /// A name that held no escape is written as it stood; one that held an escape is written
    /// so that it reads back as the same name (a quote, a backslash or a control character in
    /// it escaped again), so the object written reads back as the object read.
    #[test]
    fn member_names_are_written_back_as_the_same_names() {
        let text = r#"{"plain":1,"næste":2,"a\"b":3,"c\\d":4,"\u0001":5,"\/e":6,"\u0066":7}"#;
        let object: OrderedRaw<'_> = super::from_body(text.as_bytes()).unwrap();
        let written = String::from_utf8(object.to_json()).unwrap();
        assert!(written.starts_with(r#"{"plain":1,"næste":2,"#), "{written}");
        let back: serde_json::Value = serde_json::from_str(&written).unwrap();
        let read: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back, read);
        let names: Vec<&String> = back.as_object().unwrap().keys().collect();
        assert_eq!(
            names,
            ["plain", "næste", "a\"b", "c\\d", "\u{1}", "/e", "f"]
        );
        // A string without an escape is read as it stands; one with an escape, decoded.
        let object: OrderedRaw<'_> = super::from_body(
            br#"{"a":"x y","b":"x\u0020y","c":7,"d":"\"","e":"a\\","f":"","g":["x"]}"#,
        )
        .unwrap();
        for (key, expected) in [
            ("a", Some("x y")),
            ("b", Some("x y")),
            ("c", None),
            ("d", Some("\"")),
            ("e", Some("a\\")),
            ("f", Some("")),
            ("g", None),
        ] {
            assert_eq!(object.get_str(key).as_deref(), expected, "{key}");
        }
    }
}
