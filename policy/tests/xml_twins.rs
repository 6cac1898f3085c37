//! An XML body is decided as its JSON twin. The gateway reads FHIR XML into JSON
//! (`portvagt-fhir`) before the policy sees it; here every body the decision depends on goes
//! JSON -> XML -> JSON and must get the decision its JSON form gets, for every caller: creates
//! for one's own and another patient, batches and transactions entry by entry, FHIRPath
//! Patches that move data, contained resources naming someone else.

use portvagt_policy::{Decision, ScopeSet, Subject, classify, decide};
use serde_json::{Value, json};

fn decided(
    scopes: &str,
    patient: Option<&str>,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> String {
    let scopes = ScopeSet::parse(scopes);
    let mut request = match classify(method, path, None) {
        Ok(request) => request,
        Err(error) => return format!("invalid:{}", error.code()),
    };
    if let Err(error) = request.attach_body(Some(content_type), body) {
        return format!("invalid:{}", error.code());
    }
    match decide(Subject::new(&scopes, patient), &request) {
        Decision::Deny { reason } => format!("deny:{}", reason.code()),
        Decision::Allow { obligations, .. } => format!("allow {obligations:?}"),
    }
}

fn observation(patient: &str) -> Value {
    json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
            "subject": { "reference": format!("Patient/{patient}") } })
}

#[test]
fn every_body_is_decided_as_its_json_twin() {
    let bodies: Vec<(&str, &str, &str, Value)> = vec![
        (
            "POST",
            "Observation",
            "application/fhir+json",
            observation("pat-anne"),
        ),
        (
            "POST",
            "Observation",
            "application/fhir+json",
            observation("pat-bo"),
        ),
        (
            "POST",
            "Observation",
            "application/fhir+json",
            json!({ "resourceType": "Observation",
            "status": "final", "code": { "text": "x" }, "subject": { "reference": "Patient/pat-anne" },
            "performer": [{ "reference": "Patient/pat-bo" }] }),
        ),
        (
            "POST",
            "Observation",
            "application/fhir+json",
            json!({ "resourceType": "Observation",
            "status": "final", "code": { "text": "x" }, "subject": { "reference": "#p" },
            "contained": [{ "resourceType": "Patient", "id": "p",
                "link": [{ "other": { "reference": "Patient/pat-bo" }, "type": "seealso" }] }] }),
        ),
        (
            "PUT",
            "Observation/obs-anne-bp",
            "application/fhir+json",
            json!({ "resourceType": "Observation",
            "id": "obs-anne-bp", "status": "final", "code": { "text": "x" },
            "subject": { "reference": "Patient/pat-bo" } }),
        ),
        (
            "PATCH",
            "Observation/obs-anne-bp",
            "application/fhir+json",
            json!({ "resourceType": "Parameters",
            "parameter": [{ "name": "operation", "part": [
                { "name": "type", "valueCode": "replace" },
                { "name": "path", "valueString": "Observation.subject" },
                { "name": "value", "valueReference": { "reference": "Patient/pat-bo" } }] }] }),
        ),
        (
            "PATCH",
            "Observation/obs-anne-bp",
            "application/fhir+json",
            json!({ "resourceType": "Parameters",
            "parameter": [{ "name": "operation", "part": [
                { "name": "type", "valueCode": "move" },
                { "name": "path", "valueString": "Observation.note" },
                { "name": "source", "valueInteger": 0 },
                { "name": "destination", "valueInteger": 1 }] }] }),
        ),
        (
            "POST",
            "",
            "application/fhir+json",
            json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": "Patient/pat-anne" } },
            { "request": { "method": "GET", "url": "Patient/pat-bo" } },
            { "request": { "method": "GET", "url": "Observation?code=x" } },
            { "resource": observation("pat-bo"), "request": { "method": "POST", "url": "Observation" } },
            { "resource": observation("pat-anne"), "request": { "method": "POST", "url": "Observation" } },
            { "request": { "method": "DELETE", "url": "Observation/obs-bo-bp" } }] }),
        ),
        (
            "POST",
            "",
            "application/fhir+json",
            json!({ "resourceType": "Bundle", "type": "transaction", "entry": [
            { "resource": observation("pat-anne"), "request": { "method": "POST", "url": "Observation" } },
            { "request": { "method": "GET", "url": "Patient/pat-bo" } }] }),
        ),
    ];
    let callers = [
        ("patient/*.cruds", Some("pat-anne")),
        ("patient/Observation.c patient/Patient.r", Some("pat-anne")),
        ("user/*.cruds", None),
        ("user/Observation.c", None),
        ("system/Patient.r", None),
    ];
    let mut compared = 0;
    let mut kinds = std::collections::BTreeSet::new();
    for (method, path, content_type, body) in &bodies {
        let json = serde_json::to_vec(body).unwrap();
        let xml = portvagt_fhir::json_to_xml(&json).unwrap();
        let twin = portvagt_fhir::xml_to_json(&xml).unwrap();
        for (scopes, patient) in callers {
            let from_json = decided(scopes, patient, method, path, content_type, &json);
            let from_xml = decided(scopes, patient, method, path, content_type, &twin);
            assert_eq!(from_json, from_xml, "{method} {path} as {scopes}: {body}");
            kinds.insert(from_json.split(' ').next().unwrap_or_default().to_owned());
            compared += 1;
        }
    }
    assert_eq!(compared, bodies.len() * callers.len());
    // The table reaches allows and several kinds of refusal, not one answer for all.
    assert!(kinds.contains("allow"), "{kinds:?}");
    assert!(kinds.len() >= 3, "{kinds:?}");
}
