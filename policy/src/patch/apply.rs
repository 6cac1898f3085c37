//! JSON Patch (RFC 6902) applied to the resource it changes, so that whose data the result is
//! can be read from the result itself: what a patch spells out can be assembled in more ways
//! (`move` and `copy` from elements nobody checks, a `reference` emptied, an identifier built
//! member by member) than any list of rules keeps up with. The gateway reads the version the
//! patch changes and binds the write to it (`If-Match`), so the result computed here is the
//! one the server makes.

use serde_json::Value;

/// Pointer tokens a JavaScript server's JSON Patch passes over (Medplum's stays on the parent,
/// so `/__proto__/subject` is `/subject` to it): no patch that names one is applied or let
/// through as harmless.
const SKIPPED_BY_SOME_SERVERS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// Whether a pointer token is one some servers read otherwise than RFC 6901: a name they pass
/// over, or a `%` they read as an escape (`%5F_proto__`). (None of those names holds `~` or
/// `/`: escaped or not, the answer is the same.)
pub(crate) fn read_otherwise(token: &str) -> bool {
    SKIPPED_BY_SOME_SERVERS.contains(&token) || token.contains('%')
}

/// How many operations one patch may have for the gateway to apply it (the server's work is
/// bounded by the body limit; the gateway's must be too).
const MAX_OPERATIONS: usize = 1000;

/// How deep a result may be: as deep as serde_json reads a document.
const MAX_DEPTH: usize = 128;

/// `document` applied to `target`: `None` when the patch is not one RFC 6902 applies (an
/// operation or pointer it does not define, a path that is not there, a `test` that fails), or
/// not one the gateway applies (a pointer token some servers pass over, more than
/// [`MAX_OPERATIONS`], a result deeper than serde_json reads, another `resourceType` or `id`):
/// the server refuses such a patch, or reads it otherwise, and neither can be checked.
pub fn apply_json_patch(document: &Value, target: &Value) -> Option<Value> {
    let operations = document.as_array()?;
    if operations.len() > MAX_OPERATIONS {
        return None;
    }
    let mut result = target.clone();
    let mut copied = 0;
    for operation in operations {
        let text = |name: &str| operation.get(name).and_then(Value::as_str);
        let path = pointer(text("path")?)?;
        match text("op")? {
            "add" => add(&mut result, &path, operation.get("value")?.clone())?,
            "remove" => {
                remove(&mut result, &path)?;
            }
            "replace" => {
                remove(&mut result, &path)?;
                add(&mut result, &path, operation.get("value")?.clone())?;
            }
            // Servers differ on `move`: RFC 6902 removes, then finds where to add; Medplum's
            // finds the place first, so a move within one array lands elsewhere. Not applied.
            "move" => return None,
            "copy" => {
                let from = pointer(text("from")?)?;
                let value = get(&result, &from)?;
                // Each copy costs what it copies: a bounded number of values in all.
                copied += size(value, MAX_COPIED.saturating_sub(copied))?;
                let value = value.clone();
                add(&mut result, &path, value)?;
            }
            "test" => {
                if get(&result, &path)? != operation.get("value")? {
                    return None;
                }
            }
            _ => return None,
        }
    }
    let same = |name: &str| result.get(name) == target.get(name);
    (same("resourceType") && same("id")).then_some(result)
}

/// How many values all `copy` operations of one patch may copy.
const MAX_COPIED: usize = 100_000;

/// How many values `value` holds (itself included), if no more than `limit`.
fn size(value: &Value, limit: usize) -> Option<usize> {
    let mut count = 1;
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(object) => Box::new(object.values()),
        _ => Box::new(std::iter::empty()),
    };
    for child in children {
        count += size(child, limit.checked_sub(count)?)?;
    }
    (count <= limit).then_some(count)
}

/// Whether `value` nests no deeper than `limit`.
fn within_depth(value: &Value, limit: usize) -> bool {
    match value {
        Value::Array(items) => limit > 0 && items.iter().all(|item| within_depth(item, limit - 1)),
        Value::Object(object) => {
            limit > 0 && object.values().all(|item| within_depth(item, limit - 1))
        }
        _ => true,
    }
}

