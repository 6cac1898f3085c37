//! Request bodies that change what a request means (FHIR R4 §3.1.0.4 update, §3.1.0.6 patch,
//! §3.1.0.11 batch/transaction): the resource of a create or update, whose `resourceType` and
//! `id` must agree with the URL and whose references decide compartment membership; the patch
//! document; and batch/transaction Bundles, whose entries are requests of their own.

use serde_json::Value;

use super::{ClassifyError, FhirRequest, Interaction, classify};

/// Batch or transaction (R4 §3.1.0.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// Entries succeed or fail independently.
    Batch,
    /// All entries succeed, or none does.
    Transaction,
}

/// The two patch formats FHIR R4 JSON servers accept (R4 §3.1.0.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    /// RFC 6902 JSON Patch, `application/json-patch+json`.
    JsonPatch,
    /// FHIRPath Patch: a `Parameters` resource, `application/fhir+json`.
    FhirPathPatch,
}

/// A read body.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestBody {
    /// The resource of a create or (conditional) update.
    Resource(Value),
    /// A patch document.
    Patch {
        /// Which format.
        format: PatchFormat,
        /// The document.
        document: Value,
    },
    /// The entries of a batch or transaction, each classified.
    Bundle {
        /// Batch or transaction.
        kind: BundleKind,
        /// The entries, in order.
        entries: Vec<FhirRequest>,
    },
}

fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type.map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    })
}

fn is_json(media_type: Option<&str>) -> bool {
    matches!(
        media_type,
        Some("application/fhir+json" | "application/json")
    )
}

/// A JSON body read as the backend must read it too: no member given twice in any object
/// (which of the two the gateway's checks read, and which the backend stores, would differ
/// between parsers).
fn strict_body(bytes: &[u8]) -> Result<Value, ClassifyError> {
    crate::strict_json::tree_unique(bytes).map_err(|error| match error {
        crate::strict_json::StrictJsonError::Duplicate(_) => ClassifyError::DuplicateMember,
        crate::strict_json::StrictJsonError::Syntax(_) => ClassifyError::MalformedBody,
    })
}

pub(super) fn parse(
    request: &FhirRequest,
    content_type: Option<&str>,
    bytes: &[u8],
) -> Result<RequestBody, ClassifyError> {
    let media_type = media_type(content_type);
    let json = strict_body;
    match request.interaction() {
        Interaction::Patch | Interaction::ConditionalPatch => match media_type.as_deref() {
            Some("application/json-patch+json") => {
                let document = json(bytes)?;
                if !document.is_array() {
                    return Err(ClassifyError::MalformedBody);
                }
                Ok(RequestBody::Patch {
                    format: PatchFormat::JsonPatch,
                    document,
                })
            }
            m if is_json(m) => {
                let document = json(bytes)?;
                if document.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
                    return Err(ClassifyError::MalformedBody);
                }
                Ok(RequestBody::Patch {
                    format: PatchFormat::FhirPathPatch,
                    document,
                })
            }
            _ => Err(ClassifyError::UnsupportedFormat),
        },
        Interaction::BatchOrTransaction => {
            if !is_json(media_type.as_deref()) {
                return Err(ClassifyError::UnsupportedFormat);
            }
            bundle(json(bytes)?)
        }
        Interaction::Create | Interaction::Update | Interaction::ConditionalUpdate => {
            if !is_json(media_type.as_deref()) {
                return Err(ClassifyError::UnsupportedFormat);
            }
            let resource = json(bytes)?;
            check_resource(request, &resource)?;
            Ok(RequestBody::Resource(resource))
        }
        _ => Err(ClassifyError::MalformedBody),
    }
}

