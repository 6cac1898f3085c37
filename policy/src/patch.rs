//! What a patch can change: whether any of its operations can reach an element that says whom
//! the resource belongs to (a compartment reference), its `id`, or `contained` (where a
//! reference could be made to point at a contained Patient that links elsewhere).
//!
//! - JSON Patch (RFC 6902): the first segment of each `path` and `from` pointer.
//! - FHIRPath Patch (FHIR R4 §2.1.0.4.3): each operation's `path` is read as a whole. Only a
//!   small part of FHIRPath is accepted: an optional type or `%resource` root, element names
//!   (plain or `` `quoted` ``), `[n]` indexers, and the filters `where(…)`, `first()`,
//!   `last()`, `single()`, `ofType(…)`, `extension(…)`, which narrow a selection. Anything
//!   else (`select`, `children`, `descendants`, `repeat`, `resolve`, `%variables`, operators,
//!   comments, escapes) can reach any element and counts as touching. A guarded name written
//!   anywhere in the path, inside a filter's criteria too, counts as touching (HAPI's patch
//!   follows `where(subject)` into `subject`). Otherwise the element reached is the first
//!   element step below the resource; for `add` at the resource itself, the `name` added.
//! - Each `type`, `path` and `name` part holds its name and exactly the one value it should:
//!   a second value (`valueCode` beside `valueString`) is one a server may read instead.
//!
//! Whatever cannot be read counts as touching: the answer is refused, never guessed.

use serde_json::Value;

use crate::request::PatchFormat;

mod apply;

pub use apply::apply_json_patch;

/// Whether `document` (a patch of a `resource_type`) can change an element that says whose
/// data the resource is (the compartment's, and those of the types outside it that name a
/// patient: [`crate::compartment::names_patients`]), `id` or `contained`. Any patch of a stored
/// Bundle can (its entries are whoever they name). Unreadable counts as touching.
pub fn touches_compartment(resource_type: &str, format: PatchFormat, document: &Value) -> bool {
    if resource_type == "Bundle" {
        return true;
    }
    let elements: Vec<&str> = crate::compartment::patient_paths(resource_type)
        .filter_map(|path| path.split('.').next())
        .chain(["id", "contained"])
        .collect();
    let guarded = |element: &str| {
        elements
            .iter()
            .any(|guarded| guarded.eq_ignore_ascii_case(element))
    };
    match format {
        PatchFormat::JsonPatch => json_patch_touches(document, &guarded),
        PatchFormat::FhirPathPatch => fhirpath_patch_touches(document, &guarded),
    }
}

fn json_patch_touches(document: &Value, guarded: &dyn Fn(&str) -> bool) -> bool {
    let Some(operations) = document.as_array() else {
        return true;
    };
    let touches_pointer = |pointer: &str| {
        let Some(rest) = pointer.strip_prefix('/') else {
            // "" is the whole document; anything else is not a JSON Pointer.
            return true;
        };
        let first = rest.split('/').next().unwrap_or_default();
        let first = first.replace("~1", "/").replace("~0", "~");
        first.is_empty() || guarded(&first) || rest.split('/').any(apply::read_otherwise)
    };
    operations.iter().any(|operation| {
        ["path", "from"]
            .iter()
            .any(|key| match operation.get(*key) {
                None => false,
                Some(value) => value.as_str().is_none_or(touches_pointer),
            })
    })
}

