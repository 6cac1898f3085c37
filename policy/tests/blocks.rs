//! Property: nothing reveals what a block withholds. For generated searches and generated
//! answers, what a blocked caller gets is the same whether the blocking patient's data exists
//! or not: the same entries, no total that counts them, no notice; and whether a request is
//! refused for counting does not depend on the blocks at all.

use std::collections::HashMap;
use std::sync::Arc;

use portvagt_policy::compartment::Identified;
use portvagt_policy::consent::{
    AUTHORIZATION_SYSTEM, CallerIds, PatientBlocks, Refusals, blocks_in, count_refused,
    resource_withheld, withhold,
};
use portvagt_policy::{Reach, classify};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_796_299_200;
const PATIENTS: [&str; 3] = ["anne", "bo", "carla"];

fn caller() -> CallerIds {
    CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), "NS363".into())],
        references: vec!["Practitioner/prac-ns363".into()],
    }
}

/// Anne's Consent: a block of the physician, of everything or of one class.
fn anne_blocks(class: Option<&str>) -> PatientBlocks {
    let mut provision = json!({ "type": "deny", "actor": [{ "reference": {
        "identifier": { "system": AUTHORIZATION_SYSTEM, "value": "NS363" } } }] });
    if let Some(class) = class {
        provision["class"] = json!([{ "code": class }]);
    }
    let consent = json!({ "resourceType": "Consent", "id": "c1", "status": "active",
        "patient": { "reference": "Patient/anne" }, "provision": provision });
    let mut blocks = HashMap::new();
    blocks.insert(
        "anne".to_owned(),
        Arc::new(vec![blocks_in(&consent).unwrap()]),
    );
    blocks
}

/// Each patient's CPR number, as the gateway finds it by looking the identifier up.
fn identified() -> Identified {
    let mut identified = Identified::default();
    for patient in PATIENTS {
        identified.add(&format!("{CPR}|cpr-{patient}"), patient);
    }
    identified
}

const CPR: &str = "urn:oid:1.2.208.176.1.2";

/// One resource of a searchset: a type, its patient (by relative or absolute reference, or by
/// CPR number only), and maybe a second patient named as performer (in both compartments).
fn resource() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("Observation"), Just("Condition"), Just("Patient")],
        0..3usize,
        proptest::option::of(0..3usize),
        0..1000u32,
        0..3u8,
    )
        .prop_map(|(kind, subject, performer, id, spelling)| {
            let patient = PATIENTS[subject];
            let reference = match spelling {
                0 => json!({ "reference": format!("Patient/{patient}") }),
                1 => json!({ "reference": format!("https://fhir.example/R4/Patient/{patient}") }),
                _ => json!({ "identifier": { "system": CPR, "value": format!("cpr-{patient}") } }),
            };
            match kind {
                "Patient" => json!({ "resourceType": "Patient", "id": patient }),
                "Observation" => {
                    let mut observation = json!({ "resourceType": "Observation",
                        "id": format!("obs-{id}"), "subject": reference });
                    if let Some(performer) = performer {
                        observation["performer"] =
                            json!([{ "reference": format!("Patient/{}", PATIENTS[performer]) }]);
                    }
                    observation
                }
                _ => json!({ "resourceType": "Condition", "id": format!("cond-{id}"),
                    "subject": reference }),
            }
        })
}

/// What the blocked caller gets for `entries` as the backend's answer to a search.
fn answer(entries: &[Value], blocks: &PatientBlocks) -> Value {
    let mut answer = json!({ "resourceType": "Bundle", "type": "searchset",
        "total": entries.len(),
        "entry": entries.iter().map(|r| json!({ "resource": r, "search": { "mode": "match" } })).collect::<Vec<_>>() });
    let caller = caller();
    let refusal = json!({});
    let identified = identified();
    withhold(
        &mut answer,
        &|resource| {
            resource_withheld(
                resource,
                &identified,
                blocks,
                &caller,
                Some("TREATMENT"),
                NOW,
            )
        },
        &Refusals {
            forbidden: &refusal,
            not_found: &refusal,
            named: &[],
            identified: &identified,
        },
    );
    answer
}

/// Whether Anne's Consent (of `class`, or of everything) covers `resource`: the data that, for
/// this caller, may as well not exist.
fn anne_withholds(resource: &Value, class: Option<&str>) -> bool {
    let hers = identified()
        .patients_of(resource)
        .iter()
        .any(|p| p == "anne");
    hers && class.is_none_or(|class| resource["resourceType"] == class)
}

proptest! {
    #[test]
    fn a_blocked_caller_sees_the_same_with_and_without_the_patients_data(
        entries in proptest::collection::vec(resource(), 0..12),
        class in proptest::option::of(prop_oneof![Just("Observation"), Just("Condition")]),
    ) {
        let blocks = anne_blocks(class);
        let without_anne: Vec<Value> = entries
            .iter()
            .filter(|r| !anne_withholds(r, class))
            .cloned()
            .collect();
        let with = answer(&entries, &blocks);
        let without = answer(&without_anne, &blocks);
        prop_assert_eq!(&with, &without);
        prop_assert!(with.get("total").is_none());
    }

    #[test]
    fn whether_a_count_is_refused_does_not_depend_on_anyones_blocks(
        param in prop_oneof![
            Just("code=x"), Just("subject=anne"), Just("patient=Patient/bo"),
            Just("performer=prac-1"), Just("subject:Patient=carla"),
            Just("subject=https://x.example/Patient/anne"), Just("_id=o1"),
        ],
        count in prop_oneof![Just("_summary=count"), Just("_count=0"), Just("_count=10")],
    ) {
        let query = format!("{param}&{count}");
        let request = classify("GET", "Observation", Some(&query)).unwrap();
        let reach = Reach::of(&request);
        // A pure function of the request: the same for every caller and every set of blocks.
        let refused = count_refused(&request, &reach);
        let names_a_patient = !reach.patients().is_empty()
            || (param.starts_with("subject=") && !reach.possible().is_empty());
        if count != "_count=10" && !names_a_patient {
            prop_assert!(refused, "{}", query);
        }
        if count == "_count=10" {
            prop_assert!(!refused, "{}", query);
        }
    }
}