/// The parameters of an operation's `Parameters` body (FHIR JSON), as name and value pairs the
/// policy decides on like query parameters: every parameter with a primitive `value[x]`. A
/// parameter whose value is a Reference, or anything in the body that holds a `reference`,
/// could name a patient the pairs do not show: refused (`malformed-body`), as is a body that
/// is not a `Parameters` resource.
pub fn operation_parameters(json: &[u8]) -> Result<Vec<(String, String)>, ClassifyError> {
    fn holds_reference(value: &Value) -> bool {
        match value {
            Value::Object(map) => map
                .iter()
                .any(|(key, value)| key == "reference" || holds_reference(value)),
            Value::Array(items) => items.iter().any(holds_reference),
            _ => false,
        }
    }
    let body: Value = strict_body(json)?;
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters")
        || holds_reference(&body)
    {
        return Err(ClassifyError::MalformedBody);
    }
    let mut pairs = Vec::new();
    for parameter in body
        .get("parameter")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = parameter.get("name").and_then(Value::as_str) else {
            return Err(ClassifyError::MalformedBody);
        };
        // One `value[x]` (R4 Parameters): two could be read as either by different servers.
        let values = parameter
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(key, _)| key.starts_with("value"))
            .count();
        if values > 1 {
            return Err(ClassifyError::MalformedBody);
        }
        let primitive = parameter
            .as_object()
            .into_iter()
            .flatten()
            .find_map(|(key, value)| {
                let primitive = match value {
                    Value::String(text) => Some(text.clone()),
                    Value::Number(number) => Some(number.to_string()),
                    Value::Bool(flag) => Some(flag.to_string()),
                    _ => None,
                };
                key.starts_with("value").then_some(primitive).flatten()
            });
        if let Some(value) = primitive {
            pairs.push((name.to_owned(), value));
        }
    }
    super::url::check_params(&pairs)?;
    Ok(pairs)
}

/// The resource must be of the URL's type; an update's `id` must be the URL's id.
fn check_resource(request: &FhirRequest, resource: &Value) -> Result<(), ClassifyError> {
    if !resource.is_object() {
        return Err(ClassifyError::MalformedBody);
    }
    let resource_type = resource.get("resourceType").and_then(Value::as_str);
    if resource_type != request.resource_type().map(|t| t.as_str()) {
        return Err(ClassifyError::BodyMismatch);
    }
    let id = resource.get("id");
    match request.interaction() {
        Interaction::Update if id.and_then(Value::as_str) != request.id() => {
            Err(ClassifyError::BodyMismatch)
        }
        Interaction::ConditionalUpdate | Interaction::Create
            if id.is_some_and(|id| !id.as_str().is_some_and(super::is_valid_id)) =>
        {
            Err(ClassifyError::BodyMismatch)
        }
        _ => Ok(()),
    }
}

fn bundle(value: Value) -> Result<RequestBody, ClassifyError> {
    if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ClassifyError::BodyMismatch);
    }
    let kind = match value.get("type").and_then(Value::as_str) {
        Some("batch") => BundleKind::Batch,
        Some("transaction") => BundleKind::Transaction,
        _ => return Err(ClassifyError::BodyMismatch),
    };
    let entries = match value.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries.iter().map(entry).collect::<Result<_, _>>()?,
        Some(_) => return Err(ClassifyError::MalformedEntry),
    };
    Ok(RequestBody::Bundle { kind, entries })
}

