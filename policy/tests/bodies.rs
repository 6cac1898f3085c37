//! Decisions that depend on the request body: creates under a patient-context scope, and batch
//! and transaction Bundles decided entry by entry.

use portvagt_policy::{Decision, DenyReason, FhirRequest, ScopeSet, Subject, classify, decide};
use serde_json::{Value, json};

fn with_body(method: &str, path: &str, body: &Value) -> FhirRequest {
    let mut request = classify(method, path, None).unwrap();
    request
        .attach_body(Some("application/fhir+json"), body.to_string().as_bytes())
        .unwrap();
    request
}

fn decide_as(scopes: &str, patient: Option<&str>, request: &FhirRequest) -> Decision {
    let scopes = ScopeSet::parse(scopes);
    decide(Subject::new(&scopes, patient), request)
}

fn observation_for(patient: &str) -> Value {
    json!({ "resourceType": "Observation", "status": "final", "code": { "text": "puls" },
            "subject": { "reference": format!("Patient/{patient}") } })
}

#[test]
fn patient_creates_only_inside_the_compartment() {
    let own = with_body("POST", "Observation", &observation_for("pat-anne"));
    let decision = decide_as("patient/Observation.c", Some("pat-anne"), &own);
    assert!(decision.is_allow(), "{decision:?}");

    let other = with_body("POST", "Observation", &observation_for("pat-bo"));
    let decision = decide_as("patient/Observation.c", Some("pat-anne"), &other);
    assert_eq!(decision.deny_reason(), Some(DenyReason::OutsideCompartment));

    let nobody = with_body(
        "POST",
        "Observation",
        &json!({ "resourceType": "Observation", "status": "final" }),
    );
    assert_eq!(
        decide_as("patient/Observation.c", Some("pat-anne"), &nobody).deny_reason(),
        Some(DenyReason::OutsideCompartment)
    );

    let shared = with_body(
        "POST",
        "Practitioner",
        &json!({ "resourceType": "Practitioner" }),
    );
    assert_eq!(
        decide_as("patient/*.cruds", Some("pat-anne"), &shared).deny_reason(),
        Some(DenyReason::OutsideCompartment)
    );
}

/// Her own Patient may be updated under her token, but not linked to another patient's
/// record, by id or by identifier: the link reaches into theirs.
#[test]
fn a_patient_updates_her_record_but_does_not_link_it_to_anothers() {
    let own = json!({ "resourceType": "Patient", "id": "pat-anne", "name": [{ "family": "Andersen" }],
        "link": [{ "other": { "reference": "Patient/pat-anne" }, "type": "seealso" }] });
    let decision = decide_as(
        "patient/Patient.u",
        Some("pat-anne"),
        &with_body("PUT", "Patient/pat-anne", &own),
    );
    assert!(decision.is_allow(), "{decision:?}");
    for other in [
        json!({ "reference": "Patient/pat-bo" }),
        json!({ "type": "Patient", "identifier": { "system": "urn:oid:1.2.208.176.1.2", "value": "0501792275" } }),
    ] {
        let linked = json!({ "resourceType": "Patient", "id": "pat-anne",
            "link": [{ "other": other, "type": "replaced-by" }] });
        let decision = decide_as(
            "patient/Patient.u",
            Some("pat-anne"),
            &with_body("PUT", "Patient/pat-anne", &linked),
        );
        assert_eq!(
            decision.deny_reason(),
            Some(DenyReason::OutsideCompartment),
            "{other}"
        );
    }
}

/// A Consent of hers names her plainly: one spelled with a version (or absolute) would not be
/// found by a search for `patient=Patient/<id>`, and its block would never hold.
#[test]
fn a_patient_writes_consents_that_name_her_plainly() {
    let consent = |reference: &str| {
        json!({ "resourceType": "Consent", "status": "active",
            "scope": { "text": "privacy" }, "category": [{ "text": "x" }],
            "patient": { "reference": reference }, "provision": { "type": "deny" } })
    };
    let plain = with_body("POST", "Consent", &consent("Patient/pat-anne"));
    assert!(decide_as("patient/Consent.c", Some("pat-anne"), &plain).is_allow());
    for odd in [
        "Patient/pat-anne/_history/3",
        "Patient/pat-anne/_history/1/../../Patient/pat-bo",
    ] {
        let request = with_body("POST", "Consent", &consent(odd));
        assert_eq!(
            decide_as("patient/Consent.c", Some("pat-anne"), &request).deny_reason(),
            Some(DenyReason::OutsideCompartment),
            "{odd}"
        );
    }
}

