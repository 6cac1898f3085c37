//! The reach table: whose data a request touches, in every spelling a FHIR server resolves.
//! One row per case:
//!
//! `method | url | patients | possible | identifiers | flags`
//!
//! where lists are comma-separated (`-`: none) and flags are `pinned`, `opaque`, both or `-`.
//! A POST or PUT row's body is the one of [`body`].

use portvagt_policy::{Reach, classify};
use serde_json::json;

const CASES: &str = r#"
# --- the path ---------------------------------------------------------------------------------
GET    | Patient/anne                                   | anne        | -     | -              | pinned
GET    | Patient/anne/_history/2                        | anne        | -     | -              | pinned
GET    | Patient/anne/*                                 | anne        | -     | -              | pinned
GET    | Patient/anne/Observation?code=x                | anne        | -     | -              | pinned
GET    | Patient/anne/$everything                       | anne        | -     | -              | pinned
DELETE | Patient/anne                                   | anne        | -     | -              | pinned
GET    | Observation/obs-1                              | -           | -     | -              | -
GET    | Encounter/enc-1/Observation                    | -           | -     | -              | -
# --- reference parameters, every spelling -----------------------------------------------------
GET    | Observation?patient=Patient/anne               | anne        | -     | -              | pinned
GET    | Observation?patient=anne                       | anne        | -     | -              | pinned
GET    | Observation?subject=anne                       | -           | anne  | -              | pinned
GET    | Observation?subject:Patient=anne               | anne        | -     | -              | pinned
GET    | Observation?patient:Patient=anne               | anne        | -     | -              | pinned
GET    | Observation?subject=https://x.example/fhir/Patient/anne | anne | -   | -              | pinned
GET    | Observation?subject=Patient/anne/_history/7    | anne        | -     | -              | pinned
GET    | Observation?patient=Patient/anne,Patient/bo    | anne,bo     | -     | -              | pinned
GET    | Observation?patient=anne,https://x/Patient/bo  | anne,bo     | -     | -              | pinned
GET    | Observation?performer=Patient/anne             | anne        | -     | -              | pinned
GET    | Observation?performer=prac-1                   | -           | prac-1 | -             | -
GET    | Observation?performer=Practitioner/prac-1      | -           | -     | -              | -
GET    | Observation?subject:Group=g1                   | -           | -     | -              | -
GET    | Observation?focus=Patient/anne                 | anne        | -     | -              | -
GET    | Observation?code=Patient/anne                  | anne        | -     | -              | -
GET    | Encounter?patient=anne&_count=0                | anne        | -     | -              | pinned
GET    | Patient?_id=anne                               | anne        | -     | -              | pinned
GET    | Patient?_id=anne,bo                            | anne,bo     | -     | -              | pinned
GET    | Patient?link=bo                                | -           | bo    | -              | -
GET    | Patient?name=Hansen                            | -           | -     | -              | -
GET    | ?subject=Patient/anne                          | anne        | -     | -              | -
GET    | ?patient=anne&_type=Observation                | anne        | -     | -              | -
# --- identifiers --------------------------------------------------------------------------------
GET    | Patient?identifier=urn:oid:1.2.208.176.1.2|0101010101 | - | -     | urn:oid:1.2.208.176.1.2|0101010101 | pinned
GET    | Observation?patient:identifier=urn:oid:1.2.208.176.1.2|0101010101 | - | - | urn:oid:1.2.208.176.1.2|0101010101 | pinned
GET    | Observation?subject:Patient.identifier=sys|v1  | -           | -     | sys|v1         | pinned
GET    | Observation?patient.identifier=sys|v1          | -           | -     | sys|v1         | pinned
GET    | Observation?performer:identifier=sys|v1        | -           | -     | sys|v1         | -
GET    | Observation?subject.identifier=sys|v1          | -           | -     | sys|v1         | -
# --- what no list captures ----------------------------------------------------------------------
GET    | Observation?subject:missing=true               | -           | -     | -              | opaque
GET    | Observation?patient:not=Patient/anne           | -           | -     | -              | opaque
GET    | Observation?subject=urn:uuid:1                 | -           | -     | -              | opaque
GET    | Observation?subject.name=Hansen                | -           | -     | -              | opaque
GET    | Observation?_has:Consent:patient:status=active | -           | -     | -              | opaque
GET    | Practitioner?_has:Observation:performer:subject=Patient/bo | bo | -   | -              | opaque
GET    | Observation?subject:Patient.organization=Organization/o1,Patient/bo | bo | - | -       | opaque
GET    | Patient?identifier=urn:oid:1.2.208.176.1.2|    | -           | -     | -              | opaque
GET    | Observation?code=x                             | -           | -     | -              | -
GET    | Observation?code=x&_summary=count              | -           | -     | -              | -
GET    | Practitioner?name=x                            | -           | -     | -              | pinned
GET    | Practitioner?_revinclude=Observation:performer | -           | -     | -              | -
# --- writes -------------------------------------------------------------------------------------
POST   | Observation                                    | -           | -     | -              | -
PUT    | Observation/obs-1                              | -           | -     | -              | -
DELETE | Observation?patient=anne                       | anne        | -     | -              | pinned
DELETE | Observation?code=x                             | -           | -     | -              | -
"#;

fn body() -> serde_json::Value {
    json!({ "resourceType": "Observation", "id": "obs-1", "status": "final",
        "code": { "text": "x" }, "subject": { "reference": "Patient/carla" } })
}

fn list(column: &str) -> Vec<String> {
    match column.trim() {
        "-" => Vec::new(),
        items => {
            let mut items: Vec<String> = items.split(',').map(str::to_owned).collect();
            items.sort();
            items
        }
    }
}

#[test]
fn every_spelling_of_a_patient_is_in_the_reach() {
    for line in CASES.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let columns: Vec<&str> = line.split(" | ").map(str::trim).collect();
        let [method, url, patients, possible, identifiers, flags] = columns[..] else {
            panic!("malformed row: {line}");
        };
        let (path, query) = match url.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url, None),
        };
        let query = query.map(|q| q.replace('|', "%7C"));
        let mut request =
            classify(method, path, query.as_deref()).unwrap_or_else(|e| panic!("{line}: {e}"));
        if request.needs_body() {
            request
                .attach_body(Some("application/fhir+json"), body().to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{line}: {e}"));
        }
        let reach = Reach::of(&request);
        assert_eq!(reach.patients(), list(patients), "patients: {line}");
        assert_eq!(reach.possible(), list(possible), "possible: {line}");
        assert_eq!(
            reach.identifiers(),
            list(identifiers),
            "identifiers: {line}"
        );
        assert_eq!(reach.pinned(), flags.contains("pinned"), "pinned: {line}");
        assert_eq!(reach.opaque(), flags.contains("opaque"), "opaque: {line}");
    }
}

#[test]
fn writes_name_what_they_write_and_what_they_change() {
    let mut create = classify("POST", "Observation", None).unwrap();
    create
        .attach_body(Some("application/fhir+json"), body().to_string().as_bytes())
        .unwrap();
    assert_eq!(Reach::of(&create).written(), ["carla"]);
    assert!(Reach::of(&create).owner().is_none());

    let mut update = classify("PUT", "Observation/obs-1", None).unwrap();
    update
        .attach_body(Some("application/fhir+json"), body().to_string().as_bytes())
        .unwrap();
    let reach = Reach::of(&update);
    assert_eq!(reach.written(), ["carla"]);
    assert_eq!(
        reach.owner(),
        Some(&portvagt_policy::reach::Owner::Instance(
            "Observation/obs-1".into()
        ))
    );
    let delete = classify("DELETE", "Condition", Some("code=x")).unwrap();
    assert!(matches!(
        Reach::of(&delete).owner(),
        Some(portvagt_policy::reach::Owner::Search { .. })
    ));
    // Reference data has no owner to read.
    let practitioner = classify("DELETE", "Practitioner/p1", None).unwrap();
    assert!(Reach::of(&practitioner).owner().is_none());
}

#[test]
fn a_batch_reaches_what_its_entries_reach() {
    let bundle = json!({ "resourceType": "Bundle", "type": "batch", "entry": [
        { "request": { "method": "GET", "url": "Observation?subject=https://x.example/Patient/anne" } },
        { "request": { "method": "DELETE", "url": "Condition/cond-1" } },
        { "request": { "method": "POST", "url": "Observation" }, "resource": body() },
        { "request": { "method": "GET", "url": "Observation?patient:identifier=sys%7Cv" } }
    ]});
    let mut request = classify("POST", "", None).unwrap();
    request
        .attach_body(Some("application/fhir+json"), bundle.to_string().as_bytes())
        .unwrap();
    let reach = Reach::of(&request);
    assert_eq!(reach.patients(), ["anne"]);
    assert_eq!(reach.written(), ["carla"]);
    assert_eq!(reach.identifiers(), ["sys|v"]);
    assert_eq!(reach.entries().len(), 4);
    assert!(reach.entries()[1].owner().is_some());
    assert!(!reach.pinned());
}

#[test]
fn a_patch_writes_the_patients_it_spells_out_and_bodies_name_them_by_identifier() {
    let mut patch = classify("PATCH", "Observation/obs-1", None).unwrap();
    patch
        .attach_body(
            Some("application/json-patch+json"),
            br#"[{"op":"replace","path":"/subject/reference","value":"Patient/bo"}]"#,
        )
        .unwrap();
    assert_eq!(Reach::of(&patch).written(), ["bo"]);

    let mut create = classify("POST", "Observation", None).unwrap();
    let body = json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
        "subject": { "reference": "Patient?identifier=urn:oid:1.2.208.176.1.2|0501792275" } });
    create
        .attach_body(Some("application/fhir+json"), body.to_string().as_bytes())
        .unwrap();
    assert_eq!(
        Reach::of(&create).identifiers(),
        ["urn:oid:1.2.208.176.1.2|0501792275"]
    );
    // A conditional delete reads its owners with the criteria that match, not those that shape.
    let delete = classify(
        "DELETE",
        "Observation",
        Some("code=x&_elements=id&_count=1"),
    )
    .unwrap();
    let Some(portvagt_policy::reach::Owner::Search { criteria, .. }) =
        Reach::of(&delete).owner().cloned()
    else {
        panic!("no owner search");
    };
    assert_eq!(criteria, [("code".to_owned(), "x".to_owned())]);
}

#[test]
fn a_body_that_names_its_patient_by_identifier_only_is_looked_up() {
    let reach = |body: serde_json::Value| {
        let mut create = classify("POST", body["resourceType"].as_str().unwrap(), None).unwrap();
        create
            .attach_body(Some("application/fhir+json"), body.to_string().as_bytes())
            .unwrap();
        Reach::of(&create)
    };
    let cpr = |value: &str| json!({ "system": "urn:oid:1.2.208.176.1.2", "value": value });
    // Typed Patient anywhere on a compartment path, or untyped on subject or patient.
    let typed = reach(
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
        "subject": { "type": "Patient", "identifier": cpr("1111111118") } }),
    );
    assert_eq!(typed.identifiers(), ["urn:oid:1.2.208.176.1.2|1111111118"]);
    assert!(!typed.opaque());
    let untyped = reach(
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
        "subject": { "identifier": cpr("0501792275") },
        "performer": [{ "type": "Patient", "identifier": cpr("2512484916") }] }),
    );
    assert_eq!(
        untyped.identifiers(),
        [
            "urn:oid:1.2.208.176.1.2|0501792275",
            "urn:oid:1.2.208.176.1.2|2512484916"
        ]
    );
    // A professional by identifier is nobody's patient; a reference by id is read as before.
    let professional = reach(
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
        "subject": { "reference": "Patient/anne" },
        "performer": [{ "identifier": { "system": "https://autregweb.sst.dk", "value": "NS363" } }] }),
    );
    assert!(professional.identifiers().is_empty());
    assert_eq!(professional.written(), ["anne"]);
    // A blank reference is none; a type given as its canonical URL, or as no type at all.
    for subject in [
        json!({ "reference": " ", "type": "Patient", "identifier": cpr("1111111118") }),
        json!({ "type": "http://hl7.org/fhir/StructureDefinition/Patient", "identifier": cpr("1111111118") }),
        json!({ "type": "patient", "identifier": cpr("1111111118") }),
    ] {
        let found = reach(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "subject": subject }));
        assert_eq!(
            found.identifiers(),
            ["urn:oid:1.2.208.176.1.2|1111111118"],
            "{subject}"
        );
    }
    // One that cannot be looked up as a token (no system, a `|` in it) leaves the reach opaque.
    for identifier in [
        json!({ "value": "1111111118" }),
        json!({ "system": "urn:oid:1.2.208.176.1.2", "value": "1|2" }),
        json!({ "system": "urn:oid:1.2.208.176.1.2" }),
    ] {
        let opaque = reach(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "subject": { "type": "Patient", "identifier": identifier } }));
        assert!(opaque.opaque(), "{identifier}");
    }
}

/// The other spellings of "this is her" in a written body: an untyped identifier on an element
/// that only references Patients, a contained Patient with her identifier, a Bundle whose entry
/// names her by identifier, a Patient linked to hers, and a patch that sets her identifier
/// where the patient is said (or builds it piece by piece, which cannot be looked up).
#[test]
fn every_spelling_of_a_patient_in_a_written_body_is_in_its_reach() {
    const CPR: &str = "urn:oid:1.2.208.176.1.2";
    let anne = format!("{CPR}|1111111118");
    let cpr = json!({ "system": CPR, "value": "1111111118" });
    let created = |body: serde_json::Value| {
        let mut create = classify("POST", body["resourceType"].as_str().unwrap(), None).unwrap();
        create
            .attach_body(Some("application/fhir+json"), body.to_string().as_bytes())
            .unwrap();
        Reach::of(&create)
    };
    for body in [
        json!({ "resourceType": "Coverage", "status": "active",
            "beneficiary": { "identifier": cpr }, "payor": [{ "reference": "Organization/o" }] }),
        json!({ "resourceType": "ResearchSubject", "status": "candidate",
            "study": { "reference": "ResearchStudy/s" }, "individual": { "identifier": cpr } }),
        json!({ "resourceType": "Observation", "status": "final", "code": { "text": "x" },
            "contained": [{ "resourceType": "Patient", "id": "p1", "identifier": [cpr] }],
            "subject": { "reference": "#p1" } }),
        json!({ "resourceType": "Bundle", "type": "document", "entry": [
            { "resource": { "resourceType": "Composition", "status": "final",
                "subject": { "identifier": cpr } } }] }),
    ] {
        let reach = created(body.clone());
        assert_eq!(reach.identifiers(), [anne.as_str()], "{body}");
        assert!(!reach.opaque(), "{body}");
    }
    // A contained Patient whose id is written with its `#`, as older servers did.
    let hashed = created(json!({ "resourceType": "Observation", "status": "final",
        "code": { "text": "x" },
        "contained": [{ "resourceType": "Patient", "id": "#p1", "identifier": [cpr] }],
        "subject": { "reference": "#p1" } }));
    assert_eq!(hashed.identifiers(), [anne.as_str()]);
    // Conditional references in the spellings a server cuts down to `Patient?…`.
    for reference in [
        format!("Patient/?identifier={anne}"),
        format!("https://fhir.example.dk/fhir/Patient?identifier={anne}"),
        format!("patient?identifier={anne}"),
    ] {
        let conditional = created(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "subject": { "reference": reference } }));
        assert_eq!(conditional.identifiers(), [anne.as_str()], "{reference}");
        let by_id = created(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "subject": { "reference": reference.replace("identifier=", "_id=") } }));
        assert!(by_id.opaque(), "{reference}");
    }
    // A contained Patient whose identifier cannot be looked up, or who has none: nobody can
    // say whom it names.
    for contained in [
        json!({ "resourceType": "Patient", "id": "p1", "identifier": [{ "value": "1" }] }),
        json!({ "resourceType": "Patient", "id": "p1", "name": [{ "family": "Jensen" }] }),
    ] {
        let unreadable = created(json!({ "resourceType": "Observation", "status": "final",
            "code": { "text": "x" }, "contained": [contained],
            "subject": { "reference": "#p1" } }));
        assert!(unreadable.opaque());
    }
    // Linking a Patient to hers reaches her record.
    let linked = created(json!({ "resourceType": "Patient", "id": "new",
        "link": [{ "other": { "reference": "Patient/pat-anne" }, "type": "seealso" }] }));
    assert_eq!(linked.written(), ["new", "pat-anne"]);

    let patched = |format: &str, document: serde_json::Value| {
        let mut patch = classify("PATCH", "Observation/obs-1", None).unwrap();
        patch
            .attach_body(Some(format), document.to_string().as_bytes())
            .unwrap();
        Reach::of(&patch)
    };
    // A JSON Patch is applied by the gateway to the version it changes and its result read:
    // its reach says nothing of its values beyond the `Patient/<id>` they spell out.
    let json_patch = "application/json-patch+json";
    let copied = patched(
        json_patch,
        json!([{ "op": "copy", "from": "/focus/0", "path": "/subject" }]),
    );
    assert!(!copied.opaque() && copied.identifiers().is_empty());
    let fhirpath = |path: &str, name: Option<&str>, value: serde_json::Value| {
        let mut parts = vec![
            json!({ "name": "type", "valueCode": if name.is_some() { "add" } else { "replace" } }),
            json!({ "name": "path", "valueString": path }),
        ];
        if let Some(name) = name {
            parts.push(json!({ "name": "name", "valueString": name }));
        }
        let mut value_part = value;
        value_part["name"] = json!("value");
        parts.push(value_part);
        json!({ "resourceType": "Parameters", "parameter": [{ "name": "operation", "part": parts }] })
    };
    // A FHIRPath Patch that can change whose data the resource is cannot be applied by the
    // gateway (values built from nested parts, paths it does not evaluate): opaque. One that
    // cannot is read as before.
    let fhir_json = "application/fhir+json";
    for (path, name, value) in [
        (
            "Observation.subject",
            Some("identifier"),
            json!({ "valueIdentifier": cpr }),
        ),
        (
            "Observation.subject.identifier.value",
            None,
            json!({ "valueString": "1111111118" }),
        ),
        (
            "Observation",
            Some("subject"),
            json!({ "part": [{ "name": "identifier", "part": [
                { "name": "system", "valueUri": CPR }, { "name": "value", "valueString": "1" }] }] }),
        ),
    ] {
        assert!(
            patched(fhir_json, fhirpath(path, name, value)).opaque(),
            "{path}"
        );
    }
    let own = patched(
        fhir_json,
        fhirpath(
            "Observation",
            Some("note"),
            json!({ "valueAnnotation": { "text": "x" } }),
        ),
    );
    assert!(!own.opaque());
}
