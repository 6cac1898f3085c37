//! Batch and transaction Bundles through the proxy (FHIR R4 §3.1.0.11): entries policy denied
//! are taken out of the forwarded Bundle and answered by the gateway with a 403 OperationOutcome
//! at their place in the response; allowed entries are narrowed as their obligations say, and
//! what comes back for them is checked against the patient compartment.

use portvagt_policy::{Decision, FilterMode, Filtered, Obligations, check_response};
use serde_json::{Value, json};

use super::ProxyError;
use crate::outcome::Outcome;

/// How the forwarded Bundle maps back to the client's.
#[derive(Debug)]
pub(crate) struct BatchPlan {
    /// Per client entry: `Some(obligations)` if forwarded (in order), `None` if denied.
    entries: Vec<Option<Obligations>>,
    /// The deny answer of each denied entry, by client position.
    denied: Vec<Option<Outcome>>,
    response_type: &'static str,
}

impl BatchPlan {
    /// Per client entry: whether it was forwarded under a patient's compartment.
    pub(crate) fn under_compartment(&self) -> impl Iterator<Item = bool> + '_ {
        self.entries
            .iter()
            .map(|entry| entry.as_ref().is_some_and(|o| o.compartment.is_some()))
    }

    /// Whether any entry goes to the backend.
    pub(crate) fn forwards_anything(&self) -> bool {
        self.entries.iter().any(Option::is_some)
    }
}

/// Builds the Bundle to forward from the client's and the per-entry decisions.
pub(crate) fn plan(
    body: &[u8],
    decisions: &[Decision],
    versions: &[Option<String>],
) -> Result<(Vec<u8>, BatchPlan), ProxyError> {
    let mut bundle: Value =
        serde_json::from_slice(body).map_err(|_| ProxyError::MalformedBundle)?;
    let response_type = match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => "transaction-response",
        _ => "batch-response",
    };
    let entries = bundle
        .get_mut("entry")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    if entries.len() != decisions.len() {
        return Err(ProxyError::MalformedBundle);
    }
    let mut kept = Vec::with_capacity(entries.len());
    let mut plan = BatchPlan {
        entries: Vec::new(),
        denied: Vec::new(),
        response_type,
    };
    for (index, (mut entry, decision)) in entries.into_iter().zip(decisions).enumerate() {
        match decision {
            Decision::Deny { reason } => {
                plan.entries.push(None);
                plan.denied
                    .push(Some(crate::outcome::denied_outcome(*reason)));
            }
            Decision::Allow { obligations, .. } => {
                if !obligations.add_params.is_empty()
                    && let Some(url) = entry.pointer_mut("/request/url")
                    && let Some(text) = url.as_str()
                {
                    *url = Value::String(super::with_params(text, &obligations.add_params));
                }
                // As for a single request (`headers::sanitize_request`): no conditional read,
                // whose 304 would say, without a resource to check, that it is there.
                if let Some(request) = entry.get_mut("request").and_then(Value::as_object_mut) {
                    request.remove("ifNoneMatch");
                    request.remove("ifModifiedSince");
                    // As for a single request: a HEAD is read as the GET it is classified as,
                    // so that what it would tell is checked like the GET's answer.
                    if request.get("method").and_then(Value::as_str) == Some("HEAD") {
                        request.insert("method".into(), Value::String("GET".into()));
                    }
                    // As a single write is bound with `If-Match`: the entry changes the
                    // version that was read and checked, or nothing.
                    if let Some(version) = versions.get(index).and_then(Option::as_deref) {
                        let asked = request.get("ifMatch").and_then(Value::as_str);
                        if asked.is_some_and(|asked| !super::same_version(asked, version)) {
                            return Err(ProxyError::PreconditionFailed);
                        }
                        request.insert("ifMatch".into(), Value::String(format!("W/\"{version}\"")));
                    }
                }
                kept.push(entry);
                plan.entries.push(Some(obligations.clone()));
                plan.denied.push(None);
            }
        }
    }
    bundle["entry"] = Value::Array(kept);
    let bytes = serde_json::to_vec(&bundle).map_err(|_| ProxyError::MalformedBundle)?;
    Ok((bytes, plan))
}

