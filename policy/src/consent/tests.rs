use serde_json::{Value, json};

use super::*;

/// 2026-12-03T12:00:00Z.
const NOW: i64 = 1_796_299_200;

fn physician() -> CallerIds {
    CallerIds {
        identifiers: vec![
            (AUTHORIZATION_SYSTEM.into(), "NS363".into()),
            (CVR_SYSTEM.into(), "12345678".into()),
        ],
        references: vec!["Practitioner/prac-ns363".into()],
    }
}

fn colleague() -> CallerIds {
    CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), "XY123".into())],
        references: vec!["Practitioner/prac-xy123".into()],
    }
}

fn consent(provision: Value) -> Value {
    json!({
        "resourceType": "Consent", "id": "c1", "status": "active",
        "patient": { "reference": "Patient/pat-anne" },
        "provision": provision
    })
}

fn actor(id: &str) -> Value {
    json!([{ "reference": { "identifier": { "system": AUTHORIZATION_SYSTEM, "value": id } } }])
}

fn read<'a>(resource_type: Option<&'a str>, resource: Option<&'a str>) -> Access<'a> {
    Access {
        resource_type,
        resource,
        purpose: Some("TREATMENT"),
        now: NOW,
        unknown_denies: false,
    }
}

fn denied(consent_json: &Value, caller: &CallerIds, access: &Access<'_>) -> bool {
    blocks_in(consent_json).is_some_and(|block| denies(&block, caller, access))
}

#[test]
fn only_active_consents_that_deny_somebody_are_blocks() {
    let deny = json!({ "type": "deny", "actor": actor("NS363") });
    assert!(blocks_in(&consent(deny.clone())).is_some());
    let mut inactive = consent(deny);
    inactive["status"] = json!("inactive");
    assert!(blocks_in(&inactive).is_none());
    assert!(
        blocks_in(&consent(
            json!({ "type": "permit", "actor": actor("NS363") })
        ))
        .is_none()
    );
    assert!(blocks_in(&json!({ "resourceType": "Patient" })).is_none());
    assert!(
        blocks_in(&json!({ "resourceType": "Consent", "status": "active" })).is_none(),
        "no provision, no rule"
    );
}