/// One entry: `request.method` and a RELATIVE `request.url` (absolute URLs could name another
/// server or smuggle a different base), classified like a request of its own.
fn entry(entry: &Value) -> Result<FhirRequest, ClassifyError> {
    let request = entry.get("request").ok_or(ClassifyError::MalformedEntry)?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or(ClassifyError::MalformedEntry)?;
    if !matches!(method, "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(ClassifyError::MalformedEntry);
    }
    let method = if method == "HEAD" { "GET" } else { method };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or(ClassifyError::MalformedEntry)?;
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (url, None),
    };
    // The path must be relative to this server's base: no scheme, no leading slash, no URN.
    if path.is_empty() || path.starts_with('/') || path.contains(':') || url.contains('#') {
        return Err(ClassifyError::MalformedEntry);
    }
    let mut classified = classify(method, path, query)?;
    if classified.interaction() == Interaction::BatchOrTransaction {
        return Err(ClassifyError::MalformedEntry);
    }
    // A `POST _search` entry carries its parameters in `resource`, where neither the classifier
    // nor the narrowing reaches: send searches as GET entries. Likewise a `resource` on an entry
    // that needs none would be read by some servers and ignored by others.
    let post_search = method == "POST"
        && matches!(
            classified.interaction(),
            Interaction::SearchType | Interaction::SearchSystem
        );
    if post_search || (entry.get("resource").is_some() && !classified.needs_body()) {
        return Err(ClassifyError::MalformedEntry);
    }
    if let Some(condition) = request.get("ifNoneExist") {
        let condition = condition.as_str().ok_or(ClassifyError::MalformedEntry)?;
        classified.set_if_none_exist(condition.trim_start_matches('?'))?;
    }
    if classified.needs_body() {
        let resource = entry.get("resource").ok_or(ClassifyError::MalformedEntry)?;
        let body = match classified.interaction() {
            Interaction::Patch | Interaction::ConditionalPatch => {
                // In a Bundle a patch is a Parameters resource (FHIRPath Patch); JSON Patch would
                // come wrapped in a Binary, which is not read here.
                if resource.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
                    return Err(ClassifyError::MalformedEntry);
                }
                RequestBody::Patch {
                    format: PatchFormat::FhirPathPatch,
                    document: resource.clone(),
                }
            }
            _ => {
                check_resource(&classified, resource)?;
                RequestBody::Resource(resource.clone())
            }
        };
        classified.body = Some(body);
    }
    Ok(classified)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn attach(
        method: &str,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> Result<FhirRequest, ClassifyError> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let mut request = classify(method, path, query)?;
        request.attach_body(Some(content_type), body.to_string().as_bytes())?;
        Ok(request)
    }

    #[test]
    fn resource_type_and_id_must_agree_with_the_url() {
        let fhir = "application/fhir+json; charset=utf-8";
        assert!(
            attach(
                "POST",
                "Observation",
                fhir,
                json!({"resourceType": "Observation"})
            )
            .is_ok()
        );
        assert!(
            attach(
                "PUT",
                "Observation/o1",
                fhir,
                json!({"resourceType": "Observation", "id": "o1"})
            )
            .is_ok()
        );
        let mismatches = [
            ("POST", "Observation", json!({"resourceType": "Patient"})),
            (
                "PUT",
                "Observation/o1",
                json!({"resourceType": "Observation", "id": "o2"}),
            ),
            (
                "PUT",
                "Observation/o1",
                json!({"resourceType": "Observation"}),
            ),
            (
                "PUT",
                "Observation/o1",
                json!({"resourceType": "Condition", "id": "o1"}),
            ),
            (
                "PUT",
                "Observation?identifier=x",
                json!({"resourceType": "Patient"}),
            ),
        ];
        for (method, path, body) in mismatches {
            assert_eq!(
                attach(method, path, fhir, body.clone()).err(),
                Some(ClassifyError::BodyMismatch),
                "{method} {path} {body}"
            );
        }
        assert_eq!(
            attach("POST", "Observation", fhir, json!([1])).err(),
            Some(ClassifyError::MalformedBody)
        );
        assert_eq!(
            attach(
                "POST",
                "Observation",
                "application/fhir+xml",
                json!({"resourceType": "Observation"})
            )
            .err(),
            Some(ClassifyError::UnsupportedFormat)
        );
    }

    #[test]
    fn operation_parameters_are_read_as_query_parameters_would_be() {
        let body = json!({ "resourceType": "Parameters", "parameter": [
            { "name": "url", "valueUri": "http://x.dk/vs" },
            { "name": "count", "valueInteger": 5 },
            { "name": "activeOnly", "valueBoolean": true },
            { "name": "coding", "valueCoding": { "system": "http://loinc.org", "code": "8867-4" } },
        ]});
        assert_eq!(
            operation_parameters(body.to_string().as_bytes()).unwrap(),
            [
                ("url".to_owned(), "http://x.dk/vs".to_owned()),
                ("count".to_owned(), "5".to_owned()),
                ("activeOnly".to_owned(), "true".to_owned()),
            ]
        );
        for refused in [
            json!({ "resourceType": "Parameters", "parameter": [
                { "name": "subject", "valueReference": { "reference": "Patient/pat-bo" } }] }),
            json!({ "resourceType": "Parameters", "parameter": [
                { "name": "x", "resource": { "resourceType": "Observation",
                  "subject": { "reference": "Patient/pat-bo" } } }] }),
            json!({ "resourceType": "Parameters", "parameter": [{ "valueString": "no name" }] }),
            json!({ "resourceType": "Observation" }),
        ] {
            assert_eq!(
                operation_parameters(refused.to_string().as_bytes()),
                Err(ClassifyError::MalformedBody),
                "{refused}"
            );
        }
        let overriding = json!({ "resourceType": "Parameters", "parameter": [
            { "name": "_method", "valueString": "DELETE" }] });
        assert_eq!(
            operation_parameters(overriding.to_string().as_bytes()),
            Err(ClassifyError::MethodOverride)
        );
    }

    #[test]
    fn patch_formats_are_told_apart() {
        let json_patch = attach(
            "PATCH",
            "Observation/o1",
            "application/json-patch+json",
            json!([{"op": "remove", "path": "/note"}]),
        )
        .unwrap();
        assert!(matches!(
            json_patch.body(),
            Some(RequestBody::Patch {
                format: PatchFormat::JsonPatch,
                ..
            })
        ));
        let fhirpath = attach(
            "PATCH",
            "Observation/o1",
            "application/fhir+json",
            json!({"resourceType": "Parameters"}),
        )
        .unwrap();
        assert!(matches!(
            fhirpath.body(),
            Some(RequestBody::Patch {
                format: PatchFormat::FhirPathPatch,
                ..
            })
        ));
        assert_eq!(
            attach(
                "PATCH",
                "Observation/o1",
                "application/json-patch+json",
                json!({"op": "x"})
            )
            .err(),
            Some(ClassifyError::MalformedBody)
        );
    }

    #[test]
    fn batch_entries_are_classified_one_by_one() {
        let bundle = json!({
            "resourceType": "Bundle", "type": "batch",
            "entry": [
                { "request": { "method": "GET", "url": "Patient/pat-bo" } },
                { "request": { "method": "GET", "url": "Observation?patient=pat-bo&code=http://loinc.org%7C1" } },
                { "request": { "method": "POST", "url": "Observation", "ifNoneExist": "identifier=x" },
                  "resource": { "resourceType": "Observation" } },
                { "request": { "method": "DELETE", "url": "Observation?patient=pat-bo" } }
            ]
        });
        let request = attach("POST", "", "application/fhir+json", bundle).unwrap();
        let Some(RequestBody::Bundle { kind, entries }) = request.body() else {
            panic!("not a bundle")
        };
        assert_eq!(*kind, BundleKind::Batch);
        let interactions: Vec<Interaction> = entries.iter().map(FhirRequest::interaction).collect();
        assert_eq!(
            interactions,
            [
                Interaction::Read,
                Interaction::SearchType,
                Interaction::Create,
                Interaction::ConditionalDelete
            ]
        );
        assert!(entries[2].if_none_exist().is_some());
    }

    #[test]
    fn tricky_entries_are_refused() {
        let entry = |request: Value, resource: Option<Value>| {
            let mut entry = json!({ "request": request });
            if let Some(resource) = resource {
                entry["resource"] = resource;
            }
            json!({ "resourceType": "Bundle", "type": "transaction", "entry": [entry] })
        };
        let cases = [
            (
                entry(
                    json!({"method": "GET", "url": "https://other.example/fhir/Patient/1"}),
                    None,
                ),
                ClassifyError::MalformedEntry,
            ),
            (
                entry(json!({"method": "GET", "url": "/Patient/1"}), None),
                ClassifyError::MalformedEntry,
            ),
            (
                entry(
                    json!({"method": "GET", "url": "Patient/../Patient/2"}),
                    None,
                ),
                ClassifyError::DotSegment,
            ),
            (
                entry(json!({"method": "POST", "url": ""}), None),
                ClassifyError::MalformedEntry,
            ),
            (
                entry(json!({"method": "TRACE", "url": "Patient/1"}), None),
                ClassifyError::MalformedEntry,
            ),
            (
                entry(json!({"method": "POST", "url": "Observation"}), None),
                ClassifyError::MalformedEntry,
            ),
            (
                entry(
                    json!({"method": "POST", "url": "Observation"}),
                    Some(json!({"resourceType": "Patient"})),
                ),
                ClassifyError::BodyMismatch,
            ),
            (
                entry(json!({"method": "GET", "url": "patient/1"}), None),
                ClassifyError::UnknownResourceType,
            ),
            (
                entry(
                    json!({"method": "GET", "url": "Observation?patient=a&patient=b"}),
                    None,
                ),
                ClassifyError::ConflictingParameter,
            ),
            (
                entry(
                    json!({"method": "POST", "url": "Observation/_search"}),
                    Some(json!({"subject": "Patient/pat-bo"})),
                ),
                ClassifyError::MalformedEntry,
            ),
            (
                entry(
                    json!({"method": "GET", "url": "Observation/o1"}),
                    Some(json!({"resourceType": "Observation"})),
                ),
                ClassifyError::MalformedEntry,
            ),
        ];
        for (bundle, expected) in cases {
            assert_eq!(
                attach("POST", "", "application/fhir+json", bundle.clone()).err(),
                Some(expected),
                "{bundle}"
            );
        }
        let not_batch = json!({ "resourceType": "Bundle", "type": "searchset" });
        assert_eq!(
            attach("POST", "", "application/fhir+json", not_batch).err(),
            Some(ClassifyError::BodyMismatch)
        );
    }
}
