use serde_json::json;

use super::*;
use crate::consent::AUTHORIZATION_SYSTEM;

/// 2026-12-01T00:00:00Z
const NOW: i64 = 1_796_083_200;
const DAY: i64 = 86_400;
const WINDOW: Window = Window {
    past: 90 * DAY,
    ahead: 30 * DAY,
};

fn kjaer() -> CallerIds {
    CallerIds {
        identifiers: vec![(AUTHORIZATION_SYSTEM.into(), "NS363".into())],
        references: vec![
            "Practitioner/prac-ns363".into(),
            "PractitionerRole/role-ns363".into(),
            "Organization/org-laegehuset".into(),
        ],
    }
}

#[test]
fn binds_a_bound_role_unless_the_token_is_the_citizen_s_own() {
    let bound = ["7170".to_owned(), "5166".to_owned()];
    assert!(binds(&["7170".into()], &bound, false));
    assert!(
        !binds(&["7170".into()], &bound, true),
        "the citizen's own token"
    );
    assert!(!binds(&["5433".into()], &bound, false), "another role");
    assert!(!binds(&[], &bound, false), "no role: a system");
    assert!(!binds(&["7170".into()], &[], false), "no role bound");
}

#[test]
fn an_ongoing_episode_at_the_organisation_is_evidence_whenever_it_began() {
    let episode = json!({ "resourceType": "EpisodeOfCare", "id": "eoc-1", "status": "active",
        "patient": { "reference": "Patient/pat-anne" },
        "managingOrganization": { "reference": "Organization/org-laegehuset" },
        "period": { "start": "2019-04-01" } });
    assert!(shows_relationship(
        &episode,
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    assert!(!shows_relationship(
        &episode,
        "pat-bo",
        &kjaer(),
        WINDOW,
        NOW
    ));
    assert_eq!(
        evidence([&episode], "pat-anne", &kjaer(), WINDOW, NOW).as_deref(),
        Some("EpisodeOfCare/eoc-1")
    );
    // Absolute and versioned references name the same patient and organisation.
    let absolute = json!({ "resourceType": "EpisodeOfCare", "id": "eoc-2", "status": "active",
        "patient": { "reference": "https://fhir.example/R4/Patient/pat-anne/_history/3" },
        "managingOrganization": { "reference": "https://fhir.example/R4/Organization/org-laegehuset" } });
    assert!(shows_relationship(
        &absolute,
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
}

#[test]
fn a_finished_encounter_counts_only_within_the_window() {
    let encounter = |end: &str| {
        json!({ "resourceType": "Encounter", "id": "enc-1", "status": "finished",
            "subject": { "reference": "Patient/pat-anne" },
            "participant": [{ "individual": { "reference": "Practitioner/prac-ns363" } }],
            "period": { "start": "2026-10-01T09:00:00+01:00", "end": end } })
    };
    assert!(shows_relationship(
        &encounter("2026-10-01T09:30:00+01:00"),
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    let old = json!({ "resourceType": "Encounter", "id": "enc-0", "status": "finished",
        "subject": { "reference": "Patient/pat-anne" },
        "participant": [{ "individual": { "reference": "Practitioner/prac-ns363" } }],
        "period": { "start": "2024-03-12T09:00:00+01:00", "end": "2024-03-12T09:30:00+01:00" } });
    assert!(!shows_relationship(&old, "pat-anne", &kjaer(), WINDOW, NOW));
    // Over, with no time: when it was cannot be told.
    let timeless = json!({ "resourceType": "Encounter", "id": "enc-2", "status": "finished",
        "subject": { "reference": "Patient/pat-anne" },
        "participant": [{ "individual": { "reference": "Practitioner/prac-ns363" } }] });
    assert!(!shows_relationship(
        &timeless,
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    // A time that cannot be read is no evidence either.
    assert!(!shows_relationship(
        &encounter("soon"),
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
}

#[test]
fn cancelled_entered_in_error_and_unknown_statuses_are_no_evidence() {
    for status in ["cancelled", "entered-in-error", "unknown", "", "ACTIVE"] {
        let episode = json!({ "resourceType": "EpisodeOfCare", "id": "eoc-1", "status": status,
            "patient": { "reference": "Patient/pat-anne" },
            "careManager": { "reference": "Practitioner/prac-ns363" } });
        assert!(
            !shows_relationship(&episode, "pat-anne", &kjaer(), WINDOW, NOW),
            "{status}"
        );
    }
}

#[test]
fn the_professional_must_be_named_where_the_type_names_those_who_treat() {
    // Named as the patient's own subject elsewhere, or only in a note: no.
    let elsewhere = json!({ "resourceType": "Encounter", "id": "enc-1", "status": "in-progress",
        "subject": { "reference": "Patient/pat-anne" },
        "reasonReference": [{ "reference": "Practitioner/prac-ns363" }] });
    assert!(!shows_relationship(
        &elsewhere,
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    // By authorisation id, as an identifier reference.
    let by_identifier = json!({ "resourceType": "CareTeam", "id": "ct-1", "status": "active",
        "subject": { "reference": "Patient/pat-anne" },
        "participant": [{ "member": { "identifier": { "system": AUTHORIZATION_SYSTEM, "value": "ns363" } } }] });
    assert!(shows_relationship(
        &by_identifier,
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    // A referral to the practice.
    let referral = json!({ "resourceType": "ServiceRequest", "id": "sr-1", "status": "active",
        "subject": { "reference": "Patient/pat-anne" }, "authoredOn": "2026-11-20",
        "performer": [{ "reference": "PractitionerRole/role-ns363" }] });
    assert!(shows_relationship(
        &referral,
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    // A declined appointment names nobody; a booked one next week does.
    let appointment = |status: &str| {
        json!({ "resourceType": "Appointment", "id": "app-1", "status": "booked",
            "start": "2026-12-08T10:00:00Z", "end": "2026-12-08T10:20:00Z",
            "participant": [
                { "actor": { "reference": "Patient/pat-anne" }, "status": "accepted" },
                { "actor": { "reference": "Practitioner/prac-ns363" }, "status": status }] })
    };
    assert!(shows_relationship(
        &appointment("accepted"),
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
    assert!(!shows_relationship(
        &appointment("declined"),
        "pat-anne",
        &kjaer(),
        WINDOW,
        NOW
    ));
}

#[test]
fn a_patient_is_never_the_professional() {
    // An Appointment of two patients: neither is the other's treating professional, even for
    // a caller whose identities somehow include a Patient reference.
    let caller = CallerIds {
        identifiers: Vec::new(),
        references: vec!["Patient/pat-bo".into()],
    };
    let appointment = json!({ "resourceType": "Appointment", "id": "app-1", "status": "booked",
        "participant": [
            { "actor": { "reference": "Patient/pat-anne" } },
            { "actor": { "reference": "Patient/pat-bo" } }] });
    assert!(!shows_relationship(
        &appointment,
        "pat-anne",
        &caller,
        WINDOW,
        NOW
    ));
}

#[test]
fn the_verdict_lets_vaerdispring_through_only_with_a_reason() {
    assert_eq!(
        decide(Some("EpisodeOfCare/eoc-1"), Emergency::None),
        RelationVerdict::Related {
            evidence: "EpisodeOfCare/eoc-1".into()
        }
    );
    assert_eq!(decide(None, Emergency::None), RelationVerdict::Refused);
    assert_eq!(
        decide(None, Emergency::WithoutReason),
        RelationVerdict::Refused
    );
    assert_eq!(
        decide(None, Emergency::WithReason("bevidstløs")),
        RelationVerdict::Vaerdispring
    );
}

#[test]
fn a_relation_service_answer_is_a_boolean_or_nothing() {
    assert_eq!(
        service_answer(
            &json!({ "patient": "pat-anne", "relationship": true, "basis": "GP list" }),
            "pat-anne"
        ),
        Some(ServiceAnswer::Related {
            basis: "GP list".into()
        })
    );
    assert_eq!(
        service_answer(
            &json!({ "patient": "pat-anne", "relationship": false }),
            "pat-anne"
        ),
        Some(ServiceAnswer::Unrelated)
    );
    for wrong in [
        json!({ "patient": "pat-anne", "relationship": "true" }),
        json!({ "patient": "pat-anne", "relationship": 1 }),
        json!({ "patient": "pat-anne", "related": true }),
        // About somebody else, or nobody: a mixed-up answer is no answer.
        json!({ "patient": "pat-bo", "relationship": true }),
        json!({ "relationship": true }),
        json!([true]),
        json!(null),
    ] {
        assert_eq!(service_answer(&wrong, "pat-anne"), None, "{wrong}");
    }
}