/// Each row: a provision tree, and whether it denies the physician (NS363) and a colleague
/// (XY123) a read of `Observation/obs-1` now, for treatment.
#[test]
fn provision_shapes_are_decided_as_r4_reads_them() {
    let obs = read(Some("Observation"), Some("Observation/obs-1"));
    let rows: Vec<(&str, Value, bool, bool)> = vec![
        (
            "deny naming the physician",
            json!({ "type": "deny", "actor": actor("NS363") }),
            true,
            false,
        ),
        (
            "deny without an actor denies everyone",
            json!({ "type": "deny" }),
            true,
            true,
        ),
        (
            "deny everyone except the colleague",
            json!({ "type": "deny", "provision": [{ "type": "permit", "actor": actor("XY123") }] }),
            true,
            false,
        ),
        (
            "permit with a nested deny",
            json!({ "type": "permit", "provision": [{ "type": "deny", "actor": actor("NS363") }] }),
            true,
            false,
        ),
        (
            "nested twice: deny, except permit the physician, except deny Observations",
            json!({ "type": "deny", "provision": [{ "type": "permit", "actor": actor("NS363"),
                "provision": [{ "type": "deny", "class": [{ "system": "http://hl7.org/fhir/resource-types", "code": "Observation" }] }] }] }),
            true,
            true,
        ),
        (
            "deny of another class",
            json!({ "type": "deny", "actor": actor("NS363"), "class": [{ "system": "http://hl7.org/fhir/resource-types", "code": "Condition" }] }),
            false,
            false,
        ),
        (
            "deny of this class",
            json!({ "type": "deny", "actor": actor("NS363"), "class": [{ "code": "Observation" }] }),
            true,
            false,
        ),
        (
            "deny of a class from another system counts as this one",
            json!({ "type": "deny", "actor": actor("NS363"), "class": [{ "system": "urn:ietf:bcp:13", "code": "text/plain" }] }),
            true,
            false,
        ),
        (
            "deny of other data",
            json!({ "type": "deny", "actor": actor("NS363"), "data": [{ "meaning": "instance", "reference": { "reference": "Observation/obs-2" } }] }),
            false,
            false,
        ),
        (
            "deny of this resource, absolute and versioned",
            json!({ "type": "deny", "actor": actor("NS363"), "data": [{ "meaning": "instance", "reference": { "reference": "https://fhir.example/Observation/obs-1/_history/2" } }] }),
            true,
            false,
        ),
        (
            "deny that ended",
            json!({ "type": "deny", "actor": actor("NS363"), "period": { "end": "2026-01-01" } }),
            false,
            false,
        ),
        (
            "deny not yet begun",
            json!({ "type": "deny", "actor": actor("NS363"), "period": { "start": "2027" } }),
            false,
            false,
        ),
        (
            "deny in force until the end of the month",
            json!({ "type": "deny", "actor": actor("NS363"), "period": { "start": "2026-12-03T11:00:00+01:00", "end": "2026-12" } }),
            true,
            false,
        ),
        (
            "deny with an unreadable period",
            json!({ "type": "deny", "actor": actor("NS363"), "period": { "end": "soon" } }),
            true,
            false,
        ),
        (
            "deny for research only",
            json!({ "type": "deny", "actor": actor("NS363"), "purpose": [{ "code": "HRESCH" }] }),
            false,
            false,
        ),
        (
            "deny for treatment",
            json!({ "type": "deny", "actor": actor("NS363"), "purpose": [{ "code": "TREATMENT" }] }),
            true,
            false,
        ),
        (
            "deny of collection only",
            json!({ "type": "deny", "actor": actor("NS363"), "action": [{ "coding": [{ "code": "collect" }] }] }),
            false,
            false,
        ),
        (
            "deny on codes the gateway cannot judge",
            json!({ "type": "deny", "actor": actor("NS363"), "code": [{ "coding": [{ "code": "x" }] }] }),
            true,
            false,
        ),
        (
            "permit on codes the gateway cannot judge lifts nothing",
            json!({ "type": "deny", "provision": [{ "type": "permit", "actor": actor("XY123"), "securityLabel": [{ "code": "R" }] }] }),
            true,
            true,
        ),
        (
            "an actor this reader cannot match counts as the caller in a deny",
            json!({ "type": "deny", "actor": [{ "reference": { "display": "Dr. Kjær" } }] }),
            true,
            true,
        ),
        (
            "an actor this reader cannot resolve to people (a CareTeam) counts as the caller in a deny",
            json!({ "type": "deny", "actor": [{ "role": { "text": "x" }, "reference": { "reference": "CareTeam/ct1" } }] }),
            true,
            true,
        ),
        (
            "and never as the caller in a permit",
            json!({ "type": "deny", "provision": [{ "type": "permit", "actor": [{ "reference": { "display": "Lise" } }] }] }),
            true,
            true,
        ),
        (
            "deny of data related to a resource reaches further than the resource",
            json!({ "type": "deny", "actor": actor("NS363"), "data": [{ "meaning": "related", "reference": { "reference": "Observation/obs-2" } }] }),
            true,
            false,
        ),
        (
            "a permit between exceptions never outweighs a deny",
            json!({ "type": "permit", "provision": [
                { "type": "permit", "actor": actor("NS363") },
                { "type": "deny", "actor": actor("NS363") }
            ] }),
            true,
            false,
        ),
    ];
    for (name, provision, physician_denied, colleague_denied) in rows {
        let consent = consent(provision);
        assert_eq!(
            denied(&consent, &physician(), &obs),
            physician_denied,
            "{name}: physician"
        );
        assert_eq!(
            denied(&consent, &colleague(), &obs),
            colleague_denied,
            "{name}: colleague"
        );
    }
}

#[test]
fn the_consents_own_period_bounds_all_of_it() {
    let mut ended = consent(json!({ "type": "deny", "actor": actor("NS363") }));
    ended["period"] = json!({ "end": "2026-06-30" });
    let obs = read(Some("Observation"), Some("Observation/obs-1"));
    assert!(!denied(&ended, &physician(), &obs));
    ended["period"] = json!({ "start": "2026-06-30" });
    assert!(denied(&ended, &physician(), &obs));
}

#[test]
fn what_the_access_does_not_tell_yet_denies_writes_and_waits_for_the_answer_on_reads() {
    let only_observations = consent(json!({ "type": "deny", "actor": actor("NS363"),
        "class": [{ "code": "Observation" }] }));
    let one_resource = consent(json!({ "type": "deny", "actor": actor("NS363"),
        "data": [{ "reference": { "reference": "Observation/obs-1" } }] }));
    let compartment = read(None, None);
    let write = Access {
        unknown_denies: true,
        ..compartment
    };
    for consent in [&only_observations, &one_resource] {
        assert!(!denied(consent, &physician(), &compartment), "{consent}");
        assert!(denied(consent, &physician(), &write), "{consent}");
    }
    let search = read(Some("Observation"), None);
    assert!(denied(&only_observations, &physician(), &search));
    assert!(!denied(&one_resource, &physician(), &search));
}