/// The client's answer: the backend's entries at their places, denied entries as 403s, and
/// resources outside an entry's compartment obligation removed or refused.
pub(crate) fn merge(
    response: Option<&[u8]>,
    plan: &BatchPlan,
    mode: FilterMode,
) -> Result<Vec<u8>, ProxyError> {
    let mut answered = match response {
        Some(bytes) => {
            // Read as strictly as every check reads the merged answer again: a plain tree
            // would write out JSON the backend did not write plainly (serde_json's raw value
            // token expanded, the last of a member given twice).
            let mut value = portvagt_policy::strict_json::tree_unique(bytes)
                .map_err(|_| ProxyError::MalformedBundle)?;
            value
                .get_mut("entry")
                .and_then(Value::as_array_mut)
                .map(std::mem::take)
                .unwrap_or_default()
                .into_iter()
        }
        None => Vec::new().into_iter(),
    };
    let mut entries = Vec::with_capacity(plan.entries.len());
    for (obligations, denied) in plan.entries.iter().zip(&plan.denied) {
        let entry = match (obligations, denied) {
            (None, Some(outcome)) => outcome_entry(outcome),
            (Some(obligations), _) => {
                let entry = answered.next().ok_or(ProxyError::MalformedBundle)?;
                checked_entry(entry, obligations, mode)
            }
            (None, None) => return Err(ProxyError::MalformedBundle),
        };
        entries.push(entry);
    }
    let bundle = json!({ "resourceType": "Bundle", "type": plan.response_type, "entry": entries });
    serde_json::to_vec(&bundle).map_err(|_| ProxyError::MalformedBundle)
}

fn checked_entry(mut entry: Value, obligations: &Obligations, mode: FilterMode) -> Value {
    // The backend's outcome of an entry (a write's 409, a read's 404) says only its codes, as
    // a single request's does while anything is withheld (a batch always counts as such): its
    // words may name a resource the caller may not learn of ("first reference found was
    // Encounter/e77"). One that cannot be read so goes.
    if let Some(response) = entry.get_mut("response").and_then(Value::as_object_mut)
        && let Some(outcome) = response.remove("outcome")
        && let Some(rebuilt) = crate::outcome::backend_outcome_tree(&outcome, true, "", "")
    {
        response.insert("outcome".into(), rebuilt);
    }
    let mut entry = compartment_checked_entry(entry, obligations, mode);
    // A total that counts what the compartment check takes out goes, and the `last` link whose
    // offset counts the same, as for a single search.
    if obligations.hide_total
        && let Some(bundle) = entry.get_mut("resource").and_then(Value::as_object_mut)
    {
        bundle.remove("total");
        if let Some(links) = bundle.get_mut("link").and_then(Value::as_array_mut) {
            links.retain(|link| !portvagt_policy::filter::may_be_last_link(link));
        }
    }
    // A citizen's own audit log, read in a batch, is answered in the citizen's view as a single
    // read of it is.
    if obligations.citizen_view
        && let Some(resource) = entry.get_mut("resource")
    {
        crate::audit::citizen::citizen_view(resource);
    }
    entry
}

fn compartment_checked_entry(
    mut entry: Value,
    obligations: &Obligations,
    mode: FilterMode,
) -> Value {
    let Some(check) = super::response_check(obligations) else {
        return entry;
    };
    let Some(resource) = entry.get_mut("resource") else {
        return entry;
    };
    let bytes = serde_json::to_vec(resource).unwrap_or_default();
    let reason = super::refusal_reason(obligations);
    match check_response(&bytes, &check, mode) {
        Filtered::Unchanged => entry,
        Filtered::Rewritten(filtered) => match serde_json::from_slice(&filtered) {
            Ok(filtered) => {
                *resource = filtered;
                entry
            }
            Err(_) => outcome_entry(&crate::outcome::denied_outcome(reason)),
        },
        Filtered::Forbidden => outcome_entry(&crate::outcome::denied_outcome(reason)),
    }
}

pub(super) fn outcome_entry(outcome: &Outcome) -> Value {
    json!({
        "response": {
            "status": format!("{} {}", outcome.status.as_u16(), outcome.status.canonical_reason().unwrap_or("")),
            "outcome": outcome.to_json(None),
        }
    })
}

#[cfg(test)]
mod tests {
    use portvagt_policy::DenyReason;

    use super::*;

    fn allow(obligations: Obligations) -> Decision {
        Decision::Allow {
            granted_by: "x".into(),
            obligations,
        }
    }