/// A JSON Pointer (RFC 6901) as its reference tokens, unescaped.
fn pointer(text: &str) -> Option<Vec<String>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let rest = text.strip_prefix('/')?;
    rest.split('/')
        .map(|token| {
            // `~1` before `~0`: `~01` is `~1`, not `/`.
            let unescaped = token.replace("~1", "/").replace("~0", "~");
            let stray_tilde = token
                .match_indices('~')
                .any(|(at, _)| !matches!(token.as_bytes().get(at + 1), Some(b'0' | b'1')));
            (!stray_tilde && !read_otherwise(token)).then_some(unescaped)
        })
        .collect()
}

/// An array index as RFC 6901 writes it: digits, no leading zero.
fn index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    let canonical = token == "0" || !token.starts_with('0');
    (digits && canonical).then(|| token.parse().ok()).flatten()
}

fn get<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |value, token| match value {
        Value::Object(object) => object.get(token),
        Value::Array(items) => items.get(index(token)?),
        _ => None,
    })
}

fn get_mut<'a>(value: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |value, token| match value {
        Value::Object(object) => object.get_mut(token),
        Value::Array(items) => items.get_mut(index(token)?),
        _ => None,
    })
}

fn add(target: &mut Value, path: &[String], value: Value) -> Option<()> {
    // What is added nests no deeper than a document serde_json reads: checked on the value
    // and its place, not on the whole result (which would cost every operation the
    // document's size).
    if !within_depth(&value, MAX_DEPTH.checked_sub(path.len())?) {
        return None;
    }
    let Some((last, parent)) = path.split_last() else {
        *target = value;
        return Some(());
    };
    match get_mut(target, parent)? {
        Value::Object(object) => {
            object.insert(last.clone(), value);
        }
        Value::Array(items) => {
            let at = if last == "-" {
                items.len()
            } else {
                index(last)?
            };
            if at > items.len() {
                return None;
            }
            items.insert(at, value);
        }
        _ => return None,
    }
    Some(())
}

