//! Consent on what a request names and on what an answer holds: the patients checked before a
//! request is sent, the resources withheld from an answer, and the one request shape refused
//! because its answer would count what is withheld.
//!
//! The rule the gateway keeps (DESIGN "Consent"): a blocked caller learns THAT data is blocked
//! only when the request names that patient; every other answer is what it would be if the
//! blocked data did not exist. So withheld search entries leave no notice, totals of searches
//! that name nobody go, and a count that names nobody is refused for everyone alike.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::{Access, Block, CallerIds, ConsentVerdict, Emergency, check, denies};
use crate::compartment::Identified;
use crate::reach::Reach;
use crate::request::{FhirRequest, RequestBody};
use crate::verdict::DenyReason;

/// Each patient's Consents (that can deny somebody something), by patient id.
pub type PatientBlocks = HashMap<String, Arc<Vec<Block>>>;

impl<'a> Access<'a> {
    /// What a request's answers would hold, for the check before it is sent: its type, the
    /// resource it addresses (`Type/id`; a resource being created is none a Consent names by
    /// id). What is not known yet counts as denying for writes and counts, which cannot be
    /// checked resource by resource afterwards; a write to a Consent, which can lift every
    /// block of its patient, is judged against all of them.
    pub fn for_request(request: &'a FhirRequest, purpose: Option<&'a str>, now: i64) -> Access<'a> {
        let writes = request.interaction().is_write();
        let resource_type = request.resource_type().map(|t| t.as_str());
        if writes && resource_type == Some("Consent") {
            return Access {
                resource_type: None,
                resource: None,
                purpose,
                now,
                unknown_denies: true,
            };
        }
        let resource = match (request.id(), request.interaction()) {
            // `Type/id`: the canonical path starts with it.
            (Some(_), _) => request
                .path()
                .match_indices('/')
                .nth(1)
                .map_or(Some(request.path()), |(cut, _)| {
                    Some(&request.path()[..cut])
                }),
            (None, crate::request::Interaction::Create) => Some(request.path()),
            (None, _) => None,
        };
        Access {
            resource_type,
            resource: resource_type.and(resource),
            purpose,
            now,
            unknown_denies: writes || count_only(request),
        }
    }
}

/// Whether any of these Consents names an actor (then the caller's other identities matter).
pub fn names_actors(blocks: &PatientBlocks) -> bool {
    blocks
        .values()
        .flat_map(|b| b.iter())
        .any(|block| !block.actors().is_empty())
}

/// What checking a set of patients found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Patients whose data the caller may not see (blocks that stand).
    pub blocked: Vec<String>,
    /// Patients whose blocks break-the-glass lifted.
    pub broken_glass: Vec<String>,
    /// EMERGENCY was claimed without a reason where a block applied.
    pub reason_missing: bool,
}

/// Checks `patients` against their `blocks` for `caller` and one `access`.
pub fn check_patients(
    patients: &[String],
    blocks: &PatientBlocks,
    caller: &CallerIds,
    access: &Access<'_>,
    emergency: Emergency<'_>,
) -> Checked {
    let mut checked = Checked::default();
    for patient in patients {
        let Some(patient_blocks) = blocks.get(patient) else {
            continue;
        };
        match check(patient_blocks, caller, access, emergency) {
            ConsentVerdict::Open => {}
            ConsentVerdict::BrokenGlass { .. } => checked.broken_glass.push(patient.clone()),
            ConsentVerdict::Blocked { .. } => {
                checked.blocked.push(patient.clone());
                if emergency == Emergency::WithoutReason {
                    checked.reason_missing = true;
                }
            }
        }
    }
    checked
}

/// Whether `resource` is withheld from `caller`: some patient whose data it is (by id, or by
/// an identifier `identified` placed) has a Consent that denies this access to it. A Bundle (a
/// batch entry's searchset) is withheld if any of its entries is.
pub fn resource_withheld(
    resource: &Value,
    identified: &Identified,
    blocks: &PatientBlocks,
    caller: &CallerIds,
    purpose: Option<&str>,
    now: i64,
) -> bool {
    let resource_type = resource.get("resourceType").and_then(Value::as_str);
    if resource_type == Some("Bundle") {
        return crate::filter::bundle_resources(resource)
            .any(|inner| resource_withheld(inner, identified, blocks, caller, purpose, now));
    }
    let id = resource.get("id").and_then(Value::as_str);
    let reference = match (resource_type, id) {
        (Some(t), Some(id)) => Some(format!("{t}/{id}")),
        _ => None,
    };
    let access = Access {
        resource_type,
        resource: reference.as_deref(),
        purpose,
        now,
        unknown_denies: true,
    };
    identified.patients_of(resource).iter().any(|patient| {
        blocks.get(patient).is_some_and(|patient_blocks| {
            patient_blocks
                .iter()
                .any(|block| denies(block, caller, &access))
        })
    })
}

