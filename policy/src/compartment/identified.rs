//! References by identifier only, placed: a resource stored with `subject: {identifier: {system:
//! <CPR>, value: …}}` is that patient's data as much as one that says `Patient/<id>`, but only
//! the backend knows which Patient carries the identifier. The gateway collects the identifiers
//! an answer uses that way ([`identifiers_in_answer`]), looks them up, and hands what it found
//! back as [`Identified`], which answers "whose data is this?" with both spellings.

use std::collections::HashMap;

use serde_json::Value;

use super::{collect_patients, identifier_refs};

/// The identifiers (`system|value`) that an answer's references by identifier only use where
/// they may name a patient (as [`super::membership`] reads them).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AnswerIdentifiers {
    /// Sorted, without duplicates.
    pub tokens: Vec<String>,
    /// Some reference by identifier only may name a patient but cannot be looked up as a token
    /// search (no system, no value, or characters a token search reads otherwise).
    pub unplaceable: bool,
}

/// The identifiers an answer (a resource, or a Bundle's entries at any depth) names patients
/// by, as whose data it holds: a Patient is her own (whom she links to is not whose record she
/// is, as [`super::patients_of`] reads her).
pub fn identifiers_in_answer(answer: &Value) -> AnswerIdentifiers {
    identifiers(answer, false)
}

/// [`identifiers_in_answer`], a Patient's links by identifier included: what a write of her
/// reaches into.
pub fn identifiers_written(body: &Value) -> AnswerIdentifiers {
    identifiers(body, true)
}

fn identifiers(answer: &Value, patient_links: bool) -> AnswerIdentifiers {
    let mut found = AnswerIdentifiers::default();
    for_each_resource(answer, &mut |resource| {
        if patient_links || !is_patient(resource) {
            identifier_refs(resource, &mut |token| match token {
                Some(token) => found.tokens.push(token),
                None => found.unplaceable = true,
            });
        }
    });
    found.tokens.sort_unstable();
    found.tokens.dedup();
    found
}

fn is_patient(resource: &Value) -> bool {
    resource.get("resourceType").and_then(Value::as_str) == Some("Patient")
}

/// Whether `resource` (or an entry of it, if a Bundle) has a reference by identifier only that
/// may name a patient and cannot be looked up: whose data it is, nobody can say.
pub fn unplaceable(resource: &Value) -> bool {
    identifiers_in_answer(resource).unplaceable
}

/// The Patients the identifiers of references by identifier only were found on: each
/// `system|value` with the ids of the Patients the backend holds it for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identified {
    patients: HashMap<String, Vec<String>>,
}

impl Identified {
    /// Records that `patient` carries `identifier` (`system|value`).
    pub fn add(&mut self, identifier: &str, patient: &str) {
        let patients = self.patients.entry(identifier.to_owned()).or_default();
        if !patients.iter().any(|known| known == patient) {
            patients.push(patient.to_owned());
        }
    }

    /// The Patients found carrying `identifier` (`system|value`).
    pub fn patients_of_identifier(&self, identifier: &str) -> &[String] {
        self.patients.get(identifier).map_or(&[], Vec::as_slice)
    }

    /// Whether nothing was found (then [`Self::patients_of`] is [`super::patients_of`]).
    pub fn is_empty(&self) -> bool {
        self.patients.is_empty()
    }

    /// The patients a write of `resource` (or of a Bundle's entries) reaches: whose data it is
    /// ([`Self::patients_of`]), and those a Patient links to, by id or by an identifier found
    /// here ([`identifiers_written`]). Sorted, without duplicates.
    pub fn patients_written(&self, resource: &Value) -> Vec<String> {
        let mut patients = self.patients_of(resource);
        for token in identifiers_written(resource).tokens {
            patients.extend(self.patients_of_identifier(&token).iter().cloned());
        }
        for_each_resource(resource, &mut |resource| {
            patients.extend(super::linked_patients(resource));
        });
        patients.sort_unstable();
        patients.dedup();
        patients
    }

    /// The patients whose data `resource` is (a Bundle: its entries' at any depth): those it
    /// references by id, as [`super::patients_of`], and those it names by an identifier found
    /// here. Sorted, without duplicates.
    pub fn patients_of(&self, resource: &Value) -> Vec<String> {
        let mut patients = Vec::new();
        collect_patients(resource, &mut patients);
        if !self.is_empty() {
            for_each_resource(resource, &mut |resource| {
                if is_patient(resource) {
                    return;
                }
                identifier_refs(resource, &mut |token| {
                    if let Some(found) = token.and_then(|token| self.patients.get(&token)) {
                        patients.extend(found.iter().cloned());
                    }
                });
            });
        }
        patients.sort_unstable();
        patients.dedup();
        patients
    }
}