fn remove(target: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parent) = path.split_last()?;
    match get_mut(target, parent)? {
        Value::Object(object) => object.shift_remove(last),
        Value::Array(items) => {
            let at = index(last)?;
            (at < items.len()).then(|| items.remove(at))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_operations_of_rfc_6902_appendix_a() {
        let cases = [
            (
                json!({ "foo": "bar" }),
                json!([{ "op": "add", "path": "/baz", "value": "qux" }]),
                Some(json!({ "baz": "qux", "foo": "bar" })),
            ),
            (
                json!({ "foo": ["bar", "baz"] }),
                json!([{ "op": "add", "path": "/foo/1", "value": "qux" }]),
                Some(json!({ "foo": ["bar", "qux", "baz"] })),
            ),
            (
                json!({ "baz": "qux", "foo": "bar" }),
                json!([{ "op": "remove", "path": "/baz" }]),
                Some(json!({ "foo": "bar" })),
            ),
            (
                json!({ "foo": ["bar", "qux", "baz"] }),
                json!([{ "op": "remove", "path": "/foo/1" }]),
                Some(json!({ "foo": ["bar", "baz"] })),
            ),
            (
                json!({ "baz": "qux", "foo": "bar" }),
                json!([{ "op": "replace", "path": "/baz", "value": "boo" }]),
                Some(json!({ "baz": "boo", "foo": "bar" })),
            ),
            // `move` is not applied: servers place the value differently.
            (
                json!({ "foo": ["all", "grass", "cows", "eat"] }),
                json!([{ "op": "move", "from": "/foo/1", "path": "/foo/3" }]),
                None,
            ),
            (
                json!({ "baz": "qux", "foo": ["a", 2, "c"] }),
                json!([{ "op": "test", "path": "/baz", "value": "qux" }, { "op": "test", "path": "/foo/1", "value": 2 }]),
                Some(json!({ "baz": "qux", "foo": ["a", 2, "c"] })),
            ),
            (
                json!({ "baz": "qux" }),
                json!([{ "op": "test", "path": "/baz", "value": "bar" }]),
                None,
            ),
            (
                json!({ "foo": "bar" }),
                json!([{ "op": "add", "path": "/child", "value": { "grandchild": {} } }]),
                Some(json!({ "foo": "bar", "child": { "grandchild": {} } })),
            ),
            (
                json!({ "foo": "bar" }),
                json!([{ "op": "add", "path": "/baz/bat", "value": "qux" }]),
                None,
            ),
            (
                json!({ "foo": ["bar"] }),
                json!([{ "op": "add", "path": "/foo/-", "value": ["abc", "def"] }]),
                Some(json!({ "foo": ["bar", ["abc", "def"]] })),
            ),
            (
                json!({ "/": 9, "~1": 10 }),
                json!([{ "op": "test", "path": "/~01", "value": 10 }]),
                Some(json!({ "/": 9, "~1": 10 })),
            ),
            (
                json!({ "foo": "bar" }),
                json!([{ "op": "copy", "from": "/foo", "path": "/baz" }]),
                Some(json!({ "foo": "bar", "baz": "bar" })),
            ),
            // Not defined: an unknown op, an index past the end, a leading zero, a stray `~`,
            // a move into itself, a missing value.
            (
                json!({ "a": 1 }),
                json!([{ "op": "merge", "path": "/a", "value": 2 }]),
                None,
            ),
            (
                json!({ "a": [1] }),
                json!([{ "op": "add", "path": "/a/2", "value": 2 }]),
                None,
            ),
            (
                json!({ "a": [1, 2] }),
                json!([{ "op": "remove", "path": "/a/01" }]),
                None,
            ),
            (
                json!({ "a": 1 }),
                json!([{ "op": "remove", "path": "/~2" }]),
                None,
            ),
            (
                json!({ "a": { "b": 1 } }),
                json!([{ "op": "move", "from": "/a", "path": "/a/b" }]),
                None,
            ),
            (
                json!({ "a": 1 }),
                json!([{ "op": "add", "path": "/b" }]),
                None,
            ),
            // Not applied by the gateway: a token a JavaScript server passes over, another
            // resourceType or id, the whole document replaced.
            (
                json!({ "a": 1 }),
                json!([{ "op": "add", "path": "/__proto__/a", "value": 2 }]),
                None,
            ),
            (
                json!({ "a": 1 }),
                json!([{ "op": "add", "path": "/%5F_proto__/a", "value": 2 }]),
                None,
            ),
            (
                json!({ "a": { "b": 1 } }),
                json!([{ "op": "remove", "path": "/a/constructor" }]),
                None,
            ),
            (
                json!({ "resourceType": "Observation", "id": "o" }),
                json!([{ "op": "replace", "path": "/id", "value": "p" }]),
                None,
            ),
            (
                json!({ "resourceType": "Observation", "id": "o" }),
                json!([{ "op": "replace", "path": "", "value": { "resourceType": "Patient", "id": "o" } }]),
                None,
            ),
        ];
        for (target, patch, expected) in cases {
            assert_eq!(apply_json_patch(&patch, &target), expected, "{patch}");
        }
    }

    #[test]
    fn a_patch_too_long_or_too_deep_is_not_applied() {
        let many = json!(
            (0..=MAX_OPERATIONS)
                .map(|_| json!({ "op": "test", "path": "/a", "value": 1 }))
                .collect::<Vec<_>>()
        );
        assert_eq!(apply_json_patch(&many, &json!({ "a": 1 })), None);
        let mut nested = json!(1);
        for _ in 0..100 {
            nested = json!([nested]);
        }
        let once = json!([{ "op": "add", "path": "/a", "value": nested }]);
        assert!(apply_json_patch(&once, &json!({})).is_some());
        let deeper = format!("/a{}", "/0".repeat(99));
        let twice = json!([{ "op": "add", "path": "/a", "value": nested },
            { "op": "replace", "path": deeper, "value": nested }]);
        assert_eq!(apply_json_patch(&twice, &json!({})), None);
        // Copies cost what they copy, in all.
        let wide = json!((0..60_000).collect::<Vec<_>>());
        let copies = json!([{ "op": "copy", "from": "/a", "path": "/b" },
            { "op": "copy", "from": "/a", "path": "/c" }]);
        assert_eq!(apply_json_patch(&copies, &json!({ "a": wide })), None);
        let once = json!([{ "op": "copy", "from": "/a", "path": "/b" }]);
        assert!(apply_json_patch(&once, &json!({ "a": wide })).is_some());
    }
}
