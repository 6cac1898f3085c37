//! Tests of compartment membership: the generated table, references followed through arrays,
//! lookalike and identifier-only references that place nobody, and the patients an answer is
//! about. Test code only: the compartment module may not depend on anything here.

use serde_json::{Value, json};

/// [`super::membership`], and the same answer from the resource read as raw fields (as the
/// response filter reads it, the common Reference shape without a tree): every membership
/// asked below is asked of both readings.
fn membership(resource: &Value, patient: &str) -> super::Membership {
    let tree = super::membership(resource, patient);
    let text = resource.to_string();
    let raw: crate::raw::OrderedRaw<'_> = serde_json::from_str(&text).unwrap();
    assert_eq!(super::membership_raw(&raw, patient), tree, "{resource}");
    tree
}

#[test]
fn a_reference_by_identifier_only_is_nobody_we_can_place() {
    use super::{Membership, patient_reference_id};
    // Bo's, by CPR, with Anne as performer: not Anne's.
    let by_identifier = json!({ "resourceType": "Observation",
        "subject": { "identifier": { "system": "urn:oid:1.2.208.176.1.2", "value": "0501792275" } },
        "performer": [{ "reference": "Patient/pat-anne" }] });
    assert_eq!(membership(&by_identifier, "pat-anne"), Membership::Outside);
    let typed = json!({ "resourceType": "Observation",
        "subject": { "reference": "Patient/pat-anne" },
        "performer": [{ "type": "Patient", "identifier": { "value": "x" } }] });
    assert_eq!(membership(&typed, "pat-anne"), Membership::Outside);
    // Typed by its canonical URL, or by no resource type, or with a blank reference beside: the
    // same as typed `Patient`.
    for subject in [
        json!({ "type": "http://hl7.org/fhir/StructureDefinition/Patient", "identifier": { "value": "x" } }),
        json!({ "type": "patient", "identifier": { "value": "x" } }),
        json!({ "reference": " ", "type": "Patient", "identifier": { "value": "x" } }),
    ] {
        let named = json!({ "resourceType": "Observation", "subject": subject,
            "performer": [{ "reference": "Patient/pat-anne" }] });
        assert_eq!(
            membership(&named, "pat-anne"),
            Membership::Outside,
            "{named}"
        );
    }
    // A professional named by identifier is no patient.
    let professional = json!({ "resourceType": "Observation",
        "subject": { "reference": "Patient/pat-anne" },
        "performer": [{ "identifier": { "system": "https://autregweb.sst.dk", "value": "NS363" } }] });
    assert_eq!(membership(&professional, "pat-anne"), Membership::Member);
    // An access log entry: its system agent by identifier is nobody's patient.
    let event = json!({ "resourceType": "AuditEvent",
        "agent": [{ "who": { "identifier": { "value": "journalsystem" } } }],
        "entity": [{ "what": { "reference": "Patient/pat-anne" } }] });
    assert_eq!(membership(&event, "pat-anne"), Membership::Member);
    assert_eq!(
        patient_reference_id("https://x.example/fhir/Patient/a/_history/2"),
        Some("a")
    );
    assert_eq!(patient_reference_id("Patient/a"), Some("a"));
    // Outside the compartment, still hers: an implant, a stored document.
    let device =
        json!({ "resourceType": "Device", "patient": { "reference": "Patient/pat-anne" } });
    let binary =
        json!({ "resourceType": "Binary", "securityContext": { "reference": "Patient/pat-anne" } });
    for resource in [device, binary] {
        assert_eq!(super::patients_of(&resource), ["pat-anne"], "{resource}");
        let bytes = serde_json::to_vec(&resource).unwrap();
        assert_eq!(
            super::patients_in_body(&bytes).unwrap(),
            ["pat-anne"],
            "{resource}"
        );
    }
    assert_eq!(patient_reference_id("Group/a"), None);
    assert_eq!(patient_reference_id("xPatient/a"), None);
}