/// How withheld batch and transaction entries are answered.
#[derive(Debug, Clone, Copy)]
pub struct Refusals<'a> {
    /// For an entry that named the patient: `403`, with this OperationOutcome.
    pub forbidden: &'a Value,
    /// For one that did not: `404`, as if the resource did not exist.
    pub not_found: &'a Value,
    /// Per request entry, in order: the patients it named itself (its [`Reach`], identifiers
    /// looked up). A withheld resource of one of them is refused; one of anyone else's is not
    /// there.
    pub named: &'a [Vec<String>],
    /// The patients found for the identifiers the answer's references by identifier only use.
    pub identified: &'a Identified,
}

/// Removes what `withheld` says from a Bundle answer. Search and history entries are dropped
/// without a trace (no notice, no count, no `total`). In a batch or transaction answer, a
/// nested searchset or history is treated the same way, and a single resource is answered
/// `403` if its request entry named the patient, `404` if it did not. Returns how many
/// resources were withheld.
pub fn withhold(
    bundle: &mut Value,
    withheld: &dyn Fn(&Value) -> bool,
    refusals: &Refusals<'_>,
) -> usize {
    let batch = matches!(
        bundle.get("type").and_then(Value::as_str),
        Some("batch-response" | "transaction-response")
    );
    if !batch {
        return drop_entries(bundle, withheld);
    }
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return 0;
    };
    let mut count = 0;
    for (index, entry) in entries.iter_mut().enumerate() {
        let Some(resource) = entry.get_mut("resource") else {
            continue;
        };
        if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            count += drop_entries(resource, withheld);
            continue;
        }
        if !withheld(resource) {
            continue;
        }
        count += 1;
        let named = refusals.named.get(index).is_none_or(|named| {
            refusals
                .identified
                .patients_of(resource)
                .iter()
                .any(|patient| named.contains(patient))
        });
        let (status, outcome) = if named {
            ("403 Forbidden", refusals.forbidden)
        } else {
            ("404 Not Found", refusals.not_found)
        };
        if let Some(entry) = entry.as_object_mut() {
            entry.remove("resource");
            entry.remove("fullUrl");
            entry.insert(
                "response".into(),
                serde_json::json!({ "status": status, "outcome": outcome }),
            );
        }
    }
    count
}

/// Whether an interaction's "not there" must look the same whether the resource is missing or
/// withheld: reads and the writes that need a resource to exist.
pub fn answers_not_found(interaction: crate::request::Interaction) -> bool {
    use crate::request::Interaction as I;
    matches!(
        interaction,
        I::Read | I::Vread | I::HistoryInstance | I::Delete | I::Patch
    )
}

/// In a batch or transaction answer, every `404` or `410` of an entry for which `applies` is
/// true (in request order), in `not_found`'s words: a missing resource, a deleted one and a
/// withheld one must look alike. Returns whether anything changed.
pub fn not_found_alike(bundle: &mut Value, applies: &[bool], not_found: &Value) -> bool {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut changed = false;
    for (entry, applies) in entries.iter_mut().zip(applies) {
        let status = entry
            .pointer("/response/status")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !applies || !(status.starts_with("404") || status.starts_with("410")) {
            continue;
        }
        if let Some(entry) = entry.as_object_mut() {
            entry.remove("resource");
            entry.remove("fullUrl");
            entry.insert(
                "response".into(),
                serde_json::json!({ "status": "404 Not Found", "outcome": not_found }),
            );
            changed = true;
        }
    }
    changed
}

