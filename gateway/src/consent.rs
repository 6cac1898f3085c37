//! Negative consent enforcement: citizens' blocks (FHIR `Consent` resources in the backend)
//! are loaded per patient, cached briefly, and applied to every interaction: before the
//! request (the patients it names or writes about) and after (the patients in the answer:
//! a read is refused, search and history entries are withheld with a marker, batch entries
//! are answered 403 one by one). Break-the-glass ([`Emergency`]) lifts a block, never a scope
//! or a rule; it is counted and audited with its reason. Matching is in
//! [`portvagt_policy::consent`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portvagt_policy::FhirRequest;
use portvagt_policy::compartment::patients_of;
use portvagt_policy::consent::{
    AUTHORIZATION_SYSTEM, Block, CPR_SYSTEM, CVR_SYSTEM, CallerIds, ConsentVerdict, Emergency,
    blocks_in, check,
};
use portvagt_policy::request::RequestBody;
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::config::ConsentConfig;
use crate::outcome::DETAIL_SYSTEM;
use crate::proxy::Backend;

/// How many patients' Consents are asked for in one search.
const CHUNK: usize = 40;

/// The patient id of a reference: `Patient/<id>`, absolute or relative, any version.
fn patient_id(reference: &str) -> Option<&str> {
    let reference = reference.split("/_history/").next()?;
    let (rest, id) = reference.rsplit_once('/')?;
    (rest == "Patient" || rest.ends_with("/Patient")).then_some(id)
}

/// The header that carries the reason for a break-the-glass access.
pub const BREAK_GLASS_HEADER: &str = "x-portvagt-break-glass-reason";

/// Consents could not be loaded: the access is refused (503), never let through unchecked.
#[derive(Debug, thiserror::Error)]
#[error("the patients' consents could not be checked")]
pub struct ConsentUnavailable;

/// The blocks of each patient, loaded from the backend and cached.
#[derive(Debug)]
pub struct ConsentStore {
    backend: Arc<Backend>,
    ttl: Duration,
    capacity: usize,
    cache: Mutex<HashMap<String, Cached>>,
}

/// One patient's blocks and until when they may be used.
type Cached = (Instant, Arc<Vec<Block>>);

