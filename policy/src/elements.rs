//! `_elements` under every scope. An answer cut down to the elements a client asked for would
//! hide the references that say whose data it is, which the compartment check, citizens'
//! blocks and the audit record all read. Rather than refuse it, the gateway asks the backend
//! for those references too ([`widening`]) and takes them out of the answer once every check
//! has read them. Only the plain form is widened: `_elements` once, without a modifier, on a
//! read or search of one type without `_include`s, outside a batch; any other use of it is
//! still refused as hiding references ([`crate::consent::hides_references`]).

use crate::compartment::{is_shared_type, patient_paths};
use crate::request::{FhirRequest, Interaction, RequestBody};
use crate::shape::reaches_other_types;

/// Whether `request` uses `_elements` in the one form the gateway widens: once, without a
/// modifier, naming top-level elements only (no `.`, no `*`), on a read or search of one type
/// whose patient references the gateway knows (or reference data), reaching no other type
/// (`_include`, `_has`, chains, `_contained`). A batch entry is never widened (its caller
/// decides that, [`crate::consent::hides_references`]).
pub(crate) fn widenable(request: &FhirRequest) -> bool {
    let mut elements = request
        .params()
        .iter()
        .filter(|(name, _)| name.split(':').next() == Some("_elements"));
    let one_plain = matches!(
        (elements.next(), elements.next()),
        (Some((name, value)), None)
            if name == "_elements" && !value.contains(['.', '*'])
    );
    // Decided for every request: most have no `_elements`, and are done here.
    if !one_plain {
        return false;
    }
    let plain_read = matches!(
        request.interaction(),
        Interaction::Read
            | Interaction::Vread
            | Interaction::SearchType
            | Interaction::SearchCompartment
    );
    let reaches_further = reaches_other_types(request)
        || request
            .params()
            .iter()
            .any(|(name, _)| name.starts_with("_contained"));
    let known = request
        .resource_type()
        .is_some_and(|t| is_shared_type(t.as_str()) || patient_paths(t.as_str()).next().is_some());
    plain_read
        && !reaches_further
        && known
        && !matches!(request.body(), Some(RequestBody::Bundle { .. }))
}

/// The elements the gateway adds to a widenable `_elements` (those the client did not ask for):
/// the first step of every path by which the type names a patient (the compartment links, and
/// the patient references of types outside the compartment such as `Device.patient`), and
/// `contained` (a contained resource can be someone else's). Empty when nothing is to add.
pub fn widening(request: &FhirRequest) -> Vec<String> {
    if !widenable(request) {
        return Vec::new();
    }
    let Some(resource_type) = request.resource_type() else {
        return Vec::new();
    };
    let type_name = resource_type.as_str();
    if is_shared_type(type_name) {
        return Vec::new();
    }
    let asked: Vec<&str> = request.elements().map(str::trim).collect();
    let mut added: Vec<String> = Vec::new();
    let needed = patient_paths(type_name)
        .filter_map(|path| path.split('.').next())
        .chain(["contained"]);
    for element in needed {
        if !asked.contains(&element) && !added.iter().any(|a| a == element) {
            added.push(element.to_owned());
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::classify;

    fn widened(path: &str, query: &str) -> Vec<String> {
        widening(&classify("GET", path, Some(query)).unwrap())
    }

    #[test]
    fn the_references_that_say_whose_data_it_is_are_added() {
        assert_eq!(
            widened("Observation", "_elements=code"),
            ["performer", "subject", "contained"]
        );
        // What was asked for is not added again.
        assert_eq!(
            widened("Observation/obs-1", "_elements=code,subject"),
            ["performer", "contained"]
        );
        assert_eq!(
            widened("Encounter", "_elements=status&status=finished"),
            ["subject", "contained"]
        );
        // Outside the compartment, the patient references the checks read.
        assert_eq!(
            widened("Device/dev-1", "_elements=type"),
            ["patient", "contained"]
        );
        // Nothing to widen: no _elements, reference data.
        assert!(widened("Observation", "code=x").is_empty());
        assert!(widened("Practitioner", "_elements=name").is_empty());
    }

    #[test]
    fn only_the_plain_form_is_widened() {
        for query in [
            "_elements:exclude=subject",
            "_elements=code&_elements=value",
            "_elements=code&_include=Observation:subject",
            "_elements=code&_revinclude=Provenance:target",
            "_elements=subject.reference",
            "_elements=*.subject",
            "_elements=code&_has:Observation:subject:code=x",
            "_elements=code&_contained=true",
        ] {
            let request = classify("GET", "Observation", Some(query)).unwrap();
            assert!(!widenable(&request), "{query}");
            assert!(widening(&request).is_empty(), "{query}");
        }
        // A type whose patient references the gateway does not know is not widened.
        let stored = classify("GET", "Bundle/b-1", Some("_elements=type")).unwrap();
        assert!(!widenable(&stored));
    }
}