/// Drops withheld entries from a searchset or history Bundle, and its `total`.
fn drop_entries(bundle: &mut Value, withheld: &dyn Fn(&Value) -> bool) -> usize {
    if let Some(object) = bundle.as_object_mut() {
        object.remove("total");
    }
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return 0;
    };
    let before = entries.len();
    let mut withheld_ids = std::collections::HashSet::new();
    entries.retain(|entry| {
        let resource = entry.get("resource");
        let drop = resource.is_some_and(withheld);
        if drop {
            withheld_ids.extend(resource.and_then(own_reference));
        }
        !drop
    });
    let dropped = before - entries.len();
    if dropped > 0 {
        drop_orphaned_includes(entries, &withheld_ids);
    }
    dropped
}

/// `Type/id` of a resource.
fn own_reference(resource: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        resource.get("resourceType")?.as_str()?,
        resource.get("id")?.as_str()?
    ))
}

/// After matches were withheld: the `_include`d and `_revinclude`d entries that no match left
/// in the answer references or is referenced by, and those that reference a withheld one.
/// They were there for a withheld match (its performer, its organisation, what points at it),
/// and would tell that it exists and who treated whom.
fn drop_orphaned_includes(entries: &mut Vec<Value>, withheld: &std::collections::HashSet<String>) {
    let is_include =
        |entry: &Value| entry.pointer("/search/mode").and_then(Value::as_str) == Some("include");
    let mut kept_ids = std::collections::HashSet::new();
    let mut kept_references = std::collections::HashSet::new();
    for entry in entries.iter().filter(|entry| !is_include(entry)) {
        if let Some(resource) = entry.get("resource") {
            kept_ids.extend(own_reference(resource));
            references_in(resource, &mut kept_references);
        }
    }
    entries.retain(|entry| {
        if !is_include(entry) {
            return true;
        }
        let Some(resource) = entry.get("resource") else {
            return false;
        };
        let mut its = std::collections::HashSet::new();
        references_in(resource, &mut its);
        if its.iter().any(|reference| withheld.contains(reference)) {
            return false;
        }
        own_reference(resource).is_some_and(|id| kept_references.contains(&id))
            || its.iter().any(|reference| kept_ids.contains(reference))
    });
}