impl ConsentStore {
    /// A store reading Consents from `backend`.
    pub fn new(config: &ConsentConfig, backend: Arc<Backend>) -> ConsentStore {
        ConsentStore {
            backend,
            ttl: config.cache_ttl,
            capacity: config.cache_entries.max(1),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The blocks of each of `patients` (ids), from the cache or, for the rest, one search.
    pub async fn blocks(
        &self,
        patients: &[String],
    ) -> Result<HashMap<String, Arc<Vec<Block>>>, ConsentUnavailable> {
        let now = Instant::now();
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            for patient in patients {
                match cache.get(patient) {
                    Some((expires, blocks)) if *expires > now => {
                        found.insert(patient.clone(), blocks.clone());
                    }
                    _ => missing.push(patient.clone()),
                }
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let mut loaded: HashMap<String, Vec<Block>> =
            missing.iter().map(|p| (p.clone(), Vec::new())).collect();
        // A few patients per search keep the URL short and each answer on one page.
        for chunk in missing.chunks(CHUNK) {
            let consents = self
                .backend
                .active_consents(chunk)
                .await
                .ok_or(ConsentUnavailable)?;
            for consent in &consents {
                let Some(block) = blocks_in(consent) else {
                    continue;
                };
                let owner = consent
                    .pointer("/patient/reference")
                    .and_then(Value::as_str)
                    .and_then(patient_id)
                    .filter(|id| chunk.iter().any(|p| p == id));
                match owner {
                    Some(patient) => loaded.entry(patient.to_owned()).or_default().push(block),
                    // Found for one of these patients but not placeable: it holds for each.
                    None => {
                        for patient in chunk {
                            loaded
                                .entry(patient.clone())
                                .or_default()
                                .push(block.clone());
                        }
                    }
                }
            }
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() + loaded.len() > self.capacity {
            cache.retain(|_, (expires, _)| *expires > now);
            if cache.len() + loaded.len() > self.capacity {
                cache.clear();
            }
        }
        for (patient, blocks) in loaded {
            let blocks = Arc::new(blocks);
            cache.insert(patient.clone(), (now + self.ttl, blocks.clone()));
            found.insert(patient, blocks);
        }
        Ok(found)
    }
}

/// The caller as consent actors see them: authorisation id, CPR, organisation (SOR/CVR, from
/// the token or the client certificate) and `fhirUser`.
pub fn caller_ids(principal: &Principal) -> CallerIds {
    let identity = principal.identity();
    let mut ids = CallerIds::default();
    if let Some(authorization) = &identity.authorization_id {
        ids.identifiers
            .push((AUTHORIZATION_SYSTEM.into(), authorization.clone()));
    }
    if let Some(cpr) = &identity.cpr {
        ids.identifiers.push((CPR_SYSTEM.into(), cpr.clone()));
    }
    if let Some(organisation) = &identity.organisation {
        ids.identifiers
            .push((organisation.system(), organisation.id.clone()));
    }
    if let Some(cvr) = principal.peer().cvr() {
        ids.identifiers.push((CVR_SYSTEM.into(), cvr.to_owned()));
    }
    if let Some(fhir_user) = principal.fhir_user() {
        ids.references.push(fhir_user.to_owned());
    }
    ids
}

/// The patients a request names or writes about: the Patient addressed, the compartment
/// searched, `patient`/`subject` parameters, and the resource in a create or update body.
pub fn patients_named_by(request: &FhirRequest) -> Vec<String> {
    let mut patients = Vec::new();
    if let (Some(resource_type), Some(id)) = (request.resource_type(), request.id())
        && resource_type.as_str() == "Patient"
    {
        patients.push(id.to_owned());
    }
    if let Some((resource_type, id)) = request.compartment()
        && resource_type.as_str() == "Patient"
    {
        patients.push(id.to_owned());
    }
    for name in ["patient", "subject"] {
        for value in request.param_values(name) {
            for one in value.split(',') {
                let id = one.strip_prefix("Patient/").unwrap_or(one);
                if (name == "patient" || one.starts_with("Patient/"))
                    && !id.is_empty()
                    && !id.contains('/')
                {
                    patients.push(id.to_owned());
                }
            }
        }
    }
    if let Some(RequestBody::Resource(resource)) = request.body() {
        patients.extend(patients_of(resource));
    }
    patients.sort_unstable();
    patients.dedup();
    patients
}

/// What checking a set of patients found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Patients whose data the caller may not see (blocks that stand).
    pub blocked: Vec<String>,
    /// Patients whose blocks break-the-glass lifted.
    pub broken_glass: Vec<String>,
    /// EMERGENCY was claimed without a reason where a block applied.
    pub reason_missing: bool,
}

/// Checks `patients` against their `blocks` for `caller`.
pub fn check_patients(
    patients: &[String],
    blocks: &HashMap<String, Arc<Vec<Block>>>,
    caller: &CallerIds,
    emergency: Emergency<'_>,
) -> Checked {
    let mut checked = Checked::default();
    for patient in patients {
        let Some(patient_blocks) = blocks.get(patient) else {
            continue;
        };
        match check(patient_blocks, caller, emergency) {
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

/// Removes what `blocked` patients' consents withhold from a Bundle answer: search and history
/// entries are dropped (and one OperationOutcome entry says so), batch and transaction
/// entries become 403s. Returns how many entries were withheld.
pub fn withhold(bundle: &mut Value, blocked: &[String]) -> usize {
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return 0;
    };
    let is_blocked = |entry: &Value| {
        entry
            .get("resource")
            .is_some_and(|resource| patients_of(resource).iter().any(|p| blocked.contains(p)))
    };
    let outcome = |count: usize| {
        json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": "information",
                "code": "suppressed",
                "details": { "coding": [{ "system": DETAIL_SYSTEM, "code": "consent-filtered" }] },
                "diagnostics": format!("{count} entries were withheld: the patient has blocked this access")
            }]
        })
    };
    if kind == "batch-response" || kind == "transaction-response" {
        let mut withheld = 0;
        for entry in entries.iter_mut().filter(|entry| is_blocked(entry)) {
            withheld += 1;
            entry["resource"] = outcome(1);
            entry["response"] = json!({ "status": "403 Forbidden", "outcome": outcome(1) });
        }
        return withheld;
    }
    let before = entries.len();
    entries.retain(|entry| !is_blocked(entry));
    let withheld = before - entries.len();
    if withheld > 0 {
        entries.push(json!({ "resource": outcome(withheld), "search": { "mode": "outcome" } }));
    }
    withheld
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consents_are_placed_by_any_form_of_patient_reference() {
        assert_eq!(patient_id("Patient/anne"), Some("anne"));
        assert_eq!(
            patient_id("https://fhir.example/R4/Patient/anne/_history/2"),
            Some("anne")
        );
        assert_eq!(patient_id("Group/anne"), None);
        assert_eq!(patient_id("anne"), None);
    }

    #[test]
    fn blocked_patients_entries_are_withheld_and_marked() {
        let mut searchset = json!({ "resourceType": "Bundle", "type": "searchset", "entry": [
            { "resource": { "resourceType": "Observation", "subject": { "reference": "Patient/anne" } } },
            { "resource": { "resourceType": "Observation", "subject": { "reference": "Patient/bo" } } },
            { "resource": { "resourceType": "Patient", "id": "anne" } }
        ]});
        assert_eq!(withhold(&mut searchset, &["anne".to_owned()]), 2);
        let entries = searchset["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["resource"]["subject"]["reference"], "Patient/bo");
        assert_eq!(entries[1]["search"]["mode"], "outcome");

        let mut batch = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "resource": { "resourceType": "Patient", "id": "anne" }, "response": { "status": "200 OK" } },
            { "resource": { "resourceType": "Patient", "id": "bo" }, "response": { "status": "200 OK" } }
        ]});
        assert_eq!(withhold(&mut batch, &["anne".to_owned()]), 1);
        assert_eq!(batch["entry"][0]["response"]["status"], "403 Forbidden");
        assert_eq!(batch["entry"][1]["response"]["status"], "200 OK");
    }
}