fn fhirpath_patch_touches(document: &Value, guarded: &dyn Fn(&str) -> bool) -> bool {
    let Some(parameters) = document.get("parameter").and_then(Value::as_array) else {
        return true;
    };
    parameters.iter().any(|operation| {
        if operation.get("name").and_then(Value::as_str) != Some("operation") {
            return true;
        }
        let Some(parts) = operation.get("part").and_then(Value::as_array) else {
            return true;
        };
        // Each part once: which of two a server reads is its choice.
        let part = |name: &str| -> Result<Option<&Value>, ()> {
            let mut found = parts
                .iter()
                .filter(|part| part.get("name").and_then(Value::as_str) == Some(name));
            let first = found.next();
            match found.next() {
                Some(_) => Err(()),
                None => Ok(first),
            }
        };
        // A part holds its name and the one value it should: a second value (`valueCode` beside
        // `valueString`) is one a server may read instead.
        let text = |name: &str, key: &str| -> Result<Option<&str>, ()> {
            match part(name)? {
                None => Ok(None),
                Some(part) => {
                    let object = part.as_object().ok_or(())?;
                    if object.keys().any(|k| k != "name" && k != key) {
                        return Err(());
                    }
                    object.get(key).and_then(Value::as_str).map(Some).ok_or(())
                }
            }
        };
        let reached = (|| -> Result<Option<String>, ()> {
            let kind = text("type", "valueCode")?.ok_or(())?;
            let path = text("path", "valueString")?.ok_or(())?;
            // A name anywhere in the path, inside a filter's criteria too, may be where a
            // server's patch lands (HAPI follows `where(subject)` into `subject`).
            if names_anywhere(path)?.iter().any(|name| guarded(name)) {
                return Ok(Some(String::new()));
            }
            let element = first_element(path)?;
            match (kind, element) {
                (_, Some(element))
                    if matches!(kind, "add" | "insert" | "delete" | "replace" | "move") =>
                {
                    Ok(Some(element))
                }
                // At the resource itself, only `add` makes sense: it adds the element `name`.
                ("add", None) => {
                    let name = text("name", "valueString")?.ok_or(())?;
                    Ok(Some(name.to_owned()))
                }
                _ => Err(()),
            }
        })();
        match reached {
            Ok(Some(element)) => element.is_empty() || guarded(&element),
            Ok(None) | Err(()) => true,
        }
    })
}

/// Every name written in `path`, inside function arguments too (not inside string literals):
/// plain identifiers and `` `quoted` `` ones. `Err` for an unterminated literal.
fn names_anywhere(path: &str) -> Result<Vec<String>, ()> {
    let chars: Vec<char> = path.chars().collect();
    let mut names = Vec::new();
    let mut at = 0;
    while let Some(c) = chars.get(at) {
        match c {
            '\'' => {
                at += 1;
                loop {
                    match chars.get(at) {
                        None => return Err(()),
                        Some('\\') => at += 2,
                        Some('\'') => break,
                        Some(_) => at += 1,
                    }
                }
                at += 1;
            }
            '`' => {
                let end = chars[at + 1..].iter().position(|c| *c == '`').ok_or(())?;
                names.push(chars[at + 1..at + 1 + end].iter().collect());
                at += end + 2;
            }
            c if c.is_ascii_alphabetic() || *c == '_' => {
                let start = at;
                while chars
                    .get(at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    at += 1;
                }
                names.push(chars[start..at].iter().collect());
            }
            _ => at += 1,
        }
    }
    Ok(names)
}

/// One step of a path: an element name, or a function call with its name.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Name(String),
    Call(String),
    /// `%resource`, `%rootResource`, `%context`, `$this`: the resource, at the start only.
    Root,
}

/// The functions that only narrow a selection (and what `extension(url)` selects: the
/// extension element).
const FILTERS: [&str; 5] = ["where", "first", "last", "single", "ofType"];

/// The first element below the resource that `path` selects: `None` when it selects the
/// resource itself; `Err` when it cannot be read with the accepted subset.
fn first_element(path: &str) -> Result<Option<String>, ()> {
    let steps = steps(path)?;
    let mut element = None;
    for (index, step) in steps.iter().enumerate() {
        match step {
            Step::Root if index == 0 => {}
            Step::Call(name) if name == "extension" => {
                element.get_or_insert_with(|| "extension".to_owned());
            }
            Step::Call(name) if FILTERS.contains(&name.as_str()) => {}
            // A leading upper-case name is a type (`Observation`, `Resource`, `FHIR`): it
            // filters the resource, it is no element.
            Step::Name(name)
                if element.is_none() && name.starts_with(|c: char| c.is_ascii_uppercase()) => {}
            Step::Name(name) => {
                element.get_or_insert_with(|| name.clone());
            }
            _ => return Err(()),
        }
    }
    Ok(element)
}