#[test]
fn a_caller_without_a_stated_purpose_is_denied_by_purpose_bound_blocks() {
    let treatment_only = consent(json!({ "type": "deny", "actor": actor("NS363"),
        "purpose": [{ "code": "TREATMENT" }] }));
    let unstated = Access {
        purpose: None,
        ..read(Some("Observation"), Some("Observation/obs-1"))
    };
    assert!(denied(&treatment_only, &physician(), &unstated));
}

#[test]
fn provisions_nested_beyond_reason_are_read_as_a_deny() {
    let mut provision = json!({ "type": "permit", "actor": actor("XY123") });
    for _ in 0..40 {
        provision = json!({ "type": "permit", "provision": [provision] });
    }
    let deep = consent(provision);
    let obs = read(Some("Observation"), Some("Observation/obs-1"));
    assert!(denied(&deep, &colleague(), &obs));
}

#[test]
fn actors_match_however_the_registers_are_written() {
    let caller = CallerIds {
        identifiers: vec![
            (AUTHORIZATION_SYSTEM.into(), "ns363".into()),
            (CPR_SYSTEM.into(), "0501792275".into()),
        ],
        references: vec!["https://fhir.example/fhir/Practitioner/prac-ns363".into()],
    };
    for reference in [
        json!({ "identifier": { "system": "https://autregweb.sst.dk/", "value": "NS363" } }),
        json!({ "identifier": { "system": CPR_SYSTEM, "value": "050179-2275" } }),
        json!({ "reference": "Practitioner/prac-ns363/_history/3" }),
        json!({ "reference": "http://other.example/Practitioner/prac-ns363" }),
    ] {
        let block = consent(json!({ "type": "deny", "actor": [{ "reference": reference }] }));
        assert!(denied(&block, &caller, &read(None, None)), "{reference}");
    }
    let other = consent(
        json!({ "type": "deny", "actor": [{ "reference": { "reference": "Practitioner/prac-ns3630" } }] }),
    );
    assert!(!denied(&other, &caller, &read(None, None)));
}

#[test]
fn a_reason_is_letters_or_digits_enough_to_read() {
    use super::is_readable_reason;
    for reason in [
        "bevidstløs",
        "akut",
        "Patient unconscious, no relatives",
        "意識不明",
        " 2x 42 ",
    ] {
        assert!(is_readable_reason(reason, 4), "{reason:?}");
    }
    for reason in [
        "",
        "    ",
        "\u{200B}\u{200B}\u{200B}\u{200B}\u{200B}",
        "\u{2060}\u{FEFF}\u{00AD}\u{200D}\u{200C}\u{180E}",
        "\u{3164}\u{3164}\u{3164}\u{3164}\u{115F}\u{1160}\u{FFA0}",
        "...!!!---",
        "\u{0301}\u{0301}\u{0301}\u{0301}",
        "ok",
        "a\u{200B}b\u{200B}c",
        "\t\r\n\u{0007}x",
    ] {
        assert!(!is_readable_reason(reason, 4), "{reason:?}");
    }
    // What is recorded has no control or format characters, and at most 500 characters.
    assert_eq!(
        super::recordable_reason("akut\u{202E}lortnoc\u{200B}\u{0007} ok"),
        "akutlortnoc ok"
    );
    assert_eq!(super::recordable_reason(&"x".repeat(900)).len(), 500);
    // The operator's minimum, and never less than one letter.
    assert!(is_readable_reason("ok", 2));
    assert!(!is_readable_reason("ok", 3));
    assert!(!is_readable_reason("\u{200B}", 0));
    assert!(is_readable_reason("x", 0));
}

#[test]
fn glass_breaks_only_with_a_reason() {
    let block = blocks_in(&consent(json!({ "type": "deny", "actor": actor("NS363") }))).unwrap();
    let access = read(Some("Patient"), Some("Patient/pat-anne"));
    let verdict = |emergency| {
        check(
            std::slice::from_ref(&block),
            &physician(),
            &access,
            emergency,
        )
    };
    assert_eq!(
        verdict(Emergency::new(Some("EMERGENCY"), Some("  "))),
        ConsentVerdict::Blocked {
            consent: "c1".into()
        }
    );
    assert_eq!(
        verdict(Emergency::new(
            Some("EMERGENCY"),
            Some("unconscious, no relatives")
        )),
        ConsentVerdict::BrokenGlass {
            consent: "c1".into()
        }
    );
    assert_eq!(
        verdict(Emergency::new(Some("TREATMENT"), Some("reason"))),
        ConsentVerdict::Blocked {
            consent: "c1".into()
        }
    );
    assert_eq!(
        check(&[block], &colleague(), &access, Emergency::None),
        ConsentVerdict::Open
    );
}