fn bundle(kind: &str, entries: Vec<Value>) -> FhirRequest {
    with_body(
        "POST",
        "",
        &json!({ "resourceType": "Bundle", "type": kind, "entry": entries }),
    )
}

fn get(url: &str) -> Value {
    json!({ "request": { "method": "GET", "url": url } })
}

#[test]
fn a_batch_is_decided_entry_by_entry() {
    let request = bundle(
        "batch",
        vec![
            get("Patient/pat-anne"),
            get("Patient/pat-bo"),
            get("Observation?patient=pat-bo"),
            get("Observation?code=x"),
            json!({ "request": { "method": "POST", "url": "Observation" }, "resource": observation_for("pat-bo") }),
            json!({ "request": { "method": "DELETE", "url": "Observation/obs-bo-bp" } }),
        ],
    );
    let decision = decide_as("patient/*.cruds", Some("pat-anne"), &request);
    let Decision::Allow { obligations, .. } = decision else {
        panic!("{decision:?}")
    };
    let reasons: Vec<Option<DenyReason>> = obligations
        .entries
        .iter()
        .map(Decision::deny_reason)
        .collect();
    assert_eq!(
        reasons,
        [
            None,
            Some(DenyReason::OutsideCompartment),
            Some(DenyReason::OutsideCompartment),
            None,
            Some(DenyReason::OutsideCompartment),
            Some(DenyReason::WriteNotVerifiable),
        ]
    );
    let Decision::Allow {
        obligations: narrowed,
        ..
    } = &obligations.entries[3]
    else {
        panic!()
    };
    assert_eq!(
        narrowed.add_params,
        [("subject".to_owned(), "Patient/pat-anne".to_owned())]
    );
}

#[test]
fn a_batch_entry_reads_the_audit_log_only_as_a_single_request_would() {
    // A practitioner launched in Anne's context is not Anne: the audit log stays closed to
    // them inside a batch as it does outside one.
    let request = bundle("batch", vec![get("AuditEvent"), get("Observation?code=x")]);
    let scopes = ScopeSet::parse("patient/*.rs");
    let practitioner = Subject {
        fhir_user: Some("Practitioner/prac-ns363"),
        ..Subject::new(&scopes, Some("pat-anne"))
    };
    let Decision::Allow { obligations, .. } = decide(practitioner, &request) else {
        panic!("the batch itself is allowed")
    };
    assert_eq!(
        obligations.entries[0].deny_reason(),
        Some(DenyReason::AuditLogRestricted)
    );
    assert!(obligations.entries[1].is_allow());
    // Anne herself reads hers, in the citizen's view.
    let anne = Subject {
        fhir_user: Some("Patient/pat-anne"),
        ..Subject::new(&scopes, Some("pat-anne"))
    };
    let Decision::Allow { obligations, .. } = decide(anne, &request) else {
        panic!("the batch itself is allowed")
    };
    let Decision::Allow {
        obligations: entry, ..
    } = &obligations.entries[0]
    else {
        panic!("{:?}", obligations.entries[0])
    };
    assert!(entry.citizen_view);
}

#[test]
fn a_transaction_with_any_denied_entry_is_denied() {
    let request = bundle(
        "transaction",
        vec![
            json!({ "request": { "method": "POST", "url": "Observation" }, "resource": observation_for("pat-anne") }),
            get("Patient/pat-bo"),
        ],
    );
    assert_eq!(
        decide_as("patient/*.cruds", Some("pat-anne"), &request).deny_reason(),
        Some(DenyReason::OutsideCompartment)
    );

    let fine = bundle(
        "transaction",
        vec![
            json!({ "request": { "method": "POST", "url": "Observation" }, "resource": observation_for("pat-anne") }),
        ],
    );
    assert!(decide_as("patient/*.cruds", Some("pat-anne"), &fine).is_allow());
}

#[test]
fn batch_entries_need_their_own_scopes() {
    let request = bundle(
        "batch",
        vec![get("Patient/pat-bo"), get("Condition/cond-bo-1")],
    );
    let Decision::Allow { obligations, .. } = decide_as("user/Patient.rs", None, &request) else {
        panic!()
    };
    assert!(obligations.entries[0].is_allow());
    assert_eq!(
        obligations.entries[1].deny_reason(),
        Some(DenyReason::InsufficientScope)
    );
}

#[test]
fn a_bundle_without_its_body_is_not_authorised() {
    let request = classify("POST", "", None).unwrap();
    assert_eq!(
        decide_as("system/*.cruds", None, &request).deny_reason(),
        Some(DenyReason::UnsupportedInteraction)
    );
}