/// Every literal `reference` in `value`, as `Type/id`.
fn references_in(value: &Value, found: &mut std::collections::HashSet<String>) {
    match value {
        Value::Object(fields) => {
            for (key, item) in fields {
                match (key.as_str(), item) {
                    ("reference", Value::String(reference)) => {
                        found.insert(super::relative(reference).to_owned());
                    }
                    _ => references_in(item, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references_in(item, found)),
        _ => {}
    }
}

/// Which of the gateway's duties are on for a request: consent enforcement, the audit trail.
#[derive(Debug, Clone, Copy)]
pub struct Duties {
    /// Citizens' blocks are enforced.
    pub consent: bool,
    /// Every access is recorded.
    pub audit: bool,
}

/// The request shapes refused while consent or the audit trail must know whose data a request
/// touches, whatever the caller's scopes, in order: a count that names nobody (consent), an
/// answer without its references (either), criteria tested on answers that are never withheld
/// (consent), a write whose destination cannot be read first (either). `None`: none applies.
pub fn shape_refusal(request: &FhirRequest, reach: &Reach, duties: Duties) -> Option<DenyReason> {
    let either = duties.consent || duties.audit;
    if duties.consent && count_refused(request, reach) {
        Some(DenyReason::CountNotPinned)
    } else if either && hides_references(request) {
        Some(DenyReason::ReferencesHidden)
    } else if duties.consent && tests_unwithheld(request) {
        Some(DenyReason::SearchReachesOtherTypes)
    } else if either && write_unverifiable(request, reach) {
        Some(DenyReason::WriteNotVerifiable)
    } else {
        None
    }
}

/// Whether a count-only search (`_summary=count`, `_count=0`), alone or as a batch entry, does
/// not name the patients it counts ([`Reach::pinned`]): its number would count what blocks
/// withhold, so it is refused while blocks are enforced, for every caller alike.
pub fn count_refused(request: &FhirRequest, reach: &Reach) -> bool {
    match request.body() {
        Some(RequestBody::Bundle { entries, .. }) => entries
            .iter()
            .zip(reach.entries())
            .any(|(entry, reach)| count_only(entry) && !reach.pinned()),
        _ => count_only(request) && !reach.pinned(),
    }
}

/// Whether a search asks only for a count: `_summary=count` (in any case, as lenient servers
/// read it) or a `_count` of zero (however written).
pub fn count_only(request: &FhirRequest) -> bool {
    request.params().iter().any(|(name, value)| {
        let base = name.split(':').next().unwrap_or(name);
        (base == "_summary" && value.trim().eq_ignore_ascii_case("count"))
            || (base == "_count" && value.trim().parse::<u64>().is_ok_and(|n| n == 0))
    })
}

/// Whether a request asks for answers without the references whose patients they are
/// (`_elements` in any form but the one the gateway widens, `_summary` other than `count`,
/// `data` or `false`), alone or in a batch entry: neither consent nor the audit record could
/// tell whose data they hold.
pub fn hides_references(request: &FhirRequest) -> bool {
    let hides = |request: &FhirRequest, in_batch: bool| {
        // Reference data names no patient (unless it brings in what does).
        let about_no_patient = request.interaction() == crate::request::Interaction::Capabilities
            || request.resource_type().is_some_and(|t| {
                crate::compartment::is_shared_type(t.as_str())
                    && !request.params().iter().any(|(name, _)| {
                        name.starts_with("_include") || name.starts_with("_revinclude")
                    })
            });
        // The plain `_elements` of a single request is widened with the references
        // (crate::elements); a batch entry's never is. `_fields` is `_elements` to some
        // servers. `_summary` keeps the references only as `count`, `data` (all but the
        // narrative) and `false`.
        !about_no_patient
            && request.params().iter().any(|(name, value)| {
                let base = name.split(':').next().unwrap_or(name);
                (base == "_elements" && (in_batch || !crate::elements::widenable(request)))
                    || base == "_fields"
                    || (base == "_summary" && !["count", "data", "false"].contains(&value.trim()))
            })
    };
    match request.body() {
        Some(RequestBody::Bundle { entries, .. }) => entries.iter().any(|e| hides(e, true)),
        _ => hides(request, false),
    }
}

/// Whether a search tests patients' data (`_has`, chained parameters) while its answers are of
/// types that are nobody's data, and so never withheld: `Practitioner?_has:Observation:…`
/// would tell whether a blocked patient's data matches. Alone or as a batch entry.
pub fn tests_unwithheld(request: &FhirRequest) -> bool {
    use crate::request::Interaction as I;
    let one = |request: &FhirRequest| {
        // A declared search by another name (`$lastn`) too.
        let search = matches!(
            request.acts_as(),
            I::SearchType | I::SearchSystem | I::SearchCompartment
        );
        let answers_of_nobody = request
            .resource_type()
            .is_none_or(|t| !crate::compartment::is_compartment_type(t.as_str()));
        search
            && answers_of_nobody
            && request
                .params()
                .iter()
                .any(|(name, _)| name.starts_with("_has") || name.contains('.'))
    };
    match request.body() {
        Some(RequestBody::Bundle { entries, .. }) => entries.iter().any(one),
        _ => one(request),
    }
}

/// Whether a write moves data in a way the gateway cannot see before it happens: a patch that
/// copies or moves values (`move`/`copy` in JSON Patch, `move` in FHIRPath Patch: the patient
/// it moves to is never spelled out), or a write whose reach is opaque (a conditional
/// reference or criteria no list captures). Alone or as a batch entry.
pub fn write_unverifiable(request: &FhirRequest, reach: &Reach) -> bool {
    let one = |request: &FhirRequest, reach: &Reach| {
        let writes = request.interaction().is_write();
        let moves = match request.body() {
            Some(RequestBody::Patch { document, .. }) => match document {
                Value::Array(operations) => operations.iter().any(|op| {
                    matches!(op.get("op").and_then(Value::as_str), Some("move" | "copy"))
                }),
                _ => document.to_string().contains("\"valueCode\":\"move\""),
            },
            _ => false,
        };
        writes && (moves || reach.opaque())
    };
    match request.body() {
        Some(RequestBody::Bundle { entries, .. }) => entries
            .iter()
            .zip(reach.entries())
            .any(|(entry, reach)| one(entry, reach)),
        _ => one(request, reach),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn missing_deleted_and_withheld_batch_entries_look_alike() {
        let not_found = json!({ "resourceType": "OperationOutcome", "id": "nf" });
        let mut batch = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "response": { "status": "404 Not Found", "outcome": { "text": "backend words" } } },
            { "response": { "status": "410 Gone" } },
            { "response": { "status": "404 Not Found" } },
            { "resource": { "resourceType": "Patient", "id": "bo" }, "response": { "status": "200 OK" } }
        ]});
        assert!(not_found_alike(
            &mut batch,
            &[true, true, false, true],
            &not_found
        ));
        assert_eq!(batch["entry"][0]["response"]["outcome"], not_found);
        assert_eq!(batch["entry"][1]["response"]["status"], "404 Not Found");
        assert!(batch["entry"][2]["response"].get("outcome").is_none());
        assert_eq!(batch["entry"][3]["response"]["status"], "200 OK");
    }

    #[test]
    fn criteria_on_answers_never_withheld_are_told_apart() {
        let cases = [
            ("Practitioner", "_has:Observation:performer:code=x", true),
            ("Organization", "partof.name=x", true),
            ("Practitioner", "name=Kjaer", false),
            ("Observation", "_has:Provenance:target:agent=x", false),
            ("Observation", "subject.name=x", false),
        ];
        for (path, query, expected) in cases {
            let request = crate::request::classify("GET", path, Some(query)).unwrap();
            assert_eq!(tests_unwithheld(&request), expected, "{path}?{query}");
        }
    }

    #[test]
    fn withheld_search_entries_leave_no_trace_and_batch_entries_say_403_or_404() {
        // Anne is also the patient with CPR 0101, which one entry names her by.
        let mut identified = Identified::default();
        identified.add("urn:oid:1.2.208.176.1.2|0101", "anne");
        let anne = |resource: &Value| identified.patients_of(resource).iter().any(|p| p == "anne");
        let forbidden = json!({ "resourceType": "OperationOutcome", "id": "forbidden" });
        let not_found = json!({ "resourceType": "OperationOutcome", "id": "not-found" });

        let mut searchset = json!({ "resourceType": "Bundle", "type": "searchset", "total": 3, "entry": [
            { "resource": { "resourceType": "Observation", "subject": { "reference": "Patient/anne" } } },
            { "resource": { "resourceType": "Observation", "subject": { "reference": "Patient/bo" } } },
            { "resource": { "resourceType": "Patient", "id": "anne" } }
        ]});
        let none = Refusals {
            forbidden: &forbidden,
            not_found: &not_found,
            named: &[],
            identified: &identified,
        };
        assert_eq!(withhold(&mut searchset, &anne, &none), 2);
        let entries = searchset["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0]["resource"]["subject"]["reference"], "Patient/bo");
        assert!(searchset.get("total").is_none());

        let mut batch = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "resource": { "resourceType": "Patient", "id": "anne" }, "response": { "status": "200 OK" } },
            { "resource": { "resourceType": "Patient", "id": "bo" }, "response": { "status": "200 OK" } },
            { "resource": { "resourceType": "Observation", "subject": { "reference": "Patient/anne" } }, "response": { "status": "200 OK" } },
            { "resource": { "resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
                { "resource": { "resourceType": "Patient", "id": "anne" } },
                { "resource": { "resourceType": "Patient", "id": "bo" } }
            ] }, "response": { "status": "200 OK" } },
            { "resource": { "resourceType": "Observation", "subject": { "identifier": {
                "system": "urn:oid:1.2.208.176.1.2", "value": "0101" } } }, "response": { "status": "200 OK" } }
        ]});
        let anne_named = vec!["anne".to_owned()];
        let named = [anne_named.clone(), vec![], vec![], vec![], anne_named];
        let refusals = Refusals {
            forbidden: &forbidden,
            not_found: &not_found,
            named: &named,
            identified: &identified,
        };
        assert_eq!(withhold(&mut batch, &anne, &refusals), 4);
        // Named by her identifier, asked for by her name: refused as hers.
        assert_eq!(batch["entry"][4]["response"]["status"], "403 Forbidden");
        assert_eq!(batch["entry"][0]["response"]["status"], "403 Forbidden");
        assert_eq!(batch["entry"][1]["response"]["status"], "200 OK");
        assert_eq!(batch["entry"][2]["response"]["status"], "404 Not Found");
        assert!(batch["entry"][2].get("resource").is_none());
        let nested = &batch["entry"][3]["resource"];
        assert_eq!(nested["entry"].as_array().unwrap().len(), 1);
        assert!(nested.get("total").is_none());
        assert_eq!(batch["entry"][3]["response"]["status"], "200 OK");
    }
}