/// Each resource of `resource` as [`super::patients_of`] reads them: a Bundle's entries'
/// resources (at any depth), else itself.
fn for_each_resource(resource: &Value, visit: &mut dyn FnMut(&Value)) {
    if resource.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
        for inner in resource
            .get("entry")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.get("resource"))
        {
            for_each_resource(inner, visit);
        }
    } else {
        visit(resource);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn by_cpr(value: &str) -> Value {
        json!({ "identifier": { "system": "urn:oid:1.2.208.176.1.2", "value": value } })
    }

    #[test]
    fn identifiers_are_collected_where_membership_reads_a_patient() {
        let answer = json!({ "resourceType": "Bundle", "type": "searchset", "entry": [
            { "resource": { "resourceType": "Observation", "id": "a", "subject": by_cpr("0101") } },
            // Typed Patient on another compartment path.
            { "resource": { "resourceType": "Observation", "id": "b",
                "performer": [{ "type": "Patient",
                    "identifier": { "system": "urn:oid:1.2.208.176.1.2", "value": "0202" } }] } },
            // Untyped on a performer: a professional, as membership reads it.
            { "resource": { "resourceType": "Observation", "id": "c", "performer": [by_cpr("0303")] } },
            // A Bundle inside the answer (a document).
            { "resource": { "resourceType": "Bundle", "entry": [
                { "resource": { "resourceType": "Condition", "subject": by_cpr("0404") } }
            ] } },
            // By id and by identifier at once: the id counts, not the identifier.
            { "resource": { "resourceType": "Observation", "subject": {
                "reference": "Patient/x", "identifier": { "system": "s", "value": "v" } } } }
        ]});
        let found = identifiers_in_answer(&answer);
        assert_eq!(
            found.tokens,
            [
                "urn:oid:1.2.208.176.1.2|0101",
                "urn:oid:1.2.208.176.1.2|0202",
                "urn:oid:1.2.208.176.1.2|0404"
            ]
        );
        assert!(!found.unplaceable);
    }

    #[test]
    fn a_contained_patient_is_whoever_its_identifiers_say() {
        let observation = json!({ "resourceType": "Observation",
            "contained": [
                { "resourceType": "Patient", "id": "p1", "identifier": [
                    { "system": "urn:oid:1.2.208.176.1.2", "value": "0101" },
                    { "system": "urn:dk:mrn", "value": "77" }] },
                { "resourceType": "Practitioner", "id": "d1", "identifier": [
                    { "system": "https://autregweb.sst.dk", "value": "NS363" }] }],
            "subject": { "reference": "#p1" }, "performer": [{ "reference": "#d1" }] });
        assert_eq!(
            identifiers_in_answer(&observation).tokens,
            ["urn:dk:mrn|77", "urn:oid:1.2.208.176.1.2|0101"]
        );
        let bytes = observation.to_string();
        assert_eq!(super::super::patients_in_body(bytes.as_bytes()), None);
        let mut identified = Identified::default();
        identified.add("urn:oid:1.2.208.176.1.2|0101", "anne");
        assert_eq!(identified.patients_of(&observation), ["anne"]);
    }

    /// A local reference names what the resource contains under that id: nothing (a reference
    /// spelled as a patient's URL, `#http://h/Patient/anne`), or two of one id, is somebody
    /// nobody can place; a contained professional is nobody's patient.
    #[test]
    fn a_local_reference_to_nothing_or_to_two_contained_is_unplaceable() {
        let practitioner = json!({ "resourceType": "Practitioner", "id": "x" });
        let patient = json!({ "resourceType": "Patient", "id": "x",
            "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": "0101" }] });
        for (contained, reference, unplaceable) in [
            (json!([]), "#http://h/Patient/anne", true),
            (
                json!([practitioner]),
                "#http://h/Patient/anne/_history/1",
                true,
            ),
            (json!([practitioner, patient]), "#x", true),
            (json!([patient, practitioner]), "#x", true),
            (json!([practitioner]), "#x", false),
            (json!([]), "#", true),
        ] {
            let resource = json!({ "resourceType": "Observation", "contained": contained,
                "subject": { "reference": "Patient/bo" }, "performer": [{ "reference": reference }] });
            assert_eq!(
                identifiers_in_answer(&resource).unplaceable,
                unplaceable,
                "{resource}"
            );
            let bytes = resource.to_string();
            assert_eq!(super::super::patients_in_body(bytes.as_bytes()), None);
        }
    }

    #[test]
    fn an_identifier_that_cannot_be_looked_up_is_unplaceable() {
        for subject in [
            json!({ "identifier": { "value": "0101" } }),
            json!({ "identifier": { "system": "s" } }),
            json!({ "identifier": { "system": "s", "value": "a,b" } }),
            json!({ "identifier": { "system": "s", "value": "a|b" } }),
            json!({ "identifier": { "system": "s", "value": "" } }),
        ] {
            let resource = json!({ "resourceType": "Observation", "subject": subject });
            assert!(identifiers_in_answer(&resource).unplaceable, "{resource}");
            assert!(unplaceable(&resource), "{resource}");
        }
        assert!(!unplaceable(
            &json!({ "resourceType": "Observation", "subject": by_cpr("0101") })
        ));
    }

    #[test]
    fn identified_patients_join_those_named_by_id() {
        let mut identified = Identified::default();
        identified.add("urn:oid:1.2.208.176.1.2|0101", "anne");
        identified.add("urn:oid:1.2.208.176.1.2|0101", "anne");
        let observation = json!({ "resourceType": "Observation", "subject": by_cpr("0101"),
            "performer": [{ "reference": "Patient/bo" }] });
        assert_eq!(identified.patients_of(&observation), ["anne", "bo"]);
        assert_eq!(super::super::patients_of(&observation), ["bo"]);
        let unknown = json!({ "resourceType": "Observation", "subject": by_cpr("9999") });
        assert!(identified.patients_of(&unknown).is_empty());
        let bundle = json!({ "resourceType": "Bundle", "entry": [{ "resource": observation }] });
        assert_eq!(identified.patients_of(&bundle), ["anne", "bo"]);
    }
}