    /// An entry's outcome from the backend says only its codes: its words may name a resource
    /// the caller may not learn of, as a single request's would while anything is withheld.
    #[test]
    fn an_entrys_outcome_says_only_its_codes() {
        let request = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "DELETE", "url": "Location/l1" } },
            { "request": { "method": "DELETE", "url": "Location/l2" } },
        ]});
        let decisions = vec![allow(Obligations::default()), allow(Obligations::default())];
        let (_, plan) = plan(request.to_string().as_bytes(), &decisions, &[]).unwrap();
        let backend = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "response": { "status": "409 Conflict", "outcome": {
                "resourceType": "OperationOutcome",
                "contained": [{ "resourceType": "Patient", "id": "pat-bo" }],
                "issue": [{ "severity": "error", "code": "processing",
                    "details": { "text": "Encounter/e77 of Patient/pat-bo refers to it" },
                    "diagnostics": "First reference found was resource Encounter/e77" }] } } },
            { "response": { "status": "409 Conflict", "outcome": { "resourceType": "Patient", "id": "pat-bo" } } }
        ]});
        let merged: Value = serde_json::from_slice(
            &merge(
                Some(backend.to_string().as_bytes()),
                &plan,
                FilterMode::Remove,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            merged["entry"][0]["response"],
            json!({ "status": "409 Conflict", "outcome": { "resourceType": "OperationOutcome",
                "issue": [{ "severity": "error", "code": "processing" }] } })
        );
        // What is no OperationOutcome goes.
        assert_eq!(
            merged["entry"][1]["response"],
            json!({ "status": "409 Conflict" })
        );
        assert!(!merged.to_string().contains("e77"), "{merged}");
        assert!(!merged.to_string().contains("pat-bo"), "{merged}");
    }

    #[test]
    fn denied_entries_are_kept_back_and_answered_in_place() {
        let request = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": "Patient/pat-bo" } },
            { "request": { "method": "GET", "url": "Observation?code=x" } },
            { "request": { "method": "GET", "url": "Patient/pat-anne" } },
        ]});
        let decisions = vec![
            Decision::Deny {
                reason: DenyReason::OutsideCompartment,
            },
            allow(Obligations {
                compartment: Some("pat-anne".into()),
                add_params: vec![("subject".into(), "Patient/pat-anne".into())],
                ..Obligations::default()
            }),
            allow(Obligations {
                compartment: Some("pat-anne".into()),
                ..Obligations::default()
            }),
        ];
        let (forwarded, plan) = plan(request.to_string().as_bytes(), &decisions, &[]).unwrap();
        let forwarded: Value = serde_json::from_slice(&forwarded).unwrap();
        let urls: Vec<&str> = forwarded["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request"]["url"].as_str().unwrap())
            .collect();
        assert_eq!(
            urls,
            [
                "Observation?code=x&subject=Patient%2Fpat-anne",
                "Patient/pat-anne"
            ]
        );

        let backend = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "resource": { "resourceType": "Bundle", "type": "searchset", "entry": [
                { "resource": { "resourceType": "Observation", "id": "o1", "subject": { "reference": "Patient/pat-bo" } } } ] },
              "response": { "status": "200 OK" } },
            { "resource": { "resourceType": "Patient", "id": "pat-anne" }, "response": { "status": "200 OK" } },
        ]});
        let merged = merge(
            Some(backend.to_string().as_bytes()),
            &plan,
            FilterMode::Remove,
        )
        .unwrap();
        let merged: Value = serde_json::from_slice(&merged).unwrap();
        let entries = merged["entry"].as_array().unwrap();
        assert_eq!(merged["type"], "batch-response");
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["response"]["status"], "403 Forbidden");
        assert_eq!(
            entries[0]["response"]["outcome"]["issue"][0]["details"]["coding"][0]["code"],
            "outside-compartment"
        );
        assert_eq!(
            entries[1]["resource"]["entry"].as_array().map(Vec::len),
            Some(0),
            "Bo's observation was removed"
        );
        assert_eq!(entries[2]["resource"]["id"], "pat-anne");
        // An answer a plain tree reads otherwise than every check (a member given twice,
        // serde_json's raw value token) is not merged into one the backend did not write.
        let entries = backend["entry"].to_string();
        let hidden = Value::String(entries.clone()).to_string();
        for answer in [
            format!(
                r#"{{"resourceType":"Bundle","type":"batch-response","entry":[],"entry":{entries}}}"#
            ),
            format!(
                r#"{{"resourceType":"Bundle","type":"batch-response","entry":{{"$serde_json::private::RawValue":{hidden}}}}}"#
            ),
        ] {
            assert!(
                matches!(
                    merge(Some(answer.as_bytes()), &plan, FilterMode::Remove),
                    Err(ProxyError::MalformedBundle)
                ),
                "{answer}"
            );
        }
    }

    #[test]
    fn a_citizens_audit_log_in_a_batch_is_answered_in_the_citizens_view() {
        let request = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": "AuditEvent/ae-1" } },
            { "request": { "method": "GET", "url": "AuditEvent/ae-2" } },
        ]});
        let own_log = Obligations {
            citizen_view: true,
            ..Obligations::default()
        };
        let decisions = vec![allow(own_log), allow(Obligations::default())];
        let (_, plan) = plan(request.to_string().as_bytes(), &decisions, &[]).unwrap();
        let event = |id: &str| {
            json!({ "resourceType": "AuditEvent", "id": id,
                    "source": { "observer": { "display": "gw-7 10.0.0.7" } } })
        };
        let backend = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "resource": event("ae-1"), "response": { "status": "200 OK" } },
            { "resource": event("ae-2"), "response": { "status": "200 OK" } },
        ]});
        let merged = merge(
            Some(backend.to_string().as_bytes()),
            &plan,
            FilterMode::Remove,
        )
        .unwrap();
        let merged: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(
            merged["entry"][0]["resource"]["source"]["observer"]["display"],
            "Portvagt"
        );
        assert_eq!(
            merged["entry"][1]["resource"]["source"]["observer"]["display"], "gw-7 10.0.0.7",
            "only the entry with the obligation is rewritten"
        );
    }

    #[test]
    fn conditional_reads_in_entries_are_not_forwarded() {
        let request = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": "Observation/o1",
                           "ifNoneMatch": "W/\"3\"", "ifModifiedSince": "2026-01-01T00:00:00Z" } },
        ]});
        let decisions = vec![allow(Obligations::default())];
        let (forwarded, _) = plan(request.to_string().as_bytes(), &decisions, &[]).unwrap();
        let forwarded: Value = serde_json::from_slice(&forwarded).unwrap();
        // A 304 would say the resource is there without one to check against blocks.
        assert_eq!(
            forwarded["entry"][0]["request"],
            json!({ "method": "GET", "url": "Observation/o1" })
        );
    }

    #[test]
    fn a_write_entry_is_bound_to_the_version_read() {
        let request = |if_match: Option<&str>| {
            let mut entry = json!({ "request": { "method": "DELETE", "url": "Observation/o1" } });
            if let Some(if_match) = if_match {
                entry["request"]["ifMatch"] = json!(if_match);
            }
            json!({ "resourceType": "Bundle", "type": "batch", "entry": [entry,
                { "request": { "method": "GET", "url": "Observation/o2" } }] })
        };
        let decisions = vec![allow(Obligations::default()), allow(Obligations::default())];
        let versions = [Some("7".to_owned()), None];
        for asked in [
            None,
            Some("W/\"7\""),
            Some("\"7\""),
            Some("*"),
            Some("W/\"6\", W/\"7\""),
            Some("w/ \"7\""),
        ] {
            let (forwarded, _) =
                plan(request(asked).to_string().as_bytes(), &decisions, &versions).unwrap();
            let forwarded: Value = serde_json::from_slice(&forwarded).unwrap();
            assert_eq!(
                forwarded["entry"][0]["request"]["ifMatch"], "W/\"7\"",
                "{asked:?}"
            );
            assert!(forwarded["entry"][1]["request"].get("ifMatch").is_none());
        }
        assert!(matches!(
            plan(
                request(Some("W/\"6\"")).to_string().as_bytes(),
                &decisions,
                &versions
            ),
            Err(ProxyError::PreconditionFailed)
        ));
    }

    #[test]
    fn an_entry_whose_total_is_hidden_loses_its_last_link_too() {
        let entry = json!({ "response": { "status": "200 OK" }, "resource": {
            "resourceType": "Bundle", "type": "searchset", "total": 7,
            "link": [{ "relation": "self", "url": "https://fhir.example.dk/fhir/Observation" },
                     { "relation": "last", "url": "https://fhir.example.dk/fhir/_page/x" }] } });
        let hidden = Obligations {
            hide_total: true,
            ..Obligations::default()
        };
        let checked = checked_entry(entry.clone(), &hidden, FilterMode::Remove);
        assert!(checked["resource"].get("total").is_none(), "{checked}");
        assert_eq!(
            checked["resource"]["link"],
            json!([{ "relation": "self", "url": "https://fhir.example.dk/fhir/Observation" }])
        );
        let kept = checked_entry(entry.clone(), &Obligations::default(), FilterMode::Remove);
        assert_eq!(kept, entry);
    }

    #[test]
    fn an_all_denied_batch_needs_no_backend() {
        let request = json!({ "resourceType": "Bundle", "type": "batch", "entry": [{ "request": { "method": "GET", "url": "Patient/pat-bo" } }] });
        let decisions = vec![Decision::Deny {
            reason: DenyReason::InsufficientScope,
        }];
        let (_, plan) = plan(request.to_string().as_bytes(), &decisions, &[]).unwrap();
        assert!(!plan.forwards_anything());
        let merged: Value =
            serde_json::from_slice(&merge(None, &plan, FilterMode::Remove).unwrap()).unwrap();
        assert_eq!(merged["entry"][0]["response"]["status"], "403 Forbidden");
    }
}