/// Splits a path into its steps; `Err` for anything outside the accepted subset.
fn steps(path: &str) -> Result<Vec<Step>, ()> {
    let chars: Vec<char> = path.chars().collect();
    let mut at = 0;
    let mut steps = Vec::new();
    let skip_space = |at: &mut usize| {
        while chars.get(*at).is_some_and(|c| c.is_whitespace()) {
            *at += 1;
        }
    };
    loop {
        skip_space(&mut at);
        let step = match chars.get(at) {
            Some('`') => {
                let end = chars[at + 1..].iter().position(|c| *c == '`').ok_or(())?;
                let name: String = chars[at + 1..at + 1 + end].iter().collect();
                // Escapes would spell a name in another way.
                if name.is_empty() || name.contains('\\') {
                    return Err(());
                }
                at += end + 2;
                Step::Name(name)
            }
            Some('%' | '$') if steps.is_empty() => {
                let start = at + 1;
                at = start;
                while chars.get(at).is_some_and(|c| c.is_ascii_alphanumeric()) {
                    at += 1;
                }
                let name: String = chars[start..at].iter().collect();
                if !matches!(
                    (chars[start - 1], name.as_str()),
                    ('%', "resource" | "rootResource" | "context") | ('$', "this")
                ) {
                    return Err(());
                }
                Step::Root
            }
            Some(c) if c.is_ascii_alphabetic() || *c == '_' => {
                let start = at;
                while chars
                    .get(at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    at += 1;
                }
                let name: String = chars[start..at].iter().collect();
                skip_space(&mut at);
                if chars.get(at) == Some(&'(') {
                    at = after_arguments(&chars, at)?;
                    Step::Call(name)
                } else {
                    Step::Name(name)
                }
            }
            _ => return Err(()),
        };
        steps.push(step);
        // Indexers: `[0]`.
        loop {
            skip_space(&mut at);
            if chars.get(at) != Some(&'[') {
                break;
            }
            let end = chars[at..].iter().position(|c| *c == ']').ok_or(())?;
            let inside: String = chars[at + 1..at + end].iter().collect();
            if inside.trim().is_empty() || !inside.trim().chars().all(|c| c.is_ascii_digit()) {
                return Err(());
            }
            at += end + 1;
        }
        skip_space(&mut at);
        match chars.get(at) {
            None => return Ok(steps),
            Some('.') => at += 1,
            Some(_) => return Err(()),
        }
    }
}