/// An absolute Patient reference begins with a URL scheme; anything else that ends in
/// `…://…/Patient/<id>` is not read as her: a local reference to a contained resource whose id
/// looks like a URL (which only a lookup places), or a spelling nobody can place.
#[test]
fn only_a_url_with_a_scheme_is_an_absolute_patient_reference() {
    for (reference, expected) in [
        ("https://x.example/fhir/Patient/a", Some("a")),
        ("http://x/Patient/a/_history/1", Some("a")),
        ("urn+x.y-z9://h/Patient/a", Some("a")),
        ("#://x/Patient/a", None),
        ("#http://x/Patient/a", None),
        ("://x/Patient/a", None),
        ("9http://x/Patient/a", None),
        ("ht tp://x/Patient/a", None),
        ("h_t://x/Patient/a", None),
        ("/https://x/Patient/a", None),
        // Read by their last pair they would be Bo's; by their first, or refused, not.
        ("https://h/Patient/anne/../Patient/bo", None),
        ("https://h/./Patient/bo", None),
        ("https://h/Patient/anne?x=/Patient/bo", None),
        ("https://h/Patient/anne#/Patient/bo", None),
        ("https://h/Patient/anne%2F..%2F/Patient/bo", None),
        ("https://h.example:8443/fhir/R4/Patient/bo", Some("bo")),
    ] {
        assert_eq!(patient_reference_id(reference), expected, "{reference}");
    }
    // Whom those name is for a lookup (a contained resource) or nobody (an odd spelling), on
    // the path of every kind of resource: never her by its spelling.
    for (reference, by_lookup) in [
        ("#://x/Patient/a", true),
        ("://x/Patient/a", true),
        ("ht tp://x/Patient/a", true),
        ("https://h/Patient/anne/../Patient/bo", true),
        ("Practitioner/p", false),
        ("urn:portvagt:untyped-by-identifier", false),
    ] {
        let placed = super::placed(reference, "performer");
        let expected = if by_lookup {
            super::Placed::ByLookup
        } else {
            super::Placed::Not
        };
        assert_eq!(placed, expected, "{reference}");
    }
    assert_eq!(
        super::placed("https://x/Patient/a", "subject"),
        super::Placed::Plainly("a")
    );
    let hidden = json!({ "resourceType": "Observation",
        "contained": [{ "resourceType": "Patient", "id": "://x/Patient/pat-anne" }],
        "subject": { "reference": "#://x/Patient/pat-anne" } });
    assert!(super::patients_of(&hidden).is_empty(), "{hidden}");
    assert_eq!(super::patients_in_body(hidden.to_string().as_bytes()), None);
}