#[test]
fn fhir_dates_cover_what_they_say() {
    assert_eq!(instant("2026", false), Some(1_767_225_600));
    assert_eq!(instant("2026", true), Some(1_798_761_600));
    assert_eq!(instant("2026-12", true), Some(1_798_761_600));
    assert_eq!(instant("2026-02", true), instant("2026-03-01", false));
    assert_eq!(instant("2026-12-31", true), instant("2027", false));
    assert_eq!(instant("2026-12-03T12:00:00Z", false), Some(NOW));
    assert_eq!(instant("2026-13", false), None);
    assert_eq!(instant("yesterday", false), None);
}

#[test]
fn an_opt_out_without_provisions_denies_everyone_and_its_untyped_root_denies() {
    let obs = read(Some("Observation"), Some("Observation/obs-1"));
    let opt_out = |provision: Option<Value>| {
        let mut consent = json!({ "resourceType": "Consent", "id": "c9", "status": "active",
            "policyRule": { "coding": [{ "code": "OPTOUT" }] } });
        if let Some(provision) = provision {
            consent["provision"] = provision;
        }
        consent
    };
    assert!(denied(&opt_out(None), &colleague(), &obs));
    let except_colleague = opt_out(Some(
        json!({ "provision": [{ "type": "permit", "actor": actor("XY123") }] }),
    ));
    assert!(denied(&except_colleague, &physician(), &obs));
    assert!(!denied(&except_colleague, &colleague(), &obs));
    // Without a policy, a Consent without provisions is no rule at all.
    assert!(blocks_in(&json!({ "resourceType": "Consent", "status": "active" })).is_none());
}

#[test]
fn includes_of_withheld_matches_go_with_them() {
    let entry =
        |resource: Value, mode: &str| json!({ "resource": resource, "search": { "mode": mode } });
    let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset", "total": 2, "entry": [
        entry(json!({ "resourceType": "Encounter", "id": "e-anne", "subject": { "reference": "Patient/pat-anne" },
            "participant": [{ "individual": { "reference": "Practitioner/p-shared" } }] }), "match"),
        entry(json!({ "resourceType": "Encounter", "id": "e-bo", "subject": { "reference": "Patient/pat-bo" },
            "participant": [{ "individual": { "reference": "https://fhir.example/R4/Practitioner/p-bo-only" } }],
            "serviceProvider": { "reference": "Organization/o-bo-only" } }), "match"),
        entry(json!({ "resourceType": "Practitioner", "id": "p-shared" }), "include"),
        entry(json!({ "resourceType": "Practitioner", "id": "p-bo-only" }), "include"),
        entry(json!({ "resourceType": "Organization", "id": "o-bo-only" }), "include"),
        // A _revinclude: points at a match; kept with Anne's, gone with Bo's.
        entry(json!({ "resourceType": "Provenance", "id": "prov-anne", "target": [{ "reference": "Encounter/e-anne" }] }), "include"),
        entry(json!({ "resourceType": "Provenance", "id": "prov-bo", "target": [{ "reference": "Encounter/e-bo" }] }), "include"),
        // One pointing at both: it would name Bo's encounter.
        entry(json!({ "resourceType": "Provenance", "id": "prov-both", "target": [
            { "reference": "Encounter/e-anne" }, { "reference": "Encounter/e-bo" }] }), "include"),
    ]});
    let withheld = |resource: &Value| {
        resource
            .pointer("/subject/reference")
            .and_then(Value::as_str)
            == Some("Patient/pat-bo")
    };
    let refusals = Refusals {
        forbidden: &json!({}),
        not_found: &json!({}),
        named: &[],
        identified: &crate::compartment::Identified::default(),
    };
    assert_eq!(withhold(&mut bundle, &withheld, &refusals), 1);
    let left: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["e-anne", "p-shared", "prov-anne"]);
    assert!(bundle.get("total").is_none());

    // Nothing withheld: includes are left as they are, even ones nothing references.
    let mut untouched = json!({ "resourceType": "Bundle", "type": "searchset", "entry": [
        entry(json!({ "resourceType": "Practitioner", "id": "p-alone" }), "include")] });
    assert_eq!(withhold(&mut untouched, &withheld, &refusals), 0);
    assert_eq!(untouched["entry"].as_array().unwrap().len(), 1);
}
