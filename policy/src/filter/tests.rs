//! Tests of the response check: own data passes byte for byte, other patients' entries are
//! removed (with `total` and `last` links that would tell the count), disguises and duplicate
//! keys are refused. Test code only: the filter may not depend on anything here.

use serde_json::{Value, json};

use super::*;

#[test]
fn a_last_link_that_would_tell_the_count_is_removed() {
    let body = br#"{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"a"},{"relation":"last","url":"a?_getpagesoffset=40"}],"entry":[]}"#;
    let without: Value =
        serde_json::from_slice(&without_last_link(body).unwrap().unwrap()).unwrap();
    assert_eq!(without["link"].as_array().unwrap().len(), 1);
    assert_eq!(without["link"][0]["relation"], "self");
    assert!(
        without_last_link(br#"{"resourceType":"Bundle","link":[]}"#)
            .unwrap()
            .is_none()
    );
}

/// The links a Bundle `body` keeps once its `last` link is taken out (it must have one).
fn links_left(body: &str) -> Value {
    let without: Value = serde_json::from_slice(
        &without_last_link(body.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{body}")),
    )
    .unwrap();
    without["link"].clone()
}

/// A relation type compares in any case (RFC 8288), and JSON may spell any letter as an
/// escape: `Last`, `LAST` and `l\u0061st` are the same link and go as well.
#[test]
fn a_last_link_goes_in_any_case_and_any_spelling() {
    for relation in [
        "Last",
        "LAST",
        r"l\u0061st",
        r"\u004cast",
        "last",
        // White space around it, as `next` is read with it (one matcher for every relation).
        " last",
        "last  ",
        r"\tlast",
        r"LAST\n",
        r"\r\f last",
        "\u{a0}last\u{2003}",
        // What a client's trim takes off besides (Java: control characters; JavaScript: a
        // byte order mark).
        r"last\b",
        r"\b\blast",
        "\u{feff}last",
        r"\u0000last\u001f",
        // Folded beyond ASCII by some clients (Java reads `ſ` as `s`, JavaScript `ﬆ` as `st`):
        // no relation type is other than ASCII, so any that is goes.
        "la\u{17f}t",
        "la\u{fb06}",
        // DEL, which `is_control` trims.
        "last\u{7f}",
    ] {
        let body = format!(
            r#"{{"resourceType":"Bundle","type":"searchset","link":[{{"relation":"self","url":"a"}},{{"relation":"{relation}","url":"a?_getpagesoffset=40"}}],"entry":[]}}"#
        );
        assert_eq!(
            links_left(&body),
            json!([{ "relation": "self", "url": "a" }]),
            "{body}"
        );
    }
    // One may be there, and the answer is no tree (a lone surrogate the raw readers let
    // through): refused, not passed on with it.
    let surrogate =
        r#"{"resourceType":"Bundle","link":[{"relation":"last","url":"a"}],"id":"\udc00"}"#;
    assert_eq!(
        without_last_link(surrogate.as_bytes()),
        Err(CountsUnreadable)
    );
    // Neither the word nor an escape: not parsed, nothing to take out.
    for body in [
        r#"{"resourceType":"Bundle","link":[{"relation":"next","url":"a?last=1"}],"entry":[]}"#,
        r#"{"resourceType":"Bundle","link":[{"relation":"lasting","url":"a"}]}"#,
        r#"{"resourceType":"Bundle","link":[{"relation":"at last","url":"a"}]}"#,
        r#"{"resourceType":"Bundle","meta":{"lastUpdated":"2026"},"link":[]}"#,
    ] {
        assert_eq!(without_last_link(body.as_bytes()), Ok(None), "{body}");
    }
}

/// A next page is a next page in any case: a `Next` taken for none would leave a page of
/// blocks or matches unread.
/// A relation that is no string may be `last` to a client that compares loosely: it goes.
#[test]
fn a_last_link_whose_relation_is_no_string_goes() {
    for relation in [r#"["last"]"#, r#"{"value":"last"}"#, "7", "null"] {
        let body = format!(
            r#"{{"resourceType":"Bundle","link":[{{"relation":"self","url":"a"}},{{"relation":{relation},"url":"a?_getpagesoffset=40"}}]}}"#
        );
        assert_eq!(
            links_left(&body),
            json!([{ "relation": "self", "url": "a" }]),
            "{body}"
        );
    }
}

#[test]
fn a_next_page_is_seen_in_any_case() {
    for relation in [
        "next",
        "Next",
        "NEXT",
        " next ",
        "next\n",
        "\u{8}next",
        "\u{feff}next",
        "ne\u{1e8b}t",
    ] {
        let bundle = json!({ "resourceType": "Bundle", "link": [
            { "relation": "self", "url": "a" }, { "relation": relation, "url": "b" } ] });
        assert!(has_next_page(&bundle), "{relation:?}");
    }
    // Links that cannot be read may hold one.
    for bundle in [
        json!({ "resourceType": "Bundle", "link": { "relation": "next", "url": "b" } }),
        json!({ "resourceType": "Bundle", "link": "next" }),
        json!({ "resourceType": "Bundle", "link": ["next"] }),
        json!({ "resourceType": "Bundle", "link": [{ "relation": ["next"], "url": "b" }] }),
        json!({ "resourceType": "Bundle", "link": [{ "relation": 7, "url": "b" }] }),
    ] {
        assert!(has_next_page(&bundle), "{bundle}");
    }
    for bundle in [
        json!({ "resourceType": "Bundle", "link": [{ "relation": "self", "url": "next" }] }),
        json!({ "resourceType": "Bundle", "link": [{ "relation": "nexts", "url": "b" }] }),
        json!({ "resourceType": "Bundle", "link": [{ "url": "b" }] }),
        json!({ "resourceType": "Bundle", "link": [] }),
        json!({ "resourceType": "Bundle" }),
    ] {
        assert!(!has_next_page(&bundle), "{bundle}");
    }
}

#[test]
fn the_last_links_of_searchsets_in_a_batch_answer_are_removed_too() {
    let body = json!({ "resourceType": "Bundle", "type": "batch-response", "entry": [
        { "resource": { "resourceType": "Bundle", "type": "searchset", "link": [
            { "relation": "self", "url": "a" },
            { "relation": "last", "url": "a?_getpagesoffset=40" } ] } },
        // A Patient's own `link` is not paging: left alone.
        { "resource": { "resourceType": "Patient", "link": [
            { "other": { "reference": "Patient/x" }, "type": "seealso" } ] } }
    ]})
    .to_string();
    let without: Value =
        serde_json::from_slice(&without_last_link(body.as_bytes()).unwrap().unwrap()).unwrap();
    assert_eq!(
        without["entry"][0]["resource"]["link"],
        json!([{ "relation": "self", "url": "a" }])
    );
    assert_eq!(
        without["entry"][1]["resource"]["link"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_total_is_cut_out_wherever_and_however_it_is_written() {
    let cases = [
        r#"{"resourceType":"Bundle","type":"searchset","total":3,"entry":[]}"#,
        r#"{"resourceType":"Bundle","total" : 3 , "type":"searchset","entry":[]}"#,
        r#"{"resourceType":"Bundle","type":"searchset","entry":[],"total":3}"#,
        r#"{ "total": 3, "resourceType": "Bundle", "type": "searchset", "entry": [] }"#,
        r#"{"resourceType":"Bundle","type":"searchset","entry":[],"tot\u0061l":3}"#,
        r#"{"resourceType":"Bundle","type":"batch-response","entry":[{"resource":{"resourceType":"Bundle","total":2}}]}"#,
    ];
    for case in cases {
        let without = without_total(case.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{case}"));
        let value: Value =
            serde_json::from_slice(&without).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(value.get("total").is_none(), "{case}");
        assert!(
            !String::from_utf8_lossy(&without).contains("total"),
            "{case}"
        );
        assert!(
            !String::from_utf8_lossy(&without).contains("tot\\u0061l"),
            "{case}"
        );
        assert_eq!(value["resourceType"], "Bundle", "{case}");
    }
    assert_eq!(
        without_total(br#"{"resourceType":"Bundle","type":"searchset"}"#),
        Ok(None)
    );
    assert_eq!(
        without_total(br#"{"resourceType":"Patient","total":1}"#),
        Ok(None)
    );
    // Unreadable as a tree where the tree decides (a key given twice, and a lone surrogate):
    // refused, not passed on with its total.
    assert_eq!(
        without_total(br#"{"resourceType":"Bundle","total":1,"total":1,"id":"\udc00"}"#),
        Err(CountsUnreadable)
    );
    // A total given twice: which of the two a client reads is its parser's choice, and the
    // tree that would take them out is read as strictly as every check reads (refused).
    assert_eq!(
        without_total(
            br#"{"resourceType":"Bundle","type":"searchset","total":3,"total":4,"entry":[]}"#
        ),
        Err(CountsUnreadable)
    );
    // A member a plain tree would expand into other JSON (serde_json's raw value token) where
    // a tree is written again: refused, not rebuilt into what nothing read.
    let token = r#"{"$serde_json::private::RawValue":"\"Patient\""}"#;
    assert_eq!(
        without_total(
            format!(r#"{{"resourceType":"Bundle","total":1,"total":1,"entry":[{{"resource":{{"resourceType":{token}}}}}]}}"#)
                .as_bytes()
        ),
        Err(CountsUnreadable)
    );
    assert_eq!(
        without_last_link(
            format!(r#"{{"resourceType":"Bundle","link":[{{"relation":"last","url":"a"}}],"entry":[{{"resource":{{"resourceType":{token},"id":"bo"}}}}]}}"#)
                .as_bytes()
        ),
        Err(CountsUnreadable)
    );
}

fn observation(id: &str, patient: &str) -> Value {
    json!({ "resourceType": "Observation", "id": id, "subject": { "reference": format!("Patient/{patient}") } })
}

fn bundle(entries: Vec<Value>) -> Vec<u8> {
    let total = entries.len();
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|resource| json!({ "fullUrl": "x", "resource": resource, "search": { "mode": "match" } }))
        .collect();
    json!({ "resourceType": "Bundle", "type": "searchset", "total": total, "link": [], "entry": entries }).to_string().into_bytes()
}

#[test]
fn own_data_passes_untouched() {
    let body = bundle(vec![observation("1", "anne"), observation("2", "anne")]);
    assert_eq!(
        filter_response(&body, "anne", FilterMode::Remove),
        Filtered::Unchanged
    );
    let single = observation("1", "anne").to_string();
    assert_eq!(
        filter_response(single.as_bytes(), "anne", FilterMode::Remove),
        Filtered::Unchanged
    );
}

#[test]
fn other_patients_entries_are_removed_and_total_fixed() {
    let body = bundle(vec![
        observation("1", "anne"),
        observation("2", "bo"),
        json!({ "resourceType": "Practitioner", "id": "p" }),
    ]);
    let Filtered::Rewritten(bytes) = filter_response(&body, "anne", FilterMode::Remove) else {
        panic!("not rewritten")
    };
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    let ids: Vec<&str> = value["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["1", "p"]);
    assert_eq!(value["total"], 2);
    assert_eq!(value["type"], "searchset");
    assert!(
        String::from_utf8(bytes)
            .unwrap()
            .starts_with("{\"resourceType\":\"Bundle\"")
    );
    assert_eq!(
        filter_response(&body, "anne", FilterMode::Deny),
        Filtered::Forbidden
    );
}

#[test]
fn single_resources_outside_are_forbidden() {
    for resource in [
        observation("2", "bo"),
        json!({ "resourceType": "Patient", "id": "bo" }),
        json!({ "resourceType": "Binary", "id": "b" }),
    ] {
        assert_eq!(
            filter_response(resource.to_string().as_bytes(), "anne", FilterMode::Remove),
            Filtered::Forbidden,
            "{resource}"
        );
    }
    assert_eq!(
        filter_response(b"not json", "anne", FilterMode::Remove),
        Filtered::Forbidden
    );
    assert_eq!(
        filter_response(b"[1,2]", "anne", FilterMode::Remove),
        Filtered::Forbidden
    );
}

#[test]
fn outcomes_and_empty_bundles_pass() {
    let outcome = json!({ "resourceType": "OperationOutcome", "issue": [] }).to_string();
    assert_eq!(
        filter_response(outcome.as_bytes(), "anne", FilterMode::Remove),
        Filtered::Unchanged
    );
    let empty = json!({ "resourceType": "Bundle", "type": "searchset", "total": 0 }).to_string();
    assert_eq!(
        filter_response(empty.as_bytes(), "anne", FilterMode::Remove),
        Filtered::Unchanged
    );
}

#[test]
fn a_parameters_passes_only_about_a_verified_instance_and_without_resources_inside() {
    let meta = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "return", "valueMeta": { "versionId": "1", "tag": [{ "code": "x" }] } }
    ]});
    let verified = ResponseCheck {
        compartment: Some("anne"),
        restriction: &[],
        instance_verified: true,
        withhold_audit_events: false,
    };
    assert_eq!(
        check_response(meta.to_string().as_bytes(), &verified, FilterMode::Remove),
        Filtered::Unchanged
    );
    // Not about an instance read first, or under a granular restriction: refused.
    assert_eq!(
        filter_response(meta.to_string().as_bytes(), "anne", FilterMode::Remove),
        Filtered::Forbidden
    );
    let restriction = [("category".to_owned(), "laboratory".to_owned())];
    let restricted = ResponseCheck {
        restriction: &restriction,
        ..verified
    };
    assert_eq!(
        check_response(meta.to_string().as_bytes(), &restricted, FilterMode::Remove),
        Filtered::Forbidden
    );
    for packed in [
        json!({ "resourceType": "Parameters", "parameter": [
            { "name": "return", "resource": observation("1", "bo") } ]}),
        json!({ "resourceType": "Parameters", "parameter": [
            { "name": "x", "part": [{ "name": "y", "resource": observation("1", "bo") }] } ]}),
        json!({ "resourceType": "Parameters", "contained": [observation("1", "bo")] }),
        json!({ "resourceType": "Parameters", "parameter": [
            { "name": "x", "valueReference": { "reference": "Patient/bo" } } ]}),
    ] {
        assert_eq!(
            check_response(packed.to_string().as_bytes(), &verified, FilterMode::Remove),
            Filtered::Forbidden,
            "{packed}"
        );
    }
}

#[test]
fn included_resources_outside_do_not_lower_total() {
    let body = json!({ "resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
        { "resource": observation("1", "anne"), "search": { "mode": "match" } },
        { "resource": { "resourceType": "Patient", "id": "bo" }, "search": { "mode": "include" } }
    ]})
    .to_string();
    let Filtered::Rewritten(bytes) = filter_response(body.as_bytes(), "anne", FilterMode::Remove)
    else {
        panic!()
    };
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["total"], 1);
    assert_eq!(value["entry"].as_array().unwrap().len(), 1);
}

#[test]
fn disguises_are_removed() {
    let mut about_bo_by_anne = observation("3", "pat-bo");
    about_bo_by_anne["performer"] = json!([{ "reference": "Patient/anne" }]);
    let mut contained_bo = observation("4", "anne");
    contained_bo["contained"] =
        json!([{ "resourceType": "Patient", "id": "p", "name": [{ "family": "Jensen" }] }]);
    let outcome_as_match = json!({ "resourceType": "OperationOutcome", "issue": [],
        "contained": [{ "resourceType": "Patient", "id": "bo" }] });
    let body = bundle(vec![
        observation("1", "anne"),
        about_bo_by_anne,
        contained_bo,
        outcome_as_match,
    ]);
    let Filtered::Rewritten(bytes) = filter_response(&body, "anne", FilterMode::Remove) else {
        panic!("not rewritten")
    };
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    let kept: Vec<&str> = value["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kept, ["1"]);
    assert_eq!(value["total"], 1);
}

#[test]
fn duplicate_keys_are_refused() {
    let body = br#"{"resourceType":"Observation","subject":{"reference":"Patient/anne"},"subject":{"reference":"Patient/bo"}}"#;
    assert_eq!(
        filter_response(body, "anne", FilterMode::Remove),
        Filtered::Forbidden
    );
}

#[test]
fn granular_restrictions_are_checked_on_every_resource() {
    let lab = json!({ "resourceType": "Observation", "id": "lab",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory" }] }] });
    let vitals = json!({ "resourceType": "Observation", "id": "vitals",
        "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }] });
    let bare = json!({ "resourceType": "Observation", "id": "bare" });
    let restriction = vec![(
        "category".to_owned(),
        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory".to_owned(),
    )];
    let check = ResponseCheck {
        compartment: None,
        restriction: &restriction,
        instance_verified: false,
        withhold_audit_events: false,
    };
    let Filtered::Rewritten(bytes) = check_response(
        &bundle(vec![lab.clone(), vitals.clone(), bare]),
        &check,
        FilterMode::Remove,
    ) else {
        panic!()
    };
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["entry"].as_array().unwrap().len(), 1);
    assert_eq!(value["entry"][0]["resource"]["id"], "lab");
    assert_eq!(
        check_response(lab.to_string().as_bytes(), &check, FilterMode::Remove),
        Filtered::Unchanged
    );
    assert_eq!(
        check_response(vitals.to_string().as_bytes(), &check, FilterMode::Remove),
        Filtered::Forbidden
    );

    let code_only = vec![("category".to_owned(), "vital-signs,laboratory".to_owned())];
    let check = ResponseCheck {
        compartment: None,
        restriction: &code_only,
        instance_verified: false,
        withhold_audit_events: false,
    };
    assert_eq!(
        check_response(vitals.to_string().as_bytes(), &check, FilterMode::Remove),
        Filtered::Unchanged
    );
    let status = vec![("clinical-status".to_owned(), "active".to_owned())];
    let condition = json!({ "resourceType": "Condition", "clinicalStatus": { "coding": [{ "code": "active" }] } });
    let check = ResponseCheck {
        compartment: None,
        restriction: &status,
        instance_verified: false,
        withhold_audit_events: false,
    };
    assert_eq!(
        check_response(condition.to_string().as_bytes(), &check, FilterMode::Remove),
        Filtered::Unchanged
    );
}

#[test]
fn audit_events_are_withheld_from_answers_that_reach_them_sideways() {
    let check = ResponseCheck {
        withhold_audit_events: true,
        ..ResponseCheck::default()
    };
    // `Patient?_revinclude=AuditEvent:patient`: the Patient stays, the AuditEvent goes, and
    // `total` (matches only) is unchanged by an include.
    let searchset = json!({ "resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [
        { "resource": { "resourceType": "Patient", "id": "anne" }, "search": { "mode": "match" } },
        { "resource": { "resourceType": "AuditEvent", "id": "a1" }, "search": { "mode": "include" } },
        // A type name spelled with an escape is the same name.
        { "resource": { "resourceType": "Audit\u{0045}vent", "id": "a2" }, "search": { "mode": "include" } },
        // An AuditEvent contained in another resource, or inside a nested Bundle.
        { "resource": { "resourceType": "Provenance", "id": "p",
                        "contained": [{ "resourceType": "AuditEvent", "id": "a3" }] },
          "search": { "mode": "include" } },
        { "resource": { "resourceType": "Bundle", "entry": [
            { "resource": { "resourceType": "AuditEvent", "id": "a4" } } ] },
          "search": { "mode": "include" } },
        // Text that merely names the type is no AuditEvent.
        { "resource": { "resourceType": "Observation", "id": "o",
                        "note": [{ "text": "see the AuditEvent" }] },
          "search": { "mode": "include" } }
    ]});
    let escaped = searchset.to_string().replace(
        "\"Audit\u{0045}vent\",\"id\":\"a2\"",
        "\"Audit\\u0045vent\",\"id\":\"a2\"",
    );
    let Filtered::Rewritten(bytes) = check_response(escaped.as_bytes(), &check, FilterMode::Remove)
    else {
        panic!("the AuditEvents are taken out")
    };
    let kept: Value = serde_json::from_slice(&bytes).unwrap();
    let ids: Vec<&str> = kept["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["anne", "o"]);
    assert_eq!(kept["total"], 1);
    // One AuditEvent as the answer, or one packed in an operation's Parameters: refused.
    for body in [
        json!({ "resourceType": "AuditEvent", "id": "a1" }),
        json!({ "resourceType": "Parameters", "parameter": [
            { "name": "return", "resource": { "resourceType": "AuditEvent", "id": "a1" } } ] }),
        json!({ "resourceType": "OperationOutcome",
                "contained": [{ "resourceType": "AuditEvent", "id": "a1" }] }),
    ] {
        assert_eq!(
            check_response(body.to_string().as_bytes(), &check, FilterMode::Remove),
            Filtered::Forbidden,
            "{body}"
        );
    }
    // Nothing to withhold: the bytes pass as they are.
    let plain = json!({ "resourceType": "Bundle", "type": "searchset", "entry": [
        { "resource": { "resourceType": "Patient", "id": "anne" } } ] })
    .to_string();
    assert_eq!(
        check_response(plain.as_bytes(), &check, FilterMode::Remove),
        Filtered::Unchanged
    );
}

#[test]
fn a_deleted_version_in_a_history_cannot_be_shown_to_be_hers() {
    let history = json!({ "resourceType": "Bundle", "type": "history", "total": 2, "entry": [
        { "resource": { "resourceType": "Observation", "id": "o1",
                        "subject": { "reference": "Patient/anne" } } },
        { "request": { "method": "DELETE", "url": "Observation/o-bo" },
          "response": { "status": "410 Gone" } }
    ]})
    .to_string();
    let Filtered::Rewritten(bytes) =
        filter_response(history.as_bytes(), "anne", FilterMode::Remove)
    else {
        panic!("the deleted version is taken out")
    };
    let kept: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(kept["entry"].as_array().unwrap().len(), 1);
    assert_eq!(kept["total"], 1);
    // Without a compartment to check (a granular restriction only), nothing to hide.
    let check = ResponseCheck {
        restriction: &[],
        withhold_audit_events: true,
        ..ResponseCheck::default()
    };
    assert_eq!(
        check_response(history.as_bytes(), &check, FilterMode::Remove),
        Filtered::Unchanged
    );
}

#[test]
fn binaries_that_hold_audit_events_and_deleted_audit_events_are_withheld_too() {
    use base64::Engine as _;
    let check = ResponseCheck {
        withhold_audit_events: true,
        ..ResponseCheck::default()
    };
    let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let binary = |content_type: &str, data: &str| json!({ "resourceType": "Binary", "id": "b", "contentType": content_type, "data": encode(data) });
    for body in [
        // An export's output file, whatever it holds.
        binary(
            "application/fhir+ndjson",
            r#"{"resourceType":"Patient","id":"p"}"#,
        ),
        binary(
            "application/fhir+json",
            r#"{"resourceType":"AuditEvent","id":"a"}"#,
        ),
        binary(
            "application/json",
            r#"{"resourceType":"Audit\u0045vent","id":"a"}"#,
        ),
        binary("text/plain", "AuditEvent/a1 recorded"),
        // A Binary of an export's output kept inside another (no escape anywhere).
        binary(
            "application/json",
            &binary("application/fhir+ndjson", r#"{"resourceType":"Patient"}"#).to_string(),
        ),
    ] {
        assert_eq!(
            check_response(body.to_string().as_bytes(), &check, FilterMode::Remove),
            Filtered::Forbidden,
            "{body}"
        );
    }
    // Documents, even with bytes a JSON reader would trip on (`\u`, the word Binary).
    for content in [
        "%PDF-1.7 journalnote",
        "%PDF-1.7 \\u00 stream Binary endstream",
    ] {
        let document = binary("application/pdf", content);
        assert_eq!(
            check_response(document.to_string().as_bytes(), &check, FilterMode::Remove),
            Filtered::Unchanged,
            "{content}"
        );
    }
    // `_history` at the system level: a deleted AuditEvent's entry names it by URL only.
    let history = json!({ "resourceType": "Bundle", "type": "history", "entry": [
        { "fullUrl": "https://backend/fhir/AuditEvent/a9",
          "request": { "method": "DELETE", "url": "AuditEvent/a9" } },
        { "request": { "method": "DELETE", "url": "Observation/o1" } },
        { "resource": { "resourceType": "Patient", "id": "p" } }
    ]})
    .to_string();
    let Filtered::Rewritten(bytes) = check_response(history.as_bytes(), &check, FilterMode::Remove)
    else {
        panic!("the deleted AuditEvent's entry is taken out")
    };
    let kept: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(kept["entry"].as_array().unwrap().len(), 2);
    assert!(!kept.to_string().contains("a9"));
}