/// The index after the `)` closing the call whose `(` is at `open`; string literals and
/// nested parentheses are skipped. A filter's criteria select nothing, so they are not read.
fn after_arguments(chars: &[char], open: usize) -> Result<usize, ()> {
    let mut depth = 0usize;
    let mut at = open;
    while let Some(c) = chars.get(at) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(at + 1);
                }
            }
            '\'' | '`' => {
                let quote = *c;
                at += 1;
                while let Some(c) = chars.get(at) {
                    match c {
                        '\\' => at += 1,
                        c if *c == quote => break,
                        _ => {}
                    }
                    at += 1;
                }
                if at >= chars.len() {
                    return Err(());
                }
            }
            _ => {}
        }
        at += 1;
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fhirpath(operations: &[&[(&str, &str, &str)]]) -> Value {
        json!({ "resourceType": "Parameters", "parameter": operations.iter().map(|parts| json!({
            "name": "operation",
            "part": parts.iter().map(|(name, key, value)| json!({ "name": name, key.to_string(): value })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>() })
    }

    fn touches(operation: &[(&str, &str, &str)]) -> bool {
        touches_compartment(
            "Observation",
            PatchFormat::FhirPathPatch,
            &fhirpath(&[operation]),
        )
    }

    fn replace(path: &str) -> bool {
        touches(&[
            ("type", "valueCode", "replace"),
            ("path", "valueString", path),
            ("value", "valueString", "x"),
        ])
    }

    #[test]
    fn fhirpath_paths_are_read_whole() {
        // What stays away from whom the Observation is about.
        for path in [
            "Observation.status",
            "Observation.code.text",
            "Observation.code.coding[0].display",
            "Observation.code.coding.where(system = 'http://loinc.org').first().code",
            "Observation.where(status = 'final').note.text",
            "Observation.code.coding.where(display = 'subject').code",
            "status",
            "%resource.status",
            "Observation . note [ 1 ] . text",
            "Observation.`note`.text",
            "Observation.extension('http://example.org/x').value",
            "Resource.meta.tag",
        ] {
            assert!(!replace(path), "{path} should be allowed");
        }
        // What reaches it, in every spelling a FHIRPath engine accepts.
        for path in [
            "Observation.subject",
            "Observation.subject.reference",
            // A name in a filter's criteria: HAPI follows it into the element.
            "Observation.where(subject).status",
            "Observation.where(subject.reference = 'Patient/pat-anne').status",
            "Observation.ofType(subject).status",
            "Observation.extension(subject)",
            "Observation.code.where(%resource.subject.exists())",
            "Observation.note.where(`performer`.exists())",
            "subject.reference",
            "Observation.performer[0]",
            "Observation.select(subject)",
            "Observation.select(subject).reference",
            "Observation.where(true).subject",
            "Observation.first().subject",
            "Observation.`subject`",
            "Observation.`sub\\u006aect`",
            "Observation.Subject",
            "Resource.subject",
            "FHIR.Observation.subject",
            "%resource.subject",
            "$this.subject",
            "%rootResource.performer",
            "Observation.id",
            "Observation.contained",
            "Observation.contained.where(resourceType = 'Patient').link",
            "Observation.children()",
            "Observation.descendants().where(reference = 'Patient/pat-bo')",
            "Observation.code.select(%resource.subject)",
            "Observation.code.repeat(%resource.subject)",
            "Observation.subject.resolve()",
            "Observation.code | Observation.subject",
            "Observation.code // .subject",
            "Observation.code /* */ .text",
            "%patch.subject",
            "Observation.code.coding['0']",
            "Observation.code.where(",
            "Observation.",
            "",
            "Observation",
        ] {
            assert!(replace(path), "{path} should count as touching");
        }
    }

    #[test]
    fn an_add_at_the_resource_is_judged_by_the_name_it_adds() {
        let add = |path: &str, name: &str| {
            touches(&[
                ("type", "valueCode", "add"),
                ("path", "valueString", path),
                ("name", "valueString", name),
                ("value", "valueString", "x"),
            ])
        };
        assert!(!add("Observation", "note"));
        assert!(!add("Observation.code", "text"));
        for (path, name) in [
            ("Observation", "subject"),
            ("Observation", "Subject"),
            ("Observation.where(true)", "subject"),
            ("%resource", "performer"),
            ("Observation.first()", "contained"),
            ("Observation", "id"),
            ("Observation", ""),
        ] {
            assert!(add(path, name), "add {name} at {path}");
        }
        // No name to judge by.
        assert!(touches(&[
            ("type", "valueCode", "add"),
            ("path", "valueString", "Observation"),
        ]));
    }

    #[test]
    fn a_part_with_two_values_counts_as_touching() {
        let body = json!({ "resourceType": "Parameters", "parameter": [{ "name": "operation", "part": [
            { "name": "type", "valueCode": "replace" },
            { "name": "path", "valueString": "Observation.status", "valueCode": "Observation.subject" },
            { "name": "value", "valueCode": "final" }
        ]}]});
        assert!(touches_compartment(
            "Observation",
            PatchFormat::FhirPathPatch,
            &body
        ));
        let body = json!({ "resourceType": "Parameters", "parameter": [{ "name": "operation", "part": [
            { "name": "type", "valueCode": "add" },
            { "name": "path", "valueString": "Observation" },
            { "name": "name", "valueString": "note", "valueCode": "subject" },
            { "name": "value", "valueString": "x" }
        ]}]});
        assert!(touches_compartment(
            "Observation",
            PatchFormat::FhirPathPatch,
            &body
        ));
    }

    #[test]
    fn operations_that_cannot_be_read_count_as_touching() {
        for operation in [
            // No type, an unknown one, a path given twice, a path that is not a string.
            vec![("path", "valueString", "Observation.status")],
            vec![
                ("type", "valueCode", "upsert"),
                ("path", "valueString", "Observation.status"),
            ],
            vec![
                ("type", "valueCode", "delete"),
                ("path", "valueString", "Observation.status"),
                ("path", "valueString", "Observation.subject"),
            ],
            vec![
                ("type", "valueCode", "delete"),
                ("path", "valueCode", "Observation.status"),
            ],
            // A second value in a part: a server may read the other one.
            vec![
                ("type", "valueCode", "replace"),
                ("path", "valueString", "Observation.status"),
                ("path", "valueCode", "Observation.subject"),
            ],
            // Deleting or replacing the resource itself.
            vec![
                ("type", "valueCode", "delete"),
                ("path", "valueString", "Observation"),
            ],
        ] {
            assert!(touches(&operation), "{operation:?}");
        }
        let other_parameter = json!({ "resourceType": "Parameters", "parameter": [
            { "name": "op", "part": [{ "name": "type", "valueCode": "delete" }] }
        ]});
        assert!(touches_compartment(
            "Observation",
            PatchFormat::FhirPathPatch,
            &other_parameter
        ));
        assert!(touches_compartment(
            "Observation",
            PatchFormat::FhirPathPatch,
            &json!({ "resourceType": "Parameters" })
        ));
    }

    #[test]
    fn json_patch_pointers_are_read_to_their_first_segment() {
        let patch = |ops: Value| touches_compartment("Observation", PatchFormat::JsonPatch, &ops);
        assert!(!patch(
            json!([{ "op": "replace", "path": "/status", "value": "amended" }])
        ));
        assert!(!patch(
            json!([{ "op": "copy", "from": "/code", "path": "/note/0/text" }])
        ));
        for ops in [
            json!([{ "op": "replace", "path": "/subject/reference", "value": "Patient/pat-bo" }]),
            json!([{ "op": "add", "path": "/performer/-", "value": { "reference": "Patient/pat-bo" } }]),
            json!([{ "op": "move", "from": "/subject", "path": "/focus" }]),
            json!([{ "op": "replace", "path": "", "value": {} }]),
            json!([{ "op": "replace", "path": "subject", "value": {} }]),
            json!([{ "op": "replace", "path": "/id", "value": "x" }]),
            json!([{ "op": "add", "path": "/contained", "value": [] }]),
            json!([{ "op": "replace", "path": "/Subject", "value": {} }]),
            json!([{ "op": "replace", "path": 7, "value": {} }]),
            json!({ "op": "replace" }),
        ] {
            assert!(patch(ops.clone()), "{ops}");
        }
        // A Patient's own patch: its id and links to other Patients.
        let patient = |ops: Value| touches_compartment("Patient", PatchFormat::JsonPatch, &ops);
        assert!(!patient(
            json!([{ "op": "replace", "path": "/telecom/0/value", "value": "1" }])
        ));
        assert!(patient(
            json!([{ "op": "add", "path": "/link/-", "value": {} }])
        ));
    }
}