#[test]
fn a_batch_entry_never_widens_elements() {
    let request = bundle(
        "batch",
        vec![get("Observation?_elements=code"), get("Observation?code=x")],
    );
    let Decision::Allow { obligations, .. } = decide_as("user/*.rs", None, &request) else {
        panic!("the batch itself is allowed")
    };
    assert_eq!(
        obligations.entries[0].deny_reason(),
        Some(DenyReason::ReferencesHidden)
    );
    assert!(obligations.entries[1].is_allow());
    // And while consent or the audit trail must know whose data it is, the batch is refused.
    assert!(portvagt_policy::consent::hides_references(&request));
}

#[test]
fn a_patients_fhirpath_patch_may_not_reach_whom_the_resource_is_about() {
    let patch = |path: &str, name: Option<&str>| {
        let mut parts = vec![
            json!({ "name": "type", "valueCode": if name.is_some() { "add" } else { "replace" } }),
            json!({ "name": "path", "valueString": path }),
            json!({ "name": "value", "valueReference": { "reference": "Patient/pat-bo" } }),
        ];
        if let Some(name) = name {
            parts.push(json!({ "name": "name", "valueString": name }));
        }
        let body = json!({ "resourceType": "Parameters",
                           "parameter": [{ "name": "operation", "part": parts }] });
        let mut request = classify("PATCH", "Observation/obs-anne-bp", None).unwrap();
        request
            .attach_body(Some("application/fhir+json"), body.to_string().as_bytes())
            .unwrap();
        decide_as("patient/Observation.cruds", Some("pat-anne"), &request)
    };
    let allowed = patch("Observation.note", None);
    assert!(allowed.is_allow(), "{allowed:?}");
    for (path, name) in [
        ("Observation.subject", None),
        ("Observation.select(subject)", None),
        ("Observation.where(true).subject", None),
        ("subject", None),
        ("Observation.`subject`", None),
        ("Observation.descendants()", None),
        ("Observation", Some("subject")),
        ("Observation.where(true)", Some("performer")),
    ] {
        assert_eq!(
            patch(path, name).deny_reason(),
            Some(DenyReason::OutsideCompartment),
            "{path} {name:?}"
        );
    }
}