#[test]
fn the_patients_read_from_bytes_are_those_of_the_parsed_answer() {
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testbed/backend/seed/bundle.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let answers = [
        seed.clone(),
        json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
            { "resource": seed },
            { "resource": { "resourceType": "Patient", "id": "pat-x" } },
            { "response": { "status": "404" } },
        ]}),
        json!({ "resourceType": "Observation", "subject": { "reference": "Patient/pat-anne" },
                "performer": [{ "reference": "Patient/pat-bo/_history/2" }, { "reference": "Practitioner/p" }] }),
        json!({ "resourceType": "Patient", "id": "pat-anne" }),
        json!({ "resourceType": "Patient", "id": 7 }),
        json!({ "resourceType": "Organization", "id": "org" }),
        json!({ "resourceType": "Bundle", "entry": "odd" }),
        json!({ "resourceType": 1, "subject": { "reference": "Patient/pat-anne" } }),
        json!({ "resourceType": "List", "subject": { "reference": "Patient/pat-anne" },
                "entry": [{ "item": { "reference": "Observation/o1" } }] }),
        json!({ "entry": [{ "resource": { "resourceType": "Patient", "id": "pat-anne" } }],
                "resourceType": "Bundle" }),
        // What the path reaches, in every shape: arrays in arrays, a reference that is not a
        // string beside an identifier, identifiers typed and untyped, a type that is not a
        // string, a path of two steps.
        json!({ "resourceType": "Observation",
                "subject": [[{ "reference": "Patient/pat-a" }], { "reference": 7, "identifier": { "value": "x" } }],
                "performer": [{ "identifier": { "value": "y" }, "type": "Patient" },
                              { "identifier": { "value": "z" }, "type": 3 },
                              { "reference": "https://x.example/fhir/Patient/pat-b" }, "Patient/pat-c", 5, null] }),
        json!({ "resourceType": "Encounter", "subject": { "reference": "Patient/pat-d" },
                "participant": [{ "individual": { "reference": "Patient/pat-e" } }] }),
        json!({ "resourceType": "Device", "patient": [] }),
        // A path of two steps (`participant.actor`) whose first step looks like a Reference:
        // only what the whole path reaches counts.
        json!({ "resourceType": "Appointment",
                "participant": [{ "reference": "Patient/pat-bo" }, { "actor": { "reference": "Patient/pat-anne" } }] }),
        // A local reference spelled as an absolute Patient reference: it names a contained
        // resource, whose identifier only a lookup places (with one and without).
        json!({ "resourceType": "Bundle", "type": "searchset", "entry": [{ "resource": {
                "resourceType": "Observation", "id": "o1",
                "contained": [{ "resourceType": "Patient", "id": "://x/Patient/anne",
                                "identifier": [{ "system": "urn:oid:1.2.208.176.1.2", "value": "0101011234" }] }],
                "subject": { "reference": "#://x/Patient/anne" } } }] }),
        json!({ "resourceType": "Observation",
                "contained": [{ "resourceType": "Patient", "id": "http://h/Patient/anne" }],
                "subject": { "reference": "#http://h/Patient/anne/_history/1" } }),
        json!({ "resourceType": "Observation",
                "subject": { "reference": "#http://h/Patient/anne" } }),
        // Spelled as the reader's own markers begin: a backend's text, not a marker.
        json!({ "resourceType": "Observation",
                "subject": { "reference": "urn:portvagt:x/Patient/anne" } }),
        json!({ "resourceType": "Observation",
                "performer": [{ "reference": "urn:portvagt:patient-by-identifier" }] }),
    ];
    let mut seen = 0;
    for answer in answers {
        let expected = super::patients_in_answer(&answer);
        seen += expected.len();
        match super::patients_in_body(answer.to_string().as_bytes()) {
            // Read from the bytes: the same patients, and nobody a lookup would add.
            Some(patients) => {
                assert_eq!(patients, expected, "{answer}");
                assert_eq!(
                    super::identifiers_in_answer(&answer),
                    super::AnswerIdentifiers::default(),
                    "{answer}"
                );
            }
            // Only where the light reading cannot be faithful, or a patient is named by
            // identifier (a lookup is needed, on the tree).
            None => assert!(
                answer["entry"] == "odd"
                    || answer["resourceType"] == "List"
                    || answer.to_string().contains("\"#")
                    || super::identifiers_in_answer(&answer) != super::AnswerIdentifiers::default(),
                "{answer}"
            ),
        }
    }
    assert!(seen > 5, "the answers name patients: {seen}");
    // A patient named by identifier only, typed or on `subject`: the caller parses the answer
    // and looks the identifier up. Untyped on a performer: a professional, read from the bytes.
    for named in [
        r#"{"resourceType":"Observation","subject":{"identifier":{"system":"s","value":"v"}}}"#,
        r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Observation","performer":[{"type":"Patient","identifier":{"system":"s","value":"v"}}]}}]}"#,
        r#"{"resourceType":"Observation","subject":{"identifier":{"value":"v"}}}"#,
    ] {
        assert_eq!(super::patients_in_body(named.as_bytes()), None, "{named}");
    }
    assert_eq!(
        super::patients_in_body(
            br#"{"resourceType":"Observation","performer":[{"identifier":{"system":"s","value":"v"}}]}"#
        ),
        Some(Vec::new())
    );
    // A member a tree built by serde_json reads as the JSON its value holds: not read from the
    // bytes, where it stands (a resource, a patient path) or above.
    for hidden in [
        r#"{"resourceType":"Bundle","entry":[{"resource":{"$serde_json::private::RawValue":"{\"resourceType\":\"Patient\",\"id\":\"victim\"}"}}]}"#,
        r#"{"resourceType":"Observation","subject":{"$serde_json::private::RawValue":"{\"reference\":\"Patient/victim\"}"}}"#,
        r#"{"$serde_json::private::RawValue":"{\"resourceType\":\"Patient\",\"id\":\"victim\"}"}"#,
        r#"{"resourceType":"Bundle","entry":[{"$serde_json::private::RawValue":"{\"resource\":{\"resourceType\":\"Patient\",\"id\":\"victim\"}}"}]}"#,
    ] {
        assert_eq!(super::patients_in_body(hidden.as_bytes()), None, "{hidden}");
    }
    // A member given twice below the top, on a patient path or in `contained`: not read from
    // the bytes, and never a member (a client may keep the other one).
    for twice in [
        r#"{"resourceType":"Observation","subject":{"reference":"Patient/bo","reference":"Patient/anne"}}"#,
        r#"{"resourceType":"Observation","subject":{"reference":"Patient/anne"},"contained":[{"resourceType":"Observation","id":"c","id":"d"}]}"#,
    ] {
        if twice.contains("\"contained\"") {
            assert!(super::patients_in_body(twice.as_bytes()).is_some());
        } else {
            assert_eq!(super::patients_in_body(twice.as_bytes()), None, "{twice}");
        }
        let raw: crate::raw::OrderedRaw<'_> = serde_json::from_str(twice).unwrap();
        assert_eq!(
            super::membership_raw(&raw, "anne"),
            super::Membership::Outside,
            "{twice}"
        );
    }
    // Not an object, or a key given twice: the caller parses the answer instead.
    assert_eq!(super::patients_in_body(b"[1]"), None);
    assert_eq!(super::patients_in_body(b"not json"), None);
    assert_eq!(
        super::patients_in_body(
            br#"{"resourceType":"Observation","subject":{"reference":"Patient/a"},"subject":{"reference":"Patient/b"}}"#
        ),
        None
    );
    // Escaped keys and values read as the tree reads them.
    assert_eq!(
        super::patients_in_body(
            br#"{"resourceType":"Observation","subject":{"refer\u0065nce":"Patient/pat-\u0061"}}"#
        ),
        Some(vec!["pat-a".to_owned()])
    );
    for twice in [
        r#"{"resourceType":"Bundle","entry":[],"entry":[{"resource":{"resourceType":"Patient","id":"b"}}]}"#,
        r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"a","id":"b"}}]}"#,
        r#"{"resourceType":"Bundle","entry":[{"resource":{"resourceType":"Patient","id":"a"},"resource":{"resourceType":"Patient","id":"b"}}]}"#,
        r#"{"resourceType":"Bundle","entry":[1]}"#,
    ] {
        assert_eq!(super::patients_in_body(twice.as_bytes()), None, "{twice}");
    }
}