#[test]
fn answers_that_may_hold_audit_events_are_marked_to_withhold_them() {
    let withholds = |method: &str, path: &str, scopes: &str| {
        let (path_only, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let request =
            classify(method, path_only, query).unwrap_or_else(|e| panic!("{path}: {e:?}"));
        match decide_as(scopes, None, &request) {
            Decision::Allow { obligations, .. } => obligations.withhold_audit_events,
            deny => panic!("{path}: {deny:?}"),
        }
    };
    for path in [
        "Patient?_revinclude=AuditEvent:patient",
        "Patient?_id=pat-anne&_revinclude:iterate=AuditEvent:entity",
        "Observation?_include=Observation:focus",
        "Patient/pat-anne/$everything",
        "Patient/pat-anne/Observation?_revinclude=AuditEvent:entity",
        "_history",
    ] {
        assert!(withholds("GET", path, "user/*.rs"), "{path}");
    }
    // A compartment search's matches may be AuditEvents themselves: its total goes too.
    let request = classify(
        "GET",
        "Practitioner/prac-1/Observation",
        Some("_summary=count"),
    )
    .unwrap();
    let Decision::Allow { obligations, .. } = decide_as("user/*.rs", None, &request) else {
        panic!("a user may search a practitioner's compartment")
    };
    assert!(obligations.withhold_audit_events && obligations.hide_total);
    assert!(withholds("GET", "Binary/b1", "user/*.rs"));
    assert!(withholds("GET", "Binary?_id=b1", "user/*.rs"));
    assert!(withholds("GET", "Observation?_contained=true", "user/*.rs"));
    // Searches that test what AuditEvents say read the audit log: decided as reading it.
    for path in [
        "Patient?_has:AuditEvent:entity:agent=Practitioner/dr-x",
        "Patient?_has:auditevent:entity:type=110110",
        "Observation?subject:AuditEvent.agent=x",
        "?_type=AuditEvent&_summary=count",
        "?_type=Patient,AuditEvent",
        // A `_has` nested in another: the audit log tested one link further away.
        "Patient?_has:Observation:patient:_has:AuditEvent:entity:agent=Practitioner/dr-x",
        "Practitioner?_has:PractitionerRole:practitioner:_has:auditevent:agent:entity=Patient/a",
    ] {
        let (path_only, query) = path.split_once('?').unwrap();
        let request = classify("GET", path_only, Some(query)).unwrap();
        assert_eq!(
            decide_as("user/*.rs", None, &request).deny_reason(),
            Some(DenyReason::AuditLogRestricted),
            "{path}"
        );
    }
    // A conditional create's criteria are a search too: whether they matched shows in the
    // answer.
    let mut create = with_body("POST", "Patient", &json!({ "resourceType": "Patient" }));
    create
        .set_if_none_exist("_id=pat-1&_has:AuditEvent:entity:agent=Practitioner/dr-x")
        .unwrap();
    assert_eq!(
        decide_as("user/*.crs", None, &create).deny_reason(),
        Some(DenyReason::AuditLogRestricted)
    );
    create.set_if_none_exist("identifier=x|1").unwrap();
    assert!(decide_as("user/*.crs", None, &create).is_allow());
    // An export's `_typeFilter` is a search of its own: one testing AuditEvents, in any
    // spelling, reads the audit log too; others export as they did.
    for (filter, refused) in [
        (
            "Patient%3F_has%3AAuditEvent%3Aentity%3Aagent%3DPractitioner%2Fdr-x",
            true,
        ),
        ("Patient%3F_has%3A%2541uditEvent%3Aentity%3Aagent%3Dx", true),
        ("Observation%3Fcode%3Dx", false),
    ] {
        let request = classify(
            "GET",
            "$export",
            Some(&format!("_type=Patient,Observation&_typeFilter={filter}")),
        )
        .unwrap();
        let decision = decide_as("system/*.rs", None, &request);
        assert_eq!(
            decision.deny_reason() == Some(DenyReason::AuditLogRestricted),
            refused,
            "{filter}: {decision:?}"
        );
        assert_eq!(decision.is_allow(), !refused, "{filter}: {decision:?}");
    }
    for path in [
        "Patient/pat-anne",
        "Observation?code=x",
        "Patient/pat-anne/_history",
    ] {
        // (`Patient/<id>/*` is refused when classified: no type to decide by.)
        assert!(!withholds("GET", path, "user/*.rs"), "{path}");
    }
    // A batch entry carries its own mark.
    let request = with_body(
        "POST",
        "",
        &json!({ "resourceType": "Bundle", "type": "batch", "entry": [
            { "request": { "method": "GET", "url": "Patient/pat-anne/$everything" } },
            { "request": { "method": "GET", "url": "Patient/pat-anne" } }
        ]}),
    );
    let Decision::Allow { obligations, .. } = decide_as("user/*.rs", None, &request) else {
        panic!("the batch is decided entry by entry")
    };
    let marks: Vec<bool> = obligations
        .entries
        .iter()
        .map(|entry| match entry {
            Decision::Allow { obligations, .. } => obligations.withhold_audit_events,
            Decision::Deny { .. } => false,
        })
        .collect();
    assert_eq!(marks, [true, false]);
}

#[test]
fn a_patients_count_is_pinned_to_what_is_about_her() {
    let add_params = |path: &str, query: &str| {
        let request = classify("GET", path, Some(query)).unwrap();
        match decide_as("patient/*.rs", Some("pat-anne"), &request) {
            Decision::Allow { obligations, .. } => obligations.add_params,
            deny => panic!("{path}?{query}: {deny:?}"),
        }
    };
    let about_her = vec![("subject".to_owned(), "Patient/pat-anne".to_owned())];
    // Pinned by a parameter that only names her (performer): a count is narrowed to what is
    // about her; a search is not (its entries are checked one by one).
    assert_eq!(
        add_params("Observation", "performer=Patient/pat-anne&_summary=count"),
        about_her
    );
    assert_eq!(
        add_params("Observation", "performer=Patient/pat-anne&_count=0"),
        about_her
    );
    assert!(add_params("Observation", "performer=Patient/pat-anne").is_empty());
    assert!(add_params("Observation", "subject=Patient/pat-anne&_summary=count").is_empty());
    assert!(add_params("Observation", "patient=pat-anne&_summary=count").is_empty());
    // Her compartment holds what merely names her: its count is narrowed the same way.
    assert_eq!(
        add_params("Patient/pat-anne/Observation", "_summary=count"),
        about_her
    );
    assert!(add_params("Patient/pat-anne/Observation", "code=x").is_empty());
    // Where the check takes out matches the backend counted, the total goes.
    let hides = |path: &str, query: &str| {
        let request = classify("GET", path, Some(query)).unwrap();
        match decide_as("patient/*.rs", Some("pat-anne"), &request) {
            Decision::Allow { obligations, .. } => obligations.hide_total,
            deny => panic!("{path}?{query}: {deny:?}"),
        }
    };
    assert!(hides("Observation", "performer=Patient/pat-anne"));
    // A parameter's name alone pins nothing.
    assert!(hides("Observation", "performer=Patient/pat-anne&subject="));
    assert!(hides(
        "Observation",
        "performer=Patient/pat-anne&subject:Group=g1"
    ));
    assert!(hides("Patient/pat-anne/Observation", "code=x"));
    assert!(!hides("Observation", "subject=Patient/pat-anne"));
    assert!(!hides("Observation", "code=x"));
    assert!(!hides(
        "Observation",
        "performer=Patient/pat-anne&_summary=count"
    ));
}

/// Only the gateway writes a citizen's own block (the tag it reads them by): a professional's
/// create, update, patch or batch entry carrying that tag is refused, however the rest reads.
#[test]
fn nobody_but_the_gateway_writes_a_citizens_block() {
    let tag = json!([{ "system": "urn:portvagt:consent", "code": "citizen-block" }]);
    let tagged = json!({ "resourceType": "Consent", "id": "blk-1", "status": "active",
                         "meta": { "tag": tag.clone() },
                         "patient": { "reference": "Patient/pat-anne" } });
    let reserved = Some(DenyReason::CitizenBlockReserved);
    for (method, path) in [("POST", "Consent"), ("PUT", "Consent/blk-1")] {
        let request = with_body(method, path, &tagged);
        assert_eq!(
            decide_as("user/*.cruds", None, &request).deny_reason(),
            reserved
        );
    }
    let mut patch = classify("PATCH", "Consent/blk-1", None).unwrap();
    let adds = json!([{ "op": "add", "path": "/meta/tag", "value": tag }]);
    patch
        .attach_body(
            Some("application/json-patch+json"),
            adds.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(
        decide_as("user/*.cruds", None, &patch).deny_reason(),
        reserved
    );
    let batch = with_body(
        "POST",
        "",
        &json!({ "resourceType": "Bundle", "type": "batch", "entry": [{
            "resource": tagged,
            "request": { "method": "POST", "url": "Consent" }
        }] }),
    );
    let Decision::Allow { obligations, .. } = decide_as("user/*.cruds", None, &batch) else {
        panic!("a batch is decided entry by entry");
    };
    assert_eq!(obligations.entries[0].deny_reason(), reserved);
    // Nor put together piece by piece: a tag without its system, then the system alone; the
    // system as text a later `copy` could move into a tag; a FHIRPath Patch adding it.
    for patch in [
        json!([{ "op": "add", "path": "/meta/tag", "value": [{ "code": "citizen-block" }] },
               { "op": "add", "path": "/meta/tag/0/system", "value": "urn:portvagt:consent" }]),
        json!([{ "op": "add", "path": "/note", "value": [{ "text": "urn:portvagt:consent" }] }]),
    ] {
        let mut request = classify("PATCH", "Consent/blk-1", None).unwrap();
        request
            .attach_body(
                Some("application/json-patch+json"),
                patch.to_string().as_bytes(),
            )
            .unwrap();
        assert_eq!(
            decide_as("user/*.cruds", None, &request).deny_reason(),
            reserved,
            "{patch}"
        );
    }
    let fhirpath = json!({ "resourceType": "Parameters", "parameter": [{ "name": "operation", "part": [
        { "name": "type", "valueCode": "add" }, { "name": "path", "valueString": "Consent.meta.tag[0]" },
        { "name": "name", "valueString": "system" }, { "name": "value", "valueUri": "urn:portvagt:consent" }] }] });
    let mut request = classify("PATCH", "Consent/blk-1", None).unwrap();
    request
        .attach_body(
            Some("application/fhir+json"),
            fhirpath.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(
        decide_as("user/*.cruds", None, &request).deny_reason(),
        reserved
    );
    // Another type's note that mentions the system is no Consent's tag.
    let noted = json!({ "resourceType": "Observation", "id": "o1", "status": "final",
                        "code": { "text": "x" }, "note": [{ "text": "urn:portvagt:consent" }] });
    assert!(
        decide_as(
            "user/*.cruds",
            None,
            &with_body("PUT", "Observation/o1", &noted)
        )
        .is_allow()
    );
    // Without the tag, the same write is the scopes' to decide.
    let plain = json!({ "resourceType": "Consent", "id": "blk-1", "status": "active",
                        "patient": { "reference": "Patient/pat-anne" } });
    assert!(
        decide_as(
            "user/*.cruds",
            None,
            &with_body("PUT", "Consent/blk-1", &plain)
        )
        .is_allow()
    );
}