#[test]
fn bundles_nested_past_the_bound_are_left_to_the_tree_not_to_the_stack() {
    let nested = |depth: usize| {
        let mut body = r#"{"resourceType":"Bundle","entry":[{"resource":"#.repeat(depth);
        body.push_str(r#"{"resourceType":"Patient","id":"pat-anne"}"#);
        body.push_str(&"}]}".repeat(depth));
        body
    };
    assert_eq!(
        super::patients_in_body(nested(super::MAX_NESTED_BUNDLES).as_bytes()),
        Some(vec!["pat-anne".to_owned()])
    );
    // Raw values have no depth limit: read level by level, this would exhaust the stack.
    for depth in [super::MAX_NESTED_BUNDLES + 1, 50_000] {
        assert_eq!(super::patients_in_body(nested(depth).as_bytes()), None);
    }
    // So would arrays in arrays on a compartment path.
    let arrays = |depth: usize| {
        format!(
            r#"{{"resourceType":"Observation","subject":{}{{"reference":"Patient/pat-anne"}}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
    };
    assert_eq!(
        super::patients_in_body(arrays(20).as_bytes()),
        Some(vec!["pat-anne".to_owned()])
    );
    for depth in [200, 50_000] {
        assert_eq!(super::patients_in_body(arrays(depth).as_bytes()), None);
    }
}

#[test]
fn the_patients_an_answer_is_about_are_found_on_compartment_paths() {
    let observation = json!({
        "resourceType": "Observation", "id": "o1",
        "subject": { "reference": "Patient/anne" },
        "performer": [{ "reference": "Patient/bo/_history/2" }, { "reference": "Practitioner/p" }],
        "note": [{ "authorReference": { "reference": "Patient/ignored-not-a-compartment-path" } }]
    });
    assert_eq!(super::patients_of(&observation), vec!["anne", "bo"]);
    assert_eq!(
        super::patients_of(&json!({ "resourceType": "Patient", "id": "carla" })),
        vec!["carla"]
    );
    assert!(super::patients_of(&json!({ "resourceType": "Organization", "id": "x" })).is_empty());
    let bundle = json!({ "resourceType": "Bundle", "entry": [
        { "resource": observation },
        { "resource": { "resourceType": "Condition", "subject": { "reference": "Patient/anne" } } },
        { "resource": { "resourceType": "Patient", "id": "dan" } },
        { "response": { "status": "204" } }
    ]});
    assert_eq!(
        super::patients_in_answer(&bundle),
        vec!["anne", "bo", "dan"]
    );
}

use super::*;

#[test]
fn the_generated_table_is_sorted_and_knows_the_clinical_types() {
    assert!(PATIENT_COMPARTMENT.windows(2).all(|w| w[0].0 < w[1].0));
    for t in [
        "Observation",
        "Condition",
        "Encounter",
        "MedicationRequest",
        "AllergyIntolerance",
        "AuditEvent",
    ] {
        assert!(links(t).is_some(), "{t}");
    }
    for t in ["Practitioner", "Organization", "Medication", "Binary"] {
        assert!(links(t).is_none(), "{t}");
    }
    assert!(SHARED_TYPES.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn membership_follows_compartment_paths_through_arrays() {
    let observation =
        json!({ "resourceType": "Observation", "subject": { "reference": "Patient/pat-anne" } });
    assert_eq!(membership(&observation, "pat-anne"), Membership::Member);
    assert_eq!(membership(&observation, "pat-bo"), Membership::Outside);
    let performed = json!({ "resourceType": "Observation", "subject": { "reference": "Group/g1" },
        "performer": [{ "reference": "Practitioner/p" }, { "reference": "Patient/pat-bo" }] });
    assert_eq!(membership(&performed, "pat-bo"), Membership::Member);
    let audit = json!({ "resourceType": "AuditEvent", "entity": [{ "what": { "reference": "Patient/pat-anne/_history/3" } }] });
    assert_eq!(membership(&audit, "pat-anne"), Membership::Member);
}

/// A reference that mentions a Patient in a spelling servers read differently (`../Patient/bo`,
/// `/Patient/bo`: by its first pair, its last, or not at all) names someone the gateway cannot
/// place: not hers alone, and unplaceable. Plain references to other types name nobody.
#[test]
fn a_patient_spelled_oddly_is_nobody_the_gateway_can_place() {
    for other in [
        "../Patient/pat-bo",
        "/Patient/pat-bo",
        "x/Patient/pat-bo/_history/2",
    ] {
        let observation = json!({ "resourceType": "Observation",
            "subject": { "reference": other },
            "performer": [{ "reference": "Patient/pat-anne" }] });
        assert_eq!(
            membership(&observation, "pat-anne"),
            Membership::Outside,
            "{other}"
        );
        // Whom it names depends on the server: nobody can place it.
        assert!(super::unplaceable(&observation), "{other}");
        assert_eq!(
            super::patients_in_body(observation.to_string().as_bytes()),
            None,
            "{other}"
        );
    }
    for plain in [
        "Practitioner/p",
        "Practitioner/p/_history/3",
        "Organization/o",
    ] {
        let observation = json!({ "resourceType": "Observation",
            "subject": { "reference": "Patient/pat-anne" },
            "performer": [{ "reference": plain }] });
        assert_eq!(
            membership(&observation, "pat-anne"),
            Membership::Member,
            "{plain}"
        );
    }
    let odd = json!({ "resourceType": "Observation", "subject": { "reference": "Patient/pat-anne" },
        "performer": [{ "reference": "Practitioner/p/extra" }] });
    assert_eq!(membership(&odd, "pat-anne"), Membership::Outside);
    // A server's own types (Medplum's `Bot`) are other types too.
    let bot = json!({ "resourceType": "Observation", "subject": { "reference": "Patient/pat-anne" },
        "performer": [{ "reference": "Bot/b1" }] });
    assert_eq!(membership(&bot, "pat-anne"), Membership::Member);
    // Nothing may follow her version: a server reading the last pair reads Bo.
    let tail = json!({ "resourceType": "Observation",
        "subject": { "reference": "Patient/pat-anne/_history/1/../../Patient/pat-bo" } });
    assert_eq!(membership(&tail, "pat-anne"), Membership::Outside);
    assert!(patients_of(&tail).is_empty());
    assert!(super::unplaceable(&tail));
    // A contained resource naming a patient by such a path is another patient's.
    let contained = json!({ "resourceType": "Observation", "subject": { "reference": "Patient/pat-anne" },
        "contained": [{ "resourceType": "Observation", "id": "c",
            "subject": { "reference": "../Patient/pat-bo" } }] });
    assert_eq!(membership(&contained, "pat-anne"), Membership::Outside);
}

#[test]
fn lookalike_references_are_not_the_patient() {
    for reference in [
        "Patient/pat-anne2",
        "Patient/pat-ann",
        "patient/pat-anne",
        "Group/pat-anne",
        "Patient/pat-anne/x",
        "https://evil/Patient/pat-anne",
    ] {
        assert!(!references_patient(reference, "pat-anne"), "{reference}");
    }
    assert!(references_patient("Patient/pat-anne", "pat-anne"));
}

#[test]
fn the_patient_itself_shared_data_and_unknown_types() {
    assert_eq!(
        membership(
            &json!({ "resourceType": "Patient", "id": "pat-anne" }),
            "pat-anne"
        ),
        Membership::Member
    );
    assert_eq!(
        membership(
            &json!({ "resourceType": "Patient", "id": "pat-bo" }),
            "pat-anne"
        ),
        Membership::Outside
    );
    assert_eq!(
        membership(
            &json!({ "resourceType": "Practitioner", "id": "p" }),
            "pat-anne"
        ),
        Membership::Shared
    );
    assert_eq!(
        membership(&json!({ "resourceType": "Binary", "id": "b" }), "pat-anne"),
        Membership::Outside
    );
    assert_eq!(
        membership(&json!({ "id": "x" }), "pat-anne"),
        Membership::Outside
    );
}

#[test]
fn narrowing_prefers_patient_then_subject() {
    assert_eq!(narrowing_param("Observation"), Some("subject"));
    assert_eq!(narrowing_param("AllergyIntolerance"), Some("patient"));
    assert_eq!(narrowing_param("Patient"), Some("_id"));
    assert_eq!(narrowing_param("Practitioner"), None);
}

/// Whose an AuditEvent is: its patient entities (object-role 1), one per patient as the gateway
/// writes them. An agent that is no patient (an absolute `fhirUser`) does not make it someone
/// else's; an agent or entity naming another patient (a guardian, the other record read) does,
/// so that it never shows her someone else's id.
#[test]
fn an_audit_event_is_the_patient_entitys() {
    let event = |agent: &str, entities: Value| {
        json!({ "resourceType": "AuditEvent",
            "agent": [{ "who": { "reference": agent }, "requestor": true }],
            "entity": entities })
    };
    let patient = |reference: &str| {
        json!({ "what": { "reference": reference }, "role": {
            "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1" } })
    };
    let read = |reference: &str| {
        json!({ "what": { "reference": reference }, "role": {
            "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4" } })
    };
    for (agent, entities, hers) in [
        (
            "https://idp.example/fhir/Practitioner/x",
            json!([patient("Patient/pat-anne"), read("Observation/o1")]),
            true,
        ),
        (
            "Patient/pat-bo",
            json!([patient("Patient/pat-anne")]),
            false,
        ),
        (
            "Practitioner/p",
            json!([patient("Patient/pat-anne"), read("Patient/pat-bo")]),
            false,
        ),
        (
            "Practitioner/p",
            json!([patient("Patient/pat-anne"), read("../Patient/pat-bo")]),
            false,
        ),
    ] {
        let event = event(agent, entities);
        let expected = if hers {
            Membership::Member
        } else {
            Membership::Outside
        };
        assert_eq!(membership(&event, "pat-anne"), expected, "{event}");
        assert_eq!(membership(&event, "pat-bo"), Membership::Outside, "{event}");
        let text = event.to_string();
        let raw: crate::raw::OrderedRaw<'_> = serde_json::from_str(&text).unwrap();
        assert_eq!(super::membership_raw(&raw, "pat-anne"), expected, "{event}");
    }
    // Two patients' event is neither's alone; one without patient entities is read as before.
    let both = event(
        "Practitioner/p",
        json!([patient("Patient/pat-anne"), patient("Patient/pat-bo")]),
    );
    assert_eq!(membership(&both, "pat-anne"), Membership::Outside);
    let elsewhere = event(
        "Patient/pat-bo",
        json!([{ "what": { "reference": "Patient/pat-anne" } }]),
    );
    assert_eq!(membership(&elsewhere, "pat-anne"), Membership::Outside);
}

#[test]
fn a_path_of_two_steps_is_followed_to_its_end_in_both_readings() {
    // `participant.actor`: a Reference-shaped `participant` names nobody by itself.
    let appointment = json!({ "resourceType": "Appointment",
                              "participant": [{ "reference": "Patient/pat-bo" }] });
    assert_eq!(
        membership(&appointment, "pat-bo"),
        super::Membership::Outside
    );
    let theirs = json!({ "resourceType": "Appointment",
                         "participant": [{ "actor": { "reference": "Patient/pat-bo" } }] });
    assert_eq!(membership(&theirs, "pat-bo"), super::Membership::Member);
}
